# The two commands of this repository: `make test` and `make demo`.
# Both create .venv from requirements.txt on first use (needs only Python 3).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-requirements

.PHONY: venv test demo bench clean-demo

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -r requirements.txt
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

venv: $(STAMP)

# Two pytest workers, one torch thread each: the suite in about half the time on a 2-core machine.
TEST_WORKERS ?= 2

test: venv
	$(BIN)/python -m pytest tests -n $(TEST_WORKERS) --dist loadfile

demo: venv
	$(BIN)/python RD4AD-main/main.py demo --portfolio RD4AD-main/RD_Model_Comparison_Portfolio.md

bench: venv
	$(BIN)/python RD4AD-main/main.py bench

clean-demo:
	rm -rf data/demo results/demo checkpoints/demo reports/demo

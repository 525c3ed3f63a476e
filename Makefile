# The two commands of this repository: `make test` and `make demo`.
# Both create .venv from requirements.txt on first use (needs only Python 3).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-requirements

.PHONY: venv test demo bench clean-demo venv-gpu test-gpu-versions

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

# The second tested configuration: the GPU machines' versions (Python 3.12, torch 2.11.0,
# torchvision 0.26.0) in their own venv, .venv-gpu, with the rest of requirements.txt as pinned (every
# other pin has a Python 3.12 wheel, so none is changed; only the two torch lines are replaced).
# About 5 GB of wheels, so not part of .ci/run. GPU_PYTHON names the interpreter; GPU_TESTS narrows
# the run (e.g. GPU_TESTS=tests/test_compile.py).
GPU_PYTHON ?= python3.12
GPU_VENV ?= .venv-gpu
GPU_BIN := $(GPU_VENV)/bin
GPU_STAMP := $(GPU_VENV)/.installed-requirements
GPU_TESTS ?= tests

$(GPU_STAMP): requirements.txt
	@$(GPU_PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' >/dev/null 2>&1 || { \
	  echo "make test-gpu-versions: needs a working Python 3.12 as '$(GPU_PYTHON)' (the GPU machines' python3), and there is none." >&2; \
	  echo "  Install Python 3.12, or name one: make test-gpu-versions GPU_PYTHON=/path/to/python3.12" >&2; \
	  exit 1; }
	$(GPU_PYTHON) -m venv $(GPU_VENV)
	sed -e 's/^torch==[^ ]*/torch==2.11.0/' -e 's/^torchvision==[^ ]*/torchvision==0.26.0/' \
	  requirements.txt > $(GPU_VENV)/requirements-gpu.txt
	$(GPU_BIN)/python -m pip install -r $(GPU_VENV)/requirements-gpu.txt
	$(GPU_BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(GPU_STAMP)

venv-gpu: $(GPU_STAMP)

test-gpu-versions: venv-gpu
	$(GPU_BIN)/python -m pytest $(GPU_TESTS) -n $(TEST_WORKERS) --dist loadfile

bench: venv
	$(BIN)/python RD4AD-main/main.py bench

clean-demo:
	rm -rf data/demo results/demo checkpoints/demo reports/demo

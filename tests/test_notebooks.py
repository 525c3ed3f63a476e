"""The three notebooks in order, as a user runs them with papermill's own parameter injection (`-p`, `-y`): the two
trainers train the fair pair into one results folder (one under each method), `main.py train`, `test` and `compare
--config` complete a generated method study beside them, the tester compares it with the same config."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest

import runs

CODE_DIR = Path(__file__).resolve().parents[1] / "RD4AD-main"
TRAINERS = {"RD_Trainer.ipynb": "resnet50", "RD_ConvNeXt_Trainer.ipynb": "convnext_tiny"}
PARAMETERS = ("DEMO", "DATA_ROOT", "CATEGORIES", "BACKBONE", "METHOD", "EPOCHS", "IMAGE_SIZE", "BATCH_SIZE", "SEEDS",
              "DEVICE", "PRETRAINED", "RESULTS", "CHECKPOINTS")


def parameters_cell(name: str) -> str:
    notebook = nbformat.read(CODE_DIR / name, as_version=4)
    first_code = next(cell for cell in notebook.cells if cell.cell_type == "code")
    assert "parameters" in first_code.metadata.get("tags", [])
    return first_code.source


@pytest.mark.parametrize("name, backbone", TRAINERS.items())
def test_trainer_defaults_are_the_recipe_and_never_a_random_teacher(name, backbone):
    namespace: dict = {}
    exec(parameters_cell(name), namespace)  # the cell is plain assignments
    assert set(PARAMETERS) <= set(namespace)
    assert namespace["DEMO"] is False and namespace["PRETRAINED"] is True
    assert (namespace["EPOCHS"], namespace["IMAGE_SIZE"], namespace["BATCH_SIZE"]) == (200, 256, 16)
    assert namespace["BACKBONE"] == backbone and namespace["METHOD"] == "rd"
    tester: dict = {}
    exec(parameters_cell("RD_Tester.ipynb"), tester)
    assert tester["RESULTS_DIR"] == namespace["RESULTS"]  # run the trainers, then the tester


def papermill(name: str, out: Path, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "papermill", str(CODE_DIR / name), str(out), "--cwd", str(CODE_DIR),
                           "--kernel", "python3", "--no-progress-bar", *options],
                          capture_output=True, text=True, timeout=600)


def outputs(path: Path) -> list:
    notebook = nbformat.read(path, as_version=4)
    return [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]


def test_a_method_study_through_the_notebooks_train_test_and_compare(synthetic_root, tmp_path):
    """Issue 26's generated method study, RD4AD and RD++ for ResNet-50 and ConvNeXt-Tiny on 2 categories x 1 seed
    at 32 px: the ResNet trainer runs RD4AD and the ConvNeXt one RD++ (-p METHOD rdpp), `main.py train` the other
    two arms, `main.py test` evaluates them, `main.py compare --config` answers the interaction beside the method x
    backbone table, and the tester shows both with the same config (random teachers: the numbers mean nothing)."""
    from helpers import run_main

    results, checkpoints = tmp_path / "results", tmp_path / "checkpoints"
    categories = "synth_object,synth_texture"
    recipe = ["--epochs", "1", "--image-size", "32", "--batch-size", "8", "--seeds", "0"]
    common = ["-p", "DEMO", "True", "-p", "DATA_ROOT", str(synthetic_root), "-p", "CATEGORIES", categories,
              "-p", "EPOCHS", "1", "-p", "IMAGE_SIZE", "32", "-p", "BATCH_SIZE", "8", "-p", "DEVICE", "cpu",
              "-p", "PRETRAINED", "False", "-p", "RESULTS", str(results), "-p", "CHECKPOINTS", str(checkpoints)]
    # SEEDS as papermill types it: an int from -p, a list from -y
    methods = {"resnet50": "rd", "convnext_tiny": "rdpp"}
    for (name, backbone), seeds in zip(TRAINERS.items(), (["-p", "SEEDS", "0"], ["-y", "SEEDS: [0]"])):
        done = papermill(name, tmp_path / f"{backbone}.ipynb", *common, "-p", "BACKBONE", backbone, *seeds,
                         "-p", "METHOD", methods[backbone])
        assert done.returncode == 0, done.stderr[-3000:]
        shown = outputs(tmp_path / f"{backbone}.ipynb")
        assert sum("image/png" in output.get("data", {}) for output in shown) >= 2  # learning curves, gallery
        html = "".join(str(output.get("data", {}).get("text/html", "")) for output in shown)
        assert "image_auroc" in html and "synth_object" in html
        arm = backbone + ("+rdpp" if methods[backbone] == "rdpp" else "")
        history = pd.read_csv(results / arm / "synth_object" / "seed0" / runs.HISTORY_FILE)
        assert history["epoch"].tolist() == [1]
    where = ["--results", str(results), "--checkpoints", str(checkpoints)]
    for backbone, method in (("resnet50", "rdpp"), ("convnext_tiny", "rd")):  # the other method of each backbone
        assert run_main("train", "--data-root", str(synthetic_root), "--backbones", backbone, "--method", method,
                        "--categories", categories, "--no-pretrained", "--no-eta", *recipe, *where) == 0
    assert run_main("test", *where) == 0
    config = tmp_path / "method_study.json"
    config.write_text(json.dumps({"pairs": [["resnet50", "convnext_tiny"], ["resnet50+rdpp", "convnext_tiny+rdpp"]],
                                  "primary": [{"interaction": {"backbones": ["resnet50", "convnext_tiny"],
                                                               "methods": ["rdpp", "rd"]}, "metric": "aupro"}]}))
    assert run_main("compare", "--results", str(results), "--config", str(config), "--out", str(tmp_path / "report"),
                    "--n-boot", "100") == 0
    primary = pd.read_csv(tmp_path / "report" / "tables" / "primary_tests.csv")
    label = "(resnet50+rdpp vs convnext_tiny+rdpp) vs (resnet50 vs convnext_tiny)"
    assert primary["pair"].tolist() == [label] and primary[["n_categories", "n_cells"]].values.tolist() == [[2, 2]]
    assert primary["p_new"].notna().all() and primary["p_fixed"].isna().all()  # one seed: only "to new categories"
    text = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    sentence = "(resnet50+rdpp − convnext_tiny+rdpp) − (resnet50 − convnext_tiny) (primary, interaction:"
    table = text.index("## Method × backbone (descriptive)")
    assert text.index(sentence) < table < text.index("RD++ − RD4AD (points)", table) < text.index(sentence, table)
    assert "Protocol of the interaction" in text and "8 runs" in text
    done = papermill("RD_Tester.ipynb", tmp_path / "tester.ipynb", "-p", "RESULTS_DIR", str(results),
                     "-p", "OUT_DIR", str(tmp_path / "notebook_report"), "-p", "PAIR", "", "-p", "CONFIG", str(config),
                     "-p", "N_BOOT", "100")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "notebook_report" / "report.md").read_text(encoding="utf-8") == text.replace(
        str(tmp_path / "report"), str(tmp_path / "notebook_report"))  # the same report as compare's
    shown = outputs(tmp_path / "tester.ipynb")
    assert sum("image/png" in output.get("data", {}) for output in shown) >= 3
    assert "RD++ − RD4AD (points)" in "".join(str(output.get("data", {}).get("text/html", "")) for output in shown)
    markdown = "".join(str(output.get("data", {}).get("text/markdown", "")) for output in shown)
    assert "The interaction (primary; the same answer as in the primary section)" in markdown and sentence in markdown

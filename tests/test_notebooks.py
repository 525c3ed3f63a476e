"""The three notebooks in order, as a user runs them with papermill's own parameter injection (`-p`, `-y`):
the two trainers train the fair pair into one results folder, the tester compares it."""
from __future__ import annotations

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


def test_the_three_notebooks_in_order_with_papermill_parameters(synthetic_root, tmp_path):
    """The ResNet trainer runs RD4AD and the ConvNeXt one RD++ (-p METHOD rdpp); with an RD4AD ConvNeXt-Tiny run
    beside them the tester shows the method x backbone table."""
    from recipe import TrainConfig
    from train import train_run
    from evaluate import evaluate_run

    results, checkpoints = tmp_path / "results", tmp_path / "checkpoints"
    common = ["-p", "DEMO", "True", "-p", "DATA_ROOT", str(synthetic_root), "-p", "CATEGORIES", "synth_object",
              "-p", "EPOCHS", "1", "-p", "IMAGE_SIZE", "64", "-p", "BATCH_SIZE", "8", "-p", "DEVICE", "cpu",
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
    evaluate_run(train_run(TrainConfig(data_root=str(synthetic_root), category="synth_object", backbone="convnext_tiny",
                                       epochs=1, image_size=64, batch_size=8, pretrained=False, results=str(results),
                                       checkpoints=str(checkpoints)), quiet=True), scale_ablation=False)
    done = papermill("RD_Tester.ipynb", tmp_path / "tester.ipynb", "-p", "RESULTS_DIR", str(results),
                     "-p", "OUT_DIR", str(tmp_path / "report"),
                     "-y", 'PAIR: [["resnet50", "convnext_tiny"], ["convnext_tiny", "convnext_tiny+rdpp"]]',
                     "-p", "N_BOOT", "500")  # two pairs at a quarter of the default resamples
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "report" / "report.md").is_file()
    shown = outputs(tmp_path / "tester.ipynb")
    assert sum("image/png" in output.get("data", {}) for output in shown) >= 3
    assert "RD++ − RD4AD (points)" in "".join(str(output.get("data", {}).get("text/html", "")) for output in shown)

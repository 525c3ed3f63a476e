"""`main.py predict`: a trained run on new images gives the scores `main.py test` gives the same images."""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import runs
from dataset import MVTecDataset
from evaluate import evaluate_run
from helpers import run_main
from recipe import TrainConfig
from train import train_run


@pytest.fixture(scope="module")
def tested_run(synthetic_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    config = TrainConfig(data_root=str(synthetic_root), category="synth_object", backbone="resnet50", epochs=1,
                         image_size=64, batch_size=8, pretrained=False, device="cpu",
                         results=str(root / "results"), checkpoints=str(root / "checkpoints"))
    evaluate_run(train_run(config, quiet=True), device="cpu")
    return config


def test_predict_right_after_train_sets_the_threshold_test_sets(tested_run, synthetic_root, tmp_path, capsys):
    """An untested run (no val_scores.csv, no metrics.json): predict scores the recorded validation normals itself
    and decides at the very threshold `main.py test` wrote for the same run."""
    untested = tmp_path / "run"
    shutil.copytree(tested_run.run_dir, untested, ignore=shutil.ignore_patterns(
        runs.VAL_SCORES_FILE, runs.METRICS_FILE, runs.SCORES_FILE, runs.MAPS_FILE))
    images = synthetic_root / "synth_object" / "test" / "good"
    out = tmp_path / "out"
    assert run_main("predict", "--run-dir", str(untested), "--images", str(images), "--out", str(out),
                    "--device", "cpu") == 0
    assert "flagged as anomalous at threshold" in capsys.readouterr().out
    predicted = pd.read_csv(out / runs.SCORES_FILE)
    tested = runs.read_json(tested_run.run_dir / runs.METRICS_FILE)
    assert tested["threshold_rule"] == "max"
    assert (predicted["threshold"] == tested["threshold"]).all()  # the same number, not just close
    assert len(list((out / "overlays").glob("*.png"))) == len(predicted) == len(list(images.glob("*.png")))
    assert not (untested / runs.VAL_SCORES_FILE).exists()  # predict writes nothing into the run


def test_predict_scores_equal_test_scores_and_write_overlays(tested_run, synthetic_root, tmp_path, capsys):
    test_dir = synthetic_root / "synth_object" / "test"
    out = tmp_path / "out"
    assert run_main("predict", "--run-dir", str(tested_run.run_dir), "--images", str(test_dir), "--out", str(out),
                "--save-maps", "--save-masks", "--device", "cpu", "--batch-size", "5") == 0
    assert "flagged as anomalous" in capsys.readouterr().out
    predicted = pd.read_csv(out / runs.SCORES_FILE)
    expected = runs.load_scores(tested_run.run_dir)
    assert len(predicted) == len(expected) == len(MVTecDataset(synthetic_root, "synth_object", "test", 64))
    joined = predicted.assign(path=predicted["image"]).merge(expected, on="path", suffixes=("", "_test"))
    assert len(joined) == len(expected)
    np.testing.assert_allclose(joined["score"], joined["score_test"], rtol=1e-5, atol=1e-6)
    threshold = runs.read_json(tested_run.run_dir / runs.METRICS_FILE)["threshold"]
    assert (predicted["decision"] == np.where(predicted["score"] > threshold, "anomalous", "normal")).all()
    names = [p.stem for p in (out / "overlays").glob("*.png")]
    assert len(names) == len(predicted)  # names made unique across defect folders
    with Image.open(next((out / "overlays").glob("*.png"))) as overlay:
        assert overlay.mode in ("RGBA", "RGB") and overlay.width > 64
    assert len(list((out / "maps").glob("*.npy"))) == len(predicted) == len(list((out / "masks").glob("*.png")))


def test_predict_with_a_checkpoint_and_no_threshold(tested_run, synthetic_root, tmp_path, capsys):
    image = next((synthetic_root / "synth_object" / "test" / "good").glob("*.png"))
    assert run_main("predict", "--checkpoint", str(tested_run.checkpoint_path), "--images", str(image),
                "--out", str(tmp_path), "--device", "cpu") == 0
    assert pd.read_csv(tmp_path / runs.SCORES_FILE)["decision"].isna().all()
    assert "no threshold" in capsys.readouterr().out


def test_predict_names_an_unreadable_image(tested_run, tmp_path, capsys):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    assert run_main("predict", "--run-dir", str(tested_run.run_dir), "--images", str(tmp_path / "broken.png"),
                "--out", str(tmp_path / "out"), "--device", "cpu") == 2
    err = capsys.readouterr().err
    assert "broken.png" in err and "Traceback" not in err
    assert run_main("predict", "--run-dir", str(tested_run.run_dir), "--images", str(tmp_path / "none")) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_predict_keeps_no_teacher_copy_in_the_training_precision(tested_run, synthetic_root):
    """Issue 24: predict scores in float32 (test's default), so a run trained in bf16 (CUDA's default) gets no bf16
    teacher copy it would never use; ``--eval-amp bf16`` settings still get theirs."""
    from dataclasses import replace

    import torch

    from checkpoint import model_from_checkpoint
    from predict import predict

    images = sorted((synthetic_root / "synth_object" / "test" / "good").glob("*.png"))[:2]
    model, _ = model_from_checkpoint(tested_run.checkpoint_path)
    trained_in_bf16 = replace(tested_run, amp="bf16")
    predict(model, trained_in_bf16, images, torch.device("cpu"), 2, None)
    assert model.teacher_copies() == []
    predict(model, replace(trained_in_bf16, eval_amp="bf16"), images, torch.device("cpu"), 2, None)
    assert [next(copy.parameters()).dtype for copy in model.teacher_copies()] == [torch.bfloat16]

"""Issue 18, instrument 5: the selection audit (`train --audit-test`, selection_audit.py, the report's why_audit)."""
from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import runs
import why_audit
import why_files
from checkpoint import read_checkpoint
from evaluate import evaluate_run
from main import main
from recipe import TrainConfig
from selection_audit import TestSetAudit

CODE_DIR = Path(__file__).resolve().parents[1] / "RD4AD-main"


# ---------------------------------------------------------------------------------------------- the report part

def _audited_run(folder: Path, backbone: str, seed: int, synth: list[float], test: list[float],
                 selected: int) -> dict:
    run_dir = folder / backbone / "cat" / f"seed{seed}"
    why_files.write_audit(run_dir, [{"epoch": e + 1, "synth_aupro": s, "test_image_auroc": 0.5, "test_pixel_auroc": 0.5,
                                     "test_aupro": t} for e, (s, t) in enumerate(zip(synth, test))])
    return {"backbone": backbone, "category": "cat", "seed": seed, "run_dir": str(run_dir),
            "selection": "synthetic-val", "selected_epoch": float(selected)}


def test_rank_correlation_on_runs_whose_numbers_are_set(tmp_path):
    rising = [0.1, 0.2, 0.3, 0.4]
    frame = pd.DataFrame([
        _audited_run(tmp_path, "a", 0, rising, [0.5, 0.6, 0.7, 0.8], 4),  # same order: rho 1
        _audited_run(tmp_path, "a", 1, rising, [0.8, 0.7, 0.6, 0.5], 4),  # reversed: rho -1
        # test ranks 2 1 4 3 against 1 2 3 4: sum d^2 = 4, rho = 1 - 6 * 4 / (4 * 15) = 0.6
        _audited_run(tmp_path, "b", 0, rising, [0.2, 0.1, 0.4, 0.3], 4),
        _audited_run(tmp_path, "b", 1, [0.1, 0.2], [0.3, 0.4], 2),  # two epochs: no rho
        {"backbone": "b", "category": "cat", "seed": 2, "run_dir": str(tmp_path / "none"), "selection": "last",
         "selected_epoch": 4.0},  # no audit file: not in the tables
    ])
    part = why_audit.part(frame, str(tmp_path), [("a", "b")])
    per_run = part.tables["runs"]
    assert per_run["spearman"].tolist()[:3] == pytest.approx([1.0, -1.0, 0.6])
    assert np.isnan(per_run["spearman"].iloc[3]) and len(per_run) == 4
    # given up: best audited test AUPRO minus the selected epoch's (epoch 4)
    assert per_run["AUPRO given up"].tolist() == pytest.approx([0.0, 0.3, 0.1, 0.0])
    pooled = part.tables["pooled"].set_index("backbone")
    assert pooled.loc["a", "mean spearman"] == 0.0 and pooled.loc["b", "mean spearman"] == pytest.approx(0.6)
    assert pooled.loc["b", ["ci_low", "ci_high"]].tolist() == pytest.approx([0.6, 0.6])  # one run: nothing to resample
    overall = pooled.loc["all runs"]
    assert overall["runs with rho"] == 3 and overall["mean spearman"] == pytest.approx(0.2)
    assert -1.0 <= overall["ci_low"] < 0.2 < overall["ci_high"] <= 1.0
    assert "audit only" in part.finding and "+0.20 over 3 runs" in part.finding
    assert overall["mean AUPRO given up"] == pytest.approx(0.1) and "10.00 points below" in part.finding
    assert overall["given_up_ci_low"] <= 0.1 <= overall["given_up_ci_high"]
    assert part.figures[0].figure is not None
    assert why_audit.part(frame.iloc[[4]], str(tmp_path), [("a", "b")]) is None
    short = why_audit.part(frame.iloc[[3]], str(tmp_path), [("a", "b")])  # two epochs: said, not computed
    assert f"no run has {why_audit.MIN_EPOCHS} audited epochs" in short.finding


def test_a_damaged_audit_file_is_named(tmp_path):
    (tmp_path / why_files.AUDIT_FILE).write_text("epoch,synth_aupro\n1,0.5\n")
    with pytest.raises(Exception, match=re.escape(str(tmp_path / why_files.AUDIT_FILE))):
        why_files.read_audit(tmp_path)


def test_only_the_audit_modules_name_the_audit_file():
    """Grep-able: nothing that selects, thresholds or tunes reads selection_audit.csv (the file name appears elsewhere
    only in help texts and comments)."""
    readers = {path.stem for path in CODE_DIR.glob("*.py")
               if re.search(r"read_audit|AUDIT_FILE", path.read_text(encoding="utf-8"))}
    assert readers == {"why_files", "selection_audit", "why_audit"}


# ---------------------------------------------------------------------------------------------- training with the audit

def _tune(root: Path, out: Path, *extra: str) -> None:
    assert main(["tune", "--data-root", str(root), "--categories", "synth_object", "--backbones", "resnet50",
                 "--lr", "0.005", "--epochs", "2", "--image-size", "32", "--batch-size", "8", "--no-pretrained",
                 "--selection", "synthetic-val", "--val-every", "1", "--device", "cpu", "--no-eta",
                 "--out", str(out), *extra]) == 0


def _weights(path: Path) -> dict[str, torch.Tensor]:
    payload = read_checkpoint(path)
    return {f"{part}.{k}": v for part in ("bottleneck", "student") for k, v in payload[part].items()}


TIMING = ("epoch_time_s", "images_per_s", "peak_memory_mb")


def test_the_audit_changes_no_weight_selection_or_tune_result(synthetic_root, tmp_path):
    _tune(synthetic_root, tmp_path / "off")
    _tune(synthetic_root, tmp_path / "on", "--audit-test")
    off, on = tmp_path / "off", tmp_path / "on"
    setting = "lr0.005_beta1-0.5_epochs2"
    run_off, run_on = (folder / "runs" / setting / "results" / "resnet50" / "synth_object" / "seed0"
                       for folder in (off, on))
    ckpt_off, ckpt_on = (folder / "runs" / setting / "checkpoints" / "resnet50" / "synth_object" / "seed0"
                         for folder in (off, on))

    # tune: the same table, the same run scores and the same chosen config file
    assert (off / "tune.csv").read_text() == (on / "tune.csv").read_text()
    scores = [pd.read_csv(folder / "tune_runs.csv").drop(columns="run_dir") for folder in (off, on)]
    pd.testing.assert_frame_equal(*scores)
    chosen = [json.loads((folder / "configs" / "resnet50" / "synth_object.json").read_text()) for folder in (off, on)]
    assert [Path(config.pop("tuned_by")).name for config in chosen] == ["tune.csv", "tune.csv"]  # its own folder's
    assert chosen[0] == chosen[1]
    # training: bit-identical weights (BatchNorm statistics included) of the last and the selected epoch
    for name in (runs.CHECKPOINT_FILE, runs.BEST_CHECKPOINT_FILE):
        expected, actual = _weights(ckpt_off / name), _weights(ckpt_on / name)
        assert expected.keys() == actual.keys()
        assert all(torch.equal(expected[key], actual[key]) for key in expected), name
    assert read_checkpoint(ckpt_off / runs.BEST_CHECKPOINT_FILE)["training_state"]["epoch"] == \
        read_checkpoint(ckpt_on / runs.BEST_CHECKPOINT_FILE)["training_state"]["epoch"]
    histories = [runs.read_history(run).drop(columns=list(TIMING)) for run in (run_off, run_on)]
    pd.testing.assert_frame_equal(*histories)
    assert json.loads((run_on / runs.CONFIG_FILE).read_text())["audit_test"] is True

    # the audit: only in the audited run, one row per validated epoch, the history's synthetic AUPRO beside
    assert why_files.read_audit(run_off) is None
    audit = why_files.read_audit(run_on)
    assert audit["epoch"].tolist() == [1, 2]
    assert audit["synth_aupro"].tolist() == pytest.approx(histories[1]["synth_aupro"].tolist(), rel=1e-5)
    # its test scores are what `main.py test` measures for the same weights: the selected epoch's row
    # (scored in batches of the training's size, as the audit does: another batch size moves float rounding)
    metrics = [evaluate_run(run, device="cpu", save_maps=False, batch_size=8) for run in (run_off, run_on)]
    assert {k: v for k, v in metrics[0].items() if k != "efficiency"} == \
        {k: v for k, v in metrics[1].items() if k != "efficiency"}
    selected = audit[audit["epoch"] == metrics[1]["selected_epoch"]].iloc[0]
    assert selected["test_aupro"] == pytest.approx(metrics[1]["aupro"], abs=1e-9)
    assert selected["test_image_auroc"] == pytest.approx(metrics[1]["image_auroc"], abs=1e-12)


def test_a_resumed_audit_keeps_the_epochs_its_checkpoint_holds(synthetic_root, tmp_path):
    config = TrainConfig(data_root=str(synthetic_root), category="synth_object", backbone="resnet50", image_size=32,
                         pretrained=False, results=str(tmp_path / "results"), checkpoints=str(tmp_path / "ckpt"))
    why_files.write_audit(config.run_dir, [{"epoch": e, "synth_aupro": 0.1 * e, "test_aupro": 0.2} for e in (1, 2, 3)])
    audit = TestSetAudit(replace(config, audit_test=True), start_epoch=2)  # killed after epoch 3, resumed from 2
    assert [row["epoch"] for row in audit.rows] == [1, 2]
    assert len(audit.images) == len(audit.labels) == 16 and audit.has_masks

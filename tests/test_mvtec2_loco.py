"""MVTec AD 2 and MVTec LOCO AD end to end on generated trees (32 px, 1 epoch, random teachers): train with the
layouts' own validation normals (each layout by one trainer notebook and by `main.py train`: AD 2's ResNet by
RD_Trainer, LOCO's ConvNeXt by RD_ConvNeXt_Trainer, the other backbone of each by the command line), test (LOCO's sPRO
per anomaly type, AD 2's private sets left unscored), predict on a private set, compare with the logical / structural
table, and the tester notebook on those results."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import runs
from helpers import run_main
from synth_layouts import generate_ad2, generate_loco

CODE_DIR = Path(__file__).resolve().parents[1] / "RD4AD-main"
TRAIN = ["--categories", "all", "--epochs", "1", "--image-size", "32",
         "--batch-size", "4", "--no-pretrained", "--no-eta", "--device", "cpu"]


def papermill(name: str, out: Path, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "papermill", str(CODE_DIR / name), str(out), "--cwd", str(CODE_DIR),
                           "--kernel", "python3", "--no-progress-bar", *options],
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def studied(tmp_path_factory):
    """Both generated trees trained and tested by the fair pair into one results folder, each tree by one trainer
    notebook (which trains and tests its backbone) and by the command line (the other backbone)."""
    root = tmp_path_factory.mktemp("ad2_loco")
    generate_ad2(root / "ad2", image_size=32, n_train=6, n_validation=2, n_test=6, n_private=2)
    generate_loco(root / "loco", image_size=32, n_train=6, n_validation=2, n_test=6)
    folders = ["--results", str(root / "results"), "--checkpoints", str(root / "checkpoints")]
    plan = (("RD_Trainer.ipynb", "resnet50", "ad2", "synth_scene", "convnext_tiny"),
            ("RD_ConvNeXt_Trainer.ipynb", "convnext_tiny", "loco", "synth_loco", "resnet50"))
    for name, backbone, layout, category, by_command_line in plan:
        assert run_main("train", "--data-root", str(root / layout), "--backbones", by_command_line, *TRAIN,
                        *folders) == 0
        done = papermill(name, root / f"{backbone}.ipynb", "-p", "DEMO", "True", "-p", "DATA_ROOT",
                         str(root / layout), "-p", "BACKBONE", backbone, "-p", "EPOCHS", "1", "-p", "IMAGE_SIZE", "32",
                         "-p", "BATCH_SIZE", "4", "-p", "DEVICE", "cpu", "-p", "PRETRAINED", "False",
                         "-p", "RESULTS", str(root / "results"), "-p", "CHECKPOINTS", str(root / "checkpoints"))
        assert done.returncode == 0, done.stderr[-3000:]
        assert category in (root / f"{backbone}.ipynb").read_text(encoding="utf-8")  # its metrics table
    assert run_main("test", *folders, "--device", "cpu", "--no-scale-ablation") == 0
    return root


def test_runs_use_the_validation_folder_and_test_scores_only_the_labelled_sets(studied):
    results = studied / "results"
    for backbone in ("resnet50", "convnext_tiny"):
        scene = results / backbone / "synth_scene" / "seed0"
        record = runs.read_json(scene / runs.CONFIG_FILE)
        assert record["holdout_rule"] == "validation-folder" and record["data"]["data_format"] == "mvtec_ad2"
        assert record["val_names"] == ["validation/good/000_regular.png", "validation/good/001_regular.png"]
        assert (record["n_train"], record["n_val"]) == (6, 2)  # every train/good image trains
        result = runs.read_json(scene / runs.METRICS_FILE)
        assert result["n_test"] == 6 and result["n_val"] == 2 and 0 <= result["aupro"] <= 1
        assert result["unscored_splits"] == {"test_private": 2, "test_private_mixed": 2}
        assert "spro" not in result  # no saturation thresholds in AD 2
        scored = pd.read_csv(scene / runs.SCORES_FILE)["path"]
        assert scored.str.contains("test_public").all() and not scored.str.contains("private").any()

        loco = runs.read_json(results / backbone / "synth_loco" / "seed0" / runs.METRICS_FILE)
        assert set(loco["spro_by_type"]) == {"logical_anomalies", "structural_anomalies"}
        assert all(0 <= value <= 1 for value in loco["spro_by_type"].values())
        assert loco["spro"] == pytest.approx(sum(loco["spro_by_type"].values()) / 2)
        assert loco["spro_fpr_limit"] == 0.05 and loco["spro_regions"] + loco["spro_regions_lost"] == 7
        assert set(loco["per_defect_image_auroc"]) == {"logical_anomalies", "structural_anomalies"}


def test_predict_scores_a_private_set_and_refuses_other_layouts(studied, capsys):
    run = studied / "results" / "resnet50" / "synth_scene" / "seed0"
    out = studied / "predictions"
    assert run_main("predict", "--run-dir", str(run), "--split", "test_private_mixed", "--out", str(out),
                    "--device", "cpu") == 0
    scores = pd.read_csv(out / runs.SCORES_FILE)
    assert [Path(p).name for p in scores["image"]] == ["000_mixed.png", "001_mixed.png"]
    assert set(scores["decision"]) <= {"normal", "anomalous"}  # the run's validation threshold
    loco_run = studied / "results" / "resnet50" / "synth_loco" / "seed0"
    assert run_main("predict", "--run-dir", str(loco_run), "--split", "test_private", "--out", str(out)) == 2
    assert "are MVTec AD 2's" in capsys.readouterr().err


def test_compare_reports_logical_and_structural_anomalies(studied):
    out = studied / "report"
    assert run_main("compare", "--results", str(studied / "results"), "--out", str(out), "--n-boot", "20") == 0
    text = (out / "report.md").read_text(encoding="utf-8")
    assert "## Logical and structural anomalies (MVTec LOCO AD)" in text
    table = pd.read_csv(out / "tables" / "anomaly_kinds.csv")
    assert list(table["anomalies"]) == ["logical", "structural", "mean of both"] * 2
    assert set(table["category"]) == {"synth_loco"}  # the AD 2 scene has no such split
    # the table's numbers are the runs' metrics.json values, in percent
    run = runs.read_json(studied / "results" / "resnet50" / "synth_loco" / "seed0" / runs.METRICS_FILE)
    row = table[(table["backbone"] == "resnet50") & (table["anomalies"] == "logical")].iloc[0]
    assert float(row["AU-sPRO (%)"]) == pytest.approx(100 * run["spro_by_type"]["logical_anomalies"], abs=0.05)
    groups = pd.read_csv(out / "tables" / "group_stats.csv")
    assert {("mvtec_ad2", "scene"), ("mvtec_loco", "loco object")} <= set(zip(groups["dataset"], groups["group"]))
    # sPRO enters the tests over categories where the data has it (LOCO), silently nowhere else, and has no
    # per-category bootstrap (its per-region overlaps are not kept per image)
    aggregate = pd.read_csv(out / "tables" / "aggregate_tests.csv").query("metric == 'spro' and group == 'overall'")
    assert aggregate["dataset"].tolist() == ["mvtec_loco"]
    spro = {backbone: runs.read_json(studied / "results" / backbone / "synth_loco" / "seed0" / runs.METRICS_FILE)[
        "spro"] for backbone in ("resnet50", "convnext_tiny")}
    assert aggregate["mean_diff"].iloc[0] == pytest.approx(spro["resnet50"] - spro["convnext_tiny"])
    assert "spro" not in set(pd.read_csv(out / "tables" / "pairwise_tests_numeric.csv")["metric"])
    assert "sPRO" not in text.split("## Primary questions")[0]  # not named as unmeasured on MVTec AD 2


def test_tester_notebook_on_the_new_layouts(studied):
    out = studied / "tester.ipynb"
    done = papermill("RD_Tester.ipynb", out, "-p", "RESULTS_DIR", str(studied / "results"), "-p", "OUT_DIR",
                     str(studied / "nb_report"), "-p", "PAIR", "resnet50,convnext_tiny", "-p", "N_BOOT", "20")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Logical and structural anomalies" in (studied / "nb_report" / "report.md").read_text(encoding="utf-8")
    shown = out.read_text(encoding="utf-8")
    assert "MVTec LOCO AD by anomaly kind" in shown and "mean of both" in shown

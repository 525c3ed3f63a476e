"""VisA and split-file data sets end to end: check-data, train (1 epoch, random teacher) and test."""
from __future__ import annotations

import pytest

import runs
from helpers import run_main
from visa_tree import SPLIT_HEADER, write_split_csv, write_visa_tree

COMMON = ["--backbones", "resnet50", "--categories", "candle", "--epochs", "1", "--image-size", "64",
          "--batch-size", "4", "--no-pretrained", "--no-eta", "--device", "cpu"]



@pytest.fixture(scope="module")
def visa_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("visa")
    rows = write_visa_tree(root, {"candle": 1}, n_train=10, n_test_normal=3, n_anomaly=3)
    write_split_csv(root / "own_split.csv", SPLIT_HEADER, rows)  # the same data as a split file of one's own
    return root


@pytest.mark.parametrize("layout", [["--format", "auto"], ["--format", "csv", "--split-csv", "SPLIT"]],
                         ids=["visa", "split-file"])
def test_check_data_train_and_test(visa_root, tmp_path, capsys, layout):
    layout = [str(visa_root / "own_split.csv") if item == "SPLIT" else item for item in layout]
    data = ["--data-root", str(visa_root), *layout]
    assert run_main("check-data", *data, "--categories", "candle", "--image-size", "64", "--decode") == 0
    assert "candle" in capsys.readouterr().out
    folders = ["--results", str(tmp_path / "results"), "--checkpoints", str(tmp_path / "checkpoints")]
    assert run_main("train", *data, *COMMON, *folders) == 0
    assert run_main("test", *folders, "--device", "cpu") == 0
    run_dir = tmp_path / "results" / "resnet50" / "candle" / "seed0"
    record = runs.read_json(run_dir / runs.CONFIG_FILE)
    assert record["data"]["data_format"] == ("csv" if "csv" in layout else "visa")
    assert record["data"]["split_csv_sha256"]  # the split file is part of the run's provenance
    result = runs.read_json(run_dir / runs.METRICS_FILE)
    assert result["n_test"] == 6 and result["n_defect"] == 3 and 0 <= result["aupro"] <= 1

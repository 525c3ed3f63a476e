"""check-data: per-category counts (MVTec, VisA, split files), official-count warnings, mask findings, and
failures reported per category."""
from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import main
from check_data import check_category, official_counts
from errors import DataError
from visa_tree import write_visa_tree


def run_cli(monkeypatch: pytest.MonkeyPatch, *argv: str) -> int:
    monkeypatch.setattr(sys, "argv", ["main.py"])  # main.main rewrites sys.argv; restored after the test
    return main.main(list(argv))


@pytest.fixture
def tree(tmp_path: Path, synthetic_root: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    return root


def test_check_category_counts(synthetic_root):
    report = check_category(synthetic_root, "synth_object", image_size=64)
    assert report == {
        "category": "synth_object",
        "kind": "object",
        "group": "object",
        "data_format": "mvtec",
        "train_good": 24,
        "train": 18,
        "validation": 6,  # the 6 of the 24 names whose hold-out draw falls below 0.1 (dataset.split_train_val)
        "test_good": 5,
        "test_defect": 11,
        "defect_types": {"colour": 4, "missing_part": 4, "scratch": 3},
        "has_masks": True,
        "masks_found": 11,
        "official": None,
        "official_dataset": None,
        "matches_official": None,
        "unlabelled": {},
        "warnings": [],
    }


def test_counts_differing_from_official_table_warn(tree, capsys, monkeypatch):
    shutil.move(tree / "synth_object", tree / "toothbrush")
    report = check_category(tree, "toothbrush", image_size=64, decode=True)
    assert report["official"] == (60, 12, 30) and report["matches_official"] is False
    assert run_cli(monkeypatch, "check-data", "--data-root", str(tree), "--categories", "toothbrush") == 0
    err = capsys.readouterr().err
    assert "warning: toothbrush: (train good, test good, test defect) = (24, 5, 11) differ from the official " \
           "MVTec AD (60, 12, 30); a partial or damaged extraction?" in err


def test_table_and_masks_not_available(tree, capsys, monkeypatch):
    shutil.rmtree(tree / "synth_texture" / "ground_truth")
    (tree / "synth_texture" / "train" / "good" / "Thumbs.db").write_bytes(b"x")
    assert run_cli(monkeypatch, "check-data", "--data-root", str(tree), "--image-size", "64") == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    # train good = train + validation: the normal training images and the two parts they are split into
    assert re.split(r" {2,}", lines[0].strip()) == [
        "category", "group", "train good", "train", "validation", "test good", "test defect", "masks", "defect types"]
    assert lines[1].split() == ["synth_object", "object", "24", "18", "6", "5", "11", "11/11",
                                "colour", "4,", "missing_part", "4,", "scratch", "3"]
    assert lines[2].split()[:8] == ["synth_texture", "texture", "24", "18", "6", "5", "11", "n/a"]
    assert "2 categories OK" in captured.out and "(mvtec layout)" in captured.out
    assert "ignoring 1 non-image entries: Thumbs.db" in captured.err


def test_broken_category_is_reported_and_others_still_checked(tree, capsys, monkeypatch):
    (tree / "synth_texture" / "ground_truth" / "hole" / "000_mask.png").unlink()
    assert run_cli(monkeypatch, "check-data", "--data-root", str(tree), "--image-size", "64") == 2
    captured = capsys.readouterr()
    assert "synth_object" in captured.out
    assert "1 of 2 categories failed the check" in captured.err
    assert "synth_texture: " in captured.err and "defect image without a mask; expected" in captured.err


def test_decode_finds_truncated_files(tree):
    truncated = tree / "synth_texture" / "train" / "good" / "003.png"
    truncated.write_bytes(truncated.read_bytes()[:200])
    check_category(tree, "synth_texture", image_size=64)  # headers alone look fine
    with pytest.raises(DataError, match=rf"{truncated}: cannot decode image"):
        check_category(tree, "synth_texture", image_size=64, decode=True)


def test_unknown_category_and_empty_root(tmp_path, synthetic_root, capsys, monkeypatch):
    assert run_cli(monkeypatch, "check-data", "--data-root", str(synthetic_root), "--categories", "carpet") == 2
    assert "category 'carpet' not found" in capsys.readouterr().err
    assert run_cli(monkeypatch, "check-data", "--data-root", str(tmp_path)) == 2
    assert f"no category in {tmp_path}: expected sub-folders with train/good/" in capsys.readouterr().err
    assert run_cli(monkeypatch, "check-data", "--data-root", str(tmp_path / "missing")) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.fixture
def visa_tree(tmp_path: Path) -> Path:
    root = tmp_path / "visa"
    write_visa_tree(root)
    return root


def test_check_category_on_visa(visa_tree):
    report = check_category(visa_tree, "pcb1", image_size=32, decode=True)
    assert {key: report[key] for key in ("group", "data_format", "train_good", "train", "validation", "test_good",
                                         "test_defect", "defect_types", "has_masks", "masks_found")} == {
        "group": "complex structure", "data_format": "visa", "train_good": 10, "train": 6, "validation": 4,
        "test_good": 2, "test_defect": 3, "defect_types": {"anomaly": 3}, "has_masks": True, "masks_found": 3}
    assert report["official"] == (904, 100, 100) and report["official_dataset"] == "VisA (split_csv/1cls.csv)"
    assert report["matches_official"] is False
    assert report["warnings"] == [
        "pcb1: (train good, test good, test defect) = (10, 2, 3) differ from the official VisA (split_csv/1cls.csv) "
        "(904, 100, 100); a partial or damaged extraction? Re-run `main.py download --dataset visa`"]


def test_check_data_command_on_visa(visa_tree, capsys, monkeypatch):
    assert run_cli(monkeypatch, "check-data", "--data-root", str(visa_tree), "--image-size", "32", "--decode") == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[1].split() == ["candle", "multiple", "instances", "10", "6", "4", "2", "3", "3/3", "anomaly", "3"]
    assert lines[2].split()[:3] == ["pcb1", "complex", "structure"]
    assert "2 categories OK" in captured.out and "(visa layout)" in captured.out
    assert "differ from the official VisA" in captured.err  # a 10-image tree is not the real VisA


def test_check_data_command_on_a_split_file(tmp_path, visa_tree, capsys, monkeypatch):
    split_file = tmp_path / "mine.csv"
    text = (visa_tree / "split_csv" / "1cls.csv").read_text()
    split_file.write_text(text.replace("object,", "category,", 1).replace("pcb1,", "parts,"))
    args = ("check-data", "--data-root", str(visa_tree), "--split-csv", str(split_file), "--image-size", "32")
    assert run_cli(monkeypatch, *args) == 0
    captured = capsys.readouterr()
    assert [line.split()[0] for line in captured.out.splitlines()[1:3]] == ["candle", "parts"]
    assert "(csv layout)" in captured.out and "official" not in captured.err  # a user's own split: no table
    assert run_cli(monkeypatch, *args, "--format", "mvtec") == 2
    assert "is read by --format csv or visa, not by --format mvtec" in capsys.readouterr().err


def test_decode_reports_masks_with_more_than_two_values(tree):
    mask_path = tree / "synth_object" / "ground_truth" / "scratch" / "000_mask.png"
    mask = np.asarray(Image.open(mask_path)).copy()
    mask[mask > 0] = 100
    mask[0, 0] = 255
    Image.fromarray(mask).save(mask_path)
    empty = tree / "synth_object" / "ground_truth" / "colour" / "001_mask.png"
    Image.fromarray(np.zeros_like(mask)).save(empty)
    assert check_category(tree, "synth_object", image_size=64)["warnings"] == []  # decoding finds them
    report = check_category(tree, "synth_object", image_size=64, decode=True)
    assert report["warnings"] == [
        f"{mask_path}: mask with 3 distinct values (values 0, 100, 255); every non-zero pixel counts as defect",
        f"{empty}: the mask of a defect image is all zero; expected its defect pixels non-zero",
    ]


def test_folder_without_train_good_fails_all(tree, capsys, monkeypatch):
    (tree / "results").mkdir()
    (tree / "license.txt").write_text("x")
    assert run_cli(monkeypatch, "check-data", "--data-root", str(tree)) == 2
    message = f"{tree / 'results'} is not an MVTec-format category: it has no train/good/ folder"
    assert message in capsys.readouterr().err


def test_path_like_category_is_refused(tree, capsys, monkeypatch):
    assert run_cli(monkeypatch, "check-data", "--data-root", str(tree), "--categories", "../other/cat") == 2
    assert "category '../other/cat' is not a plain folder name" in capsys.readouterr().err


def test_official_counts_lookup():
    assert official_counts("bottle", "mvtec")[2] == (209, 20, 63)
    assert official_counts("pcb3", "visa")[2] == (905, 101, 100)
    assert official_counts("pcb3", "mvtec")[0].startswith("VisA")  # VisA converted to MVTec layout
    assert official_counts("pcb3", "csv") is None and official_counts("mine", "mvtec") is None

"""check-data: per-category counts, official-count warnings, and failures reported per category."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

import main
from check_data import check_category
from errors import DataError


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
        "train_good": 24,
        "train": 20,
        "validation": 4,
        "test_good": 5,
        "test_defect": 11,
        "defect_types": {"colour": 4, "missing_part": 4, "scratch": 3},
        "has_masks": True,
        "masks_found": 11,
        "official": None,
        "matches_official": None,
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
    assert lines[0].split() == ["category", "kind", "train", "good", "val", "test", "good", "test", "defect",
                                "masks", "defect", "types"]
    assert lines[1].split() == ["synth_object", "object", "24", "4", "5", "11", "11/11",
                                "colour", "4,", "missing_part", "4,", "scratch", "3"]
    assert lines[2].split()[:7] == ["synth_texture", "texture", "24", "4", "5", "11", "n/a"]
    assert "2 categories OK" in captured.out
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

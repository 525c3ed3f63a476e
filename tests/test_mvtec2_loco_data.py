"""The MVTec AD 2 and MVTec LOCO AD layouts without training: detection, splits (their own validation normals),
LOCO's mask folders and regions, AD 2's unlabelled sets, broken trees, check-data's official counts, the
generators, download by hand, and the sPRO that test writes."""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import layout_metrics
import main
import metrics
from categories import (LOCO_ARCHIVE_COUNTS, LOCO_OFFICIAL_COUNTS, MVTEC_AD2_ARCHIVE_TOTALS, MVTEC_AD2_CATEGORIES,
                        MVTEC_AD2_PRIVATE_COUNTS, MVTEC_LOCO_CATEGORIES, category_group)
from check_data import check_category
from dataset import VALIDATION_FOLDER_RULE, AnomalyDataset, detect_format, list_categories
from download import AD2_PAGE, ARCHIVES, LOCO_PAGE, LOCO_SHA256
from errors import DataError
from image_io import read_mask
from synth_layouts import LOCO_DEFECTS, generate_ad2, generate_loco, render_loco


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> Path:
    """Generated AD 2 (synth_scene) and LOCO (synth_loco) trees at 32 px (read-only: copy them to break them)."""
    root = tmp_path_factory.mktemp("layouts")
    generate_ad2(root / "ad2", image_size=32, n_train=5, n_validation=2, n_test=6, n_private=3)
    generate_loco(root / "loco", image_size=32, n_train=5, n_validation=2, n_test=6)
    return root


def copy(trees: Path, name: str, tmp_path: Path) -> Path:
    shutil.copytree(trees / name, tmp_path / name)
    return tmp_path / name


def run_cli(monkeypatch, *argv: str) -> int:
    monkeypatch.setattr(sys, "argv", ["main.py"])
    return main.main(list(argv))


def test_tables_add_up_to_the_published_totals():
    assert sorted(MVTEC_AD2_CATEGORIES) == sorted(MVTEC_AD2_PRIVATE_COUNTS) and len(MVTEC_AD2_CATEGORIES) == 8
    assert [sum(counts[i] for counts in MVTEC_AD2_PRIVATE_COUNTS.values()) for i in (0, 1)] == [2045, 2045]
    assert sum(MVTEC_AD2_ARCHIVE_TOTALS) + 2 * 2045 == 8004  # "more than 8,000 images"
    assert sorted(MVTEC_LOCO_CATEGORIES) == sorted(LOCO_OFFICIAL_COUNTS) and len(MVTEC_LOCO_CATEGORIES) == 5
    assert sum(map(sum, LOCO_OFFICIAL_COUNTS.values())) == 3644  # the paper's 3,644 images
    archive = {**LOCO_OFFICIAL_COUNTS, **LOCO_ARCHIVE_COUNTS}
    assert sum(map(sum, archive.values())) == 3651  # the archive's 3,651
    assert {category_group(name) for name in MVTEC_AD2_CATEGORIES} == {"scene"}
    assert {category_group(name) for name in MVTEC_LOCO_CATEGORIES} == {"loco object"}


def test_detection_and_categories(trees):
    assert detect_format(trees / "ad2") == "mvtec_ad2" and detect_format(trees / "loco") == "mvtec_loco"
    assert list_categories(trees / "ad2") == ["synth_scene"] and list_categories(trees / "loco") == ["synth_loco"]


def test_ad2_splits_validation_folder_and_unlabelled_sets(trees):
    root = trees / "ad2"
    train, val, test = (AnomalyDataset(root, "synth_scene", split, 32) for split in ("train", "val", "test"))
    assert len(train) == 5 and val.holdout_rule == train.holdout_rule == VALIDATION_FOLDER_RULE
    assert val.val_names == ["validation/good/000_regular.png", "validation/good/001_regular.png"]
    assert [Path(p).parent.name for p in val.paths] == ["good", "good"]
    assert all("/validation/" in p for p in val.paths) and not any("/validation/" in p for p in train.paths)
    assert test.defect_types == ["good"] * 2 + ["bad"] * 4 and test.has_masks
    assert all("test_public" in p for p in test.paths)
    assert {name: len(files) for name, files in test.unlabelled_splits.items()} == {"test_private": 3,
                                                                                   "test_private_mixed": 3}
    # wide sources (48 x 32 px) come out square at the working size, masks too
    assert test.uint8_images().shape == (6, 3, 32, 32) and int(test.uint8_masks()[2:].sum()) > 0
    assert layout_metrics.layout_results(torch.zeros(6, 32, 32), test)["unscored_splits"]["test_private"] == 3
    with pytest.raises(DataError, match="differ from the recorded validation images"):
        AnomalyDataset(root, "synth_scene", "val", 32, val_names=["000_regular.png"])


def test_loco_mask_folders_are_merged_and_kept_per_region(trees):
    test = AnomalyDataset(trees / "loco", "synth_loco", "test", 32)
    assert test.defect_types.count("logical_anomalies") == 3 and test.defect_types.count("structural_anomalies") == 2
    assert sorted(spec.defect_name for spec in test.defects_config.values()) == sorted(LOCO_DEFECTS)
    masks = test.uint8_masks()[:, 0]
    for index, mask_path in enumerate(test.mask_paths):
        if mask_path is None:
            continue
        regions = test.regions(index)
        files = sorted(Path(mask_path).glob("*.png"))
        assert [Path(r.path) for r in regions] == files and len(files) >= 1
        union = np.logical_or.reduce([np.asarray(Image.open(f)) != 0 for f in files])
        expected = read_mask(Path(mask_path), 32)  # the folder's union, resized once
        assert torch.equal(masks[index], torch.from_numpy(expected))
        assert expected.sum() > 0 and union.shape == (32, 40)
        values = {np.unique(np.asarray(Image.open(f)))[-1] for f in files}
        assert {r.pixel_value for r in regions} == values and all(r.scale == 32 * 32 / (32 * 40) for r in regions)
    # two region PNGs for the image with a missing and an extra part
    assert max(len(test.regions(i)) for i in range(len(test))) == 2


def test_loco_spro_of_a_perfect_map_is_one(trees):
    """test's sPRO on maps that are the merged masks: every region fully found before any false positive."""
    test = AnomalyDataset(trees / "loco", "synth_loco", "test", 32)
    perfect = test.uint8_masks()[:, 0].float()
    result = layout_metrics.spro_results(perfect, test)
    assert result["spro_by_type"] == {"logical_anomalies": 1.0, "structural_anomalies": 1.0} and result["spro"] == 1.0
    assert result["spro_regions"] == 7 and result["spro_regions_lost"] == 0
    # against the definition on the structural images and the good one
    members = [i for i, t in enumerate(test.defect_types) if t in ("good", "structural_anomalies")]
    noisy = perfect + torch.rand(perfect.shape, generator=torch.Generator().manual_seed(0))
    masks, images, saturations, lost = layout_metrics.saturated_regions(test, members)
    expected = metrics.spro(noisy[members], masks, images, saturations)
    assert layout_metrics.spro_results(noisy, test)["spro_by_type"]["structural_anomalies"] == expected
    assert lost == [] and len(images) == 3


def test_broken_loco_trees_are_named(trees, tmp_path):
    root = copy(trees, "loco", tmp_path)
    folder = root / "synth_loco"
    shutil.rmtree(folder / "ground_truth" / "structural_anomalies" / "001")
    with pytest.raises(DataError, match=r"structural_anomalies/001.png: defect image without a mask; expected "
                                        r".*ground_truth/structural_anomalies/001/\*\.png"):
        AnomalyDataset(root, "synth_loco", "test", 32)
    (folder / "ground_truth" / "structural_anomalies" / "001").mkdir()
    with pytest.raises(DataError, match="mask folder without a PNG"):
        AnomalyDataset(root, "synth_loco", "test", 32)
    region = folder / "ground_truth" / "structural_anomalies" / "001" / "000.png"
    two_values = np.zeros((32, 40), dtype=np.uint8)
    two_values[:4, :4], two_values[8:12, 8:12] = 150, 200
    Image.fromarray(two_values).save(region)
    test = AnomalyDataset(root, "synth_loco", "test", 32)
    with pytest.raises(DataError, match=r"001/000.png: a region mask with non-zero values 150, 200"):
        test.uint8_masks()
    unknown = two_values.copy()
    unknown[unknown == 200] = 150
    unknown[unknown == 150] = 77
    Image.fromarray(unknown).save(region)
    test = AnomalyDataset(root, "synth_loco", "test", 32)
    with pytest.raises(DataError, match=r"pixel value 77 is not a defect type of .*defects_config.json"):
        layout_metrics.spro_results(test.uint8_masks()[:, 0].float(), test)
    shutil.copytree(folder / "ground_truth" / "logical_anomalies" / "000", folder / "ground_truth" /
                    "logical_anomalies" / "099")
    with pytest.raises(DataError, match=r"logical_anomalies/099: mask without an image"):
        AnomalyDataset(root, "synth_loco", "test", 32)


def test_loco_without_defects_config_has_pixel_metrics_but_no_spro(trees, tmp_path):
    root = copy(trees, "loco", tmp_path)
    (root / "synth_loco" / "defects_config.json").unlink()
    assert detect_format(root) == "mvtec_loco"  # its anomaly folders still say LOCO
    test = AnomalyDataset(root, "synth_loco", "test", 32)
    assert test.defects_config is None and test.uint8_masks().sum() > 0
    result = layout_metrics.layout_results(test.uint8_masks()[:, 0].float(), test)
    assert result["spro"] is None and "no defects_config.json" in result["spro_note"]


def test_check_data_counts_and_official_tables(trees, tmp_path, monkeypatch, capsys):
    report = check_category(trees / "loco", "synth_loco", 32, decode=True)
    assert (report["train_good"], report["train"], report["validation"]) == (5, 5, 2)
    assert report["official"] is None and report["warnings"] == []  # region values checked, none unknown
    root = copy(trees, "loco", tmp_path)
    shutil.move(root / "synth_loco", root / "splicing_connectors")
    report = check_category(root, "splicing_connectors", 32)
    assert report["official"] == (354, 59, 119, 108, 85) and report["matches_official"] is False
    assert "(train, validation, test good, logical, structural) = (5, 2, 1, 3, 2) differ from the official MVTec " \
           "LOCO AD (354, 59, 119, 108, 85)" in report["warnings"][0]
    monkeypatch.setitem(LOCO_ARCHIVE_COUNTS, "splicing_connectors", (5, 2, 1, 3, 2))  # the archive's own counts
    assert check_category(root, "splicing_connectors", 32)["matches_official"] is True
    ad2 = copy(trees, "ad2", tmp_path)
    shutil.move(ad2 / "synth_scene", ad2 / "vial")
    report = check_category(ad2, "vial", 32)
    assert report["official"] == (276, 276) and report["unlabelled"] == {"test_private": 3, "test_private_mixed": 3}
    assert "(test_private, test_private_mixed) = (3, 3) differ from the official MVTec AD 2 (276, 276)" \
        in report["warnings"][0]
    assert run_cli(monkeypatch, "check-data", "--data-root", str(ad2), "--image-size", "32") == 0
    out = capsys.readouterr().out
    assert "vial: without labels (scored by `main.py predict --split` only): test_private 3, test_private_mixed 3" \
        in out and "(mvtec_ad2 layout)" in out


def test_generators_are_deterministic_and_loco_regions_are_the_changes(tmp_path, monkeypatch, capsys):
    def tree_bytes(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    generate_loco(tmp_path / "a", image_size=32, n_train=2, n_validation=1, n_test=6, seed=5)
    generate_loco(tmp_path / "b", image_size=32, n_train=2, n_validation=1, n_test=6, seed=5)
    assert tree_bytes(tmp_path / "a") == tree_bytes(tmp_path / "b")
    image, regions = render_loco(0, "test", "missing_and_extra", 0, 32, 5)
    assert [name for name, _ in regions] == ["missing_part", "extra_part"]
    assert all(mask.any() for _, mask in regions) and not (regions[0][1] & regions[1][1]).any()
    _, scratches = render_loco(0, "test", "two_scratches", 0, 32, 5)
    assert [name for name, _ in scratches] == ["scratch", "scratch"] and image.shape == (32, 40, 3)
    assert run_cli(monkeypatch, "synth", "--data-root", str(tmp_path / "c"), "--layout", "mvtec_ad2",
                   "--image-size", "32", "--train", "4", "--test", "4") == 0
    assert "mvtec_ad2 layout" in capsys.readouterr().out and detect_format(tmp_path / "c") == "mvtec_ad2"
    (tmp_path / "d" / "synth_loco").mkdir(parents=True)  # not written by synth: left alone
    with pytest.raises(DataError, match="was not written by synth"):
        generate_loco(tmp_path / "d", image_size=32)


def test_download_by_hand(tmp_path, trees, monkeypatch, capsys):
    assert ARCHIVES["mvtec_ad2"].url == ARCHIVES["mvtec_loco"].url == "" and ARCHIVES["mvtec_ad2"].sha256 == ""
    assert run_cli(monkeypatch, "download", "--dataset", "mvtec_loco", "--data-root", str(tmp_path / "loco")) == 2
    err = capsys.readouterr().err
    assert LOCO_PAGE in err and "accept its licence" in err and LOCO_SHA256 in err and "--archive PATH" in err
    assert run_cli(monkeypatch, "download", "--dataset", "mvtec_ad2", "--url", "http://127.0.0.1:9/x.tar.gz") == 2
    err = capsys.readouterr().err
    assert AD2_PAGE in err and "no SHA-256 is published" in err
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(trees / "ad2" / "synth_scene", arcname="mvtec_ad_2/synth_scene")
    archive = tmp_path / "mvtec_ad_2.tar.gz"
    archive.write_bytes(buffer.getvalue())
    dest = tmp_path / "ad2"
    assert run_cli(monkeypatch, "download", "--dataset", "mvtec_ad2", "--archive", str(archive),
                   "--data-root", str(dest)) == 0
    out = capsys.readouterr().out
    assert f"its SHA-256 is {hashlib.sha256(archive.read_bytes()).hexdigest()}" in out
    assert f"pass --data-root {dest / 'mvtec_ad_2'}" in out and list_categories(dest / "mvtec_ad_2") == ["synth_scene"]
    with pytest.raises(DataError, match=f"SHA-256 mismatch: expected {LOCO_SHA256}"):
        from download import download_and_extract
        download_and_extract(tmp_path / "loco", archive=archive, dataset="mvtec_loco")
    assert run_cli(monkeypatch, "download", "--dataset", "mvtec_loco", "--archive", str(archive), "--data-root",
                   str(tmp_path / "loco2"), "--sha256", hashlib.sha256(archive.read_bytes()).hexdigest()) == 0
    assert json.loads((tmp_path / "loco2" / "mvtec_ad_2" / "synth_scene" / "synth.json").read_text())["layout"] \
        == "mvtec_ad2"

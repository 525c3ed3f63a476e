"""sPRO (MVTec LOCO AD's saturated per-region overlap, docs/reproduction.md section 10): the exact curve of
metrics.py against the per-threshold definition of reference_metrics.py on random cases (ties, images without a
region, a single normal image, overlapping regions, saturation below and above the area), hand-built cases, its
relation to AUPRO, its errors, and defects_config.json's reading and saturation areas."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

import metrics as M
import reference_metrics as R
from defects_config import DefectSpec, read_defects_config, saturation_area
from errors import DataError


def random_case(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """1-4 maps (often quantised: ties), 1-5 regions on random images (some images have none; regions may
    overlap), saturations from a third of the area to one and a half times it; at least one normal pixel."""
    rng = np.random.default_rng(seed)
    n, h, w = int(rng.integers(1, 5)), int(rng.integers(3, 9)), int(rng.integers(3, 9))
    maps = rng.random((n, h, w))
    if rng.random() < 0.7:
        maps = np.round(maps * rng.integers(2, 9)) / 8.0  # few levels: ties within and across classes
    n_regions = int(rng.integers(1, 6))
    masks = np.zeros((n_regions, h, w), dtype=bool)
    images = rng.integers(0, n, n_regions)
    for r in range(n_regions):
        while not masks[r].any():
            masks[r] = rng.random((h, w)) < rng.uniform(0.05, 0.4)
        maps[images[r]] += 0.3 * masks[r] * rng.random()  # regions score higher on average
    areas = masks.reshape(n_regions, -1).sum(axis=1)
    saturations = areas * rng.choice([1.0, 0.5, 1.5, 1 / 3], n_regions)
    union = np.zeros(maps.shape, dtype=bool)
    for mask, image in zip(masks, images):
        union[image] |= mask
    if union.all():
        return random_case(seed + 10_000)
    return maps.astype(np.float32), masks, images, saturations


@pytest.mark.parametrize("seed", range(60))
def test_spro_equals_the_per_threshold_definition(seed):
    maps, masks, images, saturations = random_case(seed)
    for limit in (0.05, 0.3, 1.0):
        assert M.spro(maps, masks, images, saturations, limit) == pytest.approx(
            R.spro_naive(maps, masks, images, saturations, limit), abs=1e-12)
    fpr, curve = M.spro_curve(maps, masks, images, saturations)
    fpr_naive, curve_naive = R.spro_curve_naive(maps, masks, images, saturations)
    # the same points (the naive curve may repeat a point where only normal or only region pixels step)
    points = set(zip(np.round(fpr, 12), np.round(curve, 12)))
    assert points == set(zip(np.round(fpr_naive, 12), np.round(curve_naive, 12)))
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(curve) >= -1e-15)


def test_a_single_normal_image_and_a_region_on_it():
    """One image: the region is its only defect; FPR runs over its other pixels."""
    maps = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    masks = np.zeros((1, 4, 4), dtype=bool)
    masks[0, 3] = True  # the four highest scores: a perfect map
    assert M.spro(maps, masks, [0], [4.0], 0.05) == 1.0
    assert M.spro(maps[:, ::-1].copy(), masks, [0], [4.0], 1.0) == pytest.approx(
        R.spro_naive(maps[:, ::-1].copy(), masks, [0], [4.0], 1.0))


def test_saturation_hand_example():
    """A 4-pixel region saturated at 2: flagging its two highest pixels finds it fully (sPRO 1), while PRO is 0.5."""
    maps = np.zeros((2, 3, 3), dtype=np.float32)
    masks = np.zeros((1, 3, 3), dtype=bool)
    masks[0, 0, :2] = masks[0, 1, :2] = True
    maps[1][masks[0]] = [0.9, 0.8, 0.2, 0.1]  # region on image 1; every other pixel scores 0
    fpr, curve = M.spro_curve(maps, masks, [1], [2.0])
    assert fpr.tolist() == [0.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    assert curve.tolist() == [0.0, 0.5, 1.0, 1.0, 1.0, 1.0]
    _, pro = M.spro_curve(maps, masks, [1], [4.0])  # saturation = area: the PRO of this region
    assert pro.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    # saturation above the area (allowed: the region then never counts as fully found)
    assert M.spro_curve(maps, masks, [1], [8.0])[1][-1] == 0.5


def test_regions_may_overlap_and_each_counts_its_own_pixels():
    maps = np.zeros((1, 2, 3), dtype=np.float32)
    maps[0, 0] = [3, 2, 1]
    masks = np.zeros((2, 2, 3), dtype=bool)
    masks[0, 0, :2] = True  # pixels scored 3 and 2
    masks[1, 0, 1:] = True  # pixels scored 2 and 1: the pixel scored 2 lies in both
    fpr, curve = M.spro_curve(maps, masks, [0, 0], [2.0, 2.0])
    assert curve.tolist() == [0.0, 0.25, 0.75, 1.0, 1.0]  # flagged >= 3, >= 2, >= 1, >= 0
    assert fpr.tolist() == [0.0, 0.0, 0.0, 0.0, 1.0]


def test_with_whole_components_and_their_areas_spro_is_aupro():
    """Regions = the 8-connected components of the masks, saturation = their area: sPRO's curve is AUPRO's."""
    rng = np.random.default_rng(7)
    maps = rng.random((4, 12, 12)).astype(np.float32)
    union = rng.random((4, 12, 12)) < 0.1
    union[0] = False
    regions, images = [], []
    for index, mask in enumerate(union):
        labelled, count = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [labelled == k for k in range(1, count + 1)]
        images += [index] * count
    regions = np.stack(regions)
    areas = regions.reshape(len(regions), -1).sum(axis=1).astype(float)
    assert M.spro(maps, regions, images, areas, 0.3) == pytest.approx(M.aupro(maps, union, 0.3), abs=1e-12)


def test_errors_name_the_problem():
    maps = np.random.default_rng(0).random((2, 4, 4)).astype(np.float32)
    masks = np.zeros((1, 4, 4), dtype=bool)
    masks[0, 0, 0] = True
    with pytest.raises(ValueError, match="region 0 has no pixel"):
        M.spro(maps, np.zeros((1, 4, 4), dtype=bool), [0], [1.0])
    with pytest.raises(ValueError, match="no region"):
        M.spro(maps, np.zeros((0, 4, 4), dtype=bool), np.zeros(0, dtype=int), np.zeros(0))
    with pytest.raises(ValueError, match="positive, finite"):
        M.spro(maps, masks, [0], [0.0])
    with pytest.raises(ValueError, match="index the 2 maps"):
        M.spro(maps, masks, [2], [1.0])
    with pytest.raises(ValueError, match=r"\(R, H, W\)"):
        M.spro(maps, np.zeros((1, 3, 4), dtype=bool), [0], [1.0])
    with pytest.raises(ValueError, match="at least one normal pixel"):
        M.spro(maps[:1], np.ones((1, 4, 4), dtype=bool), [0], [1.0])
    with pytest.raises(ValueError, match="NaN"):
        M.spro(np.where(maps > 0.5, np.nan, maps).astype(np.float32), masks, [0], [1.0])
    with pytest.raises(ValueError, match="fpr_limit"):
        M.spro(maps, masks, [0], [1.0], 0.0)


def test_defects_config_reading_and_saturation_areas(tmp_path):
    path = tmp_path / "defects_config.json"
    entries = [{"defect_name": "missing", "pixel_value": 255, "saturation_threshold": 900,
                "relative_saturation": False},
               {"defect_name": "scratch", "pixel_value": 42, "saturation_threshold": 0.5, "relative_saturation": True}]
    path.write_text(json.dumps(entries))
    config = read_defects_config(path)
    assert config == {255: DefectSpec("missing", 255, 900.0, False), 42: DefectSpec("scratch", 42, 0.5, True)}
    # absolute: min(threshold scaled to the working size, area); relative: a share of the area
    assert saturation_area(config[255], area=500, scale=0.25) == 225.0
    assert saturation_area(config[255], area=100, scale=0.25) == 100.0
    assert saturation_area(config[42], area=30, scale=0.25) == 15.0
    bad = [({**entries[0], "pixel_value": 0}, "pixel_value 0"),
           ({**entries[0], "saturation_threshold": 2.5}, "whole number of pixels"),
           ({**entries[1], "saturation_threshold": 1.5}, r"fraction of the region's area in \(0, 1\]"),
           ({"defect_name": "x"}, "expected an object with the fields"),
           ({**entries[1], "pixel_value": 255}, "pixel_value 255 is already used by 'missing'")]
    for entry, message in bad:
        path.write_text(json.dumps([entries[0], entry]))
        with pytest.raises(DataError, match=f"defects_config.json, entry 2.*{message}"):
            read_defects_config(path)
    path.write_text("{not json")
    with pytest.raises(DataError, match="not a JSON file"):
        read_defects_config(path)

"""The low-false-alarm metrics of docs/reproduction.md#4-metrics (per-image AUPIMO, AUPRO to FPR 0.05, SegF1 at the
validation threshold and the test-tuned SegF1-max) against their straightforward definitions in reference_metrics.py
on random small cases, hand-computed curves and edge cases; and their place in `test`'s files."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

import metrics as M
import reference_metrics as R
import runs

N_CASES = 60


def random_case(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, float], float]:
    """Small maps (N, H, W) with 1 to N-1 normal images first, blob and speckle masks on the anomalous ones (some
    empty), scores quantised in 3 of 4 cases (ties), a random AUPIMO band (resolved or not by the normal pixels) and a
    threshold on, just above or just below a score (float64, not always a float32 value)."""
    rng = np.random.default_rng(seed)
    n, h, w = int(rng.integers(2, 7)), int(rng.integers(4, 13)), int(rng.integers(4, 13))
    masks = rng.random((n, h, w)) < rng.uniform(0.0, 0.3)
    masks[:, 1:4, 1:3] |= rng.random((n, 1, 1)) < 0.5
    maps = rng.random((n, h, w)) + rng.uniform(0.0, 0.8) * masks
    levels = (None, 3, 8, 40)[seed % 4]
    if levels is not None:
        maps = np.round(maps * levels) / levels
    maps = maps.astype(np.float32)
    n_normal = 1 if seed % 5 == 0 else int(rng.integers(1, n))  # a single normal image in a fifth of the cases
    labels = np.r_[np.zeros(n_normal, dtype=bool), np.ones(n - n_normal, dtype=bool)]
    masks[:n_normal] = False
    if seed % 7 == 0:
        masks[-1] = False  # an anomalous image whose mask is empty
    normal_pixels = n_normal * h * w
    low = 10 ** rng.uniform(math.log10(0.3 / normal_pixels), math.log10(0.5))
    band = (low, min(1.0, low * 10 ** rng.uniform(0.1, 1.5)))
    threshold = float(rng.choice(maps.ravel())) + (0.0, 1e-9, -1e-9)[seed % 3]
    return maps, masks, labels, band, threshold


def test_aupimo_equals_its_definition_on_random_cases():
    resolved = 0
    for seed in range(N_CASES):
        maps, masks, labels, band, _ = random_case(seed)
        fast = M.aupimo(maps, masks, labels, band)
        expected = R.aupimo_naive(maps, masks, labels, band)
        np.testing.assert_allclose(fast.per_image, expected, rtol=0, atol=1e-12, equal_nan=True,
                                   err_msg=f"case {seed}")
        assert np.isnan(fast.per_image[~labels]).all()
        resolved += fast.resolved
    assert 10 < resolved < N_CASES  # both resolved and unresolved bands were checked


def test_pixel_metrics_of_localisation_equal_their_definitions_on_random_cases():
    checked = 0
    for seed in range(N_CASES):
        maps, masks, labels, band, threshold = random_case(seed)
        if not masks.any():
            continue
        values, _ = M.localisation_metrics(maps, masks, labels, threshold, aupro_limits=(0.3, 0.05), fpr_band=band)
        assert values["seg_f1"] == R.seg_f1_naive(maps, masks, threshold), seed
        assert (values["seg_f1_max"], values["seg_f1_max_threshold"]) == M.f1_max(maps.ravel(), masks.ravel()), seed
        assert values["seg_f1_max"] == pytest.approx(R.f1_max_naive(maps.ravel(), masks.ravel()), abs=1e-15)
        assert values["aupro_5pct"] == pytest.approx(R.aupro_naive(maps, masks, 0.05), abs=1e-9), seed
        assert values["aupro"] == M.pixel_metrics(maps, masks)["aupro"]  # the standard values, bit for bit
        assert values["pixel_auroc"] == M.pixel_metrics(maps, masks)["pixel_auroc"]
        checked += 1
    assert checked >= 50


def hand_case(defect_scores: list[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One normal image scoring 0.1, 0.2, ..., 1.0 (FPR k/10 at threshold 1.1 - k/10) and one anomalous image whose
    defect pixels score ``defect_scores`` (its other pixels score 0)."""
    maps = np.zeros((2, 1, 10), dtype=np.float64)
    masks = np.zeros((2, 1, 10), dtype=bool)
    maps[0, 0] = np.arange(1, 11) / 10
    maps[1, 0, :len(defect_scores)] = defect_scores
    masks[1, 0, :len(defect_scores)] = True
    return maps, masks, np.array([0, 1])


def test_aupimo_hand_computed_curves():
    # above every normal score: recall 1 over the whole band; below every one: 0
    assert M.aupimo(*hand_case([2.0, 3.0]), fpr_band=(0.1, 1.0)).per_image[1] == pytest.approx(1.0)
    assert M.aupimo(*hand_case([0.05]), fpr_band=(0.1, 1.0)).per_image[1] == 0.0
    # 0.55 lies between the normal scores 0.5 and 0.6: recall rises from 1/2 to 1 at FPR 0.5 (the last threshold
    # above 0.5), a vertical step, so the area is 1/2 over log 0.1..log 0.5 and 1 over log 0.5..log 1
    expected = (0.5 * math.log(5) + math.log(2)) / math.log(10)
    assert M.aupimo(*hand_case([2.0, 0.55]), fpr_band=(0.1, 1.0)).per_image[1] == pytest.approx(expected, abs=1e-12)
    # 0.5 equals a normal score: recall rises along the segment from (log 0.5, 1/2) to (log 0.6, 1); the band
    # (0.55, 0.6) cuts it and its low end is interpolated linearly in log FPR
    at_low = 0.5 + 0.5 * math.log(0.55 / 0.5) / math.log(0.6 / 0.5)
    value = M.aupimo(*hand_case([2.0, 0.5]), fpr_band=(0.55, 0.6)).per_image[1]
    assert value == pytest.approx((at_low + 1.0) / 2.0, abs=1e-12)


def test_aupimo_measures_fpr_on_the_normal_images_only():
    maps, masks, labels, band, _ = random_case(3)
    before = M.aupimo(maps, masks, labels, band)
    assert before.resolved
    louder = maps.copy()
    louder[labels] += np.where(masks[labels], 0.0, 5.0).astype(np.float32)  # anomalous images' normal pixels
    np.testing.assert_array_equal(M.aupimo(louder, masks, labels, band).per_image, before.per_image)
    shifted = maps.copy()
    shifted[~labels] += 0.25  # the normal images themselves do move it
    assert not np.allclose(M.aupimo(shifted, masks, labels, band).per_image, before.per_image, equal_nan=True)


def test_aupimo_unresolved_band_gives_nan_and_says_why():
    maps, masks, labels = hand_case([2.0, 0.55])  # 10 normal pixels: the lowest FPR is 0.1
    result = M.aupimo(maps, masks, labels)  # the default band 1e-5..1e-4 needs at least 1e5 normal pixels
    assert not result.resolved and result.lowest_fpr == pytest.approx(0.1)
    assert np.isnan(result.per_image).all() and math.isnan(result.mean)
    assert "10 pixels" in result.note() and "0.1" in result.note()
    # ties at the top score coarsen the resolution: 3 of 10 normal pixels tied at the top give 0.3
    maps[0, 0, -3:] = 1.0
    assert M.aupimo(maps, masks, labels, (0.2, 0.9)).lowest_fpr == pytest.approx(0.3)
    assert not M.aupimo(maps, masks, labels, (0.2, 0.9)).resolved
    assert M.aupimo(maps, masks, labels, (0.3, 0.9)).resolved


def test_aupimo_mean_skips_normal_and_maskless_images():
    maps, masks, labels = hand_case([2.0, 3.0])
    maps = np.concatenate([maps, maps[1:]])  # a third image, anomalous but with an empty mask
    masks = np.concatenate([masks, np.zeros_like(masks[1:])])
    result = M.aupimo(maps, masks, np.array([0, 1, 1]), (0.1, 1.0))
    assert np.isnan(result.per_image[[0, 2]]).all() and result.per_image[1] == pytest.approx(1.0)
    assert result.mean == pytest.approx(1.0)


def test_aupimo_bad_input_is_refused():
    maps, masks, labels = hand_case([2.0])
    with pytest.raises(ValueError, match="no normal image"):
        M.aupimo(maps, masks, np.array([1, 1]))
    with pytest.raises(ValueError, match="normal images .* defect pixels"):
        M.aupimo(maps, masks[::-1].copy(), labels)
    with pytest.raises(ValueError, match="one entry per map"):
        M.aupimo(maps, masks, np.array([0, 1, 1]))
    for band in ((1e-4, 1e-5), (0.0, 0.1), (0.1, 1.5), (0.2, 0.2)):
        with pytest.raises(ValueError, match="fpr_band"):
            M.aupimo(maps, masks, labels, band)
    maps[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        M.aupimo(maps, masks, labels)


def test_seg_f1_edge_thresholds():
    maps, masks, labels = hand_case([2.0, 0.55])
    # a float64 threshold between float32 values: pixels at 0.55 (float32) are flagged only when above it
    maps32 = maps.astype(np.float32)
    just_below, just_above = float(np.float32(0.55)) - 1e-12, float(np.float32(0.55)) + 1e-12
    for threshold in (just_below, just_above, math.inf, -math.inf, 1.0):
        values, _ = M.localisation_metrics(maps32, masks, labels, threshold)
        assert values["seg_f1"] == R.seg_f1_naive(maps32, masks, threshold)
    assert M.localisation_metrics(maps32, masks, labels, math.inf)[0]["seg_f1"] == 0.0
    # every defect pixel above every normal one: a perfect test-tuned SegF1 at the largest other score
    values, _ = M.localisation_metrics(*hand_case([2.0, 3.0]), threshold=0.0)
    assert values["seg_f1_max"] == 1.0 and values["seg_f1_max_threshold"] == 1.0


def test_aupro_limits_and_keys():
    assert M.aupro_key(0.3) == "aupro" and M.aupro_key(0.05) == "aupro_5pct" and M.aupro_key(0.01) == "aupro_1pct"
    maps, masks, labels, _, threshold = random_case(1)
    values, _ = M.localisation_metrics(maps, masks, labels, threshold, aupro_limits=(0.05, 0.5))
    assert values["aupro_5pct"] == M.aupro(maps, masks, 0.05) and values["aupro_50pct"] == M.aupro(maps, masks, 0.5)
    with pytest.raises(ValueError, match="fpr_limit"):
        M.localisation_metrics(maps, masks, labels, threshold, aupro_limits=(0.3, 0.0))


def test_aupimo_on_the_torch_path_equals_numpy_path(monkeypatch):
    maps, masks, labels, band, threshold = random_case(2)
    expected = M.localisation_metrics(maps, masks, labels, threshold, fpr_band=band)
    monkeypatch.setattr(M, "_NUMPY_DEVICES", ())  # the sort and selection GPUs take, here on the CPU
    values, result = M.localisation_metrics(torch.from_numpy(maps), torch.from_numpy(masks), labels, threshold,
                                            fpr_band=band)
    assert result.resolved and np.isfinite(result.per_image).sum() == 4
    assert values == expected[0]
    np.testing.assert_array_equal(result.per_image, expected[1].per_image)


def test_aupimo_file_round_trip(tmp_path):
    values = [0.25, math.nan, 1 / 3]
    runs.write_aupimo(tmp_path, ["a/1.png", "b/2.png", "c/3.png"], ["crack", "1", "hole"], values)
    table = runs.load_aupimo(tmp_path)
    assert table.columns.tolist() == list(runs.AUPIMO_COLUMNS)
    assert table["defect_type"].tolist() == ["crack", "1", "hole"]  # read as text
    np.testing.assert_array_equal(table["aupimo"].to_numpy(), values)  # exact, NaN kept
    assert runs.load_aupimo(tmp_path / "missing") is None


def test_new_metrics_reach_the_report_tables_and_summary(tmp_path):
    from fake_results import write_fake_results  # the report tests' fabricated runs
    from report_tables import category_table, group_table

    results = write_fake_results(tmp_path, backbones=("resnet50", "convnext_tiny"), categories=("synth_object",),
                                 seeds=(0, 1))
    written = {}
    for index, directory in enumerate(runs.find_runs(results)):
        values = {"aupro_5pct": 0.1 + index / 100, "aupimo": 0.2 + index / 100, "seg_f1": 0.3 + index / 100,
                  "seg_f1_max": 0.4 + index / 100}
        runs.atomic_write_json(directory / runs.METRICS_FILE, runs.read_json(directory / runs.METRICS_FILE) | values)
        written[runs.key_of(directory)] = values
    frame = runs.load_runs(results)
    cells = category_table(frame).set_index("backbone")
    groups = group_table(frame).set_index(["group", "backbone"])
    for backbone in ("resnet50", "convnext_tiny"):
        for key, label in (("aupro_5pct", "AUPRO to FPR 0.05"), ("aupimo", "AUPIMO (mean)"),
                           ("seg_f1", "SegF1 @val-thr"), ("seg_f1_max", "SegF1-max (test-tuned)")):
            seeds = [values[key] for run, values in written.items() if run.backbone == backbone]
            expected = f"{100 * np.mean(seeds):.1f} ± {100 * np.std(seeds, ddof=1):.1f}"
            assert cells.at[backbone, f"{label} (%)"] == expected
            assert groups.at[("overall mean", backbone), f"{label} (%)"] == expected  # one category: the same
    summary = pd.read_csv(runs.write_summary(results))  # and summary.csv carries them
    for key in ("aupro_5pct", "aupimo", "seg_f1", "seg_f1_max"):
        assert sorted(summary[key]) == sorted(values[key] for values in written.values())

"""Metrics of docs/reproduction.md#4-metrics: the fast functions of metrics.py against definitions, scikit-learn,
hand-counted examples, a bootstrap, and published DeLong values (pROC, aSAH data)."""
from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

import metrics as M
import reference_metrics as R
import significance as S


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
def random_maps(seed: int, n: int = 5, h: int = 12, w: int = 10, levels: int | None = None,
                good_images: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Small random maps and blob masks; ``levels`` quantises the scores (many ties); the first
    ``good_images`` images have no defect."""
    rng = np.random.default_rng(seed)
    maps = rng.random((n, h, w)).astype(np.float32)
    masks = rng.random((n, h, w)) < 0.12
    masks[:, 3:6, 2:5] |= rng.random((n, 1, 1)) < 0.6  # some larger regions next to single pixels
    maps = maps + 0.5 * masks  # defects score higher on average
    if levels is not None:
        maps = np.round(maps * levels) / levels
    masks[:good_images] = False
    return maps.astype(np.float32), masks


def correlated_scores(rng: np.random.Generator, n_pos: int, n_neg: int, mu_a: float, mu_b: float,
                      rho: float = 0.6) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two binormal models sharing a per-image factor (correlation rho); unit variance in each class,
    so the true AUC of a model with mean shift mu is Phi(mu / sqrt 2)."""
    y = np.r_[np.ones(n_pos, dtype=int), np.zeros(n_neg, dtype=int)]
    common = rng.standard_normal(y.size)
    a = mu_a * y + math.sqrt(rho) * common + math.sqrt(1 - rho) * rng.standard_normal(y.size)
    b = mu_b * y + math.sqrt(rho) * common + math.sqrt(1 - rho) * rng.standard_normal(y.size)
    return a, b, y


def true_auc(mu: float) -> float:
    return float(stats.norm.cdf(mu / math.sqrt(2.0)))


# --------------------------------------------------------------------------------------------------
# AUPRO and the PRO curve against the per-threshold definition
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "seed, levels, good_images",
    [(0, None, 1), (1, None, 2), (2, 6, 1), (3, 12, 2), (4, 3, 0), (5, 40, 3)],
)
def test_aupro_equals_per_threshold_definition(seed, levels, good_images):
    maps, masks = random_maps(seed, levels=levels, good_images=good_images)
    fpr, pro = M.pro_curve(maps, masks)
    fpr_ref, pro_ref = R.pro_curve_naive(maps, masks)  # every distinct score as a threshold
    assert fpr.shape == fpr_ref.shape == (np.unique(maps).size + 1,)  # one point per distinct score
    np.testing.assert_allclose(fpr, fpr_ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(pro, pro_ref, rtol=0, atol=1e-9)
    for limit in (0.3, 0.05, 0.5, 1.0):
        assert M.aupro(maps, masks, limit) == pytest.approx(R.aupro_naive(maps, masks, limit), abs=1e-6)
    assert M.pixel_metrics(maps, masks)["aupro"] == pytest.approx(M.aupro(maps, masks), abs=1e-12)


def test_pro_curve_with_limit_is_a_prefix_that_crosses_the_limit():
    maps, masks = random_maps(6, n=6, h=16, w=16)
    full_fpr, full_pro = M.pro_curve(maps, masks)
    fpr, pro = M.pro_curve(maps, masks, fpr_limit=0.3)
    assert fpr.size < full_fpr.size
    np.testing.assert_array_equal(fpr, full_fpr[: fpr.size])
    np.testing.assert_array_equal(pro, full_pro[: pro.size])
    assert fpr[-1] > 0.3 >= fpr[-2]


def test_aupro_uses_8_connectivity_hand_example():
    # One defect region only under 8-connectivity: (0,0)-(0,1) and (1,2) touch diagonally.
    maps = np.zeros((1, 3, 4), dtype=np.float32)
    masks = np.zeros((1, 3, 4), dtype=bool)
    masks[0, 0, 0] = masks[0, 0, 1] = masks[0, 1, 2] = True
    maps[0, 1, 2] = 0.9  # the diagonal pixel is found first
    maps[0, 0, 0] = maps[0, 0, 1] = 0.1
    maps[0, 2, 3] = 0.5  # one normal pixel of 9 above the rest
    # Curve: (0,0) (0,1/3) (1/9,1/3) (1/9,1) (1,1); 8-connected area 1/27 + 8/9 = 25/27.
    # With 4-connectivity the first PRO would be (0 + 1)/2 and the area 1/18 + 8/9 = 17/18.
    fpr, pro = M.pro_curve(maps, masks)
    np.testing.assert_allclose(fpr, [0, 0, 1 / 9, 1 / 9, 1])
    np.testing.assert_allclose(pro, [0, 1 / 3, 1 / 3, 1, 1])
    assert M.aupro(maps, masks, fpr_limit=1.0) == pytest.approx(25 / 27, abs=1e-12)
    assert M.aupro(maps, masks, fpr_limit=1.0) != pytest.approx(17 / 18, abs=1e-3)
    # At 0.3 the interpolated point lies on the flat top: (1/27 + (0.3 - 1/9)) / 0.3.
    assert M.aupro(maps, masks) == pytest.approx((1 / 27 + 0.3 - 1 / 9) / 0.3, abs=1e-12)
    assert M.aupro(maps, masks) == pytest.approx(R.aupro_naive(maps, masks), abs=1e-12)


def test_regions_do_not_join_across_images():
    # The same pixel defective in two stacked images: two regions, not one 3-D blob.
    maps = np.zeros((2, 2, 2), dtype=np.float32)
    masks = np.zeros((2, 2, 2), dtype=bool)
    masks[0, 0, :] = True  # region of 2 pixels
    masks[1, 0, 0] = True  # region of 1 pixel, under image 0's region
    maps[1, 0, 0] = 1.0  # found first: PRO = (0 + 1) / 2, not 1/3
    _, pro = M.pro_curve(maps, masks)
    assert pro[1] == pytest.approx(0.5)


def test_aupro_interpolates_on_a_rising_segment():
    # FPR jumps from 0 to 1/2 while PRO rises with it: the point at 0.3 lies inside the segment.
    maps = np.array([[[0.9, 0.5, 0.5, 0.1]]], dtype=np.float32)
    masks = np.array([[[1, 1, 0, 0]]], dtype=bool)
    # Thresholds 0.9 (pro 1/2), 0.5 (the other defect pixel and 1 of 2 normals: fpr 1/2, pro 1), 0.1.
    fpr, pro = M.pro_curve(maps, masks)
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 1])
    np.testing.assert_allclose(pro, [0, 0.5, 1, 1])
    expected = 0.3 * (0.5 + 0.8) / 2 / 0.3  # PRO at 0.3 on the segment (0, 1/2)-(1/2, 1) is 0.8
    assert M.aupro(maps, masks) == pytest.approx(expected, abs=1e-12)
    assert R.aupro_naive(maps, masks) == pytest.approx(expected, abs=1e-12)


def test_fast_aupro_on_40x64x64_is_exact_and_allocates_no_per_threshold_arrays():
    """163,840 distinct scores: a per-threshold pass would be O(pixels^2); this finishes at once.

    The curve is checked at sampled thresholds against the definition, and numpy's peak allocation
    (tracemalloc) stays within a few copies of the maps.
    """
    rng = np.random.default_rng(7)
    maps, masks = random_maps(7, n=40, h=64, w=64)
    tracemalloc.start()
    fpr, pro = M.pro_curve(maps, masks)
    value = M.aupro(maps, masks)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    distinct_desc = np.unique(maps)[::-1]
    assert fpr.size == distinct_desc.size + 1
    assert 0.0 < value < 1.0
    assert peak < 24 * maps.size  # bytes: a few float64 curves, no (thresholds x pixels) array
    picks = np.sort(rng.choice(distinct_desc.size, size=25, replace=False))
    fpr_ref, pro_ref = R.pro_curve_naive(maps, masks, distinct_desc[picks])
    np.testing.assert_allclose(fpr[picks + 1], fpr_ref[1:], rtol=0, atol=1e-12)
    np.testing.assert_allclose(pro[picks + 1], pro_ref[1:], rtol=0, atol=1e-9)


# --------------------------------------------------------------------------------------------------
# AUROC against scikit-learn
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("levels", [None, 4, 25])
def test_pixel_auroc_equals_sklearn(levels):
    maps, masks = random_maps(11, n=6, h=16, w=16, levels=levels)
    expected = R.pixel_auroc_naive(maps, masks)
    assert M.pixel_auroc(maps, masks) == pytest.approx(expected, abs=1e-12)
    assert M.pixel_metrics(maps, masks)["pixel_auroc"] == pytest.approx(expected, abs=1e-12)
    # torch tensors, float64 and float16 maps, uint8 masks give the same figure
    assert M.pixel_auroc(torch.from_numpy(maps), torch.from_numpy(masks)) == pytest.approx(expected, abs=1e-12)
    assert M.pixel_auroc(maps.astype(np.float64), masks.astype(np.uint8)) == pytest.approx(expected, abs=1e-12)
    half = maps.astype(np.float16)
    assert M.pixel_auroc(half, masks) == pytest.approx(R.pixel_auroc_naive(half, masks), abs=1e-12)


def test_torch_path_used_on_gpu_equals_numpy_path(monkeypatch):
    # No GPU here: route CPU tensors through the torch split/sort that CUDA tensors take.
    maps, masks = random_maps(14, n=6, h=16, w=16, levels=20)
    expected = M.pixel_metrics(maps, masks)
    monkeypatch.setattr(M, "_NUMPY_DEVICES", ())
    assert M.pixel_metrics(torch.from_numpy(maps), torch.from_numpy(masks)) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("levels", [None, 3, 10])
def test_image_auroc_and_roc_curve_equal_sklearn(levels):
    rng = np.random.default_rng(12)
    labels = rng.random(80) < 0.4
    scores = rng.standard_normal(80) + labels
    if levels is not None:
        scores = np.round(scores * levels / 4) / levels
    assert M.image_auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert M.image_auroc(scores.tolist(), labels.astype(int).tolist()) == pytest.approx(
        R.image_auroc_naive(scores, labels), abs=1e-12)
    fpr, tpr, thresholds = M.roc_curve(scores, labels)
    sk_fpr, sk_tpr, sk_thresholds = sk_roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    np.testing.assert_array_equal(thresholds[1:], sk_thresholds[1:])
    assert thresholds[0] == np.inf


# --------------------------------------------------------------------------------------------------
# F1, thresholds, per-defect AUROC
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed, levels", [(0, None), (1, 3), (2, 8), (3, 1)])
def test_f1_max_equals_brute_force(seed, levels):
    rng = np.random.default_rng(seed)
    labels = rng.random(60) < 0.5
    scores = rng.random(60) + 0.4 * labels
    if levels is not None:
        scores = np.round(scores * levels) / levels
    best, threshold = M.f1_max(scores, labels)
    assert best == pytest.approx(R.f1_max_naive(scores, labels), abs=1e-12)
    assert M.metrics_at_threshold(scores, labels, threshold)["f1"] == pytest.approx(best, abs=1e-12)


def test_f1_max_flag_everything_gives_minus_inf():
    # Anomalous images score lowest: flagging all of them (and every normal) is the best F1.
    best, threshold = M.f1_max([0.1, 0.2, 0.9], [1, 1, 0])
    assert threshold == -math.inf
    assert best == pytest.approx(2 * 2 / (2 * 2 + 1))


def test_metrics_at_threshold_hand_counted():
    scores = [0.1, 0.4, 0.35, 0.8, 0.5, 0.5]
    labels = [0, 0, 1, 1, 1, 0]
    # score > 0.4 flags 0.8 (tp), 0.5 (tp), 0.5 (fp); 0.4 itself is not flagged (tn); 0.35 is a fn.
    result = M.metrics_at_threshold(scores, labels, 0.4)
    assert (result["tp"], result["fp"], result["tn"], result["fn"]) == (2, 1, 2, 1)
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["precision"] == pytest.approx(2 / 3)
    assert result["recall"] == pytest.approx(2 / 3)
    assert result["f1"] == pytest.approx(2 / 3)
    nothing = M.metrics_at_threshold(scores, labels, 1.0)
    assert nothing["precision"] == 0.0 and nothing["recall"] == 0.0 and nothing["accuracy"] == 0.5


def test_threshold_from_normals_rules():
    normals = np.array([0.2, 0.5, 0.1, 0.4, 0.3])
    t_max = M.threshold_from_normals(normals)
    assert t_max == 0.5
    # "max" flags no validation normal under the score > threshold rule
    assert M.metrics_at_threshold(normals, np.zeros(5, dtype=int), t_max)["fp"] == 0
    assert M.threshold_from_normals(normals, "q0.5") == pytest.approx(0.3)
    assert M.threshold_from_normals(torch.tensor(normals), "q1") == 0.5
    assert M.threshold_from_normals(normals, "q0.75") == pytest.approx(np.quantile(normals, 0.75))
    for bad in ("mean", "q", "q1.5", "0.99", "q-0.1"):
        with pytest.raises(ValueError, match="threshold rule"):
            M.threshold_from_normals(normals, bad)
    with pytest.raises(ValueError, match="empty"):
        M.threshold_from_normals([])


def test_per_defect_auroc_hand_example():
    scores = [0.1, 0.2, 0.3, 0.25, 0.9, 0.15, 0.35]
    labels = [0, 0, 0, 1, 1, 1, 1]
    types = ["good", "good", "good", "crack", "crack", "scratch", "scratch"]
    result = M.per_defect_auroc(scores, labels, types)
    # crack {0.25, 0.9} vs good {0.1, 0.2, 0.3}: 2 + 3 of 6 pairs; scratch {0.15, 0.35}: 1 + 3 of 6
    assert result == pytest.approx({"crack": 5 / 6, "scratch": 4 / 6})
    assert list(result) == ["crack", "scratch"]


# --------------------------------------------------------------------------------------------------
# DeLong
# --------------------------------------------------------------------------------------------------
# Published worked example: pROC's tests on the aSAH data (113 patients, 41 "Poor" outcomes as
# cases, 72 "Good" as controls; Turck et al. 2010), markers wfns, ndka and s100b:
#   github.com/xrobin/pROC tests/testthat/test-roc.test.R, test-var.R, test-cov.R.
# The raw data ship as an .rda file, so the scores are rebuilt from the DeLong placements pROC stores
# in tests/testthat/helper-deLongPlacementsCpp-expected.R (direction "<"): for each case 2 * 72 * X
# (twice the controls below it, ties counted 1/2) and for each control 2 * 41 * Y (twice the cases
# above it), in patient order. Any scores with these placements give the same DeLong statistics.
ASAH_PLACEMENTS = {
    "wfns": (
        [117, 94, 128, 140, 140, 140, 140, 94, 140, 94, 37, 94, 140, 128, 128, 94, 140, 140, 140, 94, 140,
         94, 140, 94, 128, 140, 128, 128, 37, 128, 128, 94, 94, 140, 140, 94, 94, 140, 140, 140, 140],
        [80, 80, 80, 80, 18, 80, 66, 66, 80, 66, 66, 80, 80, 80, 66, 80, 66, 80, 80, 53, 44, 80, 44, 80,
         18, 18, 80, 80, 66, 44, 80, 80, 66, 66, 80, 66, 80, 66, 66, 80, 80, 80, 80, 66, 80, 66, 80, 80,
         53, 66, 44, 66, 80, 44, 80, 80, 18, 44, 66, 66, 80, 80, 80, 53, 80, 66, 66, 44, 44, 80, 80, 80],
    ),
    "ndka": (
        [116, 90, 98, 110, 6, 40, 74, 134, 140, 134, 134, 58, 104, 124, 24, 36, 102, 2, 144, 124, 62, 74,
         80, 102, 128, 93, 124, 36, 142, 109, 6, 49, 124, 6, 48, 134, 76, 104, 138, 74, 110],
        [82, 68, 72, 58, 74, 33, 74, 26, 42, 26, 28, 6, 66, 74, 48, 74, 74, 2, 46, 62, 62, 26, 80, 72, 74,
         63, 44, 72, 34, 8, 72, 74, 48, 66, 72, 44, 16, 18, 60, 50, 4, 74, 28, 62, 58, 58, 34, 80, 28, 48,
         66, 58, 26, 58, 50, 72, 62, 58, 16, 68, 48, 45, 8, 52, 48, 66, 16, 60, 38, 18, 74, 42],
    ),
    "s100b": (
        [81, 63, 103, 78, 130, 144, 140, 26, 123, 50, 26, 128, 126, 139, 144, 118, 144, 144, 144, 26, 144,
         120, 0, 50, 116, 144, 118, 144, 38, 118, 81, 63, 74, 116, 144, 88, 144, 121, 144, 144, 130],
        [58, 55, 66, 80, 28, 52, 66, 66, 80, 73, 80, 70, 63, 77, 52, 77, 63, 58, 52, 80, 53, 55, 36, 70,
         24, 28, 53, 77, 32, 28, 63, 73, 70, 73, 80, 58, 66, 55, 54, 80, 80, 70, 80, 70, 73, 53, 70, 73,
         37, 63, 42, 77, 66, 39, 77, 80, 48, 34, 66, 54, 73, 55, 66, 77, 80, 52, 54, 28, 52, 54, 24, 27],
    ),
}
ASAH_LABELS = np.r_[np.ones(41, dtype=int), np.zeros(72, dtype=int)]


def asah_scores(marker: str) -> np.ndarray:
    """Scores with pROC's placements: twice (observations below + half the ties) in the pooled sample."""
    cases2, controls2 = (np.array(v) for v in ASAH_PLACEMENTS[marker])
    m = cases2.size
    case_rank = 2 * (cases2[:, None] > cases2[None, :]).sum(1) + (cases2[:, None] == cases2[None, :]).sum(1)
    control_rank = 2 * (controls2[:, None] < controls2[None, :]).sum(1) + (controls2[:, None] == controls2[None, :]).sum(1)
    return np.r_[cases2 + case_rank, 2 * m - controls2 + control_rank].astype(float)


def test_delong_matches_published_proc_values_on_asah():
    wfns, ndka, s100b = asah_scores("wfns"), asah_scores("ndka"), asah_scores("s100b")
    aucs, cov = S.delong_covariance([wfns, ndka, s100b], ASAH_LABELS)
    np.testing.assert_allclose(aucs, [0.823678861788618, 0.611957994579946, 0.731368563685637], rtol=1e-12)
    # var(): test-var.R; cov(): test-cov.R
    np.testing.assert_allclose(np.diag(cov), [0.00146991470882363, 0.0031908105493913, 0.00266868245717244], rtol=1e-10)
    assert cov[0, 1] == pytest.approx(-0.000532967856762438, rel=1e-10)
    assert cov[1, 2] == pytest.approx(-0.000756164938056579, rel=1e-10)
    assert cov[2, 0] == pytest.approx(0.00119615567376754, rel=1e-10)
    # roc.test(): test-roc.test.R, "statistic and p are as expected with defaults"
    for a, b, z, p in [
        (wfns, s100b, 2.20898359144091, 0.0271757822291882),
        (wfns, ndka, 2.79777591868904, 0.00514557970691098),
        (ndka, s100b, -1.39077002573558, 0.164295175223054),
    ]:
        result = S.delong_test(a, b, ASAH_LABELS)
        assert result.z == pytest.approx(z, rel=1e-10)
        assert result.p_value == pytest.approx(p, rel=1e-9)
        # pROC's 95 % interval of the difference (t1: 0.0104061769564846 .. 0.174214419249478)
        if z == 2.20898359144091:
            half = 1.959963984540054 * math.sqrt(result.variance)
            assert result.difference - half == pytest.approx(0.0104061769564846, rel=1e-9)
            assert result.difference + half == pytest.approx(0.174214419249478, rel=1e-9)


def test_delong_equals_explicit_kernel_formula_with_ties():
    rng = np.random.default_rng(21)
    a, b, y = correlated_scores(rng, 30, 45, 1.0, 0.6)
    a, b = np.round(a * 2) / 2, np.round(b * 3) / 3  # many ties
    auc_a, auc_b, variance = R.delong_naive(a, b, y)
    result = S.delong_test(a, b, y)
    assert (result.auc_a, result.auc_b) == pytest.approx((auc_a, auc_b), abs=1e-12)
    assert result.auc_a == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert result.variance == pytest.approx(variance, rel=1e-10)


def test_delong_variance_and_p_value_agree_with_bootstrap():
    rng = np.random.default_rng(0)
    a, b, y = correlated_scores(rng, 120, 160, 1.3, 0.9)
    result = S.delong_test(a, b, y)
    # plain paired, stratified bootstrap written out here (independent of metrics.py's vectorised one)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    diffs = []
    for _ in range(1500):
        idx = np.r_[rng.choice(pos, pos.size), rng.choice(neg, neg.size)]
        diffs.append(roc_auc_score(y[idx], a[idx]) - roc_auc_score(y[idx], b[idx]))
    boot_var = float(np.var(diffs, ddof=1))
    assert result.variance == pytest.approx(boot_var, rel=0.2)
    boot_p = math.erfc(abs(result.difference) / math.sqrt(boot_var) / math.sqrt(2))
    assert 0.001 < result.p_value < 0.2  # a case where the p-value is informative
    assert result.p_value == pytest.approx(boot_p, rel=0.5)
    interval = S.paired_bootstrap_auroc_diff(a, b, y, n_boot=2000, seed=1)
    half = 1.959963984540054 * math.sqrt(result.variance)
    assert interval.low == pytest.approx(result.difference - half, abs=0.25 * half)
    assert interval.high == pytest.approx(result.difference + half, abs=0.25 * half)


def test_delong_p_values_uniform_when_models_equal_and_tiny_when_different():
    rng = np.random.default_rng(5)
    p_equal = [S.delong_test(*correlated_scores(rng, 50, 70, 1.0, 1.0)).p_value for _ in range(300)]
    assert stats.kstest(p_equal, "uniform").pvalue > 0.01
    assert 0.01 <= np.mean(np.array(p_equal) < 0.05) <= 0.10
    a, b, y = correlated_scores(rng, 100, 100, 3.0, 0.3, rho=0.3)
    assert S.delong_test(a, b, y).p_value < 1e-6


def test_delong_identical_scores_give_p_one():
    rng = np.random.default_rng(8)
    a, _, y = correlated_scores(rng, 20, 20, 1.0, 1.0)
    result = S.delong_test(a, a.copy(), y)
    assert (result.difference, result.variance, result.z, result.p_value) == (0.0, 0.0, 0.0, 1.0)


def test_delong_monte_carlo_variance():
    """DeLong's variance estimates the sampling variance of the AUC difference over repeated data sets."""
    rng = np.random.default_rng(13)
    results = [S.delong_test(*correlated_scores(rng, 40, 60, 1.2, 0.8)) for _ in range(400)]
    spread = np.var([r.difference for r in results], ddof=1)
    assert np.mean([r.variance for r in results]) == pytest.approx(spread, rel=0.2)


# --------------------------------------------------------------------------------------------------
# paired bootstrap
# --------------------------------------------------------------------------------------------------
def test_bootstrap_contains_true_difference_and_is_deterministic():
    rng = np.random.default_rng(17)
    a, b, y = correlated_scores(rng, 150, 150, 1.4, 0.8)
    truth = true_auc(1.4) - true_auc(0.8)
    first = S.paired_bootstrap_auroc_diff(a, b, y, n_boot=2000, seed=3)
    assert first.low < truth < first.high
    assert first.difference == pytest.approx(roc_auc_score(y, a) - roc_auc_score(y, b), abs=1e-12)
    assert (first.n_boot, first.confidence) == (2000, 0.95)
    assert S.paired_bootstrap_auroc_diff(a, b, y, n_boot=2000, seed=3) == first
    other = S.paired_bootstrap_auroc_diff(a, b, y, n_boot=2000, seed=4)
    assert (other.low, other.high) != (first.low, first.high)
    narrow = S.paired_bootstrap_auroc_diff(a, b, y, n_boot=2000, confidence=0.5, seed=3)
    assert first.low < narrow.low < narrow.high < first.high


def test_bootstrap_coverage_near_nominal():
    rng = np.random.default_rng(19)
    truth = true_auc(1.0) - true_auc(0.7)
    covered = []
    for seed in range(60):
        a, b, y = correlated_scores(rng, 60, 80, 1.0, 0.7)
        result = S.paired_bootstrap_auroc_diff(a, b, y, n_boot=400, confidence=0.9, seed=seed)
        covered.append(result.low <= truth <= result.high)
    assert 0.75 <= np.mean(covered) <= 1.0


# --------------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------------
def test_clear_errors_for_bad_input():
    maps, masks = random_maps(0)
    with pytest.raises(ValueError, match="only one class"):
        M.image_auroc([0.1, 0.2, 0.3], [1, 1, 1])
    with pytest.raises(ValueError, match="only one class"):
        S.delong_test([0.1, 0.2], [0.3, 0.1], [0, 0])
    with pytest.raises(ValueError, match="differ in length"):
        M.image_auroc([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(ValueError, match="differ in length"):
        S.delong_test([0.1, 0.2, 0.3], [0.1, 0.2], [0, 1, 1])
    with pytest.raises(ValueError, match="NaN"):
        M.image_auroc([0.1, float("nan"), 0.3], [0, 1, 1])
    with pytest.raises(ValueError, match="only 0"):
        M.image_auroc([0.1, 0.2, 0.3], [0, 1, 2])
    with pytest.raises(ValueError, match="differ in shape"):
        M.aupro(maps, masks[:, :-1])
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        M.pixel_auroc(maps[0], masks[0])
    with pytest.raises(ValueError, match="at least one defect pixel"):
        M.aupro(maps, np.zeros_like(masks))
    with pytest.raises(ValueError, match="at least one defect pixel"):
        M.pixel_auroc(maps, np.zeros_like(masks))
    with pytest.raises(ValueError, match="at least one normal pixel"):
        M.pixel_metrics(maps, np.ones_like(masks))
    nan_maps = maps.copy()
    nan_maps[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        M.pixel_metrics(nan_maps, masks)
    with pytest.raises(ValueError, match="fpr_limit"):
        M.aupro(maps, masks, fpr_limit=0.0)
    with pytest.raises(ValueError, match="at least 2 anomalous"):
        S.delong_test([0.1, 0.2, 0.3], [0.3, 0.1, 0.2], [0, 0, 1])
    with pytest.raises(ValueError, match="confidence"):
        S.paired_bootstrap_auroc_diff([0.1, 0.2, 0.3], [0.3, 0.1, 0.2], [0, 1, 1], confidence=1.5)
    with pytest.raises(ValueError, match="one entry per image"):
        M.per_defect_auroc([0.1, 0.2], [0, 1], ["good"])


@pytest.mark.parametrize("threads", [2, 3, 8])
def test_threaded_sort_equals_numpy_sort_with_ties_and_nan(threads):
    """The CPU pixel sort: chunks sorted in threads, then merged; NaN must still end up last."""
    rng = np.random.default_rng(threads)
    values = rng.integers(0, 50, 10_001).astype(np.float32)  # many ties
    values[rng.integers(0, values.size, 5)] = np.nan
    expected = np.sort(values)
    M._sort_in_place_threaded(values, threads, min_chunk=1000)
    np.testing.assert_array_equal(values, expected)  # NaN compare equal in assert_array_equal

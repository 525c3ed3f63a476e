"""The report's resampling statistics against brute force: the hierarchical paired bootstrap, the binned pixel
statistics, Wilcoxon over categories (scipy), the exploratory correction and detectable differences (issues 11, 18)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import stats

import comparison
import metrics
import runs
import significance
from backbones import FAIR_PAIR
from fake_results import write_fake_results

CATEGORIES = ("carpet", "synth_object")
SEEDS = (0, 1, 2)
N_BOOT = 12


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 backbones x 2 categories x 3 seeds, 16 px, 9 test images, maps in steps of 1/8 (few distinct scores)."""
    return write_fake_results(tmp_path_factory.mktemp("tiny"), backbones=FAIR_PAIR, categories=CATEGORIES,
                              seeds=SEEDS, size=16, n_good=4, defects={"scratch": 3, "stain": 2}, quantize=True)


def _exact(metric: str, run_dir: str, paths: np.ndarray, images: np.ndarray) -> float:
    """The metric of one run on the resampled images (``images`` indexes ``paths``, repeats included), computed
    from scratch with metrics.py on the repeated images."""
    scores = runs.load_scores(run_dir).set_index("path").loc[paths]
    if metric == "image_auroc":
        return metrics.image_auroc(scores["score"].to_numpy()[images], scores["label"].to_numpy()[images])
    data = runs.load_maps(run_dir)
    order = {str(p): i for i, p in enumerate(data["paths"])}
    rows = np.array([order[p] for p in paths])[images]
    maps, masks = data["maps"][rows].astype(np.float32), data["masks"][rows]
    return metrics.pixel_auroc(maps, masks) if metric == "pixel_auroc" else metrics.aupro(maps, masks)


@pytest.mark.parametrize("metric", list(comparison.PAIRED_METRICS))
def test_hierarchical_bootstrap_equals_a_brute_force_loop(tiny: Path, metric: str) -> None:
    frame = runs.load_runs(tiny)
    draws, resamples = comparison.compute_resamples(frame, N_BOOT)
    assert all(r.exact for r in resamples.values())  # few distinct scores: the grid holds every one
    fast = comparison.group_replicates(frame, FAIR_PAIR, list(CATEGORIES), metric, resamples, N_BOOT)
    seed_draws = comparison.seed_multiplicities(list(SEEDS), N_BOOT)
    run_of = {(r.backbone, r.category, r.seed): r.run_dir for r in frame.itertuples()}
    expected = []
    for r in range(N_BOOT):
        per_category = []
        for category in CATEGORIES:
            images = np.repeat(np.arange(len(draws[category].paths)), draws[category].weights[r].astype(int))
            differences = [_exact(metric, run_of[(FAIR_PAIR[0], category, s)], draws[category].paths, images)
                           - _exact(metric, run_of[(FAIR_PAIR[1], category, s)], draws[category].paths, images)
                           for s in SEEDS]
            per_category.append(np.dot(seed_draws[r], differences) / len(SEEDS))
        expected.append(np.mean(per_category))
    np.testing.assert_allclose(fast, expected, rtol=0, atol=1e-12)


def test_draws_resample_within_classes_and_seeds_with_replacement(tiny: Path) -> None:
    frame = runs.load_runs(tiny)
    draws, _ = comparison.compute_resamples(frame, N_BOOT)
    for draw in draws.values():
        assert (draw.weights[:, draw.labels == 1].sum(axis=1) == draw.labels.sum()).all()
        assert (draw.weights[:, draw.labels == 0].sum(axis=1) == (draw.labels == 0).sum()).all()
    seeds = comparison.seed_multiplicities(list(SEEDS), 500)
    assert (seeds.sum(axis=1) == len(SEEDS)).all() and (seeds == 0).any() and (seeds > 1).any()
    assert (draws["carpet"].weights != draws["synth_object"].weights).any()  # each category draws its own images


def test_binned_pixel_metrics_are_exact_with_few_scores_and_close_without() -> None:
    rng = np.random.default_rng(3)
    masks = np.zeros((10, 24, 24), np.uint8)
    for i in range(4, 10):
        top, left = rng.integers(0, 16, 2)
        masks[i, top:top + 5, left:left + 6] = 1
        masks[i, 20:23, 1:3] = i % 2  # a second region in some images
    few = (rng.integers(0, 30, masks.shape) + 8 * masks * rng.integers(0, 3, masks.shape)) / 8.0
    stats_few = significance.pixel_stats(few, masks)
    auroc, aupro, _ = significance.binned_metrics(stats_few)
    assert stats_few.exact
    assert auroc == pytest.approx(metrics.pixel_auroc(few, masks), abs=1e-15)
    assert aupro == pytest.approx(metrics.aupro(few, masks), abs=1e-14)
    many = (rng.gamma(2.0, 0.3, masks.shape) + 0.4 * masks).astype(np.float16)
    coarse = significance.pixel_stats(many, masks, max_edges=64)
    auroc, aupro, _ = significance.binned_metrics(coarse)
    assert not coarse.exact
    assert auroc == pytest.approx(metrics.pixel_auroc(many.astype(np.float32), masks), abs=2e-3)
    assert aupro == pytest.approx(metrics.aupro(many.astype(np.float32), masks), abs=2e-3)


def test_image_auroc_replicates_match_metrics() -> None:
    rng = np.random.default_rng(4)
    labels = np.r_[np.zeros(7, int), np.ones(5, int)]
    scores = np.round(rng.normal(size=12) + labels, 1)  # ties included
    weights = significance.stratified_multiplicities(labels, 20, rng)
    fast = significance.auroc_replicates(scores, labels, weights)
    for row, value in zip(weights.astype(int), fast):
        images = np.repeat(np.arange(12), row)
        assert value == pytest.approx(metrics.image_auroc(scores[images], labels[images]), abs=1e-15)


@pytest.mark.parametrize("differences", [
    [0.02, -0.01, 0.03, 0.05, 0.01, -0.02, 0.04],
    [0.02, 0.0, 0.03, 0.0, 0.01, 0.02, -0.04, 0.01],  # zeros (ties) and tied magnitudes
    [0.1, 0.2, 0.3],
])
def test_wilcoxon_equals_scipy(differences: list[float]) -> None:
    result = significance.wilcoxon_signed_rank(differences)
    expected = stats.wilcoxon(differences, zero_method="wilcox")
    assert result.p_value == pytest.approx(expected.pvalue, rel=1e-12)
    assert result.n_zero == differences.count(0.0)


def test_wilcoxon_of_all_ties_is_not_a_test() -> None:
    result = significance.wilcoxon_signed_rank([0.0, 0.0, 0.0])
    assert np.isnan(result.p_value) and result.n_zero == 3 and result.n_nonzero == 0


def test_aggregate_p_is_wilcoxon_over_seed_averaged_category_differences(tiny: Path) -> None:
    frame = runs.load_runs(tiny)
    result = comparison.compare_runs(frame, [FAIR_PAIR], n_boot=20)
    row = result.aggregate.query("group == 'overall' and metric == 'image_auroc'").iloc[0]
    means = frame.groupby(["category", "backbone"])["image_auroc"].mean().unstack()
    differences = (means[FAIR_PAIR[0]] - means[FAIR_PAIR[1]]).to_numpy()
    assert row["mean_diff"] == pytest.approx(differences.mean())
    assert row["p_wilcoxon"] == pytest.approx(stats.wilcoxon(differences).pvalue)
    assert (row["wins_a"], row["wins_b"]) == ((differences > 0).sum(), (differences < 0).sum())
    assert row["ci_low"] <= row["ci_high"]
    assert "the smallest possible Wilcoxon p is 0.5" in row["note"]  # 2 categories: never below 0.05
    # exploratory: Benjamini-Hochberg within each table; the named primary questions are left out of it
    assert result.tests["p_bh"].equals(significance.benjamini_hochberg(result.tests["p_value"]))
    assert result.aggregate["p_bh"].equals(significance.benjamini_hochberg(result.aggregate["p_wilcoxon"]))
    primary = ("resnet50 vs convnext_tiny", "overall", "image_auroc")
    with_primary = comparison.compare_runs(frame, [FAIR_PAIR], n_boot=20, primary=[primary])
    is_primary = with_primary.aggregate["family"] == "primary"
    assert is_primary.sum() == 1 and np.isnan(with_primary.aggregate.loc[is_primary, "p_bh"]).all()
    rest = with_primary.aggregate.loc[~is_primary, "p_wilcoxon"]
    assert with_primary.aggregate.loc[~is_primary, "p_bh"].equals(significance.benjamini_hochberg(rest))
    complete, seeds, cells = comparison.cell_differences(frame, FAIR_PAIR, list(CATEGORIES), "image_auroc")
    assert cells.mean(axis=1) == pytest.approx(differences) and seeds == list(SEEDS)


def test_bootstrap_p_value_and_detectable_difference() -> None:
    replicates = np.random.default_rng(5).normal(0.02, 0.01, 4000)
    assert significance.bootstrap_p_value(0.02, replicates) == pytest.approx(0.0455, abs=0.004)  # z = 2
    assert np.isnan(significance.bootstrap_p_value(0.0, np.zeros(10)))
    assert significance.detectable_difference(1.0) == pytest.approx(1.959964 + 0.841621, abs=1e-5)

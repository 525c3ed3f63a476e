"""The per-image answers (image_inference.py) by hand and by brute force, their calibration suite in small, and the
SegF1 / AUPIMO resampling of the per-category tests (resample_metrics.py)."""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import calibration_images
import calibration_table
import image_inference
import metrics
from resample_metrics import mean_replicates, seg_f1_counts, seg_f1_replicates


def units_of(tables: dict[str, np.ndarray]) -> pd.DataFrame:
    """A tidy units table from per-category (images, seeds) arrays (NaN: the image has no value in that seed)."""
    rows = [(category, seed, f"img{i}", value) for category, table in tables.items()
            for (i, seed), value in np.ndenumerate(table) if not np.isnan(value)]
    return pd.DataFrame(rows, columns=["category", "seed", "unit", "difference"])


def brute_force_crossed(table: np.ndarray) -> tuple[float, float, list[float], list[float]]:
    """Mean, variance of the mean and its (coef, MS, df) terms of one (n, S) table by explicit sums over cells."""
    n, s = table.shape
    grand = sum(table[i, j] for i in range(n) for j in range(s)) / (n * s)
    row = [sum(table[i, j] for j in range(s)) / s for i in range(n)]
    column = [sum(table[i, j] for i in range(n)) / n for j in range(s)]
    ms_image = s * sum((r - grand) ** 2 for r in row) / (n - 1)
    ms_seed = n * sum((c - grand) ** 2 for c in column) / (s - 1)
    ms_residual = sum((table[i, j] - row[i] - column[j] + grand) ** 2 for i in range(n) for j in range(s)) / (
        (n - 1) * (s - 1))
    image_part = max(0.0, (ms_image - ms_residual) / s) / n  # the components floored at 0
    seed_part = max(0.0, (ms_seed - ms_residual) / n) / s
    variance = image_part + seed_part + ms_residual / (n * s)
    keep = [ms_image > ms_residual, ms_seed > ms_residual]
    terms = [keep[0] * ms_image, keep[1] * ms_seed, (1 - sum(keep)) * ms_residual]
    dfs = [n - 1, s - 1, (n - 1) * (s - 1)]
    return grand, variance, [term / (n * s) for term in terms], dfs


def test_the_per_category_answer_is_a_t_test_over_the_images_seed_means() -> None:
    rng = np.random.default_rng(0)
    table = np.clip(rng.normal(0.1, 0.3, (9, 3)), -1, 1)
    table[:2] = 0.0  # two images tied in every seed
    answers = image_inference.image_answers(units_of({"bottle": table})).set_index("category")
    row = answers.loc["bottle"]
    means = table.mean(axis=1)
    expected = stats.ttest_1samp(means, 0.0)
    interval = expected.confidence_interval(0.95)
    assert row["p_value"] == pytest.approx(expected.pvalue, rel=1e-12) and row["df"] == 8
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((interval.low, interval.high), rel=1e-12)
    assert row["mean_diff"] == pytest.approx(table.mean())
    assert (row["images_a"], row["images_b"], row["images_tied"]) == ((means > 0).sum(), (means < 0).sum(), 2)
    assert (row["n_images"], row["seeds"]) == (9, "3")


def test_the_answer_over_categories_by_brute_force() -> None:
    rng = np.random.default_rng(1)
    tables = {"a": rng.normal(0.05, 0.2, (6, 3)) + rng.normal(0, 0.1, (1, 3)),
              "b": rng.normal(-0.02, 0.1, (4, 2)), "c": rng.normal(0.0, 0.3, (5, 4)) + rng.normal(0, 0.2, (5, 1))}
    tables["b"][:, 1] = tables["b"][:, 0] + 0.001 * rng.normal(size=4)  # two seeds alike: seed part floored at 0
    parts = [brute_force_crossed(table) for table in tables.values()]
    count = len(parts)
    estimate = sum(part[0] for part in parts) / count
    variance = sum(part[1] for part in parts) / count ** 2
    df = variance ** 2 / sum((term / count ** 2) ** 2 / d for part in parts for term, d in zip(part[2], part[3]))
    half = stats.t.ppf(0.975, df) * np.sqrt(variance)
    p = 2 * stats.t.sf(abs(estimate) / np.sqrt(variance), df)
    row = image_inference.image_answers(units_of(tables)).set_index("category").loc["overall"]
    assert sum(parts[1][2]) == pytest.approx(parts[1][1]) and parts[1][2][1] == 0.0  # "b": seed part floored
    assert row["mean_diff"] == pytest.approx(estimate, rel=1e-12) and row["df"] == pytest.approx(df, rel=1e-10)
    assert row["p_value"] == pytest.approx(p, rel=1e-10)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((estimate - half, estimate + half), rel=1e-10)
    assert (row["n_categories"], row["seeds"], row["n_images"]) == (3, "2-4", 15)


def test_a_single_seed_an_unpaired_image_and_ties_are_named() -> None:
    rng = np.random.default_rng(2)
    alone = rng.normal(0.1, 0.2, (7, 1))  # one seed: per category it is answered, over categories left out
    holes = rng.normal(0.0, 0.2, (6, 3))
    holes[2, 1] = np.nan  # this image was not scored in seed 1: left out of its category
    tied = np.zeros((5, 3))
    answers = image_inference.image_answers(units_of({"alone": alone, "holes": holes, "tied": tied}))
    answers = answers.set_index("category")
    assert answers.at["alone", "p_value"] == pytest.approx(stats.ttest_1samp(alone[:, 0], 0.0).pvalue)
    assert answers.at["holes", "n_images"] == 5 and answers.at["holes", "note"] == \
        "1 image not scored in every seed left out"
    complete = np.delete(holes, 2, axis=0)
    assert answers.at["holes", "p_value"] == pytest.approx(stats.ttest_1samp(complete.mean(axis=1), 0.0).pvalue)
    assert np.isnan(answers.at["tied", "p_value"]) and answers.at["tied", "images_tied"] == 5
    assert answers.at["tied", "note"] == "not tested: every image tied (difference 0) in every seed"
    overall = answers.loc["overall"]
    assert overall["n_categories"] == 2 and overall["note"] == "left out: alone (one seed)"
    assert overall["mean_diff"] == pytest.approx((complete.mean() + 0.0) / 2)
    only = image_inference.image_answers(units_of({"alone": alone})).set_index("category").loc["overall"]
    assert np.isnan(only["p_value"]) and only["note"].startswith("cannot be computed for this design")


def test_every_interval_agrees_with_its_p_and_the_tidy_path_with_the_arrays() -> None:
    rng = np.random.default_rng(3)
    tables = [rng.normal(0.01, 0.1, (400, 12, 3)) + rng.normal(0, 0.05, (400, 1, 3)),
              rng.normal(0.0, 0.1, (400, 7, 2))]
    for arrays in (image_inference.over_categories_arrays(tables), image_inference.per_category_arrays(tables[0])):
        assert np.array_equal(arrays.p_value < 0.05, (arrays.low > 0) | (arrays.high < 0))
        assert 0 < (arrays.p_value < 0.05).sum() < 400  # both outcomes occur
    units = units_of({"x": tables[0][5], "y": tables[1][5]})
    overall = image_inference.image_answers(units).set_index("category").loc["overall"]
    fast = image_inference.over_categories_arrays([table[5:6] for table in tables])
    assert (overall["p_value"], overall["ci_low"]) == pytest.approx((fast.p_value[0], fast.low[0]), rel=1e-12)


def test_the_images_suite_meets_loose_gates_in_small() -> None:
    table = calibration_images.images_suite(300, seed=5)
    assert list(table.columns) == calibration_table.CALIBRATION_COLUMNS and len(table) == 21
    uncomputed = table[table["coverage"].isna()]
    assert set(zip(uncomputed["answer"], uncomputed["n_seeds"])) == {(calibration_images.OVER_CATEGORIES, 1)}
    assert uncomputed["note"].str.startswith("the answer says: cannot be computed for this design").all()
    computed = table.dropna(subset=["coverage"])
    assert computed["coverage"].between(0.9, 0.99).all() and (computed["size"] <= 0.1).all(), computed
    assert table["power"].isna().all() and table["passes"].dtype == bool


def test_the_image_simulator_makes_what_it_says() -> None:
    rng = np.random.default_rng(4)
    ties = next(s for s in calibration_images.IMAGE_SCENARIOS if s.name == "ties at 0 and 1"
                and s.answer == calibration_images.PER_CATEGORY)
    tables, truth = calibration_images.simulate_images(ties, 3000, rng, None)
    assert 0.25 < np.mean(tables[0] == 0) < 0.5 and np.abs(tables[0]).max() <= 1  # clipped: ties at 0 and 1
    assert np.abs(truth).max() < 1e-12  # the per-category size studies sit exactly at truth 0
    ragged = next(s for s in calibration_images.IMAGE_SCENARIOS if s.name == "missing and extra seeds")
    tables, truth = calibration_images.simulate_images(ragged, 4000, rng, calibration_images.COVERAGE_DELTA)
    assert [table.shape[2] for table in tables] == list(np.resize([3, 4, 2], ragged.n_categories))
    means = np.array([table.mean(axis=(1, 2)) for table in tables]).T  # the truth is the population mean
    assert means.mean(axis=0) == pytest.approx(truth.mean(axis=0), abs=0.004)


def test_seg_f1_replicates_equal_the_metric_on_the_resampled_images() -> None:
    rng = np.random.default_rng(5)
    maps = rng.normal(size=(6, 8, 8)).astype(np.float32)
    masks = np.zeros((6, 8, 8), np.uint8)
    masks[3:, 2:5, 2:6] = 1
    maps[masks == 1] += 1.0
    labels = np.array([0, 0, 0, 1, 1, 1])
    threshold = 0.8
    counts = seg_f1_counts(maps, masks, threshold)
    values, _ = metrics.localisation_metrics(maps, masks, labels, threshold, fpr_band=(0.05, 0.5))
    assert seg_f1_replicates(counts, np.ones((1, 6)))[0] == pytest.approx(values["seg_f1"], rel=1e-12)
    weights = np.array([[2, 0, 1, 0, 1, 2], [1, 1, 1, 3, 0, 0]], dtype=float)
    for row, replicate in zip(weights, seg_f1_replicates(counts, weights)):
        chosen = np.repeat(np.arange(6), row.astype(int))  # the resample as images drawn again
        expected, _ = metrics.localisation_metrics(maps[chosen], masks[chosen], labels[chosen], threshold,
                                                   fpr_band=(0.05, 0.5))
        assert replicate == pytest.approx(expected["seg_f1"], rel=1e-12)
    values = np.array([0.2, 0.4, 1.0])
    assert mean_replicates(values, np.array([[1, 2, 0], [0, 0, 0]])).tolist()[0] == pytest.approx(1.0 / 3)
    assert np.isnan(mean_replicates(values, np.zeros((1, 3)))[0])  # a resample without these images


@pytest.mark.parametrize("n, s", list(itertools.product((2, 5), (2, 3))))
def test_crossed_parts_match_the_brute_force_sums(n: int, s: int) -> None:
    table = np.random.default_rng(n * 10 + s).normal(size=(n, s))
    parts = image_inference.crossed_parts(table[None])
    mean, variance, terms, dfs = brute_force_crossed(table)
    assert parts.estimate[0] == pytest.approx(mean) and parts.terms[0].sum() == pytest.approx(variance)
    assert parts.terms[0] == pytest.approx(terms) and parts.df.tolist() == dfs

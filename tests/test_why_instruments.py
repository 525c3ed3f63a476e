"""Issue 18 B, instruments 1-3 in the report: the Why parts on fabricated results whose numbers the tests set;
issue 23: their intervals (seeds within category, then regions) against hand computations, the section's
descriptive heading, the instruments that did not run, the stability figure's legend."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import runs
import why
import why_regions
import why_scales
import why_stability
from fake_results import write_fake_results
from plots import category_colors

PAIR = ("resnet50", "convnext_tiny")
CATEGORIES = ("synth_object", "synth_texture")
SEEDS = (0, 1, 2)
MAPS = [("all scales", "all", 0), ("scale 1 only", "only", 1), ("scale 2 only", "only", 2),
        ("scale 3 only", "only", 3), ("without scale 1", "without", 1), ("without scale 2", "without", 2),
        ("without scale 3", "without", 3)]


def _scale_value(backbone: str, category: str, seed: int, index: int, metric: int) -> float:
    """A made-up metric: resnet50 is 0.05 better on scale 1 alone, the rest differ by seed and category."""
    base = 0.6 + 0.02 * index + 0.01 * metric + 0.03 * CATEGORIES.index(category) + 0.011 * seed ** 2
    return base + (0.05 if backbone == "resnet50" and index == 1 else 0.0)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Fake results (2 backbones x 2 categories x 3 seeds) with scales.csv, regions.csv and gradient norms set."""
    results = write_fake_results(tmp_path_factory.mktemp("why"), backbones=PAIR, categories=CATEGORIES, seeds=SEEDS)
    frame = runs.load_runs(results)
    for row in frame.itertuples(index=False):
        rows = [(name, kind, scale, *[_scale_value(row.backbone, row.category, row.seed, index, m) for m in range(3)])
                for index, (name, kind, scale) in enumerate(MAPS)]
        runs.write_csv(f"{row.run_dir}/{runs.SCALES_FILE}", runs.SCALES_COLUMNS, rows)
        # regions: four per category, areas in bins 0, 0, 1 and 3 (of 32 x 32 = 1024 px); resnet50 finds the tiny
        # ones (max above the run's threshold), convnext_tiny misses the first tiny one
        threshold = row.threshold
        found = {"resnet50": [1, 1, 1, 1], "convnext_tiny": [0, 1, 1, 1]}[row.backbone]
        tiny = 0.2 + 0.01 * row.seed
        regions = [(f"{row.category}/a.png", 1, 1, 1 / 1024, threshold + (0.1 if found[0] else -0.1), tiny),
                   (f"{row.category}/a.png", 2, 1, 1 / 1024, threshold + (0.1 if found[1] else -0.1), 0.4),
                   (f"{row.category}/b.png", 1, 5, 5 / 1024, threshold + 0.2, 0.6),
                   (f"{row.category}/c.png", 1, 100, 100 / 1024, threshold + 0.3, 0.9 if row.backbone == "resnet50"
                    else 0.8)]
        runs.write_csv(f"{row.run_dir}/{runs.REGIONS_FILE}", runs.REGIONS_COLUMNS, regions)
        epochs = 3
        history = pd.DataFrame({"epoch": range(1, epochs + 1), "loss": [1.0, 0.8, 0.5 + 0.1 * row.seed],
                                "grad_norm_bottleneck": [2.0, 1.0, 0.5], "grad_norm_student": [1.0, 0.7, 0.4]})
        runs.atomic_write_text(f"{row.run_dir}/{runs.HISTORY_FILE}", history.to_csv(index=False))
    return results, frame


def test_scale_means_and_paired_differences_equal_numpy(study):
    results, frame = study
    scales = why_scales.scale_frame(frame)
    means = why_scales.scale_means(scales).set_index(["backbone", "map"])
    for backbone in PAIR:
        for index, (name, _, _) in enumerate(MAPS):
            expected = np.mean([np.mean([_scale_value(backbone, c, s, index, 2) for s in SEEDS]) for c in CATEGORIES])
            assert means.loc[(backbone, name), "aupro"] == pytest.approx(expected)
    diffs = why_scales.differences(scales, PAIR).set_index(["map", "metric"])
    assert diffs.loc[("scale 1 only", "aupro"), "mean_diff"] == pytest.approx(0.05)
    assert diffs.loc[("scale 2 only", "image_auroc"), "mean_diff"] == pytest.approx(0.0, abs=1e-12)
    # the same difference on every seed: the seed resampling leaves no spread
    assert diffs.loc[("scale 1 only", "aupro"), ["ci_low", "ci_high"]].tolist() == pytest.approx([0.05, 0.05])
    assert (diffs["n_categories"] == 2).all() and (diffs["n_seeds"] == 3).all()
    # one seed per category: no interval
    one_seed = why_scales.differences(scales[scales["seed"] == 0], PAIR)
    assert one_seed["ci_low"].isna().all() and one_seed["mean_diff"].notna().all()


def test_seed_interval_by_hand_and_a_one_seed_category_borrows_the_others_variance():
    from scipy import stats

    from why_stats import NO_SEED_VARIANCE, seed_interval

    # one value per run: category A's seeds 0, 1, 2 (variance 1, 2 df), category B's 5, 7 (variance 2, 1 df)
    cells = [np.array([0.0, 1.0, 2.0]).reshape(3, 1, 1), np.array([5.0, 7.0]).reshape(2, 1, 1)]
    found = seed_interval(cells)
    terms = [0.25 * 1.0 / 3, 0.25 * 2.0 / 2]  # weight^2 x variance / seeds
    variance = sum(terms)
    df = variance ** 2 / (terms[0] ** 2 / 2 + terms[1] ** 2 / 1)  # Satterthwaite
    half = stats.t.ppf(0.975, df) * np.sqrt(variance)
    assert found.estimate[0] == pytest.approx(3.5) and found.df[0] == pytest.approx(df) and found.seed_df == 3
    assert [found.low[0], found.high[0]] == pytest.approx([3.5 - half, 3.5 + half])
    # a category with one seed takes the variance pooled over the others ((2 x 1 + 1 x 2) / 3); one seed
    # everywhere: no interval, and it says so
    three = seed_interval(cells + [np.full((1, 1, 1), 4.0)])
    assert three.estimate[0] == pytest.approx(11 / 3)
    assert three.se[0] ** 2 == pytest.approx((1.0 / 3 + 2.0 / 2 + 4 / 3) / 9)
    single = seed_interval([np.full((1, 1, 1), 1.0), np.full((1, 1, 1), 2.0)])
    assert np.isnan(single.low).all() and np.isnan(single.high).all() and single.note == NO_SEED_VARIANCE


def test_seed_interval_of_seeds_by_regions_tables_is_the_crossed_design_variance():
    from scipy import stats

    from why_stats import seed_interval

    rng = np.random.default_rng(1)
    tables = [rng.normal(size=(3, 5, 1)) + 2 * rng.normal(size=(3, 1, 1)),
              rng.normal(size=(2, 4, 1)) + 2 * rng.normal(size=(2, 1, 1))]  # seed effects shared by the regions
    weights = np.array([5, 4]) / 9  # by regions
    seed_terms, region_parts = [], []
    for weight, table in zip(weights, tables):  # two-way ANOVA without replication, written out
        x = table[:, :, 0]
        seeds, regions = x.shape
        grand = x.mean()
        ms_seed = regions * sum((x[s].mean() - grand) ** 2 for s in range(seeds)) / (seeds - 1)
        ms_region = seeds * sum((x[:, r].mean() - grand) ** 2 for r in range(regions)) / (regions - 1)
        ms_residual = sum((x[s, r] - x[s].mean() - x[:, r].mean() + grand) ** 2 for s in range(seeds)
                          for r in range(regions)) / ((seeds - 1) * (regions - 1))
        seed_terms.append((weight ** 2 / seeds * (ms_seed - ms_residual) / regions, seeds - 1))
        region_parts.append((weight ** 2 * ms_region / (regions * seeds), regions - 1))
    variance = max(sum(term for term, _ in seed_terms), 0.0) + sum(part for part, _ in region_parts)
    df = variance ** 2 / sum(part ** 2 / d for part, d in seed_terms + region_parts)
    found = seed_interval(tables, weights)
    estimate = sum(w * t.mean() for w, t in zip(weights, tables))
    assert found.estimate[0] == pytest.approx(estimate) and found.se[0] ** 2 == pytest.approx(variance)
    assert found.df[0] == pytest.approx(df) and 1 < df < 3 + 3 + 1  # within [1, all the df there are]
    assert found.high[0] - estimate == pytest.approx(stats.t.ppf(0.975, df) * np.sqrt(variance))


def test_spread_interval_is_the_log_f_pivot():
    from why_stats import spread_interval

    # one category, 3 seeds: log F(2, 2) is the standard logistic, whose 97.5 % quantile is log 39
    found = spread_interval(np.array([4.0]), np.array([1.0]), np.array([3]))
    assert found.ratio == pytest.approx(2.0)
    assert np.log([found.low, found.high]) * 2 == pytest.approx([np.log(4) - np.log(39), np.log(4) + np.log(39)],
                                                               abs=0.05)
    # the geometric mean of the categories' ratios; a category where one backbone never varied is left out
    two = spread_interval(np.array([4.0, 1.0, 0.0]), np.array([1.0, 4.0, 2.0]), np.array([5, 5, 5]))
    assert two.ratio == pytest.approx(1.0) and two.n_categories == 2 and two.low < 1.0 < two.high
    assert spread_interval(np.array([0.0]), np.array([1.0]), np.array([3])) is None


def test_region_bins_recall_and_paired_differences(study):
    _, frame = study
    regions = why_regions.region_frame(frame)
    assert why_regions.size_bin([0.0, 0.000999, 0.001, 0.00999, 0.01, 0.0499, 0.05, 1.0]).tolist() == \
        [0, 0, 1, 1, 2, 2, 3, 3]
    table = why_regions.by_bin(regions).set_index(["backbone", "bin"])
    assert table.loc[("resnet50", 0), ["regions", "recall"]].tolist() == [4, 1.0]
    assert table.loc[("convnext_tiny", 0), "recall"] == pytest.approx(0.5)  # one of the two tiny regions per category
    assert table.loc[("resnet50", 0), "overlap"] == pytest.approx(np.mean([0.2 + 0.01, 0.4]))  # seed mean of .2+.01s
    assert ("resnet50", 2) not in table.index and table.loc[("convnext_tiny", 3), "overlap"] == pytest.approx(0.8)
    diffs = why_regions.differences(regions, PAIR).set_index("bin")
    assert diffs.loc[0, "n_regions"] == 4 and diffs.loc[0, "recall_diff"] == pytest.approx(0.5)
    assert diffs.loc[3, "overlap_diff"] == pytest.approx(0.1) and diffs.loc[1, "recall_diff"] == 0.0
    assert (diffs["n_categories"] == 2).all() and (diffs["n_seeds"] == 3).all()
    # 2 tiny regions per category, differences 1 and 0 on every seed: no seed part, a region part of
    # 3 x 0.5 / (2 x 3) = 0.25 per category, weights 1/2: variance 0.125 on 2 df; the interval is wider than the
    # range a recall difference can take and is clipped to it
    from scipy import stats

    assert diffs.loc[0, "recall_df"] == pytest.approx(2.0)
    assert 0.5 - stats.t.ppf(0.975, 2) * np.sqrt(0.125) < -1.0
    assert diffs.loc[0, ["recall_ci_low", "recall_ci_high"]].tolist() == [-1.0, 1.0]
    assert diffs.loc[3, ["overlap_ci_low", "overlap_ci_high"]].tolist() == pytest.approx([0.1, 0.1])


def test_stability_spread_table_and_ratio_equal_numpy(study):
    _, frame = study
    changed = frame.assign(aupro=frame["aupro"] + np.where(frame["backbone"] == "resnet50", 0.0, 0.01 * frame["seed"]))
    table = why_stability.spread_table(changed.assign(final_loss=0.0), list(PAIR)).set_index("key")
    for backbone in PAIR:
        for metric in ("image_auroc", "aupro"):
            mine = changed[changed["backbone"] == backbone]
            expected = np.sqrt(np.mean([np.var(mine.loc[mine["category"] == c, metric], ddof=1) for c in CATEGORIES]))
            assert table.loc[metric, backbone] == pytest.approx(expected)
            assert table.loc[metric, f"{backbone} categories"] == 2
    found = why_stability.spread_ratio(changed, PAIR, "aupro")
    sd = {b: np.array([np.std(changed.loc[(changed["backbone"] == b) & (changed["category"] == c), "aupro"], ddof=1)
                       for c in CATEGORIES]) for b in PAIR}
    assert found.n_categories == 2 and found.ratio == pytest.approx(np.exp(np.mean(np.log(sd[PAIR[0]] / sd[PAIR[1]]))))
    assert found.low < found.ratio < found.high
    assert found.sd_a == pytest.approx(np.sqrt(np.mean(sd[PAIR[0]] ** 2)))
    # only the (category, seed) runs both backbones have count: without resnet50's seed 2, two seeds per category
    fewer = why_stability.spread_ratio(changed[(changed["backbone"] != PAIR[0]) | (changed["seed"] != 2)], PAIR,
                                       "aupro")
    kept = changed[changed["seed"] != 2]
    sd2 = {b: np.array([np.std(kept.loc[(kept["backbone"] == b) & (kept["category"] == c), "aupro"], ddof=1)
                        for c in CATEGORIES]) for b in PAIR}
    assert fewer.ratio == pytest.approx(np.exp(np.mean(np.log(sd2[PAIR[0]] / sd2[PAIR[1]]))))
    losses = why_stability.final_losses(frame, {d: runs.read_history(d) for d in frame["run_dir"]})
    assert losses.tolist() == pytest.approx((0.5 + 0.1 * frame["seed"]).tolist())


def test_why_section_lists_the_three_parts_in_order_with_findings(study):
    results, frame = study
    parts = why.why_parts(frame, results, [PAIR])
    assert [p.key for p in parts] == ["scales", "regions", "stability", "locality", "audit"]
    scales, regions, stability = parts[:3]
    assert "scale 1 only, +5.00 [+5.00, +5.00] points" in scales.finding
    assert "< 0.1 % of the image area, 4 regions in 2 categories" in regions.finding
    assert "region recall +50.00 [-100.00, +100.00]" in regions.finding
    assert "resnet50 / convnext_tiny" in stability.finding
    assert all(p.figures and p.figures[0].figure is not None for p in parts[:3])
    tables = why.why_tables(parts)
    assert {"why_scales_means", "why_scales_differences", "why_regions_by_bin", "why_stability_spread"} <= set(tables)
    text = why.render_why(parts, 2, lambda items: [item.caption for item in items])
    assert text.startswith("## What differs between the teachers") and "why one teacher wins" not in text.lower()
    assert "Only the scale ablation intervenes" in text and "Which scale detects" in text
    # a plain train / test / compare study: 3 of 5, and the commands that add the other two
    assert "3 of 5 instruments ran" in text
    assert f"`main.py analyse --results {results}`" in text and "`main.py train --audit-test`" in text
    assert "#### How local the teacher is" not in text and "#### Audit" not in text


def test_the_stability_figure_tells_categories_and_seeds_apart(study):
    results, frame = study
    figure = why_stability.part(frame, str(results), [PAIR]).figures[0].figure
    (legend,) = figure.legends
    assert [t.get_text() for t in legend.get_texts()] == [*sorted(CATEGORIES), *[f"seed {s}" for s in SEEDS]]
    colours = category_colors(list(CATEGORIES))
    lines = figure.axes[0].get_lines()  # resnet50's losses: one line per run, coloured by its category
    assert len(lines) == len(CATEGORIES) * len(SEEDS)
    assert {line.get_color() for line in lines} == set(colours.values())
    assert len({(line.get_color(), line.get_linestyle()) for line in lines}) == len(lines)


def test_parts_without_their_files_are_left_out(tmp_path):
    results = write_fake_results(tmp_path, backbones=PAIR, categories=("synth_object",), seeds=(0,))
    frame = runs.load_runs(results)
    assert why_scales.part(frame, str(results), [PAIR]) is None
    assert why_regions.part(frame, str(results), [PAIR]) is None
    stability = why_stability.part(frame, str(results), [PAIR])  # fake histories exist, without gradient norms
    assert "predate the gradient norms" in stability.text and "not measured" in stability.finding

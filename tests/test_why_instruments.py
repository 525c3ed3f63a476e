"""Issue 18 B, instruments 1-3 in the report: the Why parts on fabricated results whose numbers the tests set."""
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


def test_seed_bootstrap_resamples_seeds_within_category():
    from significance import seeded_rng
    from why_stats import seed_bootstrap

    per_category = [np.array([[0.0], [1.0]]), np.array([[5.0], [5.0], [5.0]])]
    estimate, replicates = seed_bootstrap(per_category, 4000, seeded_rng("test"))
    assert estimate == pytest.approx([(0.5 + 5.0) / 2])
    # category 1 is fixed at 5; category 0's seed mean takes 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4
    values, counts = np.unique(replicates[:, 0], return_counts=True)
    assert values.tolist() == pytest.approx([2.5, 2.75, 3.0])
    assert counts / 4000 == pytest.approx([0.25, 0.5, 0.25], abs=0.03)


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
    # paired bootstrap over the 4 tiny regions: the recall difference is 1 on two of them, 0 on two
    low, high = diffs.loc[0, ["recall_ci_low", "recall_ci_high"]]
    assert 0.0 <= low < 0.5 < high <= 1.0


def test_stability_spread_table_and_ratio_equal_numpy(study):
    _, frame = study
    changed = frame.assign(aupro=frame["aupro"] + np.where(frame["backbone"] == "resnet50", 0.0, 0.01 * frame["seed"]))
    table = why_stability.spread_table(changed.assign(final_loss=0.0), list(PAIR)).set_index("key")
    for backbone in PAIR:
        for metric in ("image_auroc", "aupro"):
            mine = changed[changed["backbone"] == backbone]
            expected = np.mean([np.std(mine.loc[mine["category"] == c, metric], ddof=1) for c in CATEGORIES])
            assert table.loc[metric, backbone] == pytest.approx(expected)
            assert table.loc[metric, f"{backbone} categories"] == 2
    ratio, replicates, n = why_stability.spread_ratio(changed, PAIR, "aupro")
    a = [np.std(changed.loc[(changed["backbone"] == PAIR[0]) & (changed["category"] == c), "aupro"], ddof=1)
         for c in CATEGORIES]
    b = [np.std(changed.loc[(changed["backbone"] == PAIR[1]) & (changed["category"] == c), "aupro"], ddof=1)
         for c in CATEGORIES]
    assert n == 2 and ratio == pytest.approx(np.mean(a) / np.mean(b))
    assert np.nanmin(replicates) >= min(x / y for x, y in zip(a, b)) - 1e-12
    losses = why_stability.final_losses(frame, {d: runs.read_history(d) for d in frame["run_dir"]})
    assert losses.tolist() == pytest.approx((0.5 + 0.1 * frame["seed"]).tolist())


def test_why_section_lists_the_three_parts_in_order_with_findings(study):
    results, frame = study
    parts = why.why_parts(frame, results, [PAIR])
    assert [p.key for p in parts][:3] == ["scales", "regions", "stability"]
    scales, regions, stability = parts[:3]
    assert "scale 1 only, +5.00 [+5.00, +5.00] points" in scales.finding
    assert "< 0.1 % of the image area, 4 regions" in regions.finding and "region recall +50.00" in regions.finding
    assert "resnet50 / convnext_tiny" in stability.finding
    assert all(p.figures and p.figures[0].figure is not None for p in parts[:3])
    tables = why.why_tables(parts)
    assert {"why_scales_means", "why_scales_differences", "why_regions_by_bin", "why_stability_spread"} <= set(tables)
    assert "Which scale detects" in why.render_why(parts, 2, lambda items: [item.caption for item in items])


def test_parts_without_their_files_are_left_out(tmp_path):
    results = write_fake_results(tmp_path, backbones=PAIR, categories=("synth_object",), seeds=(0,))
    frame = runs.load_runs(results)
    assert why_scales.part(frame, str(results), [PAIR]) is None
    assert why_regions.part(frame, str(results), [PAIR]) is None
    stability = why_stability.part(frame, str(results), [PAIR])  # fake histories exist, without gradient norms
    assert "predate the gradient norms" in stability.text and "not measured" in stability.finding

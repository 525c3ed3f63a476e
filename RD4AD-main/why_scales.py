"""Why instrument 1, "Which scale detects": the scale ablation of every run (scales.csv, written by ``main.py
test``: instruments.py) per backbone, and the paired differences between a pair's backbones per ablated map."""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from plots import FigureItem, backbone_colors
from runs import METRICS, SCALES_FILE, load_scales
from why_part import WhyPart
from why_stats import CONFIDENCE, estimate_text, paired_differences, per_pair, seed_interval, stack_pairs

__all__ = ["ADDED_BY", "KEY", "METRIC_KEYS", "TITLE", "differences", "part", "scale_frame", "scale_means"]

METRIC_KEYS = ("image_auroc", "pixel_auroc", "aupro")
KEY = "scales"
TITLE = "Which scale detects"
ADDED_BY = "`main.py test --results {results}` writes each run's scales.csv (unless `--no-scale-ablation`)"


def scale_frame(runs_frame: pd.DataFrame) -> pd.DataFrame:
    """Every run's scales.csv rows with the run's backbone, category and seed (empty without any file)."""
    frames = []
    for row in runs_frame.itertuples(index=False):
        table = load_scales(row.run_dir)
        if table is not None:
            frames.append(table.assign(backbone=row.backbone, category=row.category, seed=row.seed))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _map_order(frame: pd.DataFrame) -> list[str]:
    """The maps in reading order: all scales, each scale alone, each scale left out."""
    rank = {"all": 0, "only": 1, "without": 2}
    maps = frame.drop_duplicates("map").assign(rank=frame["kind"].map(rank).fillna(len(rank)))
    return list(maps.sort_values(["rank", "scale"], kind="stable")["map"])


def scale_means(frame: pd.DataFrame) -> pd.DataFrame:
    """Per backbone and map: the mean over categories of the mean over seeds of each metric (fractions), and how
    many categories and runs it rests on."""
    per_category = frame.groupby(["backbone", "map", "category"], sort=False)[list(METRIC_KEYS)].mean()
    means = per_category.groupby(level=["backbone", "map"], sort=False).mean()
    counts = frame.groupby(["backbone", "map"], sort=False).agg(categories=("category", "nunique"),
                                                                runs=("seed", "size"))
    table = means.join(counts).reset_index()
    order = {name: index for index, name in enumerate(_map_order(frame))}
    return table.sort_values(["backbone", "map"], key=lambda c: c.map(order) if c.name == "map" else c,
                             ignore_index=True)


def differences(frame: pd.DataFrame, pair: tuple[str, str]) -> pd.DataFrame:
    """Per map and metric, the mean over categories of the seed-mean difference a - b on the (category, seed) runs
    both backbones have, with the t interval of why_stats.seed_interval: the seeds random, the categories and
    their test images fixed. Columns: map, metric, n_categories, n_seeds
    (the fewest of a category), mean_diff, ci_low, ci_high (fractions; NaN interval with one seed per category),
    df and note."""
    maps = _map_order(frame)
    if not set(pair) <= set(frame["backbone"]):
        return pd.DataFrame()
    (_, _, map_names), diff = paired_differences(frame, pair, ["category", "seed", "map"], list(METRIC_KEYS))
    diff = diff[:, :, [list(map_names).index(name) for name in maps]]  # categories x seeds x maps x metrics
    measured = np.isfinite(diff[..., 0]).all(-1)  # both runs of the (category, seed), image AUROC of every map
    per_category = [diff[c, measured[c]].reshape(int(measured[c].sum()), 1, -1)  # (seeds, one unit, columns)
                    for c in range(len(diff)) if measured[c].any()]
    if not per_category:
        return pd.DataFrame()
    found = seed_interval(per_category, bounds=(-1.0, 1.0))
    rows = []
    for index, (name, metric) in enumerate((m, k) for m in maps for k in METRIC_KEYS):
        rows.append({"map": name, "metric": metric, "n_categories": len(per_category),
                     "n_seeds": min(len(cells) for cells in per_category), "mean_diff": found.estimate[index],
                     "ci_low": found.low[index], "ci_high": found.high[index], "df": found.df[index],
                     "note": found.note})
    return pd.DataFrame(rows)


def _figure(means: pd.DataFrame, metric: str) -> Figure:
    """Grouped bars: each map's mean ``metric`` per backbone."""
    fig = Figure(figsize=(8, 3.8), layout="constrained")
    ax = fig.subplots()
    maps = list(dict.fromkeys(means["map"]))
    backbones = list(dict.fromkeys(means["backbone"]))
    colors = backbone_colors(backbones)
    width = 0.8 / len(backbones)
    for index, backbone in enumerate(backbones):
        values = means[means["backbone"] == backbone].set_index("map").reindex(maps)[metric]
        ax.bar(np.arange(len(maps)) + index * width, 100 * values.to_numpy(), width, label=backbone,
               color=colors[backbone])
    ax.set_xticks(np.arange(len(maps)) + width * (len(backbones) - 1) / 2, maps, rotation=20, fontsize="small")
    ax.set(ylabel=f"{METRICS[metric]} (%)", title=f"{METRICS[metric]} of each ablated map (mean over seeds, "
                                                  "then categories)")
    ax.legend(fontsize="small")
    return fig


def _text(row: pd.Series) -> str:
    return estimate_text(row["mean_diff"], row["ci_low"], row["ci_high"], row["note"])


def _finding(diffs: dict[tuple[str, str], pd.DataFrame], means: pd.DataFrame, metric: str) -> str | None:
    """For the first pair with differences: the full map's difference and the single scale where it is largest."""
    for pair, table in diffs.items():
        rows = table[table["metric"] == metric].set_index("map")
        alone = rows[rows.index.str.endswith(" only")]
        if rows.empty or alone["mean_diff"].isna().all():
            continue
        widest = alone["mean_diff"].abs().idxmax()
        best = {b: means[(means["backbone"] == b) & means["map"].str.endswith(" only")].set_index("map")[metric]
                for b in pair}
        best_text = "; ".join(f"{b}'s best single scale is {v.idxmax().removesuffix(' only')} ({100 * v.max():.1f} %)"
                              for b, v in best.items() if v.notna().any())
        full = rows.loc["all scales"]
        return (f"{pair[0]} − {pair[1]} on {METRICS[metric]}: all scales {_text(full)} points; the largest "
                f"difference of a single scale's map is {widest}, {_text(rows.loc[widest])} points ({best_text}; "
                f"{100 * CONFIDENCE:.0f} % t intervals with the training seeds random; on these "
                f"{int(full['n_categories'])} categories and their test images).")
    return None


def part(runs_frame: pd.DataFrame, results: str, pairs: list[tuple[str, str]]) -> WhyPart | None:
    """The "Which scale detects" part, or None when no run has scales.csv."""
    frame = scale_frame(runs_frame)
    if frame.empty:
        return None
    means = scale_means(frame)
    metric = "aupro" if frame["aupro"].notna().any() else "image_auroc"
    diffs = per_pair(frame, pairs, differences)
    mean_table = means.assign(**{METRICS[k]: (100 * means[k]).round(2) for k in METRIC_KEYS})
    mean_table = mean_table[["backbone", "map", *[METRICS[k] for k in METRIC_KEYS], "categories", "runs"]]
    diff_table = stack_pairs(diffs)
    if not diff_table.empty:
        in_points = {c: (100 * diff_table[c]).round(2) for c in ("mean_diff", "ci_low", "ci_high")}
        diff_table = diff_table.assign(metric=diff_table["metric"].map(METRICS), **in_points)
        diff_table = diff_table[["pair", "map", "metric", "n_categories", "n_seeds", "mean_diff", "ci_low", "ci_high",
                                 "df"]].assign(df=diff_table["df"].round(1))
        diff_table = diff_table.rename(columns={"mean_diff": "a − b (points)", "ci_low": "95 % CI low",
                                                "ci_high": "95 % CI high"})
    text = (f"Each run's {SCALES_FILE} (written by `main.py test` from its scoring pass; `--no-scale-ablation` skips "
            "it) holds the metrics of the anomaly map built from each scale alone and from all scales but one: the "
            "map is the sum over the teacher's taps (scale 1 = the shallowest, highest resolution) of their "
            "upsampled 1 − cos maps, then a Gaussian blur (σ 4); every ablated map gets the same upsampling and "
            "blur, the image score is its maximum, and the metrics are metrics.py's. The first table is the mean "
            "over seeds, then over categories, in percent. The second gives, per pair, the difference a − b in "
            "points (mean over categories of the seed-mean difference on the seeds both backbones ran) with a 95 % "
            "Student t interval in which the **training seeds are random**: each category's seed-to-seed variance "
            "of the difference enters with its weight (a category with one seed takes the variance of the others), "
            "with Satterthwaite's degrees of freedom (df; with 3 seeds a category has 2), and the categories and "
            "their test images are fixed (scales.csv holds each map's metrics, not per-image scores). It holds **on "
            "these categories and test images** and says nothing of new ones; with one seed per category there is "
            "no interval. Its coverage is checked by "
            "simulation (docs/calibration.md). Leaving a scale out of the map is an intervention on the map "
            "(not on the teacher): a difference here is caused by what that scale adds to the map.")
    figure = FigureItem(kind="why", name="why_scales", caption=f"{METRICS[metric]} of each scale's map alone and of "
                        "the map without each scale, per backbone (mean over seeds, then categories).",
                        figure=_figure(means, metric))
    tables = {"means": mean_table} | ({"differences": diff_table} if not diff_table.empty else {})
    finding = _finding(diffs, means, metric) or "No pair has scale ablations of both backbones on the same runs."
    return WhyPart(KEY, TITLE, text, tables, [figure], finding)

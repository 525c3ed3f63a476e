"""Why instrument 3, "Training stability": the learning curves (loss, gradient norms of bottleneck and student,
from history.csv) of every run per backbone side by side (colour: category, line style: seed), and the
seed-to-seed spread of each metric pooled over categories, and the typical ratio of two backbones' spreads
(why_stats)."""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from plots import LINE_STYLES, FigureItem, category_colors
from runs import GRAD_NORM_COLUMNS, HISTORY_FILE, METRICS, read_history
from why_part import WhyPart
from why_stats import CONFIDENCE, SpreadInterval, paired_values, pooled_sd, spread_interval

__all__ = ["ADDED_BY", "CURVES", "KEY", "SPREAD_METRICS", "TITLE", "final_losses", "part",
           "spread_ratio", "spread_table", "seed_spread"]

KEY = "stability"
TITLE = "Training stability"
ADDED_BY = "`main.py train` writes each run's history.csv"
CURVES = {"loss": "training loss", GRAD_NORM_COLUMNS[0]: "gradient norm, bottleneck",
          GRAD_NORM_COLUMNS[1]: "gradient norm, student"}
SPREAD_METRICS = {"image_auroc": METRICS["image_auroc"], "pixel_auroc": METRICS["pixel_auroc"],
                  "aupro": METRICS["aupro"], "final_loss": "final training loss"}
PERCENT = ("image_auroc", "pixel_auroc", "aupro")  # fractions shown in points; the loss as it is


def final_losses(runs_frame: pd.DataFrame, histories: dict[str, pd.DataFrame]) -> pd.Series:
    """Each run's last training loss in history.csv (NaN without one), aligned with ``runs_frame``."""
    return pd.Series([float(histories[d]["loss"].iloc[-1]) if d in histories and len(histories[d]) else np.nan
                      for d in runs_frame["run_dir"]], index=runs_frame.index, dtype=float)


def seed_spread(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per backbone and category with at least two seeds measured: the sample variance and standard deviation
    (ddof 1) of ``metric`` over the seeds. Columns backbone, category, variance, std, seeds."""
    measured = frame.dropna(subset=[metric])
    grouped = measured.groupby(["backbone", "category"])[metric].agg(
        variance=lambda v: float(np.var(v, ddof=1)) if len(v) > 1 else np.nan, seeds="size")
    grouped = grouped.dropna(subset=["variance"]).reset_index()
    return grouped.assign(std=np.sqrt(grouped["variance"]))


def spread_table(frame: pd.DataFrame, backbones: list[str]) -> pd.DataFrame:
    """Rows: metrics; per backbone, the pooled seed standard deviation (the root of the seed variances averaged
    over the categories with two or more seeds, weighted by seeds - 1) and how many categories it pools."""
    rows = []
    for metric, label in SPREAD_METRICS.items():
        spread = seed_spread(frame, metric)
        row: dict = {"metric": label, "key": metric}
        for backbone in backbones:
            mine = spread[spread["backbone"] == backbone]
            weights = mine["seeds"] - 1
            row[backbone] = pooled_sd(weights, mine["variance"]) if len(mine) else np.nan
            row[f"{backbone} categories"] = len(mine)
        rows.append(row)
    return pd.DataFrame(rows)


def spread_ratio(frame: pd.DataFrame, pair: tuple[str, str], metric: str) -> SpreadInterval | None:
    """On the categories where both backbones have the same two or more seeds: the typical ratio of the seed
    standard deviations a / b with its interval (why_stats.spread_interval); None without such a category."""
    if not set(pair) <= set(frame["backbone"]):
        return None
    _, values = paired_values(frame, pair, ["category", "seed"], [metric])  # categories x seeds x (a, b) x 1
    values = values[..., 0]
    both = np.isfinite(values).all(-1)  # the (category, seed) runs both backbones measured
    seeds = both.sum(1)
    keep = seeds >= 2
    if not keep.any():
        return None
    chosen = np.where(both[..., None], values, np.nan)[keep]
    variances = np.nanvar(chosen, axis=1, ddof=1)  # categories x (a, b)
    return spread_interval(variances[:, 0], variances[:, 1], seeds[keep])


def _figure(histories: dict[str, pd.DataFrame], runs_frame: pd.DataFrame, backbones: list[str]) -> Figure:
    """Rows: loss and each gradient norm recorded; columns: backbones; one line per run, its colour the category's
    and its line style the seed's, with a legend of both."""
    from matplotlib.lines import Line2D

    curves = [c for c in CURVES if any(c in h and h[c].notna().any() for h in histories.values())]
    fig = Figure(figsize=(3.6 * len(backbones) + 2.2, 2.6 * len(curves)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(curves), len(backbones), sharey="row", squeeze=False))
    shown = runs_frame[runs_frame["run_dir"].isin(histories)]
    colors = category_colors(sorted(set(shown["category"])))
    seeds = sorted(set(shown["seed"]))
    styles = {seed: LINE_STYLES[index % len(LINE_STYLES)] for index, seed in enumerate(seeds)}
    for column, backbone in enumerate(backbones):
        members = shown[shown["backbone"] == backbone]
        for row, curve in enumerate(curves):
            ax = axes[row, column]
            for run in members.itertuples(index=False):
                history = histories[run.run_dir]
                if curve in history:
                    ax.plot(history["epoch"], history[curve], color=colors[run.category],
                            linestyle=styles[run.seed], linewidth=1, alpha=0.8)
            ax.set(title=backbone if row == 0 else None, xlabel="epoch" if row == len(curves) - 1 else None,
                   ylabel=CURVES[curve] if column == 0 else None)
            if curve in GRAD_NORM_COLUMNS:
                ax.set_yscale("log")
    handles = [Line2D([], [], color=color, label=category) for category, color in colors.items()]
    handles += [Line2D([], [], color="black", linestyle=style, label=f"seed {seed}") for seed, style in styles.items()]
    fig.legend(handles=handles, loc="outside right upper", fontsize="small", title="colour: category\nline: seed",
               title_fontsize="small")
    return fig


def part(runs_frame: pd.DataFrame, results: str, pairs: list[tuple[str, str]]) -> WhyPart | None:
    """The "Training stability" part, or None when no run has a history.csv."""
    histories = {d: h for d in runs_frame["run_dir"] if (h := read_history(d)) is not None and len(h)}
    if not histories:
        return None
    backbones = list(dict.fromkeys([b for pair in pairs for b in pair] + sorted(set(runs_frame["backbone"]))))
    frame = runs_frame.assign(final_loss=final_losses(runs_frame, histories))
    table = spread_table(frame, backbones)
    shown = table.drop(columns="key").copy()
    for backbone in backbones:
        shown[backbone] = [round(100 * v, 3) if key in PERCENT else round(v, 5)
                           for key, v in zip(table["key"], table[backbone])]
    metric = "aupro" if frame["aupro"].notna().any() else "image_auroc"
    finding = "No category has two seeds of both backbones of a pair: the seed-to-seed spread is not measured."
    for pair in pairs:
        found = spread_ratio(frame, pair, metric)
        if found is not None and np.isfinite(found.ratio):
            finding = (f"Seed-to-seed spread of {METRICS[metric]}: {pair[0]} / {pair[1]} = {found.ratio:.2f} "
                       f"[{found.low:.2f}, {found.high:.2f}] (the geometric mean over {found.n_categories} categories "
                       f"of each category's ratio of seed standard deviations; pooled, {100 * found.sd_a:.2f} and "
                       f"{100 * found.sd_b:.2f} points; {100 * CONFIDENCE:.0f} % interval with the training seeds "
                       "random, categories fixed).")
            break
    grads = "" if any(c in h and h[c].notna().any() for h in histories.values() for c in GRAD_NORM_COLUMNS) else \
        " (these runs predate the gradient norms: retrain to record them)"
    text = (f"From each run's {HISTORY_FILE}: the training loss (mean over the epoch's images of the sum over "
            "scales of 1 − cos) and the gradient norms: per epoch, the mean over its optimiser steps of the L2 norm "
            "of all the bottleneck's (and of all the student's) parameter gradients, read after each step"
            f"{grads}. The table gives, per backbone, the seed-to-seed spread of each metric: the sample variance "
            "over seeds (ddof 1) in each category with two or more seeds, averaged over those categories with "
            "weights seeds − 1, as a standard deviation (metrics in points, the final training loss as it is). The "
            "finding's ratio uses the (category, seed) runs both backbones have, in the categories with two or "
            "more of them where both backbones varied: per category the ratio of the two seed standard "
            "deviations, then their geometric mean over categories. Its 95 % interval takes the **training seeds "
            "as random** (normal seed-to-seed noise, the two backbones' independent) and the categories as "
            "fixed, each with its own spread: if the ratio is the same in every category, each category's variance "
            "ratio is that ratio squared times an F(seeds − 1, seeds − 1) draw, so the mean of their logarithms "
            "has a known distribution (its quantiles by seeded Monte Carlo). Coverage checked by simulation "
            "(docs/calibration.md).")
    figure = FigureItem(kind="why", name="why_stability", caption="Learning curves of every run, backbones side by "
                        "side (colour: category, line style: seed; gradient norms on a log scale).",
                        figure=_figure(histories, runs_frame, backbones))
    return WhyPart(KEY, TITLE, text, {"spread": shown}, [figure], finding)

"""Why instrument 3, "Training stability": the learning curves (loss, gradient norms of bottleneck and student,
from history.csv) of every seed per backbone side by side, and the seed-to-seed spread of each metric."""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from plots import FigureItem
from runs import GRAD_NORM_COLUMNS, HISTORY_FILE, METRICS, read_history
from significance import multiplicities, percentile_interval, seeded_rng
from why_part import WhyPart
from why_stats import CONFIDENCE, N_BOOT

__all__ = ["CURVES", "SPREAD_METRICS", "final_losses", "part", "spread_ratio", "spread_table", "seed_spread"]

KEY = "stability"
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
    """Per backbone and category with at least two seeds measured: the sample standard deviation (ddof 1) of
    ``metric`` over the seeds. Columns backbone, category, std, seeds."""
    measured = frame.dropna(subset=[metric])
    grouped = measured.groupby(["backbone", "category"])[metric].agg(std=lambda v: float(np.std(v, ddof=1))
                                                                     if len(v) > 1 else np.nan, seeds="size")
    return grouped.dropna(subset=["std"]).reset_index()


def spread_table(frame: pd.DataFrame, backbones: list[str]) -> pd.DataFrame:
    """Rows: metrics; per backbone, the mean over categories of the seed standard deviation and how many
    categories it averages (fractions and losses as measured)."""
    rows = []
    for metric, label in SPREAD_METRICS.items():
        spread = seed_spread(frame, metric)
        row: dict = {"metric": label, "key": metric}
        for backbone in backbones:
            mine = spread[spread["backbone"] == backbone]
            row[backbone] = float(mine["std"].mean()) if len(mine) else np.nan
            row[f"{backbone} categories"] = len(mine)
        rows.append(row)
    return pd.DataFrame(rows)


def spread_ratio(frame: pd.DataFrame, pair: tuple[str, str], metric: str, n_boot: int = N_BOOT
                 ) -> tuple[float, np.ndarray, int] | None:
    """On the categories where both backbones have two or more seeds: mean seed std of a / that of b, its bootstrap
    replicates (categories resampled) and the number of categories; None without such a category."""
    spread = seed_spread(frame, metric).pivot(index="category", columns="backbone", values="std")
    if not set(pair) <= set(spread.columns):
        return None
    both = spread[list(pair)].dropna()
    if both.empty:
        return None
    a, b = both[pair[0]].to_numpy(), both[pair[1]].to_numpy()
    weights = multiplicities(len(both), n_boot, seeded_rng("why", KEY, *pair, metric))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = a.mean() / b.mean() if b.mean() > 0 else np.nan
        replicates = (weights @ a) / (weights @ b)
    replicates[~np.isfinite(replicates)] = np.nan
    return ratio, replicates, len(both)


def _figure(histories: dict[str, pd.DataFrame], runs_frame: pd.DataFrame, backbones: list[str]) -> Figure:
    """Rows: loss and each gradient norm recorded; columns: backbones; one line per run, coloured by seed."""
    curves = [c for c in CURVES if any(c in h and h[c].notna().any() for h in histories.values())]
    fig = Figure(figsize=(3.6 * len(backbones) + 1, 2.6 * len(curves)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(curves), len(backbones), sharey="row", squeeze=False))
    seeds = sorted(set(runs_frame["seed"]))
    palette = [f"C{i % 10}" for i in range(len(seeds))]
    for column, backbone in enumerate(backbones):
        members = runs_frame[runs_frame["backbone"] == backbone]
        for row, curve in enumerate(curves):
            ax = axes[row, column]
            for run in members.itertuples(index=False):
                history = histories.get(run.run_dir)
                if history is not None and curve in history:
                    ax.plot(history["epoch"], history[curve], color=palette[seeds.index(run.seed)], linewidth=1,
                            alpha=0.7, label=f"seed {run.seed}")
            ax.set(title=backbone if row == 0 else None, xlabel="epoch" if row == len(curves) - 1 else None,
                   ylabel=CURVES[curve] if column == 0 else None)
            if curve in GRAD_NORM_COLUMNS:
                ax.set_yscale("log")
    handles = {h.get_label(): h for ax in axes.ravel() for h in ax.get_lines()}
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="outside right upper", fontsize="small")
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
        if found is not None and np.isfinite(found[0]):
            ratio, replicates, n = found
            low, high = percentile_interval(replicates, CONFIDENCE)
            finding = (f"Seed-to-seed spread of {METRICS[metric]} (std over seeds, mean over {n} categories): "
                       f"{pair[0]} / {pair[1]} = {ratio:.2f} [{low:.2f}, {high:.2f}] (95 % interval, categories "
                       "resampled).")
            break
    grads = "" if any(c in h and h[c].notna().any() for h in histories.values() for c in GRAD_NORM_COLUMNS) else \
        " (these runs predate the gradient norms: retrain to record them)"
    text = (f"From each run's {HISTORY_FILE}: the training loss (mean over the epoch's images of the sum over "
            "scales of 1 − cos) and the gradient norms: per epoch, the mean over its optimiser steps of the L2 norm "
            "of all the bottleneck's (and of all the student's) parameter gradients, read after each step"
            f"{grads}. The table gives, per backbone, the seed-to-seed spread of each metric: the sample standard "
            "deviation over seeds (ddof 1) in each category with two or more seeds, averaged over those categories "
            "(metrics in points, the final training loss as it is). The finding's ratio uses the categories where "
            f"both backbones have two or more seeds; its 95 % interval resamples those categories ({N_BOOT} "
            "resamples).")
    figure = FigureItem(kind="why", name="why_stability", caption="Learning curves of every run, backbones side by "
                        "side (colour: seed; gradient norms on a log scale).",
                        figure=_figure(histories, runs_frame, backbones))
    return WhyPart(KEY, "Training stability", text, {"spread": shown}, [figure], finding)

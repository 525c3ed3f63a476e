"""The Why section's audit "Did the selector track the test?": synthetic-validation AUPRO against test AUPRO.

Reads each run's ``selection_audit.csv`` (``train --audit-test``; why_files.py): the test metrics at the epochs
where synthetic validation ran. This module is the file's only reader: no selection, threshold or tuning sees it.
Per run, Spearman's rank correlation between the synthetic-validation AUPRO and the test AUPRO over those epochs,
and how much test AUPRO the selected epoch gave up against the best audited one; pooled, the mean correlation
with a percentile bootstrap interval over runs. No model code.
"""
from __future__ import annotations


import numpy as np
import pandas as pd
from scipy import stats

import why_files
from comparison import CONFIDENCE, N_BOOT
from significance import multiplicities, percentile_interval, seeded_rng
from why_part import WhyPart

__all__ = ["ADDED_BY", "KEY", "MIN_EPOCHS", "TITLE", "audit_figure", "part", "pooled_table", "run_table", "spearman"]

KEY = "audit"
TITLE = "Audit: did the selector track the test?"
ADDED_BY = ("`main.py train --audit-test` scores the test set at each synthetic-validation epoch into the run's "
            "selection_audit.csv (a finished run is trained again only with `--restart`; then `main.py test "
            "--results {results}`)")
MIN_EPOCHS = 3  # a rank correlation of fewer points says nothing


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho (average ranks for ties); NaN with fewer than MIN_EPOCHS points or a constant side."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    if x.size < MIN_EPOCHS or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(stats.spearmanr(x, y).statistic)


def run_table(runs_frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """One row per run with an audit file, and the audit files by run directory."""
    rows, audits = [], {}
    for _, run in runs_frame.iterrows():
        audit = why_files.read_audit(run["run_dir"])
        if audit is None or audit.empty:
            continue
        audits[run["run_dir"]] = audit
        selected = audit[audit["epoch"] == run["selected_epoch"]]["test_aupro"]
        best = audit.loc[audit["test_aupro"].idxmax()] if audit["test_aupro"].notna().any() else None
        at_selected = float(selected.iloc[0]) if len(selected) else np.nan
        rows.append({"backbone": run["backbone"], "category": run["category"], "seed": int(run["seed"]),
                     "selection": run["selection"], "audited epochs": len(audit),
                     "spearman": spearman(audit["synth_aupro"], audit["test_aupro"]),
                     "selected epoch": _epoch(run["selected_epoch"]), "test AUPRO at selected": at_selected,
                     "best audited epoch": np.nan if best is None else int(best["epoch"]),
                     "best audited test AUPRO": np.nan if best is None else float(best["test_aupro"]),
                     "AUPRO given up": np.nan if best is None else float(best["test_aupro"]) - at_selected})
    return pd.DataFrame(rows), audits


def _epoch(value: float) -> int | None:
    return None if pd.isna(value) else int(value)



def pooled_table(per_run: pd.DataFrame, n_boot: int = N_BOOT) -> pd.DataFrame:
    """Per backbone and over all runs: the mean rho of the runs where it is defined, a percentile bootstrap
    interval over those runs, and the mean test AUPRO the selected epoch gave up."""
    rows = []
    groups = [(name, group) for name, group in per_run.groupby("backbone", sort=False)] + [("all runs", per_run)]
    for name, group in groups:
        rho = group["spearman"].dropna().to_numpy()
        given_up = group["AUPRO given up"].dropna().to_numpy()
        rows.append({"backbone": name, "runs": len(group), "runs with rho": int(rho.size),
                     "mean spearman": float(rho.mean()) if rho.size else np.nan,
                     **dict(zip(("ci_low", "ci_high"), _mean_interval(rho, n_boot, seeded_rng(KEY, name)))),
                     "mean AUPRO given up": float(given_up.mean()) if given_up.size else np.nan,
                     **dict(zip(("given_up_ci_low", "given_up_ci_high"),
                                _mean_interval(given_up, n_boot, seeded_rng(KEY, name, "given up"))))})
    return pd.DataFrame(rows)


def _mean_interval(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` over resampled runs (NaN when there are none)."""
    if not values.size:
        return float("nan"), float("nan")
    return percentile_interval(multiplicities(values.size, n_boot, rng) @ values / values.size, CONFIDENCE)


def audit_figure(per_run: pd.DataFrame, audits: dict[str, pd.DataFrame], runs_frame: pd.DataFrame):  # noqa: ANN201
    """Left: each run's test AUPRO against its synthetic-validation AUPRO over the audited epochs (a line per
    run, in epoch order); right: each run's rho by backbone."""
    from matplotlib.figure import Figure

    from plots import backbone_colors

    backbones = list(dict.fromkeys(per_run["backbone"]))
    colors = backbone_colors(backbones)
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=(2, 1))
    labelled = set()
    for _, run in runs_frame[runs_frame["run_dir"].isin(audits)].iterrows():
        audit = audits[run["run_dir"]]
        label = None if run["backbone"] in labelled else run["backbone"]
        labelled.add(run["backbone"])
        left.plot(100 * audit["synth_aupro"], 100 * audit["test_aupro"], marker="o", markersize=3, linewidth=0.8,
                  color=colors[run["backbone"]], alpha=0.8, label=label)
    left.set(xlabel="synthetic-validation AUPRO (%)", ylabel="test AUPRO (%)",
             title="AUDIT: test AUPRO at the synthetic-validation epochs (never used to select)")
    left.legend(fontsize="x-small")
    for index, backbone in enumerate(backbones):
        rho = per_run.loc[per_run["backbone"] == backbone, "spearman"].dropna().to_numpy()
        jitter = np.linspace(-0.15, 0.15, rho.size) if rho.size > 1 else np.zeros(rho.size)
        right.scatter(index + jitter, rho, color=colors[backbone], s=14)
    right.axhline(0.0, color="grey", linewidth=0.8)
    right.set_xticks(range(len(backbones)), backbones, rotation=20, fontsize="small")
    right.set(ylim=(-1.05, 1.05), ylabel="Spearman rho (per run)", title="Rank agreement per run")
    return fig


def _finding(pooled: pd.DataFrame) -> str:
    overall = pooled[pooled["backbone"] == "all runs"].iloc[0]
    head = "audit only (the test set scored at the synthetic-validation epochs, never used to select): "
    if overall["runs with rho"] == 0:
        ranked = (f"no run has {MIN_EPOCHS} audited epochs with varying scores, so there is no rank correlation "
                  f"(train with a smaller --val-every)")
    else:
        ranked = (f"the synthetic-validation AUPRO ranked the epochs like the test AUPRO with a mean Spearman rho of "
                  f"{overall['mean spearman']:+.2f} over {int(overall['runs with rho'])} runs "
                  f"({100 * CONFIDENCE:.0f} % bootstrap interval over runs [{overall['ci_low']:+.2f}, "
                  f"{overall['ci_high']:+.2f}])")
    if np.isnan(overall["mean AUPRO given up"]):
        return head + ranked + "."
    return (head + ranked + f"; the selected epoch's test AUPRO was {100 * overall['mean AUPRO given up']:.2f} points "
            f"below the best audited epoch's on average (interval [{100 * overall['given_up_ci_low']:.2f}, "
            f"{100 * overall['given_up_ci_high']:.2f}]).")


def part(runs_frame: pd.DataFrame, results: str, pairs: list[tuple[str, str]]) -> WhyPart | None:
    """The audit's share of the Why section; None when no compared run was trained with --audit-test."""
    from plots import FigureItem

    per_run, audits = run_table(runs_frame)
    if per_run.empty:
        return None
    pooled = pooled_table(per_run)
    text = (
        "**This is an audit, not a result used anywhere.** Runs trained with `main.py train --audit-test` scored the "
        "test set at every epoch where synthetic validation ran (`selection_audit.csv`); nothing that selects an "
        "epoch, sets a threshold or tunes a setting reads that file. Per run: Spearman's rank correlation between "
        f"the synthetic-validation AUPRO and the test AUPRO over the audited epochs (defined from {MIN_EPOCHS} epochs "
        "on, with both sides varying), and the test AUPRO the selected epoch (the run's `--selection`) gave up "
        "against the best audited epoch. Pooled: the mean rho of the runs, with a percentile bootstrap interval from "
        f"{N_BOOT} resamples of the runs. A rho near 1 says the synthetic anomalies rank epochs as real defects do.")
    figures = [FigureItem("why", "why_audit_selection", "AUDIT: synthetic-validation AUPRO against test AUPRO over "
                          "the audited epochs, and each run's rank correlation",
                          audit_figure(per_run, audits, runs_frame))]
    return WhyPart(KEY, TITLE, text, {"runs": per_run.round(4), "pooled": pooled.round(4)}, figures, _finding(pooled))

"""Which metrics the report tests in pairs, which of them the default primary family holds, and which a table leaves
out because no run of it measured them (said once, with the reason and how to measure them, never once per
category).

The paired tables (tests over categories, per-category tests, forest-plot intervals) test every metric of
PAIRED_METRICS that some run of the dataset measured; the default primary family stays DEFAULT_PRIMARY_METRICS, so
adding a metric here leaves the declared answers of existing studies unchanged (decision.py). sPRO exists on MVTec
LOCO AD data only (its defects_config.json saturation thresholds): elsewhere it is left out silently, and it enters
the tests over categories only (its per-region overlaps are not kept per image, so it has no per-category bootstrap).
"""
from __future__ import annotations

import pandas as pd

from metrics import AUPIMO_FPR_BAND
from runs import METRICS, load_scores

__all__ = ["CATEGORY_TESTED", "DEFAULT_PRIMARY_METRICS", "METRIC_LABELS", "PAIRED_METRICS", "measured_metrics",
           "unmeasured_note"]

# The metrics tested in pairs: metrics.json key -> label (fractions in [0, 1]).
PAIRED_METRICS: dict[str, str] = {**{key: METRICS[key] for key in ("image_auroc", "pixel_auroc", "aupro", "aupro_5pct",
                                                                  "aupimo", "seg_f1")}, "spro": "sPRO"}
DEFAULT_PRIMARY_METRICS = ("image_auroc", "pixel_auroc", "aupro")  # the primary family when a config declares none
CATEGORY_TESTED = tuple(metric for metric in PAIRED_METRICS if metric != "spro")  # with a per-category bootstrap
SPRO_FORMAT = "mvtec_loco"  # layouts.DATA_FORMATS: the one data format with sPRO
_PIXEL = ("pixel_auroc", "aupro", "aupro_5pct", "seg_f1", "seg_f1_max", "aupimo")
METRIC_LABELS: dict[str, str] = {**METRICS, **PAIRED_METRICS}  # every metric a note may name: the descriptive too
_RETEST = "`main.py test --force` measures it"


def _applies(metric: str, dataset: str) -> bool:
    return metric != "spro" or dataset == SPRO_FORMAT


def measured_metrics(frame: pd.DataFrame, metrics: tuple[str, ...] | None = None) -> list[str]:
    """The metrics (default PAIRED_METRICS) some run of ``frame`` measured, in registry order."""
    return [metric for metric in (metrics or tuple(PAIRED_METRICS))
            if metric in frame.columns and frame[metric].notna().any()]


def unmeasured_metrics(runs_frame: pd.DataFrame) -> dict[str, list[str]]:
    """Per metric (paired or descriptive), the datasets where no run measured it (sPRO only where the data format
    has it)."""
    out: dict[str, list[str]] = {}
    for dataset, frame in runs_frame.groupby("dataset", sort=True):
        measured = set(measured_metrics(frame, tuple(METRIC_LABELS)))
        for metric in METRIC_LABELS:
            if metric not in measured and _applies(metric, str(dataset)):
                out.setdefault(metric, []).append(str(dataset))
    return out


def _normal_pixels(frame: pd.DataFrame) -> int:
    """The most normal test pixels any run of ``frame`` has at its image size (what AUPIMO's band needs)."""
    counts = [int((load_scores(row.run_dir)["label"] == 0).sum()) * int(row.image_size) ** 2
              for row in frame.itertuples() if str(row.image_size).isdigit()]
    return max(counts, default=0)


def _reason(metric: str, frame: pd.DataFrame) -> str:
    """Why no run of ``frame`` measured ``metric``, and how to measure it."""
    if metric in _PIXEL and frame["pixel_auroc"].isna().all():
        return "no run has ground-truth masks"
    if metric == "aupimo":
        low, high = (f"{value:.0e}".replace("e-0", "e-") for value in AUPIMO_FPR_BAND)
        return (f"no run's normal test pixels resolve its false-positive band ({low} to {high} needs at least "
                f"{1 / AUPIMO_FPR_BAND[0]:,.0f} normal test pixels; these runs have at most "
                f"{_normal_pixels(frame):,}): test at a larger --image-size or with more normal test images (runs "
                "tested before AUPIMO existed: `main.py test --force`)")
    if metric == "spro":
        return f"the runs have no sPRO (it needs MVTec LOCO's defects_config.json saturation thresholds); {_RETEST}"
    return f"the runs were tested before it existed, or re-thresholded without their maps; {_RETEST}"


def unmeasured_note(runs_frame: pd.DataFrame) -> str | None:
    """One part per metric no run measured (per dataset when there are several): which, why, how to
    measure it; None when every metric was measured somewhere it applies."""
    missing = unmeasured_metrics(runs_frame)
    if not missing:
        return None
    several = runs_frame["dataset"].nunique() > 1
    parts = []
    for metric, datasets in missing.items():
        frame = runs_frame[runs_frame["dataset"].isin(datasets)]
        where = f" on {', '.join(datasets)}" if several else ""
        parts.append(f"{METRIC_LABELS[metric]}{where}: {_reason(metric, frame)}")
    return ("**Not measured by any run**, so left out of the paired tables and the group means' left-out column "
            "(named here once, not per category): " + "; ".join(parts) + ".")

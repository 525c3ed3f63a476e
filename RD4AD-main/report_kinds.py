"""The report's MVTec LOCO AD table: each category's results split by anomaly kind, logical (a missing, extra or
misplaced part: global context) and structural (local damage), beside their mean. Descriptive: mean ± std over
seeds, no test (the paired tables test the shared metrics and, over categories, sPRO's mean over both kinds)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

import runs
from backbone_facts import backbone_family
from report_tables import format_mean_std, mean_std

__all__ = ["anomaly_kind_table", "anomaly_kind_text"]

LOCO_KINDS = {"logical_anomalies": "logical", "structural_anomalies": "structural"}  # test folder -> label
_BOTH = "mean of both"


def _kind_values(record: dict) -> dict[str, tuple[float, float]]:
    """(image AUROC, AU-sPRO) per anomaly kind of one run's metrics.json, and their mean (NaN when missing)."""
    aurocs = record.get("per_defect_image_auroc") or {}
    spros = record.get("spro_by_type") or {}
    values = {label: (_number(aurocs.get(kind)), _number(spros.get(kind))) for kind, label in LOCO_KINDS.items()}
    both_auroc = pd.Series([value[0] for value in values.values()]).mean(skipna=False)
    values[_BOTH] = (float(both_auroc), _number(record.get("spro")))
    return values


def _number(value: object) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else float("nan")


def anomaly_kind_table(runs_frame: pd.DataFrame) -> pd.DataFrame:
    """Per MVTec LOCO category, backbone and anomaly kind: image AUROC of that kind's images against the good ones
    and AU-sPRO (its images plus the good ones; metrics.json ``spro_by_type``), percent, mean ± std over seeds; a
    third row per backbone is their mean (``spro``: the LOCO evaluation's mean). Empty without LOCO runs."""
    rows = []
    frame = runs_frame[runs_frame["dataset"] == "mvtec_loco"]
    for (category, backbone), group in frame.groupby(["category", "backbone"], sort=True):
        per_run = [_kind_values(runs.read_json(Path(directory) / runs.METRICS_FILE)) for directory in group["run_dir"]]
        for label in (*LOCO_KINDS.values(), _BOTH):
            auroc, auroc_std, _ = mean_std(pd.Series([values[label][0] for values in per_run], dtype=float))
            spro, spro_std, _ = mean_std(pd.Series([values[label][1] for values in per_run], dtype=float))
            rows.append({
                "category": category, "backbone": backbone, "family": backbone_family(backbone), "anomalies": label,
                "n seeds": len(group),
                "image AUROC (%)": format_mean_std(auroc, auroc_std),
                "AU-sPRO (%)": format_mean_std(spro, spro_std),
            })
    return pd.DataFrame(rows, columns=["category", "backbone", "family", "anomalies", "n seeds", "image AUROC (%)",
                                       "AU-sPRO (%)"])


def anomaly_kind_text(runs_frame: pd.DataFrame) -> str:
    """What the anomaly-kind table shows, with its sPRO integration limit, or why it is empty."""
    frame = runs_frame[runs_frame["dataset"] == "mvtec_loco"]
    if frame.empty:
        return "No MVTec LOCO AD runs: no logical / structural split."
    limits = set()
    for directory in frame["run_dir"]:
        limit = runs.read_json(Path(directory) / runs.METRICS_FILE).get("spro_fpr_limit")
        limits.add("n/a" if limit is None else f"{limit:g}")
    return ("MVTec LOCO AD by anomaly kind: logical anomalies break a rule of the whole image (a part missing, extra "
            "or misplaced), structural ones are local damage. Image AUROC: that kind's images against the good ones; "
            f"AU-sPRO: saturated per-region overlap integrated to FPR {', '.join(sorted(limits))} and divided by it, "
            "on that kind's images plus the good ones (docs/reproduction.md, section 10); 'mean of both' is their "
            "mean. Percent, mean ± std over seeds; descriptive, not tested here (the tests over categories test sPRO, "
            "the mean of both, as a paired metric).")

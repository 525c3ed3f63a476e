"""The report's tables: metric means per category and group, references, efficiency, and the paired tests and
the decision rule formatted for reading (percent and points). Numbers only; sentences live in claims.py."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from backbone_facts import DEFAULT_METHOD, METHODS, method_label
from comparison import (CONFIDENCE, NOT_AVAILABLE, OVERALL, PAIRED_METRICS, backbone_family, group_members,
                        shared_categories, unfinished_flags)
from interaction import label_arms, question_text
from paired_metrics import measured_metrics
from runs import EFFICIENCY, METRICS

__all__ = ["OUR_PROTOCOL", "P_FLOOR", "PROTOCOLS", "REFERENCES", "Reference", "aggregate_table",
           "category_stats", "category_table", "count_text", "detectable_text", "distinct_values", "efficiency_table",
           "fmt", "format_mean_std", "format_p", "group_stats", "group_table", "interval_text", "is_synthetic",
           "mean_std", "method_backbone_table", "multi_dataset", "p_is",
           "pairwise_table", "per_defect_table", "planning_display", "primary_table", "reference_table",
           "values_list"]

PROTOCOLS = {"last": "the last epoch's weights (RD4AD's protocol)",
             "synthetic-val": "the epoch with the best synthetic-validation AUPRO (no test image used)"}


@dataclass(frozen=True)
class Reference:
    """A published MVTec AD 15-category mean (percent), shown beside ours and never averaged with it."""

    method: str
    values: dict[str, float]
    protocol: str


# docs/reproduction.md#5-published-numbers: the values and the protocols behind them.
REFERENCES = (
    Reference("RD4AD, WRN-50-2 (Deng & Li, CVPR 2022)", {"image_auroc": 98.5, "pixel_auroc": 97.8, "aupro": 93.9},
              "full training set; the official code's epoch 200; AUPRO from its per-image compute_pro, not the "
              "standard AUPRO (docs/reproduction.md, sections 4 and 5)"),
    Reference("RD++ (Tien et al., CVPR 2023)", {"image_auroc": 99.4, "pixel_auroc": 98.3, "aupro": 95.0},
              "full training set; keeps the best test epoch (selected on the test set), epochs set per category; "
              "AUPRO from RD4AD's per-image compute_pro (docs/reproduction.md, section 5)"),
)
REFERENCE_METRICS = ("image_auroc", "pixel_auroc", "aupro")  # what the references publish
OUR_PROTOCOL = ("this report: training set minus the validation hold-out (about 10 %, drawn per image name); "
                "{selection}; standard AUPRO (MVTec, FPR up to 0.3)")

def distinct_values(runs_frame: pd.DataFrame, column: str) -> str:
    """Distinct values of a column, flagged when the runs disagree."""
    values = sorted(set(runs_frame[column].astype(str)))
    text = ", ".join(values)
    return text if len(values) == 1 else f"{text} (differs between runs)"


def values_list(column: pd.Series) -> str:
    return ", ".join(sorted(set(column.astype(str))))



def is_synthetic(runs_frame: pd.DataFrame) -> bool:
    """True when any category is a generated one (``synth_*``): the published numbers do not apply."""
    return bool(runs_frame["category"].str.startswith("synth").any())


def mean_std(values: pd.Series) -> tuple[float, float, int]:
    """Mean, sample std (ddof 1) and count of the non-null values."""
    valid = values.dropna()
    if valid.empty:
        return float("nan"), float("nan"), 0
    std = float(valid.std(ddof=1)) if len(valid) > 1 else float("nan")
    return float(valid.mean()), std, len(valid)


def format_mean_std(mean: float, std: float, scale: float = 100.0, decimals: int = 1) -> str:
    """``mean ± std`` (std omitted for a single value); ``n/a`` when not measured."""
    if np.isnan(mean):
        return NOT_AVAILABLE
    text = f"{mean * scale:.{decimals}f}"
    return text if np.isnan(std) else f"{text} ± {std * scale:.{decimals}f}"


def multi_dataset(runs_frame: pd.DataFrame) -> bool:
    return runs_frame["dataset"].nunique() > 1


def category_stats(runs_frame: pd.DataFrame) -> pd.DataFrame:
    """Long numeric table: per category, backbone and metric, mean/std over seeds and n seeds."""
    rows = []
    for (dataset, category, kind, backbone), group in runs_frame.groupby(["dataset", "category", "kind", "backbone"],
                                                                          sort=True):
        for metric in METRICS:
            mean, std, count = mean_std(group[metric])
            rows.append((dataset, category, kind, backbone, backbone_family(backbone), metric, mean, std, count,
                         len(group), bool(group["unfinished"].any())))
    return pd.DataFrame(rows, columns=["dataset", "category", "group", "backbone", "family", "metric", "mean", "std",
                                       "n_values", "n_seeds", "unfinished"])


def category_table(runs_frame: pd.DataFrame) -> pd.DataFrame:
    """Per category x backbone: every metric as "mean ± std" in percent over seeds; unfinished runs flagged."""
    rows = []
    for (dataset, category, kind, backbone), group in runs_frame.groupby(["dataset", "category", "kind", "backbone"],
                                                                          sort=True):
        cells = {}
        for metric, label in METRICS.items():
            mean, std, _ = mean_std(group[metric])
            cells[label + " (%)"] = format_mean_std(mean, std)
        row = {"dataset": dataset} if multi_dataset(runs_frame) else {}
        rows.append({**row, "category": category, "group": kind, "backbone": backbone,
                     "family": backbone_family(backbone), "n seeds": len(group), **cells,
                     "flags": unfinished_flags(group, with_name=False)})
    return pd.DataFrame(rows)


def _group_blocks(runs_frame: pd.DataFrame, metric: str) -> list[tuple[str, str, list[str], dict]]:
    """Per (dataset, group): the categories every backbone of the report ran (any seed, metric measured) and what
    the others lack."""
    backbones = sorted(set(runs_frame["backbone"]))
    blocks = []
    for dataset, group, categories in group_members(runs_frame):
        shared, missing = shared_categories(runs_frame, backbones, categories, metric)
        blocks.append((dataset, group, shared, missing))
    return blocks


def _backbone_group_mean(frame: pd.DataFrame, metric: str) -> tuple[float, float, int, str]:
    """One backbone's runs of a group's shared categories: mean, std, count and seeds text. When every category has
    the same seeds: each seed's mean over the categories, then mean ± std over seeds; otherwise the mean over
    categories of each category's seed mean, without a std (seeds differ between categories)."""
    measured = frame.dropna(subset=[metric])
    if measured.empty:
        return float("nan"), float("nan"), 0, "0"
    seed_sets = {tuple(sorted(group["seed"])) for _, group in measured.groupby("category")}
    if len(seed_sets) == 1:
        mean, std, count = mean_std(measured.groupby("seed")[metric].mean())
        return mean, std, count, str(count)
    per_category = measured.groupby("category")[metric].mean()
    sizes = measured.groupby("category")["seed"].count()
    return float(per_category.mean()), float("nan"), int(len(per_category)), f"{sizes.min()}-{sizes.max()}"


def group_stats(runs_frame: pd.DataFrame) -> pd.DataFrame:
    """Long numeric table: per dataset, group (its categories.group_order, then overall), backbone and metric, the
    mean over the group's shared categories (each weighs the same, MVTec's convention) and its spread over seeds.

    A category enters when every backbone of the report ran it with the metric measured, whatever its seeds; the
    others are named in ``left_out`` and never averaged (unless no run of the dataset measured the metric: then the
    report's notes name it once, paired_metrics.unmeasured_note). ``n_values``: seeds (or categories, when their seeds
    differ) behind the mean; ``n_seeds``: "3", or "2-4" when categories have different seed counts.
    """
    rows = []
    for metric in METRICS:
        for dataset, group, shared, missing in _group_blocks(runs_frame, metric):
            members = runs_frame[(runs_frame["dataset"] == dataset) & runs_frame["category"].isin(shared)]
            # a metric no run of the dataset measured is named once in the report's notes, not per category
            measured = bool(measured_metrics(runs_frame[runs_frame["dataset"] == dataset], (metric,)))
            left_out = " | ".join(f"{c}: {why}" for c, why in missing.items()) if measured else ""
            for backbone in sorted(set(runs_frame["backbone"])):
                frame = members[members["backbone"] == backbone]
                mean, std, count, seeds = _backbone_group_mean(frame, metric)
                rows.append((dataset, group, backbone, backbone_family(backbone), metric, mean, std, count,
                             len(shared), seeds, left_out, unfinished_flags(frame)))
    columns = ["dataset", "group", "backbone", "family", "metric", "mean", "std", "n_values", "n_categories",
               "n_seeds", "left_out", "flags"]
    frame = pd.DataFrame(rows, columns=columns)
    order = {key: index for index, key in enumerate((d, g) for d, g, _ in group_members(runs_frame))}
    frame["_order"] = [order[(d, g)] for d, g in zip(frame["dataset"], frame["group"])]
    return frame.sort_values(["_order", "backbone"], kind="stable").drop(columns="_order").reset_index(drop=True)


def group_table(runs_frame: pd.DataFrame, stats: pd.DataFrame | None = None) -> pd.DataFrame:
    """Group and overall means per backbone, "mean ± std" in percent over seeds, over the shared categories only
    (``stats``: group_stats of ``runs_frame`` when already computed)."""
    stats = group_stats(runs_frame) if stats is None else stats
    rows = []
    for (dataset, group, backbone), frame in stats.groupby(["dataset", "group", "backbone"], sort=False):
        by_metric = frame.set_index("metric")
        first = by_metric.loc["image_auroc"]
        cells = {label + " (%)": format_mean_std(by_metric.at[m, "mean"], by_metric.at[m, "std"])
                 for m, label in METRICS.items()}
        left_out = _merge_left_out(frame["left_out"])
        row = {"dataset": dataset} if multi_dataset(runs_frame) else {}
        rows.append({**row, "group": f"{group} mean", "backbone": backbone, "family": backbone_family(backbone),
                     "n categories": int(first["n_categories"]), "n seeds": first["n_seeds"], **cells,
                     "left out (not averaged)": left_out, "flags": first["flags"]})
    return pd.DataFrame(rows)


def _merge_left_out(texts: pd.Series) -> str:
    """One "category: reasons" list from the per-metric ones (a category's reasons joined, each once)."""
    reasons: dict[str, list[str]] = {}
    for text in texts:
        for item in filter(None, text.split(" | ")):
            category, why = item.split(": ", 1)
            reasons.setdefault(category, [])
            reasons[category] += [r for r in why.split("; ") if r not in reasons[category]]
    return " | ".join(f"{category}: {'; '.join(why)}" for category, why in reasons.items())


def _reference_dataset(runs_frame: pd.DataFrame) -> str:
    datasets = sorted(set(runs_frame["dataset"]))
    return "mvtec" if "mvtec" in datasets else datasets[0]


def reference_table(runs_frame: pd.DataFrame, stats: pd.DataFrame | None = None) -> pd.DataFrame:
    """Our overall means per backbone, then the published RD4AD and RD++ means as labelled reference rows
    (``stats``: group_stats of ``runs_frame`` when already computed)."""
    dataset = _reference_dataset(runs_frame)
    stats = group_stats(runs_frame) if stats is None else stats
    overall = stats[(stats["dataset"] == dataset) & (stats["group"] == OVERALL)]
    selection = "; ".join(PROTOCOLS.get(s, s) for s in sorted(set(runs_frame["selection"])))
    rows = []
    for backbone, frame in overall.groupby("backbone", sort=True):
        by_metric = frame.set_index("metric")
        cells = {PAIRED_METRICS[m] + " (%)": format_mean_std(by_metric.at[m, "mean"], by_metric.at[m, "std"])
                 for m in REFERENCE_METRICS}
        note = " (synthetic data: not comparable)" if is_synthetic(runs_frame) else \
            "" if dataset == "mvtec" else f" ({dataset} data: not comparable)"
        rows.append({"row": "ours", "method": f"{backbone} ({backbone_family(backbone)})", **cells,
                     "protocol": OUR_PROTOCOL.format(selection=selection) + note,
                     "flags": frame["flags"].iloc[0]})
    for reference in REFERENCES:
        cells = {PAIRED_METRICS[m] + " (%)": f"{reference.values[m]:.1f}" for m in REFERENCE_METRICS}
        rows.append({"row": "reference (published)", "method": reference.method, **cells,
                     "protocol": reference.protocol, "flags": ""})
    return pd.DataFrame(rows)


def _arm_parts(runs_frame: pd.DataFrame) -> dict[str, tuple[str, str]]:
    """arm label -> (registered backbone, method), from the runs table's own columns (runs.load_runs)."""
    return {arm: (str(backbone), str(method)) for arm, backbone, method in
            runs_frame[["backbone", "registered_backbone", "method"]].drop_duplicates().itertuples(index=False)}


def methods_per_backbone(runs_frame: pd.DataFrame) -> dict[str, list[str]]:
    """registered backbone -> the methods it has runs of (METHODS order)."""
    found: dict[str, set[str]] = {}
    for backbone, method in _arm_parts(runs_frame).values():
        found.setdefault(backbone, set()).add(method)
    return {backbone: sorted(methods, key=list(METHODS).index) for backbone, methods in sorted(found.items())}


def method_backbone_table(runs_frame: pd.DataFrame, stats: pd.DataFrame | None = None) -> pd.DataFrame:
    """Descriptive method x backbone table: per dataset and registered backbone, each method's overall mean ± std over
    seeds (group_stats: the categories complete for every arm of the report) and the difference of the means,
    RD++ − RD4AD in points. No interval, no test. Empty when no backbone has runs of two methods (``stats``:
    group_stats of ``runs_frame`` when already computed)."""
    if not any(len(methods) > 1 for methods in methods_per_backbone(runs_frame).values()):
        return pd.DataFrame()
    parts = _arm_parts(runs_frame)
    stats = group_stats(runs_frame) if stats is None else stats
    overall = stats[stats["group"] == OVERALL]
    overall = overall.assign(_backbone=[parts[a][0] for a in overall["backbone"]],
                             _method=[parts[a][1] for a in overall["backbone"]])
    others = [m for m in METHODS if m != DEFAULT_METHOD]
    rows = []
    for (dataset, backbone), frame in overall.groupby(["dataset", "_backbone"], sort=False):
        cells: dict[str, str] = {}
        for metric, label in PAIRED_METRICS.items():
            by_method = frame[frame["metric"] == metric].set_index("_method")
            for method in METHODS:
                cells[f"{label} {method_label(method)} (%)"] = NOT_AVAILABLE if method not in by_method.index else \
                    format_mean_std(by_method.at[method, "mean"], by_method.at[method, "std"])
            for method in others:
                both = {DEFAULT_METHOD, method} <= set(by_method.index)
                change = by_method.at[method, "mean"] - by_method.at[DEFAULT_METHOD, "mean"] if both else float("nan")
                name = f"{label} {method_label(method)} − {method_label(DEFAULT_METHOD)} (points)"
                cells[name] = fmt(change, "+.2f", 100.0)
        first = frame.iloc[0]
        row = {"dataset": dataset} if multi_dataset(runs_frame) else {}
        rows.append({**row, "backbone": backbone, "family": backbone_family(backbone),
                     "n categories": int(first["n_categories"]), "n seeds": first["n_seeds"], **cells,
                     "flags": "; ".join(sorted({f for f in frame["flags"] if f}))})
    return pd.DataFrame(rows)


def efficiency_table(runs_frame: pd.DataFrame) -> pd.DataFrame:
    """Measured cost per backbone (arm): mean over its runs (seeds and categories) of metrics.json efficiency."""
    rows = []
    parts = _arm_parts(runs_frame)
    for backbone, frame in runs_frame.groupby("backbone", sort=True):
        top1 = frame["teacher_imagenet_top1"].dropna().unique()
        method = {"method": method_label(parts[backbone][1])} if len({m for _, m in parts.values()}) > 1 else {}
        row: dict[str, Any] = {"backbone": backbone, "family": backbone_family(backbone), **method,
                               "n runs": len(frame),
                               "teacher weights": distinct_values(frame, "teacher_weights"),
                               "teacher ImageNet top-1 (%)": ", ".join(f"{v:.2f}" for v in sorted(top1)) or NOT_AVAILABLE}
        for key, (label, scale, decimals) in EFFICIENCY.items():
            mean = frame[key].mean()
            row[label] = NOT_AVAILABLE if np.isnan(mean) else f"{mean * scale:.{decimals}f}"
        row["flags"] = unfinished_flags(frame)
        rows.append(row)
    return pd.DataFrame(rows)



def fmt(value: float, spec: str, scale: float = 1.0) -> str:
    return NOT_AVAILABLE if pd.isna(value) else format(value * scale, spec)


P_FLOOR = 1e-10  # below this a p-value (DeLong's or a bootstrap z's normal tail) is not meaningful to print


def format_p(value: float) -> str:
    """A p-value for reading: 3 significant digits, ``< 1e-10`` below that, ``n/a`` when not tested."""
    if pd.isna(value):
        return NOT_AVAILABLE
    return f"< {P_FLOOR:.0e}" if value < P_FLOOR else f"{value:.3g}"


def p_is(value: float) -> str:
    """"= 0.0354" or "< 1e-10", to follow "p" in a sentence."""
    text = format_p(value)
    return text if text.startswith("<") else f"= {text}"


def interval_text(low: float, high: float, scale: float = 100.0, spec: str = "+.2f") -> str:
    return NOT_AVAILABLE if pd.isna(low) else f"[{low * scale:{spec}}, {high * scale:{spec}}]"


def _answer_cells(row: Any, answer: str, adjusted: str, adjusted_p: float) -> dict[str, str]:
    """One answer's columns: its interval, its raw p (the same t statistic) and the adjusted p."""
    label = "on these categories" if answer == "fixed" else "to new categories"
    return {f"{label}: {CONFIDENCE:.0%} CI": interval_text(getattr(row, f"ci_low_{answer}"),
                                                         getattr(row, f"ci_high_{answer}")),
            f"{label}: p": format_p(getattr(row, f"p_{answer}")), f"{label}: p ({adjusted})": format_p(adjusted_p)}


def _check_cell(row: Any) -> str:
    """The signed-rank check: p, and the smallest p it can reach with these categories."""
    if pd.isna(row.p_signed_rank):
        return NOT_AVAILABLE
    return f"{format_p(row.p_signed_rank)} (min {format_p(row.min_reachable_p_signed_rank)}, {row.signed_rank_method})"


def aggregate_table(aggregate: pd.DataFrame, runs_frame: pd.DataFrame) -> pd.DataFrame:
    """The tests over categories, formatted: differences in percentage points; the exploratory ones with their
    Benjamini-Hochberg p per answer, the primary ones pointing to the primary table."""
    rows = []
    for row in aggregate.itertuples():
        pair = tuple(row.pair.split(" vs "))
        dataset = {"dataset": row.dataset} if multi_dataset(runs_frame) else {}
        exploratory = row.family == "exploratory"
        answers = {}
        for answer in ("fixed", "new"):
            cells = _answer_cells(row, answer, "BH", getattr(row, f"p_{answer}_bh"))
            if not exploratory:
                cells = {key: (value if not key.endswith("(BH)") else "primary: see above") for key, value in
                         cells.items()}
            answers.update(cells)
        rows.append({
            "pair (a − b)": f"{pair[0]} − {pair[1]}", **dataset, "group": row.group,
            "metric": PAIRED_METRICS[row.metric], "family": row.family,
            "n categories": row.n_categories, "seeds per category": row.seed_counts,
            "mean difference (points)": fmt(row.mean_diff, "+.2f", 100.0), **answers,
            "signed-rank p": _check_cell(row), "categories a > b": row.wins_a, "categories b > a": row.wins_b,
            "note": row.note, "flags": row.flags,
        })
    return pd.DataFrame(rows)


def pairwise_table(tests: pd.DataFrame) -> pd.DataFrame:
    """The per-category, per-seed paired tests of every paired metric, formatted (values in percent)."""
    rows = []
    for row in tests.itertuples():
        rows.append({
            "pair (a − b)": f"{row.backbone_a} − {row.backbone_b}", "category": row.category, "seed": row.seed,
            "metric": PAIRED_METRICS[row.metric], "test": row.test,
            "test images (defective)": f"{row.n_images} ({row.n_defective})",
            "a (%)": fmt(row.value_a, ".1f", 100.0), "b (%)": fmt(row.value_b, ".1f", 100.0),
            "difference (points)": fmt(row.difference, "+.2f", 100.0),
            f"{CONFIDENCE:.0%} bootstrap CI": interval_text(row.ci_low, row.ci_high),
            "p": format_p(row.p_value), "p (BH, exploratory)": format_p(row.p_bh), "note": row.note,
            "flags": row.flags,
        })
    return pd.DataFrame(rows)


def per_defect_table(per_defect: pd.DataFrame, runs_frame: pd.DataFrame) -> pd.DataFrame:
    """Per category, defect type and backbone: image AUROC (that type vs the good images), pixel AUROC and AUPRO on
    the good images plus that type's, mean over seeds in percent."""
    rows = []
    keys = ["dataset", "category", "defect_type", "backbone"]
    for (dataset, category, defect_type, backbone), frame in per_defect.groupby(keys, sort=True):
        by_metric = frame.set_index("metric")
        runs_of = runs_frame[(runs_frame["category"] == category) & (runs_frame["backbone"] == backbone)]
        row = {"dataset": dataset} if multi_dataset(runs_frame) else {}
        rows.append({**row, "category": category, "defect type": defect_type, "backbone": backbone,
                     "family": backbone_family(backbone), "n seeds": int(by_metric["n_seeds"].max()),
                     "image AUROC vs good (%)": fmt(by_metric.at["image_auroc", "mean"], ".1f", 100.0),
                     "pixel AUROC (%)": fmt(by_metric.at["pixel_auroc", "mean"], ".1f", 100.0),
                     "AUPRO (%)": fmt(by_metric.at["aupro", "mean"], ".1f", 100.0),
                     "flags": unfinished_flags(runs_of, with_name=False)})
    return pd.DataFrame(rows)


def _left_out(row: Any, runs_frame: pd.DataFrame) -> str:
    """The categories a primary answer left out; one phrase, not one per category, when no run measured the metric
    (the report's notes say why: paired_metrics.unmeasured_note)."""
    frame = runs_frame[runs_frame["dataset"] == row.dataset]
    if not measured_metrics(frame, (row.metric,)):
        return f"every category: no run measured {PAIRED_METRICS[row.metric]} (see the notes at the top)"
    return row.excluded or ""


def primary_table(primary: pd.DataFrame, runs_frame: pd.DataFrame) -> pd.DataFrame:
    """The primary questions, formatted: each answer's interval beside its raw p (one t statistic) and its Holm p
    (Holm within the primary family), the signed-rank check, the verdict on the claim basis and the seed counts."""
    rows = []
    for row in primary.itertuples():
        dataset = {"dataset": row.dataset} if multi_dataset(runs_frame) else {}
        rows.append({
            "pair (a − b)": question_text(row.pair), **dataset, "group": row.group,
            "metric": PAIRED_METRICS[row.metric],
            "n categories": row.n_categories, "seeds per category": row.seed_counts,
            "mean difference (points)": fmt(row.mean_diff, "+.2f", 100.0),
            **_answer_cells(row, "fixed", "Holm", row.p_fixed_holm),
            **_answer_cells(row, "new", "Holm", row.p_new_holm),
            "signed-rank p": _check_cell(row), "claim basis": row.claim_basis,
            "Holm p < 0.05 on the claim basis": "yes" if row.significant else "no",
            "left out": _left_out(row, runs_frame), "flags": row.flags,
        })
    return pd.DataFrame(rows)


def detectable_text(value: float) -> str:
    """A detectable difference in points; one beyond the metric's whole range (a difference of fractions is at most
    1) says so instead of printing a number no study could reach."""
    return "> 100: out of reach" if np.isfinite(value) and abs(value) > 1.0 else fmt(value, ".2f", 100.0)


def planning_display(planning: pd.DataFrame, runs_frame: pd.DataFrame) -> pd.DataFrame:
    """How many seeds? per primary question and answer: the spreads the plan rests on and the smallest detectable
    difference for 1, 3 and 5 seeds per category, in points; n/a where the answer cannot be computed with that
    design or a variance is unknown."""
    rows = []
    for row in planning.itertuples():
        dataset = {"dataset": row.dataset} if multi_dataset(runs_frame) else {}
        detectable = {f"detectable with {column.split('_')[1]} seed{'s' if column.endswith('s') else ''} (points)":
                      detectable_text(getattr(row, column)) for column in planning.columns
                      if column.startswith("detectable_")}
        rows.append({"pair (a − b)": question_text(row.pair), **dataset, "group": row.group,
                     "metric": PAIRED_METRICS[row.metric],
                     "answer": row.answer, "n categories": row.n_categories, "seeds per category now": row.seeds,
                     "seed sd (points)": fmt(row.seed_sd, ".2f", 100.0),
                     "category sd (points)": fmt(row.category_sd, ".2f", 100.0) if row.answer == "to new categories"
                     else "not used", **detectable,
                     "observed |mean difference| (points)": fmt(abs(row.observed_diff), ".2f", 100.0),
                     "note": row.note if isinstance(row.note, str) else "",
                     "flags": unfinished_flags(runs_frame[runs_frame["backbone"].isin(label_arms(row.pair))
                                                          & (runs_frame["dataset"] == row.dataset)])})
    return pd.DataFrame(rows)


def count_text(number: int, noun: str) -> str:
    """"1 category", "2 categories", "3 seeds"."""
    plural = noun[:-1] + "ies" if noun.endswith("y") else noun + "s"
    return f"{number} {noun if number == 1 else plural}"



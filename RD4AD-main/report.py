"""The fair-comparison report: tables, paired tests and markdown, built only from results files.

``main.py compare`` and ``RD_Tester.ipynb`` call the same functions (figures live in plots.py, the paired
statistics in comparison.py). Everything is read from the run directories of runs.py; the only numbers
typed in here are the published RD4AD and RD++ results below, cited and shown as references, never
averaged with ours. Every sentence that states a result (a direction, "significant") comes from one of the
templates of ``aggregate_sentence`` / ``category_test_sentence`` and is checked against the tables by
tests/test_report.py; sentences that only define words are listed in ``DEFINITIONS``.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

import runs
from comparison import (ALPHA, CONFIDENCE, N_BOOT, NOT_AVAILABLE, OVERALL, PAIRED_METRICS, POWER, SEEDS_PLANNED,
                        Comparison, backbone_family, compare_runs, complete_categories, epoch_text, group_members,
                        parse_pairs, read_pairs_config, resolve_pairs, run_name, unfinished_flags)
from documents import generated_markers, markdown_table, replace_marked_block
from errors import RDError
from runs import EFFICIENCY, METRICS, load_runs, synthetic_saturation_note, untested_runs
from significance import MAX_EDGES
from why import WhyPart, render_why, why_parts, why_tables

if TYPE_CHECKING:
    from plots import FigureItem

__all__ = ["BEGIN_MARKER", "DEFINITIONS", "END_MARKER", "REFERENCES", "Reference", "Report", "add_arguments",
           "aggregate_sentence", "aggregate_table", "build_report", "category_stats", "category_table",
           "category_test_sentence", "conclusions_markdown", "efficiency_table", "format_p", "group_stats",
           "group_table",
           "headline_text", "pairwise_table", "per_defect_table", "power_table", "prepare_portfolio", "protocol_text",
           "provenance", "reference_table", "render_report", "replace_generated_block", "report_notes", "run",
           "synthetic_note",
           "teacher_warning", "tests_method", "untested_note", "write_report"]

BEGIN_MARKER, END_MARKER = generated_markers("compare")
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
OUR_PROTOCOL = ("this report: training set minus the 10 % validation hold-out; {selection}; standard AUPRO "
                "(MVTec, FPR up to 0.3)")

# Sentences that use a claim word only to define it; everything else with such a word is a checked claim.
DEFINITIONS = (
    f"A difference is called significant only when its Holm-adjusted p is below {ALPHA}.",
    "A p-value without the word significant is not a finding.",
)


# ----------------------------------------------------------------------------------------------
# Provenance and warnings
# ----------------------------------------------------------------------------------------------


def _values(runs_frame: pd.DataFrame, column: str) -> str:
    """Distinct values of a column, flagged when the runs disagree."""
    values = sorted(set(runs_frame[column].astype(str)))
    text = ", ".join(values)
    return text if len(values) == 1 else f"{text} (differs between runs)"


def _values_list(column: pd.Series) -> str:
    return ", ".join(sorted(set(column.astype(str))))


def protocol_text(runs_frame: pd.DataFrame) -> str:
    """Which model-selection protocol produced these runs; a mix is flagged."""
    counts = runs_frame["selection"].value_counts().sort_index()
    if len(counts) == 1:
        selection = counts.index[0]
        return f"model: {PROTOCOLS.get(selection, selection)}"
    parts = ", ".join(f"{PROTOCOLS.get(name, name)} in {count} runs" for name, count in counts.items())
    return f"model: **MIXED PROTOCOLS** ({parts}): these runs are not comparable as one study"


def _epochs_text(runs_frame: pd.DataFrame) -> str:
    unfinished = runs_frame[runs_frame["unfinished"]]
    text = f"epochs {_values(runs_frame, 'epochs')} requested"
    if unfinished.empty:
        return text
    return text + f"; **{len(unfinished)} run(s) UNFINISHED** (checkpoint short of the requested epochs: " + \
        ", ".join(run_name(row) + f" at {epoch_text(row['trained_epochs'])}/{epoch_text(row['requested_epochs'])}"
                  for _, row in unfinished.iterrows()) + ")"


def provenance(runs_frame: pd.DataFrame) -> str:
    """What produced a table: data, categories, image size, epochs, protocol, seeds, teachers, hardware."""
    teachers = "; ".join(
        f"{backbone}: {_values(group, 'teacher_weights')}" for backbone, group in runs_frame.groupby("backbone")
    )
    seeds = ", ".join(str(seed) for seed in sorted(set(runs_frame["seed"])))
    data = _values(runs_frame, "data_root")
    if is_synthetic(runs_frame):
        data += " (SYNTHETIC data, not MVTec AD)"
    return (
        f"Provenance: data {data} (format {_values(runs_frame, 'dataset')}); categories "
        f"{_values_list(runs_frame['category'])}; image size {_values(runs_frame, 'image_size')} px; "
        f"{_epochs_text(runs_frame)}; {protocol_text(runs_frame)}; seeds {seeds}; teacher weights {teachers}; "
        f"hardware {_values(runs_frame, 'hardware')}; {len(runs_frame)} runs."
    )


def is_synthetic(runs_frame: pd.DataFrame) -> bool:
    """True when any category is a generated one (``synth_*``): the published numbers do not apply."""
    return bool(runs_frame["category"].str.startswith("synth").any())


def teacher_warning(runs_frame: pd.DataFrame) -> str | None:
    """A loud warning when any run used a random (non-pretrained) teacher, else None."""
    random_runs = runs_frame[runs_frame["teacher_weights"] == "random"]
    if random_runs.empty:
        return None
    return (
        f"**WARNING: RANDOM TEACHERS.** {len(random_runs)} of {len(runs_frame)} runs "
        f"(backbones: {_values_list(random_runs['backbone'])}) used randomly initialised, NOT pretrained "
        "teachers (config.json teacher_weights = \"random\"). Their numbers only show that the pipeline "
        "runs; they say nothing about Reverse Distillation with ImageNet teachers."
    )


def untested_note(report: Report) -> str | None:
    """A note naming the runs left out because they have no metrics.json, else None."""
    missing = untested_runs(report.results)
    if not missing:
        return None
    return (f"**Not in this report:** {len(missing)} trained run(s) without metrics.json "
            f"({', '.join(missing)}); run `main.py test` to include them.")


def not_compared_note(report: Report) -> str | None:
    """A note naming evaluated backbones that no pair names (they are left out of every table)."""
    if not report.left_out:
        return None
    return (f"**Not in this comparison:** {', '.join(report.left_out)} (evaluated, but in no compared pair); name "
            "them with `--pair a,b` to include them.")


def unfinished_warning(runs_frame: pd.DataFrame) -> str | None:
    """A loud note when a run's checkpoint is short of its requested epochs."""
    unfinished = runs_frame[runs_frame["unfinished"]]
    if unfinished.empty:
        return None
    return (f"**WARNING: UNFINISHED RUNS.** {len(unfinished)} run(s) were evaluated from a checkpoint short of the "
            f"requested epochs ({', '.join(run_name(row) for _, row in unfinished.iterrows())}); every table they "
            "enter flags them in its last column.")


def synthetic_note(runs_frame: pd.DataFrame) -> str | None:
    """A note when the results come from synthetic data, else None."""
    if not is_synthetic(runs_frame):
        return None
    return (
        "**Synthetic data.** These results come from generated categories (synth_*), not MVTec AD; "
        "the published RD4AD numbers are shown for reference and are not comparable."
    )


# ----------------------------------------------------------------------------------------------
# Metric tables
# ----------------------------------------------------------------------------------------------


def _mean_std(values: pd.Series) -> tuple[float, float, int]:
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


def _multi_dataset(runs_frame: pd.DataFrame) -> bool:
    return runs_frame["dataset"].nunique() > 1


def category_stats(runs_frame: pd.DataFrame) -> pd.DataFrame:
    """Long numeric table: per category, backbone and metric, mean/std over seeds and n seeds."""
    rows = []
    for (dataset, category, kind, backbone), group in runs_frame.groupby(["dataset", "category", "kind", "backbone"],
                                                                          sort=True):
        for metric in METRICS:
            mean, std, count = _mean_std(group[metric])
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
            mean, std, _ = _mean_std(group[metric])
            cells[label + " (%)"] = format_mean_std(mean, std)
        row = {"dataset": dataset} if _multi_dataset(runs_frame) else {}
        rows.append({**row, "category": category, "group": kind, "backbone": backbone,
                     "family": backbone_family(backbone), "n seeds": len(group), **cells,
                     "flags": unfinished_flags(group, with_name=False)})
    return pd.DataFrame(rows)


def _group_blocks(runs_frame: pd.DataFrame, metric: str) -> list[tuple[str, str, list[str], list[int], dict]]:
    """Per (dataset, group): the categories complete for every backbone of the report, the seeds, what is missing."""
    backbones = sorted(set(runs_frame["backbone"]))
    blocks = []
    for dataset, group, categories in group_members(runs_frame):
        complete, seeds, missing = complete_categories(runs_frame, backbones, categories, metric)
        blocks.append((dataset, group, complete, seeds, missing))
    return blocks


def group_stats(runs_frame: pd.DataFrame) -> pd.DataFrame:
    """Long numeric table: per dataset, group (its categories.group_order, then overall), backbone and metric,
    the mean over the group's complete categories for each seed, then mean/std of those over seeds.

    A category enters only when every backbone of the report has it for every seed with the metric measured;
    the others are named in ``left_out`` and never averaged. Each category weighs the same (MVTec's convention).
    """
    rows = []
    for metric in METRICS:
        for dataset, group, complete, seeds, missing in _group_blocks(runs_frame, metric):
            members = runs_frame[(runs_frame["dataset"] == dataset) & runs_frame["category"].isin(complete)]
            left_out = " | ".join(f"{c}: {why}" for c, why in missing.items())
            for backbone in sorted(set(runs_frame["backbone"])):
                frame = members[members["backbone"] == backbone]
                per_seed = frame.groupby("seed")[metric].mean() if complete else pd.Series(dtype=float)
                mean, std, count = _mean_std(per_seed)
                rows.append((dataset, group, backbone, backbone_family(backbone), metric, mean, std, count,
                             len(complete), len(seeds), left_out, unfinished_flags(frame)))
    columns = ["dataset", "group", "backbone", "family", "metric", "mean", "std", "n_values", "n_categories",
               "n_seeds", "left_out", "flags"]
    frame = pd.DataFrame(rows, columns=columns)
    order = {key: index for index, key in enumerate((d, g) for d, g, _ in group_members(runs_frame))}
    frame["_order"] = [order[(d, g)] for d, g in zip(frame["dataset"], frame["group"])]
    return frame.sort_values(["_order", "backbone"], kind="stable").drop(columns="_order").reset_index(drop=True)


def group_table(runs_frame: pd.DataFrame) -> pd.DataFrame:
    """Group and overall means per backbone, "mean ± std" in percent over seeds, over complete categories only."""
    stats = group_stats(runs_frame)
    rows = []
    for (dataset, group, backbone), frame in stats.groupby(["dataset", "group", "backbone"], sort=False):
        by_metric = frame.set_index("metric")
        first = by_metric.loc["image_auroc"]
        cells = {label + " (%)": format_mean_std(by_metric.at[m, "mean"], by_metric.at[m, "std"])
                 for m, label in METRICS.items()}
        left_out = _merge_left_out(frame["left_out"])
        row = {"dataset": dataset} if _multi_dataset(runs_frame) else {}
        rows.append({**row, "group": f"{group} mean", "backbone": backbone, "family": backbone_family(backbone),
                     "n categories": int(first["n_categories"]), "n seeds": int(first["n_seeds"]), **cells,
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


def reference_table(runs_frame: pd.DataFrame) -> pd.DataFrame:
    """Our overall means per backbone, then the published RD4AD and RD++ means as labelled reference rows."""
    dataset = _reference_dataset(runs_frame)
    stats = group_stats(runs_frame)
    overall = stats[(stats["dataset"] == dataset) & (stats["group"] == OVERALL)]
    selection = "; ".join(PROTOCOLS.get(s, s) for s in sorted(set(runs_frame["selection"])))
    rows = []
    for backbone, frame in overall.groupby("backbone", sort=True):
        by_metric = frame.set_index("metric")
        cells = {PAIRED_METRICS[m] + " (%)": format_mean_std(by_metric.at[m, "mean"], by_metric.at[m, "std"])
                 for m in PAIRED_METRICS}
        note = " (synthetic data: not comparable)" if is_synthetic(runs_frame) else \
            "" if dataset == "mvtec" else f" ({dataset} data: not comparable)"
        rows.append({"row": "ours", "method": f"{backbone} ({backbone_family(backbone)})", **cells,
                     "protocol": OUR_PROTOCOL.format(selection=selection) + note,
                     "flags": frame["flags"].iloc[0]})
    for reference in REFERENCES:
        cells = {PAIRED_METRICS[m] + " (%)": f"{reference.values[m]:.1f}" for m in PAIRED_METRICS}
        rows.append({"row": "reference (published)", "method": reference.method, **cells,
                     "protocol": reference.protocol, "flags": ""})
    return pd.DataFrame(rows)


def efficiency_table(runs_frame: pd.DataFrame) -> pd.DataFrame:
    """Measured cost per backbone: mean over its runs (seeds and categories) of metrics.json efficiency."""
    rows = []
    for backbone, frame in runs_frame.groupby("backbone", sort=True):
        top1 = frame["teacher_imagenet_top1"].dropna().unique()
        row: dict[str, Any] = {"backbone": backbone, "family": backbone_family(backbone), "n runs": len(frame),
                               "teacher weights": _values(frame, "teacher_weights"),
                               "teacher ImageNet top-1 (%)": ", ".join(f"{v:.2f}" for v in sorted(top1)) or NOT_AVAILABLE}
        for key, (label, scale, decimals) in EFFICIENCY.items():
            mean = frame[key].mean()
            row[label] = NOT_AVAILABLE if np.isnan(mean) else f"{mean * scale:.{decimals}f}"
        row["flags"] = unfinished_flags(frame)
        rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------
# Paired tests: formatting and sentences
# ----------------------------------------------------------------------------------------------


def _fmt(value: float, spec: str, scale: float = 1.0) -> str:
    return NOT_AVAILABLE if pd.isna(value) else format(value * scale, spec)


P_FLOOR = 1e-10  # below this a p-value (DeLong's or a bootstrap z's normal tail) is not meaningful to print


def format_p(value: float) -> str:
    """A p-value for reading: 3 significant digits, ``< 1e-10`` below that, ``n/a`` when not tested."""
    if pd.isna(value):
        return NOT_AVAILABLE
    return f"< {P_FLOOR:.0e}" if value < P_FLOOR else f"{value:.3g}"


def _p_is(value: float) -> str:
    """"= 0.0354" or "< 1e-10", to follow "p" in a sentence."""
    text = format_p(value)
    return text if text.startswith("<") else f"= {text}"


def _interval(low: float, high: float, scale: float = 100.0, spec: str = "+.2f") -> str:
    return NOT_AVAILABLE if pd.isna(low) else f"[{low * scale:{spec}}, {high * scale:{spec}}]"


def aggregate_table(report: Report) -> pd.DataFrame:
    """The tests over categories, formatted: differences in percentage points."""
    rows = []
    for row in report.comparison.aggregate.itertuples():
        pair = tuple(row.pair.split(" vs "))
        dataset = {"dataset": row.dataset} if _multi_dataset(report.runs) else {}
        rows.append({
            "pair (a − b)": f"{pair[0]} − {pair[1]}", **dataset, "group": row.group,
            "metric": PAIRED_METRICS[row.metric],
            "n categories": row.n_categories, "n seeds": row.n_seeds,
            "mean difference (points)": _fmt(row.mean_diff, "+.2f", 100.0),
            f"{CONFIDENCE:.0%} CI (hierarchical bootstrap)": _interval(row.ci_low, row.ci_high),
            "Wilcoxon p": format_p(row.p_wilcoxon), "p (Holm)": format_p(row.p_holm),
            "categories a > b": row.wins_a, "categories b > a": row.wins_b, "note": row.note,
            "flags": row.flags,
        })
    return pd.DataFrame(rows)


def pairwise_table(report: Report) -> pd.DataFrame:
    """The per-category, per-seed paired tests of all three metrics, formatted (values in percent)."""
    rows = []
    for row in report.comparison.tests.itertuples():
        rows.append({
            "pair (a − b)": f"{row.backbone_a} − {row.backbone_b}", "category": row.category, "seed": row.seed,
            "metric": PAIRED_METRICS[row.metric], "test": row.test,
            "test images (defective)": f"{row.n_images} ({row.n_defective})",
            "a (%)": _fmt(row.value_a, ".1f", 100.0), "b (%)": _fmt(row.value_b, ".1f", 100.0),
            "difference (points)": _fmt(row.difference, "+.2f", 100.0),
            f"{CONFIDENCE:.0%} bootstrap CI": _interval(row.ci_low, row.ci_high),
            "p": format_p(row.p_value), "p (Holm)": format_p(row.p_holm), "note": row.note,
            "flags": row.flags,
        })
    return pd.DataFrame(rows)


def per_defect_table(report: Report) -> pd.DataFrame:
    """Per category, defect type and backbone: image AUROC (that type vs the good images), pixel AUROC and AUPRO on
    the good images plus that type's, mean over seeds in percent."""
    stats = report.comparison.per_defect
    rows = []
    keys = ["dataset", "category", "defect_type", "backbone"]
    for (dataset, category, defect_type, backbone), frame in stats.groupby(keys, sort=True):
        by_metric = frame.set_index("metric")
        runs_of = report.runs[(report.runs["category"] == category) & (report.runs["backbone"] == backbone)]
        row = {"dataset": dataset} if _multi_dataset(report.runs) else {}
        rows.append({**row, "category": category, "defect type": defect_type, "backbone": backbone,
                     "family": backbone_family(backbone), "n seeds": int(by_metric["n_seeds"].max()),
                     "image AUROC vs good (%)": _fmt(by_metric.at["image_auroc", "mean"], ".1f", 100.0),
                     "pixel AUROC (%)": _fmt(by_metric.at["pixel_auroc", "mean"], ".1f", 100.0),
                     "AUPRO (%)": _fmt(by_metric.at["aupro", "mean"], ".1f", 100.0),
                     "flags": unfinished_flags(runs_of, with_name=False)})
    return pd.DataFrame(rows)


def power_table(report: Report) -> pd.DataFrame:
    """How many seeds? the observed seed std and the smallest detectable overall mean difference, in points."""
    observed = report.comparison.aggregate.query("group == @OVERALL").set_index(["pair", "dataset", "metric"])
    rows = []
    for row in report.comparison.power.itertuples():
        pair = row.pair.split(" vs ")
        mean_diff = observed.at[(row.pair, row.dataset, row.metric), "mean_diff"]
        dataset = {"dataset": row.dataset} if _multi_dataset(report.runs) else {}
        rows.append({"pair (a − b)": f"{pair[0]} − {pair[1]}", **dataset, "metric": PAIRED_METRICS[row.metric],
                     "n categories": row.n_categories, "n seeds": row.n_seeds,
                     "seed std a (points)": _fmt(row.seed_std_a, ".2f", 100.0),
                     "seed std b (points)": _fmt(row.seed_std_b, ".2f", 100.0),
                     f"detectable with {_count(row.n_seeds, 'seed')} (points)": _fmt(row.detectable_now, ".2f", 100.0),
                     f"detectable with {SEEDS_PLANNED} seeds (points)": _fmt(row.detectable_planned, ".2f", 100.0),
                     "observed |mean difference| (points)": _fmt(abs(mean_diff), ".2f", 100.0),
                     "flags": unfinished_flags(report.runs[report.runs["backbone"].isin(pair)
                                                           & (report.runs["dataset"] == row.dataset)])})
    return pd.DataFrame(rows)


def _group_label(row: Any, multi: bool) -> str:
    return f"{row.dataset} {row.group}" if multi else row.group


def aggregate_sentence(row: Any, multi_dataset: bool = False) -> str:
    """What one test over categories says, from aggregate_tests.csv only (checked by the claims test)."""
    a, b = row.pair.split(" vs ")
    head = f"**{_group_label(row, multi_dataset)}**, {PAIRED_METRICS[row.metric]}, {a} − {b}"
    if pd.isna(row.mean_diff):
        return f"{head}: not averaged ({row.note})."
    text = (f"{head}: mean difference {row.mean_diff * 100:+.2f} points over {_count(row.n_categories, 'category')} "
            f"× {_count(row.n_seeds, 'seed')} ({CONFIDENCE:.0%} CI {_interval(row.ci_low, row.ci_high)}); ")
    if pd.isna(row.p_holm):
        text += "not tested"
    else:
        text += f"Wilcoxon p {_p_is(row.p_wilcoxon)}, Holm-adjusted p {_p_is(row.p_holm)}: "
        if row.p_holm < ALPHA:
            winner = a if row.mean_diff > 0 else b
            text += f"significant after Holm correction ({winner} higher)"
        else:
            text += "not significant after Holm correction"
    ties = row.n_categories - row.wins_a - row.wins_b
    text += f"; {a} higher in {row.wins_a}, {b} higher in {row.wins_b}"
    total = _count(row.n_categories, "category")
    text += f", tied in {ties} of {total}." if ties else f" of {total}."
    return text


def _count(number: int, noun: str) -> str:
    """"1 category", "2 categories", "3 seeds"."""
    plural = noun[:-1] + "ies" if noun.endswith("y") else noun + "s"
    return f"{number} {noun if number == 1 else plural}"


def category_test_sentence(row: Any) -> str:
    """A per-category test significant after Holm correction, from pairwise_tests_numeric.csv."""
    winner = row.backbone_a if row.difference > 0 else row.backbone_b
    return (f"**{row.category}**, seed {row.seed}, {PAIRED_METRICS[row.metric]}, {row.backbone_a} − "
            f"{row.backbone_b}: {row.difference * 100:+.2f} points ({row.test}, Holm-adjusted p "
            f"{_p_is(row.p_holm)}): significant after Holm correction ({winner} higher).")


def _tie_lines(tests: pd.DataFrame) -> list[str]:
    """The per-category tests skipped for a tie (both perfect, or identical), each with its reason."""
    ties = tests[tests["note"].str.startswith(("tie at the ceiling", "identical"))]
    return [f"**{row.category}**, seed {row.seed}, {PAIRED_METRICS[row.metric]}, {row.backbone_a} − "
            f"{row.backbone_b}: not tested, {row.note}." for row in ties.itertuples()]


def conclusions_markdown(report: Report) -> str:
    """The conclusions: each aggregate test, then the per-category tests that survive Holm, then the ties."""
    comparison = report.comparison
    if comparison.tests.empty and comparison.aggregate["mean_diff"].isna().all():
        return NOTHING_TO_COMPARE
    multi = _multi_dataset(report.runs)
    lines = [f"- {aggregate_sentence(row, multi)}" for row in comparison.aggregate.itertuples()]
    tested = comparison.tests.dropna(subset=["p_holm"])
    significant = tested[tested["p_holm"] < ALPHA]
    out = ["Over categories (the headline):", "\n".join(lines),
           f"Per category and seed: {len(significant)} of {len(tested)} tests are significant after Holm correction "
           f"(Holm over all {comparison.family_size} tests of this report)."]
    if not significant.empty:
        out.append("\n".join(f"- {category_test_sentence(row)}" for row in significant.itertuples()))
    ties = _tie_lines(comparison.tests)
    if ties:
        out += ["Ties (skipped, with the reason):", "\n".join(f"- {line}" for line in ties)]
    return "\n\n".join(out)


# ----------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------


@dataclass
class Report:
    """Everything a report shows, computed once; the notebook displays it, compare writes it."""

    results: str
    runs: pd.DataFrame  # the runs of the compared backbones
    pairs: list[tuple[str, str]]
    comparison: Comparison
    n_boot: int
    left_out: list[str] = field(default_factory=list)  # evaluated backbones in no pair
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    why: list[WhyPart] = field(default_factory=list)  # the Why section's instruments (why.py)

    @property
    def tests(self) -> pd.DataFrame:
        return self.comparison.tests


def _pairs_from(pairs: Any, config: str | os.PathLike | None) -> list[tuple[str, str]] | None:
    """--pair wins over the config file's "pairs"; neither: None (the default rule)."""
    given = parse_pairs(pairs)
    if given:
        return given
    return read_pairs_config(config) if config else None


def build_report(results: str | os.PathLike, pairs: Any = None, n_boot: int = N_BOOT,
                 config: str | os.PathLike | None = None) -> Report:
    """Load the runs under ``results`` and compute every table and test of the pairs (``--pair`` values: "a,b",
    ["a", "b"] or a list of pairs; else the config file's "pairs"; else the default rule of resolve_pairs)."""
    all_runs = load_runs(results)
    chosen = resolve_pairs(all_runs, _pairs_from(pairs, config))
    compared = {name for pair in chosen for name in pair}
    runs_frame = all_runs[all_runs["backbone"].isin(compared)].reset_index(drop=True)
    left_out = sorted(set(all_runs["backbone"]) - compared)
    comparison = compare_runs(runs_frame, chosen, n_boot, str(results))
    report = Report(str(results), runs_frame, chosen, comparison, n_boot, left_out)
    report.tables = {
        "aggregate_tests_table": aggregate_table(report),
        "category_metrics": category_table(runs_frame),
        "group_means": group_table(runs_frame),
        "reference": reference_table(runs_frame),
        "pairwise_tests": pairwise_table(report),
        "per_defect": per_defect_table(report),
        "seed_power": power_table(report),
        "efficiency": efficiency_table(runs_frame),
    }
    report.why = why_parts(runs_frame, results, chosen)
    return report


NOTHING_TO_COMPARE = "Nothing to compare: no category has runs of both backbones of a pair."


def _binning_note(report: Report) -> str:
    """How close the binned pixel statistics come to each run's metrics.json values (measured, not assumed)."""
    errors = [r.binning_error for r in report.comparison.resamples.values() if r.binning_error]
    if not errors:
        return "No run has maps.npz with masks: the pixel metrics have no intervals."
    exact = sum(r.exact for r in report.comparison.resamples.values() if r.binning_error)
    worst = {key: max(e[key] for e in errors) for key in ("pixel_auroc", "aupro")}
    return (f"Pixel metrics are resampled from per-image histograms of maps.npz (float16) on a grid of up to "
            f"{MAX_EDGES} thresholds per run ({exact} of {len(errors)} runs have fewer distinct normal scores, so "
            f"their grid is exact); on all images they reproduce each run's metrics.json within "
            f"{worst['pixel_auroc']:.1e} (pixel AUROC) and {worst['aupro']:.1e} (AUPRO), the largest difference "
            "over the runs.")


def tests_method(report: Report) -> str:
    """How the per-category tests were done (pairing, tests, seeds)."""
    return (
        "For each category and each seed run by both backbones, the runs' scores.csv files (and maps.npz) are joined "
        "on the image path, so both values come from exactly the same test images. Difference = metric(a) − "
        f"metric(b). Image AUROC: DeLong's test for correlated ROC curves (two-sided). Pixel AUROC and AUPRO: a "
        f"paired bootstrap over test images with their masks ({report.n_boot} resamples, class counts kept, the same "
        "draws for both backbones), p from its standard error (normal approximation). Every interval is the "
        f"bootstrap's {CONFIDENCE:.0%} percentile interval. A category where both models are perfect, or identical on "
        "every resample, is not tested and says so. Seeds are tested one by one: each is one trained model per "
        "backbone. " + _binning_note(report) + f" Pixel metrics are computed at the training image size "
        f"({', '.join(sorted(set(report.runs['image_size'].astype(str))))} px): maps and masks at that size, the masks "
        "resized from the original images (700-1024 px in MVTec AD), so thin defects can shrink or vanish; the same "
        "for every backbone, but not MVTec AD's official full resolution (docs/reproduction.md, section 4)."
    )


def headline_text(report: Report) -> str:
    """How the tests over categories were done."""
    return (
        "Difference = metric(a) − metric(b) in percentage points, per category averaged over seeds, then the mean "
        "over the group's complete categories (those where both backbones have every seed; the others are named, "
        f"never averaged). Interval: a hierarchical paired bootstrap ({report.n_boot} resamples): the seeds are "
        "resampled, then within each category the test images with their masks, the same draws for both backbones "
        "and every seed. p: Wilcoxon's signed-rank test over categories on the seed-averaged differences (scipy, "
        "two-sided; tied categories left out), with the number of categories in favour of each side. Holm's "
        f"correction runs over all {report.comparison.family_size} tests of this report (every pair, group, "
        "category, seed and metric). " + " ".join(DEFINITIONS)
    )


def _power_text(report: Report) -> str:
    return (
        "From the seed-to-seed standard deviation observed here (root mean of the per-category sample variances "
        "over seeds, complete categories only): the smallest difference in the overall mean that a two-sided z-test "
        f"at alpha = {ALPHA} detects with {POWER:.0%} power, with the seeds there are and with {SEEDS_PLANNED} seeds. "
        "Seed noise is the only noise in this calculation and test-set sampling adds to it, so a study with these "
        "seeds needs at least these differences; with a single seed the std cannot be estimated (n/a)."
    )


def _pair_runs(report: Report) -> pd.DataFrame:
    backbones = {name for pair in report.pairs for name in pair}
    return report.runs[report.runs["backbone"].isin(backbones)]


def report_notes(report: Report) -> list[str]:
    """The warnings and notes that head the report (random teachers, unfinished runs, synthetic data, ...)."""
    runs_frame = report.runs
    return [note for note in (teacher_warning(runs_frame), unfinished_warning(runs_frame), synthetic_note(runs_frame),
                              untested_note(report), not_compared_note(report),
                              synthetic_saturation_note(runs_frame)) if note]


def render_body(report: Report, figures: list[FigureItem], level: int, link_prefix: str) -> str:
    """The report's markdown below its title; ``level`` is the section heading level."""
    h, hh = "#" * level, "#" * (level + 1)
    runs_frame = report.runs
    prov = f"_{provenance(runs_frame)}_"
    pairs = ", ".join(f"{a} − {b}" for a, b in report.pairs)
    forest = [item for item in figures if item.kind == "forest"]
    out = report_notes(report) + [
        f"Generated by `main.py compare` from {len(runs_frame)} runs under `{report.results}`; do not edit by hand. "
        f"Compared pairs (a − b): {pairs}.",
        f"{h} Headline: paired differences over categories",
        headline_text(report),
        *_figure_markdown(forest, None, link_prefix),
        markdown_table(report.tables["aggregate_tests_table"]), prov,
        f"{hh} Conclusions",
        conclusions_markdown(report),
        f"{h} How many seeds?",
        _power_text(report),
        markdown_table(report.tables["seed_power"]), prov,
        f"{h} Metrics per category and backbone",
        "Percent, mean ± std over seeds (sample std; a single seed shows no std); n/a = not measured (no "
        "ground-truth masks). F1-max picks its threshold on the test labels, so it is optimistic. Accuracy, "
        "precision, recall and F1 use the threshold from validation normals only "
        f"(rule: {_threshold_rules(runs_frame)}).",
        markdown_table(report.tables["category_metrics"]), prov,
        f"{h} Group and overall means",
        "Per dataset, the groups of categories.group_order() and then overall: each seed's mean over the group's "
        "complete categories (every backbone has every seed, metric measured; every category weighs the same), then "
        "mean ± std over seeds. Categories that are not complete are named in the last columns and not averaged.",
        markdown_table(report.tables["group_means"]), prov,
        f"{h} Overall means beside published references",
        "Reference rows are published MVTec AD 15-category means with their own protocols; they are never averaged "
        "with our results.",
        markdown_table(report.tables["reference"]), prov,
        f"{h} Per-category paired tests of all three metrics",
    ]
    if report.comparison.tests.empty:
        out.append(NOTHING_TO_COMPARE)
    else:
        out += [tests_method(report), markdown_table(report.tables["pairwise_tests"]),
                f"_{provenance(_pair_runs(report))}_"]
    out += [
        f"{h} Per defect type",
        "Image AUROC of each defect type's images against the good images; pixel AUROC and AUPRO on the good images "
        "plus that type's images (from the same binned statistics as the intervals); mean over seeds, percent.",
        markdown_table(report.tables["per_defect"]) if not report.tables["per_defect"].empty else
        "No defect types: the compared runs have no defective test image.", prov,
        f"{h} Efficiency",
        "As measured by the runs (metrics.json efficiency), mean over each backbone's runs.",
        markdown_table(report.tables["efficiency"]), prov,
    ]
    if report.why:
        out.append(render_why(report.why, level, lambda items: _figure_markdown(items, None, link_prefix)))
    out += [
        f"{h} Figures",
        *_figure_markdown([item for item in figures if item.kind != "forest"], hh, link_prefix),
    ]
    return "\n\n".join(out) + "\n"


def _threshold_rules(runs_frame: pd.DataFrame) -> str:
    return "; ".join(sorted(set(runs_frame["threshold_rule"])))


def _figure_markdown(figures: list[FigureItem], heading: str | None, link_prefix: str) -> list[str]:
    out, section = [], None
    for item in figures:
        if heading is not None and item.section != section:
            section = item.section
            out.append(f"{heading} {section}")
        if item.figure is None:
            out.append(f"_{item.caption}_")
        else:
            out.append(f"![{item.caption}]({link_prefix}figures/{item.name}.png)\n\n{item.caption}")
    return out


def render_report(report: Report, figures: list[FigureItem]) -> str:
    """report.md: title plus body, figure links relative to the report's folder."""
    return "# RD4AD fair comparison of backbones\n\n" + render_body(report, figures, 2, "")


def _numeric_tables(report: Report) -> dict[str, pd.DataFrame]:
    comparison = report.comparison
    return {
        "runs": report.runs,
        "aggregate_tests": comparison.aggregate,
        "category_stats": category_stats(report.runs),
        "group_stats": group_stats(report.runs),
        "pairwise_tests_numeric": comparison.tests,
        "category_intervals": comparison.intervals,
        "seed_power_numeric": comparison.power,
        "per_defect_numeric": comparison.per_defect,
    }


def _table_texts(report: Report) -> dict[str, str]:
    """Each displayed table and each numeric one as CSV text (written only after everything else is ready)."""
    return {name: frame.to_csv(index=False, float_format="%.10g", lineterminator="\n")
            for name, frame in {**report.tables, **_numeric_tables(report), **why_tables(report.why)}.items()}


def replace_generated_block(text: str, block: str, path: Path) -> str:
    """``text`` with the part between the markers replaced by ``block``; all else unchanged."""
    return replace_marked_block(text, block, BEGIN_MARKER, END_MARKER, path)


def _read_portfolio(path: str | os.PathLike) -> str:
    path = Path(path)
    if not path.is_file():
        raise RDError(f"--portfolio {path}: file not found (expected a markdown document with the lines "
                      f"{BEGIN_MARKER} and {END_MARKER})")
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError) as error:
        raise RDError(f"--portfolio {path}: cannot be read as UTF-8 text ({error})") from None


def prepare_portfolio(path: str | os.PathLike, block: str = "") -> str:
    """The portfolio's text with its generated block replaced; checks the file and its markers (call it before
    writing anything: a bad portfolio must not leave half a report behind)."""
    return replace_generated_block(_read_portfolio(path), block, Path(path))


def _portfolio_block(report: Report, figures: list[FigureItem], portfolio: Path, out: Path) -> str:
    prefix = Path(os.path.relpath(out.resolve(), portfolio.resolve().parent)).as_posix() + "/"
    return render_body(report, figures, 3, prefix)


def write_report(report: Report, out: str | os.PathLike, figures: list[FigureItem] | None = None,
                 portfolio: str | os.PathLike | None = None) -> Path:
    """Write report.md, figures/*.png and tables/*.csv under ``out`` (and the portfolio's generated block).

    Everything is computed and checked first (figures drawn, markdown rendered, the portfolio's markers found);
    only then is anything written, so a bad input leaves no half-written report.
    """
    import plots  # matplotlib is needed only here

    out = Path(out)
    if figures is None:
        figures = plots.make_figures(report.runs, report.comparison, report.results)
    text = render_report(report, figures)
    tables = _table_texts(report)
    updated = None
    if portfolio is not None:
        updated = prepare_portfolio(portfolio, _portfolio_block(report, figures, Path(portfolio), out))
    plots.save_figures(figures + [item for part in report.why for item in part.figures], out / "figures")
    for name, csv_text in tables.items():
        runs.atomic_write_text(out / "tables" / f"{name}.csv", csv_text)
    runs.atomic_write_text(out / "report.md", text)
    if updated is not None:
        runs.atomic_write(portfolio, lambda tmp: tmp.write_bytes(updated.encode("utf-8")))
    return out / "report.md"


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    parser.add_argument("--results", default="results",
                        help="results folder holding <backbone>/<category>/seed<k>/ runs")
    parser.add_argument("--out", default="reports/compare", help="report folder: report.md, figures/, tables/")
    parser.add_argument("--portfolio", default=None, help="markdown file whose generated block is rewritten")
    parser.add_argument("--pair", action="append", default=None, metavar="A,B",
                        help="a pair of backbones to compare, as a,b (repeatable); default: the config file's "
                             "\"pairs\", else the fair pair when both are present, else the only two backbones")
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="study config file (JSON) whose \"pairs\" are compared; its other keys are ignored here")
    parser.add_argument("--n-boot", type=int, default=N_BOOT,
                        help="bootstrap resamples (per-category and hierarchical)")


def headline_console(report: Report) -> str:
    """The console summary: overall means per backbone, then the tests over categories."""
    stats = group_stats(report.runs)
    overall = stats[(stats["group"] == OVERALL) & stats["metric"].isin(list(PAIRED_METRICS))]
    means = overall.pivot_table(index=["dataset", "backbone"], columns="metric", values="mean", sort=False,
                                dropna=False)
    lines = ["Overall means (%), complete categories only:"]
    for (dataset, backbone), row in means.iterrows():
        values = ", ".join(f"{PAIRED_METRICS[m]} {_fmt(row.get(m, np.nan), '.1f', 100.0)}" for m in PAIRED_METRICS)
        lines.append(f"  {dataset:8s} {backbone:18s} ({backbone_family(backbone)}): {values}")
    lines.append("Paired tests over categories (a − b, points; Holm over the whole report):")
    for row in report.comparison.aggregate.itertuples():
        lines.append(f"  {row.pair:32s} {row.group:20s} {PAIRED_METRICS[row.metric]:12s} "
                     f"{_fmt(row.mean_diff, '+.2f', 100.0):>7s} CI {_interval(row.ci_low, row.ci_high):18s} "
                     f"p_holm {format_p(row.p_holm)}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.portfolio:
        prepare_portfolio(args.portfolio)  # a missing file or missing markers stop compare before any work
    report = build_report(args.results, args.pair, args.n_boot, args.config)
    import plots

    figures = plots.make_figures(report.runs, report.comparison, report.results)
    path = write_report(report, args.out, figures, portfolio=args.portfolio)
    for note in report_notes(report):
        print(note.replace("**", ""))
    print(headline_console(report))
    skipped = plots.skipped_figures(figures)
    if skipped:
        print(f"{len(skipped)} figure(s) skipped or incomplete:")
        for caption in skipped:
            print(f"  {caption}")
    print(f"report: {path} ({len(report.runs)} runs, {report.comparison.family_size} tests; tables in "
          f"{Path(args.out) / 'tables'}, figures in {Path(args.out) / 'figures'})")
    if args.portfolio:
        print(f"updated the generated block of {args.portfolio}")
    return 0

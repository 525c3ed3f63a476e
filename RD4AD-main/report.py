"""The fair-comparison report: tables, paired tests and markdown, built only from results files.

``main.py compare`` and ``RD_Tester.ipynb`` call the same functions (figures live in plots.py).
Everything is read from the run directories of runs.py; the only numbers typed in here are the
published RD4AD results below, cited and shown as a reference, never averaged with ours.
"""
from __future__ import annotations

import argparse
import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

import runs
from backbones import FAIR_PAIR
from documents import generated_markers, markdown_table, replace_marked_block, rewrite_marked_block
from errors import RDError
from runs import EFFICIENCY, METRICS, load_runs, load_scores, untested_runs
from significance import delong_test, holm, paired_bootstrap_auroc_diff

if TYPE_CHECKING:
    from plots import FigureItem

__all__ = ["Report", "build_report", "category_table", "conclusions_markdown", "group_stats", "group_table",
           "provenance", "reference_table", "render_report", "replace_generated_block", "synthetic_note",
           "teacher_warning", "tests_method", "untested_note", "write_report", "add_arguments", "run",
           "backbone_pairs", "pairwise_tests", "pairwise_table", "category_stats", "efficiency_table",
           "seed_sentence", "BEGIN_MARKER", "END_MARKER", "PUBLISHED_LABEL", "PUBLISHED_RD4AD"]

# Deng & Li, "Anomaly Detection via Reverse Distillation from One-Class Embedding", CVPR 2022,
# Wide-ResNet-50-2 teacher, MVTec AD mean over its 15 categories, in percent (docs/reproduction.md#5-published-numbers).
PUBLISHED_RD4AD = {"image_auroc": 98.5, "pixel_auroc": 97.8, "aupro": 93.9}
PUBLISHED_LABEL = "published RD4AD, WRN-50-2, MVTec AD 15-category mean (reference only)"
ALPHA = 0.05
MIN_PER_CLASS = 2  # DeLong needs at least two defective and two normal images
CONFIDENCE = 0.95
N_BOOT = 2000
BOOT_SEED = 0
GROUPS = ("texture", "object", "overall")
BEGIN_MARKER, END_MARKER = generated_markers("compare")
NOT_AVAILABLE = "n/a"


# ----------------------------------------------------------------------------------------------
# Provenance and warnings
# ----------------------------------------------------------------------------------------------


def _values(runs_frame: pd.DataFrame, column: str) -> str:
    """Distinct values of a column, flagged when the runs disagree."""
    values = sorted(set(runs_frame[column].astype(str)))
    text = ", ".join(values)
    return text if len(values) == 1 else f"{text} (differs between runs)"


def provenance(runs_frame: pd.DataFrame) -> str:
    """What produced a table: data, categories, image size, epochs, seeds, teachers, hardware."""
    teachers = "; ".join(
        f"{backbone}: {_values(group, 'teacher_weights')}" for backbone, group in runs_frame.groupby("backbone")
    )
    seeds = ", ".join(str(seed) for seed in sorted(set(runs_frame["seed"])))
    data = _values(runs_frame, "data_root")
    if is_synthetic(runs_frame):
        data += " (SYNTHETIC data, not MVTec AD)"
    return (
        f"Provenance: data {data}; categories {_values_list(runs_frame['category'])}; "
        f"image size {_values(runs_frame, 'image_size')} px; epochs {_values(runs_frame, 'epochs')}; "
        f"seeds {seeds}; teacher weights {teachers}; hardware {_values(runs_frame, 'hardware')}; "
        f"{len(runs_frame)} runs."
    )


def _values_list(column: pd.Series) -> str:
    return ", ".join(sorted(set(column.astype(str))))


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


def category_stats(runs_frame: pd.DataFrame) -> pd.DataFrame:
    """Long numeric table: per category, backbone and metric, mean/std over seeds and n seeds."""
    rows = []
    for (category, kind, backbone), group in runs_frame.groupby(["category", "kind", "backbone"], sort=True):
        for metric in METRICS:
            mean, std, count = _mean_std(group[metric])
            rows.append((category, kind, backbone, metric, mean, std, count, len(group)))
    return pd.DataFrame(rows, columns=["category", "kind", "backbone", "metric", "mean", "std", "n_values", "n_seeds"])


def category_table(runs_frame: pd.DataFrame) -> pd.DataFrame:
    """Per category x backbone: every metric as "mean ± std" in percent over seeds."""
    stats = category_stats(runs_frame)
    rows = []
    for (category, kind, backbone), group in stats.groupby(["category", "kind", "backbone"], sort=True):
        cells = {METRICS[row.metric] + " (%)": format_mean_std(row.mean, row.std) for row in group.itertuples()}
        n_seeds = int(group["n_seeds"].iloc[0])
        rows.append({"category": category, "kind": kind, "backbone": backbone, "n seeds": n_seeds, **cells})
    return pd.DataFrame(rows)


def _per_seed_group_means(runs_frame: pd.DataFrame) -> pd.DataFrame:
    """Per backbone, seed and group (texture/object/overall): the mean over that group's categories."""
    metrics = list(METRICS)
    frames = []
    for group in GROUPS:
        members = runs_frame if group == "overall" else runs_frame[runs_frame["kind"] == group]
        if members.empty:
            continue
        means = members.groupby(["backbone", "seed"], sort=True)[metrics].mean()
        counts = members.groupby(["backbone", "seed"], sort=True)["category"].nunique().rename("n_categories")
        frames.append(means.join(counts).reset_index().assign(group=group))
    return pd.concat(frames, ignore_index=True)


def group_stats(runs_frame: pd.DataFrame) -> pd.DataFrame:
    """Long numeric table: texture, object and overall means, then mean/std of those over seeds.

    Each seed's group mean weighs every category equally (the MVTec convention); the std is over
    seeds. Null metrics (no masks) are left out of the category mean.
    """
    per_seed = _per_seed_group_means(runs_frame)
    rows = []
    for (group, backbone), frame in per_seed.groupby(["group", "backbone"], sort=False):
        for metric in METRICS:
            mean, std, count = _mean_std(frame[metric])
            rows.append((group, backbone, metric, mean, std, count, int(frame["n_categories"].max()), len(frame)))
    columns = ["group", "backbone", "metric", "mean", "std", "n_values", "n_categories", "n_seeds"]
    return pd.DataFrame(rows, columns=columns)  # in GROUPS order, backbones sorted within


def group_table(runs_frame: pd.DataFrame) -> pd.DataFrame:
    """Texture, object and overall means per backbone, "mean ± std" in percent over seeds."""
    rows = []
    for (group, backbone), frame in group_stats(runs_frame).groupby(["group", "backbone"], sort=False):
        first = frame.iloc[0]
        cells = {METRICS[row.metric] + " (%)": format_mean_std(row.mean, row.std) for row in frame.itertuples()}
        rows.append({"group": f"{group} mean", "backbone": backbone, "n categories": int(first["n_categories"]),
                     "n seeds": int(first["n_seeds"]), **cells})
    return pd.DataFrame(rows)


def reference_table(runs_frame: pd.DataFrame) -> pd.DataFrame:
    """Overall means per backbone (ours) beside the published RD4AD numbers (a reference column)."""
    overall = group_stats(runs_frame).query("group == 'overall'")
    table = pd.DataFrame({"metric (%)": list(METRICS.values())})
    for backbone, frame in overall.groupby("backbone", sort=True):
        by_metric = frame.set_index("metric")
        table[f"{backbone} (ours)"] = [format_mean_std(by_metric.at[m, "mean"], by_metric.at[m, "std"])
                                       for m in METRICS]
    table[PUBLISHED_LABEL] = [f"{PUBLISHED_RD4AD[m]:.1f}" if m in PUBLISHED_RD4AD else "—" for m in METRICS]
    return table


def efficiency_table(runs_frame: pd.DataFrame) -> pd.DataFrame:
    """Measured cost per backbone: mean over its runs (seeds and categories) of metrics.json efficiency."""
    rows = []
    for backbone, frame in runs_frame.groupby("backbone", sort=True):
        row: dict[str, Any] = {"backbone": backbone, "n runs": len(frame)}
        for key, (label, scale, decimals) in EFFICIENCY.items():
            mean = frame[key].mean()
            row[label] = NOT_AVAILABLE if np.isnan(mean) else f"{mean * scale:.{decimals}f}"
        rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------
# Paired tests of image AUROC
# ----------------------------------------------------------------------------------------------

TEST_COLUMNS = [
    "backbone_a", "backbone_b", "category", "seed", "n_images", "n_defective", "n_unmatched",
    "auroc_a", "auroc_b", "difference", "p_value", "p_holm", "ci_low", "ci_high",
]


def backbone_pairs(runs_frame: pd.DataFrame, pair: str | None = None) -> list[tuple[str, str]]:
    """The pairs to test: the ``a,b`` given, else every pair present (the fair pair first)."""
    present = sorted(set(runs_frame["backbone"]))
    if pair:
        names = tuple(name.strip() for name in pair.split(","))
        if len(names) != 2 or names[0] == names[1]:
            raise RDError(f"--pair {pair!r}: expected two different backbones as a,b (e.g. resnet50,convnext_tiny)")
        missing = [name for name in names if name not in present]
        if missing:
            raise RDError(f"--pair {pair!r}: no runs of {', '.join(missing)}; backbones found: {', '.join(present)}")
        return [names]
    pairs = list(itertools.combinations(present, 2))
    if set(FAIR_PAIR) <= set(present):
        pairs = [FAIR_PAIR] + [p for p in pairs if set(p) != set(FAIR_PAIR)]
    return pairs


def _run_of(runs_frame: pd.DataFrame, backbone: str, category: str, seed: int) -> str:
    frame = runs_frame
    match = frame[(frame["backbone"] == backbone) & (frame["category"] == category) & (frame["seed"] == seed)]
    return str(match["run_dir"].iloc[0])


def paired_scores(run_a: str, run_b: str) -> tuple[pd.DataFrame, int]:
    """Both runs' scores joined on image path (the SAME test images), and how many did not match."""
    scores_a, scores_b = load_scores(run_a), load_scores(run_b)
    joined = scores_a.merge(scores_b, on="path", suffixes=("_a", "_b"), validate="one_to_one")
    if (joined["label_a"] != joined["label_b"]).any():
        raise RDError(f"{run_a} and {run_b}: the same test image has different labels in scores.csv")
    unmatched = len(scores_a) + len(scores_b) - 2 * len(joined)
    return joined, unmatched


def _test_one(runs_frame: pd.DataFrame, a: str, b: str, category: str, seed: int, n_boot: int) -> dict[str, Any]:
    """DeLong test and paired bootstrap interval of AUROC(a) - AUROC(b) for one category and seed."""
    joined, unmatched = paired_scores(_run_of(runs_frame, a, category, seed), _run_of(runs_frame, b, category, seed))
    labels = joined["label_a"].to_numpy(copy=True)
    row: dict[str, Any] = {
        "backbone_a": a, "backbone_b": b, "category": category, "seed": seed, "n_images": len(joined),
        "n_defective": int(labels.sum()), "n_unmatched": unmatched,
    }
    if min(labels.sum(), len(labels) - labels.sum()) < MIN_PER_CLASS:
        return row  # too few images of a class for DeLong: the row stays without numbers
    scores_a, scores_b = joined["score_a"].to_numpy(copy=True), joined["score_b"].to_numpy(copy=True)
    delong = delong_test(scores_a, scores_b, labels)
    boot = paired_bootstrap_auroc_diff(scores_a, scores_b, labels, n_boot=n_boot, confidence=CONFIDENCE, seed=BOOT_SEED)
    row.update(auroc_a=delong.auc_a, auroc_b=delong.auc_b, difference=delong.difference,
               p_value=delong.p_value, ci_low=boot.low, ci_high=boot.high)
    return row


def pairwise_tests(runs_frame: pd.DataFrame, pairs: list[tuple[str, str]], n_boot: int = N_BOOT) -> pd.DataFrame:
    """One row per pair, category and seed run by both backbones; Holm-adjusted within each pair.

    Seeds are tested one by one (one trained model per backbone each), never pooled: averaging
    scores over seeds would test an ensemble that neither backbone's single models are.
    """
    rows = []
    for a, b in pairs:
        for category in sorted(set(runs_frame["category"])):
            in_category = runs_frame[runs_frame["category"] == category]
            seeds_a = set(in_category.loc[in_category["backbone"] == a, "seed"])
            seeds_b = set(in_category.loc[in_category["backbone"] == b, "seed"])
            rows += [_test_one(runs_frame, a, b, category, seed, n_boot) for seed in sorted(seeds_a & seeds_b)]
    tests = pd.DataFrame(rows, columns=TEST_COLUMNS)
    for column in ("auroc_a", "auroc_b", "difference", "p_value", "p_holm", "ci_low", "ci_high"):
        tests[column] = tests[column].astype(float)
    for index in tests.groupby(["backbone_a", "backbone_b"], sort=False).groups.values():
        tests.loc[index, "p_holm"] = holm(tests.loc[index, "p_value"])
    return tests


def _ci_text(row: Any) -> str:
    includes = "includes" if row.ci_low <= 0 <= row.ci_high else "excludes"
    return f"the {CONFIDENCE:.0%} CI [{row.ci_low:+.3f}, {row.ci_high:+.3f}] {includes} 0"


def seed_sentence(row: Any) -> str:
    """What one paired test says, in plain words."""
    prefix = f"seed {row.seed}"
    if np.isnan(row.p_value):
        return (f"{prefix}: not tested (DeLong needs at least {MIN_PER_CLASS} normal and {MIN_PER_CLASS} "
                "defective images)")
    ci_excludes_zero = not (row.ci_low <= 0 <= row.ci_high)
    if row.p_value < ALPHA:
        winner = row.backbone_a if row.difference > 0 else row.backbone_b
        text = (f"{prefix}: {winner} is higher by {abs(row.difference):.3f} AUROC, significant at alpha={ALPHA} "
                f"(p={row.p_value:.2g}); {_ci_text(row)}")
    else:
        text = f"{prefix}: no significant difference at alpha={ALPHA} (p={row.p_value:.2f}); {_ci_text(row)}"
    if ci_excludes_zero != (row.p_value < ALPHA):
        text += " (DeLong and the bootstrap disagree: a borderline case, treat as inconclusive)"
    return text


def _verdict(frame: pd.DataFrame) -> str:
    """The category's conclusion over its seeds."""
    tested = frame.dropna(subset=["p_value"])
    if tested.empty:
        return "No conclusion: no seed could be tested."
    significant = tested[tested["p_value"] < ALPHA]
    after_holm = tested[tested["p_holm"] < ALPHA]
    signs = set(np.sign(significant["difference"]))
    n, a, b = len(tested), frame["backbone_a"].iloc[0], frame["backbone_b"].iloc[0]
    if significant.empty:
        return f"No seed shows a significant difference: these data do not show that {a} or {b} is better here."
    winner = a if signs == {1.0} else b
    if len(significant) == n and len(signs) == 1 and len(after_holm) == n:
        return f"{winner} is better in every tested seed ({n}), still significant after Holm correction."
    if len(significant) == n and len(signs) == 1:
        return (f"{winner} is better in every tested seed ({n}) before correction, but not all survive Holm "
                "correction: suggestive, not established.")
    return (f"Mixed: significant in {len(significant)} of {n} seed(s) ({len(after_holm)} after Holm correction): "
            "no consistent difference.")


def conclusions(tests: pd.DataFrame, categories: list[str]) -> list[str]:
    """One markdown line per pair and category: each seed's result, then the verdict."""
    lines = []
    for (a, b), pair_tests in tests.groupby(["backbone_a", "backbone_b"], sort=False):
        for category in categories:
            frame = pair_tests[pair_tests["category"] == category]
            head = f"**{category}**, {a} − {b} (image AUROC)"
            if frame.empty:
                lines.append(f"{head}: not tested: no seed has runs of both backbones.")
                continue
            seeds = "; ".join(seed_sentence(row) for row in frame.itertuples())
            lines.append(f"{head}: {seeds}. {_verdict(frame)}")
    return lines


def multiple_comparisons_note(tests: pd.DataFrame) -> str:
    """Why one small p-value among many tests is weak evidence, and what the tests do not cover."""
    parts = []
    for (a, b), frame in tests.groupby(["backbone_a", "backbone_b"], sort=False):
        count = int(frame["p_value"].notna().sum())
        parts.append(f"{count} tests for {a} vs {b} (about {count * ALPHA:.1f} expected below alpha={ALPHA} by "
                     "chance alone if the backbones were equal)")
    return (
        "Multiple comparisons: " + "; ".join(parts) + ". The Holm-adjusted p-values control the chance of any "
        "false positive within each pair's family of tests (categories × seeds). DeLong's test and the bootstrap "
        "measure the uncertainty due to the finite test set for fixed trained models; seed-to-seed training "
        "variation is not in them (the ± std over seeds in the tables shows it)."
    )


def pairwise_table(tests: pd.DataFrame) -> pd.DataFrame:
    """The paired tests, formatted for reading."""
    def fmt(value: float, spec: str) -> str:
        return NOT_AVAILABLE if np.isnan(value) else format(value, spec)

    rows = []
    for row in tests.itertuples():
        rows.append({
            "pair (a − b)": f"{row.backbone_a} − {row.backbone_b}",
            "category": row.category,
            "seed": row.seed,
            "test images (defective)": f"{row.n_images} ({row.n_defective})",
            "AUROC a": fmt(row.auroc_a, ".3f"),
            "AUROC b": fmt(row.auroc_b, ".3f"),
            "difference": fmt(row.difference, "+.3f"),
            "DeLong p": fmt(row.p_value, ".3g"),
            "p (Holm)": fmt(row.p_holm, ".3g"),
            f"{CONFIDENCE:.0%} bootstrap CI": (NOT_AVAILABLE if np.isnan(row.ci_low)
                                               else f"[{row.ci_low:+.3f}, {row.ci_high:+.3f}]"),
        })
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------


@dataclass
class Report:
    """Everything a report shows, computed once; the notebook displays it, compare writes it."""

    results: str
    runs: pd.DataFrame
    pairs: list[tuple[str, str]]
    tests: pd.DataFrame
    n_boot: int
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)


def build_report(results: str | os.PathLike, pair: str | None = None, n_boot: int = N_BOOT) -> Report:
    """Load the runs under ``results`` and compute every table and test."""
    runs_frame = load_runs(results)
    pairs = backbone_pairs(runs_frame, pair)
    tests = pairwise_tests(runs_frame, pairs, n_boot)
    tables = {
        "category_metrics": category_table(runs_frame),
        "group_means": group_table(runs_frame),
        "reference": reference_table(runs_frame),
        "pairwise_tests": pairwise_table(tests),
        "efficiency": efficiency_table(runs_frame),
    }
    return Report(str(results), runs_frame, pairs, tests, n_boot, tables)


NOTHING_TO_COMPARE = "Nothing to compare: fewer than two backbones share a category and seed."


def tests_method(report: Report) -> str:
    """How the paired tests were done (pairing, tests, seeds)."""
    return (
        "For each category and each seed run by both backbones, the two scores.csv files are joined on the "
        "image path, so both AUROCs come from exactly the same test images. Difference = AUROC(a) − AUROC(b). "
        f"DeLong's test for correlated ROC curves (two-sided) gives p; a paired bootstrap ({report.n_boot} "
        f"resamples of the test images, seed {BOOT_SEED}) gives the {CONFIDENCE:.0%} interval. Seeds are tested "
        "one by one, not pooled: averaging scores over seeds would test an ensemble instead of the single models."
    )


def conclusions_markdown(report: Report) -> str:
    """The conclusions as a markdown list, then the multiple-comparisons note."""
    if report.tests.empty:
        return NOTHING_TO_COMPARE
    lines = conclusions(report.tests, sorted(set(report.runs["category"])))
    return "\n".join(f"- {line}" for line in lines) + "\n\n" + multiple_comparisons_note(report.tests)


def _pair_runs(report: Report) -> pd.DataFrame:
    backbones = {name for pair in report.pairs for name in pair}
    return report.runs[report.runs["backbone"].isin(backbones)]


def _threshold_rules(runs_frame: pd.DataFrame) -> str:
    return "; ".join(sorted(set(runs_frame["threshold_rule"])))


def render_body(report: Report, figures: list[FigureItem], level: int, link_prefix: str) -> str:
    """The report's markdown below its title; ``level`` is the section heading level."""
    h, hh = "#" * level, "#" * (level + 1)
    runs_frame = report.runs
    prov = f"_{provenance(runs_frame)}_"
    out = [note for note in (teacher_warning(runs_frame), synthetic_note(runs_frame), untested_note(report)) if note]
    out += [
        f"Generated by `main.py compare` from {len(runs_frame)} runs under `{report.results}`; do not edit by hand.",
        f"{h} Metrics per category and backbone",
        "Percent, mean ± std over seeds (sample std; a single seed shows no std); n/a = not measured (no "
        "ground-truth masks). F1-max picks its threshold on the test labels, so it is optimistic. Accuracy, "
        "precision, recall and F1 use the threshold from validation normals only "
        f"(rule: {_threshold_rules(runs_frame)}).",
        markdown_table(report.tables["category_metrics"]), prov,
        f"{h} Texture, object and overall means",
        "Each seed's mean over the group's categories (every category weighs the same), then mean ± std over seeds.",
        markdown_table(report.tables["group_means"]), prov,
        f"{h} Overall means beside the published RD4AD numbers",
        "The published column is the paper's WRN-50-2 on real MVTec AD (Deng & Li, CVPR 2022); it is a "
        "reference only and is never averaged with our results.",
        markdown_table(report.tables["reference"]), prov,
        f"{h} Is the difference real? Paired tests of image AUROC",
    ]
    if report.tests.empty:
        out.append(NOTHING_TO_COMPARE)
    else:
        out += [
            tests_method(report),
            markdown_table(report.tables["pairwise_tests"]), f"_{provenance(_pair_runs(report))}_",
            f"{hh} Conclusions",
            conclusions_markdown(report),
        ]
    out += [
        f"{h} Efficiency",
        "As measured by the runs (metrics.json efficiency), mean over each backbone's runs.",
        markdown_table(report.tables["efficiency"]), prov,
        f"{h} Figures",
        *_figure_markdown(figures, hh, link_prefix),
    ]
    return "\n\n".join(out) + "\n"


def _figure_markdown(figures: list[FigureItem], heading: str, link_prefix: str) -> list[str]:
    out, section = [], None
    for item in figures:
        if item.section != section:
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


def write_tables(report: Report, directory: Path) -> None:
    """Each displayed table, plus the numeric runs, stats and tests, as CSV."""
    directory.mkdir(parents=True, exist_ok=True)
    numeric = {
        "runs": report.runs,
        "category_stats": category_stats(report.runs),
        "group_stats": group_stats(report.runs),
        "pairwise_tests_numeric": report.tests,
    }
    for name, frame in {**report.tables, **numeric}.items():
        text = frame.to_csv(index=False, float_format="%.10g", lineterminator="\n")
        runs.atomic_write_text(directory / f"{name}.csv", text)


def replace_generated_block(text: str, block: str, path: Path) -> str:
    """``text`` with the part between the markers replaced by ``block``; all else unchanged."""
    return replace_marked_block(text, block, BEGIN_MARKER, END_MARKER, path)


def update_portfolio(path: str | os.PathLike, report: Report, figures: list[FigureItem], out: Path) -> None:
    """Rewrite only the generated block of the portfolio, linking figures relative to it."""
    path = Path(path)
    if not path.is_file():
        raise RDError(f"--portfolio {path}: file not found")
    prefix = Path(os.path.relpath(out.resolve(), path.resolve().parent)).as_posix() + "/"
    rewrite_marked_block(path, render_body(report, figures, 3, prefix), "compare")


def write_report(report: Report, out: str | os.PathLike, figures: list[FigureItem] | None = None,
                 portfolio: str | os.PathLike | None = None) -> Path:
    """Write report.md, figures/*.png and tables/*.csv under ``out`` (and the portfolio block)."""
    import plots  # matplotlib is needed only here

    out = Path(out)
    if figures is None:
        figures = plots.make_figures(report.runs)
    plots.save_figures(figures, out / "figures")
    write_tables(report, out / "tables")
    runs.atomic_write_text(out / "report.md", render_report(report, figures))
    if portfolio is not None:
        update_portfolio(portfolio, report, figures, out)
    return out / "report.md"


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", default="results",
                        help="results folder holding <backbone>/<category>/seed<k>/ runs")
    parser.add_argument("--out", default="reports/compare", help="report folder: report.md, figures/, tables/")
    parser.add_argument("--portfolio", default=None, help="markdown file whose generated block is rewritten")
    parser.add_argument("--pair", default=None, help="test only this pair, as a,b (default: every pair present)")
    parser.add_argument("--n-boot", type=int, default=N_BOOT, help="bootstrap resamples per test")


def run(args: argparse.Namespace) -> int:
    report = build_report(args.results, args.pair, args.n_boot)
    path = write_report(report, args.out, portfolio=args.portfolio)
    warning = teacher_warning(report.runs)
    if warning:
        print(warning.replace("**", ""))
    print(f"wrote {path} ({len(report.runs)} runs, {len(report.tests)} paired tests)")
    if args.portfolio:
        print(f"updated the generated block of {args.portfolio}")
    return 0

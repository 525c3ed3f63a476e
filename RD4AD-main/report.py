"""The fair-comparison report: builds it from results files, renders its markdown and writes it.

``main.py compare`` and ``RD_Tester.ipynb`` call the same functions. The numbers come from comparison.py (paired
statistics) and decision.py (the primary questions, their two answers and the planning table); the tables are
formatted in report_tables.py, every sentence that states a result comes from a template of claims.py (checked
against the tables by tests/test_report.py), the figures from plots.py. The only numbers typed in are the
published RD4AD and RD++ results of report_tables.REFERENCES, cited and never averaged with ours.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

import runs
from claims import (DEFINITIONS, NOTHING_TO_COMPARE, aggregate_sentence, category_test_sentence, claim_basis_text,
                    conclusions_text, interaction_sentence, primary_console_line)
from comparison import (ALPHA, CONFIDENCE, N_BOOT, PAIRED_METRICS, POWER, Comparison, compare_runs, epoch_text,
                        parse_pairs, resolve_pairs, run_name)
from backbone_facts import backbone_family
from decision import (CLAIM_BASES, PLANNED_SEEDS, Decision, StudyPlan, check_primary, decide, default_primary,
                      read_study_plan)
from documents import generated_markers, markdown_table, replace_marked_block
from errors import RDError
from interaction import InteractionQuestion, is_interaction
from report_tables import (PROTOCOLS, REFERENCES, Reference, aggregate_table, category_stats, category_table,
                           distinct_values, efficiency_table, format_p, group_stats, group_table, is_synthetic,
                           method_backbone_table, multi_dataset, pairwise_table, per_defect_table, planning_display,
                           primary_table, reference_table, values_list)
from runs import load_runs, synthetic_saturation_note, untested_runs
from paired_metrics import unmeasured_note
from per_image import image_table, image_tests, image_text
from significance import EXACT_SIGNED_RANK, MAX_EDGES
from protocol import differences_text, headline_sentence, interaction_line, refuse_same_recipe
from report_kinds import anomaly_kind_table, anomaly_kind_text
from why import WhyPart, render_why, why_parts, why_tables

if TYPE_CHECKING:
    from plots import FigureItem

__all__ = ["BEGIN_MARKER", "DEFINITIONS", "END_MARKER", "REFERENCES", "Reference", "Report", "add_arguments",
           "aggregate_sentence", "build_report", "category_stats", "category_table", "category_test_sentence",
           "conclusions_markdown", "efficiency_table", "format_p", "group_stats", "group_table", "headline_console",
           "headline_text", "interaction_markdown", "is_synthetic", "planning_text", "prepare_portfolio",
           "primary_text", "protocol_text", "provenance", "reference_table", "render_report", "replace_generated_block",
           "report_notes", "run", "synthetic_note", "teacher_warning", "tests_method", "untested_note", "write_report"]

BEGIN_MARKER, END_MARKER = generated_markers("compare")
# ----------------------------------------------------------------------------------------------
# Provenance and warnings
# ----------------------------------------------------------------------------------------------



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
    text = f"epochs {distinct_values(runs_frame, 'epochs')} requested"
    if unfinished.empty:
        return text
    return text + f"; **{len(unfinished)} run(s) UNFINISHED** (checkpoint short of the requested epochs: " + \
        ", ".join(run_name(row) + f" at {epoch_text(row['trained_epochs'])}/{epoch_text(row['requested_epochs'])}"
                  for _, row in unfinished.iterrows()) + ")"


def provenance(runs_frame: pd.DataFrame) -> str:
    """What produced a table: data, categories, image size, epochs, protocol, seeds, teachers, hardware."""
    teachers = "; ".join(
        f"{backbone}: {distinct_values(group, 'teacher_weights')}" for backbone, group in runs_frame.groupby("backbone")
    )
    seeds = ", ".join(str(seed) for seed in sorted(set(runs_frame["seed"])))
    data = distinct_values(runs_frame, "data_root")
    if is_synthetic(runs_frame):
        data += " (SYNTHETIC data, not MVTec AD)"
    return (
        f"Provenance: data {data} (format {distinct_values(runs_frame, 'dataset')}); categories "
        f"{values_list(runs_frame['category'])}; image size {distinct_values(runs_frame, 'image_size')} px; "
        f"{_epochs_text(runs_frame)}; {protocol_text(runs_frame)}; seeds {seeds}; teacher weights {teachers}; "
        f"{differences_text(runs_frame, backbone_family)}; hardware {distinct_values(runs_frame, 'hardware')}; "
        f"{len(runs_frame)} runs."
    )



def teacher_warning(runs_frame: pd.DataFrame) -> str | None:
    """A loud warning when any run used a random (non-pretrained) teacher, else None."""
    random_runs = runs_frame[runs_frame["teacher_weights"] == "random"]
    if random_runs.empty:
        return None
    return (
        f"**WARNING: RANDOM TEACHERS.** {len(random_runs)} of {len(runs_frame)} runs "
        f"(backbones: {values_list(random_runs['backbone'])}) used randomly initialised, NOT pretrained "
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
# The report
# ----------------------------------------------------------------------------------------------


@dataclass
class Report:
    """Everything a report shows, computed once; the notebook displays it, compare writes it."""

    results: str
    runs: pd.DataFrame  # the runs of the compared backbones
    pairs: list[tuple[str, str]]
    comparison: Comparison
    decision: Decision
    n_boot: int
    left_out: list[str] = field(default_factory=list)  # evaluated backbones in no pair
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    why: list[WhyPart] = field(default_factory=list)  # the Why section's instruments (why.py)
    images: pd.DataFrame = field(default_factory=pd.DataFrame)  # per-image AUPIMO tests (per_image.py)
    stats: pd.DataFrame | None = None  # group_stats of ``runs`` (computed once by build_report; None: on demand)

    @property
    def tests(self) -> pd.DataFrame:
        return self.comparison.tests


def _plan_from(pairs: Any, config: str | os.PathLike | None) -> StudyPlan:
    """The config file's plan (pairs, primary questions, claim basis); --pair wins over its "pairs"."""
    plan = read_study_plan(config)
    given = parse_pairs(pairs)
    return StudyPlan(given, plan.primary, plan.claim_basis, plan.source) if given else plan


def build_report(results: str | os.PathLike, pairs: Any = None, n_boot: int = N_BOOT,
                 config: str | os.PathLike | None = None) -> Report:
    """Load the runs under ``results`` and compute every table and test of the pairs (``--pair`` values: "a,b",
    ["a", "b"] or a list of pairs; else the config file's "pairs"; else the default rule of resolve_pairs), with
    the config file's primary questions and claim basis (defaults: decision.py)."""
    plan = _plan_from(pairs, config)
    all_runs = load_runs(results)
    chosen = resolve_pairs(all_runs, plan.pairs)
    compared = {name for pair in chosen for name in pair}
    runs_frame = all_runs[all_runs["backbone"].isin(compared)].reset_index(drop=True)
    questions = plan.primary if plan.primary is not None else default_primary(chosen)
    check_primary(questions, chosen, runs_frame, plan.source)  # a bad question stops before the resampling
    comparison = compare_runs(runs_frame, chosen, n_boot, str(results), [q.key for q in questions])
    decision = decide(runs_frame, plan, chosen)
    report = Report(str(results), runs_frame, chosen, comparison, decision, n_boot,
                    sorted(set(all_runs["backbone"]) - compared), images=image_tests(runs_frame, chosen))
    report.stats = stats = group_stats(runs_frame)
    report.tables = {
        "primary_tests_table": primary_table(decision.primary, runs_frame),
        "aggregate_tests_table": aggregate_table(comparison.aggregate, runs_frame),
        "category_metrics": category_table(runs_frame),
        "group_means": group_table(runs_frame, stats),
        "reference": reference_table(runs_frame, stats),
        "pairwise_tests": pairwise_table(comparison.tests),
        "aupimo_images": image_table(report.images, runs_frame),
        "per_defect": per_defect_table(comparison.per_defect, runs_frame),
        "anomaly_kinds": anomaly_kind_table(runs_frame),  # MVTec LOCO: logical vs structural (empty otherwise)
        "seed_power": planning_display(decision.planning, runs_frame),
        "efficiency": efficiency_table(runs_frame),
    }
    methods = method_backbone_table(runs_frame, stats)  # only when some backbone ran under two methods
    if not methods.empty:
        report.tables["method_backbone"] = methods
    report.why = why_parts(runs_frame, results, chosen)
    return report


def conclusions_markdown(report: Report) -> str:
    """The conclusions: the primary answers, then the exploratory tests and leads, then the ties (claims.py)."""
    return conclusions_text(report.comparison, report.decision, report.runs)


def _binning_note(report: Report) -> str:
    """How close the binned pixel statistics come to each run's metrics.json values (measured, not assumed)."""
    errors = [r.binning_error for r in report.comparison.resamples.values() if r.binning_error]
    if not errors:
        return "No run has maps.npz with masks: the pixel metrics have no intervals."
    exact = sum(r.exact for r in report.comparison.resamples.values() if r.binning_error)
    worst = {key: max(e[key] for e in errors if key in e) for key in PAIRED_METRICS
             if any(key in e for e in errors)}
    return (f"Pixel metrics are resampled from per-image histograms of maps.npz (float16) on a grid of up to "
            f"{MAX_EDGES} thresholds per run ({exact} of {len(errors)} runs have fewer distinct normal scores, so "
            f"their grid is exact), SegF1 from each image's pixel counts at the run's threshold; on all images they "
            "reproduce each run's metrics.json within " +
            ", ".join(f"{value:.1e} ({PAIRED_METRICS[key]})" for key, value in worst.items()) +
            ", the largest difference over the runs.")


def tests_method(report: Report) -> str:
    """How the per-category tests were done (pairing, tests, seeds)."""
    return (
        "For each category and each seed run by both backbones, the runs' scores.csv files (and maps.npz) are joined "
        "on the image path, so both values come from exactly the same test images. Difference = metric(a) − "
        f"metric(b). Image AUROC: DeLong's test for correlated ROC curves (two-sided). Pixel AUROC, AUPRO (to FPR "
        "0.3 and to 0.05), SegF1 at each run's validation threshold and mean AUPIMO: a paired bootstrap over test "
        f"images with their masks ({report.n_boot} resamples, class counts kept, the same draws for both backbones), "
        "p from its standard error (normal approximation); AUPIMO's mean is over the anomalous images both runs "
        "scored, and the normal images, which set its false-positive band, are not redrawn. sPRO has no test here "
        "(its per-region overlaps are not kept per image): it enters the tests over categories only. Every interval "
        "is the "
        f"bootstrap's {CONFIDENCE:.0%} percentile interval. A category where both models are perfect, or identical on "
        "every resample, is not tested and says so. Seeds are tested one by one: each is one trained model per "
        "backbone. " + _binning_note(report) + f" Pixel metrics are computed at the training image size "
        f"({', '.join(sorted(set(report.runs['image_size'].astype(str))))} px): maps and masks at that size, the masks "
        "resized from the original images (700-1024 px in MVTec AD), so thin defects can shrink or vanish; the same "
        "for every backbone, but not MVTec AD's official full resolution (docs/reproduction.md, section 4)."
    )



def primary_text(report: Report) -> str:
    """How the primary questions were answered: what is random and fixed in each answer, one t statistic for each
    interval and p, the signed-rank check, Holm within the primary family, and the simulation behind them."""
    decision = report.decision
    return (
        "Difference = metric(a) − metric(b) in percentage points. A cell is a (category, seed) pair both backbones "
        "ran; each category enters with the seeds it has (the seed counts are in the table; a category with more or "
        "fewer seeds never removes another), a category without a cell is named with the reason, and every category "
        "weighs the same: the estimate is the mean over categories of each category's seed-averaged difference. Each "
        "primary question gets two answers, each from one t statistic, so its interval excludes 0 exactly when its p "
        f"is below {ALPHA}. **On these categories**: random are the training seeds; the categories and their test "
        "images are fixed, so the answer is about these test sets. Its standard error comes from the seed-to-seed "
        "variance within each category (a single-seed category takes the variance pooled over the others), with "
        "Welch-Satterthwaite degrees of freedom; with one seed per category it cannot be computed and says so. **To "
        "new categories**: random are also the categories (as if drawn from a population of such products, with "
        "their seeds and test images); Student's t over the categories' seed-averaged differences (categories − 1 "
        "degrees of freedom). Beside them, Wilcoxon's signed-rank test over the categories checks the direction of "
        f"the majority (exact over mid-ranks, tied categories left out, up to {EXACT_SIGNED_RANK} categories; Monte "
        "Carlo beyond, labelled), with the smallest p it can reach; it has no interval and decides nothing. Holm's "
        f"correction runs within the primary family only ({len(decision.primary)} tests per answer), so exploratory "
        "tables and further pairs never change these answers. The printed interval is the raw one, matching the raw "
        "p; the verdict uses the Holm-adjusted p of the claim basis, which is stricter, so an interval can exclude 0 "
        "while the Holm-adjusted p is 0.05 or more. A verdict's direction is the sign of the mean; when most "
        "categories point the other way, the sentence says so. docs/calibration.md (`main.py calibrate`) "
        "checks both answers' coverage and level, and the planning table's power, in simulated studies. "
        + _interaction_text(decision) + " ".join(DEFINITIONS)
    )


def _interactions(decision: Decision) -> list[InteractionQuestion]:
    return [question for question in decision.questions if isinstance(question, InteractionQuestion)]


def _interaction_text(decision: Decision) -> str:
    """How an interaction question is answered, when the study declares one ("" otherwise)."""
    if not _interactions(decision):
        return ""
    return ("An interaction question, (a − b under one method) − (a − b under the other), is answered the same way "
            "from its own cells: a cell is a (category, seed) pair all four arms ran (seed k of each arm; the arms' "
            "runs are independent, so pairing them by seed number adds no assumption), its difference the difference "
            "of the two pairs' differences; its Holm correction is the primary family's, with the pair questions. ")


def _interaction_protocols(report: Report) -> list[str]:
    """The protocol line of each interaction's four arms (once per set of arms)."""
    pairs = dict.fromkeys(question.pairs for question in _interactions(report.decision))
    return [interaction_line(report.runs, pair, backbone_family) for pair in pairs]


def interaction_markdown(report: Report) -> str:
    """The interaction answers beside the method x backbone table: each declared interaction's sentence and its row
    of the primary table (the same numbers as the primary section), or how to declare one."""
    rows = report.decision.primary[[is_interaction(label) for label in report.decision.primary["pair"]]]
    if rows.empty:
        return ("No interaction question is declared, so this table is not tested: a study config's \"primary\" "
                "list declares one as `{\"interaction\": {\"backbones\": [a, b], \"methods\": [\"rdpp\", \"rd\"]}, "
                "\"metric\": \"aupro\"}` (configs/method_study.json does), passed with `--config`.")
    multi = multi_dataset(report.runs)
    sentences = "\n".join(f"- {interaction_sentence(row, multi)}" for row in rows.itertuples())
    return (f"The interaction (primary; the same answer as in the primary section):\n\n{sentences}\n\n"
            + markdown_table(primary_table(rows, report.runs)))


def headline_text(report: Report) -> str:
    """How the exploratory tests over categories were done (the primary ones: primary_text)."""
    return (
        "The same two answers, signed-rank check and wins for every pair, group and metric. The primary questions "
        "are answered above; the other rows are exploratory: Benjamini-Hochberg's false-discovery-rate correction runs "
        "within this table over its exploratory rows, for each answer, and within the per-category table over its "
        "tests. An exploratory p below 0.05 after that correction is a lead for a study that declares it primary."
    )


def planning_text(report: Report) -> str:
    """The variance model behind the planning table ("How many seeds?")."""
    return (
        f"For each primary question and answer: the smallest true difference detected with {POWER:.0%} power at "
        f"Holm's first step (alpha = {ALPHA} / {len(report.decision.primary)} primary tests) with "
        f"{', '.join(map(str, PLANNED_SEEDS))} seeds per category, found by simulating the answer's own test "
        "(planning.py, 4000 simulated studies, seeded). Variance model: a cell (category c, seed s) differs by its "
        "category's effect plus seed noise (variance: per category, the sample variance over its seeds here; a "
        "single-seed category takes the pooled one). On these categories the effects and test images are fixed, so "
        "only the seed noise enters (with its Welch-Satterthwaite degrees of freedom). To new categories the "
        "categories' spread adds to it (category sd: the variance of the seed-averaged differences less the seed "
        "part, floored at 0; it holds the test-image noise too, which more seeds do not reduce). n/a: the answer "
        "cannot be computed with that design (one seed on these categories, fewer than 2 categories) or a variance is "
        "unknown. The promise is checked in docs/calibration.md; it assumes the spread stays as observed, which "
        "categories at the ceiling (both arms perfect) break: there the spread grows with the difference."
    )


def _pair_runs(report: Report) -> pd.DataFrame:
    backbones = {name for pair in report.pairs for name in pair}
    return report.runs[report.runs["backbone"].isin(backbones)]


def report_notes(report: Report) -> list[str]:
    """The warnings and notes that head the report (random teachers, unfinished runs, synthetic data, ...)."""
    runs_frame = report.runs
    return [note for note in (teacher_warning(runs_frame), unfinished_warning(runs_frame), synthetic_note(runs_frame),
                              untested_note(report), not_compared_note(report),
                              synthetic_saturation_note(runs_frame), unmeasured_note(runs_frame)) if note]


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
        claim_basis_text(report.decision),
        f"{h} Primary questions",
        "\n".join([headline_sentence(runs_frame, report.pairs, backbone_family), *_interaction_protocols(report)]),
        primary_text(report),
        *_figure_markdown(forest, None, link_prefix),
        markdown_table(report.tables["primary_tests_table"]), prov,
        f"{hh} Conclusions",
        conclusions_markdown(report),
        f"{h} Headline: paired differences over categories (exploratory)",
        headline_text(report),
        markdown_table(report.tables["aggregate_tests_table"]), prov,
        f"{h} How many seeds?",
        planning_text(report),
        markdown_table(report.tables["seed_power"]), prov,
        f"{h} Metrics per category and backbone",
        "Percent, mean ± std over seeds (sample std; a single seed shows no std); n/a = not measured (no "
        "ground-truth masks; for AUPIMO also too few normal test pixels for its band, and for the newer metrics "
        "runs tested before they existed). AUPRO to FPR 0.05 and AUPIMO (each anomalous image's recall while the "
        "normal images show FPR 1e-5 to 1e-4, averaged) measure at few false alarms (docs/reproduction.md, "
        "section 4). F1-max and SegF1-max pick their threshold on the test labels, so they are optimistic. "
        "Accuracy, precision, recall, F1 and SegF1 (pixel F1) use the threshold from validation normals only "
        f"(rule: {_threshold_rules(runs_frame)}).",
        markdown_table(report.tables["category_metrics"]), prov,
        f"{h} Group and overall means",
        "Per dataset, the groups of categories.group_order() and then overall, over the categories every backbone ran "
        "(any seed, metric measured; every category weighs the same): each seed's mean over them, then mean ± std "
        "over seeds; where categories have different seeds, the mean of each category's seed mean, without a std. "
        "Categories some backbone did not run are named in the last columns and not averaged (a metric no run "
        "measured is named once, in the notes at the top).",
        markdown_table(report.tables["group_means"]), prov,
        *_method_section(report, h, prov),
        f"{h} Overall means beside published references",
        "Reference rows are published MVTec AD 15-category means with their own protocols; they are never averaged "
        "with our results.",
        markdown_table(report.tables["reference"]), prov,
        f"{h} Per-category paired tests of every paired metric (exploratory)",
    ]
    if report.comparison.tests.empty:
        out.append(NOTHING_TO_COMPARE)
    else:
        out += [tests_method(report), markdown_table(report.tables["pairwise_tests"]),
                f"_{provenance(_pair_runs(report))}_"]
    out += [f"{h} AUPIMO per image (exploratory)", image_text(report.images)]
    if not report.images.empty:
        out += [markdown_table(report.tables["aupimo_images"]), f"_{provenance(_pair_runs(report))}_"]
    out += [
        f"{h} Per defect type",
        "Image AUROC of each defect type's images against the good images; pixel AUROC and AUPRO on the good images "
        "plus that type's images (from the same binned statistics as the intervals); mean over seeds, percent.",
        markdown_table(report.tables["per_defect"]) if not report.tables["per_defect"].empty else
        "No defect types: the compared runs have no defective test image.", prov,
        *([f"{h} Logical and structural anomalies (MVTec LOCO AD)", anomaly_kind_text(runs_frame),
           markdown_table(report.tables["anomaly_kinds"]), prov] if not report.tables["anomaly_kinds"].empty else []),
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


def _method_section(report: Report, h: str, prov: str) -> list[str]:
    """The descriptive method x backbone table, when the compared arms hold a backbone under two methods."""
    if "method_backbone" not in report.tables:
        return []
    return [f"{h} Method × backbone (descriptive)",
            "Each backbone's overall mean under each method (RD4AD, and RD++: docs/reproduction.md, section 11), "
            "mean ± std over seeds of the per-seed means over the categories complete for every compared arm, and "
            "the difference of the two means in points. Descriptive only: no interval and no test. A pair of arms "
            "of different methods is labelled a method comparison in its protocol line.",
            markdown_table(report.tables["method_backbone"]), prov, interaction_markdown(report)]


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
        "group_stats": group_stats(report.runs) if report.stats is None else report.stats,
        "pairwise_tests_numeric": comparison.tests,
        "aupimo_images_numeric": report.images,
        "category_intervals": comparison.intervals,
        "primary_tests": report.decision.primary,
        "seed_power_numeric": report.decision.planning,
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
    refuse_same_recipe(text, report.runs, str(out / "report.md"), backbone_family)
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
                        help="study config file (JSON) with \"pairs\" (compared), \"primary\" (the primary "
                             "questions: [{\"pair\": [a, b], \"metric\": ..., \"group\": ...}], or an interaction "
                             "{\"interaction\": {\"backbones\": [a, b], \"methods\": [m1, m2]}, \"metric\": ...}) and "
                             "\"claim_basis\" (fixed-categories or new-categories); its other keys are for other "
                             "commands")
    parser.add_argument("--n-boot", type=int, default=N_BOOT,
                        help="bootstrap resamples over test images (the per-category tests and intervals)")



def headline_console(report: Report) -> str:
    """The console summary: the primary answers first, one line each, then the exploratory count."""
    basis = CLAIM_BASES[report.decision.claim_basis]
    lines = [f"Primary questions (a − b, points; Holm within the primary family; claim basis: {basis}):"]
    lines += [primary_console_line(row) for row in report.decision.primary.itertuples()]
    exploratory = report.comparison.aggregate.query("family == 'exploratory'")
    lines.append(f"Exploratory: {len(exploratory)} tests over categories, {len(report.comparison.tests)} "
                 f"per-category tests and {len(report.images)} per-image AUPIMO tests (Benjamini-Hochberg within each "
                 "table; see the report).")
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
    print(f"report: {path} ({len(report.runs)} runs, {len(report.decision.primary)} primary questions; tables in "
          f"{Path(args.out) / 'tables'}, figures in {Path(args.out) / 'figures'})")
    if args.portfolio:
        print(f"updated the generated block of {args.portfolio}")
    return 0

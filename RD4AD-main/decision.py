"""The study's decision rule: its primary questions, answered twice, and how many seeds they need.

A study declares its primary questions in its config file (``"primary"``; default: every compared pair on overall
image AUROC, pixel AUROC and AUPRO) and the answer its claim rests on (``"claim_basis"``). Each question gets both
answers of inference.py, each a t statistic with its interval and p:
- **on these categories** (``fixed-categories``, the default): random are the training seeds, the categories and
  their test images are fixed; the seed-to-seed variance within each category makes the standard error;
- **to new categories** (``new-categories``): random are also the categories; Student's t over the categories'
  seed-averaged differences.
Cells are the (category, seed) pairs both backbones ran; a category with more or fewer seeds enters with the seeds
it has, every category weighs the same, and one without a cell is named. Holm's correction runs over the primary
family alone, for each answer, so printing more exploratory tables or comparing more pairs leaves a declared
question's answer unchanged; the verdict uses the Holm-adjusted p of the claim basis, while the printed interval is
the raw one that matches the raw p. Everything else is exploratory (comparison.with_exploratory). The planning
table (planning.py) simulates the answers' own tests under the study's variance components.
A primary question may also be an interaction (interaction.py: two backbones under two methods, cells the four
arms' difference of differences), answered alike within the same family.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from comparison import (ALPHA, DEFAULT_PRIMARY_METRICS, OVERALL, PAIRED_METRICS, POWER, answer_pair, group_members,
                        pair_cells, pair_label, parse_pairs, read_config_json, read_pairs_config)
from errors import RDError
from inference import BASES, family_table
from interaction import INTERACTION, INTERACTION_KEYS, InteractionQuestion, answer_interaction, interaction_cells, \
    parse_interaction
from planning import components_from_cells, detectable
from report_tables import count_text
from significance import seeded_rng

__all__ = ["CLAIM_BASES", "DEFAULT_CLAIM_BASIS", "DETECTABLE_COLUMNS", "Decision", "PLANNED_SEEDS", "PLANNING_COLUMNS",
           "PRIMARY_COLUMNS", "PrimaryQuestion", "StudyPlan", "check_primary", "decide", "default_primary",
           "parse_claim_basis", "parse_primary", "planning_rows", "planning_table", "primary_tests", "read_study_plan"]
__all__ += ["InteractionQuestion", "Question"]  # a primary question may be an interaction (interaction.py)

# claim_basis value -> what the answer generalises to (the report's wording)
CLAIM_BASES = BASES
DEFAULT_CLAIM_BASIS = "fixed-categories"
PLANNED_SEEDS = (1, 3, 5)
PRIMARY_COLUMNS = ["pair", "metric", "group", "n_categories", "n_cells", "seeds", "mean_diff", "ci_low_fixed",
                   "ci_high_fixed", "p_fixed", "p_fixed_holm", "ci_low_new", "ci_high_new", "p_new", "p_new_holm",
                   "claim_basis", "significant", "p_signed_rank", "min_reachable_p_signed_rank", "wins_a", "wins_b",
                   "dataset", "df_fixed", "df_new", "signed_rank_method", "seed_counts", "excluded", "note_fixed",
                   "note_new", "note", "flags"]
# seeds per category -> the planning table's column of the difference detectable with them
DETECTABLE_COLUMNS = {s: "detectable_" + count_text(s, "seed").replace(" ", "_") for s in PLANNED_SEEDS}
PLANNING_COLUMNS = ["pair", "dataset", "group", "metric", "n_categories", "seeds", "observed_diff", "answer",
                    "seed_sd", "category_sd", *DETECTABLE_COLUMNS.values(), "note"]
QUESTION_KEYS = {"pair", "metric", "group"}


@dataclass(frozen=True)
class PrimaryQuestion:
    """One primary question: is metric(a) − metric(b) over the group's categories different from 0?"""

    pair: tuple[str, str]
    metric: str
    group: str = OVERALL

    @property
    def key(self) -> tuple[str, str, str]:
        """(pair label, group, metric): how the tests over categories name it."""
        return pair_label(self.pair), self.group, self.metric

    @property
    def pairs(self) -> tuple[tuple[str, str]]:
        """The pairs the question compares (an InteractionQuestion has two)."""
        return (self.pair,)


# A primary question: a pair's difference, or the interaction of two methods and two backbones (interaction.py).
Question = PrimaryQuestion | InteractionQuestion


@dataclass(frozen=True)
class StudyPlan:
    """What a study config file says about the comparison: pairs, primary questions, claim basis (None: default)."""

    pairs: list[tuple[str, str]] | None
    primary: list[Question] | None
    claim_basis: str
    source: str  # "--config FILE" or "" (no file)


def parse_claim_basis(value: Any, source: str) -> str:
    """``fixed-categories`` or ``new-categories``; anything else is an RDError naming ``source``."""
    if value not in CLAIM_BASES:
        raise RDError(f"{source} \"claim_basis\": expected one of {', '.join(map(repr, CLAIM_BASES))}, got {value!r}")
    return value


def parse_primary(value: Any, source: str) -> list[Question]:
    """The "primary" list: objects with "pair" ([a, b] or "a,b"), "metric" (a metrics.json key of the paired
    metrics, e.g. "aupimo" or "aupro_5pct") and optionally "group" (default overall), or with "interaction"
    ({"backbones": [a, b], "methods": [m1, m2]}: interaction.py) instead of "pair"; an RDError naming ``source`` and
    the entry otherwise."""
    if not isinstance(value, list) or not value:
        raise RDError(f"{source} \"primary\": expected a non-empty list of {{\"pair\": [a, b], \"metric\": ..., "
                      f"\"group\": ...}} objects, got {value!r}")
    questions = []
    for number, item in enumerate(value):
        where = f"{source} \"primary\"[{number}]"
        interaction = isinstance(item, dict) and INTERACTION in item
        if interaction and (not {INTERACTION, "metric"} <= set(item) or set(item) - INTERACTION_KEYS):
            raise RDError(f"{where}: expected an object with \"{INTERACTION}\" and \"metric\" (and optionally "
                          f"\"group\"), got {item!r}")
        if not interaction and (not isinstance(item, dict) or not {"pair", "metric"} <= set(item)
                                or set(item) - QUESTION_KEYS):
            raise RDError(f"{where}: expected an object with \"pair\" and \"metric\" (and optionally \"group\"), "
                          f"or with \"{INTERACTION}\" instead of \"pair\", got {item!r}")
        if interaction:
            backbones, methods = parse_interaction(item[INTERACTION], where)
        else:
            pairs = parse_pairs(item["pair"], f"{where} \"pair\"")
            if not pairs or len(pairs) != 1:
                raise RDError(f"{where} \"pair\": expected one pair [a, b], got {item['pair']!r}")
        if item["metric"] not in PAIRED_METRICS:
            raise RDError(f"{where} \"metric\": expected one of {', '.join(PAIRED_METRICS)}, got {item['metric']!r}")
        group = item.get("group", OVERALL)
        if not isinstance(group, str) or not group:
            raise RDError(f"{where} \"group\": expected a group name such as \"overall\" or \"texture\", got {group!r}")
        question = InteractionQuestion(backbones, methods, item["metric"], group) if interaction else \
            PrimaryQuestion(pairs[0], item["metric"], group)
        if question in questions:
            raise RDError(f"{where}: the same question as an earlier entry ({question.key})")
        questions.append(question)
    return questions


def read_study_plan(path: str | Path | None) -> StudyPlan:
    """The comparison's part of a study config file ("pairs", "primary", "claim_basis"; other keys are for other
    commands); defaults without a file."""
    if path is None:
        return StudyPlan(None, None, DEFAULT_CLAIM_BASIS, "")
    source = f"--config {path}"
    data = read_config_json(path)
    pairs = read_pairs_config(path)
    primary = parse_primary(data["primary"], source) if "primary" in data else None
    basis = parse_claim_basis(data.get("claim_basis", DEFAULT_CLAIM_BASIS), source)
    return StudyPlan(pairs, primary, basis, source)


def default_primary(pairs: list[tuple[str, str]]) -> list[PrimaryQuestion]:
    """Each compared pair on overall image AUROC, pixel AUROC and AUPRO (DEFAULT_PRIMARY_METRICS: the newer paired
    metrics are primary only where a study config declares them)."""
    return [PrimaryQuestion(pair, metric) for pair in pairs for metric in DEFAULT_PRIMARY_METRICS]


def check_primary(questions: list[Question], pairs: list[tuple[str, str]], runs_frame: pd.DataFrame,
                  source: str) -> None:
    """Every primary question names a compared pair (as a − b), or for an interaction four compared arms, and a
    group these runs have; else an RDError."""
    where = f"{source} \"primary\"" if source else "primary"
    groups = sorted({group for _, group, _ in group_members(runs_frame)})
    compared = {arm for pair in pairs for arm in pair}
    for question in questions:
        missing = [arm for arm in question.arms if arm not in compared] if isinstance(question, InteractionQuestion) \
            else []
        if missing:
            raise RDError(f"{where}: the interaction {question.key[0]} needs the arms {', '.join(missing)}, which no "
                          f"compared pair names (compared, as a,b: {'; '.join(','.join(p) for p in pairs)}); add the "
                          f"pairs {' and '.join(','.join(p) for p in question.pairs)} to \"pairs\" or --pair")
        if isinstance(question, PrimaryQuestion) and question.pair not in pairs:
            raise RDError(f"{where}: pair {','.join(question.pair)} is not compared (compared, as a,b: "
                          f"{'; '.join(','.join(p) for p in pairs)}); add it to \"pairs\" or --pair")
        if question.group not in groups:
            raise RDError(f"{where}: group {question.group!r} has no runs here; groups: {', '.join(groups)}")


def _answer_row(runs_frame: pd.DataFrame, question: Question, dataset: str, group: str,
                categories: list[str]) -> dict[str, Any]:
    if isinstance(question, InteractionQuestion):
        return answer_interaction(runs_frame, question, dataset, group, categories)
    return answer_pair(runs_frame, question.pair, dataset, group, categories, question.metric)


def primary_tests(runs_frame: pd.DataFrame, questions: list[Question], claim_basis: str) -> pd.DataFrame:
    """One row per primary question (and dataset): both answers (inference.py), Holm over the primary family for
    each (pair questions and interactions together), and whether it is significant on the claim basis (its
    Holm-adjusted p below ALPHA)."""
    rows = [_answer_row(runs_frame, question, dataset, group, categories)
            for question in questions for dataset, group, categories in group_members(runs_frame)
            if group == question.group]
    frame = family_table(rows, claim_basis, ALPHA)
    return frame.reindex(columns=PRIMARY_COLUMNS) if len(frame) else pd.DataFrame(columns=PRIMARY_COLUMNS)


def planning_rows(cells: pd.DataFrame, n_questions: int, key: tuple[str, ...]) -> list[dict[str, Any]]:
    """Per answer: the spreads the plan rests on and the smallest difference it detects with POWER at Holm's first
    step (ALPHA / n_questions) for each of PLANNED_SEEDS, by simulating its test (planning.py; draws seeded by
    ``key``); NaN, with the reason in "note", where the answer cannot be computed with that design."""
    components = components_from_cells(cells)
    alpha = ALPHA / n_questions
    seed_sd = math.sqrt(float(np.mean(components.seed_var))) if components.seed_known else np.nan
    category_sd = math.sqrt(components.category_var) if np.isfinite(components.category_var) else np.nan
    rows = []
    for answer, label in BASES.items():
        values = {column: detectable(answer, components, s, alpha, POWER, seeded_rng("planning", *key, answer, s))
                  for s, column in DETECTABLE_COLUMNS.items()}
        notes = []
        if answer == "fixed-categories":
            notes.append("1 seed: cannot be computed (no seed-to-seed variance)")
        if not components.seed_known:
            notes.append("seed-to-seed variance unknown (one seed per category here)")
        if components.n_categories < 2 and answer == "new-categories":
            notes.append("fewer than 2 categories: cannot be computed")
        rows.append({"answer": label, "seed_sd": seed_sd,
                     "category_sd": category_sd if answer == "new-categories" else np.nan, **values,
                     "note": "; ".join(notes)})
    return rows


def _question_cells(frame: pd.DataFrame, question: Question, categories: list[str]) -> pd.DataFrame:
    if isinstance(question, InteractionQuestion):
        return interaction_cells(frame, question, categories)[0]
    return pair_cells(frame, question.pair, categories, question.metric)[0]


def planning_table(runs_frame: pd.DataFrame, questions: list[Question], primary: pd.DataFrame) -> pd.DataFrame:
    """How many seeds? Per primary question, dataset and answer: the smallest true difference detected with POWER at
    Holm's first step (ALPHA / number of primary tests) for 1, 3 and 5 seeds per category, from simulating the
    answer's test under the seed variances (per category) and, for the answer about new categories, the spread of
    the categories (their seed-averaged differences' variance less the seed part, floored at 0). An interaction's
    cells (differences of differences) enter the same variance model: a cell is its category's effect plus seed
    noise (now of four runs), calibrated by calibration.py's interaction scenarios."""
    members = {(dataset, group): categories for dataset, group, categories in group_members(runs_frame)}
    rows = []
    for question in questions:
        label, group, metric = question.key
        for _, row in primary[(primary["pair"] == label) & (primary["group"] == group)
                              & (primary["metric"] == metric)].iterrows():
            frame = runs_frame[runs_frame["dataset"] == row["dataset"]]
            cells = _question_cells(frame, question, members[(row["dataset"], group)])
            base = {"pair": row["pair"], "dataset": row["dataset"], "group": group, "metric": metric,
                    "n_categories": row["n_categories"], "seeds": row["seeds"], "observed_diff": row["mean_diff"]}
            if cells.empty:
                arms = "all four arms" if isinstance(question, InteractionQuestion) else "both backbones"
                rows += [{**base, "answer": answer, "note": f"no category has a cell of {arms}"}
                         for answer in BASES.values()]
                continue
            rows += [{**base, **plan} for plan in planning_rows(cells, len(primary), (*question.key, row["dataset"]))]
    return pd.DataFrame(rows).reindex(columns=PLANNING_COLUMNS)


@dataclass
class Decision:
    """The primary family's answers and the planning table, with where the questions came from."""

    questions: list[Question]
    claim_basis: str
    declared: bool  # the config file declared them (else the default family)
    source: str
    primary: pd.DataFrame
    planning: pd.DataFrame


def decide(runs_frame: pd.DataFrame, plan: StudyPlan, pairs: list[tuple[str, str]]) -> Decision:
    """The decision rule on the runs: the declared (or default) primary questions, their answers and the plan."""
    questions = plan.primary if plan.primary is not None else default_primary(pairs)
    check_primary(questions, pairs, runs_frame, plan.source)
    primary = primary_tests(runs_frame, questions, plan.claim_basis)
    return Decision(questions, plan.claim_basis, plan.primary is not None, plan.source, primary,
                    planning_table(runs_frame, questions, primary))

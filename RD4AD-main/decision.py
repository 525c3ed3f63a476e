"""The study's decision rule: its primary questions, answered twice, and how many seeds they need.

A study declares its primary questions in its config file (``"primary"``; default: every compared pair on overall
image AUROC, pixel AUROC and AUPRO) and the answer its claim rests on (``"claim_basis"``). Each question gets
- **on these categories** (``fixed-categories``, the default): the categories are the benchmark, fixed; a paired
  sign-flip permutation test swaps the two backbones' results within each (category, seed) cell, exact when the
  two backbones are exchangeable (whole runs are swapped: two backbones' raw scores live on different scales, so
  swapping single images' scores would test the scales, not the metric);
- **to new categories** (``new-categories``): Wilcoxon's signed-rank test over the categories' seed-averaged
  differences, with the smallest p its number of categories can reach.
Holm's correction runs over the primary family alone, so printing more exploratory tables or comparing more pairs
leaves a declared question's answer unchanged; everything else is exploratory (comparison.with_exploratory).
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from comparison import (ALPHA, OVERALL, PAIRED_METRICS, POWER, Comparison, cell_differences, group_members,
                        image_variance, pair_label, parse_pairs, read_config_json, read_pairs_config)
from errors import RDError
from significance import (EXACT_FLIP_CELLS, SignFlipResult, detectable_difference, holm, sign_flip_test,
                          wilcoxon_min_p)

__all__ = ["CLAIM_BASES", "DEFAULT_CLAIM_BASIS", "Decision", "N_PERMUTATIONS", "PLANNED_SEEDS", "PRIMARY_COLUMNS",
           "PrimaryQuestion", "StudyPlan", "WILCOXON_EFFICIENCY", "check_primary", "decide", "default_primary", "detectable_differences",
           "fixed_categories_test", "parse_claim_basis", "parse_primary", "planning_table", "primary_tests",
           "read_study_plan"]

# claim_basis value -> what the answer generalises to (the report's wording)
CLAIM_BASES = {"fixed-categories": "on these categories", "new-categories": "to new categories"}
DEFAULT_CLAIM_BASIS = "fixed-categories"
# Drawn sign patterns when a question has more than EXACT_FLIP_CELLS cells: p resolves to 1e-4, far below the
# 0.05 / (number of primary questions) that Holm's first step needs.
N_PERMUTATIONS = 10_000
PLANNED_SEEDS = (1, 3, 5)
WILCOXON_EFFICIENCY = 3.0 / math.pi  # asymptotic relative efficiency of Wilcoxon to the t-test for normal data
PRIMARY_COLUMNS = ["pair", "metric", "group", "n_categories", "n_seeds", "mean_diff", "ci_low", "ci_high", "p_fixed",
                   "p_fixed_holm", "p_wilcoxon", "min_reachable_p_wilcoxon", "claim_basis", "significant",
                   "p_wilcoxon_holm", "min_reachable_p_fixed", "wins_a", "wins_b", "dataset", "note", "flags"]
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


@dataclass(frozen=True)
class StudyPlan:
    """What a study config file says about the comparison: pairs, primary questions, claim basis (None: default)."""

    pairs: list[tuple[str, str]] | None
    primary: list[PrimaryQuestion] | None
    claim_basis: str
    source: str  # "--config FILE" or "" (no file)


def parse_claim_basis(value: Any, source: str) -> str:
    """``fixed-categories`` or ``new-categories``; anything else is an RDError naming ``source``."""
    if value not in CLAIM_BASES:
        raise RDError(f"{source} \"claim_basis\": expected one of {', '.join(map(repr, CLAIM_BASES))}, got {value!r}")
    return value


def parse_primary(value: Any, source: str) -> list[PrimaryQuestion]:
    """The "primary" list: objects with "pair" ([a, b] or "a,b"), "metric" (a metrics.json key of the paired
    metrics) and optionally "group" (default overall); an RDError naming ``source`` and the entry otherwise."""
    if not isinstance(value, list) or not value:
        raise RDError(f"{source} \"primary\": expected a non-empty list of {{\"pair\": [a, b], \"metric\": ..., "
                      f"\"group\": ...}} objects, got {value!r}")
    questions = []
    for number, item in enumerate(value):
        where = f"{source} \"primary\"[{number}]"
        if not isinstance(item, dict) or not {"pair", "metric"} <= set(item) or set(item) - QUESTION_KEYS:
            raise RDError(f"{where}: expected an object with \"pair\" and \"metric\" (and optionally \"group\"), "
                          f"got {item!r}")
        pairs = parse_pairs(item["pair"], f"{where} \"pair\"")
        if not pairs or len(pairs) != 1:
            raise RDError(f"{where} \"pair\": expected one pair [a, b], got {item['pair']!r}")
        if item["metric"] not in PAIRED_METRICS:
            raise RDError(f"{where} \"metric\": expected one of {', '.join(PAIRED_METRICS)}, got {item['metric']!r}")
        group = item.get("group", OVERALL)
        if not isinstance(group, str) or not group:
            raise RDError(f"{where} \"group\": expected a group name such as \"overall\" or \"texture\", got {group!r}")
        question = PrimaryQuestion(pairs[0], item["metric"], group)
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
    """Each compared pair on overall image AUROC, pixel AUROC and AUPRO."""
    return [PrimaryQuestion(pair, metric) for pair in pairs for metric in PAIRED_METRICS]


def check_primary(questions: list[PrimaryQuestion], pairs: list[tuple[str, str]], runs_frame: pd.DataFrame,
                  source: str) -> None:
    """Every primary question names a compared pair (as a − b) and a group these runs have; else an RDError."""
    where = f"{source} \"primary\"" if source else "primary"
    groups = sorted({group for _, group, _ in group_members(runs_frame)})
    for question in questions:
        if question.pair not in pairs:
            raise RDError(f"{where}: pair {','.join(question.pair)} is not compared (compared, as a,b: "
                          f"{'; '.join(','.join(p) for p in pairs)}); add it to \"pairs\" or --pair")
        if question.group not in groups:
            raise RDError(f"{where}: group {question.group!r} has no runs here; groups: {', '.join(groups)}")


def fixed_categories_test(cells: np.ndarray, question: PrimaryQuestion,
                          n_draws: int = N_PERMUTATIONS) -> SignFlipResult:
    """The "on these categories" answer: the sign-flip test over the (category, seed) cells, its random patterns
    (if any) seeded by the question alone, so other questions and tables never change it."""
    rng = np.random.default_rng(zlib.crc32("/".join(question.key).encode()))
    return sign_flip_test(cells, n_draws, rng)


def _flip_min_p(n_cells: int, n_draws: int = N_PERMUTATIONS) -> float:
    return 2.0 / 2 ** n_cells if n_cells <= EXACT_FLIP_CELLS else 1.0 / (1 + n_draws)


def _primary_row(runs_frame: pd.DataFrame, question: PrimaryQuestion, row: pd.Series,
                 categories: list[str], claim_basis: str) -> dict[str, Any]:
    out = {key: row[key] for key in ("pair", "metric", "group", "n_categories", "n_seeds", "mean_diff", "ci_low",
                                     "ci_high", "p_wilcoxon", "wins_a", "wins_b", "dataset", "note", "flags")}
    out.update(claim_basis=claim_basis, p_fixed=np.nan, min_reachable_p_fixed=np.nan)
    untied = int(row["wins_a"] + row["wins_b"])
    out["min_reachable_p_wilcoxon"] = wilcoxon_min_p(untied)
    _, _, cells = cell_differences(runs_frame, question.pair, categories, question.metric)
    if np.any(cells != 0):  # every cell tied (e.g. both perfect): nothing to swap, not tested
        result = fixed_categories_test(cells, question)
        out.update(p_fixed=result.p_value, min_reachable_p_fixed=result.min_p)
    return out


def primary_tests(runs_frame: pd.DataFrame, comparison: Comparison, questions: list[PrimaryQuestion],
                  claim_basis: str) -> pd.DataFrame:
    """One row per primary question (and dataset): both answers, Holm over the primary family for each, and
    whether it is significant on the claim basis (its Holm-adjusted p below ALPHA)."""
    members = {(dataset, group): categories for dataset, group, categories in group_members(runs_frame)}
    aggregate = comparison.aggregate
    rows = []
    for question in questions:
        label, group, metric = question.key
        for _, row in aggregate[(aggregate["pair"] == label) & (aggregate["group"] == group)
                                & (aggregate["metric"] == metric)].iterrows():
            rows.append(_primary_row(runs_frame, question, row, members[(row["dataset"], group)], claim_basis))
    frame = pd.DataFrame(rows, columns=PRIMARY_COLUMNS)
    for column in ("mean_diff", "ci_low", "ci_high", "p_fixed", "p_wilcoxon", "min_reachable_p_wilcoxon",
                   "min_reachable_p_fixed"):
        frame[column] = frame[column].astype(float)
    frame["p_fixed_holm"] = holm(frame["p_fixed"])
    frame["p_wilcoxon_holm"] = holm(frame["p_wilcoxon"])
    basis = frame["p_fixed_holm"] if claim_basis == "fixed-categories" else frame["p_wilcoxon_holm"]
    frame["significant"] = (basis < ALPHA).astype(bool)
    return frame


def detectable_differences(cells: np.ndarray, image_var: np.ndarray, n_questions: int) -> dict[str, Any]:
    """The spreads (seed_sd, image_sd, category_sd), the detectable differences of both answers ("fixed", "new":
    seeds -> difference) for PLANNED_SEEDS and why a level is out of reach ("notes"), from (categories, seeds) cell differences and each category's
    image variance, at Holm's first step over ``n_questions`` (the variance model of planning_table)."""
    n_categories, n_seeds = cells.shape
    alpha = ALPHA / n_questions  # Holm's first step: the smallest p of the family must beat alpha / m
    seed_var = cells.var(axis=1, ddof=1)
    averaged = cells.mean(axis=1)
    noise_now = seed_var / n_seeds + image_var
    tau2 = max(0.0, float(np.var(averaged, ddof=1) - noise_now.mean())) if n_categories > 1 else float("nan")
    out: dict[str, Any] = {"seed_sd": math.sqrt(seed_var.mean()), "image_sd": math.sqrt(image_var.mean()),
                           "category_sd": math.sqrt(tau2) if not math.isnan(tau2) else np.nan}
    fixed, new = {}, {}
    unreachable = [f"{seeds} seed{'s' if seeds > 1 else ''}: {n_categories * seeds} cells, smallest sign-flip p "
                   f"{_flip_min_p(n_categories * seeds):.3g}" for seeds in PLANNED_SEEDS
                   if _flip_min_p(n_categories * seeds) >= alpha]
    out["notes"] = {
        "fixed": f"cannot reach p < {alpha:.3g} with {'; '.join(unreachable)}" if unreachable else "",
        "new": (f"cannot reach p < {alpha:.3g} with {n_categories} categories (smallest Wilcoxon p "
                f"{wilcoxon_min_p(n_categories):.3g}), whatever the seeds" if wilcoxon_min_p(n_categories) >= alpha
                else ""),
    }
    for seeds in PLANNED_SEEDS:
        noise = seed_var / seeds + image_var
        fixed[seeds] = (detectable_difference(math.sqrt(noise.sum()) / n_categories, alpha, POWER)
                        if _flip_min_p(n_categories * seeds) < alpha else np.nan)
        new[seeds] = (detectable_difference(math.sqrt((tau2 + noise.mean()) / n_categories), alpha, POWER)
                      / math.sqrt(WILCOXON_EFFICIENCY) if wilcoxon_min_p(n_categories) < alpha else np.nan)
    out["fixed"], out["new"] = fixed, new
    return out


def planning_table(runs_frame: pd.DataFrame, comparison: Comparison, questions: list[PrimaryQuestion],
                   primary: pd.DataFrame) -> pd.DataFrame:
    """How many seeds? Per primary question and answer: the smallest true difference detected with POWER at
    Holm's first step (ALPHA / number of primary tests) for 1, 3 and 5 seeds, from the observed seed variance
    (per category, over seeds), image variance (bootstrap over test images, models fixed) and, for the answer
    about new categories, the between-category variance (the categories' spread less that noise, floored at 0).
    NaN where the test cannot reach that level at all (too few cells or categories) or the variance is unknown."""
    members = {(dataset, group): categories for dataset, group, categories in group_members(runs_frame)}
    rows = []
    for question in questions:
        for _, row in primary[primary["pair"] == question.key[0]].iterrows():
            if (row["group"], row["metric"]) != (question.group, question.metric):
                continue
            categories = members[(row["dataset"], question.group)]
            complete, seeds, cells = cell_differences(runs_frame, question.pair, categories, question.metric)
            base = {"pair": row["pair"], "dataset": row["dataset"], "group": row["group"], "metric": row["metric"],
                    "n_categories": len(complete), "n_seeds": len(seeds), "observed_diff": row["mean_diff"]}
            image_var = np.array([image_variance(runs_frame, question.pair, c, seeds, question.metric,
                                                 comparison.resamples) for c in complete])
            known = len(complete) > 0 and len(seeds) >= 2 and not np.isnan(image_var).any()
            plan = detectable_differences(cells, image_var, len(primary)) if known else None
            note = "" if known else ("seed variance unknown: fewer than 2 seeds" if len(seeds) < 2 else
                                     "image variance unknown: a run has no replicates (no maps.npz)")
            for answer, key in (("on these categories", "fixed"), ("to new categories", "new")):
                values = {f"detectable_{s}_seed{'s' if s > 1 else ''}": (plan[key][s] if plan else np.nan)
                          for s in PLANNED_SEEDS}
                spreads = {name: (plan[name] if plan else np.nan) for name in ("seed_sd", "image_sd", "category_sd")}
                rows.append({**base, "answer": answer, **spreads, **values,
                             "note": note or (plan["notes"][key] if plan else "")})
    return pd.DataFrame(rows)


@dataclass
class Decision:
    """The primary family's answers and the planning table, with where the questions came from."""

    questions: list[PrimaryQuestion]
    claim_basis: str
    declared: bool  # the config file declared them (else the default family)
    source: str
    primary: pd.DataFrame
    planning: pd.DataFrame


def decide(runs_frame: pd.DataFrame, comparison: Comparison, plan: StudyPlan,
           pairs: list[tuple[str, str]]) -> Decision:
    """The decision rule on a comparison: the declared (or default) primary questions and their answers."""
    questions = plan.primary if plan.primary is not None else default_primary(pairs)
    check_primary(questions, pairs, runs_frame, plan.source)
    primary = primary_tests(runs_frame, comparison, questions, plan.claim_basis)
    return Decision(questions, plan.claim_basis, plan.primary is not None, plan.source, primary,
                    planning_table(runs_frame, comparison, questions, primary))

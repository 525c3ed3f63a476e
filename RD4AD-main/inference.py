"""One question, "is the difference between two arms different from 0?", answered from a table of cell differences.

A cell is one (category, seed) pair; its difference is computed by the caller: two arms' metric values of the same
category and seed (``paired_cells``), a per-image metric's mean paired difference (``paired_units`` and
``unit_cells``) or the difference of two paired differences (``contrast_cells``). Arm and metric names are data, so
nothing here knows backbones or today's three metrics. Every category weighs the same; a category with more or fewer
seeds enters with the seeds it has, and one without any cell is named with the reason, never silently dropped.

Two sampling models, one procedure each; the p-value and the interval come from the same t statistic, so the
interval excludes 0 exactly when p < 1 − confidence:
- **fixed-categories**, "on these categories": random are the training seeds; the categories and their test images
  are fixed. Estimand: the mean over these categories of each category's expected difference over training seeds on
  its test set. Estimate: the mean of the categories' seed-averaged differences. Its variance: each category's
  seed-to-seed variance over its seed count (a single-seed category takes the variance pooled over the others),
  summed over categories / C^2, with Welch-Satterthwaite degrees of freedom (seed variances differ between
  categories: a category at the ceiling hardly varies). With one seed everywhere it cannot be computed.
- **new-categories**, "to new categories": random are also the categories (a draw from a population of such
  categories, with their seeds and test images). Estimand: the population mean of a category's difference. Student's
  t over the categories' seed-averaged differences, C − 1 degrees of freedom.
Wilcoxon's signed-rank test over the categories (significance.signed_rank_test) travels with both as a check of the
majority's direction; it has no interval and decides nothing. calibration.py checks both answers by simulation.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterable

import numpy as np
import pandas as pd
from scipy import stats

from errors import RDError
from significance import SignedRankResult, holm, signed_rank_test

__all__ = ["ALPHA", "BASES", "CELL_COLUMNS", "CONFIDENCE", "SE_FLOOR", "Answer", "Answers", "TArrays",
           "answer_cells", "answer_columns", "cell_matrix", "category_intervals", "check_cells", "compare_arms",
           "contrast_cells", "family_table", "fixed_arrays", "new_arrays", "paired_cells", "paired_units",
           "question_table", "seed_list_text", "seed_range_text", "t_answer", "t_quantiles",
           "unit_cells"]

ALPHA = 0.05  # the level of every test; intervals are at 1 - ALPHA
CONFIDENCE = 1.0 - ALPHA
# basis -> what its answer generalises to (the report's wording)
BASES = {"fixed-categories": "on these categories", "new-categories": "to new categories"}
CELL_COLUMNS = ["category", "seed", "difference"]


# ----------------------------------------------------------------------------------------------------
# the procedures, vectorised over studies (the report calls them with one study, calibration.py with thousands)
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TArrays:
    """A t answer for every study of a batch: estimate, standard error, degrees of freedom, t, two-sided p and the
    interval; NaN (but the estimate) where the answer cannot be computed."""

    estimate: np.ndarray
    se: np.ndarray
    df: np.ndarray
    statistic: np.ndarray
    p_value: np.ndarray
    low: np.ndarray
    high: np.ndarray


# A standard error below this share of the data's largest magnitude is floating-point noise (e.g. two categories
# whose seed means are the same fraction, summed in another order): no spread, so no t.
SE_FLOOR = 1e-12


def t_quantiles(df: np.ndarray, probability: float) -> np.ndarray:
    """Student's t quantile at ``probability`` for each of ``df`` (its shape), computed once per distinct df: a batch
    of simulated studies has few distinct df (C − 1: just one), and the quantile is the costly part."""
    distinct, inverse = np.unique(df, return_inverse=True)
    return stats.t.ppf(probability, distinct)[inverse.reshape(np.shape(df))]


def t_answer(estimate: np.ndarray, se: np.ndarray, df: np.ndarray, computable: np.ndarray, confidence: float,
             scale: np.ndarray) -> TArrays:
    """t = estimate / se on ``df`` degrees of freedom: p and the interval from the one statistic; not computable
    where se is 0 up to floating-point noise (SE_FLOOR x ``scale``, the data's largest magnitude)."""
    ok = computable & np.isfinite(se) & (se > SE_FLOOR * scale) & np.isfinite(df) & (df > 0)
    safe_se, safe_df = np.where(ok, se, 1.0), np.where(ok, df, 1.0)
    statistic = estimate / safe_se
    p_value = 2.0 * stats.t.sf(np.abs(statistic), safe_df)
    half = t_quantiles(safe_df, 0.5 + confidence / 2.0) * safe_se
    nan = np.full(np.shape(estimate), np.nan)
    pick = lambda values: np.where(ok, values, nan)  # noqa: E731
    return TArrays(np.asarray(estimate, dtype=np.float64), pick(se), pick(df), pick(statistic), pick(p_value),
                   pick(estimate - half), pick(estimate + half))


def fixed_arrays(cells: np.ndarray, confidence: float = CONFIDENCE) -> TArrays:
    """The "on these categories" answer of every study in ``cells`` (..., C, S): NaN where a category has fewer
    seeds, every category at least one cell. Single-seed categories take the within-category variance pooled over
    the multi-seed ones, so the variance is a sum a_c s_c^2 of independent seed variances; Welch-Satterthwaite
    gives its degrees of freedom."""
    cells = np.asarray(cells, dtype=np.float64)
    present = ~np.isnan(cells)
    n = present.sum(axis=-1)
    if (n == 0).any():
        raise ValueError("every category needs at least one cell")
    # Deviations from the category's first cell: equal cells give exactly 0 (a mean would leave rounding noise).
    shifted = np.where(present, cells - cells[..., :1], 0.0)
    mean_shift = shifted.sum(axis=-1) / n
    means = cells[..., 0] + mean_shift
    centred = np.where(present, shifted - mean_shift[..., None], 0.0)
    ss = (centred ** 2).sum(axis=-1)
    multi = n >= 2
    df_pool = (n - 1).sum(axis=-1)
    single = (n == 1).sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        seed_var = np.where(multi, ss / np.maximum(n - 1, 1), 0.0)
        weight = np.where(multi, 1.0 / n + single[..., None] * (n - 1) / df_pool[..., None], 0.0)
        part = weight * seed_var
        variance = part.sum(axis=-1)
        df = variance ** 2 / (part ** 2 / np.maximum(n - 1, 1)).sum(axis=-1)
    n_categories = cells.shape[-2]
    scale = np.nanmax(np.abs(cells), axis=(-2, -1))
    return t_answer(means.mean(axis=-1), np.sqrt(variance) / n_categories, df, df_pool >= 1, confidence, scale)


def new_arrays(means: np.ndarray, confidence: float = CONFIDENCE) -> TArrays:
    """The "to new categories" answer of every study in ``means`` (..., C): the categories' seed-averaged
    differences; Student's t over categories (C − 1 degrees of freedom)."""
    means = np.asarray(means, dtype=np.float64)
    n_categories = means.shape[-1]
    estimate = means.mean(axis=-1)
    if n_categories < 2:
        nan = np.full(estimate.shape, np.nan)
        return t_answer(estimate, nan, nan, np.zeros(estimate.shape, bool), confidence, nan)
    se = means.std(axis=-1, ddof=1) / np.sqrt(n_categories)
    return t_answer(estimate, se, np.full(estimate.shape, n_categories - 1.0), np.ones(estimate.shape, bool),
                     confidence, np.abs(means).max(axis=-1))


# ----------------------------------------------------------------------------------------------------
# tables of cells
# ----------------------------------------------------------------------------------------------------
def check_cells(cells: pd.DataFrame, source: str = "cells") -> pd.DataFrame:
    """``cells`` with the columns category, seed, difference (finite), one row per (category, seed), sorted;
    anything else is an RDError naming ``source``."""
    missing = [column for column in CELL_COLUMNS if column not in cells.columns]
    if missing:
        raise RDError(f"{source}: expected the columns {', '.join(CELL_COLUMNS)}, missing {', '.join(missing)}")
    frame = cells[CELL_COLUMNS].copy()
    frame["category"] = frame["category"].astype(str)
    frame["difference"] = pd.to_numeric(frame["difference"], errors="coerce").astype(np.float64)
    if not np.isfinite(frame["difference"]).all():
        bad = frame[~np.isfinite(frame["difference"])].iloc[0]
        raise RDError(f"{source}: expected a finite difference in every row, got {cells.loc[bad.name, 'difference']!r}"
                      f" for category {bad['category']}, seed {bad['seed']}")
    duplicated = frame.duplicated(["category", "seed"])
    if duplicated.any():
        row = frame[duplicated].iloc[0]
        raise RDError(f"{source}: category {row['category']}, seed {row['seed']} appears more than once; expected one "
                      "row per (category, seed)")
    return frame.sort_values(["category", "seed"], kind="stable", ignore_index=True)


def cell_matrix(cells: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    """(categories, (C, S_max) differences): a row per category, its cells first, NaN after its last seed."""
    frame = check_cells(cells)
    codes, categories = pd.factorize(frame["category"])
    position = frame.groupby(codes).cumcount().to_numpy()
    matrix = np.full((len(categories), int(position.max()) + 1 if len(frame) else 0), np.nan)
    matrix[codes, position] = frame["difference"].to_numpy()
    return list(categories), matrix


@dataclass(frozen=True)
class Answer:
    """One answer: estimate (the mean of the categories' seed-averaged differences), its interval and p from one t
    statistic, and why it was not computed (``note``; "" when it was)."""

    basis: str
    estimate: float
    ci_low: float
    ci_high: float
    p_value: float
    statistic: float
    df: float
    se: float
    confidence: float
    note: str = ""

    @property
    def computed(self) -> bool:
        return not np.isnan(self.p_value)


@dataclass(frozen=True)
class Answers:
    """Both answers to one question, the signed-rank check and what the answers rest on: each category's
    seed-averaged difference and seed count, the categories that could not enter and the runs left out (a seed
    the other arm lacks), with the reasons."""

    fixed: Answer
    new: Answer
    signed_rank: SignedRankResult
    differences: pd.Series  # category -> seed-averaged difference
    seeds: pd.Series  # category -> cells (seeds) it has
    excluded: dict[str, str] = field(default_factory=dict)  # category without a cell -> why
    unpaired: dict[str, str] = field(default_factory=dict)  # category -> its runs left out (no partner seed)

    def answer(self, basis: str) -> Answer:
        return self.fixed if basis == "fixed-categories" else self.new

    @property
    def n_categories(self) -> int:
        return len(self.differences)

    @property
    def wins(self) -> tuple[int, int]:
        """Categories where a is higher, where b is higher (ties: neither)."""
        return int((self.differences > 0).sum()), int((self.differences < 0).sum())

    def seeds_text(self) -> str:
        """"3", or "2-4" when categories have different seed counts."""
        return seed_range_text(self.seeds)

    def seed_counts_text(self) -> str:
        """The seed count of every category that differs from the most common one: "bottle 4; the others 3"."""
        if self.seeds.empty:
            return ""
        common = int(self.seeds.mode().max())
        odd = [f"{category} {count}" for category, count in self.seeds.items() if count != common]
        return "; ".join(odd + [f"the others {common}"]) if odd else f"every category {common}"


def _answer(basis: str, arrays: TArrays, confidence: float, note: str) -> Answer:
    value = lambda array: float(np.asarray(array).reshape(-1)[0])  # noqa: E731
    answer = Answer(basis, value(arrays.estimate), value(arrays.low), value(arrays.high), value(arrays.p_value),
                    value(arrays.statistic), value(arrays.df), value(arrays.se), confidence)
    return answer if answer.computed else replace(answer, note=note)


def _fixed_note(seeds: pd.Series, matrix: np.ndarray) -> str:
    if not np.nanmax(np.abs(matrix), initial=0.0):
        return "not tested: every cell is tied (difference 0)"
    if (seeds < 2).all():
        return "cannot be computed for this design: one seed per category, so the seed-to-seed variance is unknown"
    return "cannot be computed: no category's seeds differ from each other, so the seed-to-seed variance is 0"


def _new_note(differences: pd.Series) -> str:
    if len(differences) < 2:
        return "cannot be computed for this design: fewer than 2 categories, so their spread is unknown"
    if not differences.abs().max():
        return "not tested: every category is tied (difference 0)"
    return "cannot be computed: every category has the same difference, so their spread is 0"


def answer_cells(cells: pd.DataFrame, confidence: float = CONFIDENCE, excluded: dict[str, str] | None = None,
                 unpaired: dict[str, str] | None = None) -> Answers:
    """Both answers from a table of cell differences (category, seed, difference); ``excluded`` names the categories
    the caller could not turn into cells and ``unpaired`` the runs it left out (with the reasons), carried along."""
    categories, matrix = cell_matrix(cells)
    seeds = pd.Series((~np.isnan(matrix)).sum(axis=1), index=categories, dtype=int)
    means = np.nanmean(matrix, axis=1) if categories else np.zeros(0)
    scale = float(np.nanmax(np.abs(matrix), initial=0.0))
    means[np.abs(means) <= SE_FLOOR * scale] = 0.0  # a tie summed in another order is still a tie
    differences = pd.Series(means, index=categories, dtype=float)
    notes = {"excluded": dict(excluded or {}), "unpaired": dict(unpaired or {})}
    if not categories:
        empty = Answer("", np.nan, np.nan, np.nan, np.nan, np.nan, np.nan, np.nan, confidence,
                       "not averaged: no category has a cell of both arms")
        return Answers(replace(empty, basis="fixed-categories"), replace(empty, basis="new-categories"),
                       signed_rank_test([]), differences, seeds, **notes)
    fixed = _answer("fixed-categories", fixed_arrays(matrix[None], confidence), confidence,
                    _fixed_note(seeds, matrix))
    new = _answer("new-categories", new_arrays(differences.to_numpy()[None], confidence), confidence,
                  _new_note(differences))
    return Answers(fixed, new, signed_rank_test(differences.to_numpy()), differences, seeds, **notes)


def category_intervals(cells: pd.DataFrame, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Per category: its seed count, seed-averaged difference and the t interval from its own seeds (test images
    fixed; NaN with one seed): the forest plot's points."""
    rows = []
    for category, group in check_cells(cells).groupby("category", sort=True):
        values = group["difference"].to_numpy()
        arrays = fixed_arrays(values[None, None, :], confidence)
        rows.append({"category": category, "n_seeds": len(values), "difference": float(values.mean()),
                     "ci_low": float(arrays.low[0]), "ci_high": float(arrays.high[0])})
    return pd.DataFrame(rows, columns=["category", "n_seeds", "difference", "ci_low", "ci_high"])


# ----------------------------------------------------------------------------------------------------
# cells from a tidy table of runs (or of per-image values)
# ----------------------------------------------------------------------------------------------------
def _require_columns(frame: pd.DataFrame, columns: Iterable[str], source: str) -> None:
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise RDError(f"{source}: expected the columns {', '.join(columns)}; missing {', '.join(missing)} "
                      f"(columns: {', '.join(map(str, frame.columns))})")


def seed_list_text(seeds: Iterable) -> str:
    """The seeds in order, "0, 1, 2", or "none": how a note names the seeds an arm (or a pair) ran."""
    return ", ".join(map(str, sorted(seeds))) or "none"


def seed_range_text(counts: Iterable[int]) -> str:
    """The categories' seed counts as "3", or "2-4" when they differ ("0" without any)."""
    counts = [int(count) for count in counts]
    if not counts:
        return "0"
    low, high = min(counts), max(counts)
    return str(low) if low == high else f"{low}-{high}"


def paired_cells(runs: pd.DataFrame, a: str, b: str, metric: str, arm: str = "arm",
                 categories: Iterable[str] | None = None) -> tuple[pd.DataFrame, dict[str, str], dict[str, str]]:
    """The cells of a − b on ``metric``: one per (category, seed) both arms ran with the metric measured; the
    categories (of ``categories``, default every category of either arm) without any cell, with the reason; and
    the categories with measured runs whose seed the other arm lacks (left out of the cells), naming them."""
    _require_columns(runs, [arm, "category", "seed", metric], "runs table")
    chosen = runs[runs[arm].astype(str).isin([a, b])]
    keys = chosen[[arm, "category", "seed"]].astype(str)
    if keys.duplicated().any():
        first = chosen[keys.duplicated()].iloc[0]
        raise RDError(f"runs table: {arm} {first[arm]}, category {first['category']}, seed {first['seed']} appears "
                      "more than once; expected one run per (arm, category, seed)")
    # arm -> category -> seed -> value (NaN: not measured)
    values = {name: {category: dict(zip(group["seed"], group[metric].astype(float)))
                     for category, group in chosen[chosen[arm].astype(str) == name].groupby("category")}
              for name in (a, b)}
    wanted = list(categories) if categories is not None else sorted(set(chosen["category"]))
    rows, excluded, unpaired = [], {}, {}
    for category in wanted:
        runs_of = [values[name].get(category, {}) for name in (a, b)]
        seeds = [set(found) for found in runs_of]
        measured = [{s for s, value in found.items() if not np.isnan(value)} for found in runs_of]
        both = sorted(measured[0] & measured[1])
        rows += [(category, seed, runs_of[0][seed] - runs_of[1][seed]) for seed in both]
        if both:
            alone = [f"{name} seed {seed_list_text(found - measured[1 - i])}" for i, (name, found)
                     in enumerate(zip((a, b), measured)) if found - measured[1 - i]]
            if alone:
                unpaired[str(category)] = "; ".join(alone)
            continue
        reasons = [f"{name} has no run" for name, have in zip((a, b), seeds) if not have]
        reasons += [f"{metric} not measured for {name}" for name, have, ok in zip((a, b), seeds, measured)
                    if have and not ok]
        if not reasons:
            reasons = [f"no seed both arms ran ({a}: seeds {seed_list_text(measured[0])}; "
                       f"{b}: seeds {seed_list_text(measured[1])})"]
        excluded[str(category)] = "; ".join(reasons)
    return pd.DataFrame(rows, columns=CELL_COLUMNS), excluded, unpaired


def compare_arms(runs: pd.DataFrame, a: str, b: str, metric: str, arm: str = "arm",
                 categories: Iterable[str] | None = None, confidence: float = CONFIDENCE) -> Answers:
    """Both answers to "metric(a) − metric(b) = 0?" from a tidy table of runs (columns ``arm``, category, seed and
    the metric): the reviewer's entry point, no results folder needed."""
    cells, excluded, unpaired = paired_cells(runs, a, b, metric, arm, categories)
    return answer_cells(cells, confidence, excluded, unpaired)


def paired_units(units: pd.DataFrame, a: str, b: str, arm: str = "arm", unit: str = "unit",
                 value: str = "value") -> pd.DataFrame:
    """Per-unit paired differences (e.g. one value per anomalous test image): a − b for every (category, seed, unit)
    both arms have; columns category, seed, unit, difference."""
    _require_columns(units, [arm, "category", "seed", unit, value], "units table")
    keys = ["category", "seed", unit]
    sides = [units[units[arm].astype(str) == name].set_index(keys)[value].astype(float) for name in (a, b)]
    for name, side in zip((a, b), sides):
        if side.index.duplicated().any():
            raise RDError(f"units table: {arm} {name} has a (category, seed, {unit}) more than once")
    joined = pd.concat(sides, axis=1, keys=("a", "b"), join="inner").dropna()
    out = (joined["a"] - joined["b"]).rename("difference").reset_index()
    return out.rename(columns={unit: "unit"})


def unit_cells(units: pd.DataFrame) -> pd.DataFrame:
    """Cells from per-unit differences (category, seed, unit, difference): each cell's mean over its units, with
    n_units; the cell is the unit of the answers (seeds random, test images fixed)."""
    _require_columns(units, ["category", "seed", "difference"], "units table")
    grouped = units.groupby(["category", "seed"], sort=True)["difference"]
    return grouped.agg(difference="mean", n_units="count").reset_index()


def contrast_cells(first: pd.DataFrame, second: pd.DataFrame) -> pd.DataFrame:
    """An interaction contrast: first − second on every (category, seed) both tables have (e.g. (a1 − b1) −
    (a2 − b2), two methods' gains on two teachers)."""
    one, two = check_cells(first, "first cells"), check_cells(second, "second cells")
    joined = one.merge(two, on=["category", "seed"], suffixes=("_1", "_2"))
    joined["difference"] = joined["difference_1"] - joined["difference_2"]
    return joined[CELL_COLUMNS]


# ----------------------------------------------------------------------------------------------------
# a family of questions
# ----------------------------------------------------------------------------------------------------
def answer_columns(answers: Answers) -> dict[str, object]:
    """One answered question as a table row: counts, both answers, the signed-rank check, wins and notes."""
    fixed, new, check = answers.fixed, answers.new, answers.signed_rank
    wins_a, wins_b = answers.wins
    notes = [note for note in dict.fromkeys((fixed.note, new.note)) if note]  # one note once
    if answers.unpaired:
        notes.insert(0, "runs without the other arm's seed left out: " +
                     "; ".join(f"{c} ({which})" for c, which in answers.unpaired.items()))
    if answers.excluded:
        reasons: dict[str, list[str]] = {}  # categories left out for the same reason are named together
        for category, why in answers.excluded.items():
            reasons.setdefault(why, []).append(category)
        notes.insert(0, "left out: " + "; ".join(f"{', '.join(cs)} ({why})" for why, cs in reasons.items()))
    return {"n_categories": answers.n_categories, "n_cells": int(answers.seeds.sum()), "seeds": answers.seeds_text(),
            "mean_diff": fixed.estimate, "ci_low_fixed": fixed.ci_low, "ci_high_fixed": fixed.ci_high,
            "p_fixed": fixed.p_value, "df_fixed": fixed.df, "ci_low_new": new.ci_low, "ci_high_new": new.ci_high,
            "p_new": new.p_value, "df_new": new.df, "p_signed_rank": check.p_value,
            "min_reachable_p_signed_rank": check.min_p, "signed_rank_method": check.method if check.n_nonzero else "",
            "wins_a": wins_a, "wins_b": wins_b, "seed_counts": answers.seed_counts_text(),
            "excluded": "; ".join(f"{c}: {why}" for c, why in answers.excluded.items()),
            "note_fixed": fixed.note, "note_new": new.note, "note": "; ".join(notes)}


def family_table(rows: list[dict[str, object]], claim_basis: str, alpha: float = ALPHA) -> pd.DataFrame:
    """Rows of answered questions (answer_columns plus labels) as one family: Holm's correction over the family for
    each answer (p_fixed_holm, p_new_holm) and whether each question is significant on ``claim_basis``."""
    frame = pd.DataFrame(rows)
    for column in ("mean_diff", "ci_low_fixed", "ci_high_fixed", "p_fixed", "df_fixed", "ci_low_new", "ci_high_new",
                   "p_new", "df_new", "p_signed_rank", "min_reachable_p_signed_rank"):
        frame[column] = frame[column].astype(float) if len(frame) else pd.Series(dtype=float)
    frame["p_fixed_holm"] = holm(frame["p_fixed"]) if len(frame) else pd.Series(dtype=float)
    frame["p_new_holm"] = holm(frame["p_new"]) if len(frame) else pd.Series(dtype=float)
    basis = frame["p_fixed_holm"] if claim_basis == "fixed-categories" else frame["p_new_holm"]
    frame["claim_basis"] = claim_basis
    frame["significant"] = (basis < alpha).astype(bool)
    return frame


def question_table(runs: pd.DataFrame, questions: Iterable[tuple[str, str, str]], arm: str = "arm",
                   claim_basis: str = "fixed-categories", confidence: float = CONFIDENCE) -> pd.DataFrame:
    """A family of questions (a, b, metric) on a tidy runs table: both answers of each, Holm within the family and
    the verdict on ``claim_basis`` (every category of the table; decision.py adds groups and datasets)."""
    if claim_basis not in BASES:
        raise RDError(f"claim_basis: expected one of {', '.join(BASES)}, got {claim_basis!r}")
    rows = [{"a": a, "b": b, "metric": metric, **answer_columns(compare_arms(runs, a, b, metric, arm,
                                                                              confidence=confidence))}
            for a, b, metric in questions]
    return family_table(rows, claim_basis, 1.0 - confidence)

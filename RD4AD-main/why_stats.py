"""The Why instruments' intervals and their wording: one stated sampling model each, calibrated by simulation
(why_calibration.py; the table is in docs/calibration.md).

- ``seed_interval`` (scale ablation, region recall and overlap): the categories are fixed ("on these
  categories"); the training seeds are random, and so are the regions when there are regions. Per category the
  paired differences a - b form a seeds x units table (units: the regions both backbones scored, or the run's own
  metric when there is one unit) whose mean's variance is that of a two-way crossed design: a seed part (a run
  moves all its units together), a unit part and a residual, from the table's mean squares. Each category keeps
  its own seed part (a category with one seed takes the one pooled over the others); the interval is Student's
  t with Satterthwaite's degrees of freedom over the categories' parts (3 seeds give a category 2). With one
  seed in every category the seed part cannot be estimated: no interval.
- ``spread_interval`` (training stability): the typical ratio of two backbones' seed standard deviations, the
  geometric mean over categories of each category's ratio, with an exact interval from the pivot log F (seeds
  random and normal, the two backbones' independent; categories fixed, each with its own spread).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
from scipy import stats

from significance import seeded_rng

__all__ = ["CONFIDENCE", "NO_SEED_VARIANCE", "SpreadInterval", "estimate_text", "paired_differences", "paired_values",
           "per_pair", "pooled_sd", "seed_interval", "spread_interval", "stack_pairs"]

CONFIDENCE = 0.95
NO_SEED_VARIANCE = "no interval: one seed per category"


@dataclass(frozen=True)
class SeedInterval:
    """A weighted mean over categories of paired differences, per column, with its t interval.

    ``low``/``high`` are NaN when ``note`` says why there is none; ``df`` is the Satterthwaite degrees of
    freedom, ``seed_df`` those of the seed parts (the sum over categories of seeds - 1)."""

    estimate: np.ndarray
    low: np.ndarray
    high: np.ndarray
    se: np.ndarray
    df: np.ndarray
    seed_df: int
    note: str = ""


def _mean_squares(table: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Mean squares of a seeds x units x columns table: seeds (None with one seed), units (None with one unit)
    and residual (None unless both have two or more)."""
    seeds, units = table.shape[:2]
    grand = table.mean((0, 1))
    seed_means, unit_means = table.mean(1), table.mean(0)
    ms_seed = units * ((seed_means - grand) ** 2).sum(0) / (seeds - 1) if seeds > 1 else None
    ms_unit = seeds * ((unit_means - grand) ** 2).sum(0) / (units - 1) if units > 1 else None
    ms_residual = None
    if seeds > 1 and units > 1:
        residual = table - seed_means[:, None] - unit_means[None] + grand
        ms_residual = (residual ** 2).sum((0, 1)) / ((seeds - 1) * (units - 1))
    return ms_seed, ms_unit, ms_residual


def seed_interval(cells: list[np.ndarray], weights: np.ndarray | None = None, confidence: float = CONFIDENCE,
                  bounds: tuple[float, float] = (-np.inf, np.inf)) -> SeedInterval:
    """``sum_c weights[c] * mean(cells[c])`` per column and its t interval, ``cells[c]`` the (seeds, units,
    columns) paired differences of category c (units crossed with seeds: every seed scored every unit).

    Variance of category c's mean: its seed part ((seeds' mean square - residual mean square) / units) / seeds
    plus its units' mean square / (units x seeds); a category with one seed takes the seed part pooled over the
    others (weights seeds - 1). The total seed part is at least 0. Weights default to equal; the interval is
    clipped to ``bounds`` (the range the difference can take)."""
    if not cells:
        raise ValueError("no category to average")
    weights = np.full(len(cells), 1.0 / len(cells)) if weights is None else np.asarray(weights, dtype=np.float64)
    tables = [np.asarray(table, dtype=np.float64) for table in cells]
    estimate = sum(w * table.mean((0, 1)) for w, table in zip(weights, tables))
    columns = estimate.shape
    nan = np.full(columns, np.nan)
    seed_df = sum(table.shape[0] - 1 for table in tables)
    if seed_df == 0:
        return SeedInterval(estimate, nan, nan, nan, nan, 0, NO_SEED_VARIANCE)
    seed_parts, seed_dfs, unit_parts, unit_dfs = [], [], [], []
    for w, table in zip(weights, tables):
        seeds, units = table.shape[:2]
        ms_seed, ms_unit, ms_residual = _mean_squares(table)
        if ms_seed is not None:  # this category's estimate of the seed component, on seeds - 1 df
            seed_parts.append((ms_seed - (ms_residual if ms_residual is not None else 0.0)) / units)
            seed_dfs.append(seeds - 1)
        if ms_unit is not None:
            unit_parts.append(w ** 2 * ms_unit / (units * seeds))
            unit_dfs.append(units - 1)
    # each category with seeds to compare carries its own seed component, w_c^2 / seeds_c times its estimate; a
    # category with one seed takes the estimate pooled over the others (weights seeds - 1), as shares of theirs
    borrowed = sum(w ** 2 for w, table in zip(weights, tables) if table.shape[0] == 1)
    own = [w ** 2 / table.shape[0] for w, table in zip(weights, tables) if table.shape[0] > 1]
    seed_terms = [(mine + borrowed * df / seed_df) * part for mine, part, df in zip(own, seed_parts, seed_dfs)]
    seed_part = np.maximum(sum(seed_terms), 0.0)
    variance = seed_part + sum(unit_parts, np.zeros(columns))
    # Satterthwaite (Welch's plug-in squares) over every category's term, so that categories whose seed spreads
    # differ lower the df; squares corrected for their bias (E s^4 = sigma^4 (1 + 2 / df)) gave too many df, and
    # too short an interval, when one category's spread dominated
    terms = list(zip(seed_terms, seed_dfs)) + list(zip(unit_parts, unit_dfs))
    spread = sum((term ** 2 / df for term, df in terms), np.zeros(columns))
    with np.errstate(divide="ignore", invalid="ignore"):
        df = np.where(spread > 0, variance ** 2 / spread, np.inf)
    df = np.clip(df, 1.0, seed_df + sum(unit_dfs))
    se = np.sqrt(variance)
    half = stats.t.ppf(0.5 + confidence / 2, df) * se
    half = np.where(variance > 0, half, 0.0)
    low, high = np.clip(estimate - half, *bounds), np.clip(estimate + half, *bounds)
    return SeedInterval(estimate, low, high, se, df, int(seed_df))


@dataclass(frozen=True)
class SpreadInterval:
    """The typical ratio a / b of seed standard deviations (the geometric mean over categories of each category's
    ratio), its interval, and the pooled standard deviations beside it."""

    ratio: float
    low: float
    high: float
    sd_a: float
    sd_b: float
    n_categories: int


PIVOT_DRAWS = 200_000  # Monte Carlo draws of the pivot's distribution (seeded: the same quantiles every time)


@functools.lru_cache(maxsize=256)
def _pivot_quantile(dfs: tuple[int, ...], confidence: float) -> float:
    """The ``(1 + confidence) / 2`` quantile of the mean over categories of log F(df_c, df_c) (symmetric about 0),
    by seeded Monte Carlo."""
    rng = seeded_rng("why", "spread pivot", dfs, confidence)
    total = np.zeros(PIVOT_DRAWS)
    for df in dfs:
        total += np.log(rng.f(df, df, PIVOT_DRAWS))
    return float(np.quantile(total / len(dfs), 0.5 + confidence / 2))


def pooled_sd(dfs: np.ndarray | pd.Series, variances: np.ndarray | pd.Series) -> float:
    """The pooled standard deviation: the root of the variances averaged with weights ``dfs`` (degrees of freedom)."""
    return float(np.sqrt((dfs * variances).sum() / dfs.sum()))


def spread_interval(variances_a: np.ndarray, variances_b: np.ndarray, seeds: np.ndarray,
                    confidence: float = CONFIDENCE) -> SpreadInterval | None:
    """Per category the seed variances of a and b over the same ``seeds`` seeds (>= 2): the geometric mean of the
    categories' standard-deviation ratios with its exact interval under normal seed noise whose ratio a / b is
    the same in every category (each category's variance ratio is then that ratio squared times an F(seeds - 1,
    seeds - 1) draw, whatever its own spread). Categories where either backbone did not vary are left out;
    None when none is left."""
    variances_a, variances_b = np.asarray(variances_a, dtype=np.float64), np.asarray(variances_b, dtype=np.float64)
    seeds = np.asarray(seeds, dtype=int)
    varied = (variances_a > 0) & (variances_b > 0) & (seeds >= 2)
    if not varied.any():
        return None
    dfs = seeds - 1
    log_ratio = float(np.mean(np.log(variances_a[varied] / variances_b[varied])))
    half = _pivot_quantile(tuple(sorted(int(d) for d in dfs[varied])), confidence)
    pooled_a, pooled_b = pooled_sd(dfs, variances_a), pooled_sd(dfs, variances_b)
    return SpreadInterval(float(np.exp(log_ratio / 2)), float(np.exp((log_ratio - half) / 2)),
                          float(np.exp((log_ratio + half) / 2)), pooled_a, pooled_b, int(varied.sum()))


def estimate_text(estimate: float, low: float, high: float, note: str = "", scale: float = 100.0,
                  signed: bool = True) -> str:
    """``estimate [low, high]`` in ``scale`` units; without an interval ``estimate (note)``."""
    sign = "+" if signed else ""
    text = "n/a" if not np.isfinite(estimate) else f"{scale * estimate:{sign}.2f}"
    if not (np.isfinite(low) and np.isfinite(high)):
        return f"{text} ({note or 'no interval'})"
    return f"{text} [{scale * low:{sign}.2f}, {scale * high:{sign}.2f}]"


Pair = tuple[str, str]


def paired_values(frame: pd.DataFrame, pair: Pair, keys: list[str], values: list[str]
                  ) -> tuple[list[np.ndarray], np.ndarray]:
    """Each key's distinct values (sorted), and ``values`` of a and b for every combination of ``keys`` as a
    dense array: one axis per key, then the backbone (a, b), then the values; NaN where a backbone lacks the row.
    A key combination names one row per backbone (a run's map, a run's region)."""
    members = frame[frame["backbone"].isin(pair)]
    levels, codes = zip(*(np.unique(members[key].to_numpy(), return_inverse=True) for key in keys))
    side = (members["backbone"] == pair[1]).to_numpy().astype(int)
    cube = np.full((*map(len, levels), 2, len(values)), np.nan)
    cube[(*codes, side)] = members[list(values)].to_numpy(dtype=np.float64)
    return list(levels), cube


def paired_differences(frame: pd.DataFrame, pair: Pair, keys: list[str], values: list[str]
                       ) -> tuple[list[np.ndarray], np.ndarray]:
    """``paired_values`` as a - b: one axis per key, then the values; NaN where either backbone lacks the row."""
    levels, cube = paired_values(frame, pair, keys, values)
    return levels, cube[..., 0, :] - cube[..., 1, :]


def per_pair(frame: pd.DataFrame, pairs: list[Pair],
             differences: Callable[[pd.DataFrame, Pair], pd.DataFrame]) -> dict[Pair, pd.DataFrame]:
    """``differences(rows of the pair's backbones, pair)`` for each pair with both backbones in ``frame``; pairs
    whose table is empty are left out."""
    tables = {pair: differences(frame[frame["backbone"].isin(pair)], pair) for pair in pairs
              if set(pair) <= set(frame["backbone"])}
    return {pair: table for pair, table in tables.items() if not table.empty}


def stack_pairs(tables: dict[Pair, pd.DataFrame]) -> pd.DataFrame:
    """The pairs' tables one below the other, each row labelled ``pair`` = "a − b"; empty without a pair."""
    rows = [table.assign(pair=f"{a} − {b}") for (a, b), table in tables.items()]
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()

"""How many seeds? The smallest true difference each answer detects with a given power, found by simulating the
answer's own test (inference.fixed_arrays, inference.new_arrays) under variance components estimated from a study.

Variance model of a cell (category c, seed s): d = effect_c + seed noise (variance seed_var_c). "On these
categories" holds the categories and their test images fixed, so only the seed noise enters; "to new categories"
adds the spread of the categories' effects (category_var: between-category spread and test-image noise, which does
not shrink with more seeds). Simulating the test itself keeps what a formula would leave out: Welch-Satterthwaite's
degrees of freedom for the seed variances, Student's t over few categories. calibration.py checks the promise.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from inference import cell_matrix, fixed_arrays, new_arrays, t_quantiles

__all__ = ["Components", "N_PLAN_DRAWS", "components_from_cells", "detectable", "null_thresholds",
           "rejection_thresholds", "solve_detectable"]

N_PLAN_DRAWS = 4000  # simulated studies per planned design: the power at the returned difference is within ~0.01


@dataclass(frozen=True)
class Components:
    """The variance components of a study: per category the seed-to-seed variance of a cell (NaN: unknown, one seed
    everywhere; a (K, C) array: K equally likely sets of categories, simulated alike) and the categories' spread (a
    number, or one per category; NaN: unknown); ``total_var`` is the variance of the categories' seed-averaged
    differences as observed with ``seeds_now`` seeds."""

    seed_var: np.ndarray
    category_var: float | np.ndarray
    total_var: float = float("nan")
    seeds_now: np.ndarray | None = None

    @property
    def n_categories(self) -> int:
        return int(np.shape(self.seed_var)[-1])

    @property
    def seed_known(self) -> bool:
        return bool(np.isfinite(self.seed_var).all())


def components_from_cells(cells: pd.DataFrame) -> Components:
    """Each category's sample variance over its seeds (a single-seed category: the variance pooled over the others)
    and the categories' spread: the variance of their seed-averaged differences less the seed part, floored at 0."""
    _, matrix = cell_matrix(cells)
    n = (~np.isnan(matrix)).sum(axis=1)
    means = np.nanmean(matrix, axis=1)
    multi = n >= 2
    ss = np.nansum((matrix - means[:, None]) ** 2, axis=1)
    if multi.any():
        pooled = ss[multi].sum() / (n[multi] - 1).sum()
        seed_var = np.where(multi, ss / np.maximum(n - 1, 1), pooled)
    else:
        seed_var = np.full(len(n), np.nan)
    total = float(np.var(means, ddof=1)) if len(means) > 1 else float("nan")
    category = max(0.0, total - float(np.mean(seed_var / n))) if multi.any() else float("nan")
    return Components(seed_var, category, total, n)


def rejection_thresholds(arrays, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Per simulated null study (zero true difference): the estimate's noise m and the half-width h = t_(1-alpha/2)
    x se its test needs; the study rejects at true difference delta when |delta + m| > h (never where NaN)."""
    ok = np.isfinite(arrays.se) & np.isfinite(arrays.df)
    quantile = t_quantiles(np.where(ok, arrays.df, 1.0), 1.0 - alpha / 2.0).reshape(-1)
    half = np.where(ok, quantile * np.where(ok, arrays.se, 0.0), np.inf)
    return arrays.estimate, half


def solve_detectable(noise: np.ndarray, half: np.ndarray, power: float) -> float:
    """The smallest delta >= 0 at which a share ``power`` of the studies rejects (|delta + m| > h); NaN when even an
    infinite difference would not (too many studies cannot compute the answer)."""
    if np.mean(np.isfinite(half)) < power:
        return float("nan")

    def rate(delta: float) -> float:
        return float(np.mean(np.abs(delta + noise) > half))

    low, high = 0.0, float(np.max(half[np.isfinite(half)]) + np.max(np.abs(noise))) + 1e-12
    for _ in range(60):
        middle = 0.5 * (low + high)
        low, high = (low, middle) if rate(middle) >= power else (middle, high)
    return high


def _draw_cells(seed_var: np.ndarray, seeds: np.ndarray, n_draws: int, rng: np.random.Generator) -> np.ndarray:
    """(K x n_draws, C, S_max) null cells, n_draws for each of the K rows of ``seed_var`` (K, C)."""
    width = int(seeds.max())
    sds = np.sqrt(seed_var)[:, None, :, None]
    cells = (rng.standard_normal((len(seed_var), n_draws, len(seeds), width)) * sds).reshape(-1, len(seeds), width)
    cells[:, np.arange(width)[None, :] >= seeds[:, None]] = np.nan
    return cells


def null_thresholds(answer: str, components: Components, seeds: int | np.ndarray, alpha: float,
                    rng: np.random.Generator, n_draws: int = N_PLAN_DRAWS) -> tuple[np.ndarray, np.ndarray] | None:
    """Simulated studies of the planned design with no true difference, answered by the answer's own test
    ("fixed-categories" or "new-categories"): per study the estimate's noise and the half-width its test needs at
    two-sided level ``alpha`` (rejection_thresholds); None where the answer cannot be computed with that design or
    a variance component is unknown."""
    seeds = np.broadcast_to(np.asarray(seeds, dtype=np.int64), (components.n_categories,))
    seed_var = np.atleast_2d(components.seed_var)
    if answer == "fixed-categories":
        if (seeds < 2).all() or not components.seed_known:
            return None
        return rejection_thresholds(fixed_arrays(_draw_cells(seed_var, seeds, n_draws, rng)), alpha)
    if components.n_categories < 2:
        return None
    if components.seed_known:
        variance = components.category_var + seed_var / seeds
    elif components.seeds_now is not None and np.array_equal(seeds, components.seeds_now):
        variance = np.full((1, len(seeds)), components.total_var)  # the design as run: its observed spread
    else:
        return None
    if not np.isfinite(variance).all():
        return None
    means = rng.standard_normal((len(variance), n_draws, len(seeds))) * np.sqrt(variance)[:, None, :]
    return rejection_thresholds(new_arrays(means.reshape(-1, len(seeds))), alpha)


def detectable(answer: str, components: Components, seeds: int | np.ndarray, alpha: float, power: float,
               rng: np.random.Generator, n_draws: int = N_PLAN_DRAWS) -> float:
    """The smallest true difference the answer detects with probability ``power`` at two-sided level ``alpha``
    with ``seeds`` seeds per category (a number or one per category), by simulating its test; NaN where the answer
    cannot be computed with that design or a component is unknown."""
    thresholds = null_thresholds(answer, components, seeds, alpha, rng, n_draws)
    return float("nan") if thresholds is None else solve_detectable(*thresholds, power)

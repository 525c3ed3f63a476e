"""Resampling and wording shared by the Why instruments: the seeds-within-category bootstrap, the pairs' difference
tables and the "d [lo, hi]" text of an interval, in points (seeded draws: significance.seeded_rng)."""
from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from significance import multiplicities, percentile_interval

__all__ = ["CONFIDENCE", "N_BOOT", "interval", "per_pair", "seed_bootstrap", "stack_pairs"]

N_BOOT = 2000  # as the comparison's intervals (comparison.N_BOOT)
CONFIDENCE = 0.95



def seed_bootstrap(per_category: list[np.ndarray], n_boot: int, generator: np.random.Generator
                   ) -> tuple[np.ndarray, np.ndarray | None]:
    """The mean over categories of the seed-mean of ``per_category[c]`` (S_c, K) and its bootstrap replicates
    (n_boot, K): within each category the seeds are redrawn (its own draw), the categories stay fixed (the "on
    these categories" basis). Replicates are None when no category has two seeds (no spread to resample)."""
    estimate = np.mean([values.mean(axis=0) for values in per_category], axis=0)
    if all(len(values) < 2 for values in per_category):
        return estimate, None
    replicates = np.zeros((n_boot, per_category[0].shape[1]))
    for values in per_category:
        weights = multiplicities(len(values), n_boot, generator)
        replicates += weights @ values / len(values)
    return estimate, replicates / len(per_category)


def interval(estimate: float, replicates: np.ndarray | None, scale: float = 100.0, signed: bool = True,
             missing: str = "no interval: one seed") -> str:
    """``estimate [lo, hi]`` (the percentile interval of the replicates) in ``scale`` units; without replicates
    ``estimate (missing)``."""
    sign = "+" if signed else ""
    text = "n/a" if not np.isfinite(estimate) else f"{scale * estimate:{sign}.2f}"
    if replicates is None:
        return f"{text} ({missing})"
    low, high = percentile_interval(replicates, CONFIDENCE)
    return f"{text} [{scale * low:{sign}.2f}, {scale * high:{sign}.2f}]"


Pair = tuple[str, str]


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

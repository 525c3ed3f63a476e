"""The calibration table every suite fills (calibration.py runs the suites): its columns and its gates.

A suite is a function(n_studies, seed) -> DataFrame with CALIBRATION_COLUMNS, one row per answer and scenario:
coverage of the interval, size (rejection rate at ALPHA with no difference), power at the planning promise; NaN
where a quantity does not apply. Kept apart from calibration.py so that a suite in another module (the Why
instruments') imports the gates without importing the harness that registers it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from inference import ALPHA, TArrays

__all__ = ["CALIBRATION_COLUMNS", "COVERAGE_GATE", "POWER_GATE", "PROMISED_POWER", "SIZE_GATE", "TIDY_CHECKS",
           "IntervalChecks", "gate_passes", "interval_checks", "refused_row"]

CALIBRATION_COLUMNS = ["suite", "answer", "scenario", "n_categories", "n_seeds", "studies", "coverage", "size",
                       "power", "promised_power", "passes", "note"]
COVERAGE_GATE = (0.93, 0.97)
SIZE_GATE = 0.06
POWER_GATE = 0.07
PROMISED_POWER = 0.8
TIDY_CHECKS = 3  # studies per scenario also answered through the tidy path the report takes: the same numbers


def gate_passes(coverage: float, size: float, power: float, promised: float) -> bool:
    """Coverage within COVERAGE_GATE, size at most SIZE_GATE, power within POWER_GATE of the promise (NaN power and
    promise: no promise to keep)."""
    kept = (np.isnan(power) and np.isnan(promised)) or abs(power - promised) <= POWER_GATE
    return bool(COVERAGE_GATE[0] <= coverage <= COVERAGE_GATE[1] and size <= SIZE_GATE and kept)


@dataclass(frozen=True)
class IntervalChecks:
    """A scenario's studies checked: coverage at the alternative, size under the null, whether every interval
    excludes 0 exactly when p < ALPHA, and the notes that follow the suite's own (uncomputed studies, disagreement)."""

    coverage: float
    size: float
    agree: bool
    notes: list[str]


def interval_checks(null: TArrays, alt: TArrays, truth: np.ndarray) -> IntervalChecks:
    """Coverage of ``truth`` by the alternative studies' intervals, size of the null studies' tests at ALPHA, and
    whether interval and p agree in both (a study that cannot compute the answer counts as not covering)."""
    coverage = float(np.mean((alt.low <= truth) & (truth <= alt.high)))
    size = float(np.mean(null.p_value < ALPHA))
    agree = all(np.array_equal(arrays.p_value < ALPHA, (arrays.low > 0) | (arrays.high < 0)) for arrays in (null, alt))
    notes = []
    uncomputed = float(np.mean(np.isnan(alt.p_value)))
    if uncomputed:
        notes.append(f"{uncomputed:.1%} of studies cannot compute the answer (counted as not covering)")
    if not agree:
        notes.append("an interval disagrees with its p")
    return IntervalChecks(coverage, size, agree, notes)


def refused_row(note: str) -> dict[str, object]:
    """A scenario where the answer is never computed: it passes only if it says the design cannot give one."""
    return {"coverage": np.nan, "size": np.nan, "power": np.nan, "promised_power": np.nan,
            "passes": note.startswith("cannot be computed for this design"), "note": f"the answer says: {note}"}

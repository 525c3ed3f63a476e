"""The calibration table every suite fills (calibration.py runs the suites): its columns and its gates.

A suite is a function(n_studies, seed) -> DataFrame with CALIBRATION_COLUMNS, one row per answer and scenario:
coverage of the interval, size (rejection rate at ALPHA with no difference), power at the planning promise; NaN
where a quantity does not apply. Kept apart from calibration.py so that a suite in another module (the Why
instruments') imports the gates without importing the harness that registers it.
"""
from __future__ import annotations

import numpy as np

__all__ = ["CALIBRATION_COLUMNS", "COVERAGE_GATE", "POWER_GATE", "PROMISED_POWER", "SIZE_GATE", "gate_passes"]

CALIBRATION_COLUMNS = ["suite", "answer", "scenario", "n_categories", "n_seeds", "studies", "coverage", "size",
                       "power", "promised_power", "passes", "note"]
COVERAGE_GATE = (0.93, 0.97)
SIZE_GATE = 0.06
POWER_GATE = 0.07
PROMISED_POWER = 0.8


def gate_passes(coverage: float, size: float, power: float, promised: float) -> bool:
    """Coverage within COVERAGE_GATE, size at most SIZE_GATE, power within POWER_GATE of the promise (NaN power and
    promise: no promise to keep)."""
    kept = (np.isnan(power) and np.isnan(promised)) or abs(power - promised) <= POWER_GATE
    return bool(COVERAGE_GATE[0] <= coverage <= COVERAGE_GATE[1] and size <= SIZE_GATE and kept)

"""Issue 23: the Why intervals' calibration harness (why_calibration.py), a seeded small version with loose gates;
the full table is `main.py calibrate`'s "why" suite (docs/calibration.md)."""
from __future__ import annotations

import numpy as np
import pytest

import why_calibration
import why_scales
from calibration_table import CALIBRATION_COLUMNS
from why_calibration import SCENARIOS, rows

SMALL = [scenario for scenario in SCENARIOS if scenario.name in ("5 categories x 3 seeds", "5 categories x 1 seed")]
THREE = [scenario for scenario in SMALL if scenario.seeds[0] == 3]


@pytest.fixture(scope="module")
def table():
    return rows(12, seed=0, scenarios=SMALL)


def test_the_small_calibration_covers_and_keeps_its_level(table):
    assert list(table.columns) == CALIBRATION_COLUMNS and (table["suite"] == "why").all()
    assert set(table["answer"]) == {"scale ablation difference", "region recall difference",
                                    "region overlap difference", "stability spread ratio"}
    measured = table[table["n_seeds"] == 3]
    assert (measured["studies"] == 12).all() and measured["promised_power"].isna().all()
    assert (measured["coverage"] >= 0.85).all() and (measured["size"] <= 0.15).all()  # loose: few studies
    assert (measured["power"] > measured["size"]).all()
    # one seed per category: the design cannot give an interval, and none is given
    single = table[table["n_seeds"] == 1]
    assert single["coverage"].isna().all() and single["size"].isna().all() and single["passes"].all()
    assert single["note"].str.contains("one seed per category").all()


def test_the_gate_fails_an_interval_that_is_too_short(monkeypatch):
    honest = why_scales.seed_interval

    def halved(*args, **kwargs):  # the same estimate, half the width
        found = honest(*args, **kwargs)
        middle = found.estimate
        return type(found)(middle, middle - (middle - found.low) / 2, middle + (found.high - middle) / 2, found.se,
                           found.df, found.seed_df, found.note)

    monkeypatch.setattr(why_scales, "seed_interval", halved)
    monkeypatch.setattr(why_calibration, "SIMULATORS", [why_calibration.SIMULATORS[0]])
    short = rows(12, seed=0, scenarios=THREE)
    assert not short["passes"].iloc[0] and short["coverage"].iloc[0] < 0.85
    assert np.isfinite(short["size"].iloc[0]) and short["size"].iloc[0] > 0.15

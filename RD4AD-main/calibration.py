"""`main.py calibrate`: do the intervals cover, do the tests keep their level, does the planning table keep its
promise? A seeded simulator of studies runs the report's own procedures and prints, per suite, answer and scenario,
the interval's coverage, the rejection rate under the null and the power at the planning table's detectable
difference, against gates; the table goes to docs/calibration.md with the command that made it.

Suites are a registry (SUITES: name -> function(n_studies, seed) -> rows of calibration_table.CALIBRATION_COLUMNS),
so another instrument's calibration is one more entry (with its description in SUITE_TEXTS): "images"
(calibration_images.py) checks the per-image AUPIMO answers, "why" (why_calibration.py) the Why section's intervals.
The "primary" suite simulates studies of C categories x S seeds: categories with their own true differences (spread
`category_sd`) and seed-to-seed sds (spread `seed_spread` on the log scale), test-image noise shared by a category's
seeds, and per scenario categories at the ceiling (true difference 0, most cells exactly 0: both arms perfect) or
seeds missing and extra (S − 1, S, S + 1 in turn). Its "interaction" scenarios simulate the interaction question's
cells (interaction.py): each cell one pair's cell minus another pair's (four arms, so the seed noise of two pairs),
both pairs drawn as above with their own effects, image noise and seed sds, and in "interaction, one method at the
ceiling" the second pair (the stronger method) at the ceiling (its cells mostly exactly 0, so the contrast's cell is
the first pair's) in a share of the categories.
"""
from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import scipy
from scipy import stats
from tqdm import tqdm

import why_calibration
from atomic_files import atomic_write_text
from calibration_images import images_suite, images_text
from calibration_table import (CALIBRATION_COLUMNS, COVERAGE_GATE, POWER_GATE, PROMISED_POWER, SIZE_GATE,
                               TIDY_CHECKS, gate_passes, interval_checks, refused_row)
from documents import markdown_table
from errors import RDError
from inference import ALPHA, BASES, answer_cells, fixed_arrays, new_arrays
from interaction import InteractionQuestion, compare_interaction
from planning import N_PLAN_DRAWS, Components, detectable, null_thresholds, solve_detectable
from significance import seeded_rng

__all__ = ["N_QUESTIONS", "N_STUDIES", "SCENARIOS", "SUITES", "SUITE_STUDIES", "SUITE_TEXTS", "Scenario",
           "add_arguments", "calibrate",
           "calibration_markdown", "primary_suite", "run", "scenario_rows", "simulate_cells"]

N_QUESTIONS = 3  # the default primary family: the planning table's level is Holm's first step, ALPHA / 3
N_STUDIES = 20000  # per scenario: the Monte Carlo error of a size or coverage is about 0.0016
TIDY_INTERACTION_CHECKS = 1  # the same through the interaction's tidy path (four arms' runs: slower, one suffices)
PROMISE_DEALS = 64  # deals of seed sds and ceilings the "on these categories" promise averages over
PROMISE_DRAWS = 32_000  # simulated studies behind that promise (its power's Monte Carlo error about 0.002); fewer
# (16 per simulated study) in a small run
PROMISE_ITERATIONS = 30  # fixed-point steps of the "to new categories" promise (a ceiling share makes it move)


@dataclass(frozen=True)
class Scenario:
    """A kind of study: its size, noise and quirks (differences are fractions, 0.01 = 1 point)."""

    name: str
    n_categories: int
    n_seeds: int
    seed_sd: float = 0.005  # typical seed-to-seed sd of a cell's difference
    seed_spread: float = 0.6  # log-scale spread of the categories' seed sds
    category_sd: float = 0.01  # spread of the categories' true differences
    image_sd: float = 0.004  # test-image noise of a category's difference, the same for every seed
    ceiling: float = 0.0  # chance that a category sits at the ceiling: true difference 0, cells mostly exactly 0
    zero_cell: float = 0.6  # in a ceiling category, the chance that a cell is exactly 0 (both arms perfect)
    ceiling_sd: float = 0.001  # sd of a ceiling category's non-zero cells
    ragged: bool = False  # seeds per category S, S + 1, S − 1 in turn (at least 1): missing and extra seeds
    contrast: bool = False  # interaction cells: a pair's cell minus a second pair's (only the second at the ceiling)

    @property
    def seeds(self) -> np.ndarray:
        """Seeds of each category."""
        base = np.full(self.n_categories, self.n_seeds)
        if self.ragged:
            base = np.maximum(1, base + np.resize([0, 1, -1], self.n_categories))
        return base

    @property
    def seed_sds(self) -> np.ndarray:
        """The set of seed sds (normal quantiles on the log scale); each study deals them to its categories in a
        random order, so which category has the extra seed is unrelated to how much its seeds vary."""
        quantiles = stats.norm.ppf((np.arange(self.n_categories) + 0.5) / self.n_categories)
        return self.seed_sd * np.exp(self.seed_spread * quantiles)

    @property
    def ceiling_var(self) -> float:
        """The seed-to-seed variance of a ceiling category's cells (mean 0)."""
        return (1 - self.zero_cell) * self.ceiling_sd ** 2

    def deal(self, n_studies: int, rng: np.random.Generator,
             ceiling: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Per study, each category's seed sd (a random order of seed_sds) and whether it sits at the ceiling (with
        probability ``ceiling``, default the scenario's)."""
        order = np.argsort(rng.random((n_studies, self.n_categories)), axis=1)
        chance = self.ceiling if ceiling is None else ceiling
        return self.seed_sds[order], rng.random((n_studies, self.n_categories)) < chance


def _scenarios() -> list[Scenario]:
    out = []
    for categories in (5, 15):
        for seeds in (1, 3, 5):
            plain = Scenario("spread, image noise", categories, seeds)
            out += [plain, replace(plain, name="ceiling ties, zero cells", ceiling=0.2),
                    replace(plain, name="missing and extra seeds", ragged=True)]
            out += [replace(plain, name="interaction, four arms", contrast=True),
                    replace(plain, name="interaction, one method at the ceiling", contrast=True, ceiling=0.2)]
    return out


SCENARIOS = _scenarios()


def simulate_cells(scenario: Scenario, n_studies: int, rng: np.random.Generator, fixed_truth: float | None = None,
                   new_truth: float = 0.0) -> tuple[np.ndarray, np.ndarray, float]:
    """(studies, C, S_max) cell differences (NaN past a category's seeds), each study's "on these categories" truth
    (the mean over its categories of their expected differences on their test sets) and the "to new categories"
    truth (the population mean: ceiling categories included). With ``fixed_truth`` each study's categories off the
    ceiling are shifted to make its truth that value (a study with every category at the ceiling keeps 0)."""
    if scenario.contrast:  # (a − b under m1) − (a − b under m2): only the second pair sits at the ceiling
        first, noise, _, _ = _pair_draws(scenario, n_studies, rng, new_truth, 0.0)
        second, second_noise, zero, _ = _pair_draws(scenario, n_studies, rng, 0.0, scenario.ceiling)
        effect, noise = first - second, noise - np.where(zero, 0.0, second_noise)
        free = np.ones(effect.shape, dtype=bool)  # the first pair's effects carry a shift
    else:
        effect, noise, zero, ceiling = _pair_draws(scenario, n_studies, rng, new_truth / (1 - scenario.ceiling),
                                                   scenario.ceiling)
        free = ~ceiling
    if fixed_truth is not None:
        shift = (fixed_truth * scenario.n_categories - effect.sum(axis=1)) / np.maximum(free.sum(axis=1), 1)
        effect += np.where(free, shift[:, None], 0.0)
    cells = effect[:, :, None] + noise
    if not scenario.contrast:
        cells[zero] = 0.0  # both arms perfect: exactly 0
    cells[:, np.arange(cells.shape[2])[None, :] >= scenario.seeds[:, None]] = np.nan
    return cells, effect.mean(axis=1), new_truth


def _pair_draws(scenario: Scenario, n_studies: int, rng: np.random.Generator, mean: float,
                ceiling: float) -> tuple[np.ndarray, ...]:
    """One pair's draws for every study: each category's true difference (with its test-image noise; 0 at the
    ceiling), its cells' seed noise (S_max per category), which cells are exactly 0 and which categories sit at the
    ceiling (with probability ``ceiling``)."""
    sds, at_ceiling = scenario.deal(n_studies, rng, ceiling)
    shape = (n_studies, scenario.n_categories)
    effect = mean + scenario.category_sd * rng.standard_normal(shape)
    effect += scenario.image_sd * rng.standard_normal(shape)
    effect[at_ceiling] = 0.0
    noise = rng.standard_normal((*shape, int(scenario.seeds.max())))
    noise *= np.where(at_ceiling, scenario.ceiling_sd, sds)[:, :, None]
    zero = (rng.random(noise.shape) < scenario.zero_cell) & at_ceiling[:, :, None]
    return effect, noise, zero, at_ceiling


def _promised_difference(answer: str, scenario: Scenario, level: float, rng: np.random.Generator,
                         draws: int) -> tuple[float, float]:
    """The planning code's detectable difference for the scenario's true components, and the difference at which
    to measure coverage (the same, or where there is no promise the first step's). "On these categories": over
    PROMISE_DEALS deals of seed sds and ceilings at once (the power of the mix is the promise). "To new
    categories": the population's spread, whose ceiling share makes it grow with the difference (solved as a fixed
    point; NaN when no difference reaches the power: the spread outgrows it). ``draws``: simulated studies behind
    it (the planning table's own N_PLAN_DRAWS for the second)."""
    seeds = scenario.seeds
    if answer == "fixed-categories":
        sds, ceiling = scenario.deal(PROMISE_DEALS, rng)
        seed_var = np.where(ceiling, scenario.ceiling_var, sds ** 2)
        if scenario.contrast:  # the first pair's seed noise adds to the second's (at the ceiling or not)
            seed_var = seed_var + scenario.deal(PROMISE_DEALS, rng, 0.0)[0] ** 2
        deals = Components(seed_var, 0.0)
        thresholds = null_thresholds(answer, deals, seeds, level, rng, max(1, draws // PROMISE_DEALS))
        delta = float("nan") if thresholds is None else solve_detectable(*thresholds, PROMISED_POWER)
        return delta, delta
    share = 1 - scenario.ceiling
    seed_var = np.full(scenario.n_categories, share * np.mean(scenario.seed_sds ** 2)
                       + scenario.ceiling * scenario.ceiling_var + scenario.contrast * np.mean(scenario.seed_sds ** 2))
    effects = scenario.category_sd ** 2 + scenario.image_sd ** 2
    delta, previous, first = 0.0, -1.0, float("nan")
    for _ in range(PROMISE_ITERATIONS):
        # a share at 0, the rest at delta / share; a contrast: the first pair's effects, less the second's (a share
        # of them at the ceiling), every category shifted by delta alike
        spread = (1 + share) * effects if scenario.contrast else share * effects + scenario.ceiling / share * delta ** 2
        previous, delta = delta, detectable(answer, Components(seed_var, spread), seeds, level, PROMISED_POWER,
                                            seeded_rng("promise", scenario.name, scenario.n_categories,
                                                       scenario.n_seeds), min(draws, N_PLAN_DRAWS))
        first = delta if np.isnan(first) else first
        if not np.isfinite(delta) or abs(delta - previous) <= 1e-4 * delta:
            break
    converged = np.isfinite(delta) and abs(delta - previous) <= 1e-3 * delta
    return (delta, delta) if converged else (float("nan"), first)


def _answer_arrays(answer: str, cells: np.ndarray):
    if answer == "fixed-categories":
        return fixed_arrays(cells)
    return new_arrays(np.nanmean(cells, axis=-1))


def _simulate(answer: str, scenario: Scenario, n_studies: int, rng: np.random.Generator,
              truth: float) -> tuple[np.ndarray, np.ndarray]:
    """Studies whose truth on the answer's own basis is ``truth``: their cells and each study's truth."""
    if answer == "fixed-categories":
        cells, fixed, _ = simulate_cells(scenario, n_studies, rng, fixed_truth=truth)
        return cells, fixed
    cells, _, new = simulate_cells(scenario, n_studies, rng, new_truth=truth)
    return cells, np.full(n_studies, new)


def _tidy_interaction(rows: list[tuple[str, int, float]]):
    """The interaction path of the report (interaction.compare_interaction) on a tidy runs table of four arms whose
    difference of differences is each cell: a − b is +d/2 under RD++ and −d/2 under RD4AD."""
    question = InteractionQuestion(("a", "b"), ("rdpp", "rd"), "value")
    (a1, b1), (a2, b2) = question.pairs
    runs_table = pd.DataFrame([(arm, category, seed, value) for category, seed, d in rows
                               for arm, value in ((a1, 0.5 + d / 2), (b1, 0.5), (a2, 0.5), (b2, 0.5 + d / 2))],
                              columns=["arm", "category", "seed", "value"])
    return compare_interaction(runs_table, question, arm="arm")


def _tidy_note(answer: str, cells: np.ndarray, contrast: bool = False) -> str:
    """The first study answered through the tidy path the report takes (for a contrast, the interaction's, from four
    arms' values), and checked against the fast path: the same p and interval (for TIDY_CHECKS studies, a contrast's
    TIDY_INTERACTION_CHECKS); returns the first study's note (why it was not computed)."""
    arrays = _answer_arrays(answer, cells)
    notes = []
    for study in range(min(TIDY_INTERACTION_CHECKS if contrast else TIDY_CHECKS, len(cells))):
        rows = [(f"c{c:02d}", s, value) for c, row in enumerate(cells[study]) for s, value in enumerate(row)
                if not np.isnan(value)]
        tidy = (_tidy_interaction(rows) if contrast else
                answer_cells(pd.DataFrame(rows, columns=["category", "seed", "difference"]))).answer(answer)
        expected = (arrays.p_value[study], arrays.low[study], arrays.high[study])
        if not np.allclose((tidy.p_value, tidy.ci_low, tidy.ci_high), expected, rtol=1e-9, atol=1e-12,
                           equal_nan=True):
            raise AssertionError(f"the tidy path answers study {study} differently: {tidy} vs {expected}")
        notes.append(tidy.note)
    return notes[0] if notes else ""


def _answer_row(answer: str, scenario: Scenario, n_studies: int, rng: np.random.Generator) -> dict:
    """One answer in one scenario: size from studies with no difference, coverage and power from studies at the
    planning table's detectable difference (80 % power at ALPHA / N_QUESTIONS, from the true components)."""
    level = ALPHA / N_QUESTIONS
    delta, at = _promised_difference(answer, scenario, level, rng, min(PROMISE_DRAWS, 16 * n_studies))
    null_cells, _ = _simulate(answer, scenario, n_studies, rng, 0.0)
    null = _answer_arrays(answer, null_cells)
    note = _tidy_note(answer, null_cells, scenario.contrast)
    if np.isnan(null.p_value).all():
        return refused_row(note)
    alt_cells, truth = _simulate(answer, scenario, n_studies, rng, at if np.isfinite(at) else 0.0)
    alt = _answer_arrays(answer, alt_cells)
    checks = interval_checks(null, alt, truth)
    power = float(np.mean(alt.p_value < level)) if np.isfinite(delta) else np.nan
    promised = PROMISED_POWER if np.isfinite(delta) else np.nan
    notes = [f"detectable difference {delta * 100:.2f} points" if np.isfinite(delta) else
             f"no difference reaches {PROMISED_POWER:.0%} power (the categories' spread grows with it); coverage at "
             f"{at * 100:.2f} points", *checks.notes]
    return {"coverage": checks.coverage, "size": checks.size, "power": power, "promised_power": promised,
            "passes": checks.agree and gate_passes(checks.coverage, checks.size, power, promised),
            "note": "; ".join(notes)}


def scenario_rows(scenario: Scenario, n_studies: int, seed: int) -> list[dict]:
    """Both answers of one scenario, each from its own seeded draws."""
    rows = []
    for answer, label in BASES.items():
        rng = seeded_rng("calibration", seed, scenario.name, scenario.n_categories, scenario.n_seeds, answer)
        rows.append({"suite": "primary", "answer": label, "scenario": scenario.name,
                     "n_categories": scenario.n_categories, "n_seeds": scenario.n_seeds, "studies": n_studies,
                     **_answer_row(answer, scenario, n_studies, rng)})
    return rows


def primary_suite(n_studies: int, seed: int) -> pd.DataFrame:
    """Both primary answers in every scenario of SCENARIOS."""
    rows = [row for scenario in tqdm(SCENARIOS, desc="primary suite", unit="scenario", leave=False)
            for row in scenario_rows(scenario, n_studies, seed)]
    return pd.DataFrame(rows, columns=CALIBRATION_COLUMNS)


SUITES: dict[str, Callable[[int, int], pd.DataFrame]] = {"primary": primary_suite, "images": images_suite,
                                                          "why": why_calibration.rows}
# Studies per scenario of a full run, where a suite's studies cost more than the primary answers' (default N_STUDIES)
SUITE_STUDIES: dict[str, int] = {"why": why_calibration.N_STUDIES}


def _primary_text() -> str:
    described = " ".join(__doc__.split("\n\n", 1)[1].split())
    return described[described.index('The "primary" suite'):] + "\n\n" + _scenario_text()


# What each suite simulates, for docs/calibration.md
SUITE_TEXTS: dict[str, Callable[[], str]] = {"primary": _primary_text, "images": images_text,
                                              "why": why_calibration.describe}


def calibrate(n_studies: int | None = None, seed: int = 0, suites: list[str] | None = None) -> pd.DataFrame:
    """Every suite's rows (CALIBRATION_COLUMNS), in registry order; ``n_studies`` per scenario, or each suite's own
    (SUITE_STUDIES, else N_STUDIES)."""
    names = list(SUITES) if not suites else suites
    unknown = [name for name in names if name not in SUITES]
    if unknown:
        raise RDError(f"--suite {', '.join(unknown)}: expected one of {', '.join(SUITES)}")
    if n_studies is not None and n_studies < 10:
        raise RDError(f"--studies {n_studies}: expected at least 10 simulated studies per scenario")
    frames = []
    for name in names:
        frame = SUITES[name](n_studies or SUITE_STUDIES.get(name, N_STUDIES), seed)
        if list(frame.columns) != CALIBRATION_COLUMNS:
            raise RDError(f"calibration suite {name!r}: expected the columns {', '.join(CALIBRATION_COLUMNS)}, got "
                          f"{', '.join(map(str, frame.columns))}")
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _display(table: pd.DataFrame) -> pd.DataFrame:
    shown = table.copy()
    for column in ("coverage", "size", "power", "promised_power"):
        shown[column] = [("n/a" if pd.isna(value) else f"{value:.3f}") for value in shown[column]]
    shown["passes"] = ["yes" if value else "NO" for value in shown["passes"]]
    return shown


def _worst(table: pd.DataFrame) -> str:
    coverage = table["coverage"].dropna()
    power_gap = (table["power"] - table["promised_power"]).abs().dropna()
    return (f"coverage {coverage.min():.3f} to {coverage.max():.3f}, largest size {table['size'].max():.3f}, "
            f"largest |power − promise| {power_gap.max():.3f}")


def calibration_markdown(table: pd.DataFrame, command: str, seconds: float) -> str:
    """docs/calibration.md: the gates, then per suite what was simulated and its table, and what made it (command,
    machine, time)."""
    passed = int(table["passes"].sum())
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "# Calibration of the report's answers",
        f"Generated by `{command}` on {platform.node() or 'this machine'} ({_machine()}), {when}, in {seconds:.0f} s; "
        "do not edit by hand.",
        f"Gates: coverage of the {100 * (1 - ALPHA):.0f} % interval within {COVERAGE_GATE[0]}-{COVERAGE_GATE[1]} "
        f"(or the answer says it cannot be computed for the design), rejection rate at alpha {ALPHA} under no "
        f"difference at most {SIZE_GATE}, power at the planning table's detectable difference (its promise: "
        f"{PROMISED_POWER:.0%} at alpha {ALPHA} / {N_QUESTIONS}) within {POWER_GATE} of the promise where a table "
        "promises power; and in every simulated study of the primary answers the interval excludes 0 exactly when "
        "p < alpha. Coverage is measured in the studies at the alternative; a study whose answer cannot be computed "
        "counts as not covering.",
        f"**{passed} of {len(table)} rows pass** ({_worst(table)}).",
    ]
    for suite, rows in table.groupby("suite", sort=False):
        text = SUITE_TEXTS[suite]() if suite in SUITE_TEXTS else ""
        parts += [f"## Suite `{suite}`", *([text] if text else []),
                  markdown_table(_display(rows.drop(columns=["suite"])))]
    return "\n\n".join(parts) + "\n"


def _scenario_text() -> str:
    """The simulated studies' settings, from Scenario's defaults (differences in points)."""
    plain, ceiling = Scenario("", 0, 0), next(s for s in SCENARIOS if s.ceiling)
    return (f"Settings (points of the metric): seed sd {100 * plain.seed_sd:g} typical, spread {plain.seed_spread:g} on "
            f"the log scale; category sd {100 * plain.category_sd:g}; test-image noise sd {100 * plain.image_sd:g}; "
            f"in \"{ceiling.name}\" each category sits at the ceiling with probability {ceiling.ceiling:g}, a "
            f"ceiling cell is exactly 0 with probability {ceiling.zero_cell:g} (else sd {100 * ceiling.ceiling_sd:g}). "
            f"Planning promises come from the true components by planning.py's simulation ({PROMISE_DRAWS} studies "
            f"for \"on these categories\", over {PROMISE_DEALS} deals of seed sds and ceilings).")


def _machine() -> str:
    from system_info import cpu_model  # torch is imported only here

    return f"{cpu_model()}, Python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--studies", type=int, default=None,
                        help=f"simulated studies per scenario (default: {N_STUDIES}, the why suite "
                             f"{why_calibration.N_STUDIES})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulation")
    parser.add_argument("--suite", action="append", default=None, metavar="NAME",
                        help=f"a suite to run (repeatable; default: all of {', '.join(SUITES)})")
    parser.add_argument("--out", default="docs/calibration.md", help="markdown file for the table (written atomically)")


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    table = calibrate(args.studies, args.seed, args.suite)
    seconds = time.perf_counter() - start
    command = "python RD4AD-main/main.py calibrate " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    text = calibration_markdown(table, command.strip(), seconds)
    print(_display(table).to_string(index=False))
    print(f"{int(table['passes'].sum())} of {len(table)} rows pass ({_worst(table)}); {seconds:.0f} s")
    atomic_write_text(Path(args.out), text)
    print(f"wrote {args.out}")
    return 0 if table["passes"].all() else 1

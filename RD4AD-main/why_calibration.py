"""Calibration of the Why intervals: seeded simulated studies run through the report's own interval code.

Each answer's simulator builds the per-run table its instrument reads (scales.csv rows, region rows, per-run
metrics), with several categories, training seeds that vary from seed to seed, and regions crossed with seeds
(every seed scores the same regions), and calls the function the report calls: ``why_scales.differences``,
``why_regions.differences``, ``why_stability.spread_ratio``. Per scenario: the interval's coverage of the true
value (the categories, their effects and their seed spreads fixed; seeds and regions drawn again per study), the
rate at which it excludes the null value when the null holds (size) and when it does not (power, with no promise
to meet: the Why section promises none). ``rows(n_studies, seed)`` returns the table; calibration.py registers it
as the "why" suite of `main.py calibrate`, which writes it into docs/calibration.md with ``describe()``'s text.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
from scipy import special, stats
from tqdm import tqdm

import why_regions
import why_scales
import why_stability
from calibration_table import CALIBRATION_COLUMNS, gate_passes
from significance import seeded_rng

__all__ = ["N_STUDIES", "SCENARIOS", "Scenario", "describe", "rows"]

N_STUDIES = 500  # null and alternative studies per scenario in a full run (about 2 min of CPU time in all)
PAIR = ("a", "b")


@dataclass(frozen=True)
class Scenario:
    """A study design: categories and the seeds each has."""

    name: str
    seeds: tuple[int, ...]  # seeds per category

    @property
    def n_categories(self) -> int:
        return len(self.seeds)


def _even(categories: int, seeds: int) -> Scenario:
    return Scenario(f"{categories} categories x {seeds} seed{'s' if seeds > 1 else ''}", (seeds,) * categories)


SCENARIOS = [_even(c, s) for c in (5, 15) for s in (1, 3, 5)] + [
    Scenario("15 categories, uneven seeds (one 1, one 5, the rest 3)", (1, 5) + (3,) * 13)]


@dataclass
class Tally:
    """Counts over simulated intervals: of the alternative studies' ``intervals``, those covering the truth and
    those excluding the null value; of the null studies' ``null_intervals``, those excluding it."""

    covered: int = 0
    intervals: int = 0
    rejected_null: int = 0
    null_intervals: int = 0
    rejected_alt: int = 0
    missing: int = 0  # interval not given

    def add(self, low: np.ndarray, high: np.ndarray, truth: np.ndarray, null_value: float, null: bool) -> None:
        given = np.isfinite(low) & np.isfinite(high)
        self.missing += int((~given).sum())
        low, high, truth = low[given], high[given], truth[given]
        excludes = (low > null_value) | (high < null_value)
        if null:
            self.rejected_null += int(excludes.sum())
            self.null_intervals += int(given.sum())
        else:
            self.covered += int(((low <= truth) & (truth <= high)).sum())
            self.intervals += int(given.sum())
            self.rejected_alt += int(excludes.sum())


def _rate(hits: int, total: int) -> float:
    return hits / total if total else float("nan")


# ---------------------------------------------------------------------------------------------- scale ablation

SCALE_MAPS = [("all scales", "all", 0), ("scale 1 only", "only", 1), ("scale 2 only", "only", 2),
              ("scale 3 only", "only", 3)]  # each map x metric is an independent answer of the same design
SCALE_NOISE = 0.01  # seed-to-seed sd of a run's metric difference, typical category (1 point)
SCALE_SPREAD = 0.02  # sd of the categories' true differences
SCALE_EFFECT = 0.01  # the mean difference under the alternative (1 point)


def _scale_design(scenario: Scenario, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Fixed per scenario: the categories' true differences (categories x maps x metrics, mean 0 over
    categories) and each category's seed sd (one per category: heteroscedastic categories)."""
    effects = rng.normal(0, SCALE_SPREAD, (scenario.n_categories, len(SCALE_MAPS), len(why_scales.METRIC_KEYS)))
    noise = SCALE_NOISE * np.exp(0.5 * rng.normal(size=scenario.n_categories))
    return effects - effects.mean(0), noise


def _scale_study(scenario: Scenario, effects: np.ndarray, noise: np.ndarray, rng: np.random.Generator
                 ) -> pd.DataFrame:
    """One study's scales.csv rows of both backbones, every (category, seed) run and map."""
    runs = np.repeat(np.arange(scenario.n_categories), scenario.seeds)
    seed = np.concatenate([np.arange(s) for s in scenario.seeds])
    category, seed, index = (np.repeat(runs, len(SCALE_MAPS)), np.repeat(seed, len(SCALE_MAPS)),
                             np.tile(np.arange(len(SCALE_MAPS)), len(runs)))
    name, kind, scale = (np.array([m[i] for m in SCALE_MAPS])[index] for i in range(3))
    base = 0.8 + 0.05 * np.sin(category + index)[:, None]
    noise_a, noise_b = rng.normal(0, noise[category, None] / np.sqrt(2), (2, len(category), effects.shape[-1]))
    frames = []  # a - b = the category's difference + seed noise of sd ``noise``
    for backbone, values in (("a", base + effects[category, index] + noise_a), ("b", base + noise_b)):
        frames.append(pd.DataFrame({"backbone": backbone, "category": category, "seed": seed, "map": name,
                                    "kind": kind, "scale": scale.astype(int),
                                    **dict(zip(why_scales.METRIC_KEYS, values.T))}))
    return pd.concat(frames, ignore_index=True)


def _scales(scenario: Scenario, n_studies: int, seed: int) -> dict[str, Tally]:
    rng = seeded_rng("why calibration", "scales", scenario.name, seed)
    effects, noise = _scale_design(scenario, rng)
    tally = Tally()
    for null in (True, False):
        shift = 0.0 if null else SCALE_EFFECT
        for _ in range(n_studies):
            table = why_scales.differences(_scale_study(scenario, effects + shift, noise, rng), PAIR)
            tally.add(table["ci_low"].to_numpy(float), table["ci_high"].to_numpy(float),
                      np.full(len(table), shift), 0.0, null)
    return {"scale ablation difference": tally}


# ---------------------------------------------------------------------------------------------- regions

REGION_COUNTS = (6, 40)  # regions per category and bin, drawn once per scenario (uniform)
REGION_SD = 1.0  # region difficulty (latent scale), correlated 0.6 between the backbones
RUN_SD = 0.3  # a run's shift of all its regions (its threshold), independent per backbone
RESIDUAL_SD = 0.5
REGION_EFFECT = 0.3  # latent difference a - b under the alternative (about 10 points of recall)
BINS = len(why_regions.BIN_LABELS)  # each bin an independent answer of the same design
_NODES, _WEIGHTS = np.polynomial.hermite_e.hermegauss(60)


@dataclass(frozen=True)
class RegionDesign:
    """Fixed per scenario: regions per (category, bin), b's latent level per (category, bin), run sd per
    category (heteroscedastic)."""

    counts: np.ndarray
    level: np.ndarray
    run_sd: np.ndarray


def _region_design(scenario: Scenario, rng: np.random.Generator) -> RegionDesign:
    shape = (scenario.n_categories, BINS)
    return RegionDesign(rng.integers(REGION_COUNTS[0], REGION_COUNTS[1] + 1, shape), rng.normal(0.3, 0.8, shape),
                        RUN_SD * np.exp(0.3 * rng.normal(size=scenario.n_categories)))


def _region_truth(design: RegionDesign, shift: float) -> np.ndarray:
    """Per bin, (recall, overlap) of a - b over new seeds and new regions, categories weighted by their regions:
    E[latent > 0] and E[sigmoid(latent)] of a normal latent (Gauss-Hermite for the second)."""
    total = np.sqrt(REGION_SD ** 2 + design.run_sd[:, None] ** 2 + RESIDUAL_SD ** 2)  # categories x 1
    out = []
    for mean in (design.level + shift, design.level):
        recall = stats.norm.cdf(mean / total)
        overlap = (special.expit(mean[..., None] + total[..., None] * _NODES) * _WEIGHTS).sum(-1) / _WEIGHTS.sum()
        out.append(np.stack([recall, overlap], -1))
    weights = design.counts / design.counts.sum(0)
    return ((out[0] - out[1]) * weights[..., None]).sum(0)  # bins x (recall, overlap)


def _region_study(scenario: Scenario, design: RegionDesign, shift: float, rng: np.random.Generator) -> pd.DataFrame:
    """One study's region rows (region_frame's columns): new regions and new runs of both backbones."""
    seeds = np.asarray(scenario.seeds)
    units = design.counts.ravel()  # (category, bin) groups of regions
    group_category = np.repeat(np.arange(scenario.n_categories), BINS)
    first_region = np.concatenate([[0], np.cumsum(units)[:-1]])
    group = np.concatenate([np.full(count * seeds[c], g) for g, (count, c) in enumerate(zip(units, group_category))])
    region = np.concatenate([np.tile(np.arange(count), seeds[c]) for count, c in zip(units, group_category)])
    seed = np.concatenate([np.repeat(np.arange(seeds[c]), count) for count, c in zip(units, group_category)])
    category = group_category[group]
    run = np.concatenate([[0], np.cumsum(seeds)[:-1]])[category] + seed  # the (category, seed) run
    common = rng.normal(size=units.sum())
    frames = []
    for backbone, mean in (("a", design.level.ravel() + shift), ("b", design.level.ravel())):
        difficulty = REGION_SD * (np.sqrt(0.6) * common + np.sqrt(0.4) * rng.normal(size=units.sum()))
        shifts = rng.normal(0, design.run_sd[np.repeat(np.arange(scenario.n_categories), seeds)])
        latent = (mean[group] + difficulty[first_region[group] + region] + shifts[run]
                  + rng.normal(0, RESIDUAL_SD, len(group)))
        frames.append(pd.DataFrame({"backbone": backbone, "category": category, "seed": seed, "path": group,
                                    "region": region, "area_px": 10, "bin": group % BINS,
                                    "detected": (latent > 0).astype(float), "overlap_auc": special.expit(latent)}))
    return pd.concat(frames, ignore_index=True)


def _regions(scenario: Scenario, n_studies: int, seed: int) -> dict[str, Tally]:
    rng = seeded_rng("why calibration", "regions", scenario.name, seed)
    design = _region_design(scenario, rng)
    tallies = {"region recall difference": Tally(), "region overlap difference": Tally()}
    for null in (True, False):
        shift = 0.0 if null else REGION_EFFECT
        truth = _region_truth(design, shift)
        for _ in range(n_studies):
            table = why_regions.differences(_region_study(scenario, design, shift, rng), PAIR).set_index("bin")
            table = table.reindex(range(BINS))
            for column, (name, tally) in enumerate(zip(("recall", "overlap"), tallies.values())):
                tally.add(table[f"{name}_ci_low"].to_numpy(float), table[f"{name}_ci_high"].to_numpy(float),
                          truth[:, column], 0.0, null)
    return tallies


# ---------------------------------------------------------------------------------------------- stability

SPREAD_SD = 0.01  # b's seed sd in a typical category
SPREAD_RATIO = 1.5  # a's seed sd / b's under the alternative
SPREAD_KEYS = list(why_stability.SPREAD_METRICS)  # each metric an independent answer of the same design


def _stability(scenario: Scenario, n_studies: int, seed: int) -> dict[str, Tally]:
    rng = seeded_rng("why calibration", "stability", scenario.name, seed)
    sd_b = SPREAD_SD * np.exp(0.5 * rng.normal(size=(scenario.n_categories, len(SPREAD_KEYS))))
    category = np.repeat(np.arange(scenario.n_categories), scenario.seeds)
    seed_of = np.concatenate([np.arange(s) for s in scenario.seeds])
    tally = Tally()
    for null in (True, False):
        ratio = 1.0 if null else SPREAD_RATIO
        for _ in range(n_studies):
            values = 0.7 + rng.normal(0, 1, (2, len(category), len(SPREAD_KEYS))) * sd_b[category]
            values[0] = 0.7 + (values[0] - 0.7) * ratio
            frame = pd.DataFrame({"backbone": np.repeat(list(PAIR), len(category)),
                                  "category": np.tile(category, 2), "seed": np.tile(seed_of, 2),
                                  **dict(zip(SPREAD_KEYS, values.reshape(-1, len(SPREAD_KEYS)).T))})
            for key in SPREAD_KEYS:
                found = why_stability.spread_ratio(frame, PAIR, key)
                low, high = (np.nan, np.nan) if found is None else (found.low, found.high)
                tally.add(np.array([low]), np.array([high]), np.array([ratio]), 1.0, null)
    return {"stability spread ratio": tally}


SIMULATORS: list[Callable[[Scenario, int, int], dict[str, Tally]]] = [_scales, _regions, _stability]
POWER_AT = {"scale ablation difference": f"+{100 * SCALE_EFFECT:g} point mean difference",
            "region recall difference": f"a latent shift of {REGION_EFFECT:g} (about 10 points)",
            "region overlap difference": f"a latent shift of {REGION_EFFECT:g}",
            "stability spread ratio": f"a ratio of {SPREAD_RATIO:g}"}
RANDOM = {"scale ablation difference": "seeds random; categories and test images fixed",
          "region recall difference": "seeds and regions random; categories fixed",
          "region overlap difference": "seeds and regions random; categories fixed",
          "stability spread ratio": "seeds random; categories fixed"}


def _row(answer: str, scenario: Scenario, n_studies: int, tally: Tally) -> dict:
    seeds = sorted(set(scenario.seeds))
    no_interval = tally.intervals == 0 and tally.null_intervals == 0
    coverage = _rate(tally.covered, tally.intervals)
    size = _rate(tally.rejected_null, tally.null_intervals)
    if no_interval:
        passes = max(seeds) < 2  # the design cannot give one: right to refuse, wrong anywhere else
        note = ("one seed per category: the seed-to-seed variance cannot be estimated, so no interval is given"
                if passes else "no interval although the design has seeds to estimate one")
    else:
        passes = gate_passes(coverage, size, float("nan"), float("nan")) and tally.missing == 0  # no promise
        note = f"{RANDOM[answer]}; power at {POWER_AT[answer]} (no promise)"
        if tally.missing:
            note += f"; {tally.missing} intervals missing"
    return {"suite": "why", "answer": answer, "scenario": scenario.name, "n_categories": scenario.n_categories,
            "n_seeds": int(np.median(scenario.seeds)), "studies": n_studies, "coverage": coverage, "size": size,
            "power": _rate(tally.rejected_alt, tally.intervals), "promised_power": float("nan"),
            "passes": bool(passes), "note": note}


def rows(n_studies: int, seed: int, scenarios: list[Scenario] | None = None) -> pd.DataFrame:
    """The calibration table (calibration_table.CALIBRATION_COLUMNS): per answer and scenario, ``n_studies`` null
    and ``n_studies`` alternative studies. Coverage counts every interval of the alternative studies (4 maps x 3
    metrics per scale study, 4 size bins per region study, 4 metrics per stability study), size every interval of
    the null studies.
    ``passes``: coverage within COVERAGE_GATE and size at most SIZE_GATE, or no interval where the design cannot
    give one."""
    out = []
    work = [(scenario, simulate) for scenario in scenarios or SCENARIOS for simulate in SIMULATORS]
    for scenario, simulate in tqdm(work, desc="why calibration", unit="scenario x answer", leave=False):
        for answer, tally in simulate(scenario, n_studies, seed).items():
            out.append(_row(answer, scenario, n_studies, tally))
    return pd.DataFrame(out, columns=CALIBRATION_COLUMNS)


def describe() -> str:
    """The suite's part of docs/calibration.md: what each interval takes as random, and the simulated studies."""
    lines = ["| answer | random, fixed | power measured at |", "|---|---|---|"]
    lines += [f"| {answer} | {RANDOM[answer]} | {POWER_AT[answer]} |" for answer in RANDOM]
    designs = "; ".join(scenario.name for scenario in SCENARIOS)
    return "\n\n".join([
        " ".join(__doc__.split("\n\n")[1].split()),
        "\n".join(lines),
        f"Designs: {designs}. The categories' true differences, seed spreads and region counts are drawn once per "
        "design and held fixed; seeds and regions are drawn again in every study. With one seed in every category "
        "no interval can be estimated and the section says so instead of printing one: such a row passes when no "
        "interval is given.",
        "What the calibration decided: the percentile bootstrap of 3 seeds per category (the scale ablation's "
        "interval before) and the bootstrap of regions as independent draws (ignoring that a run moves all its "
        "regions together) gave way to the t intervals; Satterthwaite's degrees of freedom use the plug-in squares "
        "of each category's variance term (Welch's choice), since squares corrected for their bias under normality "
        "gave too short an interval when one category's seed spread dominated; the spread ratio's bootstrap over "
        "categories gave way to the log-F pivot, which holds whatever each category's own spread.",
    ])

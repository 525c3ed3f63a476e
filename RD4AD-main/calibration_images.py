"""The "images" calibration suite (calibration.SUITES): the per-image answers of image_inference.py on simulated
per-image AUPIMO values, with the gates of calibration_table.py."""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from scipy import stats
from tqdm import tqdm

from calibration_table import CALIBRATION_COLUMNS, TIDY_CHECKS, gate_passes, interval_checks, refused_row
from image_inference import image_answers, over_categories_arrays, per_category_arrays
from inference import TArrays
from significance import seeded_rng

__all__ = ["COVERAGE_DELTA", "IMAGE_SCENARIOS", "OVER_CATEGORIES", "PER_CATEGORY", "ImageScenario", "images_suite",
           "images_text", "simulate_images"]

PER_CATEGORY = "per category (these trainings, new images)"
OVER_CATEGORIES = "over categories (new images and trainings)"
COVERAGE_DELTA = 0.05  # the difference between the arms' latent levels in the studies that measure coverage
SIZE_SOLVE_STEPS = 60  # bisection steps that put a per-category study's truth at 0 (interval 2^-60 of [-1, 1])


@dataclass(frozen=True)
class ImageScenario:
    """A kind of study for the per-image answers (values are AUPIMO fractions: 0.01 = 1 point)."""

    name: str
    answer: str  # PER_CATEGORY or OVER_CATEGORIES
    n_categories: int
    n_seeds: int
    images: tuple[int, int] = (8, 60)  # anomalous images per category, drawn once per scenario in this range
    level: tuple[float, float] = (0.2, 0.6)  # each category's mean latent AUPIMO, drawn per study
    difficulty_sd: float = 0.3  # an image's difficulty, shared by both arms and every seed
    image_sd: float = 0.1  # an image's advantage of arm a over arm b (the image effect)
    seed_sd: float = 0.03  # an arm's training (seed) shift, shared by all of a category's images
    residual_sd: float = 0.08  # per image, arm and seed
    seed_counts: tuple[int, ...] = ()  # seeds per category in turn (default: n_seeds everywhere)

    def seeds(self) -> np.ndarray:
        counts = self.seed_counts or (self.n_seeds,)
        return np.resize(np.asarray(counts), self.n_categories)

    def sizes(self) -> np.ndarray:
        rng = seeded_rng("image sizes", self.name, self.answer, self.n_categories, self.n_seeds)
        return rng.integers(self.images[0], self.images[1] + 1, self.n_categories)


def _scenarios() -> list[ImageScenario]:
    out = []
    for seeds in (1, 3, 5):
        plain = ImageScenario("image effects, seed noise", PER_CATEGORY, 1, seeds)
        out.append(plain)
        if seeds == 3:
            out += [replace(plain, name="ties at 0 and 1", level=(-0.05, 0.15)),
                    replace(plain, name="ties at 1", level=(0.85, 1.05)),
                    replace(plain, name="seed noise dominates", seed_sd=0.08),
                    replace(plain, name="few images", images=(5, 6))]
    for categories in (5, 15):
        for seeds in (1, 3, 5):
            out.append(ImageScenario("image effects, seed noise", OVER_CATEGORIES, categories, seeds))
        plain = ImageScenario("", OVER_CATEGORIES, categories, 3)
        out += [replace(plain, name="ties at 0 and 1", level=(-0.05, 0.15)),
                replace(plain, name="seed noise dominates", seed_sd=0.08),
                replace(plain, name="missing and extra seeds", seed_counts=(3, 4, 2)),
                replace(plain, name="a single-seed category", seed_counts=(1, 3, 3, 3, 3))]
    return out


IMAGE_SCENARIOS = _scenarios()


def _clipped_mean(mean: np.ndarray, sd: float) -> np.ndarray:
    """E[min(max(X, 0), 1)] for X ~ N(mean, sd²): E[X⁺] − E[(X − 1)⁺]."""
    def above(k: float) -> np.ndarray:
        z = (mean - k) / sd
        return (mean - k) * stats.norm.cdf(z) + sd * stats.norm.pdf(z)
    return above(0.0) - above(1.0)


def _per_category_truth(level: np.ndarray, delta: np.ndarray, shift_a: np.ndarray, shift_b: np.ndarray,
                        scenario: ImageScenario) -> np.ndarray:
    """Mean over a study's trainings of the expected difference on a new image (the trainings fixed)."""
    sd = np.sqrt(scenario.difficulty_sd ** 2 + scenario.image_sd ** 2 / 4 + scenario.residual_sd ** 2)
    upper = _clipped_mean(level[:, None] + delta[:, None] / 2 + shift_a, sd)
    lower = _clipped_mean(level[:, None] - delta[:, None] / 2 + shift_b, sd)
    return (upper - lower).mean(axis=1)


def _null_delta(level: np.ndarray, shift_a: np.ndarray, shift_b: np.ndarray, scenario: ImageScenario) -> np.ndarray:
    """Per study the δ whose truth (these trainings) is 0: the truth rises with δ, so bisection on [-1, 1]."""
    low, high = np.full(len(level), -1.0), np.full(len(level), 1.0)
    for _ in range(SIZE_SOLVE_STEPS):
        middle = (low + high) / 2
        positive = _per_category_truth(level, middle, shift_a, shift_b, scenario) > 0
        low, high = np.where(positive, low, middle), np.where(positive, middle, high)
    return (low + high) / 2


def simulate_images(scenario: ImageScenario, n_studies: int, rng: np.random.Generator,
                    delta: float | None) -> tuple[list[np.ndarray], np.ndarray]:
    """Per category a (studies, n_c, S_c) table of per-image AUPIMO differences a − b, and each study's truth on the
    scenario's answer. ``delta``: the arms' difference of latent levels; None puts every study's truth at 0 (for
    the per-category answer δ is solved per study, as its trainings are part of the truth)."""
    tables, truths = [], []
    total_sd = np.sqrt(scenario.difficulty_sd ** 2 + scenario.image_sd ** 2 / 4 + scenario.seed_sd ** 2
                       + scenario.residual_sd ** 2)
    for n, seeds in zip(scenario.sizes(), scenario.seeds()):
        level = rng.uniform(*scenario.level, n_studies)
        shift_a, shift_b = (scenario.seed_sd * rng.standard_normal((n_studies, seeds)) for _ in range(2))
        if scenario.answer == PER_CATEGORY:
            shift = _null_delta(level, shift_a, shift_b, scenario) if delta is None else np.full(n_studies, delta)
            truths.append(_per_category_truth(level, shift, shift_a, shift_b, scenario))
        else:
            shift = np.full(n_studies, 0.0 if delta is None else delta)
            truths.append(_clipped_mean(level + shift / 2, total_sd) - _clipped_mean(level - shift / 2, total_sd))
        latent = level[:, None, None] + scenario.difficulty_sd * rng.standard_normal((n_studies, n, 1))
        advantage = (shift[:, None, None] + scenario.image_sd * rng.standard_normal((n_studies, n, 1))) / 2
        arm_a = latent + advantage + shift_a[:, None, :] + scenario.residual_sd * rng.standard_normal(
            (n_studies, n, seeds))
        arm_b = latent - advantage + shift_b[:, None, :] + scenario.residual_sd * rng.standard_normal(
            (n_studies, n, seeds))
        tables.append(np.clip(arm_a, 0.0, 1.0) - np.clip(arm_b, 0.0, 1.0))
    return tables, np.stack(truths, axis=1)


def _usable(scenario: ImageScenario) -> np.ndarray:
    """The categories the answer over categories takes (two seeds and two images)."""
    return (scenario.seeds() >= 2) & (scenario.sizes() >= 2)


def _arrays(scenario: ImageScenario, tables: list[np.ndarray]) -> TArrays | None:
    if scenario.answer == PER_CATEGORY:
        return per_category_arrays(tables[0])
    usable = [table for table, ok in zip(tables, _usable(scenario)) if ok]
    return over_categories_arrays(usable) if usable else None


def _truth(scenario: ImageScenario, truths: np.ndarray) -> np.ndarray:
    if scenario.answer == PER_CATEGORY:
        return truths[:, 0]
    return truths[:, _usable(scenario)].mean(axis=1)


def _tidy_note(scenario: ImageScenario, tables: list[np.ndarray], arrays: TArrays | None) -> str:
    """The first studies answered through the tidy path the report takes (image_answers), checked against the
    fast path: the same p and interval; returns the first study's note (why it was not computed)."""
    notes = []
    for study in range(min(TIDY_CHECKS, len(tables[0]))):
        units = pd.DataFrame([(f"c{c:02d}", s, f"i{i:03d}", table[study, i, s]) for c, table in enumerate(tables)
                              for i in range(table.shape[1]) for s in range(table.shape[2])],
                             columns=["category", "seed", "unit", "difference"])
        answers = image_answers(units)
        row = answers.iloc[0] if scenario.answer == PER_CATEGORY else answers.iloc[-1]
        expected = (np.nan,) * 3 if arrays is None else (arrays.p_value[study], arrays.low[study], arrays.high[study])
        if not np.allclose((row["p_value"], row["ci_low"], row["ci_high"]), expected, rtol=1e-9, atol=1e-12,
                           equal_nan=True):
            raise AssertionError(f"the tidy path answers study {study} differently: {row.to_dict()} vs {expected}")
        notes.append(str(row["note"]))
    return notes[0] if notes else ""


def _row(scenario: ImageScenario, n_studies: int, seed: int) -> dict:
    """Size from studies whose truth is 0, coverage from studies at COVERAGE_DELTA; no power (no promise)."""
    rng = seeded_rng("calibration images", seed, scenario.name, scenario.answer, scenario.n_categories,
                     scenario.n_seeds)
    null_tables, _ = simulate_images(scenario, n_studies, rng, None)
    null = _arrays(scenario, null_tables)
    note = _tidy_note(scenario, null_tables, null)
    sizes = scenario.sizes()
    base = {"suite": "images", "answer": scenario.answer, "scenario": scenario.name,
            "n_categories": scenario.n_categories, "n_seeds": scenario.n_seeds, "studies": n_studies,
            "power": np.nan, "promised_power": np.nan}
    if null is None or np.isnan(null.p_value).all():
        return {**base, **refused_row(note)}
    alt_tables, truths = simulate_images(scenario, n_studies, rng, COVERAGE_DELTA)
    alt, truth = _arrays(scenario, alt_tables), _truth(scenario, truths)
    checks = interval_checks(null, alt, truth)
    ties = float(np.mean(np.concatenate([table.ravel() for table in alt_tables]) == 0))
    notes = [f"{sizes.min()}-{sizes.max()} images per category" if sizes.min() != sizes.max() else
             f"{sizes[0]} images", f"{ties:.0%} of the differences tied at 0",
             f"coverage at a true difference of {np.mean(np.abs(truth)) * 100:.1f} points (mean |truth|)"]
    left_out = int((~_usable(scenario)).sum()) if scenario.answer == OVER_CATEGORIES else 0
    if left_out:
        notes.append(f"{left_out} single-seed categor{'y' if left_out == 1 else 'ies'} left out, as the answer names")
    passes = checks.agree and gate_passes(checks.coverage, checks.size, np.nan, np.nan)
    return {**base, "coverage": checks.coverage, "size": checks.size, "passes": passes,
            "note": "; ".join([*notes, *checks.notes])}


def images_text() -> str:
    """What the suite simulates, with its settings read from the scenarios (points of AUPIMO)."""
    plain = ImageScenario("", PER_CATEGORY, 1, 1)
    special = {s.name: s for s in IMAGE_SCENARIOS}
    points = lambda pair: f"{100 * pair[0]:g} to {100 * pair[1]:g}"  # noqa: E731
    return (
        "The \"images\" suite simulates per-image AUPIMO differences for image_inference.py. A category has n "
        "anomalous images; each image has a difficulty shared by both arms and every seed and an advantage of arm a "
        "over arm b (the image effect); each arm's training (seed) shifts all of the category's images at once "
        "(seed noise), and each image, arm and seed has a residual. An image's AUPIMO is its latent value clipped to "
        "[0, 1], so many images sit at exactly 0 (the defect never reaches the band) or 1 in both arms and their "
        "differences tie at 0. Each category's level is drawn per study. The truths are exact (the mean of a "
        "clipped normal): per category, the mean over the study's trainings of the expected difference on a new "
        "image (for the size, each study's latent difference is solved so that this truth is 0); over categories, "
        "the mean of the categories' expected differences over images and trainings (size: latent difference 0). "
        f"Coverage is measured at a latent difference of {100 * COVERAGE_DELTA:g} points; the tables promise no "
        f"power, so none is measured. Settings (points): difficulty sd {100 * plain.difficulty_sd:g}, image-effect "
        f"sd {100 * plain.image_sd:g}, seed sd {100 * plain.seed_sd:g} "
        f"({100 * special['seed noise dominates'].seed_sd:g} where \"seed noise dominates\"), "
        f"residual sd {100 * plain.residual_sd:g}; levels {points(plain.level)} "
        f"(\"ties at 0 and 1\": {points(special['ties at 0 and 1'].level)}, \"ties at 1\": "
        f"{points(special['ties at 1'].level)}); {plain.images[0]}-{plain.images[1]} images per category, drawn once "
        f"per scenario (\"few images\": {special['few images'].images[0]}-{special['few images'].images[1]}); "
        "seeds per category in turn 3, 4, 2 in \"missing and extra seeds\", 1, 3, 3, 3, 3 in \"a single-seed "
        "category\".")


def images_suite(n_studies: int, seed: int) -> pd.DataFrame:
    """The per-image answers in every scenario of IMAGE_SCENARIOS (images_text says what is simulated)."""
    rows = [_row(scenario, n_studies, seed) for scenario in tqdm(IMAGE_SCENARIOS, desc="images suite",
                                                                  unit="scenario", leave=False)]
    return pd.DataFrame(rows, columns=CALIBRATION_COLUMNS)


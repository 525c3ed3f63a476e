"""Per-image paired differences (e.g. each anomalous test image's AUPIMO under two arms): one answer per category
and one over categories, each with its sampling model stated.

d[i, s] = value_a − value_b of test image i (the same path in both arms) in seed s, for the n images both arms scored
in every one of the S seeds both ran. What is measured against stays fixed throughout (for AUPIMO the normal test
images, which set each run's false-positive band). The p and the interval of each answer come from one t statistic,
so the interval excludes 0 exactly when p < 1 − confidence.

- **Per category, "these trainings, new images"**: random are the test images (a draw from the category's population
  of such images); fixed are the S trained models of each arm. Estimand: the mean over these trainings of the
  expected difference on a new image. Student's t over the images' seed-averaged differences (n − 1 degrees of
  freedom): each image is one unit whatever S, so one seed is enough, but the answer does not generalise to new
  trainings. It cannot be made to: a seed moves all of a category's images at once, and 2 or 3 seeds estimate that
  part with 1 or 2 degrees of freedom, too few for Satterthwaite's approximation to keep its level.
- **Over categories, "on these categories, new images and trainings"**: random are the test images and the training
  seeds; fixed are the categories. Estimand: the mean over the categories (every one weighing the same) of each
  one's expected difference over images and trainings. The images are crossed with the seeds (the same images in
  every seed), so a category's mean has variance σ²_image / n + σ²_seed / S + σ²_residual / (n S), each component
  from the two-way mean squares (floored at 0); categories are independent (their own images and trainings), so the
  estimate's variance is Σ_c V_c / C², with Satterthwaite's degrees of freedom over every category's mean squares.
  A category without two seeds and two images is named and left out; with one seed everywhere the answer cannot be
  computed (as inference.py's "on these categories").

calibration_images.py checks both answers by simulation (docs/calibration.md, suite "images").
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from errors import RDError
from inference import CONFIDENCE, TArrays, new_arrays, seed_range_text, t_answer

__all__ = ["IMAGE_ANSWER_COLUMNS", "OVERALL_ROW", "CrossedParts", "crossed_parts", "crossed_tables", "image_answers",
           "over_categories_arrays", "per_category_arrays"]

OVERALL_ROW = "overall"  # the category column of the answer over categories
IMAGE_ANSWER_COLUMNS = ["category", "n_categories", "seeds", "n_images", "mean_diff", "ci_low", "ci_high", "p_value",
                        "df", "images_a", "images_b", "images_tied", "note"]


@dataclass(frozen=True)
class CrossedParts:
    """One category's mean difference in every study of a batch, and the variance of that mean as a sum
    Σ_k coef_k MS_k over the mean squares of image, seed and residual (each with its degrees of freedom)."""

    estimate: np.ndarray  # (...)
    coef: np.ndarray  # (..., 3)
    mean_squares: np.ndarray  # (..., 3)
    df: np.ndarray  # (3,)
    scale: np.ndarray  # (...) the largest |difference|: what "no spread" is measured against

    @property
    def terms(self) -> np.ndarray:
        """(..., 3) each term of the variance: coef_k MS_k."""
        return self.coef * self.mean_squares


def crossed_parts(differences: np.ndarray) -> CrossedParts:
    """The two-way mean squares of every study's (n, S) table (..., n, S) of differences (n, S >= 2, no NaN) and the
    coefficients of the mean's variance σ²_image / n + σ²_seed / S + σ²_residual / (n S), each component
    estimated by its mean-square difference floored at 0 (then its coefficient is 0)."""
    d = np.asarray(differences, dtype=np.float64)
    n, seeds = d.shape[-2:]
    if n < 2 or seeds < 2 or np.isnan(d).any():
        raise ValueError(f"expected an (n, S) table with n, S >= 2 and no NaN, got {d.shape[-2:]}")
    # Deviations from the table's first cell: a table of equal values gives exactly 0 spread.
    shifted = d - d[..., :1, :1]
    grand = shifted.mean(axis=(-2, -1))
    rows, columns = shifted.mean(axis=-1), shifted.mean(axis=-2)
    ss_image = seeds * ((rows - grand[..., None]) ** 2).sum(axis=-1)
    ss_seed = n * ((columns - grand[..., None]) ** 2).sum(axis=-1)
    residual = shifted - rows[..., :, None] - columns[..., None, :] + grand[..., None, None]
    ss_residual = (residual ** 2).sum(axis=(-2, -1))
    df = np.array([n - 1, seeds - 1, (n - 1) * (seeds - 1)], dtype=np.float64)
    mean_squares = np.stack([ss_image, ss_seed, ss_residual], axis=-1) / df
    keep_image = (mean_squares[..., 0] > mean_squares[..., 2]).astype(np.float64)
    keep_seed = (mean_squares[..., 1] > mean_squares[..., 2]).astype(np.float64)
    coef = np.stack([keep_image, keep_seed, 1.0 - keep_image - keep_seed], axis=-1) / (n * seeds)
    return CrossedParts(d[..., 0, 0] + grand, coef, mean_squares, df, np.abs(d).max(axis=(-2, -1)))


def over_categories_arrays(categories: list[np.ndarray], confidence: float = CONFIDENCE) -> TArrays:
    """The answer over categories (images and seeds random) in every study of a batch: one (..., n_c, S_c) table per
    category (n_c, S_c >= 2; sizes may differ between categories); the mean of the categories' means, each category
    weighing the same, Satterthwaite's degrees of freedom over all their mean squares."""
    if not categories:
        raise ValueError("expected at least one category")
    parts = [crossed_parts(table) for table in categories]
    count = len(parts)
    estimate = sum(part.estimate for part in parts) / count
    variance = sum(part.terms.sum(axis=-1) for part in parts) / count ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        denominator = sum(((part.terms / count ** 2) ** 2 / part.df).sum(axis=-1) for part in parts)
        df = variance ** 2 / denominator
    scale = np.max(np.stack([part.scale for part in parts]), axis=0)
    return t_answer(estimate, np.sqrt(variance), df, np.ones(np.shape(estimate), bool), confidence, scale)


def per_category_arrays(differences: np.ndarray, confidence: float = CONFIDENCE) -> TArrays:
    """The per-category answer (images random, these trainings) in every study of a batch: ``differences``
    (..., n images, S seeds); Student's t over the images' seed-averaged differences."""
    return new_arrays(np.asarray(differences, dtype=np.float64).mean(axis=-1), confidence)


# ----------------------------------------------------------------------------------------------------
# a tidy table of per-image differences
# ----------------------------------------------------------------------------------------------------
def crossed_tables(units: pd.DataFrame) -> dict[str, tuple[np.ndarray, str]]:
    """Per category: its (n images, S seeds) table of differences, over the images present in every seed of that
    category (sorted by unit and seed), and a note naming the images left out because some seed lacks them."""
    missing = [column for column in ("category", "seed", "unit", "difference") if column not in units.columns]
    if missing:
        raise RDError(f"units table: expected the columns category, seed, unit, difference; missing "
                      f"{', '.join(missing)}")
    if units.duplicated(["category", "seed", "unit"]).any():
        raise RDError("units table: a (category, seed, unit) appears more than once; expected one difference each")
    out = {}
    for category, group in units.groupby("category", sort=True):
        wide = group.pivot(index="unit", columns="seed", values="difference").sort_index().sort_index(axis=1)
        complete = wide.dropna()
        left = len(wide) - len(complete)
        note = f"{left} image{'s' if left != 1 else ''} not scored in every seed left out" if left else ""
        out[str(category)] = (complete.to_numpy(dtype=np.float64), note)
    return out


def _uncomputed(values: np.ndarray, what: str) -> str:
    """Why a computable design gave no answer: every difference 0, or no spread."""
    if not np.abs(values).max(initial=0.0):
        return "not tested: every image tied (difference 0) in every seed"
    return f"cannot be computed: {what} do not vary"


def _row(category: str, n_categories: int, seeds: str, tables: list[np.ndarray], arrays: TArrays | None,
         note: str, what: str) -> dict[str, object]:
    """One row of IMAGE_ANSWER_COLUMNS: the answer's numbers (NaN and the note where it was not computed) and the
    images on each side by their seed-averaged difference."""
    means = np.concatenate([table.mean(axis=1) for table in tables]) if tables else np.zeros(0)
    values = np.concatenate([table.ravel() for table in tables]) if tables else np.zeros(0)
    row = {"category": category, "n_categories": n_categories, "seeds": seeds, "n_images": int(means.size),
           "mean_diff": float(np.mean([table.mean() for table in tables])) if tables else np.nan, "ci_low": np.nan,
           "ci_high": np.nan, "p_value": np.nan, "df": np.nan, "images_a": int((means > 0).sum()),
           "images_b": int((means < 0).sum()), "images_tied": int((means == 0).sum()), "note": note}
    if arrays is not None and not note:
        first = lambda array: float(np.asarray(array).reshape(-1)[0])  # noqa: E731
        row.update(mean_diff=first(arrays.estimate), ci_low=first(arrays.low), ci_high=first(arrays.high),
                   p_value=first(arrays.p_value), df=first(arrays.df))
        if np.isnan(row["p_value"]):
            row["note"] = _uncomputed(values, what)
    return row


def image_answers(units: pd.DataFrame, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Per category (images random, these trainings), then over categories (row ``overall``: images and seeds
    random): the mean difference and its t answer (IMAGE_ANSWER_COLUMNS). ``units`` holds category, seed, unit,
    difference (inference.paired_units). images_a / images_b / images_tied count the images whose mean over seeds
    is > 0, < 0, = 0."""
    rows, usable, left_out = [], [], {}
    for category, (table, dropped) in crossed_tables(units).items():
        n, seeds = table.shape
        design = "" if n >= 2 else \
            "cannot be computed for this design: fewer than 2 images, so the image-to-image variance is unknown"
        arrays = per_category_arrays(table[None], confidence) if not design else None
        row = _row(category, 1, str(seeds), [table] if n else [], arrays, design, "the images' differences")
        row["note"] = "; ".join(filter(None, [row["note"], dropped]))
        rows.append(row)
        if n >= 2 and seeds >= 2:
            usable.append(table)
        else:
            left_out[category] = "one seed" if n >= 2 else "fewer than 2 images"
    reasons: dict[str, list[str]] = {}  # the categories left out for the same reason, named together
    for category, why in left_out.items():
        reasons.setdefault(why, []).append(category)
    notes = ["left out: " + "; ".join(f"{', '.join(cs)} ({why})" for why, cs in reasons.items())] if left_out else []
    if usable:
        arrays = over_categories_arrays([table[None] for table in usable], confidence)
        overall = _row(OVERALL_ROW, len(usable), seed_range_text([t.shape[1] for t in usable]), usable, arrays, "",
                       "the differences")
    else:
        overall = _row(OVERALL_ROW, 0, "0", [], None, "cannot be computed for this design: no category has two "
                       "seeds and two images, so the seed-to-seed variance is unknown", "")
    overall["note"] = "; ".join(filter(None, [overall["note"], *notes]))
    return pd.DataFrame(rows + [overall], columns=IMAGE_ANSWER_COLUMNS)

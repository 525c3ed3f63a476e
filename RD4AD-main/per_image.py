"""The report's per-image AUPIMO tests: each run's aupimo.csv (one value per anomalous test image) paired across the
two backbones of a pair by image path (inference.paired_units), answered per category and over categories with the
test images and the training seeds random (image_inference.py); Benjamini-Hochberg over the table's rows, which are
exploratory."""
from __future__ import annotations

import numpy as np
import pandas as pd

from comparison import ARM, CONFIDENCE, pair_label, unfinished_flags
from image_inference import IMAGE_ANSWER_COLUMNS, OVERALL_ROW, image_answers
from inference import paired_units
from report_tables import fmt, format_p, interval_text, multi_dataset
from runs import AUPIMO_FILE, load_aupimo
from significance import benjamini_hochberg

__all__ = ["IMAGE_TEST_COLUMNS", "aupimo_units", "image_table", "image_tests", "image_text"]

IMAGE_TEST_COLUMNS = ["pair", "dataset", *IMAGE_ANSWER_COLUMNS[:-1], "p_bh", "note", "flags"]


def aupimo_units(runs_frame: pd.DataFrame) -> pd.DataFrame:
    """Every run's finite per-image AUPIMO: backbone, dataset, category, seed, unit (the image path), value."""
    frames = []
    for run in runs_frame.itertuples():
        table = None if np.isnan(run.aupimo) else load_aupimo(run.run_dir)
        if table is None:
            continue
        table = table[np.isfinite(table["aupimo"])]
        frames.append(pd.DataFrame({ARM: run.backbone, "dataset": run.dataset, "category": run.category,
                                    "seed": run.seed, "unit": table["path"], "value": table["aupimo"]}))
    columns = [ARM, "dataset", "category", "seed", "unit", "value"]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def image_tests(runs_frame: pd.DataFrame, pairs: list[tuple[str, str]],
                confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Per pair and dataset: one row per category with per-image AUPIMO in both backbones and an ``overall`` row
    (image_inference.image_answers), the unfinished runs flagged; ``p_bh``: Benjamini-Hochberg over every row."""
    units = aupimo_units(runs_frame)
    rows = []
    for pair in pairs:
        for dataset, frame in units.groupby("dataset", sort=True):
            paired = paired_units(frame, pair[0], pair[1], arm=ARM)
            if paired.empty:
                continue
            members = runs_frame[(runs_frame["dataset"] == dataset) & runs_frame["backbone"].isin(pair)]
            for answer in image_answers(paired, confidence).to_dict("records"):
                chosen = members if answer["category"] == OVERALL_ROW else \
                    members[members["category"] == answer["category"]]
                rows.append({"pair": pair_label(pair), "dataset": dataset, **answer,
                             "flags": unfinished_flags(chosen)})
    frame = pd.DataFrame(rows, columns=IMAGE_TEST_COLUMNS)
    for column in ("mean_diff", "ci_low", "ci_high", "p_value", "df"):
        frame[column] = frame[column].astype(float)
    frame["p_bh"] = benjamini_hochberg(frame["p_value"]) if len(frame) else pd.Series(dtype=float)
    return frame


def image_table(tests: pd.DataFrame, runs_frame: pd.DataFrame) -> pd.DataFrame:
    """The per-image tests formatted: differences in percentage points, the interval beside its p."""
    rows = []
    for row in tests.itertuples():
        a, b = row.pair.split(" vs ")
        dataset = {"dataset": row.dataset} if multi_dataset(runs_frame) else {}
        category = row.category if row.category != OVERALL_ROW else \
            f"overall (mean of {row.n_categories} categor{'y' if row.n_categories == 1 else 'ies'})"
        random = "images" if row.category != OVERALL_ROW else "images and seeds"
        rows.append({"pair (a − b)": f"{a} − {b}", **dataset, "category": category, "random": random,
                     "seeds": row.seeds,
                     "anomalous images": row.n_images, "mean difference (points)": fmt(row.mean_diff, "+.2f", 100.0),
                     f"{CONFIDENCE:.0%} CI": interval_text(row.ci_low, row.ci_high),
                     "p": format_p(row.p_value), "p (BH, exploratory)": format_p(row.p_bh),
                     "df": fmt(row.df, ".1f"), "images a > b": row.images_a, "images b > a": row.images_b,
                     "images tied": row.images_tied, "note": row.note or "", "flags": row.flags})
    return pd.DataFrame(rows)


def image_text(tests: pd.DataFrame) -> str:
    """How the per-image tests were done: the pairing, the sampling model, the procedure, the correction."""
    text = (
        f"Each anomalous test image's AUPIMO ({AUPIMO_FILE}) of backbone a minus that of backbone b, paired on the "
        "image path, in each seed both ran; images without a value in both runs, or not in every seed, are left out. "
        "The normal test images, which set each run's false-positive band, are fixed throughout. **Per category** "
        "(these trainings, new images): random are the anomalous test images (a draw from the category's population "
        "of such images), fixed are the trained models of each seed; Student's t over the images' differences "
        "averaged over the seeds (images − 1 degrees of freedom), so every image is one unit and one seed is enough, "
        "but a row speaks of these trainings, not of the backbones in general: a seed moves all of a category's "
        "images at once, and 2 or 3 seeds are too few to estimate that part with a calibrated level. **Overall** "
        "(on these categories, new images and trainings): random are the test images and the training seeds, the "
        "categories fixed; the mean of the categories' mean differences, every category weighing the same. The "
        "same images are scored in every seed (crossed), so each category's mean has variance image variance / "
        "images + seed variance / seeds + residual / (images x seeds), each part from the two-way mean squares "
        "(floored at 0), summed over the categories (divided by their count squared) with Satterthwaite's degrees "
        "of freedom; a category without two seeds and two images is left out and named. Each interval and its p "
        "come from one t statistic, so the interval excludes 0 exactly when p < "
        f"{1 - CONFIDENCE:.2f}. Images a > b, b > a and tied count the images by their mean over seeds. "
        "Benjamini-Hochberg runs over this table's rows, which are exploratory; docs/calibration.md (suite "
        "\"images\") checks the intervals' coverage and the tests' level by simulation."
    )
    if tests.empty:
        text += (" No pair has per-image AUPIMO in both backbones here (aupimo.csv with values: masks, and a band the "
                 "normal test pixels resolve); the note on metrics no run measured says why.")
    return text

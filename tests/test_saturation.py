"""The synthetic validation set's saturation in the report: runs.load_runs reads each run's synthetic AUPRO at its
evaluated epoch from history.csv, and the report's notes count the runs above 0.99; the method text states the
resolution of the pixel metrics."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

import report
import runs
from fake_results import SIZE, write_fake_results

FAIR_PAIR = ("resnet50", "convnext_tiny")


def _with_synthetic_scores(directory: Path, scores: dict[int, float]) -> None:
    """Add the synthetic-validation columns to a fake run's history.csv: ``scores`` by epoch, empty elsewhere."""
    history = pd.read_csv(directory / runs.HISTORY_FILE)
    history["synth_image_auroc"] = history["synth_pixel_auroc"] = 0.5
    history["synth_aupro"] = history["epoch"].map(scores)
    runs.atomic_write_text(directory / runs.HISTORY_FILE, history.to_csv(index=False))


def test_the_report_counts_runs_with_a_saturated_synthetic_set(tmp_path):
    results = write_fake_results(tmp_path, backbones=FAIR_PAIR, categories=("synth_object",), seeds=(0, 1),
                                 selection="synthetic-val")
    directories = sorted(runs.find_runs(results))
    selected = [int(runs.read_json(d / runs.METRICS_FILE)["selected_epoch"]) for d in directories]
    # the selected epoch's score counts, not the best or the last one: 1.0 elsewhere must not count
    _with_synthetic_scores(directories[0], {selected[0]: 0.995, selected[0] - 1: 0.5})
    _with_synthetic_scores(directories[1], {selected[1]: 0.99, selected[1] - 1: 1.0})  # at 0.99: not above
    _with_synthetic_scores(directories[2], {selected[2]: 0.999})
    frame = runs.load_runs(results).set_index("run_dir")
    got = [frame.loc[str(d), "selected_synth_aupro"] for d in directories]
    assert got[:3] == [0.995, 0.99, 0.999] and np.isnan(got[3])  # the fourth run has no synthetic scores
    note = runs.synthetic_saturation_note(frame)
    assert note.startswith("**Synthetic validation:** 2 of 3 runs scored synthetic AUPRO > 0.99 at their selected "
                           "epoch (saturated:")
    rep = report.build_report(results, n_boot=20)
    assert note in report.report_notes(rep)
    # the method text states the resolution of the pixel metrics, from the runs' config.json
    assert f"Pixel metrics are computed at the training image size ({SIZE} px): maps and masks at that size" \
        in report.tests_method(rep)
    assert runs.synthetic_saturation_note(frame.assign(selected_synth_aupro=float("nan"))) is None


def test_the_note_names_categories_whose_synthetic_set_is_grayscale(tmp_path):
    """config.json's ``synthetic_set`` (train.py, from synthval) says whether a run's validation images are grayscale:
    the synthetic-validation line names those categories; runs that predate the record name none."""
    results = write_fake_results(tmp_path, backbones=FAIR_PAIR, categories=("synth_object", "synth_texture"),
                                 seeds=(0,), selection="synthetic-val")
    for directory in runs.find_runs(results):
        config = runs.read_json(directory / runs.CONFIG_FILE)
        _with_synthetic_scores(directory, {int(runs.read_json(directory / runs.METRICS_FILE)["selected_epoch"]): 0.5})
        config["synthetic_set"] = {"generator_version": 3, "grayscale": config["category"] == "synth_texture"}
        runs.atomic_write_json(directory / runs.CONFIG_FILE, config)
    frame = runs.load_runs(results)
    assert frame.groupby("category")["synthetic_grayscale"].all().to_dict() == {"synth_object": False,
                                                                                 "synth_texture": True}
    note = runs.synthetic_saturation_note(frame)
    assert note == ("**Synthetic validation:** 0 of 4 runs scored synthetic AUPRO > 0.99 at their selected epoch. "
                    "Grayscale images (synth_texture): their synthetic anomalies are grayscale too, so the set rewards "
                    "no colour cue.")
    for directory in runs.find_runs(results):  # as written before generator version 3
        config = runs.read_json(directory / runs.CONFIG_FILE)
        runs.atomic_write_json(directory / runs.CONFIG_FILE, {k: v for k, v in config.items() if k != "synthetic_set"})
    assert runs.synthetic_saturation_note(runs.load_runs(results)).endswith("at their selected epoch.")

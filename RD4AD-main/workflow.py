"""The trainer notebooks' steps as functions, so that the notebooks stay thin.

The notebooks train and evaluate through ``train.train_run`` and ``evaluate.evaluate_run``, the very
functions behind ``main.py train`` and ``main.py test``; this module only builds their configs and
shapes their outputs into tables.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

import check_data
from recipe import TrainConfig, check_config
from sweep import parse_list, resolve_categories
from synth import generate

__all__ = ["comma_list", "data_table", "ensure_demo_data", "generate_demo_data", "metrics_table", "notebook_configs",
           "sweep_configs"]

METRIC_COLUMNS = ("image_auroc", "pixel_auroc", "aupro", "f1_max", "threshold", "accuracy", "precision",
                  "recall", "f1", "aupro_5pct", "aupimo", "seg_f1", "seg_f1_max")


def generate_demo_data(data_root: str | Path, image_size: int) -> list[str]:
    """The demo's synthetic data set (two categories, 40 train and 30 test images each); its category names."""
    return generate(data_root, categories=2, image_size=image_size, n_train=40, n_test=30, seed=0)


def ensure_demo_data(data_root: str, generate_if_missing: bool, image_size: int) -> None:
    """Write the synthetic demo data set at ``data_root`` when asked to and it is not there yet."""
    if generate_if_missing and not Path(data_root).exists():
        generate_demo_data(data_root, image_size)


def comma_list(value: str | int | Sequence[str | int]) -> str:
    """A notebook parameter as the comma list the command line takes: papermill passes ``-p SEEDS 0`` as an
    int, ``-p SEEDS 0,1`` as a string, and YAML/JSON lists as lists; all three mean the same."""
    if isinstance(value, (list, tuple)):
        return ",".join(str(item) for item in value)
    return str(value)


def sweep_configs(data_root: str, backbone: str, categories: str | Sequence[str], seeds: str | int | Sequence[int],
                  **settings) -> list[TrainConfig]:
    """One checked TrainConfig per (category, seed); ``settings`` are TrainConfig fields (epochs, image_size, ...).
    A bad value is an error naming the notebook parameter (upper case) that set it."""
    layout = {key: settings[key] for key in ("data_format", "split_csv") if key in settings}
    configs = [TrainConfig(data_root=data_root, category=category, backbone=backbone, seed=seed, **settings)
               for category in resolve_categories(data_root, comma_list(categories), **layout)
               for seed in parse_list(comma_list(seeds), "SEEDS", int)]
    for config in configs:
        check_config(config, lambda name: f"parameter {name.upper()}")
    return configs


def notebook_configs(demo: bool, data_root: str, backbone: str, categories: str | Sequence[str],
                     seeds: str | int | Sequence[int], **settings) -> list[TrainConfig]:
    """The trainer notebooks' runs. Only with ``demo`` is synthetic data written to a missing data root and a
    random teacher used (loudly, in the report too) when the ImageNet weights cannot be loaded."""
    if demo:
        ensure_demo_data(data_root, True, settings.get("image_size", 64))
        print("DEMO: synthetic data if the data root was missing, and a RANDOM teacher if the ImageNet weights "
              "cannot be loaded; the results then only show that the pipeline runs")
    return sweep_configs(data_root, backbone, categories, seeds, fallback_random_teacher=demo, **settings)


def data_table(configs: list[TrainConfig]) -> pd.DataFrame:
    """check-data's counts for each category of the sweep."""
    seen, rows = set(), []
    for config in configs:
        if config.category in seen:
            continue
        seen.add(config.category)
        counts = check_data.check_category(config.data_root, config.category, config.image_size,
                                           config.val_fraction, config.split_seed, data_format=config.data_format,
                                           split_csv=config.split_csv)
        rows.append({k: counts[k] for k in ("category", "kind", "train_good", "train", "validation", "test_good",
                                            "test_defect", "defect_types", "has_masks")})
    return pd.DataFrame(rows)


def metrics_table(results: list[dict]) -> pd.DataFrame:
    """One row per evaluated run: the metrics of metrics.json (pixel metrics None without masks)."""
    frame = pd.DataFrame([{"backbone": r["backbone"], "category": r["category"], "seed": r["seed"],
                           **{c: r.get(c) for c in METRIC_COLUMNS}} for r in results])
    return frame.set_index(["backbone", "category", "seed"])

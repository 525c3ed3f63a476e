"""The trainer notebooks' steps as functions, so that the notebooks stay thin.

The notebooks train and evaluate through ``train.train_run`` and ``evaluate.evaluate_run``, the very
functions behind ``main.py train`` and ``main.py test``; this module only builds their configs and
shapes their outputs into tables.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

import check_data
from recipe import TrainConfig
from sweep import parse_list, resolve_categories
from synth import generate

__all__ = ["data_table", "ensure_demo_data", "generate_demo_data", "metrics_table", "sweep_configs"]

METRIC_COLUMNS = ("image_auroc", "pixel_auroc", "aupro", "f1_max", "threshold", "accuracy", "precision",
                  "recall", "f1")


def generate_demo_data(data_root: str | Path, image_size: int) -> list[str]:
    """The demo's synthetic data set (two categories, 40 train and 30 test images each); its category names."""
    return generate(data_root, categories=2, image_size=image_size, n_train=40, n_test=30, seed=0)


def ensure_demo_data(data_root: str, generate_if_missing: bool, image_size: int) -> None:
    """Write the synthetic demo data set at ``data_root`` when asked to and it is not there yet."""
    if generate_if_missing and not Path(data_root).exists():
        generate_demo_data(data_root, image_size)


def sweep_configs(data_root: str, backbone: str, categories: str, seeds: str, **settings) -> list[TrainConfig]:
    """One TrainConfig per (category, seed); ``settings`` are TrainConfig fields (epochs, image_size, ...)."""
    layout = {key: settings[key] for key in ("data_format", "split_csv") if key in settings}
    return [TrainConfig(data_root=data_root, category=category, backbone=backbone, seed=seed, **settings)
            for category in resolve_categories(data_root, categories, **layout)
            for seed in parse_list(seeds, "SEEDS", int)]


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
        rows.append({k: counts[k] for k in ("category", "kind", "train", "validation", "test_good",
                                            "test_defect", "defect_types", "has_masks")})
    return pd.DataFrame(rows)


def metrics_table(results: list[dict]) -> pd.DataFrame:
    """One row per evaluated run: the metrics of metrics.json (pixel metrics None without masks)."""
    frame = pd.DataFrame([{"backbone": r["backbone"], "category": r["category"], "seed": r["seed"],
                           **{c: r.get(c) for c in METRIC_COLUMNS}} for r in results])
    return frame.set_index(["backbone", "category", "seed"])

"""Where a run's files live and what they hold: the contract between training, evaluation and reports.

One run = one (backbone, category, seed). Its directory ``<results>/<backbone>/<category>/seed<k>/`` holds:

- ``config.json``   the full configuration of the run (every flag), the validation file names, the
                    teacher weights actually used (``teacher_weights``: e.g. ``"IMAGENET1K_V1"``,
                    ``"file:/path.pth"`` or ``"random"``), library versions and ``hardware``.
- ``history.csv``   one row per epoch: ``epoch, loss, loss_scale1, loss_scale2, loss_scale3,
                    val_loss, epoch_time_s, images_per_s``.
- ``metrics.json``  written by ``main.py test``: ``image_auroc``, ``pixel_auroc`` / ``aupro`` (``null``
                    when the data has no masks), ``f1_max`` (test-tuned), ``threshold`` and
                    ``threshold_rule`` (from validation normals only), ``accuracy``, ``precision``,
                    ``recall``, ``f1`` at that threshold, ``per_defect_image_auroc``, counts, and
                    ``efficiency`` (``trainable_params``, ``gflops``, ``train_images_per_s``,
                    ``inference_ms_per_image``, ``peak_memory_mb``).
- ``scores.csv``    one row per test image: ``path, defect_type, label, score``.
- ``val_scores.csv`` one row per validation normal: ``path, score`` (the threshold's source).
- ``maps.npz``      optional: ``maps`` float16 (N, H, W), ``masks`` uint8 (N, H, W), ``paths``.

Checkpoints live apart, under ``<checkpoints>/<backbone>/<category>/seed<k>/last.pth``.
``<results>/summary.csv`` has one row per evaluated run.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONFIG_FILE = "config.json"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
SCORES_FILE = "scores.csv"
VAL_SCORES_FILE = "val_scores.csv"
MAPS_FILE = "maps.npz"
CHECKPOINT_FILE = "last.pth"
SUMMARY_FILE = "summary.csv"


@dataclass(frozen=True)
class RunKey:
    """Identity of one run."""

    backbone: str
    category: str
    seed: int

    @property
    def relative(self) -> Path:
        return Path(self.backbone) / self.category / f"seed{self.seed}"

    def __str__(self) -> str:
        return f"{self.backbone}/{self.category}/seed{self.seed}"


def run_dir(results: str | os.PathLike, key: RunKey) -> Path:
    return Path(results) / key.relative


def checkpoint_path(checkpoints: str | os.PathLike, key: RunKey) -> Path:
    return Path(checkpoints) / key.relative / CHECKPOINT_FILE


def find_runs(results: str | os.PathLike, require: str = METRICS_FILE) -> list[Path]:
    """Run directories under ``results`` that hold ``require`` (default: evaluated runs), sorted."""
    return sorted(path.parent for path in Path(results).glob(f"*/*/seed*/{require}"))


def key_of(directory: str | os.PathLike) -> RunKey:
    """The RunKey of a run directory, read from its config.json."""
    config = read_json(Path(directory) / CONFIG_FILE)
    return RunKey(config["backbone"], config["category"], int(config["seed"]))


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")

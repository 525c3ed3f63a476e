"""Test-free validation: a synthetic-anomaly set made from a run's held-out validation normals, its scores, and
the rule that picks an epoch (``--selection synthetic-val``) or a setting (``main.py tune``) by them.

The only held-out data are normal images, so anomalies are made: each validation normal gets one copy with a
patch cut from a training normal (a donor from the train split, flipped and colour-jittered as in CutPaste)
pasted in, and one copy with a painted scratch or blob. Each mask is exactly the set of pixels that changed.
The normals themselves are the set's normal part. The set depends on the data and the split seed alone
(never on the backbone or the run's seed), so every arm is validated on the same images; it is cached under
``<results>/.cache/synthval/``, keyed by everything it depends on. No test image is ever opened.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch
from PIL import Image, ImageDraw

import metrics
import runs
from dataset import AnomalyDataset, data_provenance
from errors import RDError
from evaluate import score_images
from rd_model import ReverseDistillation, image_scores
from recipe import SELECT_LAST, SELECTIONS, FastPath, TrainConfig, open_split

__all__ = ["CACHE_FOLDER", "GENERATOR_VERSION", "KINDS", "SyntheticSet", "SyntheticValidation", "build_synthetic_set",
           "cache_key", "check_settings", "load_synthetic_set", "run_selection", "score_synthetic", "select_epoch",
           "selection_key"]

GENERATOR_VERSION = 1  # bump when the generator changes: old cache files are then not used
CACHE_FOLDER = Path(".cache") / "synthval"  # under the results folder
KINDS = ("normal", "cut-paste", "scratch", "blob")
_SEED_TAG = 0x5EED_5A1  # keeps this stream apart from any other seeded by the split seed
_MAX_ATTEMPTS = 20  # draws before giving up on an anomaly that changes too few pixels
_MIN_CHANGED_FRACTION = 1e-3  # of the image's pixels


@dataclass(frozen=True)
class SyntheticSet:
    """Images uint8 (N, 3, S, S), masks uint8 (N, S, S) in {0, 1}, labels (N,) 0/1, and each image's kind."""

    images: torch.Tensor
    masks: torch.Tensor
    labels: torch.Tensor
    kinds: list[str]


# ---------------------------------------------------------------------------------------------- making anomalies

def _cut_paste(normal: np.ndarray, donors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``normal`` (S, S, 3) with a patch of a random donor, flipped and colour-jittered, pasted at a random place."""
    size = normal.shape[0]
    low = max(2, size // 8)
    high = max(low, size // 4)
    height, width = (int(v) for v in rng.integers(low, high + 1, size=2))
    donor = donors[int(rng.integers(len(donors)))]
    top, left = int(rng.integers(0, size - height + 1)), int(rng.integers(0, size - width + 1))
    patch = donor[top:top + height, left:left + width].astype(np.float64)
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    if rng.random() < 0.5:
        patch = patch[::-1]
    patch = np.clip(np.rint(patch * rng.uniform(0.75, 1.25, size=3) + rng.uniform(-24, 24, size=3)), 0, 255)
    top, left = int(rng.integers(0, size - height + 1)), int(rng.integers(0, size - width + 1))
    anomalous = normal.copy()
    anomalous[top:top + height, left:left + width] = patch.astype(np.uint8)
    return anomalous


def _scratch_shape(size: int, rng: np.random.Generator) -> Image.Image:
    """A polyline of 1-3 segments, 1/8-1/4 of the image long each, a few pixels wide (mode L, 255 inside)."""
    shape = Image.new("L", (size, size), 0)
    x, y = rng.uniform(0.15 * size, 0.85 * size, size=2)
    angle = rng.uniform(0, 2 * math.pi)
    points = [(x, y)]
    for _ in range(int(rng.integers(1, 4))):
        angle += rng.normal(0.0, 0.6)
        length = rng.uniform(size / 8, size / 4)
        x, y = x + length * math.cos(angle), y + length * math.sin(angle)
        points.append((x, y))
    width = int(rng.integers(max(1, size // 64), max(2, size // 24) + 1))
    ImageDraw.Draw(shape).line([(float(px), float(py)) for px, py in points], fill=255, width=width)
    return shape


def _blob_shape(size: int, rng: np.random.Generator) -> Image.Image:
    """2-3 overlapping ellipses of radius 1/20-1/10 of the image around one centre (mode L, 255 inside)."""
    shape = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(shape)
    centre = rng.uniform(0.2 * size, 0.8 * size, size=2)
    for _ in range(int(rng.integers(2, 4))):
        rx, ry = rng.uniform(max(1.5, size / 20), max(2.0, size / 10), size=2)
        cx, cy = centre + rng.uniform(-0.5, 0.5, size=2) * (rx, ry)
        draw.ellipse([float(cx - rx), float(cy - ry), float(cx + rx), float(cy + ry)], fill=255)
    return shape


def _paint(normal: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """``normal`` with a scratch or blob painted in one random colour at 60-100 % opacity."""
    shape = (_scratch_shape if kind == "scratch" else _blob_shape)(normal.shape[0], rng)
    inside = np.asarray(shape) > 0
    colour = rng.integers(0, 256, size=3).astype(np.float64)
    opacity = rng.uniform(0.6, 1.0)
    anomalous = normal.copy()
    blended = opacity * colour + (1.0 - opacity) * normal[inside].astype(np.float64)
    anomalous[inside] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return anomalous


def _anomaly(normal: np.ndarray, kind: str, donors: np.ndarray, rng: np.random.Generator,
             name: str) -> tuple[np.ndarray, np.ndarray]:
    """An anomalous copy of ``normal`` and its exact mask (the changed pixels); redrawn while it changes too few."""
    minimum = max(1, math.ceil(_MIN_CHANGED_FRACTION * normal.shape[0] * normal.shape[1]))
    for _ in range(_MAX_ATTEMPTS):
        anomalous = _cut_paste(normal, donors, rng) if kind == "cut-paste" else _paint(normal, kind, rng)
        changed = (anomalous != normal).any(axis=-1)
        if changed.sum() >= minimum:
            return anomalous, changed.astype(np.uint8)
    raise RDError(f"{name}: no {kind} anomaly changed at least {minimum} pixels in {_MAX_ATTEMPTS} draws; "
                  f"expected a validation image with some texture or colour variation")


def build_synthetic_set(normals: torch.Tensor, donors: torch.Tensor, split_seed: int,
                        names: list[str] | None = None) -> SyntheticSet:
    """The synthetic-anomaly set of uint8 ``normals`` (K, 3, S, S) with patches from ``donors`` (M, 3, S, S).

    Order: the K normals, then one cut-paste copy of each, then one painted copy of each (scratch or blob).
    Normal i's anomalies are drawn from a generator seeded by (split seed, i) alone.
    """
    if len(normals) == 0 or len(donors) == 0:
        raise RDError(f"synthetic validation needs validation normals and training donors; got {len(normals)} "
                      f"and {len(donors)}")
    names = names or [f"validation image {i}" for i in range(len(normals))]
    normal_hwc = normals.permute(0, 2, 3, 1).contiguous().numpy()
    donor_hwc = donors.permute(0, 2, 3, 1).contiguous().numpy()
    size = normal_hwc.shape[1]
    cut, painted, kinds = [], [], []
    for index, normal in enumerate(normal_hwc):
        rng = np.random.default_rng([_SEED_TAG, GENERATOR_VERSION, split_seed, index])
        cut.append(_anomaly(normal, "cut-paste", donor_hwc, rng, names[index]))
        kind = "scratch" if rng.random() < 0.5 else "blob"
        painted.append(_anomaly(normal, kind, donor_hwc, rng, names[index]))
        kinds.append(kind)
    images = np.concatenate([normal_hwc, np.stack([a for a, _ in cut]), np.stack([a for a, _ in painted])])
    masks = np.concatenate([np.zeros((len(normal_hwc), size, size), np.uint8),
                            np.stack([m for _, m in cut]), np.stack([m for _, m in painted])])
    count = len(normal_hwc)
    return SyntheticSet(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(masks),
                        torch.tensor([0] * count + [1] * 2 * count), ["normal"] * count + ["cut-paste"] * count + kinds)


# ---------------------------------------------------------------------------------------------- the cached set

def _relative(paths: list[str], root: str) -> list[str]:
    return [Path(os.path.relpath(path, root)).as_posix() for path in paths]


def _files_digest(paths: list[str]) -> str:
    """SHA-256 of each file's size and modification time: an image replaced in place makes a new set."""
    stats = [(os.stat(path).st_size, os.stat(path).st_mtime_ns) for path in paths]
    return hashlib.sha256(json.dumps(stats).encode()).hexdigest()


def cache_key(config: TrainConfig, train_set: AnomalyDataset, val_set: AnomalyDataset) -> dict[str, Any]:
    """Everything the synthetic set depends on: the data (root, category, format, split file hash, the images
    held out and the donors, their sizes and times), the image size, the split and the generator version; no
    backbone, no seed."""
    provenance = data_provenance(config.data_root, config.data_format, config.split_csv, config.category)
    return {
        "generator_version": GENERATOR_VERSION,
        "data_root": str(Path(config.data_root).resolve()),
        "category": config.category,
        "data_format": provenance["data_format"],
        "split_csv_sha256": provenance["split_csv_sha256"],
        "image_size": config.image_size,
        "val_fraction": config.val_fraction,
        "split_seed": config.split_seed,
        "val_images": _relative(val_set.paths, config.data_root),
        "donor_images": _relative(train_set.paths, config.data_root),
        "files_digest": _files_digest([*val_set.paths, *train_set.paths]),
    }


def _cache_file(cache_dir: Path, key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return cache_dir / f"{key['category']}-{key['image_size']}px-{digest}.pt"


def _read_cached(path: Path, key: dict[str, Any]) -> SyntheticSet | None:
    """The cached set at ``path`` when it was made for ``key`` (a damaged or foreign file is rebuilt)."""
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001  (torch's unpickler raises many types on a damaged file)
        return None  # a truncated or foreign file: the set is made again (the same) and replaces it atomically
    if not isinstance(payload, dict) or payload.get("key") != json.dumps(key, sort_keys=True):
        return None
    return SyntheticSet(payload["images"], payload["masks"], payload["labels"], list(payload["kinds"]))


def load_synthetic_set(config: TrainConfig, train_set: AnomalyDataset | None = None,
                       val_set: AnomalyDataset | None = None, cache_dir: str | os.PathLike | None = None
                       ) -> SyntheticSet:
    """The run's synthetic validation set, from the cache when it is there, else built and cached atomically.

    ``train_set`` and ``val_set`` (the run's open splits) save listing and decoding them again.
    """
    train_set = open_split(config, "train") if train_set is None else train_set
    val_set = open_split(config, "val") if val_set is None else val_set
    key = cache_key(config, train_set, val_set)
    path = _cache_file(Path(cache_dir) if cache_dir is not None else Path(config.results) / CACHE_FOLDER, key)
    cached = _read_cached(path, key)
    if cached is not None:
        return cached
    made = build_synthetic_set(val_set.uint8_images(), train_set.uint8_images(), config.split_seed, val_set.paths)
    payload = {"key": json.dumps(key, sort_keys=True), "images": made.images, "masks": made.masks,
               "labels": made.labels, "kinds": made.kinds}
    buffer = io.BytesIO()  # saved through a buffer: a file's name would be written into the archive
    torch.save(payload, buffer)
    runs.atomic_write(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))
    return made


# ---------------------------------------------------------------------------------------------- scores

def score_synthetic(model: ReverseDistillation, synthetic: SyntheticSet, fast: FastPath, device: torch.device,
                    batch_size: int) -> dict[str, float]:
    """``synth_image_auroc``, ``synth_pixel_auroc`` and ``synth_aupro`` of ``model`` on the synthetic set."""
    maps = score_images(model, synthetic.images, fast, device, batch_size, "synthetic validation")
    pixel = metrics.pixel_metrics(maps, synthetic.masks.to(device))
    image_auroc = metrics.image_auroc(image_scores(maps).cpu(), synthetic.labels)
    return dict(zip(runs.SYNTH_VAL_COLUMNS, (image_auroc, pixel["pixel_auroc"], pixel["aupro"])))


def check_settings(config: TrainConfig) -> None:
    """``--selection`` and ``--val-every`` hold values the training loop understands."""
    if config.selection not in SELECTIONS:
        raise RDError(f"--selection {config.selection!r}: expected one of {', '.join(SELECTIONS)}")
    if not isinstance(config.val_every, int) or config.val_every < 1:
        raise RDError(f"--val-every {config.val_every!r}: expected a whole number of epochs >= 1 (the last epoch is "
                      f"always validated)")


class SyntheticValidation:
    """The synthetic validation of one training run: when it is due, and its scores (rank 0 only).

    Scoring puts the model in eval mode (no BatchNorm statistic moves, no gradient) and runs under a forked
    RNG, so training goes on exactly as it would without it.
    """

    def __init__(self, config: TrainConfig, train_set: AnomalyDataset, val_set: AnomalyDataset) -> None:
        self.every, self.last_epoch, self.batch_size = config.val_every, config.epochs, config.batch_size
        self.synthetic = load_synthetic_set(config, train_set, val_set)

    def due(self, epoch: int) -> bool:
        return epoch % self.every == 0 or epoch == self.last_epoch

    def columns(self, epoch: int, model: ReverseDistillation, fast: FastPath,
                device: torch.device) -> dict[str, float | None]:
        """The history columns of ``epoch``: the three scores when due, else None (written empty)."""
        if not self.due(epoch):
            return dict.fromkeys(runs.SYNTH_VAL_COLUMNS)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            return score_synthetic(model, self.synthetic, fast, device, self.batch_size)


# ---------------------------------------------------------------------------------------------- selection

def _value(row: Mapping[str, Any], column: str) -> float | None:
    value = row.get(column)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


def selection_key(row: Mapping[str, Any]) -> tuple[float, float, int]:
    """Higher is better: synthetic AUPRO, then synthetic image AUROC, then the later epoch."""
    return (_value(row, "synth_aupro"), _value(row, "synth_image_auroc") or -math.inf, int(row["epoch"]))


def select_epoch(history: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The epoch ``--selection synthetic-val`` keeps (``selection_key``) among the validated rows of a history,
    as ``{"epoch", "synth_image_auroc", "synth_pixel_auroc", "synth_aupro"}``; None when none is validated."""
    scored = [row for row in history if _value(row, "synth_aupro") is not None]
    if not scored:
        return None
    best = max(scored, key=selection_key)
    return {"epoch": int(best["epoch"]), **{column: _value(best, column) for column in runs.SYNTH_VAL_COLUMNS}}


def run_selection(run_directory: str | os.PathLike, selection: str) -> dict[str, Any]:
    """The selected epoch of a trained run and its synthetic scores, read from its history.csv: the last
    epoch under ``last``, the best by ``selection_key`` under ``synthetic-val``."""
    history = runs.read_history(run_directory)
    if history is None or history.empty:
        raise RDError(f"{run_directory}: no {runs.HISTORY_FILE}; train the run first")
    rows = history.to_dict("records")
    chosen = select_epoch(rows[-1:] if selection == SELECT_LAST else rows)
    if chosen is None:
        raise RDError(f"{Path(run_directory) / runs.HISTORY_FILE}: no synthetic-validation scores "
                      f"({', '.join(runs.SYNTH_VAL_COLUMNS)}) on the epoch(s) {selection!r} selects from; expected "
                      f"a run trained by this version (pass --restart to train it again)")
    return chosen

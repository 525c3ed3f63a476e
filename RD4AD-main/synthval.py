"""Test-free validation: a synthetic-anomaly set made from a run's held-out validation normals, its scores, and
the rule that picks an epoch (``--selection synthetic-val``) or a setting (``main.py tune``) by them.

The only held-out data are normal images, so anomalies are made: each validation normal gets one copy with an
irregular blob of another training normal's texture (a donor from the train split, flipped, shifted, its
brightness and contrast jittered) blended in, and one copy with a thin scratch of donor texture or a stain (the
image's own colours darkened or brightened). They are made at the image's source resolution, with soft edges
(alpha-blended, no hard edge), sizes from 0.02 % to 3 % of the image, and then resized as the data loader
resizes; the scoring mask is the blend's shape resized to the working size and binarised at 0.5. Every gain and
offset is one number for all three channels, so an anomaly brings no colour its images lack: on grayscale
images (equal channels; a colour donor is then taken as its luma) the anomalous image is grayscale too, and on
colour images every filled pixel keeps the hue of the pixel it came from (out-of-range values are pulled toward
the pixel's grey, not clipped channel by channel). The normals themselves are the set's normal part. The set
depends on the data and the split seed alone (never on the backbone or the run's seed), so every arm is
validated on the same images; it is cached under
``<results>/.cache/synthval/``, keyed by everything it depends on. No test image is ever opened.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

import metrics
import runs
from dataset import AnomalyDataset, DataWarning, data_provenance, read_images
from errors import RDError
from evaluate import score_images
from image_io import decode_rgb, resize_rgb
from rd_model import ReverseDistillation, image_scores
from recipe import SELECT_LAST, SELECTIONS, FastPath, TrainConfig, open_split

__all__ = ["CACHE_FOLDER", "GENERATOR_VERSION", "KINDS", "MIN_VALIDATION_NORMALS", "SyntheticSet",
           "SyntheticValidation", "build_synthetic_set", "cache_key", "check_settings", "draw_anomaly",
           "load_synthetic_set", "run_selection", "score_synthetic", "select_epoch", "selection_key"]

# bump when the generator changes: old cache files are then not used (2: blended, soft; 3: no colour cue: one gain
# and offset for all channels, gray images give gray anomalies)
GENERATOR_VERSION = 3
_DRAW_STREAM = 2  # seeds the draws: version 3 changed only the fills, so its shapes are version 2's draws
CACHE_FOLDER = Path(".cache") / "synthval"  # under the results folder
KINDS = ("normal", "texture", "scratch", "stain")
MIN_VALIDATION_NORMALS = 10  # fewer: a DataWarning (few images pick the epoch and set the threshold)
_SEED_TAG = 0x5EED_5A1  # keeps this stream apart from any other seeded by the split seed
_MAX_ATTEMPTS = 20  # draws before giving up on an anomaly that is not visible at the working size
_AREA_RANGE = (2e-4, 3e-2)  # an anomaly's area, a share of the image's, drawn log-uniformly (a third below 0.1 %)
_EDGE_PX = 2.5  # the narrowest soft edge, in source pixels: no full-strength pixel touches an untouched one
_MIN_CONTRAST = 8.0  # grey levels: the least mean change inside the mask (largest channel) at the working size


@dataclass(frozen=True)
class SyntheticSet:
    """Images uint8 (N, 3, S, S), masks uint8 (N, S, S) in {0, 1}, labels (N,) 0/1, and each image's kind."""

    images: torch.Tensor
    masks: torch.Tensor
    labels: torch.Tensor
    kinds: list[str]

    @property
    def grayscale(self) -> bool:
        """Whether the normals' channels are equal everywhere (then so are the anomalies': no colour cue)."""
        normals = self.images[self.labels == 0]
        return bool((normals[:, 1:] == normals[:, :1]).all())


# ---------------------------------------------------------------------------------------------- making anomalies

def _smoothstep(x: np.ndarray) -> np.ndarray:
    """A soft ramp: 0 below 0, 1 above 1, strictly between them inside."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _window(height: int, width: int, rows: tuple[float, float], columns: tuple[float, float]
            ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray], tuple[slice, slice]]:
    """A zero alpha (H, W) float32, the pixel-centre coordinates (y, x) of the part of it within ``rows`` x ``columns``
    (clipped to the image), and that part's slices: a shape is computed only where it can reach."""
    top, bottom = max(0, math.floor(rows[0])), min(height, math.ceil(rows[1]) + 1)
    left, right = max(0, math.floor(columns[0])), min(width, math.ceil(columns[1]) + 1)
    ys, xs = np.mgrid[top:bottom, left:right].astype(np.float64) + 0.5
    return np.zeros((height, width), np.float32), (ys, xs), (slice(top, bottom), slice(left, right))


def _blob_alpha(height: int, width: int, area: float, rng: np.random.Generator) -> np.ndarray:
    """An irregular blob (a circle whose radius varies with the angle by harmonics 2-5) covering about ``area``
    pixels, with a soft edge at least ``_EDGE_PX`` wide: alpha (H, W) float32 in [0, 1]."""
    radius = math.sqrt(area / math.pi)
    centre_y = rng.uniform(min(radius, height / 2), max(height - radius, height / 2))
    centre_x = rng.uniform(min(radius, width / 2), max(width - radius, width / 2))
    orders = np.arange(2, 6)
    amplitudes = rng.uniform(0.0, 0.3, size=4) / orders  # |dr/dtheta| <= 1.2 radius: neighbours stay close
    phases = rng.uniform(0.0, 2 * math.pi, size=4)
    edge = max(_EDGE_PX, 0.35 * radius)
    reach = radius * (1.0 + amplitudes.sum()) + edge / 2 + 1  # no pixel farther from the centre is touched
    alpha, (ys, xs), box = _window(height, width, (centre_y - reach, centre_y + reach),
                                   (centre_x - reach, centre_x + reach))
    dy, dx = ys - centre_y, xs - centre_x
    theta = np.arctan2(dy, dx)
    harmonics = amplitudes[:, None, None] * np.cos(orders[:, None, None] * theta + phases[:, None, None])
    boundary = radius * (1.0 + harmonics.sum(axis=0))
    alpha[box] = _smoothstep((boundary - np.hypot(dy, dx)) / edge + 0.5)
    return alpha


def _scratch_alpha(height: int, width: int, area: float, rng: np.random.Generator) -> np.ndarray:
    """A polyline of 1-3 segments (8-30 % of the shorter side long in all) about ``area`` pixels wide in all, with a
    soft edge at least ``_EDGE_PX`` wide: alpha (H, W) float32 in [0, 1]."""
    side = min(height, width)
    length = rng.uniform(0.08, 0.3) * side
    half_width = float(np.clip(area / (2 * length), 0.6, 0.02 * side + 0.6))
    segments = int(rng.integers(1, 4))
    points = [rng.uniform([0.15 * height, 0.15 * width], [0.85 * height, 0.85 * width])]
    angle = rng.uniform(0, 2 * math.pi)
    for _ in range(segments):
        angle += rng.normal(0.0, 0.6)
        points.append(points[-1] + length / segments * np.array([math.sin(angle), math.cos(angle)]))
    edge = max(_EDGE_PX, half_width)
    corners = np.array(points)
    reach = half_width + edge / 2 + 1  # no pixel farther from the polyline is touched
    alpha, (ys, xs), box = _window(height, width, (corners[:, 0].min() - reach, corners[:, 0].max() + reach),
                                   (corners[:, 1].min() - reach, corners[:, 1].max() + reach))
    pixel = np.stack([ys, xs], axis=-1)
    distance = np.full(ys.shape, np.inf)
    for start, stop in zip(points[:-1], points[1:]):
        direction = stop - start
        t = np.clip(((pixel - start) @ direction) / max(float(direction @ direction), 1e-12), 0.0, 1.0)
        distance = np.minimum(distance, np.linalg.norm(pixel - (start + t[..., None] * direction), axis=-1))
    alpha[box] = _smoothstep((half_width - distance) / edge + 0.5)
    return alpha


def _is_gray(image: np.ndarray) -> bool:
    """Whether every pixel of ``image`` (H, W, 3) has equal channels."""
    return bool((image[..., 1:] == image[..., :1]).all())


def _within_range(fill: np.ndarray) -> np.ndarray:
    """``fill`` (..., 3) brought into [0, 255] without changing a pixel's hue: a pixel out of range moves toward its
    grey (the middle of its lowest and highest channel, clipped) until it fits, where clipping channel by channel
    would turn a brightened orange yellow; a gray pixel is simply clipped (exactly: its spread is 0)."""
    high, low = fill.max(axis=-1, keepdims=True), fill.min(axis=-1, keepdims=True)
    grey = np.clip((high + low) / 2, 0.0, 255.0)
    spread, high, low = fill - grey, high - grey, low - grey
    with np.errstate(divide="ignore", invalid="ignore"):
        room = np.minimum(np.where(high > 0, (255.0 - grey) / high, np.inf), np.where(low < 0, grey / -low, np.inf))
    return grey + spread * np.minimum(room, 1.0)


def draw_anomaly(normal: np.ndarray, donor: np.ndarray, kind: str, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One anomaly on ``normal`` (H, W, 3) uint8 at its source resolution: (the anomalous image uint8, the shape's
    alpha (H, W) in [0, 1], the blending weight actually used, opacity x alpha).

    ``texture``: an irregular blob of the ``donor`` training image's texture (resized to the normal's size,
    flipped, shifted, its brightness and contrast jittered); ``scratch``: a thin soft polyline of donor texture,
    darker or brighter; ``stain``: an irregular blob where the image's own colours are darkened or brightened.
    The area is drawn log-uniformly between ``_AREA_RANGE`` of the image; every edge is a soft ramp (no hard
    edge), and the result is alpha-blended: ``(1 - w) normal + w fill``. Each gain and offset is one number for
    all channels, so the fill keeps its pixels' hues (``_within_range``) and, on a grayscale ``normal`` (a colour
    donor taken as its luma), stays gray. The draws do not depend on the pixels: the same ``rng`` state gives
    the same shape and weight on any image.
    """
    height, width = normal.shape[:2]
    area = math.exp(rng.uniform(*np.log(_AREA_RANGE))) * height * width
    shape = (_scratch_alpha if kind == "scratch" else _blob_alpha)(height, width, area, rng)
    rows, columns = np.flatnonzero(shape.any(axis=1)), np.flatnonzero(shape.any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(columns[0], columns[-1] + 1))  # where the shape is: the rest stays
    base = normal[box].astype(np.float64)
    # version 2 drew each offset (and the texture's gain) per channel: the first channel's draw now serves all three,
    # so the jitter keeps its spread and every later draw (opacity, the next shapes) is version 2's
    if kind == "stain":
        gain = rng.choice([rng.uniform(0.55, 0.8), rng.uniform(1.25, 1.6)])
        fill = base * gain + rng.uniform(-15, 15, size=3)[0]
    else:
        if _is_gray(normal) and not _is_gray(donor):
            donor = np.asarray(Image.fromarray(donor).convert("L").convert("RGB"))
        texture = donor if donor.shape[:2] == (height, width) else np.array(
            Image.fromarray(donor).resize((width, height), Image.Resampling.BILINEAR))
        texture = texture[::-1] if rng.random() < 0.5 else texture
        texture = texture[:, ::-1] if rng.random() < 0.5 else texture
        texture = np.roll(texture, (int(rng.integers(height)), int(rng.integers(width))), axis=(0, 1))[box]
        fill = texture.astype(np.float64) * rng.uniform(0.8, 1.2, size=3)[0] + rng.uniform(-20, 20, size=3)[0]
        if kind == "scratch":
            fill = fill * rng.choice([rng.uniform(0.4, 0.7), rng.uniform(1.3, 1.6)])
    weight = np.zeros_like(shape)
    weight[box] = rng.uniform(0.6, 1.0) * shape[box]
    anomalous = normal.copy()
    within = weight[box][..., None].astype(np.float64)
    anomalous[box] = np.clip(np.rint((1.0 - within) * base + within * _within_range(fill)), 0, 255).astype(np.uint8)
    return anomalous, shape, weight


def _working_mask(shape: np.ndarray, size: int) -> np.ndarray:
    """The scoring mask at the working size: the shape's alpha resized (bilinear), then >= 0.5 (uint8 {0, 1})."""
    if shape.shape != (size, size):
        shape = np.asarray(Image.fromarray(shape, mode="F").resize((size, size), Image.Resampling.BILINEAR))
    return (shape >= 0.5).astype(np.uint8)


def _anomaly(normal: np.ndarray, donor_of: Callable[[], np.ndarray], kind: str, size: int, rng: np.random.Generator,
             name: str) -> tuple[np.ndarray, np.ndarray]:
    """An anomalous copy of the source-resolution ``normal`` at the working size, and its mask there; redrawn while
    the mask is empty or the anomaly changes the image too little (mean change under ``_MIN_CONTRAST``)."""
    working = resize_rgb(normal, size)
    for _ in range(_MAX_ATTEMPTS):
        anomalous, shape, _ = draw_anomaly(normal, donor_of(), kind, rng)
        mask = _working_mask(shape, size)
        image = resize_rgb(anomalous, size)
        inside = mask.astype(bool)
        change = np.abs(image[inside].astype(np.int16) - working[inside]).max(axis=-1)
        if inside.any() and change.mean() >= _MIN_CONTRAST:
            return image, mask
    raise RDError(f"{name}: no {kind} anomaly was visible at {size} px (a non-empty mask and a mean change of at least "
                  f"{_MIN_CONTRAST:g} grey levels) in {_MAX_ATTEMPTS} draws; expected a validation image with some "
                  f"texture or colour variation")


def build_synthetic_set(normal_paths: Sequence[str], donor_paths: Sequence[str], split_seed: int, image_size: int,
                        normals: torch.Tensor | None = None) -> SyntheticSet:
    """The synthetic-anomaly set of the validation normals at ``normal_paths``, with texture from the training
    normals at ``donor_paths``, at ``image_size`` px (``normals``: those images already decoded at that size).

    Each anomaly is made on the image at its source resolution and then resized as the data loader resizes
    images, so its edges are as soft as the blending made them. Order: the K normals, then one ``texture``
    copy of each, then one ``scratch`` or ``stain`` copy of each. Normal i's anomalies and donors are drawn from
    a generator seeded by (split seed, i) alone.
    """
    if len(normal_paths) == 0 or len(donor_paths) == 0:
        raise RDError(f"synthetic validation needs validation normals and training donors; got {len(normal_paths)} "
                      f"and {len(donor_paths)}")
    normal_hwc = (read_images(normal_paths, image_size) if normals is None else normals).permute(0, 2, 3, 1).numpy()
    textured, second, kinds = [], [], []
    for index, path in enumerate(tqdm(normal_paths, desc="synthetic validation set", unit="img", leave=False,
                                      disable=len(normal_paths) < 20)):
        rng = np.random.default_rng([_SEED_TAG, _DRAW_STREAM, split_seed, index])
        source = decode_rgb(path)
        donor_of = lambda: decode_rgb(donor_paths[int(rng.integers(len(donor_paths)))])  # noqa: E731
        textured.append(_anomaly(source, donor_of, "texture", image_size, rng, path))
        kind = "scratch" if rng.random() < 0.5 else "stain"
        second.append(_anomaly(source, donor_of, kind, image_size, rng, path))
        kinds.append(kind)
    count = len(normal_hwc)
    images = np.concatenate([normal_hwc, np.stack([a for a, _ in textured]), np.stack([a for a, _ in second])])
    masks = np.concatenate([np.zeros((count, image_size, image_size), np.uint8),
                            np.stack([m for _, m in textured]), np.stack([m for _, m in second])])
    return SyntheticSet(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(masks),
                        torch.tensor([0] * count + [1] * 2 * count), ["normal"] * count + ["texture"] * count + kinds)


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
    if len(val_set) < MIN_VALIDATION_NORMALS:
        warnings.warn(f"{config.category}: {len(val_set)} validation normals (fewer than {MIN_VALIDATION_NORMALS}) "
                      f"pick the epoch on the synthetic set and then set the threshold; their scores are noisy (raise "
                      f"--val-fraction, or add training images)", DataWarning, stacklevel=2)
    made = build_synthetic_set(val_set.paths, train_set.paths, config.split_seed, config.image_size,
                               val_set.uint8_images())
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

    def provenance(self) -> dict[str, Any]:
        """What config.json records of the set: its generator version, and whether its images are grayscale."""
        return {"generator_version": GENERATOR_VERSION, "grayscale": self.synthetic.grayscale}

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
    """Higher is better: synthetic AUPRO, then synthetic image AUROC, then the earlier epoch (a saturated synthetic
    set, e.g. AUPRO 1.0 at several epochs, then keeps the first: no tie favours longer training)."""
    return (_value(row, "synth_aupro"), _value(row, "synth_image_auroc") or -math.inf, -int(row["epoch"]))


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

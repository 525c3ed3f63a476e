"""Anomaly-detection category datasets (MVTec AD, VisA, MVTec AD 2, MVTec LOCO AD, or a split file of one's own):
the train / validation / test splits of one category, and an in-memory uint8 cache of its decoded pixels.

One dataset class (``AnomalyDataset``, also importable as ``MVTecDataset``) over five layouts
(``data_format``: ``"mvtec"``, ``"visa"``, ``"csv"``, ``"mvtec_ad2"``, ``"mvtec_loco"``, or ``"auto"`` to detect
one), described in layouts.py; split files are read by split_files.py, images and masks decoded by image_io.py.
Their public names are importable from here too. High-resolution images (MVTec AD 2's) are decoded once per
process and kept at the working size, never at their own.

Without masks (no ``ground_truth/`` folder, no mask column) the test items get all-zero masks and
``has_masks`` is False, so that pixel metrics can be reported as not available instead of as zero. Any
non-zero mask pixel is a defect (0/255, 0/1 and anti-aliased masks alike).

The validation split is a seeded share of the normal training images held out by name (``val_names``,
``split_train_val``): the file name in MVTec layout, the path relative to the data root for split files
(base names repeat there). It is the same for every backbone and never trained on. A layout that ships its own
validation normals (``validation/good``: MVTec AD 2, MVTec LOCO AD) uses those instead, all training images
train, and ``holdout_rule`` says so (``VALIDATION_FOLDER_RULE``, recorded in a run's config.json).
"""
from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from categories import category_group, validate_category
from errors import DataError
from image_io import (IMAGE_EXTENSIONS, SIXTEEN_BIT_MODES, check_headers, mask_files, mask_values, read_images,
                      read_mask, read_region, read_regions, read_rgb, readable)
from layouts import (DATA_FORMATS, GOOD, MASK_SUFFIX, MVTEC_MARKER, VISA_MARKER, VISA_SPLIT_FILE, DataWarning, Item,
                     Source, data_provenance, detect_format, list_categories, open_source, resolve_format,
                     split_file_for)
from split_files import ANOMALY, NORMAL, SplitRow, read_split_csv

__all__ = [
    "ANOMALY", "DATA_FORMATS", "GOOD", "IMAGENET_MEAN", "IMAGENET_STD", "IMAGE_EXTENSIONS", "MASK_SUFFIX",
    "MVTEC_MARKER", "NORMAL", "SIXTEEN_BIT_MODES", "SPLITS", "VISA_MARKER", "VISA_SPLIT_FILE",
    "HOLDOUT_RULE", "VALIDATION_FOLDER_RULE", "AnomalyDataset", "DataWarning", "MVTecDataset", "Region", "SplitRow",
    "data_provenance", "denormalize", "detect_format", "list_categories", "mask_values", "read_images", "normalize",
    "read_split_csv", "resolve_format", "holdout_draw", "split_file_for", "split_train_val",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPLITS = ("train", "val", "test")


# ---------------------------------------------------------------------------------------------- splits


HOLDOUT_RULE = "sha256-draw-below-fraction"  # recorded in config.json: runs of another rule keep their own hold-out
VALIDATION_FOLDER_RULE = "validation-folder"  # the layout's own validation/good images (no hold-out of train/good)


def holdout_draw(name: str, seed: int = 0) -> float:
    """A number in [0, 1) that depends on ``name`` and ``seed`` alone: the first 64 bits of SHA-256("seed/name")."""
    return int(hashlib.sha256(f"{seed}/{name}".encode()).hexdigest()[:16], 16) / 2.0**64


def split_train_val(
    names: Sequence[str], fraction: float = 0.1, seed: int = 0, min_val: int = 4
) -> tuple[list[str], list[str]]:
    """Split file names into (train, validation), both sorted, by a stable rule (``HOLDOUT_RULE``).

    A name is held out when its ``holdout_draw(name, seed)`` is below ``fraction``, so its membership depends
    on its own name and the seed only: adding or removing other images moves none (nor do listing order or
    library versions). About ``fraction`` of the names are held out, not exactly. Small categories: when fewer
    than ``min_val`` names draw below ``fraction``, the ``min_val`` names of lowest draw are held out (only then
    does membership depend on the other names), and when every name draws below it, the one of highest draw
    trains; so there are always at least ``min_val`` validation images and one training image, and fewer than
    ``min_val + 1`` names is an error.
    """
    if not 0.0 < fraction < 1.0:
        raise DataError(f"--val-fraction {fraction}: expected a fraction between 0 and 1, e.g. 0.1")
    unique = sorted(set(names))
    if len(unique) <= min_val:
        raise DataError(
            f"{len(unique)} training images are too few to hold out {min_val} for validation and train "
            f"on the rest; expected at least {min_val + 1}"
        )
    by_draw = sorted(unique, key=lambda name: (holdout_draw(name, seed), name))
    held = [name for name in by_draw if holdout_draw(name, seed) < fraction]
    if len(held) < min_val:
        held = by_draw[:min_val]
    elif len(held) == len(unique):
        held = by_draw[:-1]
    held_out = set(held)
    return [n for n in unique if n not in held_out], [n for n in unique if n in held_out]


def normalize(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 RGB images ``(..., 3, H, W)`` on any device -> float32 ImageNet-normalised, same device."""
    if images_uint8.dtype != torch.uint8:
        raise TypeError(f"normalize expects uint8 images, got {images_uint8.dtype} (already normalised?)")
    if images_uint8.dim() < 3 or images_uint8.shape[-3] != 3:
        raise ValueError(f"normalize expects (..., 3, H, W) images, got shape {tuple(images_uint8.shape)}")
    scale, shift = _normalization_constants(images_uint8.device)
    # (x / 255 - mean) / std as one multiply and one subtraction
    return images_uint8.float().mul_(scale).sub_(shift)


@functools.lru_cache(maxsize=None)
def _normalization_constants(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``1 / (255 std)`` and ``mean / std`` as (3, 1, 1) tensors, made once per device (no copy per batch)."""
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    return (1.0 / (255.0 * std)).to(device), (mean / std).to(device)


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """Undo ``normalize``: float images in [0, 1], for plotting."""
    std = torch.tensor(IMAGENET_STD, device=images.device, dtype=images.dtype).view(3, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN, device=images.device, dtype=images.dtype).view(3, 1, 1)
    return (images * std + mean).clamp_(0.0, 1.0)


# ---------------------------------------------------------------------------------------------- the dataset


class Region(NamedTuple):
    """One defect region of a test image (a PNG of its mask folder): mask uint8 (S, S) in {0, 1} at the working
    size, the pixel value naming its defect type, the working size's pixels per source pixel, and its file."""

    mask: torch.Tensor
    pixel_value: int
    scale: float
    path: str


class AnomalyDataset(Dataset):
    """One category, split ``"train"``, ``"val"`` or ``"test"``, of an MVTec, VisA or split-file data set.

    Items are dicts: ``image`` float32 (3, S, S) normalised, ``mask`` float32 (1, S, S) in {0, 1},
    ``label`` 0 (good) / 1 (defect), ``defect_type`` (``"good"`` for normals) and ``path``.
    The data is checked at construction (folders or split-file rows, image headers and modes, image/mask
    pairs and sizes); pixel data is decoded on first use and kept as uint8 at the working size when
    ``cache`` is on, so later epochs decode no file. With DataLoader workers, call ``uint8_images()``
    first so that the workers inherit a full cache instead of each filling its own.

    ``data_format`` is ``"auto"``, ``"mvtec"``, ``"visa"`` or ``"csv"``; ``split_csv`` is the split file
    of ``"csv"`` (and replaces VisA's ``split_csv/1cls.csv`` under ``"visa"``). ``data_format`` is the
    resolved format afterwards. ``val_names`` replaces the rule's hold-out by a recorded one (a run's
    config.json, for runs made under an older rule); each must be one of the training images (or, with a
    validation folder, exactly its images). ``holdout_rule`` names where the validation normals came from,
    ``defects_config`` is MVTec LOCO's (None elsewhere), and ``unlabelled_splits`` (test split only) lists the test
    sets without labels that ``test`` leaves to ``predict`` (MVTec AD 2's private ones).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        category: str,
        split: str = "train",
        image_size: int = 256,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        cache: bool = True,
        *,
        data_format: str = "auto",
        split_csv: str | os.PathLike | None = None,
        val_names: Sequence[str] | None = None,
    ) -> None:
        if split not in SPLITS:
            raise DataError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
        if not isinstance(image_size, int) or image_size < 1:
            raise DataError(f"image size {image_size!r}: expected a positive whole number of pixels")
        validate_category(category)
        self.root = Path(root)
        self.category = category
        self.split = split
        self.image_size = image_size
        self.cache = cache
        self.kind = category_group(category)
        with readable():
            self.data_format = resolve_format(self.root, data_format, split_csv, category)
            source = open_source(self.root, category, self.data_format, split_csv)
            items, self.val_names, self.holdout_rule = _split_items(source, split, val_fraction, split_seed,
                                                                    val_names)
            check_headers((item.image, item.mask) for item in items)
            self.unlabelled_splits = source.unlabelled_splits() if split == "test" else {}
        self.defects_config = source.defects_config
        self.folder = source.folder
        self.has_masks = source.has_masks
        self.split_csv = source.split_file
        self.paths: list[str] = [str(item.image) for item in items]
        self.defect_types: list[str] = [item.defect_type for item in items]
        self.mask_paths: list[str | None] = [None if item.mask is None else str(item.mask) for item in items]
        self.labels: list[int] = [int(defect != GOOD) for defect in self.defect_types]
        # (path, image size) -> (image uint8 (3,S,S), mask uint8 (1,S,S) or None for all-zero)
        self._cache: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor | None]] = {}
        self._regions: dict[tuple[str, int], list[Region]] = {}  # the same key -> its defect regions (mask folders)

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.category!r}, split={self.split!r}, items={len(self)}, "
            f"image_size={self.image_size}, has_masks={self.has_masks}, data_format={self.data_format!r}, "
            f"root={str(self.root)!r})"
        )

    def __getitem__(self, index: int) -> dict:
        image, mask = self._load(index)
        return {
            "image": normalize(image),
            "mask": mask.float(),
            "label": self.labels[index],
            "defect_type": self.defect_types[index],
            "path": self.paths[index],
        }

    def uint8_images(self) -> torch.Tensor:
        """All images as one uint8 tensor (N, 3, S, S) at the working size (uses and fills the cache)."""
        return torch.stack([self._load(i)[0] for i in self._progress("images")])

    def uint8_masks(self) -> torch.Tensor:
        """All masks as one uint8 tensor (N, 1, S, S) in {0, 1}; all zero for good images."""
        return torch.stack([self._load(i)[1] for i in self._progress("masks")])

    def regions(self, index: int) -> list[Region]:
        """The defect regions of item ``index`` at the working size, one per file of its mask (a mask folder's
        PNGs; a single mask file is one region); none for an item without a mask."""
        mask_path = self.mask_paths[index]
        if mask_path is None:
            return []
        key = (self.paths[index], self.image_size)
        if key not in self._regions:
            files = mask_files(Path(mask_path))
            with readable():
                decoded = [read_region(path, self.image_size) for path in files]
            regions = _region_list(files, decoded)
            if not self.cache:
                return regions
            self._regions[key] = regions
        return self._regions[key]

    def _progress(self, what: str) -> tqdm:
        missing = sum((path, self.image_size) not in self._cache for path in self.paths)
        return tqdm(
            range(len(self)), desc=f"{self.category}/{self.split} {what}", unit="img",
            leave=False, disable=missing < 50,
        )

    def _load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 image (3, S, S) and mask (1, S, S) of item ``index``, from the cache when there."""
        key = (self.paths[index], self.image_size)
        entry = self._cache.get(key)
        if entry is None:
            entry = self._decode(index)
            if self.cache:
                self._cache[key] = entry
        image, mask = entry
        if mask is None:
            mask = torch.zeros((1, self.image_size, self.image_size), dtype=torch.uint8)
        return image, mask

    def _decode(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        image = torch.from_numpy(read_rgb(Path(self.paths[index]), self.image_size)).permute(2, 0, 1)
        mask_path = self.mask_paths[index]
        if mask_path is None:
            return image.contiguous(), None
        if self.defects_config is not None and Path(mask_path).is_dir():  # the regions are needed too: decode once
            merged, files, decoded = read_regions(Path(mask_path), self.image_size)
            if self.cache:
                self._regions[(self.paths[index], self.image_size)] = _region_list(files, decoded)
            return image.contiguous(), torch.from_numpy(merged).unsqueeze(0)
        return image.contiguous(), torch.from_numpy(read_mask(Path(mask_path), self.image_size)).unsqueeze(0)


MVTecDataset = AnomalyDataset  # the name used before VisA and split files were supported


def _region_list(files: Sequence[Path], decoded: Sequence[tuple[np.ndarray, int, float]]) -> list[Region]:
    """The Regions of a mask's files from their decoded (mask, pixel value, scale), in file order."""
    return [Region(torch.from_numpy(mask), value, scale, str(path))
            for (mask, value, scale), path in zip(decoded, files)]


def _split_items(
    source: Source, split: str, val_fraction: float, split_seed: int, recorded: Sequence[str] | None = None
) -> tuple[list[Item], list[str], str]:
    """The items of ``split``, the names of the validation normals (``recorded``, when given, else the layout's
    validation folder, else ``split_train_val``'s hold-out of the train normals), and the rule that chose them."""
    train_images = source.train_images()
    validation = source.validation_images()
    if validation is not None:
        val_names = [name for name, _ in validation]
        if recorded is not None and sorted(set(recorded)) != val_names:
            missing, extra = sorted(set(recorded) - set(val_names)), sorted(set(val_names) - set(recorded))
            raise DataError(
                f"{source.folder / 'validation'}: its images differ from the recorded validation images (recorded, "
                f"not there: {', '.join(missing[:5]) or 'none'}; there, not recorded: {', '.join(extra[:5]) or 'none'})"
            )
        if split == "test":
            return source.test_items(), val_names, VALIDATION_FOLDER_RULE
        chosen = validation if split == "val" else train_images
        return [Item(path, GOOD, None) for _, path in chosen], val_names, VALIDATION_FOLDER_RULE
    names = [name for name, _ in train_images]
    if recorded is not None:
        missing = sorted(set(recorded) - set(names))
        if missing:
            raise DataError(
                f"{source.train_origin}: {len(missing)} recorded validation image(s) are not among the training "
                f"images: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
            )
        val_names = sorted(set(recorded))
    else:
        try:
            val_names = split_train_val(names, val_fraction, split_seed)[1]
        except DataError as error:
            raise DataError(f"{source.train_origin}: {error}") from None
    if split == "test":
        return source.test_items(), val_names, HOLDOUT_RULE
    held_out = set(val_names)
    items = [Item(path, GOOD, None) for name, path in train_images if (name in held_out) == (split == "val")]
    return items, val_names, HOLDOUT_RULE

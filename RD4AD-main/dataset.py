"""Anomaly-detection category datasets (MVTec AD, VisA, or a split file of one's own): the train / validation /
test splits of one category, and an in-memory uint8 cache of its decoded pixels.

One dataset class (``AnomalyDataset``, also importable as ``MVTecDataset``) over three layouts
(``data_format``: ``"mvtec"``, ``"visa"``, ``"csv"``, or ``"auto"`` to detect one), described in layouts.py;
split files are read by split_files.py, images and masks decoded by image_io.py. Their public names are
importable from here too.

Without masks (no ``ground_truth/`` folder, no mask column) the test items get all-zero masks and
``has_masks`` is False, so that pixel metrics can be reported as not available instead of as zero. Any
non-zero mask pixel is a defect (0/255, 0/1 and anti-aliased masks alike).

The validation split is a seeded share of the normal training images held out by name (``val_names``,
``split_train_val``): the file name in MVTec layout, the path relative to the data root for split files
(base names repeat there). It is the same for every backbone and never trained on.
"""
from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from categories import category_group, validate_category
from errors import DataError
from image_io import (IMAGE_EXTENSIONS, SIXTEEN_BIT_MODES, check_headers, mask_values, read_images, read_mask,
                      read_rgb, readable)
from layouts import (DATA_FORMATS, GOOD, MASK_SUFFIX, MVTEC_MARKER, VISA_MARKER, VISA_SPLIT_FILE, DataWarning, Item,
                     Source, data_provenance, detect_format, list_categories, open_source, resolve_format,
                     split_file_for)
from split_files import ANOMALY, NORMAL, SplitRow, read_split_csv

__all__ = [
    "ANOMALY", "DATA_FORMATS", "GOOD", "IMAGENET_MEAN", "IMAGENET_STD", "IMAGE_EXTENSIONS", "MASK_SUFFIX",
    "MVTEC_MARKER", "NORMAL", "SIXTEEN_BIT_MODES", "SPLITS", "VISA_MARKER", "VISA_SPLIT_FILE",
    "AnomalyDataset", "DataWarning", "MVTecDataset", "SplitRow", "data_provenance", "denormalize",
    "detect_format", "list_categories", "mask_values", "read_images", "normalize", "read_split_csv", "resolve_format",
    "split_file_for", "split_train_val",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPLITS = ("train", "val", "test")


# ---------------------------------------------------------------------------------------------- splits


def split_train_val(
    names: list[str], fraction: float = 0.1, seed: int = 0, min_val: int = 4
) -> tuple[list[str], list[str]]:
    """Split file names into (train, validation), both sorted; ``max(min_val, round(fraction * n))`` held out.

    The order comes from a SHA-256 of ``seed`` and each name, so the split depends only on the names and
    the seed (not on listing order, library versions or other files), and adding an image moves no other.
    """
    if not 0.0 < fraction < 1.0:
        raise DataError(f"--val-fraction {fraction}: expected a fraction between 0 and 1, e.g. 0.1")
    unique = sorted(set(names))
    n_val = max(min_val, round(fraction * len(unique)))
    if len(unique) <= n_val:
        raise DataError(
            f"{len(unique)} training images are too few to hold out {n_val} for validation and train "
            f"on the rest; expected at least {n_val + 1}"
        )

    def rank(name: str) -> str:
        return hashlib.sha256(f"{seed}/{name}".encode()).hexdigest()

    held_out = set(sorted(unique, key=rank)[:n_val])
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
    resolved format afterwards.
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
            items, self.val_names = _split_items(source, split, val_fraction, split_seed)
            check_headers((item.image, item.mask) for item in items)
        self.folder = source.folder
        self.has_masks = source.has_masks
        self.split_csv = source.split_file
        self.paths: list[str] = [str(item.image) for item in items]
        self.defect_types: list[str] = [item.defect_type for item in items]
        self.mask_paths: list[str | None] = [None if item.mask is None else str(item.mask) for item in items]
        self.labels: list[int] = [int(defect != GOOD) for defect in self.defect_types]
        # (path, image size) -> (image uint8 (3,S,S), mask uint8 (1,S,S) or None for all-zero)
        self._cache: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor | None]] = {}

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
        return image.contiguous(), torch.from_numpy(read_mask(Path(mask_path), self.image_size)).unsqueeze(0)


MVTecDataset = AnomalyDataset  # the name used before VisA and split files were supported


def _split_items(
    source: Source, split: str, val_fraction: float, split_seed: int
) -> tuple[list[Item], list[str]]:
    """The items of ``split``, and the names of the train normals held out for validation."""
    train_images = source.train_images()
    try:
        train_names, val_names = split_train_val([name for name, _ in train_images], val_fraction, split_seed)
    except DataError as error:
        raise DataError(f"{source.train_origin}: {error}") from None
    if split == "test":
        return source.test_items(), val_names
    chosen = set(train_names if split == "train" else val_names)
    return [Item(path, GOOD, None) for name, path in train_images if name in chosen], val_names

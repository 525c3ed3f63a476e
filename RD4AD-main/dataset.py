"""MVTec AD category datasets: train / validation / test splits, masks, and an in-memory uint8 cache.

Layout (RD4AD_FACTS section 6), also accepted for a user's own data::

    <root>/<category>/train/good/*.png                      normal training images
    <root>/<category>/test/good/*.png                       normal test images
    <root>/<category>/test/<defect>/<id>.png                defective test images
    <root>/<category>/ground_truth/<defect>/<id>_mask.png   their masks (optional folder)

Without a ``ground_truth/`` folder the test items get all-zero masks and ``has_masks`` is False, so
that pixel metrics can be reported as not available instead of as zero.

The validation split is a seeded share of ``train/good`` held out by file name (``val_names``): it is
the same for every backbone and never trained on.
"""
from __future__ import annotations

import functools
import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

TEXTURE_CATEGORIES: tuple[str, ...] = ("carpet", "grid", "leather", "tile", "wood")
OBJECT_CATEGORIES: tuple[str, ...] = (
    "bottle", "cable", "capsule", "hazelnut", "metal_nut",
    "pill", "screw", "toothbrush", "transistor", "zipper",
)
MVTEC_CATEGORIES: tuple[str, ...] = tuple(sorted(TEXTURE_CATEGORIES + OBJECT_CATEGORIES))

# category -> (train good, test good, test defect), RD4AD_FACTS section 6
OFFICIAL_COUNTS: dict[str, tuple[int, int, int]] = {
    "bottle": (209, 20, 63),
    "cable": (224, 58, 92),
    "capsule": (219, 23, 109),
    "carpet": (280, 28, 89),
    "grid": (264, 21, 57),
    "hazelnut": (391, 40, 70),
    "leather": (245, 32, 92),
    "metal_nut": (220, 22, 93),
    "pill": (267, 26, 141),
    "screw": (320, 41, 119),
    "tile": (230, 33, 84),
    "toothbrush": (60, 12, 30),
    "transistor": (213, 60, 40),
    "wood": (247, 19, 60),
    "zipper": (240, 32, 119),
}

SPLITS = ("train", "val", "test")
GOOD = "good"
MASK_SUFFIX = "_mask"
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
MIN_IMAGE_SIZE = 32
SIZE_MULTIPLE = 32  # the encoder downsamples 32x (RD4AD_FACTS section 1)
SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})


class DataWarning(UserWarning):
    """Something in the data tree was skipped (e.g. ``.DS_Store``, ``Thumbs.db``)."""


def category_kind(name: str) -> str:
    """``"texture"``, ``"object"`` or ``"other"``: MVTec names from the official lists, synthetic by prefix."""
    if name in TEXTURE_CATEGORIES or name.startswith("synth_texture"):
        return "texture"
    if name in OBJECT_CATEGORIES or name.startswith("synth_object"):
        return "object"
    return "other"


def validate_image_size(size: int, flag: str = "--image-size") -> None:
    """Raise DataError, naming ``flag``, unless ``size`` is a multiple of 32 of at least 32 (as RD needs)."""
    if isinstance(size, int) and size >= MIN_IMAGE_SIZE and size % SIZE_MULTIPLE == 0:
        return
    if not isinstance(size, int):
        raise DataError(f"{flag} {size!r}: expected a whole number of pixels, e.g. 256")
    lower = max(MIN_IMAGE_SIZE, size // SIZE_MULTIPLE * SIZE_MULTIPLE)
    upper = lower + SIZE_MULTIPLE
    if size < MIN_IMAGE_SIZE or size - lower < upper - size:
        suggestion = f"nearest valid size: {lower}"
    elif size - lower > upper - size:
        suggestion = f"nearest valid size: {upper}"
    else:
        suggestion = f"nearest valid sizes: {lower} or {upper}"
    problem = f"smaller than {MIN_IMAGE_SIZE} px" if size < MIN_IMAGE_SIZE else f"not divisible by {SIZE_MULTIPLE}"
    raise DataError(
        f"{flag} {size} is {problem}; the model needs a multiple of {SIZE_MULTIPLE} of at least "
        f"{MIN_IMAGE_SIZE} px ({suggestion})"
    )


def list_categories(root: str | os.PathLike) -> list[str]:
    """Sorted names of the sub-folders of ``root`` in MVTec layout (those with ``train/good/``)."""
    root = _existing_root(root)
    return sorted(entry.name for entry in root.iterdir() if (entry / "train" / GOOD).is_dir())


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


class MVTecDataset(Dataset):
    """One category of an MVTec-format tree, split ``"train"``, ``"val"`` or ``"test"``.

    Items are dicts: ``image`` float32 (3, S, S) normalised, ``mask`` float32 (1, S, S) in {0, 1},
    ``label`` 0 (good) / 1 (defect), ``defect_type`` (``"good"`` for normals) and ``path``.
    The tree is checked at construction (folders, image headers, image/mask pairs and sizes); pixel
    data is decoded on first use and kept as uint8 at the working size when ``cache`` is on, so later
    epochs decode no PNG. With DataLoader workers, call ``uint8_images()`` first so that the workers
    inherit a full cache instead of each filling its own.
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
    ) -> None:
        if split not in SPLITS:
            raise DataError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
        validate_image_size(image_size)
        self.root = Path(root)
        self.category = category
        self.split = split
        self.image_size = image_size
        self.cache = cache
        self.kind = category_kind(category)
        self.folder = _category_folder(self.root, category)
        self.has_masks = (self.folder / "ground_truth").is_dir()

        train_dir = self.folder / "train" / GOOD
        train_images = _list_images(train_dir)
        if not train_images:
            raise DataError(f"{train_dir} holds no images; expected the normal training images (*.png) there")
        try:
            train_names, self.val_names = split_train_val(
                [path.name for path in train_images], val_fraction, split_seed
            )
        except DataError as error:
            raise DataError(f"{train_dir}: {error}") from None

        if split == "test":
            items = _test_items(self.folder, self.has_masks)
        else:
            chosen = set(train_names if split == "train" else self.val_names)
            items = [(path, GOOD, None) for path in train_images if path.name in chosen]
        _check_headers(items)

        self.paths: list[str] = [str(image) for image, _, _ in items]
        self.defect_types: list[str] = [defect for _, defect, _ in items]
        self.mask_paths: list[str | None] = [None if mask is None else str(mask) for _, _, mask in items]
        self.labels: list[int] = [int(defect != GOOD) for defect in self.defect_types]
        # (path, image size) -> (image uint8 (3,S,S), mask uint8 (1,S,S) or None for all-zero)
        self._cache: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor | None]] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return (
            f"MVTecDataset({self.category!r}, split={self.split!r}, items={len(self)}, "
            f"image_size={self.image_size}, has_masks={self.has_masks}, root={str(self.root)!r})"
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
        image = torch.from_numpy(_read_rgb(Path(self.paths[index]), self.image_size)).permute(2, 0, 1)
        mask_path = self.mask_paths[index]
        if mask_path is None:
            return image.contiguous(), None
        return image.contiguous(), torch.from_numpy(_read_mask(Path(mask_path), self.image_size)).unsqueeze(0)


def _existing_root(root: str | os.PathLike) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"data root {root} does not exist or is not a folder; expected a folder of MVTec AD "
            f"categories (<root>/<category>/train/good/*.png). Get MVTec AD with "
            f"`main.py download --dest {root}` or write synthetic data with `main.py synth --out {root}`"
        )
    return root


def _category_folder(root: Path, category: str) -> Path:
    folder = _existing_root(root) / category
    if not (folder / "train" / GOOD).is_dir():
        found = ", ".join(list_categories(root)) or "none"
        what = "has no train/good/ folder" if folder.is_dir() else "not found"
        raise DataError(
            f"category {category!r} {what} in {root}: expected {folder / 'train' / GOOD}/; "
            f"categories found: {found}"
        )
    return folder


def _list_images(folder: Path) -> list[Path]:
    """Image files of ``folder`` sorted by name; other entries are skipped with a DataWarning."""
    images, skipped = [], []
    for entry in sorted(folder.iterdir()):
        is_image = entry.suffix.lower() in IMAGE_EXTENSIONS and not entry.name.startswith(".")
        (images if is_image and entry.is_file() else skipped).append(entry)
    if skipped:
        names = ", ".join(entry.name for entry in skipped)
        warnings.warn(f"{folder}: ignoring {len(skipped)} non-image entries: {names}", DataWarning, stacklevel=3)
    return images


def _sub_folders(folder: Path) -> list[Path]:
    """Sorted sub-folders of ``folder``; stray files there are skipped with a DataWarning."""
    entries = sorted(folder.iterdir())
    stray = [entry.name for entry in entries if not entry.is_dir()]
    if stray:
        warnings.warn(f"{folder}: ignoring {len(stray)} files: {', '.join(stray)}", DataWarning, stacklevel=3)
    return [entry for entry in entries if entry.is_dir()]


def _test_items(folder: Path, has_masks: bool) -> list[tuple[Path, str, Path | None]]:
    """(image, defect type, mask) of the test split: test/good first, then each defect folder by name."""
    test_dir = folder / "test"
    if not test_dir.is_dir():
        raise DataError(f"{test_dir} not found; expected test/good/ and one folder per defect type")
    type_dirs = sorted(_sub_folders(test_dir), key=lambda d: (d.name != GOOD, d.name))
    items: list[tuple[Path, str, Path | None]] = []
    missing: list[tuple[Path, Path]] = []
    orphans: list[tuple[Path, Path]] = []
    gt_dir = folder / "ground_truth"
    for type_dir in type_dirs:
        images = _list_images(type_dir)
        if type_dir.name == GOOD or not has_masks:
            items += [(image, type_dir.name, None) for image in images]
            continue
        mask_dir = gt_dir / type_dir.name
        masks = {_mask_id(mask): mask for mask in (_list_images(mask_dir) if mask_dir.is_dir() else [])}
        for image in images:
            mask = masks.pop(image.stem, None)
            if mask is None:
                missing.append((image, mask_dir / f"{image.stem}{MASK_SUFFIX}.png"))
            items.append((image, type_dir.name, mask))
        orphans += [(mask, type_dir / f"{image_id}.png") for image_id, mask in masks.items()]
    if has_masks:
        tested = {d.name for d in type_dirs}
        for mask_dir in _sub_folders(gt_dir):
            if mask_dir.name not in tested and mask_dir.name != GOOD:
                orphans += [(m, test_dir / mask_dir.name / f"{_mask_id(m)}.png") for m in _list_images(mask_dir)]
    if missing:
        image, expected = missing[0]
        raise DataError(
            f"{image}: defect image without a mask; expected {expected} "
            f"({len(missing)} defect image(s) without a mask in {folder})"
        )
    if orphans:
        mask, expected = orphans[0]
        raise DataError(
            f"{mask}: mask without an image; expected {expected} "
            f"({len(orphans)} mask(s) without an image in {folder})"
        )
    if not items:
        raise DataError(f"{test_dir} holds no images; expected test/good/*.png and test/<defect>/*.png")
    return items


def _mask_id(mask: Path) -> str:
    """``000_mask.png`` -> ``000``: the stem of the image the mask belongs to."""
    return mask.stem[: -len(MASK_SUFFIX)] if mask.stem.endswith(MASK_SUFFIX) else mask.stem


def _check_headers(items: list[tuple[Path, str, Path | None]]) -> None:
    """Open every image and mask header (cheap): unreadable files and mask/image size mismatches fail now."""
    for image, _, mask in items:
        size = _header_size(image)
        mask_size = size if mask is None else _header_size(mask)
        if mask_size != size:
            raise DataError(
                f"{mask}: mask is {mask_size[0]}x{mask_size[1]} px but its image {image} is "
                f"{size[0]}x{size[1]} px; expected both the same size"
            )


def _header_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(f"{path}: unreadable image ({error}); expected a PNG, JPEG, BMP or TIFF file") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    """Grayscale, palette, RGBA and 16-bit images -> 8-bit RGB (16-bit scaled, not clipped)."""
    if image.mode in SIXTEEN_BIT_MODES:
        eight_bit = np.clip(np.rint(np.asarray(image, dtype=np.float64) / 257.0), 0, 255).astype(np.uint8)
        image = Image.fromarray(eight_bit)
    elif image.mode == "P":
        image = image.convert("RGBA")  # keeps a transparency palette from warning on the way to RGB
    return image.convert("RGB")


def _read_rgb(path: Path, size: int) -> np.ndarray:
    """Decode ``path`` to uint8 RGB (size, size, 3), resized with antialiasing (PIL bilinear)."""
    try:
        with Image.open(path) as image:
            rgb = _to_rgb(image)
            if rgb.size != (size, size):
                rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
            return np.array(rgb, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(f"{path}: cannot decode image ({error}); the file is truncated or damaged") from None


def _read_mask(path: Path, size: int) -> np.ndarray:
    """Decode a mask to uint8 {0, 1} (size, size): binarised, resized, then thresholded at 0.5."""
    try:
        with Image.open(path) as image:
            gray = np.asarray(_to_rgb(image)).max(axis=2)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(f"{path}: cannot decode mask ({error}); the file is truncated or damaged") from None
    binary = gray > (0 if gray.max() <= 1 else 127)  # 0/1 masks as well as 0/255 ones
    if binary.shape != (size, size):
        resized = Image.fromarray(binary.astype(np.uint8) * 255).resize((size, size), Image.Resampling.BILINEAR)
        binary = np.asarray(resized) >= 128
    return binary.astype(np.uint8)

"""Anomaly-detection category datasets (MVTec AD, VisA, or a split file of one's own): train / validation /
test splits, masks, and an in-memory uint8 cache.

Three layouts (``data_format``), one dataset class (``AnomalyDataset``, also importable as ``MVTecDataset``):

``"mvtec"`` (MVTec AD, docs/reproduction.md#6-mvtec-ad; also accepted for a user's own data)::

    <root>/<category>/train/good/*.png                      normal training images
    <root>/<category>/test/good/*.png                       normal test images
    <root>/<category>/test/<defect>/<id>.png                defective test images
    <root>/<category>/ground_truth/<defect>/<id>_mask.png   their masks (optional folder)

``"visa"`` (VisA, docs/reproduction.md#8-visa)::

    <root>/<category>/Data/Images/{Normal,Anomaly}/*.JPG    all images of a category
    <root>/<category>/Data/Masks/Anomaly/*.png              masks of the anomalous ones
    <root>/split_csv/1cls.csv                               the one-class split (the csv format below,
                                                            its category column named ``object``)

``"csv"``: any tree, described by a split file (``split_csv=FILE``) with the header
``category,split,label,image,mask``: ``split`` is ``train`` or ``test``, ``label`` is ``normal`` or
``anomaly``, ``image`` and ``mask`` are paths relative to the data root (``mask`` empty for normal
images; the column may be left out when there are no masks). The train split holds normal images only.

``"auto"`` (the default) picks ``csv`` when a split file is given, ``visa`` when ``split_csv/1cls.csv``
exists or the category has ``Data/Images``, and ``mvtec`` otherwise (whose errors then name the layouts
expected).

Without masks (no ``ground_truth/`` folder, no mask column) the test items get all-zero masks and
``has_masks`` is False, so that pixel metrics can be reported as not available instead of as zero. Any
non-zero mask pixel is a defect (0/255, 0/1 and anti-aliased masks alike).

The validation split is a seeded share of the normal training images held out by name (``val_names``):
the file name in MVTec layout, the path relative to the data root for split files (base names repeat
there). It is the same for every backbone and never trained on.
"""
from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import io
import os
import posixpath
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from categories import category_group, validate_category
from errors import DataError

__all__ = [
    "ANOMALY", "DATA_FORMATS", "GOOD", "IMAGENET_MEAN", "IMAGENET_STD", "IMAGE_EXTENSIONS", "MASK_SUFFIX",
    "MVTEC_MARKER", "NORMAL", "SIXTEEN_BIT_MODES", "SPLITS", "VISA_MARKER", "VISA_SPLIT_FILE",
    "AnomalyDataset", "DataWarning", "MVTecDataset", "SplitRow", "data_provenance", "denormalize",
    "detect_format", "list_categories", "mask_values", "read_images", "normalize", "read_split_csv", "resolve_format",
    "split_file_for", "split_train_val",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

DATA_FORMATS = ("auto", "mvtec", "visa", "csv")
SPLITS = ("train", "val", "test")
GOOD = "good"
NORMAL = "normal"
ANOMALY = "anomaly"  # the defect type of every anomalous image of a split file (VisA's 1cls split has none)
MASK_SUFFIX = "_mask"
MVTEC_MARKER = Path("train") / GOOD  # what makes a folder an MVTec-layout category
VISA_MARKER = Path("Data") / "Images"  # what makes a folder a VisA-layout category
VISA_SPLIT_FILE = Path("split_csv") / "1cls.csv"
CATEGORY_COLUMNS = ("category", "object")  # a split file names its category column either way
SPLIT_FILE_COLUMNS = ("split", "label", "image")
MASK_COLUMN = "mask"
SPLIT_FILE_SPLITS = ("train", "test")
SPLIT_FILE_LABELS = (NORMAL, ANOMALY)
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})

# Pillow image modes: what each decodes to 8-bit RGB through
EIGHT_BIT_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"})
SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})  # "I": 32-bit int, 16-bit values only
FLOAT_MODE = "F"  # 32-bit float, values in [0, 1] only
ACCEPTED_MODES = EIGHT_BIT_MODES | SIXTEEN_BIT_MODES | {FLOAT_MODE}
ACCEPTED_MODES_TEXT = (
    "8-bit images (modes 1, L, LA, P, PA, RGB, RGBA, RGBa, RGBX, CMYK, YCbCr), 16-bit images (I;16 modes, "
    "and mode I with values 0..65535; scaled by 1/257) and 32-bit float images (mode F) with values in "
    "[0, 1] (scaled by 255)"
)
RAW_MASK_MODES = frozenset({"1", "L"}) | SIXTEEN_BIT_MODES | {FLOAT_MODE}  # one channel, read as stored
MAX_LISTED_VALUES = 8


class DataWarning(UserWarning):
    """Something in the data tree was skipped (e.g. ``.DS_Store``, ``Thumbs.db``)."""


# ---------------------------------------------------------------------------------------------- formats


@contextlib.contextmanager
def _readable() -> Iterator[None]:
    """Turn an OS error met while reading the data tree (unreadable folder or file) into a DataError naming it."""
    try:
        yield
    except PermissionError as error:
        raise DataError(
            f"{error.filename or 'a file of the data tree'}: permission denied; expected a folder or file "
            f"that this user can read (check its permissions)"
        ) from None
    except OSError as error:
        where = error.filename or "a file of the data tree"
        raise DataError(f"{where}: cannot be read ({error.strerror or error})") from None


@_readable()
def detect_format(
    root: str | os.PathLike, split_csv: str | os.PathLike | None = None, category: str | None = None
) -> str:
    """``"csv"`` when a split file is given; ``"visa"`` when ``<root>/split_csv/1cls.csv`` exists or the
    category (any category when None) has ``Data/Images/``; ``"mvtec"`` otherwise."""
    if split_csv is not None:
        return "csv"
    root = _existing_root(root)
    if (root / VISA_SPLIT_FILE).is_file():
        return "visa"
    if category is not None:
        validate_category(category)
    folders = [root / category] if category is not None else _visible_folders(root)
    return "visa" if any((folder / VISA_MARKER).is_dir() for folder in folders) else "mvtec"


def resolve_format(
    root: str | os.PathLike, data_format: str = "auto", split_csv: str | os.PathLike | None = None,
    category: str | None = None,
) -> str:
    """Check ``data_format`` against ``split_csv`` and replace ``"auto"`` by the detected format."""
    if data_format not in DATA_FORMATS:
        raise DataError(f"--format {data_format!r}: expected one of {', '.join(DATA_FORMATS)}")
    if data_format == "csv" and split_csv is None:
        raise DataError(
            "--format csv needs --split-csv FILE (a CSV with the columns category, split, label, image, mask)"
        )
    if data_format == "mvtec" and split_csv is not None:
        raise DataError(
            f"--split-csv {split_csv} is read by --format csv or visa, not by --format mvtec (whose split is "
            f"its folders); drop one of the two"
        )
    return detect_format(root, split_csv, category) if data_format == "auto" else data_format


def split_file_for(
    root: str | os.PathLike, data_format: str, split_csv: str | os.PathLike | None = None
) -> Path | None:
    """The split file a resolved format reads: ``split_csv``, VisA's ``split_csv/1cls.csv``, or None (mvtec)."""
    if data_format == "mvtec":
        return None
    if split_csv is not None:
        return Path(split_csv)
    if data_format == "visa":
        return Path(root) / VISA_SPLIT_FILE
    raise DataError(f"--format {data_format} needs --split-csv FILE")


@_readable()
def data_provenance(
    root: str | os.PathLike, data_format: str = "auto", split_csv: str | os.PathLike | None = None,
    category: str | None = None,
) -> dict[str, str | None]:
    """What a run's data came from, for its config.json: the resolved format, and the split file with its
    SHA-256 (None in MVTec layout), so that runs on different splits are never compared as the same."""
    resolved = resolve_format(root, data_format, split_csv, category)
    split_file = split_file_for(root, resolved, split_csv)
    digest = None
    if split_file is not None:
        digest = hashlib.sha256(_existing_split_file(split_file, resolved).read_bytes()).hexdigest()
    return {
        "data_format": resolved,
        "split_csv": None if split_file is None else str(split_file),
        "split_csv_sha256": digest,
    }


@_readable()
def list_categories(
    root: str | os.PathLike, data_format: str = "auto", split_csv: str | os.PathLike | None = None
) -> list[str]:
    """Sorted category names: MVTec's category folders, or the categories named by the split file.

    In MVTec layout every visible sub-folder of ``root`` must be a category (have ``train/good/``): one
    that does not is a DataError naming it (not silently left out of ``--categories all``). Hidden
    folders and plain files (MVTec's ``license.txt`` and ``readme.txt``, archives) are ignored.
    """
    data_format = resolve_format(root, data_format, split_csv)
    if data_format == "mvtec":
        return _mvtec_categories(_existing_root(root))
    _existing_root(root)
    split_file = split_file_for(root, data_format, split_csv)
    return sorted({row.category for row in read_split_csv(_existing_split_file(split_file, data_format))})


def _mvtec_categories(root: Path) -> list[str]:
    folders = _visible_folders(root)
    stray = [folder for folder in folders if not (folder / MVTEC_MARKER).is_dir()]
    if stray:
        names = ", ".join(folder.name for folder in stray)
        nested = [folder for folder in _visible_folders(stray[0]) if (folder / MVTEC_MARKER).is_dir()]
        hint = f"; it holds categories itself: did you mean --data-root {stray[0]}?" if nested else ""
        raise DataError(
            f"{stray[0]} is not an MVTec-format category: it has no train/good/ folder ({len(stray)} such "
            f"folder(s) in {root}: {names}); expected every visible sub-folder of the data root to be a "
            f"category: move it out, or name the categories with --categories{hint}"
        )
    return sorted(folder.name for folder in folders)


def _visible_folders(folder: Path) -> list[Path]:
    """Sub-folders of ``folder`` whose names do not start with a dot, sorted."""
    return sorted(entry for entry in folder.iterdir() if entry.is_dir() and not entry.name.startswith("."))


def _existing_root(root: str | os.PathLike) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"data root {root} does not exist or is not a folder; expected a folder of categories in MVTec AD "
            f"layout (<root>/<category>/train/good/*.png) or VisA layout (<root>/split_csv/1cls.csv). Get "
            f"MVTec AD with `main.py download --data-root {root}` (VisA: add --dataset visa) or write "
            f"synthetic data with `main.py synth --data-root {root}`"
        )
    return root


# ---------------------------------------------------------------------------------------------- split files


@dataclass(frozen=True)
class SplitRow:
    """One row of a split file: an image (and its mask), its category, split and label.

    ``image`` and ``mask`` are normalised relative POSIX paths (``mask`` empty when there is none);
    ``line`` is the row's line in the file, for messages.
    """

    line: int
    category: str
    split: str
    label: str
    image: str
    mask: str


@_readable()
def read_split_csv(path: str | os.PathLike) -> list[SplitRow]:
    """Parse and check a split file; every bad row is a DataError naming the file, line and column.

    Checked here: the header, each row's values (split, label, category name, relative paths that stay
    under the data root), anomalies in the train split, masks on normal images and repeated images.
    Whether the files exist is checked per category by the dataset.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error}); expected a CSV file") from None
    reader = csv.reader(io.StringIO(text))
    header = [name.strip().lower() for name in next(reader, [])]
    columns = _split_file_columns(path, header)
    rows: list[SplitRow] = []
    first_line: dict[str, int] = {}
    for values in reader:
        if not any(value.strip() for value in values):
            continue
        row = _split_row(path, reader.line_num, values, columns, len(header))
        if row.image in first_line:
            raise DataError(
                f"{_at(path, row.line, 'image')}: {row.image} is listed again (first on line "
                f"{first_line[row.image]}); expected each image once"
            )
        first_line[row.image] = row.line
        rows.append(row)
    if not rows:
        raise DataError(f"{path} lists no images; expected one row per image under its header")
    return rows


def _split_file_columns(path: Path, header: list[str]) -> dict[str, int]:
    """Column name -> index; the category column is stored under ``"category"``."""
    expected = "expected the header category,split,label,image,mask (mask optional; VisA names category 'object')"
    if not header:
        raise DataError(f"{path} is empty; {expected}")
    category = [name for name in CATEGORY_COLUMNS if name in header]
    if len(category) != 1:
        found = "both 'category' and 'object'" if category else "no 'category' column"
        raise DataError(f"{path}: {found} in the header {','.join(header)}; {expected}")
    missing = [name for name in SPLIT_FILE_COLUMNS if name not in header]
    if missing:
        names = ", ".join(map(repr, missing))
        raise DataError(f"{path}: no {names} column in the header {','.join(header)}; {expected}")
    columns = {name: header.index(name) for name in (*SPLIT_FILE_COLUMNS, MASK_COLUMN) if name in header}
    columns["category"] = header.index(category[0])
    return columns


def _at(path: Path, line: int, column: str) -> str:
    return f"{path}, line {line}, column {column!r}"


def _split_row(path: Path, line: int, values: list[str], columns: dict[str, int], width: int) -> SplitRow:
    """Check one row's values and return it as a SplitRow."""
    if len(values) != width:
        raise DataError(f"{path}, line {line}: {len(values)} fields; expected {width}, as in the header")
    value = {name: values[index].strip() for name, index in columns.items()}
    try:
        validate_category(value["category"])
    except DataError as error:
        raise DataError(f"{_at(path, line, 'category')}: {error}") from None
    if value["split"] not in SPLIT_FILE_SPLITS:
        raise DataError(
            f"{_at(path, line, 'split')}: {value['split']!r}; expected train or test (the validation images are "
            f"held out from the train normals by --val-fraction and --split-seed)"
        )
    if value["label"] not in SPLIT_FILE_LABELS:
        raise DataError(f"{_at(path, line, 'label')}: {value['label']!r}; expected normal or anomaly")
    if value["split"] == "train" and value["label"] == ANOMALY:
        raise DataError(
            f"{_at(path, line, 'label')}: an anomaly in the train split; expected only normal images there "
            f"(the model learns from normal images only)"
        )
    image = _relative_path(path, line, "image", value["image"])
    if not image:
        raise DataError(f"{_at(path, line, 'image')}: empty; expected the image's path relative to the data root")
    mask = _relative_path(path, line, MASK_COLUMN, value.get(MASK_COLUMN, ""))
    if mask and value["label"] == NORMAL:
        raise DataError(
            f"{_at(path, line, MASK_COLUMN)}: a mask for a normal image; expected it empty (a normal image has no "
            f"defect pixels)"
        )
    return SplitRow(line, value["category"], value["split"], value["label"], image, mask)


def _relative_path(path: Path, line: int, column: str, text: str) -> str:
    """``text`` as a normalised relative POSIX path ('' stays ''); absolute paths and ``..`` are refused."""
    if not text:
        return ""
    posix = text.replace("\\", "/")
    normal = posixpath.normpath(posix)
    if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":") or normal == ".." or normal.startswith("../"):
        raise DataError(
            f"{_at(path, line, column)}: {text!r} leaves the data root; expected a path relative to the data root, "
            f"e.g. candle/Data/Images/Normal/0000.JPG"
        )
    return normal


def _existing_split_file(split_file: Path, data_format: str) -> Path:
    if split_file.is_file():
        return split_file
    if data_format == "visa":
        raise DataError(
            f"{split_file} not found; expected VisA's one-class split there (it comes with VisA's archive: "
            f"`main.py download --dataset visa`), or pass another with --split-csv FILE"
        )
    raise DataError(
        f"--split-csv {split_file}: no such file; expected a CSV with the header category,split,label,image,mask"
    )


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


class _Item(NamedTuple):
    image: Path
    defect_type: str
    mask: Path | None


class _Source(Protocol):
    """Where one category's images come from: its folders (MVTec) or a split file (VisA, csv)."""

    folder: Path
    has_masks: bool
    split_file: Path | None
    train_origin: str  # named in errors about the training images

    def train_images(self) -> list[tuple[str, Path]]: ...  # (name for the validation split, path), sorted

    def test_items(self) -> list[_Item]: ...


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
        with _readable():
            self.data_format = resolve_format(self.root, data_format, split_csv, category)
            source = _open_source(self.root, category, self.data_format, split_csv)
            items, self.val_names = _split_items(source, split, val_fraction, split_seed)
            _check_headers(items)
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
        image = torch.from_numpy(_read_rgb(Path(self.paths[index]), self.image_size)).permute(2, 0, 1)
        mask_path = self.mask_paths[index]
        if mask_path is None:
            return image.contiguous(), None
        return image.contiguous(), torch.from_numpy(_read_mask(Path(mask_path), self.image_size)).unsqueeze(0)


MVTecDataset = AnomalyDataset  # the name used before VisA and split files were supported


def _open_source(root: Path, category: str, data_format: str, split_csv: str | os.PathLike | None) -> _Source:
    if data_format == "mvtec":
        return _MVTecSource(root, category)
    split_file = _existing_split_file(split_file_for(root, data_format, split_csv), data_format)
    return _SplitFileSource(_existing_root(root), category, split_file, data_format)


def _split_items(
    source: _Source, split: str, val_fraction: float, split_seed: int
) -> tuple[list[_Item], list[str]]:
    """The items of ``split``, and the names of the train normals held out for validation."""
    train_images = source.train_images()
    try:
        train_names, val_names = split_train_val([name for name, _ in train_images], val_fraction, split_seed)
    except DataError as error:
        raise DataError(f"{source.train_origin}: {error}") from None
    if split == "test":
        return source.test_items(), val_names
    chosen = set(train_names if split == "train" else val_names)
    return [_Item(path, GOOD, None) for name, path in train_images if name in chosen], val_names


# ---------------------------------------------------------------------------------------------- MVTec layout


class _MVTecSource:
    """A category folder in MVTec layout: ``train/good``, ``test/<type>``, optional ``ground_truth/<type>``."""

    split_file = None

    def __init__(self, root: Path, category: str) -> None:
        self.folder = _category_folder(root, category)
        self.has_masks = (self.folder / "ground_truth").is_dir()
        self.train_dir = self.folder / MVTEC_MARKER
        self.train_origin = str(self.train_dir)

    def train_images(self) -> list[tuple[str, Path]]:
        """(file name, path) of ``train/good``'s images, sorted by name."""
        images = _list_images(self.train_dir)
        if not images:
            raise DataError(f"{self.train_dir} holds no images; expected the normal training images (*.png) there")
        return [(path.name, path) for path in images]

    def test_items(self) -> list[_Item]:
        return _test_items(self.folder, self.has_masks)


def _category_folder(root: Path, category: str) -> Path:
    folder = _existing_root(root) / category
    if not (folder / MVTEC_MARKER).is_dir():
        found = ", ".join(sorted(f.name for f in _visible_folders(root) if (f / MVTEC_MARKER).is_dir())) or "none"
        what = "has no train/good/ folder" if folder.is_dir() else "not found"
        raise DataError(
            f"category {category!r} {what} in {root}: expected {folder / MVTEC_MARKER}/; "
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


def _test_items(folder: Path, has_masks: bool) -> list[_Item]:
    """(image, defect type, mask) of the test split: test/good first, then each defect folder by name."""
    test_dir = folder / "test"
    if not test_dir.is_dir():
        raise DataError(f"{test_dir} not found; expected test/good/ and one folder per defect type")
    type_dirs = sorted(_sub_folders(test_dir), key=lambda d: (d.name != GOOD, d.name))
    items: list[_Item] = []
    missing: list[tuple[Path, Path]] = []
    orphans: list[tuple[Path, Path]] = []
    gt_dir = folder / "ground_truth"
    for type_dir in type_dirs:
        images = _list_images(type_dir)
        if type_dir.name == GOOD or not has_masks:
            items += [_Item(image, type_dir.name, None) for image in images]
            continue
        mask_dir = gt_dir / type_dir.name
        masks = {_mask_id(mask): mask for mask in (_list_images(mask_dir) if mask_dir.is_dir() else [])}
        for image in images:
            mask = masks.pop(image.stem, None)
            if mask is None:
                missing.append((image, mask_dir / f"{image.stem}{MASK_SUFFIX}.png"))
            items.append(_Item(image, type_dir.name, mask))
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


# ---------------------------------------------------------------------------------------------- split-file layout


class _SplitFileSource:
    """One category of a split file (VisA's ``1cls.csv`` or a user's): its rows, files checked to exist.

    Images are named by their path relative to the data root; anomalies get the defect type ``"anomaly"``.
    """

    def __init__(self, root: Path, category: str, split_file: Path, data_format: str) -> None:
        rows = read_split_csv(split_file)
        self.root = root
        self.category = category
        self.split_file = split_file
        self.folder = root / category if data_format == "visa" else root
        self.train_origin = f"{split_file} (train normals of {category!r})"
        self.rows = [row for row in rows if row.category == category]
        if not self.rows:
            found = ", ".join(sorted({row.category for row in rows}))
            raise DataError(f"category {category!r} not found in {split_file}; categories found: {found}")
        anomalies = [row for row in self.rows if row.split == "test" and row.label == ANOMALY]
        masked = [row for row in anomalies if row.mask]
        unmasked = [row for row in anomalies if not row.mask]
        if masked and unmasked:
            raise DataError(
                f"{_at(split_file, unmasked[0].line, MASK_COLUMN)}: an anomaly without a mask while "
                f"{len(masked)} other anomalies of {category!r} have one ({len(unmasked)} without); expected a "
                f"mask for every anomaly, or for none (then pixel metrics are not available)"
            )
        self.has_masks = bool(masked)

    def train_images(self) -> list[tuple[str, Path]]:
        """(path relative to the root, path) of the category's train normals, sorted."""
        rows = sorted((row for row in self.rows if row.split == "train"), key=lambda row: row.image)
        if not rows:
            raise DataError(
                f"{self.split_file}: no train rows for {self.category!r}; expected its normal training images"
            )
        return [(row.image, self._existing(row, "image")) for row in rows]

    def test_items(self) -> list[_Item]:
        """Normal test images first, then the anomalies, each sorted by path."""
        rows = sorted(
            (row for row in self.rows if row.split == "test"), key=lambda row: (row.label != NORMAL, row.image)
        )
        if not rows:
            raise DataError(f"{self.split_file}: no test rows for {self.category!r}; expected its test images")
        return [
            _Item(
                self._existing(row, "image"),
                GOOD if row.label == NORMAL else ANOMALY,
                self._existing(row, MASK_COLUMN) if row.mask else None,
            )
            for row in rows
        ]

    def _existing(self, row: SplitRow, column: str) -> Path:
        path = self.root / (row.image if column == "image" else row.mask)
        if not path.is_file():
            raise DataError(
                f"{_at(self.split_file, row.line, column)}: {path} not found; expected the {column} file at that "
                f"path under the data root {self.root}"
            )
        return path


# ---------------------------------------------------------------------------------------------- decoding


def _check_headers(items: list[_Item]) -> None:
    """Open every image and mask header (cheap): unreadable files, unsupported modes and mask/image size
    mismatches fail now."""
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
            _check_mode(image.mode, path)
            return image.size
    except PermissionError:
        raise DataError(f"{path}: permission denied; expected an image file this user can read") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(f"{path}: unreadable image ({error}); expected a PNG, JPEG, BMP or TIFF file") from None


def _check_mode(mode: str, path: Path) -> None:
    if mode not in ACCEPTED_MODES:
        raise DataError(f"{path}: image mode {mode!r} is not supported; accepted: {ACCEPTED_MODES_TEXT}")


@contextlib.contextmanager
def _decoding(path: Path, what: str) -> Iterator[Image.Image]:
    """``Image.open(path)``, with decoding errors as DataErrors naming the file."""
    try:
        with Image.open(path) as image:
            _check_mode(image.mode, path)
            yield image
    except PermissionError:
        raise DataError(f"{path}: permission denied; expected an {what} file this user can read") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(f"{path}: cannot decode {what} ({error}); the file is truncated or damaged") from None


def _to_rgb(image: Image.Image, path: Path) -> Image.Image:
    """Any accepted mode -> 8-bit RGB: 16-bit values scaled by 1/257, float [0, 1] by 255 (never clipped)."""
    if image.mode in SIXTEEN_BIT_MODES:
        return Image.fromarray(_sixteen_to_eight_bit(np.asarray(image), image.mode, path)).convert("RGB")
    if image.mode == FLOAT_MODE:
        return Image.fromarray(_float_to_eight_bit(np.asarray(image), path)).convert("RGB")
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA")  # keeps a transparency palette from warning on the way to RGB
    return image.convert("RGB")


def _sixteen_to_eight_bit(values: np.ndarray, mode: str, path: Path) -> np.ndarray:
    """16-bit values -> uint8 by 1/257; values outside 0..65535, or 8-bit data in a 16-bit file, refused."""
    low, high = int(values.min()), int(values.max())
    if low < 0 or high > 65535:
        raise DataError(
            f"{path}: mode {mode} image with values {low}..{high}, outside the 16-bit range 0..65535; "
            f"accepted: {ACCEPTED_MODES_TEXT}"
        )
    if 0 < high <= 255:
        raise DataError(
            f"{path}: mode {mode} (16-bit) image whose values only reach {high}: 8-bit data in a 16-bit file, "
            f"which would decode almost black; expected 16-bit values (0..65535), or save it as an 8-bit image"
        )
    return np.clip(np.rint(values.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)


def _float_to_eight_bit(values: np.ndarray, path: Path) -> np.ndarray:
    """Float values in [0, 1] -> uint8 by 255; anything else refused."""
    if not np.isfinite(values).all():
        raise DataError(f"{path}: float image (mode F) with NaN or infinite values; accepted: {ACCEPTED_MODES_TEXT}")
    low, high = float(values.min()), float(values.max())
    if low < 0.0 or high > 1.0:
        raise DataError(
            f"{path}: float image (mode F) with values {low:g}..{high:g}, outside [0, 1]; accepted: "
            f"{ACCEPTED_MODES_TEXT}. Rescale it to [0, 1] or save it as an 8- or 16-bit image"
        )
    return np.rint(values.astype(np.float64) * 255.0).astype(np.uint8)


def read_images(paths: Sequence[str | os.PathLike], size: int) -> torch.Tensor:
    """Images of any supported mode as one uint8 RGB tensor (N, 3, size, size), decoded exactly as the
    datasets decode them (so a model sees the same pixels in ``predict`` as in ``test``)."""
    with _readable():
        arrays = [_read_rgb(Path(path), size) for path in tqdm(paths, desc="reading images", unit="img",
                                                                leave=False, disable=len(paths) < 50)]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _read_rgb(path: Path, size: int) -> np.ndarray:
    """Decode ``path`` to uint8 RGB (size, size, 3), resized with antialiasing (PIL bilinear)."""
    with _decoding(path, "image") as image:
        rgb = _to_rgb(image, path)
        if rgb.size != (size, size):
            rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
        return np.array(rgb, dtype=np.uint8)


def _mask_levels(image: Image.Image, path: Path) -> np.ndarray:
    """A mask's values (H, W): one-channel modes as stored (0/1, 0/255, 16-bit, float), others as the
    brightest channel of their RGB form."""
    if image.mode in RAW_MASK_MODES:
        levels = np.asarray(image)
        if image.mode == FLOAT_MODE and not np.isfinite(levels).all():
            raise DataError(f"{path}: float mask with NaN or infinite values; expected 0 for normal pixels")
        return levels.astype(np.uint8) if levels.dtype == bool else levels
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA")
    return np.asarray(image.convert("RGB")).max(axis=2)


def mask_values(path: str | os.PathLike) -> list[float]:
    """The distinct values of a mask file, sorted (what ``check-data --decode`` reports on)."""
    path = Path(path)
    with _decoding(path, "mask") as image:
        return np.unique(_mask_levels(image, path)).tolist()


def _read_mask(path: Path, size: int) -> np.ndarray:
    """Decode a mask to uint8 {0, 1} (size, size): binarised (any non-zero pixel is a defect, so 0/255 and
    0/1 masks read the same), resized, then thresholded at 0.5."""
    with _decoding(path, "mask") as image:
        binary = _mask_levels(image, path) != 0
    if binary.shape != (size, size):
        resized = Image.fromarray(binary.astype(np.uint8) * 255).resize((size, size), Image.Resampling.BILINEAR)
        binary = np.asarray(resized) >= 128
    return binary.astype(np.uint8)

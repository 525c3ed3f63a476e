"""Where one category's images are: the three layouts (``data_format``), their detection, and a source per
layout that lists the training images and the test items (image, defect type, mask).

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

``"csv"``: any tree, described by a split file (``split_csv=FILE``, split_files.py).

``"mvtec_ad2"`` (MVTec AD 2, docs/reproduction.md#10-mvtec-ad-2-and-mvtec-loco-ad)::

    <root>/<scene>/train/good/*.png                                   normal training images
    <root>/<scene>/validation/good/*.png                              normal validation images (the threshold's)
    <root>/<scene>/test_public/{good,bad}/*.png                       the labelled test set: what `test` scores
    <root>/<scene>/test_public/ground_truth/bad/<id>_mask.png         its masks
    <root>/<scene>/test_private/*.png, test_private_mixed/*.png       unlabelled: scored by `predict` only

``"mvtec_loco"`` (MVTec LOCO AD, same section)::

    <root>/<object>/train/good/*.png, validation/good/*.png           normal training and validation images
    <root>/<object>/test/{good,logical_anomalies,structural_anomalies}/<id>.png
    <root>/<object>/ground_truth/<type>/<id>/000.png, 001.png, ...    one PNG per defect region of the image
    <root>/<object>/defects_config.json                               each defect type's pixel value and saturation

A ``validation/good`` folder (these two layouts) holds the validation normals: they replace the hash hold-out of
the training images (``Source.validation_images``).

``"auto"`` (the default) picks ``csv`` when a split file is given, ``visa`` when ``split_csv/1cls.csv``
exists or the category has ``Data/Images``, ``mvtec_ad2`` when it has ``test_public/``, ``mvtec_loco`` when it
has ``defects_config.json`` or ``test/logical_anomalies/`` or ``test/structural_anomalies/``, and ``mvtec``
otherwise (whose errors then name the layouts expected).
"""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import NamedTuple, Protocol

from categories import validate_category
from defects_config import DEFECTS_CONFIG_FILE, DefectSpec, read_defects_config
from errors import DataError
from image_io import IMAGE_EXTENSIONS, readable
from split_files import ANOMALY, MASK_COLUMN, NORMAL, SplitRow, existing_split_file, read_split_csv, cell

__all__ = ["AD2_TEST_DIR", "AD2_UNLABELLED_SPLITS", "DATA_FORMATS", "FOLDER_FORMATS", "GOOD", "LOCO_TYPES",
           "MASK_SUFFIX", "MVTEC_MARKER", "VALIDATION_MARKER", "VISA_MARKER", "VISA_SPLIT_FILE", "DataWarning", "Item",
           "Source", "data_provenance", "detect_format", "list_categories", "open_source", "resolve_format",
           "split_file_for"]

DATA_FORMATS = ("auto", "mvtec", "visa", "csv", "mvtec_ad2", "mvtec_loco")
GOOD = "good"
MASK_SUFFIX = "_mask"
MVTEC_MARKER = Path("train") / GOOD  # what makes a folder an MVTec-layout category
VISA_MARKER = Path("Data") / "Images"  # what makes a folder a VisA-layout category
VISA_SPLIT_FILE = Path("split_csv") / "1cls.csv"
VALIDATION_MARKER = Path("validation") / GOOD  # a layout's own validation normals (MVTec AD 2, MVTec LOCO AD)
AD2_TEST_DIR = "test_public"  # MVTec AD 2's labelled test set (what makes a folder an AD 2 scene)
AD2_UNLABELLED_SPLITS = ("test_private", "test_private_mixed")  # MVTec AD 2's test sets without labels
LOCO_TYPES = ("logical_anomalies", "structural_anomalies")  # MVTec LOCO AD's anomaly folders


class DataWarning(UserWarning):
    """Something in the data tree was skipped (e.g. ``.DS_Store``, ``Thumbs.db``), or is too small to be reliable."""


# ---------------------------------------------------------------------------------------------- formats


@readable()
def detect_format(
    root: str | os.PathLike, split_csv: str | os.PathLike | None = None, category: str | None = None
) -> str:
    """``"csv"`` when a split file is given; ``"visa"`` when ``<root>/split_csv/1cls.csv`` exists or the
    category (any category when None) has ``Data/Images/``; ``"mvtec_ad2"`` when it has ``test_public/``;
    ``"mvtec_loco"`` when it has ``defects_config.json`` or LOCO's anomaly folders; ``"mvtec"`` otherwise."""
    if split_csv is not None:
        return "csv"
    root = _existing_root(root)
    if (root / VISA_SPLIT_FILE).is_file():
        return "visa"
    if category is not None:
        validate_category(category)
    folders = [root / category] if category is not None else _visible_folders(root)
    if any((folder / VISA_MARKER).is_dir() for folder in folders):
        return "visa"
    if any((folder / AD2_TEST_DIR).is_dir() for folder in folders):
        return "mvtec_ad2"
    loco = [DEFECTS_CONFIG_FILE, *(str(Path("test") / name) for name in LOCO_TYPES)]
    return "mvtec_loco" if any((folder / name).exists() for folder in folders for name in loco) else "mvtec"


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
    if data_format in FOLDER_FORMATS and split_csv is not None:
        raise DataError(
            f"--split-csv {split_csv} is read by --format csv or visa, not by --format {data_format} (whose split is "
            f"its folders); drop one of the two"
        )
    return detect_format(root, split_csv, category) if data_format == "auto" else data_format


def split_file_for(
    root: str | os.PathLike, data_format: str, split_csv: str | os.PathLike | None = None
) -> Path | None:
    """The split file a resolved format reads: ``split_csv``, VisA's ``split_csv/1cls.csv``, or None (the folder
    layouts)."""
    if data_format in FOLDER_FORMATS:
        return None
    if split_csv is not None:
        return Path(split_csv)
    if data_format == "visa":
        return Path(root) / VISA_SPLIT_FILE
    raise DataError(f"--format {data_format} needs --split-csv FILE")


@readable()
def data_provenance(
    root: str | os.PathLike, data_format: str = "auto", split_csv: str | os.PathLike | None = None,
    category: str | None = None,
) -> dict[str, str | None]:
    """What a run's data came from, for its config.json: the resolved format, and the split file with its
    SHA-256 (None in the folder layouts), so that runs on different splits are never compared as the same."""
    resolved = resolve_format(root, data_format, split_csv, category)
    split_file = split_file_for(root, resolved, split_csv)
    digest = None
    if split_file is not None:
        digest = hashlib.sha256(existing_split_file(split_file, resolved).read_bytes()).hexdigest()
    return {
        "data_format": resolved,
        "split_csv": None if split_file is None else str(split_file),
        "split_csv_sha256": digest,
    }


@readable()
def list_categories(
    root: str | os.PathLike, data_format: str = "auto", split_csv: str | os.PathLike | None = None
) -> list[str]:
    """Sorted category names: the category folders (MVTec, MVTec AD 2, MVTec LOCO), or the categories named by the
    split file.

    In the folder layouts every visible sub-folder of ``root`` must be a category (have ``train/good/``): one
    that does not is a DataError naming it (not silently left out of ``--categories all``). Hidden
    folders and plain files (MVTec's ``license.txt`` and ``readme.txt``, archives) are ignored.
    """
    data_format = resolve_format(root, data_format, split_csv)
    if data_format in FOLDER_FORMATS:
        return _mvtec_categories(_existing_root(root))
    _existing_root(root)
    split_file = split_file_for(root, data_format, split_csv)
    return sorted({row.category for row in read_split_csv(existing_split_file(split_file, data_format))})


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


# ---------------------------------------------------------------------------------------------- sources


class Item(NamedTuple):
    """One test item: its image, defect type (``"good"`` for normals) and mask (None when it has none)."""

    image: Path
    defect_type: str
    mask: Path | None


class Source(Protocol):
    """Where one category's images come from: its folders (MVTec, MVTec AD 2, MVTec LOCO) or a split file (VisA,
    csv)."""

    folder: Path
    has_masks: bool
    split_file: Path | None
    train_origin: str  # named in errors about the training images
    defects_config: dict[int, DefectSpec] | None  # MVTec LOCO's defects_config.json, when there is one

    def train_images(self) -> list[tuple[str, Path]]: ...  # (name for the validation split, path), sorted

    def validation_images(self) -> list[tuple[str, Path]] | None: ...  # the layout's own validation normals, or None

    def test_items(self) -> list[Item]: ...

    def unlabelled_splits(self) -> dict[str, list[Path]]: ...  # test sets without labels (MVTec AD 2's private ones)


def open_source(root: Path, category: str, data_format: str, split_csv: str | os.PathLike | None) -> Source:
    """The source of one category in a resolved ``data_format``."""
    if data_format in _FOLDER_SOURCES:
        return _FOLDER_SOURCES[data_format](root, category)
    split_file = existing_split_file(split_file_for(root, data_format, split_csv), data_format)
    return _SplitFileSource(_existing_root(root), category, split_file, data_format)



# ---------------------------------------------------------------------------------------------- MVTec layout


class _PlainSource:
    """What most layouts lack: a defects config, validation normals of their own, test sets without labels."""

    defects_config: dict[int, DefectSpec] | None = None

    def validation_images(self) -> list[tuple[str, Path]] | None:
        """None: the validation normals are held out from the training images."""
        return None

    def unlabelled_splits(self) -> dict[str, list[Path]]:
        return {}


class _MVTecSource(_PlainSource):
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

    def test_items(self) -> list[Item]:
        return _test_items(self.folder, self.has_masks)


class _ValidationFolder(_MVTecSource):
    """A folder layout that ships its own validation normals in ``validation/good`` (used when present)."""

    def validation_images(self) -> list[tuple[str, Path]] | None:
        """(``validation/good/<file>``, path) of the validation folder's images, sorted; None without the folder.
        Named by their path in the category, so that they never share a name with a training image."""
        folder = self.folder / VALIDATION_MARKER
        if not folder.is_dir():
            return None
        images = _list_images(folder)
        if not images:
            raise DataError(f"{folder} holds no images; expected the normal validation images (*.png) there, or no "
                            f"such folder (then validation normals are held out of {self.train_dir})")
        return [(f"{VALIDATION_MARKER.as_posix()}/{path.name}", path) for path in images]


class _MVTecAD2Source(_ValidationFolder):
    """An MVTec AD 2 scene: ``test_public`` is the labelled test set (``good``, ``bad``, ``ground_truth/bad``); the
    private test sets have no labels and are listed for ``predict`` only."""

    def __init__(self, root: Path, category: str) -> None:
        super().__init__(root, category)
        self.test_dir = self.folder / AD2_TEST_DIR
        self.has_masks = (self.test_dir / "ground_truth").is_dir()

    def test_items(self) -> list[Item]:
        return _test_items(self.folder, self.has_masks, self.test_dir, self.test_dir / "ground_truth")

    def unlabelled_splits(self) -> dict[str, list[Path]]:
        """``test_private`` and ``test_private_mixed``: their images (flat folders), for the splits present."""
        return {name: _list_images(self.folder / name) for name in AD2_UNLABELLED_SPLITS
                if (self.folder / name).is_dir()}


class _MVTecLOCOSource(_ValidationFolder):
    """An MVTec LOCO AD object: ``test/<type>`` as in MVTec AD, but each test image's ground truth is a folder
    ``ground_truth/<type>/<id>/`` of region PNGs; ``defects_config.json`` (optional) gives their saturation."""

    def __init__(self, root: Path, category: str) -> None:
        super().__init__(root, category)
        config = self.folder / DEFECTS_CONFIG_FILE
        self.defects_config = read_defects_config(config) if config.is_file() else None

    def test_items(self) -> list[Item]:
        return _test_items(self.folder, self.has_masks, mask_folders=True)


_FOLDER_SOURCES = {"mvtec": _MVTecSource, "mvtec_ad2": _MVTecAD2Source, "mvtec_loco": _MVTecLOCOSource}
FOLDER_FORMATS = tuple(_FOLDER_SOURCES)  # layouts whose split is their folders (no split file)


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


def _test_items(folder: Path, has_masks: bool, test_dir: Path | None = None, gt_dir: Path | None = None,
                mask_folders: bool = False) -> list[Item]:
    """(image, defect type, mask) of the test split (``test_dir``, default ``test``): ``good`` first, then each
    defect folder by name. A mask is ``<gt_dir>/<type>/<id>_mask.png``, or with ``mask_folders`` the folder
    ``<gt_dir>/<type>/<id>/`` of the image's region PNGs."""
    test_dir = folder / "test" if test_dir is None else test_dir
    gt_dir = folder / "ground_truth" if gt_dir is None else gt_dir
    if not test_dir.is_dir():
        raise DataError(f"{test_dir} not found; expected {test_dir.name}/good/ and one folder per defect type")
    type_dirs = sorted((d for d in _sub_folders(test_dir) if d != gt_dir), key=lambda d: (d.name != GOOD, d.name))
    items: list[Item] = []
    missing: list[tuple[Path, Path]] = []
    orphans: list[tuple[Path, Path]] = []
    for type_dir in type_dirs:
        images = _list_images(type_dir)
        if type_dir.name == GOOD or not has_masks:
            items += [Item(image, type_dir.name, None) for image in images]
            continue
        mask_dir = gt_dir / type_dir.name
        masks = _masks_by_image(mask_dir, mask_folders) if mask_dir.is_dir() else {}
        for image in images:
            mask = masks.pop(image.stem, None)
            if mask is None:
                missing.append((image, mask_dir / (image.stem if mask_folders else f"{image.stem}{MASK_SUFFIX}.png")))
            items.append(Item(image, type_dir.name, mask))
        orphans += [(mask, type_dir / f"{image_id}.png") for image_id, mask in masks.items()]
    if has_masks:
        tested = {d.name for d in type_dirs}
        for mask_dir in _sub_folders(gt_dir):
            if mask_dir.name not in tested and mask_dir.name != GOOD:
                orphans += [(mask, test_dir / mask_dir.name / f"{image_id}.png")
                            for image_id, mask in _masks_by_image(mask_dir, mask_folders).items()]
    if missing:
        image, expected = missing[0]
        raise DataError(
            f"{image}: defect image without a mask; expected {expected}{'/*.png' if mask_folders else ''} "
            f"({len(missing)} defect image(s) without a mask in {folder})"
        )
    if orphans:
        mask, expected = orphans[0]
        raise DataError(
            f"{mask}: mask without an image; expected {expected} "
            f"({len(orphans)} mask(s) without an image in {folder})"
        )
    if not items:
        raise DataError(f"{test_dir} holds no images; expected {test_dir.name}/good/*.png and "
                        f"{test_dir.name}/<defect>/*.png")
    return items


def _masks_by_image(mask_dir: Path, folders: bool) -> dict[str, Path]:
    """Image id -> its mask in ``mask_dir``: ``<id>_mask.png`` files, or ``<id>/`` folders of region PNGs."""
    if folders:
        return {entry.name: entry for entry in _sub_folders(mask_dir) if not entry.name.startswith(".")}
    return {_mask_id(mask): mask for mask in _list_images(mask_dir)}


def _mask_id(mask: Path) -> str:
    """``000_mask.png`` -> ``000``: the stem of the image the mask belongs to."""
    return mask.stem[: -len(MASK_SUFFIX)] if mask.stem.endswith(MASK_SUFFIX) else mask.stem


# ---------------------------------------------------------------------------------------------- split-file layout


class _SplitFileSource(_PlainSource):
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
                f"{cell(split_file, unmasked[0].line, MASK_COLUMN)}: an anomaly without a mask while "
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

    def test_items(self) -> list[Item]:
        """Normal test images first, then the anomalies, each sorted by path."""
        rows = sorted(
            (row for row in self.rows if row.split == "test"), key=lambda row: (row.label != NORMAL, row.image)
        )
        if not rows:
            raise DataError(f"{self.split_file}: no test rows for {self.category!r}; expected its test images")
        return [
            Item(
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
                f"{cell(self.split_file, row.line, column)}: {path} not found; expected the {column} file at that "
                f"path under the data root {self.root}"
            )
        return path

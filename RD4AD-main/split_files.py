"""Split files (VisA's ``split_csv/1cls.csv`` or a user's ``--split-csv``): parsing and checking, every bad row
a DataError naming the file, line and column.

The header is ``category,split,label,image,mask`` (VisA names the category column ``object``): ``split`` is
``train`` or ``test``, ``label`` is ``normal`` or ``anomaly``, ``image`` and ``mask`` are paths relative to the
data root (``mask`` empty for normal images; the column may be left out when there are no masks). The train
split holds normal images only.
"""
from __future__ import annotations

import csv
import io
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path

from categories import validate_category
from errors import DataError
from image_io import readable

__all__ = ["ANOMALY", "CATEGORY_COLUMNS", "MASK_COLUMN", "NORMAL", "SPLIT_FILE_COLUMNS", "SPLIT_FILE_LABELS",
           "SPLIT_FILE_SPLITS", "SplitRow", "existing_split_file", "read_split_csv", "cell"]

NORMAL = "normal"
ANOMALY = "anomaly"  # the defect type of every anomalous image of a split file (VisA's 1cls split has none)
CATEGORY_COLUMNS = ("category", "object")  # a split file names its category column either way
SPLIT_FILE_COLUMNS = ("split", "label", "image")
MASK_COLUMN = "mask"
SPLIT_FILE_SPLITS = ("train", "test")
SPLIT_FILE_LABELS = (NORMAL, ANOMALY)


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


@readable()
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
                f"{cell(path, row.line, 'image')}: {row.image} is listed again (first on line "
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


def cell(path: Path, line: int, column: str) -> str:
    """``FILE, line N, column 'C'``: where a value of a split file is, for messages."""
    return f"{path}, line {line}, column {column!r}"


def _split_row(path: Path, line: int, values: list[str], columns: dict[str, int], width: int) -> SplitRow:
    """Check one row's values and return it as a SplitRow."""
    if len(values) != width:
        raise DataError(f"{path}, line {line}: {len(values)} fields; expected {width}, as in the header")
    value = {name: values[index].strip() for name, index in columns.items()}
    try:
        validate_category(value["category"])
    except DataError as error:
        raise DataError(f"{cell(path, line, 'category')}: {error}") from None
    if value["split"] not in SPLIT_FILE_SPLITS:
        raise DataError(
            f"{cell(path, line, 'split')}: {value['split']!r}; expected train or test (the validation images are "
            f"held out from the train normals by --val-fraction and --split-seed)"
        )
    if value["label"] not in SPLIT_FILE_LABELS:
        raise DataError(f"{cell(path, line, 'label')}: {value['label']!r}; expected normal or anomaly")
    if value["split"] == "train" and value["label"] == ANOMALY:
        raise DataError(
            f"{cell(path, line, 'label')}: an anomaly in the train split; expected only normal images there "
            f"(the model learns from normal images only)"
        )
    image = _relative_path(path, line, "image", value["image"])
    if not image:
        raise DataError(f"{cell(path, line, 'image')}: empty; expected the image's path relative to the data root")
    mask = _relative_path(path, line, MASK_COLUMN, value.get(MASK_COLUMN, ""))
    if mask and value["label"] == NORMAL:
        raise DataError(
            f"{cell(path, line, MASK_COLUMN)}: a mask for a normal image; expected it empty (a normal image has no "
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
            f"{cell(path, line, column)}: {text!r} leaves the data root; expected a path relative to the data root, "
            f"e.g. candle/Data/Images/Normal/0000.JPG"
        )
    return normal


def existing_split_file(split_file: Path, data_format: str) -> Path:
    """``split_file`` when it exists, else a DataError saying where VisA's comes from or what a split file is."""
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

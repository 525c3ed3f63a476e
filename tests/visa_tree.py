"""Small VisA-layout trees and split files for the tests, from synth's generated images.

    <root>/LICENSE-DATASET
    <root>/<category>/Data/Images/Normal/0000.JPG ...     normal images (train and test)
    <root>/<category>/Data/Images/Anomaly/000.JPG ...     anomalous images
    <root>/<category>/Data/Masks/Anomaly/000.png ...      their masks, defect pixels = the category's mask value
    <root>/split_csv/1cls.csv                              object,split,label,image,mask

Every category is rendered from the same synthetic object, so categories that differ only in their mask
value (0/1 against 0/255) must decode to the same masks.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from synth import render_item

__all__ = ["SPLIT_HEADER", "VISA_HEADER", "write_split_csv", "write_visa_tree"]

VISA_HEADER = ("object", "split", "label", "image", "mask")
SPLIT_HEADER = ("category", "split", "label", "image", "mask")
DEFECTS = ("colour", "missing_part", "scratch")


def write_split_csv(path: Path, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> Path:
    """Write a split file (header, then rows) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_visa_tree(
    root: Path,
    mask_values: dict[str, int] | None = None,
    n_train: int = 10,
    n_test_normal: int = 2,
    n_anomaly: int = 3,
    image_size: int = 64,
) -> list[tuple[str, ...]]:
    """Write a VisA-layout tree under ``root``; return the rows of its ``split_csv/1cls.csv``.

    ``mask_values`` maps category -> the value of its defect pixels (default: candle 0/1, pcb1 0/255).
    The csv lists the test rows before the train rows, as an unordered file would.
    """
    mask_values = mask_values or {"candle": 1, "pcb1": 255}
    root.mkdir(parents=True, exist_ok=True)
    (root / "LICENSE-DATASET").write_text("made up for the tests\n", encoding="utf-8")
    test_rows, train_rows = [], []
    for category, value in mask_values.items():
        for number in range(n_train + n_test_normal):
            _, image, _ = render_item("object", 0, "train", "good", number, image_size, seed=0)
            relative = f"{category}/Data/Images/Normal/{number:04d}.JPG"
            _save(image, root / relative, "JPEG")
            split = "train" if number < n_train else "test"
            (train_rows if split == "train" else test_rows).append((category, split, "normal", relative, ""))
        for number in range(n_anomaly):
            _, image, mask = render_item("object", 0, "test", DEFECTS[number % 3], number, image_size, seed=0)
            relative = f"{category}/Data/Images/Anomaly/{number:03d}.JPG"
            mask_relative = f"{category}/Data/Masks/Anomaly/{number:03d}.png"
            _save(image, root / relative, "JPEG")
            _save(mask.astype(np.uint8) * value, root / mask_relative, "PNG")
            test_rows.append((category, "test", "anomaly", relative, mask_relative))
    rows = test_rows + train_rows
    write_split_csv(root / "split_csv" / "1cls.csv", VISA_HEADER, rows)
    return rows


def _save(array: np.ndarray, path: Path, file_format: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"quality": 95} if file_format == "JPEG" else {}
    Image.fromarray(array).save(path, format=file_format, **options)

"""Count and validate an MVTec-format data root, category by category.

    python RD4AD-main/main.py check-data --data-root ROOT [--categories a,b|all] [--image-size S]
                                         [--val-fraction F] [--decode]

Every check of ``MVTecDataset`` runs (folders, image headers, image/mask pairs and sizes); ``--decode``
also decodes every image and mask, which finds truncated files. Counts that differ from the official
MVTec AD table (a partial extraction, most often) are reported as warnings.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections import Counter
from pathlib import Path

from dataset import (
    GOOD,
    OFFICIAL_COUNTS,
    DataWarning,
    MVTecDataset,
    category_kind,
    list_categories,
    validate_image_size,
)
from errors import DataError


def check_category(
    root: str | os.PathLike,
    category: str,
    image_size: int = 256,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    decode: bool = False,
) -> dict:
    """Counts of one category, raising DataError on a broken tree.

    Returns ``category``, ``kind``, ``train_good`` (all of train/good), ``train`` and ``validation``
    (its two parts), ``test_good``, ``test_defect`` (total), ``defect_types`` ({type: count}),
    ``has_masks``, ``masks_found``, ``official`` ((train good, test good, test defect) or None),
    ``matches_official`` (None for non-MVTec names) and ``warnings`` (messages, skipped files included).
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataWarning)
        splits = {
            split: MVTecDataset(root, category, split, image_size, val_fraction, split_seed)
            for split in ("train", "val", "test")
        }
        if decode:
            for dataset in splits.values():
                dataset.uint8_images()
            splits["test"].uint8_masks()
    test = splits["test"]
    defect_types = dict(sorted(Counter(t for t in test.defect_types if t != GOOD).items()))
    counts = (len(splits["train"]) + len(splits["val"]), test.defect_types.count(GOOD), sum(defect_types.values()))
    official = OFFICIAL_COUNTS.get(category)
    messages = list(dict.fromkeys(str(warning.message) for warning in caught))
    if official is not None and counts != official:
        messages.append(
            f"{category}: (train good, test good, test defect) = {counts} differ from the official MVTec AD "
            f"{official}; a partial or damaged extraction? Re-run `main.py download`"
        )
    return {
        "category": category,
        "kind": category_kind(category),
        "train_good": counts[0],
        "train": len(splits["train"]),
        "validation": len(splits["val"]),
        "test_good": counts[1],
        "test_defect": counts[2],
        "defect_types": defect_types,
        "has_masks": test.has_masks,
        "masks_found": sum(path is not None for path in test.mask_paths),
        "official": official,
        "matches_official": None if official is None else counts == official,
        "warnings": messages,
    }


def format_table(reports: list[dict]) -> str:
    """One row per category: counts, masks found / defect images (``n/a`` without ground_truth/), types."""
    header = ("category", "kind", "train good", "val", "test good", "test defect", "masks", "defect types")
    rows = [header]
    for report in reports:
        masks = f"{report['masks_found']}/{report['test_defect']}" if report["has_masks"] else "n/a"
        types = ", ".join(f"{name} {count}" for name, count in report["defect_types"].items()) or "-"
        rows.append((
            report["category"], report["kind"], str(report["train_good"]), str(report["validation"]),
            str(report["test_good"]), str(report["test_defect"]), masks, types,
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        lines.append("  ".join([*cells, row[-1]]))
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-root", type=Path, required=True, help="folder holding the category folders")
    parser.add_argument("--categories", default="all", help="comma-separated names, or 'all' (default)")
    parser.add_argument("--image-size", type=int, default=256, help="working size for --decode (default 256)")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="share of train/good held out (default 0.1)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the validation split (default 0)")
    parser.add_argument(
        "--decode", action="store_true", help="also decode every image and mask (finds truncated files)"
    )


def run(args: argparse.Namespace) -> int:
    validate_image_size(args.image_size)
    if args.categories == "all":
        categories = list_categories(args.data_root)
        if not categories:
            raise DataError(
                f"no category in {args.data_root}: expected sub-folders with train/good/ "
                f"(e.g. {args.data_root / 'bottle' / 'train' / 'good'})"
            )
    else:
        categories = [name.strip() for name in args.categories.split(",") if name.strip()]
    reports, failures = [], []
    for category in categories:
        try:
            reports.append(check_category(
                args.data_root, category, args.image_size, args.val_fraction, args.split_seed, args.decode
            ))
        except DataError as error:
            failures.append(f"{category}: {error}")
    if reports:
        print(format_table(reports))
    for report in reports:
        for message in report["warnings"]:
            print(f"warning: {message}", file=sys.stderr)
    if failures:
        raise DataError(f"{len(failures)} of {len(categories)} categories failed the check:\n" + "\n".join(failures))
    print(f"{len(reports)} categories OK in {args.data_root}")
    return 0

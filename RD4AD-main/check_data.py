"""Count and validate a data root (MVTec AD, VisA, MVTec AD 2, MVTec LOCO AD or a split file of one's own), category
by category.

    python RD4AD-main/main.py check-data --data-root ROOT [--format auto|mvtec|visa|csv] [--split-csv FILE]
                                         [--categories a,b|all] [--image-size S] [--val-fraction F] [--decode]

Every check of the dataset runs (folders or split-file rows, image headers and modes, image/mask pairs and
sizes); ``--decode`` also decodes every image and mask, which finds truncated files, and reports masks
with more than two distinct values (every non-zero pixel counts as defect) and defect images whose mask
is empty; for MVTec LOCO AD it checks each region PNG instead: one pixel value, a defect type of
``defects_config.json``, not vanishing at ``--image-size``. Counts that differ from the official table (a
partial extraction, most often) are reported as warnings: MVTec AD's and VisA's (train good, test good, test
defect), MVTec LOCO AD's (train, validation, test good, logical, structural; the public archive's own counts
are accepted too), MVTec AD 2's private test sets per scene and its public splits summed over the 8 scenes.

Columns: ``train good`` is every normal training image (``train/good``), split into ``train`` (trained on) and
``validation`` (held out by --val-fraction and --split-seed), unless the layout has its own ``validation/good``
(MVTec AD 2, MVTec LOCO AD): then all of ``train good`` trains and ``validation`` counts that folder. ``test good``
and ``test defect`` are the test images (MVTec AD 2: ``test_public``; its private sets are listed below the table).
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections import Counter
from pathlib import Path
from typing import NamedTuple

from categories import (LOCO_ARCHIVE_COUNTS, LOCO_OFFICIAL_COUNTS, MVTEC_AD2_ARCHIVE_TOTALS, MVTEC_AD2_CATEGORIES,
                        MVTEC_AD2_PRIVATE_COUNTS, OFFICIAL_COUNTS, VISA_OFFICIAL_COUNTS, category_group)
from dataset import (DATA_FORMATS, GOOD, VALIDATION_FOLDER_RULE, AnomalyDataset, DataWarning, list_categories,
                     mask_values, resolve_format)
from errors import DataError
from layouts import AD2_UNLABELLED_SPLITS, LOCO_TYPES
from rd_model import validate_image_size

__all__ = ["OFFICIAL_TABLES", "OfficialTable", "add_arguments", "check_category", "format_table", "mask_warnings",
           "official_counts", "region_warnings", "run"]



class OfficialTable(NamedTuple):
    """A data set's official counts: its name in messages, its download command, what the counts are, the table
    (category -> counts) and whether only its own layout looks it up (else MVTec AD's and VisA's share names)."""

    name: str
    command: str
    fields: str
    counts: dict[str, tuple[int, ...]]
    own_layout_only: bool


_DEFAULT_FIELDS = "(train good, test good, test defect)"
OFFICIAL_TABLES: dict[str, OfficialTable] = {  # by data format
    "mvtec": OfficialTable("MVTec AD", "main.py download", _DEFAULT_FIELDS, OFFICIAL_COUNTS, False),
    "visa": OfficialTable("VisA (split_csv/1cls.csv)", "main.py download --dataset visa", _DEFAULT_FIELDS,
                          VISA_OFFICIAL_COUNTS, False),
    "mvtec_loco": OfficialTable("MVTec LOCO AD", "main.py download --dataset mvtec_loco",
                                "(train, validation, test good, logical, structural)", LOCO_OFFICIAL_COUNTS, True),
    "mvtec_ad2": OfficialTable("MVTec AD 2", "main.py download --dataset mvtec_ad2",
                               "(test_private, test_private_mixed)", MVTEC_AD2_PRIVATE_COUNTS, True),
}
MAX_MASK_MESSAGES = 5  # per kind of mask problem and category; the rest are counted


def official_counts(category: str, data_format: str) -> tuple[str, str, tuple[int, ...]] | None:
    """(dataset name, download command, official counts) of a known category name, else None: MVTec AD's or
    VisA's (train good, test good, test defect), MVTec LOCO AD's and MVTec AD 2's as their table's ``fields`` say.

    Split files (format ``csv``) are the user's own: none. VisA names are looked up in MVTec layout too,
    since converters (anomalib's) write VisA's one-class split in that layout.
    """
    if data_format == "csv":
        return None
    own = OFFICIAL_TABLES.get(data_format)
    tables = [own] if own is not None and own.own_layout_only else [
        table for table in OFFICIAL_TABLES.values() if not table.own_layout_only]
    for table in tables:
        if category in table.counts:
            return table.name, table.command, table.counts[category]
    return None


def _observed(splits: dict[str, AnomalyDataset], counts: tuple[int, int, int]) -> tuple[int, ...]:
    """A category's counts in the order of its layout's official table (``counts``: train good, test good, test
    defect)."""
    test = splits["test"]
    kinds = test.defect_types
    if test.data_format == "mvtec_loco":
        return (len(splits["train"]), len(splits["val"]), kinds.count(GOOD), *(kinds.count(t) for t in LOCO_TYPES))
    if test.data_format == "mvtec_ad2":
        return tuple(len(test.unlabelled_splits.get(name, [])) for name in AD2_UNLABELLED_SPLITS)
    return counts


def check_category(
    root: str | os.PathLike,
    category: str,
    image_size: int = 256,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    decode: bool = False,
    *,
    data_format: str = "auto",
    split_csv: str | os.PathLike | None = None,
) -> dict:
    """Counts of one category, raising DataError on a broken tree or split file.

    Returns ``category``, ``kind`` and ``group`` (its report group, e.g. ``texture``), ``data_format``
    (resolved), ``train_good`` (all normal training images), ``train`` and ``validation`` (its two
    parts), ``test_good``, ``test_defect`` (total), ``defect_types`` ({type: count}), ``has_masks``,
    ``masks_found``, ``official`` ((train good, test good, test defect) or None), ``official_dataset``
    (``"MVTec AD"``, ``"VisA (split_csv/1cls.csv)"``, ``"MVTec LOCO AD"``, ``"MVTec AD 2"`` or None),
    ``matches_official`` (None without an official table), ``unlabelled`` ({test set without labels: images}) and
    ``warnings`` (messages, skipped files and ``--decode``'s mask findings included).
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataWarning)
        splits = {
            split: AnomalyDataset(root, category, split, image_size, val_fraction, split_seed,
                                  data_format=data_format, split_csv=split_csv)
            for split in ("train", "val", "test")
        }
        if decode:
            for dataset in splits.values():
                dataset.uint8_images()
            splits["test"].uint8_masks()
    test = splits["test"]
    defect_types = dict(sorted(Counter(t for t in test.defect_types if t != GOOD).items()))
    folder_validation = splits["val"].holdout_rule == VALIDATION_FOLDER_RULE
    train_good = len(splits["train"]) + (0 if folder_validation else len(splits["val"]))
    counts = (train_good, test.defect_types.count(GOOD), sum(defect_types.values()))
    messages = list(dict.fromkeys(str(warning.message) for warning in caught))
    if decode:
        messages += region_warnings(test) if test.defects_config is not None else mask_warnings(test)
    official = official_counts(category, test.data_format)
    observed = _observed(splits, counts)
    accepted = [] if official is None else [official[2]]
    if official is not None and test.data_format == "mvtec_loco" and category in LOCO_ARCHIVE_COUNTS:
        accepted.append(LOCO_ARCHIVE_COUNTS[category])  # the public archive's counts differ from the paper's
    if official is not None and observed not in accepted:
        name, command, expected = official
        messages.append(
            f"{category}: {OFFICIAL_TABLES[test.data_format].fields} = {observed} differ from the official "
            f"{name} {expected}; a partial or damaged extraction? Re-run `{command}`"
        )
    return {
        "category": category,
        "kind": category_group(category),
        "group": category_group(category),
        "data_format": test.data_format,
        "train_good": counts[0],
        "train": len(splits["train"]),
        "validation": len(splits["val"]),
        "test_good": counts[1],
        "test_defect": counts[2],
        "defect_types": defect_types,
        "has_masks": test.has_masks,
        "masks_found": sum(path is not None for path in test.mask_paths),
        "official": None if official is None else official[2],
        "official_dataset": None if official is None else official[0],
        "matches_official": None if official is None else observed in accepted,
        "unlabelled": {name: len(images) for name, images in test.unlabelled_splits.items()},
        "warnings": messages,
    }


def mask_warnings(test: AnomalyDataset) -> list[str]:
    """Masks of ``test`` with more than two distinct values, and defect images whose mask is all zero."""
    many, empty = [], []
    for path in test.mask_paths:
        if path is None:
            continue
        values = mask_values(path)
        if len(values) > 2:
            many.append(
                f"{path}: mask with {len(values)} distinct values ({_listing(values)}); every non-zero pixel "
                f"counts as defect"
            )
        elif max(values) == 0:
            empty.append(f"{path}: the mask of a defect image is all zero; expected its defect pixels non-zero")
    return _capped(many, "more masks with more than two distinct values") + _capped(empty, "more all-zero masks")


def region_warnings(test: AnomalyDataset) -> list[str]:
    """MVTec LOCO AD's region PNGs: a pixel value that ``defects_config.json`` does not name, and regions that vanish
    at the working size (sPRO leaves them out). A PNG without exactly one value stops the check (DataError)."""
    unknown, vanished = [], []
    for index in range(len(test)):
        for region in test.regions(index):
            if region.pixel_value not in test.defects_config:
                unknown.append(f"{region.path}: pixel value {region.pixel_value} is not a defect type of "
                               f"defects_config.json ({', '.join(map(str, sorted(test.defects_config)))})")
            elif not int(region.mask.sum()):
                vanished.append(f"{region.path}: the region vanishes at {test.image_size} px (sPRO leaves it out)")
    return _capped(unknown, "more regions of unknown type") + _capped(vanished, "more regions that vanish")


def _listing(values: list[float]) -> str:
    """``values 0, 100, 255``; long lists cut in the middle."""
    text = [f"{value:g}" for value in values]
    if len(text) > 8:
        text = [*text[:6], "...", text[-1]]
    return "values " + ", ".join(text)


def _capped(messages: list[str], rest: str) -> list[str]:
    if len(messages) <= MAX_MASK_MESSAGES:
        return messages
    return [*messages[:MAX_MASK_MESSAGES], f"... and {len(messages) - MAX_MASK_MESSAGES} {rest}"]


def format_table(reports: list[dict]) -> str:
    """One row per category: counts, masks found / defect images (``n/a`` without masks), defect types."""
    header = ("category", "group", "train good", "train", "validation", "test good", "test defect", "masks",
              "defect types")
    rows = [header]
    for report in reports:
        masks = f"{report['masks_found']}/{report['test_defect']}" if report["has_masks"] else "n/a"
        types = ", ".join(f"{name} {count}" for name, count in report["defect_types"].items()) or "-"
        rows.append((
            report["category"], report["kind"], str(report["train_good"]), str(report["train"]),
            str(report["validation"]), str(report["test_good"]), str(report["test_defect"]), masks, types,
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        lines.append("  ".join([*cells, row[-1]]))
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-root", type=Path, required=True, help="folder holding the category folders")
    parser.add_argument("--format", dest="data_format", choices=DATA_FORMATS, default="auto",
                        help="data layout: mvtec, visa, mvtec_ad2, mvtec_loco, csv (a split file), or auto (default: "
                             "detected)")
    parser.add_argument("--split-csv", type=Path,
                        help="split file: columns category,split,label,image,mask, paths relative to --data-root "
                             "(implies --format csv under auto; replaces split_csv/1cls.csv under visa)")
    parser.add_argument("--categories", default="all", help="comma-separated names, or 'all' (default)")
    parser.add_argument("--image-size", type=int, default=256, help="working size for --decode (default 256)")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="share of the normal training images held out (default 0.1)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the validation split (default 0)")
    parser.add_argument(
        "--decode", action="store_true",
        help="also decode every image and mask (finds truncated files and masks with more than two values)",
    )


def _categories(args: argparse.Namespace, data_format: str) -> list[str]:
    if args.categories != "all":
        return [name.strip() for name in args.categories.split(",") if name.strip()]
    categories = list_categories(args.data_root, data_format, args.split_csv)
    if not categories:
        raise DataError(
            f"no category in {args.data_root}: expected sub-folders with train/good/ "
            f"(e.g. {args.data_root / 'bottle' / 'train' / 'good'}), VisA's split_csv/1cls.csv, or --split-csv FILE"
        )
    return categories


def _totals_report(reports: list[dict], data_format: str) -> list[dict]:
    """MVTec AD 2's public splits summed over its 8 scenes against the archive's totals (when all 8 are checked)."""
    if data_format != "mvtec_ad2" or sorted(r["category"] for r in reports) != sorted(MVTEC_AD2_CATEGORIES):
        return []
    totals = tuple(sum(r[key] for r in reports) for key in ("train_good", "validation", "test_good", "test_defect"))
    if totals == MVTEC_AD2_ARCHIVE_TOTALS:
        return []
    return [{"warnings": [f"MVTec AD 2: (train, validation, test_public good, test_public bad) summed over the 8 "
                          f"scenes = {totals} differ from the archive's {MVTEC_AD2_ARCHIVE_TOTALS}; a partial "
                          f"extraction?"]}]


def run(args: argparse.Namespace) -> int:
    validate_image_size(args.image_size)
    data_format = resolve_format(args.data_root, args.data_format, args.split_csv)
    categories = _categories(args, data_format)
    reports, failures = [], []
    for category in categories:
        try:
            reports.append(check_category(
                args.data_root, category, args.image_size, args.val_fraction, args.split_seed, args.decode,
                data_format=data_format, split_csv=args.split_csv,
            ))
        except DataError as error:
            failures.append(f"{category}: {error}")
    if reports:
        print(format_table(reports))
    for report in reports:
        if report["unlabelled"]:
            listed = ", ".join(f"{name} {count}" for name, count in report["unlabelled"].items())
            print(f"{report['category']}: without labels (scored by `main.py predict --split` only): {listed}")
    for report in reports + _totals_report(reports, data_format):
        for message in report["warnings"]:
            print(f"warning: {message}", file=sys.stderr)
    if failures:
        raise DataError(f"{len(failures)} of {len(categories)} categories failed the check:\n" + "\n".join(failures))
    print(f"{len(reports)} categories OK in {args.data_root} ({data_format} layout)")
    return 0

"""Benchmark categories: names, the groups a report averages over, and the official image counts.

MVTec AD's 15 categories are textures or objects (docs/reproduction.md#6-mvtec-ad); VisA's 12 are
complex structures, multiple instances or single instances (docs/reproduction.md#8-visa); MVTec AD 2's 8
scenes and MVTec LOCO AD's 5 objects are one group each (docs/reproduction.md#10-mvtec-ad-2-and-mvtec-loco-ad).
Any other name is in the group ``other``; the synthetic categories join the group they imitate by prefix
(``synth_texture*``, ``synth_object*``, and the generated AD 2 and LOCO trees' ``synth_scene*`` / ``synth_loco*``).
"""
from __future__ import annotations

import os

from errors import DataError

__all__ = ["DATASET_GROUPS", "LOCO_ARCHIVE_COUNTS", "LOCO_GROUP", "LOCO_OFFICIAL_COUNTS", "MVTEC_AD2_ARCHIVE_TOTALS",
           "MVTEC_AD2_CATEGORIES", "MVTEC_AD2_PRIVATE_COUNTS", "MVTEC_CATEGORIES", "MVTEC_LOCO_CATEGORIES",
           "OBJECT_CATEGORIES", "OFFICIAL_COUNTS", "OTHER_GROUP", "SCENE_GROUP", "TEXTURE_CATEGORIES",
           "VISA_CATEGORIES", "VISA_GROUPS", "VISA_OFFICIAL_COUNTS", "category_group", "category_kind", "group_order",
           "validate_category"]

TEXTURE_CATEGORIES: tuple[str, ...] = ("carpet", "grid", "leather", "tile", "wood")
OBJECT_CATEGORIES: tuple[str, ...] = (
    "bottle", "cable", "capsule", "hazelnut", "metal_nut",
    "pill", "screw", "toothbrush", "transistor", "zipper",
)
MVTEC_CATEGORIES: tuple[str, ...] = tuple(sorted(TEXTURE_CATEGORIES + OBJECT_CATEGORIES))

# category -> (train good, test good, test defect), docs/reproduction.md#6-mvtec-ad
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

# VisA's own grouping of its 12 categories (docs/reproduction.md#8-visa)
VISA_GROUPS: dict[str, tuple[str, ...]] = {
    "complex structure": ("pcb1", "pcb2", "pcb3", "pcb4"),
    "multiple instances": ("candle", "capsules", "macaroni1", "macaroni2"),
    "single instance": ("cashew", "chewinggum", "fryum", "pipe_fryum"),
}
VISA_CATEGORIES: tuple[str, ...] = tuple(sorted(name for names in VISA_GROUPS.values() for name in names))

# category -> (train normal, test normal, test anomaly) of VisA's split_csv/1cls.csv: 8,659 / 962 / 1,200,
# i.e. the 9,621 normal and 1,200 anomalous images of the dataset (docs/reproduction.md#8-visa)
VISA_OFFICIAL_COUNTS: dict[str, tuple[int, int, int]] = {
    "candle": (900, 100, 100),
    "capsules": (542, 60, 100),
    "cashew": (450, 50, 100),
    "chewinggum": (453, 50, 100),
    "fryum": (450, 50, 100),
    "macaroni1": (900, 100, 100),
    "macaroni2": (900, 100, 100),
    "pcb1": (904, 100, 100),
    "pcb2": (901, 100, 100),
    "pcb3": (905, 101, 100),
    "pcb4": (904, 101, 100),
    "pipe_fryum": (450, 50, 100),
}

# MVTec AD 2 (Heckler-Kram et al., 2025, arXiv:2503.21622): 8 scenes
# (docs/reproduction.md#10-mvtec-ad-2-and-mvtec-loco-ad)
MVTEC_AD2_CATEGORIES: tuple[str, ...] = (
    "can", "fabric", "fruit_jelly", "rice", "sheet_metal", "vial", "wallplugs", "walnuts",
)
SCENE_GROUP = "scene"
# scene -> (test_private, test_private_mixed) images: the counts MVTec's own upload checker for the evaluation server
# requires (MVTec AD 2 public code utilities, check_and_prepare_data_for_upload.py, OBJECT_FILE_COUNTER: each private
# set has that many images, 000_regular.png ... / 000_mixed.png ...). No per-scene table of the public splits was
# found in a form this project could verify; their totals over the 8 scenes are MVTEC_AD2_ARCHIVE_TOTALS.
MVTEC_AD2_PRIVATE_COUNTS: dict[str, tuple[int, int]] = {
    "can": (321, 321),
    "fabric": (314, 314),
    "fruit_jelly": (255, 255),
    "rice": (277, 277),
    "sheet_metal": (142, 142),
    "vial": (276, 276),
    "wallplugs": (232, 232),
    "walnuts": (228, 228),
}
# (train, validation, test_public good, test_public bad) summed over the 8 scenes of the public archive
# (mvtec_ad_2.tar.gz), as counted by independent inventories of it (not a table of the paper); check-data compares
# them when all 8 scenes are checked
MVTEC_AD2_ARCHIVE_TOTALS: tuple[int, int, int, int] = (2528, 302, 379, 705)

# MVTec LOCO AD (Bergmann et al., 2022, IJCV 130: "Beyond Dents and Scratches: Logical Constraints in Unsupervised
# Anomaly Detection and Localization"): 5 objects, each with logical and structural anomalies
MVTEC_LOCO_CATEGORIES: tuple[str, ...] = (
    "breakfast_box", "juice_bottle", "pushpins", "screw_bag", "splicing_connectors",
)
LOCO_GROUP = "loco object"
# object -> (train, validation, test good, logical anomalies, structural anomalies): the paper's table, 3,644 images
LOCO_OFFICIAL_COUNTS: dict[str, tuple[int, int, int, int, int]] = {
    "breakfast_box": (351, 62, 102, 83, 90),
    "juice_bottle": (335, 54, 94, 142, 94),
    "pushpins": (372, 69, 138, 91, 81),
    "screw_bag": (360, 60, 122, 137, 82),
    "splicing_connectors": (354, 59, 119, 108, 85),
}
# where the public archive (mvtec_loco_anomaly_detection.tar.xz) differs from the paper's table: splicing_connectors
# holds 6 more training images (354.png-359.png) and 1 more validation image (059.png), 3,651 images in all
LOCO_ARCHIVE_COUNTS: dict[str, tuple[int, int, int, int, int]] = {
    "splicing_connectors": (360, 60, 119, 108, 85),
}

# dataset -> its category groups, in report order; every other name is "other"
DATASET_GROUPS: dict[str, tuple[str, ...]] = {
    "mvtec": ("texture", "object"),
    "visa": tuple(VISA_GROUPS),
    "mvtec_ad2": (SCENE_GROUP,),
    "mvtec_loco": (LOCO_GROUP,),
}
OTHER_GROUP = "other"


def category_group(name: str) -> str:
    """The group a category is reported in: MVTec's ``texture`` / ``object``, VisA's ``complex structure`` /
    ``multiple instances`` / ``single instance``, MVTec AD 2's ``scene``, MVTec LOCO's ``loco object``, ``other`` for
    unknown names (synthetic ones by prefix)."""
    if name in TEXTURE_CATEGORIES or name.startswith("synth_texture"):
        return "texture"
    if name in OBJECT_CATEGORIES or name.startswith("synth_object"):
        return "object"
    for group, names in VISA_GROUPS.items():
        if name in names:
            return group
    if name in MVTEC_AD2_CATEGORIES or name.startswith("synth_scene"):
        return SCENE_GROUP
    if name in MVTEC_LOCO_CATEGORIES or name.startswith("synth_loco"):
        return LOCO_GROUP
    return OTHER_GROUP


def category_kind(name: str) -> str:
    """The same as ``category_group`` (its earlier name, kept for callers of the MVTec-only version)."""
    return category_group(name)


def group_order(data_format: str | None = None) -> tuple[str, ...]:
    """Group names in report order, ``other`` last: one dataset's (``"mvtec"``, ``"visa"``, ``"mvtec_ad2"``,
    ``"mvtec_loco"``) or all of them."""
    if data_format is None or data_format not in DATASET_GROUPS:
        return (*(group for groups in DATASET_GROUPS.values() for group in groups), OTHER_GROUP)
    return (*DATASET_GROUPS[data_format], OTHER_GROUP)


def validate_category(name: str) -> None:
    """Raise DataError unless ``name`` is a plain folder name: not empty, no path separator, not ``.``/``..``.

    Category names become paths under the data root; ``../other/cat`` would escape it.
    """
    separators = {"/", "\\", os.sep, *([os.altsep] if os.altsep else [])}
    if not isinstance(name, str) or not name.strip():
        raise DataError(f"category {name!r}: expected a folder name, e.g. bottle")
    if name in (".", "..") or any(sep in name for sep in separators) or "\0" in name:
        raise DataError(
            f"category {name!r} is not a plain folder name; expected the name of a category folder under the "
            f"data root (no '/', '\\', '.' or '..'), e.g. bottle"
        )

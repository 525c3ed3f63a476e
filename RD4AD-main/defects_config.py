"""MVTec LOCO AD's ``defects_config.json``: each defect type's pixel value in the ground-truth PNGs and its
saturation threshold, read and checked, and the saturation area of one region
(docs/reproduction.md#10-mvtec-ad-2-and-mvtec-loco-ad).

The file is a JSON list with one object per defect type::

    {"defect_name": "missing_almonds", "pixel_value": 255, "saturation_threshold": 26000,
     "relative_saturation": false}

A region's pixels all carry its type's ``pixel_value`` (1..255). An absolute threshold is a whole number of
pixels at the image's own resolution; a relative one is a fraction in (0, 1] of the region's area. The region
is fully found (sPRO 1) once that many of its pixels are flagged: ``min(threshold, area)`` pixels when
absolute, ``threshold * area`` when relative (the LOCO evaluation code's ``get_saturation_area``).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from errors import DataError
from image_io import readable

__all__ = ["DEFECTS_CONFIG_FILE", "DefectSpec", "read_defects_config", "saturation_area"]

DEFECTS_CONFIG_FILE = "defects_config.json"
_FIELDS = ("defect_name", "pixel_value", "saturation_threshold", "relative_saturation")


@dataclass(frozen=True)
class DefectSpec:
    """One defect type of ``defects_config.json``."""

    defect_name: str
    pixel_value: int
    saturation_threshold: float  # pixels at the source resolution (absolute), or a fraction of the area (relative)
    relative_saturation: bool


@readable()
def read_defects_config(path: str | os.PathLike) -> dict[int, DefectSpec]:
    """pixel value -> DefectSpec of a ``defects_config.json``; every bad entry is a DataError naming the file,
    the entry and the field."""
    path = Path(path)
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{path}: not a JSON file ({error}); expected a list of defect types with "
                        f"{', '.join(_FIELDS)}") from None
    if not isinstance(entries, list) or not entries:
        raise DataError(f"{path}: expected a non-empty JSON list of defect types with {', '.join(_FIELDS)}")
    specs: dict[int, DefectSpec] = {}
    for number, entry in enumerate(entries, start=1):
        spec = _spec(path, number, entry)
        if spec.pixel_value in specs:
            raise DataError(f"{path}, entry {number}: pixel_value {spec.pixel_value} is already used by "
                            f"{specs[spec.pixel_value].defect_name!r}; expected one pixel value per defect type")
        specs[spec.pixel_value] = spec
    return specs


def _spec(path: Path, number: int, entry: object) -> DefectSpec:
    where = f"{path}, entry {number}"
    if not isinstance(entry, dict) or any(name not in entry for name in _FIELDS):
        raise DataError(f"{where}: expected an object with the fields {', '.join(_FIELDS)}, got {entry!r}")
    name, value = entry["defect_name"], entry["pixel_value"]
    threshold, relative = entry["saturation_threshold"], entry["relative_saturation"]
    if not isinstance(name, str) or not name:
        raise DataError(f"{where}: defect_name {name!r}; expected the defect type's name")
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 255:
        raise DataError(f"{where} ({name}): pixel_value {value!r}; expected a whole number from 1 to 255")
    if not isinstance(relative, bool):
        raise DataError(f"{where} ({name}): relative_saturation {relative!r}; expected true or false")
    number_like = isinstance(threshold, (int, float)) and not isinstance(threshold, bool)
    if relative and not (number_like and 0.0 < threshold <= 1.0):
        raise DataError(f"{where} ({name}): saturation_threshold {threshold!r} with relative_saturation true; "
                        f"expected a fraction of the region's area in (0, 1]")
    if not relative and not (number_like and float(threshold).is_integer() and threshold >= 1):
        raise DataError(f"{where} ({name}): saturation_threshold {threshold!r} with relative_saturation false; "
                        f"expected a whole number of pixels, at least 1")
    return DefectSpec(name, value, float(threshold), relative)


def saturation_area(spec: DefectSpec, area: float, scale: float = 1.0) -> float:
    """How many flagged pixels make a region of ``area`` pixels fully found: ``threshold * area`` (relative), or
    ``min(threshold * scale, area)`` (absolute; ``scale``: pixels at the working size per source pixel, for maps
    and masks resized from the source resolution)."""
    if area <= 0:
        raise ValueError(f"a region of {area} pixels has no saturation area")
    if spec.relative_saturation:
        return spec.saturation_threshold * area
    return min(spec.saturation_threshold * scale, float(area))

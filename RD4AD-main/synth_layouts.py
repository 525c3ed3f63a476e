"""Generated MVTec AD 2 and MVTec LOCO AD trees (tests and smoke runs), and the ``synth`` command over all layouts.

    python RD4AD-main/main.py synth --data-root DIR [--layout mvtec|mvtec_ad2|mvtec_loco] [--n-categories N]
                                    [--image-size S] [--train N] [--test N] [--seed K]

- ``mvtec_ad2``: scenes ``synth_scene``, ``synth_scene2``, ...: synth's washer (synth.render_item), stretched to
  a wide source image (1.5 : 1, as AD 2's are not square), in AD 2's folders: ``train/good``, ``validation/good``,
  ``test_public/{good,bad}`` with ``test_public/ground_truth/bad/<id>_mask.png``, and the unlabelled
  ``test_private/<nnn>_regular.png`` and ``test_private_mixed/<nnn>_mixed.png`` (good and bad mixed). Test images
  come in three lightings (regular, overexposed x1.3, underexposed x0.7; the lighting names the file).
- ``mvtec_loco``: objects ``synth_loco``, ... : a plate holding two parts in the outer two of three slots (a
  logical constraint: always two, never the middle slot), 1.25 : 1. Logical anomalies: a part missing (the region
  is where it belongs), an extra part in the middle slot, or both (two region PNGs); structural: scratches across
  a part (one or two). Ground truth ``ground_truth/<type>/<id>/<k>.png`` with each type's pixel value, and a
  ``defects_config.json`` with an absolute, a relative and a full saturation threshold.

Every image has its own random stream seeded by (seed, category, split, kind, index): the same seed gives
byte-identical files. A category folder that a previous run wrote (``synth.json``) is replaced; any other is an
error.
"""
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from tqdm import tqdm

import synth
from defects_config import DEFECTS_CONFIG_FILE
from errors import DataError
from layouts import AD2_TEST_DIR, AD2_UNLABELLED_SPLITS, FOLDER_FORMATS, LOCO_TYPES
from synth import MIN_IMAGE_SIZE, save

__all__ = ["AD2_LIGHTINGS", "LOCO_DEFECTS", "add_arguments", "generate_ad2", "generate_loco", "layout_names",
           "render_loco", "run"]

AD2_LIGHTINGS = {"regular": 1.0, "overexposed": 1.3, "underexposed": 0.7}
AD2_ASPECT, LOCO_ASPECT = 1.5, 1.25  # source width / height
# LOCO defect type -> (anomaly folder, pixel value, saturation threshold, relative); the absolute threshold is a
# share of a part's area at the source size (set when written: half a part saturates a missing part)
LOCO_DEFECTS: dict[str, tuple[str, int, float, bool]] = {
    "missing_part": (LOCO_TYPES[0], 255, 0.5, False),
    "extra_part": (LOCO_TYPES[0], 200, 0.8, True),
    "scratch": (LOCO_TYPES[1], 150, 1.0, True),
}
_LOCO_KINDS = ("good", "missing_part", "extra_part", "missing_and_extra", "scratch", "two_scratches")
_SLOTS = (0.22, 0.5, 0.78)  # x of the three slots (units of the width); parts sit in the outer two
_PART_RADIUS = 0.13  # units of the height


def layout_names(layout: str, count: int) -> list[str]:
    """synth_scene, synth_scene2, ... (mvtec_ad2) or synth_loco, synth_loco2, ... (mvtec_loco)."""
    stem = {"mvtec_ad2": "synth_scene", "mvtec_loco": "synth_loco"}[layout]
    return [stem + ("" if number == 1 else str(number)) for number in range(1, count + 1)]


def _stretch(array: np.ndarray, width: int, height: int, nearest: bool = False) -> np.ndarray:
    method = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(array).resize((width, height), method))


def _write_categories(out: str | os.PathLike, names: list[str], write: Callable[[Path, int], int],
                      settings: dict) -> None:
    """synth.write_categories with one progress step per category (``write(folder, index)`` returns how many
    images it wrote)."""
    def write_one(folder: Path, index: int, bar: tqdm) -> dict:
        images = write(folder, index)
        bar.update()
        return {**settings, "images": images}

    synth.write_categories(out, names, write_one, lambda: tqdm(total=len(names), desc="synth", unit="category",
                                                                leave=False, disable=len(names) < 4))


def _check(image_size: int, counts: dict[str, tuple[int, int]], seed: int) -> None:
    if image_size < MIN_IMAGE_SIZE:
        raise DataError(f"--image-size {image_size}: expected at least {MIN_IMAGE_SIZE} px")
    for flag, (value, least) in counts.items():
        if value < least:
            raise DataError(f"{flag} {value}: expected at least {least}")
    if seed < 0:
        raise DataError(f"--seed {seed}: expected a non-negative integer")


# ---------------------------------------------------------------------------------------------- MVTec AD 2


def generate_ad2(out: str | os.PathLike, scenes: int = 1, image_size: int = 64, n_train: int = 8,
                 n_validation: int = 4, n_test: int = 8, n_private: int = 4, seed: int = 0) -> list[str]:
    """Write ``scenes`` MVTec AD 2 scenes under ``out`` (source images ``image_size`` px high); their names."""
    _check(image_size, {"--n-categories": (scenes, 1), "--train": (n_train, 2), "--validation": (n_validation, 1),
                        "--test": (n_test, 2), "--private": (n_private, 1)}, seed)
    names = layout_names("mvtec_ad2", scenes)
    height, width = image_size, round(AD2_ASPECT * image_size)
    lightings = list(AD2_LIGHTINGS)

    def scene_item(index: int, split: str, number: int, bad: bool, lighting: str
                   ) -> tuple[np.ndarray, np.ndarray | None]:
        defect = synth.DEFECTS["object"][number % 3] if bad else "good"
        _, image, mask = synth.render_item("object", index, split, defect, number, image_size, seed)
        image = np.clip(np.rint(image.astype(np.float64) * AD2_LIGHTINGS[lighting]), 0, 255).astype(np.uint8)
        stretched = _stretch(image, width, height)
        return stretched, None if mask is None else _stretch(mask.astype(np.uint8) * 255, width, height, True)

    def write(folder: Path, index: int) -> int:
        written = 0
        for number in range(n_train + n_validation):  # train numbers first, validation after them
            image, _ = scene_item(index, "train", number, False, "regular")
            split = "train" if number < n_train else "validation"
            save(image, folder / split / "good" / f"{number - (0 if split == 'train' else n_train):03d}_regular.png")
            written += 1
        n_good = max(1, n_test // 3)
        for number in range(n_test):
            bad, lighting = number >= n_good, lightings[number % 3]
            image, mask = scene_item(index, "test", number, bad, lighting)
            stem = f"{number:03d}_{lighting}"
            save(image, folder / AD2_TEST_DIR / ("bad" if bad else "good") / f"{stem}.png")
            if mask is not None:
                save(mask, folder / AD2_TEST_DIR / "ground_truth" / "bad" / f"{stem}_mask.png")
            written += 1
        for split, suffix in zip(AD2_UNLABELLED_SPLITS, ("regular", "mixed")):
            rng = np.random.default_rng([seed, index, len(suffix)])
            for number in range(n_private):
                lighting = "regular" if suffix == "regular" else lightings[int(rng.integers(3))]
                image, _ = scene_item(index, "test", 1000 + number, number % 2 == 1, lighting)
                save(image, folder / split / f"{number:03d}_{suffix}.png")
                written += 1
        return written

    settings = {"layout": "mvtec_ad2", "image_size": image_size, "seed": seed}
    _write_categories(out, names, write, settings)
    return names


# ---------------------------------------------------------------------------------------------- MVTec LOCO AD


def render_loco(index: int, split: str, kind: str, number: int, image_size: int, seed: int
                ) -> tuple[np.ndarray, list[tuple[str, np.ndarray]]]:
    """One LOCO image (H = ``image_size``, W = 1.25 H, RGB uint8) and its regions [(defect type, bool mask)]:
    the normal scene is two parts in the outer slots; ``kind`` is one of good, missing_part, extra_part,
    missing_and_extra, scratch, two_scratches."""
    height, width = image_size, round(LOCO_ASPECT * image_size)
    rng = np.random.default_rng([seed, index, ("train", "validation", "test").index(split), _LOCO_KINDS.index(kind),
                                 number])
    style = np.random.default_rng([seed, index])
    plate, part = style.uniform(40, 80, 3), style.permutation([220.0, 160.0, 100.0])
    y, x = np.meshgrid((np.arange(height) + 0.5) / height, (np.arange(width) + 0.5) / height, indexing="ij")
    image = np.broadcast_to(plate, (height, width, 3)) + rng.normal(0.0, 3.0, (height, width, 3))
    radius = _PART_RADIUS * rng.uniform(0.95, 1.05)
    centres = [(slot * width / height + rng.uniform(-0.02, 0.02), 0.5 + rng.uniform(-0.03, 0.03)) for slot in _SLOTS]
    discs = [np.hypot(x - cx, y - cy) <= radius for cx, cy in centres]
    missing = int(rng.integers(2)) * 2 if kind in ("missing_part", "missing_and_extra") else None
    regions: list[tuple[str, np.ndarray]] = []
    for slot in (0, 2):
        if slot == missing:
            regions.append(("missing_part", discs[slot]))
        else:
            image[discs[slot]] = part * rng.uniform(0.95, 1.05)
    if kind in ("extra_part", "missing_and_extra"):
        image[discs[1]] = part * rng.uniform(0.95, 1.05)
        regions.append(("extra_part", discs[1]))
    for _ in range({"scratch": 1, "two_scratches": 2}.get(kind, 0)):
        cx, cy = centres[int(rng.choice([0, 2]))]
        angle, half_width = rng.uniform(0, math.pi), max(0.03, 1.0 / height)
        along = (x - cx) * math.cos(angle) + (y - cy) * math.sin(angle)
        across = -(x - cx) * math.sin(angle) + (y - cy) * math.cos(angle)
        scratch = (np.abs(along) <= 0.8 * radius) & (np.abs(across) <= half_width)
        image[scratch] = 250.0
        regions.append(("scratch", scratch))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), regions


def generate_loco(out: str | os.PathLike, objects: int = 1, image_size: int = 64, n_train: int = 8,
                  n_validation: int = 4, n_test: int = 12, seed: int = 0) -> list[str]:
    """Write ``objects`` MVTec LOCO AD objects under ``out`` (source images ``image_size`` px high); their names.
    The test set cycles through good, missing part, extra part, both, one scratch and two scratches."""
    _check(image_size, {"--n-categories": (objects, 1), "--train": (n_train, 2), "--validation": (n_validation, 1),
                        "--test": (n_test, len(_LOCO_KINDS))}, seed)
    names = layout_names("mvtec_loco", objects)
    part_area = math.pi * (_PART_RADIUS * image_size) ** 2

    def write(folder: Path, index: int) -> int:
        for split, count in (("train", n_train), ("validation", n_validation)):
            for number in range(count):
                save(render_loco(index, split, "good", number, image_size, seed)[0],
                      folder / split / "good" / f"{number:03d}.png")
        numbers: dict[str, int] = {}
        for position in range(n_test):
            kind = _LOCO_KINDS[position % len(_LOCO_KINDS)]
            image, regions = render_loco(index, "test", kind, position, image_size, seed)
            folder_name = "good" if kind == "good" else LOCO_DEFECTS[regions[0][0]][0]
            number = numbers[folder_name] = numbers.get(folder_name, -1) + 1
            save(image, folder / "test" / folder_name / f"{number:03d}.png")
            for k, (defect, mask) in enumerate(regions):
                save(mask.astype(np.uint8) * LOCO_DEFECTS[defect][1],
                      folder / "ground_truth" / folder_name / f"{number:03d}" / f"{k:03d}.png")
        config = [{"defect_name": name, "pixel_value": value,
                   "saturation_threshold": threshold if relative else int(threshold * part_area),
                   "relative_saturation": relative} for name, (_, value, threshold, relative) in LOCO_DEFECTS.items()]
        (folder / DEFECTS_CONFIG_FILE).write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
        return n_train + n_validation + n_test

    settings = {"layout": "mvtec_loco", "image_size": image_size, "seed": seed}
    _write_categories(out, names, write, settings)
    return names


# ---------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    synth.add_arguments(parser)
    parser.add_argument("--layout", choices=FOLDER_FORMATS, default="mvtec",
                        help="folder layout: mvtec (MVTec AD, default), mvtec_ad2 (MVTec AD 2 scenes) or mvtec_loco "
                             "(MVTec LOCO AD objects with logical and structural anomalies)")


def run(args: argparse.Namespace) -> int:
    if args.layout == "mvtec":
        return synth.run(args)

    def write(data_root: Path) -> str:
        if args.layout == "mvtec_ad2":
            names = generate_ad2(data_root, args.n_categories, args.image_size, args.n_train,
                                 max(1, args.n_train // 4), args.n_test, max(1, args.n_test // 2), args.seed)
        else:
            names = generate_loco(data_root, args.n_categories, args.image_size, args.n_train,
                                  max(1, args.n_train // 4), args.n_test, args.seed)
        return (f"wrote {', '.join(names)} to {data_root} ({args.layout} layout): {args.n_train} train and "
                f"{args.n_test} test images each, {args.image_size} px high, seed {args.seed}")

    return synth.run_writer(args, write)

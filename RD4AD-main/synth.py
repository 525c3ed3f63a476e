"""Synthetic MVTec-format data: the embedded default data of the demo and of every test.

    python RD4AD-main/main.py synth --data-root DIR [--n-categories N] [--image-size S] [--train N] [--test N] [--seed K]

Categories alternate texture and object: ``synth_texture``, ``synth_object``, ``synth_texture2``, ...

- texture: two crossed sine gratings (frequencies and angles fixed per category, phases random per
  image) plus noise; grayscale, saved as 1-channel PNG. Defects: ``hole``, ``scratch``, ``stain``.
- object: a coloured washer (disc with a darker band and a centre hole) on a plain background, with
  random offset, size, brightness and noise per image; RGB. Defects: ``colour`` (hue change),
  ``missing_part`` (a bite out of the rim), ``scratch``.

Normal pixel values are kept in ranges that every defect leaves, so a defect changes every pixel of
its region and its mask (``ground_truth/<defect>/<id>_mask.png``) is exactly the set of changed pixels.
Every image has its own random stream seeded by (seed, category, split, defect type, index): the same
seed gives byte-identical files.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from cli import add_deprecated_alias
from errors import DataError

__all__ = ["DEFECTS", "MARKER", "MIN_IMAGE_SIZE", "category_names", "generate", "render_item", "save",
           "write_categories", "add_arguments", "run", "run_writer"]

GOOD = "good"
DEFECTS = {"texture": ("hole", "scratch", "stain"), "object": ("colour", "missing_part", "scratch")}
MARKER = "synth.json"  # written into each category; lets a later run replace what synth wrote
MIN_IMAGE_SIZE = 32
MIN_TRAIN = 5  # 4 validation images (the dataset's minimum) + 1 to train on
MIN_TEST = 4  # one good image and one per defect type
NOISE = 4.0  # grey levels, clipped at 2 sigma
GOOD_FRACTION = 0.3  # share of test images that are good (MVTec AD: 467 of 1,725)


@dataclass(frozen=True)
class _Style:
    """What stays fixed within a category."""

    kind: str
    base: float = 128.0  # texture mean grey level
    gratings: tuple[tuple[float, float, float], ...] = ()  # texture: (cycles per side, angle, amplitude)
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)  # object: RGB
    colour: tuple[float, float, float] = (0.0, 0.0, 0.0)  # object: RGB, channels >= 60 apart


def category_names(categories: int) -> list[str]:
    """synth_texture, synth_object, synth_texture2, synth_object2, ..."""
    names = []
    for index in range(categories):
        kind, number = ("texture", "object")[index % 2], index // 2 + 1
        names.append(f"synth_{kind}" + ("" if number == 1 else str(number)))
    return names


def generate(
    out: str | os.PathLike,
    categories: int = 2,
    image_size: int = 64,
    n_train: int = 24,
    n_test: int = 16,
    seed: int = 0,
) -> list[str]:
    """Write ``categories`` synthetic categories in MVTec layout under ``out``; return their names.

    A category folder that a previous run of synth wrote is replaced; any other existing folder of the
    same name is left alone and reported as an error.
    """
    _check_arguments(categories, image_size, n_train, n_test, seed)
    names = category_names(categories)
    plans = [_plan(_kind(name), n_train, n_test) for name in names]
    total = sum(map(len, plans))

    def write_one(folder: Path, index: int, bar: tqdm) -> dict:
        return _write_category(folder, names[index], index, plans[index], image_size, seed, bar)

    write_categories(out, names, write_one,
                     lambda: tqdm(total=total, desc="synth", unit="img", leave=False, disable=total < 500), "--out")
    return names


def write_categories(out: str | os.PathLike, names: Sequence[str], write_one: Callable[[Path, int, tqdm], dict],
                     progress: Callable[[], tqdm], option: str = "--data-root") -> None:
    """Write each category into a temporary folder beside its place, then move it in (never half-written);
    ``write_one(folder, index, bar)`` returns its marker settings. Folders synth did not write are refused first."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"--data-root {out} is a file; expected a folder (new or existing) for the categories")
    for name in names:
        folder = out / name
        if folder.exists() and not (folder / MARKER).is_file():
            raise DataError(f"{folder} exists and was not written by synth; remove it or choose another {option}")
    out.mkdir(parents=True, exist_ok=True)
    with progress() as bar:
        for index, name in enumerate(names):
            tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out))
            tmp.chmod(0o755)  # mkdtemp makes it private; the data is not
            try:
                settings = write_one(tmp, index, bar)
                (tmp / MARKER).write_text(json.dumps(settings, sort_keys=True) + "\n", encoding="utf-8")
                if (out / name).exists():
                    shutil.rmtree(out / name)
                os.replace(tmp, out / name)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)


def _check_arguments(categories: int, image_size: int, n_train: int, n_test: int, seed: int) -> None:
    if categories < 1:
        raise DataError(f"--n-categories {categories}: expected at least 1")
    if image_size < MIN_IMAGE_SIZE:
        raise DataError(f"--image-size {image_size}: expected at least {MIN_IMAGE_SIZE} px")
    if n_train < MIN_TRAIN:
        raise DataError(f"--train {n_train}: expected at least {MIN_TRAIN} (4 are held out for validation)")
    if n_test < MIN_TEST:
        raise DataError(f"--test {n_test}: expected at least {MIN_TEST} (one good image and one per defect type)")
    if seed < 0:
        raise DataError(f"--seed {seed}: expected a non-negative integer")


def _plan(kind: str, n_train: int, n_test: int) -> list[tuple[str, str, int]]:
    """(split, defect type, number) of every image of a category, in writing order."""
    defects = DEFECTS[kind]
    n_good = max(1, round(GOOD_FRACTION * n_test))
    n_defect = n_test - n_good
    plan = [("train", GOOD, i) for i in range(n_train)] + [("test", GOOD, i) for i in range(n_good)]
    for position, defect in enumerate(defects):
        count = n_defect // len(defects) + (position < n_defect % len(defects))
        plan += [("test", defect, i) for i in range(count)]
    return plan


def _kind(name: str) -> str:
    """``synth_object2`` -> ``object``."""
    return name.split("_")[1].rstrip("0123456789")


def _write_category(
    tmp: Path, name: str, index: int, plan: list[tuple[str, str, int]], image_size: int, seed: int, bar: tqdm
) -> dict:
    """Render category ``name`` into ``tmp``; its marker settings."""
    kind = _kind(name)
    for split, defect, number in plan:
        _, image, mask = render_item(kind, index, split, defect, number, image_size, seed)
        save(image, tmp / split / defect / f"{number:03d}.png")
        if mask is not None:
            save(mask.astype(np.uint8) * 255, tmp / "ground_truth" / defect / f"{number:03d}_mask.png")
        bar.update()
    return {"kind": kind, "image_size": image_size, "seed": seed, "images": len(plan)}


def render_item(
    kind: str, index: int, split: str, defect: str, number: int, image_size: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(normal, image, mask)`` of one image of category ``index``, exactly as ``generate`` writes it.

    ``image`` is ``normal`` with the defect painted in (the same array for ``"good"``); ``mask`` is the
    boolean map of the pixels that differ between the two (None for ``"good"``).
    """
    style = _style(kind, np.random.default_rng([seed, index]))
    key = [seed, index, ("train", "test").index(split), (GOOD, *DEFECTS[kind]).index(defect), number]
    rng = np.random.default_rng(key)
    x, y = _grid(image_size)
    scene = (_render_texture if kind == "texture" else _render_object)(style, x, y, rng)
    if defect == GOOD:
        return scene.image, scene.image, None
    painted = _to_uint8(_paint(kind, defect, scene, x, y, rng))
    changed = painted != scene.image
    return scene.image, painted, changed.any(axis=2) if changed.ndim == 3 else changed


@dataclass(frozen=True)
class _Scene:
    """A normal image and where defects go: ``part`` (pixels a defect may change), centre and radius."""

    image: np.ndarray
    part: np.ndarray
    cx: float = 0.5
    cy: float = 0.5
    radius: float = 0.5
    background: tuple[float, ...] = ()


def _style(kind: str, rng: np.random.Generator) -> _Style:
    if kind == "texture":
        angle = rng.uniform(0.0, math.pi)
        gratings = (
            (rng.uniform(4.0, 7.0), angle, rng.uniform(18.0, 24.0)),
            (rng.uniform(7.0, 11.0), angle + math.pi / 2 + rng.uniform(-0.4, 0.4), rng.uniform(10.0, 16.0)),
        )
        return _Style(kind, base=rng.uniform(115.0, 140.0), gratings=gratings)
    colour = tuple(float(c) for c in rng.permutation([215.0, 150.0, 90.0]))
    background = tuple(float(c) for c in rng.uniform(30.0, 70.0, 3))
    return _Style(kind, background=background, colour=colour)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in units of the image side, so that shapes scale with the size."""
    coords = (np.arange(size) + 0.5) / size
    y, x = np.meshgrid(coords, coords, indexing="ij")
    return x, y


def _noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return np.clip(rng.normal(0.0, NOISE, shape), -2 * NOISE, 2 * NOISE)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _render_texture(style: _Style, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> _Scene:
    """Grey levels kept within [40, 215], a range every texture defect leaves."""
    image = np.full(x.shape, style.base + rng.uniform(-8.0, 8.0))
    for cycles, angle, amplitude in style.gratings:
        phase = rng.uniform(0.0, 2 * math.pi)
        image += amplitude * np.sin(2 * math.pi * cycles * (x * math.cos(angle) + y * math.sin(angle)) + phase)
    image = np.clip(image + _noise(rng, x.shape), 40.0, 215.0)
    return _Scene(_to_uint8(image), np.ones(x.shape, dtype=bool))


def _render_object(style: _Style, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> _Scene:
    """A washer (body, darker band, centre hole) with random offset, size and brightness.

    Body and band have a channel >= 133 and channels >= 23 apart; the background stays <= 78: so a
    bite (background painted in), a hue rotation or a white scratch changes every pixel it covers.
    """
    cx, cy = 0.5 + rng.uniform(-0.04, 0.04, 2)
    radius = 0.30 * rng.uniform(0.96, 1.04)
    distance = np.hypot(x - cx, y - cy)
    body = (distance <= radius) & (distance >= 0.35 * radius)
    band = body & (distance >= 0.70 * radius) & (distance <= 0.82 * radius)
    colour = np.array(style.colour) * rng.uniform(0.94, 1.06)
    image = np.broadcast_to(np.array(style.background), (*x.shape, 3)).copy()
    image[body] = colour
    image[band] = 0.7 * colour
    image += _noise(rng, image.shape)
    return _Scene(_to_uint8(image), body, float(cx), float(cy), radius, style.background)


def _segment(x, y, cx: float, cy: float, angle: float, length: float, half_width: float) -> np.ndarray:
    """Pixels within ``half_width`` of a segment of ``length`` centred on (cx, cy)."""
    dx, dy = x - cx, y - cy
    along = dx * math.cos(angle) + dy * math.sin(angle)
    across = -dx * math.sin(angle) + dy * math.cos(angle)
    beyond = along - np.clip(along, -length / 2, length / 2)
    return np.hypot(beyond, across) <= half_width


def _ellipse(x, y, cx: float, cy: float, a: float, b: float, angle: float) -> np.ndarray:
    dx, dy = x - cx, y - cy
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = -dx * math.sin(angle) + dy * math.cos(angle)
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def _paint(kind: str, defect: str, scene: _Scene, x, y, rng: np.random.Generator) -> np.ndarray:
    """The normal image with one defect painted in (float; sizes in units of the image side)."""
    image = scene.image.astype(np.float64)
    size = x.shape[0]
    half_width = max(0.03, 1.0 / size)  # scratches at least 2 px wide
    if kind == "texture":
        cx, cy = rng.uniform(0.2, 0.8, 2)
    else:  # on the washer's body, away from its centre hole
        angle, reach = rng.uniform(0.0, 2 * math.pi), rng.uniform(0.5, 0.85) * scene.radius
        cx, cy = scene.cx + reach * math.cos(angle), scene.cy + reach * math.sin(angle)
    if defect == "scratch":
        region = _segment(x, y, cx, cy, rng.uniform(0, math.pi), rng.uniform(0.25, 0.45), half_width)
        value = 240.0 if kind == "texture" else np.array([240.0, 240.0, 240.0])
        image[region] = value + _noise(rng, image[region].shape)
    elif defect == "hole":
        region = np.hypot(x - cx, y - cy) <= rng.uniform(0.09, 0.13)
        image[region] = 15.0 + _noise(rng, image[region].shape)
    elif defect == "stain":
        a = rng.uniform(0.10, 0.14)
        region = _ellipse(x, y, cx, cy, a, a * rng.uniform(0.5, 0.9), rng.uniform(0, math.pi))
        image[region] += rng.choice([-1.0, 1.0]) * rng.uniform(55.0, 75.0)
    elif defect == "colour":
        a = rng.uniform(0.10, 0.13)
        region = _ellipse(x, y, cx, cy, a, a * rng.uniform(0.6, 1.0), rng.uniform(0, math.pi)) & scene.part
        image[region] = image[region][:, [1, 2, 0]]
    elif defect == "missing_part":
        angle = rng.uniform(0.0, 2 * math.pi)
        bx, by = scene.cx + scene.radius * math.cos(angle), scene.cy + scene.radius * math.sin(angle)
        region = (np.hypot(x - bx, y - by) <= rng.uniform(0.10, 0.14)) & scene.part
        image[region] = np.array(scene.background) + _noise(rng, image[region].shape)
    else:
        raise ValueError(f"unknown defect {defect!r} for a {kind}")
    return image


def save(array: np.ndarray, path: Path) -> None:
    """PNG without metadata: the bytes depend only on the pixels (and the zlib/Pillow versions)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--data-root", type=Path, help="folder to write into (the --data-root of later commands; required)")
    add_deprecated_alias(parser, "--out", "--data-root", "data_root", type=Path)
    add("--n-categories", type=int, default=2, help="number of categories, texture and object in turn (default 2)")
    add_deprecated_alias(parser, "--categories", "--n-categories", "n_categories", type=int)
    add("--image-size", type=int, default=64, help="side of the square images in px (default 64)")
    add("--train", dest="n_train", type=int, default=24, help="normal training images per category (default 24)")
    add("--test", dest="n_test", type=int, default=16, help="test images per category, about 30%% good (default 16)")
    add("--seed", type=int, default=0, help="same seed, byte-identical files (default 0)")


def run(args: argparse.Namespace) -> int:
    def write(data_root: Path) -> str:
        names = generate(data_root, args.n_categories, args.image_size, args.n_train, args.n_test, args.seed)
        return (f"wrote {', '.join(names)} to {data_root}: {args.n_train} train and {args.n_test} test images "
                f"each, {args.image_size} px, seed {args.seed}")

    return run_writer(args, write)


def run_writer(args: argparse.Namespace, write: Callable[[Path], str]) -> int:
    """Require --data-root, ``write`` into it (returns what it wrote, printed) and say how to check the result."""
    if args.data_root is None:
        raise DataError("--data-root is required: the folder to write the synthetic categories into")
    print(write(args.data_root))
    print(f"check it with: python RD4AD-main/main.py check-data --data-root {args.data_root}")
    return 0

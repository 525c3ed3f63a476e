"""``main.py analyse``: how local each frozen teacher is, measured on the runs' validation normals.

``main.py analyse --results DIR [--backbones a,b] [--categories c,d]`` takes, per (backbone, category), the
teacher of its trained run with the lowest seed (rebuilt from the run's checkpoint, whose SHA-256 check makes
sure it is the teacher the run trained with; a pretrained teacher is the same for every seed, a random one is
the lowest seed's), and on the run's validation hold-out (the normals the run never trained on; no test image):

- per tap, the effective receptive field (locality.py): the gradient of the centre feature with respect to the
  input, averaged over the normals; the radii holding 50 % and 90 % of its mass, in input pixels, around the
  centre of that feature's receptive field (placed from the teacher's own kernels, strides and paddings);
- per pair of backbones with the same normals, the linear CKA of their taps (same tap index; rows: image x
  position samples, pooled to the smaller spatial size when the two differ).

Written once per (backbone, category) and pair (why_files.py): ``<results>/<backbone>/<category>/
teacher_locality.json`` (+ ``teacher_erf.npz``) and ``<results>/teacher_cka/<category>/<a>-vs-<b>.json``; the
report's "How local the teacher is" part reads them. Files up to date are skipped (``--force`` redoes them).
"""
from __future__ import annotations

import argparse
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

import runs
import why_files
from checkpoint import model_from_checkpoint
from dataset import normalize
from errors import RDError
from locality import Grid, LinearCKA, centre_gradients, feature_rows, mass_radius, ring_profiles, tap_grids
from recipe import TrainConfig, open_split
from sweep import parse_list, select_runs
from system_info import resolve_device

__all__ = ["AnalyseSettings", "Teacher", "add_arguments", "analyse", "run", "source_runs"]

FRACTIONS = {"erf_r50_px": 0.5, "erf_r90_px": 0.9}


@dataclass
class AnalyseSettings:
    """What ``analyse`` measures and where."""

    results: str = "results"
    backbones: str = "all"
    categories: str = "all"
    device: str = "auto"
    batch_size: int = 8
    max_images: int = 0  # 0: every validation normal
    force: bool = False


@dataclass
class Teacher:
    """One (backbone, category)'s frozen teacher, the run it comes from and its validation normals (uint8)."""

    backbone: str
    run_dir: Path
    config: TrainConfig
    module: torch.nn.Module | None
    weights: str
    sha256: str
    images: torch.Tensor
    names: list[str]


def source_runs(results: str, backbones: str, categories: str) -> dict[str, dict[str, Path]]:
    """category -> backbone -> the trained run (config.json) with the lowest seed."""
    chosen: dict[str, dict[str, Path]] = {}
    for directory in sorted(select_runs(results, backbones, categories, "all"),
                            key=lambda d: (d.parts[-2], d.parts[-3], int(d.name.removeprefix("seed")))):
        chosen.setdefault(directory.parts[-2], {}).setdefault(directory.parts[-3], directory)
    return chosen


def _up_to_date(settings: AnalyseSettings, category: str, sources: dict[str, Path]) -> bool:
    for backbone, run_dir in sources.items():
        if not why_files.erf_path(settings.results, backbone, category).is_file():
            return False
        record, current = why_files.locality_json(why_files.locality_path(settings.results, backbone, category))
        if not current:
            return False
        if (record.get("source_run"), record.get("max_images")) != (str(run_dir), settings.max_images):
            return False
    return all(why_files.cka_path(settings.results, category, a, b).is_file()
               for a, b in itertools.combinations(sorted(sources), 2))


def _load_teacher(backbone: str, run_dir: Path, max_images: int, device: torch.device) -> Teacher:
    config = TrainConfig.from_record(runs.read_run_config(run_dir))
    model, payload = model_from_checkpoint(config.checkpoint_path, config.backbone, config.image_size, config.method)
    teacher = model.teacher.float().eval().to(device)
    del model
    val_set = open_split(config, "val")
    images = val_set.uint8_images()
    count = len(images) if max_images <= 0 else min(max_images, len(images))
    if count == 0:
        raise RDError(f"{run_dir}: its validation split is empty; analyse needs validation normals (--val-fraction)")
    return Teacher(backbone, run_dir, config, teacher, str(payload["teacher_weights"]), str(payload["teacher_sha256"]),
                   images[:count], list(val_set.paths[:count]))


def _measure_group(teachers: list[Teacher], batch_size: int, device: torch.device, desc: str,
                   grids: dict[str, list[tuple[Grid, Grid]]]
                   ) -> tuple[dict[str, list[torch.Tensor]], dict[str, list[list[torch.Tensor]]], dict, dict]:
    """ERF maps (summed over images) and ring profiles per backbone and tap (rings around the centre cell's
    receptive-field centre, ``grids``), and a LinearCKA per pair and tap, over teachers that share their normals."""
    images = teachers[0].images
    size = images.shape[-2:]
    map_sums: dict[str, list[torch.Tensor]] = {}
    profiles: dict[str, list[list[torch.Tensor]]] = {}
    shapes: dict[str, list[tuple[int, int, int]]] = {}
    cka: dict[tuple[str, str], list[LinearCKA]] = {}
    for start in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch", leave=False):
        x = normalize(images[start:start + batch_size].to(device))
        features = {}
        for teacher in teachers:
            feats, erfs = centre_gradients(teacher.module, x)
            features[teacher.backbone] = feats
            shapes[teacher.backbone] = [(f.shape[1], f.shape[2], f.shape[3]) for f in feats]
            sums = map_sums.setdefault(teacher.backbone, [torch.zeros(size, dtype=torch.float64) for _ in erfs])
            rings = profiles.setdefault(teacher.backbone, [[] for _ in erfs])
            for tap, (feature, erf) in enumerate(zip(feats, erfs)):
                sums[tap] += erf.double().sum(0).cpu()
                grid_y, grid_x = grids[teacher.backbone][tap]
                centre = (grid_y.centre(feature.shape[2]), grid_x.centre(feature.shape[3]))
                rings[tap].append(ring_profiles(erf, *centre))
        for a, b in itertools.combinations(sorted(features), 2):
            pair = cka.setdefault((a, b), [LinearCKA() for _ in zip(features[a], features[b])])
            for tap, (fa, fb) in enumerate(zip(features[a], features[b])):
                common = (min(fa.shape[2], fb.shape[2]), min(fa.shape[3], fb.shape[3]))
                pair[tap].update(feature_rows(fa, common), feature_rows(fb, common))
    return map_sums, profiles, shapes, cka


def _locality_record(teacher: Teacher, shapes: list[tuple[int, int, int]], grids: list[tuple[Grid, Grid]],
                     mean_profiles: np.ndarray, settings: AnalyseSettings) -> dict[str, Any]:
    size = teacher.config.image_size
    taps = []
    for tap, ((channels, height, width), (grid_y, grid_x)) in enumerate(zip(shapes, grids, strict=True)):
        taps.append({"tap": tap + 1, "channels": channels, "height": height, "width": width,
                     "stride_px": size / height, "centre_y": grid_y.centre(height), "centre_x": grid_x.centre(width),
                     "cell_offset_px": [grid_y.offset, grid_x.offset],
                     **{key: float(mass_radius(mean_profiles[tap], fraction)) for key, fraction in FRACTIONS.items()}})
    return {"backbone": teacher.backbone, "category": teacher.config.category, "image_size": size,
            "source_run": str(teacher.run_dir), "seed": teacher.config.seed, "teacher_weights": teacher.weights,
            "teacher_sha256": teacher.sha256, "n_images": len(teacher.images), "max_images": settings.max_images,
            "val_images": teacher.names, "taps": taps}


def _grids(teacher: Teacher, size: tuple[int, int]) -> list[tuple[Grid, Grid]]:
    """Each tap's receptive-field grid (locality.tap_grids); a teacher whose grid cannot be placed is named."""
    try:
        return tap_grids(teacher.module, size)
    except ValueError as error:
        raise RDError(f"{teacher.run_dir}: {error}; analyse measures teachers built from convolutions, poolings and "
                      "patch mergings") from None


def _analyse_category(settings: AnalyseSettings, category: str, sources: dict[str, Path],
                      device: torch.device) -> list[dict[str, Any]]:
    """Measure and write one category's teachers and pairs; one summary row per (backbone or pair, tap)."""
    teachers = [_load_teacher(backbone, run_dir, settings.max_images, device) for backbone, run_dir in sources.items()]
    groups: dict[tuple, list[Teacher]] = {}  # teachers with the same normals are measured together (CKA pairs)
    for teacher in teachers:
        groups.setdefault((teacher.config.image_size, tuple(teacher.names)), []).append(teacher)
    rows = []
    for group in groups.values():
        size = tuple(group[0].images.shape[-2:])
        grids = {teacher.backbone: _grids(teacher, size) for teacher in group}
        map_sums, profiles, shapes, cka = _measure_group(group, settings.batch_size, device, f"analyse {category}",
                                                         grids)
        for teacher in group:
            rings = profiles[teacher.backbone]
            width = max(p.shape[1] for tap in rings for p in tap)
            stacked = np.stack([np.pad(torch.cat(tap).numpy(), ((0, 0), (0, width - tap[0].shape[1])))
                                for tap in rings])  # (taps, images, rings)
            record = _locality_record(teacher, shapes[teacher.backbone], grids[teacher.backbone], stacked.mean(1),
                                      settings)
            maps = torch.stack(map_sums[teacher.backbone]).numpy() / len(teacher.images)
            why_files.write_locality(settings.results, teacher.backbone, category, record, maps, stacked)
            rows += [{"backbone": teacher.backbone, "category": category, "tap": tap["tap"],
                      **{key: tap[key] for key in FRACTIONS}} for tap in record["taps"]]
        by_name = {teacher.backbone: teacher for teacher in group}
        for (a, b), per_tap in cka.items():
            record = {"category": category, "image_size": by_name[a].config.image_size,
                      "n_images": len(by_name[a].images),
                      "source_runs": {a: str(by_name[a].run_dir), b: str(by_name[b].run_dir)},
                      "taps": [{"tap": tap + 1, "cka": accumulator.value(), "rows": accumulator.rows}
                               for tap, accumulator in enumerate(per_tap)]}
            why_files.write_cka(settings.results, category, a, b, record)
            rows += [{"backbone": f"{a} vs {b}", "category": category, "tap": tap["tap"], "cka": tap["cka"]}
                     for tap in record["taps"]]
    for teacher in teachers:
        teacher.module = None  # free the teachers before the next category
    return rows


def analyse(settings: AnalyseSettings) -> pd.DataFrame:
    """Measure every selected (backbone, category) not yet measured; a row per (backbone or pair, category, tap)."""
    if settings.batch_size < 1:
        raise RDError(f"--batch-size {settings.batch_size}: expected at least 1")
    if settings.max_images < 0:
        raise RDError(f"--max-images {settings.max_images}: expected 0 (every validation normal) or more")
    device = resolve_device(settings.device)
    rows = []
    for category, sources in source_runs(settings.results, settings.backbones, settings.categories).items():
        if not settings.force and _up_to_date(settings, category, sources):
            print(f"{category}: teacher locality up to date, skipped (--force to redo)")
            continue
        rows += _analyse_category(settings, category, sources, device)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------- CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", default="results", help="folder of run directories")
    parser.add_argument("--backbones", default="all", help="comma list of backbones, or 'all'")
    parser.add_argument("--categories", default="all", help="comma list of categories, or 'all'")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=8, help="validation normals per forward/backward pass")
    parser.add_argument("--max-images", type=int, default=0,
                        help="at most this many validation normals per category (0: all of them)")
    parser.add_argument("--force", action="store_true", help="measure again what is up to date")


def run(args: argparse.Namespace) -> int:
    for flag, text in (("--backbones", args.backbones), ("--categories", args.categories)):
        if text != "all":
            parse_list(text, flag)
    table = analyse(AnalyseSettings(args.results, args.backbones, args.categories, args.device, args.batch_size,
                                    args.max_images, args.force))
    if not table.empty:
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"next: python RD4AD-main/main.py compare --results {args.results}")
    return 0

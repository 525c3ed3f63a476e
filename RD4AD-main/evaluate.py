"""Evaluation (``main.py test``): score a trained run's test split and write its metrics and scores.

Maps are computed in batches on the run's device into one float32 (N, H, W) tensor that stays there
until the metrics (pixel AUROC and AUPRO share one sort); nothing is copied per metric. The decision
threshold comes from the held-out validation normals only (``--threshold-rule``, default ``max``:
the largest validation normal score, so no validation normal is flagged).
"""
from __future__ import annotations

import argparse
import csv
import io
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

import metrics
import runs
from checkpoint import model_from_checkpoint
from dataset import MVTecDataset
from errors import CheckpointError
from rd_model import ReverseDistillation, image_scores
from summary import count_parameters, forward_gflops
from system_info import peak_memory_mb, reset_peak_memory, resolve_device, synchronize
from train import FastPath, TrainConfig, add_common_arguments, parse_list, steady_images_per_s

SUMMARY_COLUMNS = ("backbone", "category", "seed", "image_auroc", "pixel_auroc", "aupro", "f1_max", "accuracy",
                   "precision", "recall", "f1", "threshold", "trainable_params", "gflops", "train_images_per_s",
                   "inference_ms_per_image", "peak_memory_mb", "teacher_weights", "epochs", "image_size")


def load_run_config(run_directory: str | Path) -> dict[str, Any]:
    path = Path(run_directory) / runs.CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{run_directory} is not a run directory: it has no {runs.CONFIG_FILE} "
                              f"(run directories are written by `main.py train` under results/BACKBONE/CATEGORY/seedK)")
    return runs.read_json(path)


def train_config_of(record: dict[str, Any]) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in record.items() if k in names})


@torch.no_grad()
def score_images(model: ReverseDistillation, images: torch.Tensor, fast: FastPath, device: torch.device,
                 batch_size: int = 16, desc: str = "scoring") -> torch.Tensor:
    """Smoothed anomaly maps (N, H, W), float32 on ``device``, of uint8 images (N, 3, H, W)."""
    model.eval()
    maps = torch.empty((len(images), *images.shape[-2:]), dtype=torch.float32, device=device)
    for start in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch", leave=False):
        batch = fast.prepare(images[start:start + batch_size].to(device, non_blocking=True))
        with fast.autocast(device):
            maps[start:start + len(batch)] = model.anomaly_map(batch)
    return maps


def _history_stats(run_directory: Path) -> dict[str, float | None]:
    path = run_directory / runs.HISTORY_FILE
    peak = float(pd.read_csv(path)["peak_memory_mb"].max()) if path.is_file() else None
    return {"train_images_per_s": steady_images_per_s(path), "peak_memory_mb": peak}


def evaluate_run(run_directory: str | Path, device: str = "auto", save_maps: bool = False,
                 threshold_rule: str = "max", batch_size: int = 16, image_size: int | None = None) -> dict[str, Any]:
    """Evaluate one run directory; writes metrics.json, scores.csv, val_scores.csv (and maps.npz)."""
    run_directory = Path(run_directory)
    record = load_run_config(run_directory)
    config = train_config_of(record)
    if image_size is not None and image_size != config.image_size:
        raise CheckpointError(f"--image-size {image_size} differs from the run's training size {config.image_size} "
                              f"({run_directory / runs.CONFIG_FILE}); evaluate at the training size")
    if not config.checkpoint_path.is_file():
        raise CheckpointError(f"{config.key} has no checkpoint at {config.checkpoint_path}: run `main.py train` "
                              f"for it before `main.py test`")
    torch_device = resolve_device(device)
    model, payload = model_from_checkpoint(config.checkpoint_path, config.backbone, config.image_size)
    trained_epochs = int(payload["training_state"].get("epoch", 0))
    fast = FastPath.resolve(config, torch_device)
    model.to(torch_device)
    if fast.channels_last:
        model.to(memory_format=torch.channels_last)

    test_set = MVTecDataset(config.data_root, config.category, "test", config.image_size,
                            config.val_fraction, config.split_seed)
    val_set = MVTecDataset(config.data_root, config.category, "val", config.image_size,
                           config.val_fraction, config.split_seed)
    test_images, masks = test_set.uint8_images(), test_set.uint8_masks()[:, 0]

    reset_peak_memory(torch_device)
    val_scores = image_scores(score_images(model, val_set.uint8_images(), fast, torch_device, batch_size,
                                           "validation")).cpu()
    synchronize(torch_device)
    started = time.perf_counter()
    maps = score_images(model, test_images, fast, torch_device, batch_size, f"test {config.key}")
    scores = image_scores(maps)
    synchronize(torch_device)
    inference_ms = (time.perf_counter() - started) * 1000 / len(test_images)
    scores_cpu = scores.cpu()
    labels = np.asarray(test_set.labels)

    threshold = metrics.threshold_from_normals(val_scores, threshold_rule)
    f1_best, f1_threshold = metrics.f1_max(scores_cpu, labels)
    result: dict[str, Any] = {
        "backbone": config.backbone, "category": config.category, "seed": config.seed,
        "image_size": config.image_size, "epochs": trained_epochs, "teacher_weights": record.get("teacher_weights"),
        "n_test": len(labels), "n_good": int((labels == 0).sum()), "n_defect": int((labels == 1).sum()),
        "n_val": len(val_scores),
        "image_auroc": metrics.image_auroc(scores_cpu, labels),
        "f1_max": f1_best, "f1_max_threshold": f1_threshold,
        "f1_max_note": "test-tuned: the best F1 over all thresholds on the test set (optimistic)",
        "threshold_rule": threshold_rule,
        "threshold_note": "threshold from the held-out validation normals only; an image is flagged when score > threshold",
        **metrics.metrics_at_threshold(scores_cpu, labels, threshold),
        "per_defect_image_auroc": metrics.per_defect_auroc(scores_cpu, labels, test_set.defect_types),
        "masks_available": test_set.has_masks,
    }
    if test_set.has_masks:
        result.update(metrics.pixel_metrics(maps, masks.to(torch_device)))
    else:
        result.update({"pixel_auroc": None, "aupro": None,
                       "pixel_metrics_note": "not available: the data set has no ground_truth/ masks"})
    gflops, _ = forward_gflops(model, config.image_size)
    result["efficiency"] = {
        "trainable_params": count_parameters(model.trainable_modules()),
        "gflops": gflops,
        "inference_ms_per_image": inference_ms,
        "inference_batch_size": batch_size,
        "eval_peak_memory_mb": peak_memory_mb(torch_device),
        "device": torch_device.type,
        **_history_stats(run_directory),
    }

    _write_scores(run_directory / runs.SCORES_FILE, ["path", "defect_type", "label", "score"],
                  zip(test_set.paths, test_set.defect_types, labels.tolist(), scores_cpu.tolist()))
    _write_scores(run_directory / runs.VAL_SCORES_FILE, ["path", "score"],
                  zip(val_set.paths, val_scores.tolist()))
    if save_maps:
        _save_maps(run_directory / runs.MAPS_FILE, maps, masks, test_set.paths)
    runs.atomic_write_json(run_directory / runs.METRICS_FILE, result)
    return result


def _write_scores(path: Path, header: list[str], rows) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    runs.atomic_write_text(path, buffer.getvalue())


def _save_maps(path: Path, maps: torch.Tensor, masks: torch.Tensor, paths: list[str]) -> None:
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez_compressed(tmp, maps=maps.cpu().to(torch.float16).numpy(), masks=masks.cpu().numpy().astype(np.uint8),
                        paths=np.asarray(paths))
    tmp.replace(path)


def write_summary(results: str | Path) -> Path:
    """Gather one row per evaluated run into ``results/summary.csv``."""
    rows = []
    for directory in runs.find_runs(results):
        m = runs.read_json(directory / runs.METRICS_FILE)
        flat = m | m.get("efficiency", {})
        rows.append({c: flat.get(c) for c in SUMMARY_COLUMNS})
    path = Path(results) / runs.SUMMARY_FILE
    runs.atomic_write_text(path, pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS)).to_csv(index=False))
    return path


# ---------------------------------------------------------------------------------------------- CLI

def select_runs(results: str | Path, backbones: str, categories: str, seeds: str) -> list[Path]:
    """Trained run directories (with config.json) matching the filters; 'all' matches anything."""
    def wanted(text: str, flag: str, kind: type = str) -> set | None:
        return None if text == "all" else set(parse_list(text, flag, kind))

    b, c, s = wanted(backbones, "--backbones"), wanted(categories, "--categories"), wanted(seeds, "--seeds", int)
    found = [d for d in runs.find_runs(results, require=runs.CONFIG_FILE)
             if (b is None or d.parts[-3] in b) and (c is None or d.parts[-2] in c)
             and (s is None or int(d.name.removeprefix("seed")) in s)]
    if not found:
        raise CheckpointError(f"no trained run under {results} matches --backbones {backbones} --categories "
                              f"{categories} --seeds {seeds}: run `main.py train` first")
    return found


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.set_defaults(backbones="all", categories="all", seeds="all", results="results", device="auto")
    parser.add_argument("--run-dir", action="append", help="evaluate this run directory (repeatable)")
    parser.add_argument("--save-maps", action="store_true", help="also write maps.npz (float16) for the notebooks")
    parser.add_argument("--threshold-rule", default="max", help="'max' or a quantile like 'q0.99' of validation normals")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, help="must equal the training size if given")
    parser.add_argument("--force", action="store_true", help="re-evaluate runs whose metrics are up to date")


def _up_to_date(run_directory: Path, save_maps: bool) -> bool:
    metrics_file = run_directory / runs.METRICS_FILE
    if not metrics_file.is_file() or (save_maps and not (run_directory / runs.MAPS_FILE).is_file()):
        return False
    checkpoint = train_config_of(load_run_config(run_directory)).checkpoint_path
    return checkpoint.is_file() and metrics_file.stat().st_mtime >= checkpoint.stat().st_mtime


def run(args: argparse.Namespace) -> int:
    directories = [Path(d) for d in args.run_dir] if args.run_dir else \
        select_runs(args.results, args.backbones, args.categories, args.seeds)
    for directory in directories:
        if not args.force and _up_to_date(directory, args.save_maps):
            print(f"{directory}: metrics up to date, skipped (--force to redo)")
            continue
        result = evaluate_run(directory, args.device, args.save_maps, args.threshold_rule, args.batch_size,
                              args.image_size)
        pixel = "n/a" if result["pixel_auroc"] is None else f"{result['pixel_auroc']:.4f}"
        aupro = "n/a" if result["aupro"] is None else f"{result['aupro']:.4f}"
        print(f"{directory}: image AUROC {result['image_auroc']:.4f}, pixel AUROC {pixel}, AUPRO {aupro}, "
              f"F1 at validation threshold {result['f1']:.4f}")
    results_roots = {Path(args.results)} if not args.run_dir else {d.parents[2] for d in directories}
    for root in results_roots:
        print(f"summary: {write_summary(root)}")
    return 0

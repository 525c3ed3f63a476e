"""Fabricated but well-formed run directories for the report tests (TEST FIXTURES ONLY).

Writes, under ``root``: ``data/<category>/...`` small PNG test images and masks in the MVTec layout,
and ``results/<backbone>/<category>/seed<k>/`` with every file of the ``runs.py`` contract. The
numbers are made up (scores drawn so that defects tend to score higher); never cite them.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

import runs

BACKBONES = ("convnext_tiny", "resnet50", "wide_resnet50_2")
CATEGORIES = ("synth_object", "synth_texture")
SEEDS = (0, 1)
SIZE = 32
DATA_DIR = "data"  # the data root, relative to the fake project root (the folder holding results/)
N_GOOD = 10
DEFECTS = {"scratch": 7, "stain": 7}
# How much higher defects score, per backbone: makes the backbones differ a little.
SEPARATION = {"convnext_tiny": 1.6, "resnet50": 1.4, "wide_resnet50_2": 1.8}


@dataclass(frozen=True)
class FakeImage:
    """One fabricated test image: path as training would write it (under a relative data root), defect, mask."""

    path: str
    defect_type: str
    mask: np.ndarray

    @property
    def label(self) -> int:
        return int(self.defect_type != "good")


def _rng(*parts: object) -> np.random.Generator:
    """A generator seeded from the parts' text: same parts, same numbers, in every process."""
    return np.random.default_rng(zlib.crc32("/".join(map(str, parts)).encode()))


def write_category(data_root: Path, category: str) -> list[FakeImage]:
    """Write one category's test images (and defect masks) as PNGs; return them, sorted by path."""
    rng = _rng("data", category)
    images = []
    kinds = [("good", N_GOOD)] + sorted(DEFECTS.items())
    for defect_type, count in kinds:
        for index in range(count):
            base = rng.uniform(0.3, 0.7, size=3)
            pixels = np.clip(base + rng.normal(0, 0.05, (SIZE, SIZE, 3)), 0, 1)
            mask = np.zeros((SIZE, SIZE), np.uint8)
            if defect_type != "good":
                top, left = rng.integers(2, SIZE - 12, size=2)
                mask[top : top + 8, left : left + 8] = 1
                pixels[mask == 1] = (0.9, 0.1, 0.1) if defect_type == "stain" else (0.05, 0.05, 0.05)
                mask_path = data_root / category / "ground_truth" / defect_type / f"{index:03d}_mask.png"
                mask_path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask * 255).save(mask_path)
            relative = f"{category}/test/{defect_type}/{index:03d}.png"
            (data_root / relative).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((pixels * 255).astype(np.uint8)).save(data_root / relative)
            images.append(FakeImage(f"{DATA_DIR}/{relative}", defect_type, mask))
    return sorted(images, key=lambda image: image.path)


def _auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mann-Whitney AUROC (the fixture's own numbers only)."""
    positive, negative = scores[labels == 1], scores[labels == 0]
    greater = (positive[:, None] > negative[None, :]).mean()
    ties = (positive[:, None] == negative[None, :]).mean()
    return float(greater + 0.5 * ties)


def write_run(
    results: Path,
    images: list[FakeImage],
    key: runs.RunKey,
    *,
    teacher_weights: str,
    with_masks: bool,
) -> None:
    """Write one run directory: config, history, scores, validation scores, maps and metrics."""
    directory = runs.run_dir(results, key)
    directory.mkdir(parents=True, exist_ok=True)
    rng = _rng(key)
    labels = np.array([image.label for image in images])
    scores = rng.normal(0.0, 0.5, len(images)) + SEPARATION[key.backbone] * labels * rng.uniform(0.4, 1.2)
    scores = np.round(scores + 2.0, 6)
    val_scores = np.round(rng.normal(2.0, 0.5, 8), 6)
    threshold = float(np.quantile(val_scores, 0.99))
    predicted = scores >= threshold
    true_pos = int((predicted & (labels == 1)).sum())
    precision = true_pos / max(int(predicted.sum()), 1)
    recall = true_pos / int(labels.sum())
    config = {
        "backbone": key.backbone,
        "category": key.category,
        "seed": key.seed,
        "data_root": DATA_DIR,  # relative, as in `--data-root data/demo`: images resolve from the project root
        "image_size": SIZE,
        "epochs": 3,
        "batch_size": 16,
        "lr": 0.005,
        "betas": [0.5, 0.999],
        "teacher_weights": teacher_weights,
        "hardware": {"device": "cpu", "cpu_count": 2, "gpu": None},
    }
    runs.atomic_write_json(directory / runs.CONFIG_FILE, config)
    history = ["epoch,loss,loss_scale1,loss_scale2,loss_scale3,val_loss,epoch_time_s,images_per_s"]
    history += [f"{epoch},{1 / epoch:.4f},0.1,0.1,0.1,{1.1 / epoch:.4f},2.0,8.0" for epoch in (1, 2, 3)]
    runs.atomic_write_text(directory / runs.HISTORY_FILE, "\n".join(history) + "\n")
    lines = ["path,defect_type,label,score"]
    lines += [f"{image.path},{image.defect_type},{image.label},{score}" for image, score in zip(images, scores)]
    runs.atomic_write_text(directory / runs.SCORES_FILE, "\n".join(lines) + "\n")
    val_paths = [f"{DATA_DIR}/{key.category}/train/good/v{i:03d}.png" for i in range(len(val_scores))]
    val_lines = ["path,score"] + [f"{path},{score}" for path, score in zip(val_paths, val_scores)]
    runs.atomic_write_text(directory / runs.VAL_SCORES_FILE, "\n".join(val_lines) + "\n")
    pixel_auroc = aupro = None
    if with_masks:
        masks = np.stack([image.mask for image in images])
        maps = rng.normal(0.0, 0.3, masks.shape) + masks * scores[:, None, None] * 0.5 + 1.0
        np.savez(
            directory / runs.MAPS_FILE,
            maps=maps.astype(np.float16),
            masks=masks,
            paths=np.array([image.path for image in images]),
        )
        pixel_auroc = _auroc(maps.ravel(), masks.ravel().astype(int))
        aupro = round(float(rng.uniform(0.7, 0.95)), 6)
    efficiency = {
        "trainable_params": {"resnet50": 46_651_392, "wide_resnet50_2": 83_802_624}.get(key.backbone, 46_000_000),
        "gflops": round(float(rng.uniform(10, 20)), 3),
        "train_images_per_s": round(float(rng.uniform(5, 15)), 3),
        "inference_ms_per_image": round(float(rng.uniform(10, 30)), 3),
        "peak_memory_mb": round(float(rng.uniform(900, 1500)), 1),
    }
    metrics = {
        "image_auroc": _auroc(scores, labels),
        "pixel_auroc": pixel_auroc,
        "aupro": aupro,
        "f1_max": round(float(rng.uniform(0.8, 1.0)), 6),
        "threshold": threshold,
        "threshold_rule": "quantile 0.99 of validation normal scores",
        "accuracy": float((predicted == (labels == 1)).mean()),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / max(precision + recall, 1e-12),
        "per_defect_image_auroc": {},
        "n_test": len(images),
        "n_defective": int(labels.sum()),
        "efficiency": efficiency,
    }
    runs.atomic_write_json(directory / runs.METRICS_FILE, metrics)


def write_fake_results(
    root: Path,
    *,
    backbones: tuple[str, ...] = BACKBONES,
    categories: tuple[str, ...] = CATEGORIES,
    seeds: tuple[int, ...] = SEEDS,
    random_teachers: tuple[str, ...] = (),
    without_masks: tuple[str, ...] = (),
) -> Path:
    """Write data and results under ``root``; return the results directory.

    ``random_teachers``: backbones whose runs record ``teacher_weights = "random"``;
    ``without_masks``: categories whose runs have null pixel metrics and no maps.npz.
    """
    root = Path(root)
    data_root, results = root / DATA_DIR, root / "results"
    for category in categories:
        images = write_category(data_root, category)
        for backbone in backbones:
            for seed in seeds:
                write_run(
                    results,
                    images,
                    runs.RunKey(backbone, category, seed),
                    teacher_weights="random" if backbone in random_teachers else "IMAGENET1K_V1",
                    with_masks=category not in without_masks,
                )
    return results

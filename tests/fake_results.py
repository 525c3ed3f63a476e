"""Fabricated but well-formed run directories for the report tests (TEST FIXTURES ONLY).

Writes, under ``root``: ``data/<category>/...`` small PNG test images and masks in the MVTec layout,
and ``results/<backbone>/<category>/seed<k>/`` with every file of the ``runs.py`` contract (aupimo.csv and the
low-false-alarm metrics included). The
numbers are made up (scores drawn so that defects tend to score higher; maps that are noise plus the
defect masks); never cite them. The metrics in metrics.json are computed from those scores and maps
with metrics.py, so they agree with the files as a real run's do.

``python tests/fake_results.py ROOT --study`` writes the benchmark study: 15 MVTec category names x 3
seeds x 2 backbones at 256 px with 150 test images each (about 20 MB of maps per run; not for git).
"""
from __future__ import annotations

import argparse
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "RD4AD-main"))

import metrics  # noqa: E402  (needs the path above)
import runs  # noqa: E402
from backbone_facts import DEFAULT_METHOD, split_arm  # noqa: E402

BACKBONES = ("convnext_tiny", "resnet50", "wide_resnet50_2")
THREE_FAMILIES = ("resnet50", "convnext_tiny", "swin_t")
CATEGORIES = ("synth_object", "synth_texture")
STUDY_CATEGORIES = ("bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut", "pill",
                    "screw", "tile", "toothbrush", "transistor", "wood", "zipper")
SEEDS = (0, 1)
SIZE = 32
EPOCHS = 3
DATA_DIR = "data"  # the data root, relative to the fake project root (the folder holding results/)
N_GOOD = 10
DEFECTS = {"scratch": 7, "stain": 7}
STUDY_DEFECTS = {"crack": 40, "scratch": 40, "stain": 40}  # 30 good + 120 defective = 150 test images
# How much higher defects score, per backbone: makes the backbones differ a little.
SEPARATION = {"convnext_tiny": 1.6, "resnet50": 1.4, "wide_resnet50_2": 1.8, "swin_t": 1.7, "resnet50+rdpp": 1.9,
              "convnext_tiny+rdpp": 1.5}
PERFECT_SEPARATION = 20.0  # categories listed in ``perfect``: every backbone separates them completely
# AUPIMO's band for the fake runs: 32 px test sets have ~10^4 normal pixels, too few for the default 1e-5 to 1e-4
FAKE_AUPIMO_BAND = (1e-3, 1e-2)


@dataclass(frozen=True)
class FakeImage:
    """One fabricated test image: path as training would write it (under a relative data root), defect, mask."""

    path: str
    defect_type: str
    mask: np.ndarray

    @property
    def label(self) -> int:
        return int(self.defect_type != "good")


@dataclass(frozen=True)
class RunOptions:
    """How one fabricated run differs from a plain one."""

    teacher_weights: str = "IMAGENET1K_V1"
    with_masks: bool = True
    with_maps: bool = True
    trained_epochs: int = EPOCHS
    perfect: bool = False
    selection: str | None = None
    data_format: str | None = None
    compressed: bool = True
    quantize: bool = False  # maps in steps of 1/8: few distinct scores, so binned pixel statistics are exact
    separation: float | None = None  # how much higher defects score; None: SEPARATION of the backbone
    aupimo_band: tuple[float, float] | None = FAKE_AUPIMO_BAND  # None: metrics' default band (unresolved at 32 px)


def _rng(*parts: object) -> np.random.Generator:
    """A generator seeded from the parts' text: same parts, same numbers, in every process."""
    return np.random.default_rng(zlib.crc32("/".join(map(str, parts)).encode()))


def write_category(data_root: Path, category: str, size: int = SIZE, n_good: int = N_GOOD,
                   defects: dict[str, int] | None = None) -> list[FakeImage]:
    """Write one category's test images (and defect masks) as PNGs; return them, sorted by path."""
    rng = _rng("data", category)
    images = []
    kinds = [("good", n_good)] + sorted((defects or DEFECTS).items())
    side = max(4, size // 4)
    for defect_type, count in kinds:
        for index in range(count):
            base = rng.uniform(0.3, 0.7, size=3)
            pixels = np.clip(base + rng.normal(0, 0.05, (size, size, 3)), 0, 1)
            mask = np.zeros((size, size), np.uint8)
            if defect_type != "good":
                top, left = rng.integers(2, size - side - 4, size=2)
                mask[top : top + side, left : left + side] = 1
                pixels[mask == 1] = (0.9, 0.1, 0.1) if defect_type == "stain" else (0.05, 0.05, 0.05)
                mask_path = data_root / category / "ground_truth" / defect_type / f"{index:03d}_mask.png"
                mask_path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask * 255).save(mask_path)
            relative = f"{category}/test/{defect_type}/{index:03d}.png"
            (data_root / relative).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((pixels * 255).astype(np.uint8)).save(data_root / relative)
            images.append(FakeImage(f"{DATA_DIR}/{relative}", defect_type, mask))
    return sorted(images, key=lambda image: image.path)


def _config(key: runs.RunKey, options: RunOptions, size: int) -> dict:
    config = {
        "backbone": key.backbone,
        **({} if key.method == DEFAULT_METHOD else {"method": key.method, key.method: {"projection_lr": 0.001}}),
        "category": key.category,
        "seed": key.seed,
        "data_root": DATA_DIR,  # relative, as in `--data-root data/demo`: images resolve from the project root
        "image_size": size,
        "epochs": EPOCHS,
        "batch_size": 16,
        "lr": 0.005,
        "betas": [0.5, 0.999],
        "teacher_weights": options.teacher_weights,
        "hardware": {"device": "cpu", "cpu_count": 2, "gpu": None},
    }
    if options.selection is not None:
        config["selection"] = options.selection
    if options.data_format is not None:
        config["data"] = {"data_format": options.data_format, "split_csv": None, "split_csv_sha256": None}
    return config


def write_run(results: Path, images: list[FakeImage], key: runs.RunKey, options: RunOptions = RunOptions(),
              size: int = SIZE) -> None:
    """Write one run directory: config, history, scores, validation scores, maps and metrics."""
    directory = runs.run_dir(results, key)
    directory.mkdir(parents=True, exist_ok=True)
    rng = _rng(key)
    labels = np.array([image.label for image in images])
    separation = PERFECT_SEPARATION if options.perfect else \
        options.separation if options.separation is not None else SEPARATION.get(key.arm, 1.5)
    scores = rng.normal(0.0, 0.5, len(images)) + separation * labels * rng.uniform(0.4, 1.2)
    scores = np.round(scores + 2.0, 6)
    val_scores = np.round(rng.normal(2.0, 0.5, 8), 6)
    threshold = float(np.quantile(val_scores, 0.99))
    runs.atomic_write_json(directory / runs.CONFIG_FILE, _config(key, options, size))
    history = ["epoch,loss,loss_scale1,loss_scale2,loss_scale3,val_loss,epoch_time_s,images_per_s,peak_memory_mb"]
    history += [f"{epoch},{1 / epoch:.4f},0.1,0.1,0.1,{1.1 / epoch:.4f},2.0,8.0,1000"
                for epoch in range(1, options.trained_epochs + 1)]
    runs.atomic_write_text(directory / runs.HISTORY_FILE, "\n".join(history) + "\n")
    lines = ["path,defect_type,label,score"]
    lines += [f"{image.path},{image.defect_type},{image.label},{score}" for image, score in zip(images, scores)]
    runs.atomic_write_text(directory / runs.SCORES_FILE, "\n".join(lines) + "\n")
    val_paths = [f"{DATA_DIR}/{key.category}/train/good/v{i:03d}.png" for i in range(len(val_scores))]
    val_lines = ["path,score"] + [f"{path},{score}" for path, score in zip(val_paths, val_scores)]
    runs.atomic_write_text(directory / runs.VAL_SCORES_FILE, "\n".join(val_lines) + "\n")
    pixel = {"pixel_auroc": None, "aupro": None}
    if options.with_masks:
        masks = np.stack([image.mask for image in images])
        noise = rng.normal(0.0, 0.3, masks.shape).astype(np.float32)
        lift = (np.clip(scores - 2.0, 0.0, None) * 0.4).astype(np.float32)[:, None, None]
        maps = (noise + masks * lift + 1.0).astype(np.float16)
        if options.quantize:
            maps = (np.round(maps.astype(np.float32) * 8) / 8).astype(np.float16)
        if options.with_maps:
            save = np.savez_compressed if options.compressed else np.savez
            save(directory / runs.MAPS_FILE, maps=maps, masks=masks, paths=np.array([image.path for image in images]))
        pixel = _localisation(directory, images, maps, masks, labels, threshold, options)
    _write_metrics(directory, key, scores, labels, [image.defect_type for image in images], threshold, pixel,
                   options, rng)


def _localisation(directory: Path, images: list[FakeImage], maps: np.ndarray, masks: np.ndarray, labels: np.ndarray,
                  threshold: float, options: RunOptions) -> dict:
    """metrics.json's pixel entries as `test` writes them (AUPIMO null where its band is not resolved), and
    aupimo.csv with one row per anomalous image."""
    band = options.aupimo_band or metrics.AUPIMO_FPR_BAND
    values, aupimo = metrics.localisation_metrics(maps.astype(np.float32), masks, labels, threshold, fpr_band=band)
    anomalous = np.flatnonzero(labels == 1)
    runs.write_aupimo(directory, [images[i].path for i in anomalous], [images[i].defect_type for i in anomalous],
                      aupimo.per_image[anomalous].tolist())
    return {**values, "aupimo": aupimo.mean if aupimo.resolved else None, "aupimo_fpr_band": list(band),
            "n_aupimo_images": int(np.isfinite(aupimo.per_image).sum())}


def _write_metrics(directory: Path, key: runs.RunKey, scores: np.ndarray, labels: np.ndarray, types: list[str],
                   threshold: float, pixel: dict, options: RunOptions, rng: np.random.Generator) -> None:
    at_threshold = metrics.metrics_at_threshold(scores, labels, threshold)
    efficiency = {
        "trainable_params": {"resnet50": 46_651_392, "wide_resnet50_2": 83_802_624}.get(key.backbone, 46_000_000),
        "gflops": round(float(rng.uniform(10, 20)), 3),
        "train_images_per_s": round(float(rng.uniform(5, 15)), 3),
        "inference_ms_per_image": round(float(rng.uniform(10, 30)), 3),
        "peak_memory_mb": round(float(rng.uniform(900, 1500)), 1),
    }
    result = {
        "epochs": options.trained_epochs,
        "image_auroc": metrics.image_auroc(scores, labels),
        **pixel,
        "f1_max": metrics.f1_max(scores, labels)[0],
        "threshold": threshold,
        "threshold_rule": "quantile 0.99 of validation normal scores",
        **{name: at_threshold[name] for name in ("accuracy", "precision", "recall", "f1")},
        "per_defect_image_auroc": metrics.per_defect_auroc(scores, labels, types),
        "n_test": len(scores),
        "n_defective": int(labels.sum()),
        "efficiency": efficiency,
    }
    if options.selection == "synthetic-val":
        result["selected_epoch"] = options.trained_epochs
    runs.atomic_write_json(directory / runs.METRICS_FILE, result)


def write_fake_results(
    root: Path,
    *,
    backbones: tuple[str, ...] = BACKBONES,
    categories: tuple[str, ...] = CATEGORIES,
    seeds: tuple[int, ...] = SEEDS,
    random_teachers: tuple[str, ...] = (),
    without_masks: tuple[str, ...] = (),
    without_maps: tuple[str, ...] = (),
    perfect: tuple[str, ...] = (),
    skip: Iterable[tuple[str, str, int]] = (),
    unfinished: Iterable[tuple[str, str, int]] = (),
    data_formats: dict[str, str] | None = None,
    selection: str | None = None,
    size: int = SIZE,
    n_good: int = N_GOOD,
    defects: dict[str, int] | None = None,
    compressed: bool = True,
    quantize: bool = False,
    separation: dict[str, float] | None = None,
    extra: Iterable[tuple[str, str, int]] = (),
    aupimo_band: tuple[float, float] | None = FAKE_AUPIMO_BAND,
) -> Path:
    """Write data and results under ``root``; return the results directory.

    ``random_teachers``: backbones whose runs record ``teacher_weights = "random"``; ``without_masks``: categories
    whose runs have null pixel metrics and no maps.npz; ``without_maps``: backbones that saved no maps.npz (pixel
    metrics measured); ``perfect``: categories every backbone separates completely (image AUROC 1.0); ``skip``:
    (backbone, category, seed) runs not written; ``unfinished``: runs whose checkpoint stopped an epoch early;
    ``data_formats``: category -> config "data_format"; ``selection``: config "selection" of every run;
    ``quantize``: maps in steps of 1/8 (few distinct scores: the report's binned pixel statistics are exact);
    ``separation``: backbone -> how much higher its defects score (default SEPARATION): a difference you set;
    ``extra``: (backbone, category, seed) runs written besides ``seeds`` (a category with more seeds than the rest);
    ``aupimo_band``: AUPIMO's FPR band (None: the metrics' default, which 32 px test sets cannot resolve).
    """
    root = Path(root)
    data_root, results = root / DATA_DIR, root / "results"
    skipped, short, added = set(skip), set(unfinished), set(extra)
    for category in categories:
        images = write_category(data_root, category, size, n_good, defects)
        for backbone in backbones:
            more = sorted(seed for (b, c, seed) in added if (b, c) == (backbone, category) and seed not in seeds)
            for seed in (*seeds, *more):
                if (backbone, category, seed) in skipped:
                    continue
                options = RunOptions(
                    teacher_weights="random" if backbone in random_teachers else "IMAGENET1K_V1",
                    with_masks=category not in without_masks, with_maps=backbone not in without_maps,
                    trained_epochs=EPOCHS - 1 if (backbone, category, seed) in short else EPOCHS,
                    perfect=category in perfect, selection=selection,
                    data_format=(data_formats or {}).get(category), compressed=compressed, quantize=quantize,
                    separation=(separation or {}).get(backbone), aupimo_band=aupimo_band)
                # a backbone may be an arm label (``resnet50+rdpp``): its run records the backbone and the method
                registered, method = split_arm(backbone)
                write_run(results, images, runs.RunKey(registered, category, seed, method), options, size)
    return results


def write_study(root: Path) -> Path:
    """The benchmark study: 15 MVTec category names x 3 seeds x the fair pair, 256 px, 150 test images each."""
    return write_fake_results(root, backbones=("resnet50", "convnext_tiny"), categories=STUDY_CATEGORIES,
                              seeds=(0, 1, 2), size=256, n_good=30, defects=STUDY_DEFECTS, compressed=False)


def main() -> None:
    parser = argparse.ArgumentParser(description="write fabricated results (test fixtures, never cite them)")
    parser.add_argument("root", type=Path, help="folder that receives data/ and results/")
    parser.add_argument("--study", action="store_true", help="the 15 x 3 x 2 benchmark study at 256 px")
    args = parser.parse_args()
    print(write_study(args.root) if args.study else write_fake_results(args.root))


if __name__ == "__main__":
    main()

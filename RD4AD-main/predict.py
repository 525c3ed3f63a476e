"""``main.py predict``: a trained model on new images: scores, decisions, anomaly-map overlays.

    python RD4AD-main/main.py predict --run-dir results/resnet50/bottle/seed0 --images new_photos/ --out predictions/

The model is the run's (the checkpoint ``main.py test`` evaluates, with its teacher verified) or any
``--checkpoint``. Images are decoded and resized exactly as in training and testing. The decision
threshold is the run's, set on its held-out validation normals (``val_scores.csv`` and the rule in
``metrics.json``; for a run not tested yet, the normals its config.json records, scored here as ``main.py test``
would), or ``--threshold``; without either, scores are written without decisions.

Writes ``scores.csv`` (image, score, decision), one PNG per image (the image with its anomaly map on one
colour scale shared by all images, with a colour bar), and on request the maps as ``.npy`` and binary
masks at the threshold as PNG.

``--split test_private`` (or ``test_private_mixed``) with ``--run-dir`` scores that MVTec AD 2 test set of the
run's own scene (``<data_root>/<category>/<split>/``): the sets without labels, which ``main.py test`` does not
score (MVTec's evaluation server holds their labels).
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from PIL import Image
from tqdm import tqdm

import metrics
import runs
from checkpoint import model_from_checkpoint
from dataset import IMAGE_EXTENSIONS, read_images
from errors import DataError, RDError
from layouts import AD2_UNLABELLED_SPLITS, resolve_format
from evaluate import score_images, validation_split
from rd_model import ReverseDistillation, image_scores
from recipe import EvalAmp, FastPath, TrainConfig
from system_info import resolve_device

__all__ = ["Prediction", "add_arguments", "find_images", "predict", "run", "run_threshold", "split_images",
           "validation_threshold", "write_outputs"]

MAP_COLORMAP = "jet"  # blue = normal, red = anomalous, as in the report


@dataclass
class Prediction:
    """Images as the model saw them (uint8 (N, 3, S, S)), their scores (N,) and smoothed maps (N, S, S), and the
    threshold the decisions use (or None)."""

    paths: list[str]
    pixels: torch.Tensor
    scores: np.ndarray
    maps: np.ndarray
    threshold: float | None

    @property
    def decisions(self) -> list[str]:
        if self.threshold is None:
            return [""] * len(self.paths)
        return ["anomalous" if score > self.threshold else "normal" for score in self.scores]  # as metrics.py


def find_images(sources: list[str]) -> list[Path]:
    """Image files named directly or found (sorted, recursively) in the folders given."""
    found: list[Path] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                            and not p.name.startswith("."))
        elif path.is_file():
            found.append(path)
        else:
            raise DataError(f"--images {source}: no such file or folder")
    if not found:
        raise DataError(f"--images {' '.join(sources)}: no image ({', '.join(sorted(IMAGE_EXTENSIONS))}) found")
    return found


def split_images(run_directory: Path, split: str, config: TrainConfig | None = None) -> list[Path]:
    """The images of an unlabelled MVTec AD 2 test set (``test_private``, ``test_private_mixed``) of a run's scene
    (``config``: the run's, read from its config.json when not given)."""
    if config is None:
        config = TrainConfig.from_record(runs.read_run_config(run_directory))
    data_format = resolve_format(config.data_root, config.data_format, config.split_csv, config.category)
    folder = Path(config.data_root) / config.category / split
    if data_format != "mvtec_ad2":
        raise DataError(f"--split {split}: {run_directory} was trained on {data_format}-layout data; the unlabelled "
                        f"test sets ({', '.join(AD2_UNLABELLED_SPLITS)}) are MVTec AD 2's; pass --images instead")
    if not folder.is_dir():
        raise DataError(f"--split {split}: {folder} not found; expected the scene's {split} folder of MVTec AD 2")
    return find_images([str(folder)])


def run_threshold(run_directory: Path, model: ReverseDistillation | None = None, device: torch.device | None = None,
                  batch_size: int = 16) -> float:
    """The run's decision threshold: its rule (metrics.json, else ``max``) on its validation normals' scores,
    read from val_scores.csv when the run is tested, else (given ``model``) scored here as ``main.py test``
    scores them (``validation_threshold``)."""
    scores_file = run_directory / runs.VAL_SCORES_FILE
    metrics_file = run_directory / runs.METRICS_FILE
    rule = runs.read_json(metrics_file).get("threshold_rule", "max") if metrics_file.is_file() else "max"
    if scores_file.is_file():
        return metrics.threshold_from_normals(pd.read_csv(scores_file)["score"].to_numpy(copy=True), rule)
    if model is None or device is None:
        raise RDError(f"{scores_file} is missing: run `main.py test` for this run first, or pass --threshold")
    return validation_threshold(model, run_directory, device, batch_size, rule)


def validation_threshold(model: ReverseDistillation, run_directory: Path, device: torch.device, batch_size: int = 16,
                         rule: str = "max") -> float:
    """The threshold ``main.py test`` writes for an untested run: ``rule`` on the scores of the validation normals
    its config.json records, scored with the run's settings in float32 (test's default)."""
    record = runs.read_run_config(run_directory)
    config = TrainConfig.from_record(record)
    val_set = validation_split(run_directory, record, config)
    fast = FastPath.resolve(replace(config, eval_amp=EvalAmp.OFF.value), device).scoring()
    fast.place(model, device)
    scores = image_scores(score_images(model, val_set.uint8_images(), fast, device, batch_size, "validation")).cpu()
    return metrics.threshold_from_normals(scores, rule)


def predict(model: ReverseDistillation, config: TrainConfig, images: list[Path], device: torch.device,
            batch_size: int, threshold: float | None) -> Prediction:
    """Score ``images`` with ``model`` exactly as ``main.py test`` scores test images (the scoring precision alone:
    no teacher copy in the training precision, which scoring never runs in)."""
    fast = FastPath.resolve(config, device).scoring()
    fast.place(model, device)
    pixels = read_images(images, config.image_size)
    maps = score_images(model, pixels, fast, device, batch_size, "predict")
    return Prediction([str(p) for p in images], pixels, image_scores(maps).cpu().numpy(), maps.cpu().numpy(), threshold)


def _overlay_png(path: Path, rgb: np.ndarray, anomaly: np.ndarray, limits: tuple[float, float], title: str) -> None:
    figure = Figure(figsize=(4.4, 3.6), layout="constrained")
    ax = figure.subplots()
    ax.imshow(rgb)
    artist = ax.imshow(anomaly, cmap=MAP_COLORMAP, alpha=0.5, vmin=limits[0], vmax=limits[1])
    ax.set(title=title, xticks=[], yticks=[])
    figure.colorbar(artist, ax=ax, fraction=0.046, pad=0.02, label="anomaly score")
    runs.atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=100, metadata={"Software": None}))


def write_outputs(prediction: Prediction, out: Path, save_maps: bool, save_masks: bool) -> Path:
    """scores.csv, an overlay PNG per image, and optionally .npy maps and threshold masks, under ``out``."""
    names = _unique_names(prediction.paths)
    runs.write_csv(out / runs.SCORES_FILE, ["image", "score", "decision", "threshold"],
                   [(path, float(score), decision, "" if prediction.threshold is None else prediction.threshold)
                    for path, score, decision in zip(prediction.paths, prediction.scores, prediction.decisions)])
    limits = (float(prediction.maps.min()), float(prediction.maps.max()))  # one colour scale for every image
    rgb_images = prediction.pixels.permute(0, 2, 3, 1).numpy()  # decoded once, in predict
    for index, name in enumerate(tqdm(names, desc="writing overlays", unit="img", leave=False)):
        verdict = prediction.decisions[index] or "no threshold"
        _overlay_png(out / "overlays" / f"{name}.png", rgb_images[index], prediction.maps[index], limits,
                     f"{name}: {prediction.scores[index]:.3g} ({verdict})")
        if save_maps:
            runs.atomic_write(out / "maps" / f"{name}.npy", _npy_writer(prediction.maps[index]))
        if save_masks and prediction.threshold is not None:
            mask = ((prediction.maps[index] > prediction.threshold) * 255).astype(np.uint8)
            runs.atomic_write(out / "masks" / f"{name}.png", lambda tmp, m=mask: Image.fromarray(m).save(tmp, "PNG"))
    return out / runs.SCORES_FILE


def _npy_writer(array: np.ndarray):
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.save(handle, array)
    return write


def _unique_names(paths: list[str]) -> list[str]:
    """File stems, made unique with their parent folders when two images share a name."""
    stems = [Path(p).stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    common = os.path.commonpath([str(Path(p).resolve().parent) for p in paths])
    return [str(Path(p).resolve().with_suffix("").relative_to(common)).replace(os.sep, "__") for p in paths]


# ---------------------------------------------------------------------------------------------- CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run-dir", type=Path, help="a trained run: its model and threshold")
    source.add_argument("--checkpoint", type=Path, help="a checkpoint file (no threshold unless --threshold)")
    parser.add_argument("--images", nargs="+", help="image files and/or folders (searched recursively)")
    parser.add_argument("--split", choices=AD2_UNLABELLED_SPLITS,
                        help="with --run-dir: score this unlabelled MVTec AD 2 test set of the run's scene instead of "
                             "--images")
    parser.add_argument("--out", type=Path, default=Path("predictions"), help="output folder")
    parser.add_argument("--threshold", type=float, help="decision threshold (default: the run's, from validation normals)")
    parser.add_argument("--save-maps", action="store_true", help="also write each anomaly map as .npy")
    parser.add_argument("--save-masks", action="store_true", help="also write binary masks at the threshold as PNG")
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise RDError(f"--batch-size {args.batch_size}: expected at least 1")
    if (args.images is None) == (args.split is None):
        raise RDError("pass either --images FILES_OR_FOLDERS or --split test_private|test_private_mixed (with "
                      "--run-dir), not both and not neither")
    if args.split is not None and args.run_dir is None:
        raise RDError(f"--split {args.split} needs --run-dir: the run names the scene and its data root")
    run_config = None  # the run's config.json, read once
    if args.split:
        run_config = TrainConfig.from_record(runs.read_run_config(args.run_dir))
        images = split_images(args.run_dir, args.split, run_config)
    else:
        images = find_images(args.images)
    device = resolve_device(args.device)
    if args.run_dir is not None:
        if run_config is None:
            run_config = TrainConfig.from_record(runs.read_run_config(args.run_dir))
        checkpoint = run_config.selected_checkpoint_path
    else:
        checkpoint = args.checkpoint
    model, payload = model_from_checkpoint(checkpoint)
    threshold = args.threshold
    if threshold is None and args.run_dir is not None:
        threshold = run_threshold(args.run_dir, model, device, args.batch_size)
    config = TrainConfig(data_root="", category="", backbone=payload["backbone"], image_size=payload["image_size"],
                         model_knobs=payload["model_knobs"], device=args.device,
                         method=payload.get("method", TrainConfig.method))
    prediction = predict(model, config, images, device, args.batch_size, threshold)
    path = write_outputs(prediction, args.out, args.save_maps, args.save_masks)
    flagged = sum(decision == "anomalous" for decision in prediction.decisions)
    summary = f"{flagged} of {len(images)} flagged as anomalous at threshold {threshold:.4g}" if threshold is not None \
        else f"{len(images)} image(s) scored (no threshold: pass --threshold or use a --run-dir)"
    print(f"{summary}; wrote {path} and {args.out / 'overlays'}/")
    return 0

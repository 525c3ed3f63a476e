"""Speed and memory benchmark (``main.py bench``): every figure of the fast path next to a naive
reference path measured in the same run, with the ratio, so that the comparison holds on a noisy machine.

    python RD4AD-main/main.py bench [--backbones resnet50,convnext_tiny] [--image-size 128|256]
                                    [--eval-image-size 256] [--device auto] [--threads N] [--out bench.json]

Per backbone, on random teachers (speed does not depend on the weights; no download is needed):

- training images/s. Fast: ``recipe.train_step`` exactly as train.py runs it (``FastPath`` as resolved
  for the device, the frozen teacher cast once to the autocast dtype, fused Adam, cuDNN autotuning set by
  ``recipe.seed_everything``, the uint8 training set on the device, normalised there, each epoch's batch
  indices copied to the device once by ``recipe.device_batches`` (8 whole batches per epoch, so several
  steps share each copy, as in train.py), ``recipe.compiled_train_step`` under
  ``--compile``), and the ops it dispatches per step with the casts among them (torch.profiler): at batch
  16 the host's dispatch time, not the device, can bound a step. Naive: the original RD4AD loop: the
  teacher run with autograd (its weights require gradients but are not optimised), contiguous NCHW
  float32 batches normalised image by image on the host, default Adam.
- inference ms/image at batch 1 and images/s at batch 32 (anomaly maps). Fast: the scoring path (no
  autograd, blur on the device). Naive: autograd recording, host normalisation, maps per image on
  the CPU blurred with ``scipy.ndimage.gaussian_filter``.
- peak memory of each path, measured around that path's own rounds (on CUDA the peak is reset there: max
  allocated; on CPU process RSS, sampled), less what the other path keeps resident meanwhile (its models,
  the teacher's dtype copies, its optimiser state, its data on the device).
- a whole evaluation of one synthetic category (167 test images at 256 px by default, whatever the
  training size). Fast: what ``main.py
  test`` does (``evaluate.score_images`` on the device, ``metrics.pixel_metrics``, image AUROC).
  Naive: the original RD4AD test loop (batch 1, per-image CPU maps and scipy blur, scikit-learn on
  Python lists, a 200-threshold AUPRO loop). The metric values of both are reported side by side;
  the 200-threshold AUPRO only approximates the exact one, so the exact AUPRO of the naive maps is
  computed too (untimed) to show that both paths give the same value. The fast evaluation runs in
  float32, as ``main.py test`` by default; it is then repeated with ``--eval-amp bf16`` to report the
  speed bf16 evaluation buys and the metric change it causes (image AUROC, pixel AUROC, AUPRO, largest
  map difference). ``--no-tf32`` turns TF32 off on CUDA (exact float32: the equality check).

Fast and naive rounds alternate and each figure is the best round, so a load spike hits both alike. No
timed region meets a batch shape for the first time (cuDNN autotunes every new shape on its first call):
training and inference rounds repeat their shapes after ``--warmup`` untimed rounds, and each evaluation
first scores, untimed, one batch of every size it will meet (16, and the last partial batch, e.g. 7 of 167).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import deque
from dataclasses import dataclass, replace
from itertools import count
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

import metrics
import recipe
import reference_metrics
import runs
import sweep
from backbones import build_model, parse_backbones
from categories import MVTEC_CATEGORIES, OFFICIAL_COUNTS
from dataset import MVTecDataset
from errors import RDError
from evaluate import score_images
from rd_model import ReverseDistillation, image_scores, validate_image_size
from recipe import Amp, FastPath, TrainConfig
from reference_pipeline import host_batch, naive_maps, naive_model, naive_train_step
from synth import generate
from system_info import describe_hardware, library_versions, resolve_device, synchronize
from timing import ForwardTimer, Measure, PeakMemory, alternate, count_ops, resident_mb, warm_up_batch_sizes

__all__ = ["EVAL_CATEGORY", "BenchData", "EpochFeed", "add_arguments", "bench_backbone", "bf16_evaluation",
           "check_targets", "evaluation_section", "format_report", "load_data", "run", "set_tf32", "study_estimate"]

EVAL_CATEGORY = "synth_object"  # RGB, the second category synth writes
NAIVE_AUPRO_THRESHOLDS = 200
INFERENCE_BATCH = 32
EVAL_BATCH = 16  # main.py test's default scoring batch
TRAIN_STEPS_PER_EPOCH = 8  # training images generated: this many whole batches, so an epoch has several steps
EQUAL_TOLERANCE = 1e-6
# The project's speed targets (checked and recorded here, never asserted by a test).
CPU_TRAIN_RATIO_TARGET, EVAL_RATIO_TARGET = 1.3, 10.0
CUDA_TRAIN_TARGETS = {"resnet50": 1500.0, "wide_resnet50_2": 800.0}  # images/s at 256 px on one H200
CUDA_EVAL_TARGET_S, CUDA_SWEEP_TARGET_S = 2.0, 30 * 60.0
SWEEP_EPOCHS = 200


# ---------------------------------------------------------------------------------------------- sections

@dataclass
class BenchData:
    """The synthetic category: training images, test images and masks (uint8, CPU) and labels."""

    train_images: torch.Tensor
    test_images: torch.Tensor
    test_masks: torch.Tensor
    labels: np.ndarray


def load_data(root: str, image_size: int) -> BenchData:
    train_set = MVTecDataset(root, EVAL_CATEGORY, "train", image_size)
    test_set = MVTecDataset(root, EVAL_CATEGORY, "test", image_size)
    return BenchData(train_set.uint8_images(), test_set.uint8_images(), test_set.uint8_masks()[:, 0],
                     np.asarray(test_set.labels))


def _speed(measure: Measure) -> float:
    return measure.work / measure.best


class EpochFeed:
    """Training batches as train.py makes them: each epoch's indices (``recipe.device_batches``, one copy to the
    device per epoch), then ``fast.prepare`` of the uint8 images gathered on the device."""

    def __init__(self, images: torch.Tensor, batch_size: int, seed: int, device: torch.device) -> None:
        self.images, self.batch_size, self.seed, self.device = images, batch_size, seed, device
        self.epochs = count(1)
        self.pending: deque[tuple[torch.Tensor, int]] = deque()

    def next(self, fast: FastPath) -> torch.Tensor:
        while not self.pending:
            self.pending.extend(recipe.device_batches(len(self.images), self.batch_size, self.seed,
                                                      next(self.epochs), self.device))
        indices, _ = self.pending.popleft()
        return fast.prepare(self.images[indices])


def train_section(model: ReverseDistillation, naive: ReverseDistillation, config: TrainConfig,
                  fast: FastPath, data: BenchData, device: torch.device, args: argparse.Namespace
                  ) -> dict[str, Any]:
    """Training images/s, fast vs naive, alternating rounds of ``args.steps`` steps; ops and casts per fast step."""
    model.train()
    naive.train()
    optimizer = recipe.make_optimizer(model, config)
    naive_optimizer = torch.optim.Adam(naive.trainable_modules().parameters(), lr=config.lr,
                                       betas=(config.beta1, config.beta2))
    step = recipe.compiled_train_step() if fast.compile else recipe.train_step
    # whole batches only (as most steps of a real epoch): every step then does the same work; several per epoch,
    # so that, as in train.py, the epoch's indices go to the device once for several steps
    usable = min(len(data.train_images) // config.batch_size, TRAIN_STEPS_PER_EPOCH) * config.batch_size
    if not usable:
        raise RDError(f"--batch-size {config.batch_size}: larger than the {len(data.train_images)} training images")
    feed = EpochFeed(data.train_images[:usable].to(device), config.batch_size, config.seed, device)
    generator = torch.Generator().manual_seed(0)

    def fast_step() -> None:
        step(model, optimizer, feed.next(fast), fast, device)

    def fast_round() -> None:
        for _ in range(args.steps):
            fast_step()

    def naive_round() -> None:
        for _ in range(args.steps):
            indices = torch.randperm(usable, generator=generator)[:config.batch_size]
            naive_train_step(naive, naive_optimizer, data.train_images, indices, device)

    resident = {"fast": lambda: resident_mb([naive, naive_optimizer], device),
                "naive": lambda: resident_mb([model, optimizer, feed.images], device)}
    measured = alternate({"fast": fast_round, "naive": naive_round}, args.rounds, args.warmup,
                         args.steps * config.batch_size, device, "train", resident)
    speeds = {name: _speed(m) for name, m in measured.items()}
    return {"batch_size": config.batch_size, "steps_per_epoch": usable // config.batch_size,
            "fast": measured["fast"].as_dict() | {"images_per_s": speeds["fast"]} | count_ops(fast_step, device),
            "naive": measured["naive"].as_dict() | {"images_per_s": speeds["naive"]},
            "ratio": speeds["fast"] / speeds["naive"]}


def inference_section(model: ReverseDistillation, naive: ReverseDistillation, fast: FastPath,
                      data: BenchData, device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    """Anomaly maps at batch 1 (ms/image) and at batch 32 (images/s), fast (at the scoring precision) vs naive."""
    model.eval()
    naive.eval()
    images = data.test_images
    big = INFERENCE_BATCH
    singles = min(4 * args.steps, len(images))
    on_device = images.to(device)
    scoring = fast.scoring()

    def fast_maps(start: int, count: int) -> None:
        with scoring.autocast(device):
            model.anomaly_map(scoring.prepare(on_device[start:start + count]))

    def fast_singles() -> None:
        for i in range(singles):
            fast_maps(i, 1)

    def naive_singles() -> None:
        for i in range(singles):
            naive_maps(naive, host_batch(images, [i]), grad=True)

    def fast_big() -> None:
        for _ in range(args.steps):
            fast_maps(0, big)

    def naive_big() -> None:
        for _ in range(args.steps):
            naive_maps(naive, host_batch(images, range(big)), grad=True)

    resident = {"fast": lambda: resident_mb([naive], device), "naive": lambda: resident_mb([model, on_device], device)}
    batch1 = alternate({"fast": fast_singles, "naive": naive_singles}, args.rounds, args.warmup, singles, device,
                       "inference, batch 1", resident)
    batch32 = alternate({"fast": fast_big, "naive": naive_big}, args.rounds, args.warmup, args.steps * big, device,
                        f"inference, batch {big}", resident)
    ms = {name: 1000 * m.best / m.work for name, m in batch1.items()}
    per_s = {name: _speed(m) for name, m in batch32.items()}
    return {
        "batch_1": {name: batch1[name].as_dict() | {"ms_per_image": ms[name]} for name in ms}
        | {"ratio": ms["naive"] / ms["fast"]},
        f"batch_{big}": {name: batch32[name].as_dict() | {"images_per_s": per_s[name]} for name in per_s}
        | {"ratio": per_s["fast"] / per_s["naive"]},
    }


def fast_evaluation(model: ReverseDistillation, fast: FastPath, data: BenchData, device: torch.device,
                    exclude_mb: float = 0.0) -> tuple[dict[str, float], torch.Tensor, dict[str, float]]:
    """What ``main.py test`` does: maps on the device in batches of 16, image AUROC, pixel metrics. Every batch
    size has been met before (``_warm_up_scoring``); ``exclude_mb``: the other path's resident memory."""
    model.eval()
    with PeakMemory(device, exclude_mb) as memory, ForwardTimer(model, device) as forward:
        started = time.perf_counter()
        maps = score_images(model, data.test_images, fast, device, EVAL_BATCH, "evaluation (fast)")
        values = {"image_auroc": metrics.image_auroc(image_scores(maps).cpu(), data.labels),
                  **metrics.pixel_metrics(maps, data.test_masks.to(device))}
        synchronize(device)
        total = time.perf_counter() - started
    times = {"total_s": total, "forward_s": forward.seconds, "rest_s": total - forward.seconds,
             "peak_memory_mb": memory.peak_mb}
    return values, maps.cpu(), times


def naive_evaluation(model: ReverseDistillation, data: BenchData, device: torch.device, exclude_mb: float = 0.0
                     ) -> tuple[dict[str, float], np.ndarray, dict[str, float]]:
    """The original RD4AD test loop: batch 1, CPU maps, scipy blur, scikit-learn on lists, 200 thresholds."""
    model.eval()
    masks = data.test_masks.numpy()
    with PeakMemory(device, exclude_mb) as memory:
        started, forward_s, maps = time.perf_counter(), 0.0, []
        for i in tqdm(range(len(data.test_images)), desc="evaluation (naive)", unit="img", leave=False):
            image_maps, seconds = naive_maps(model, host_batch(data.test_images, [i]), grad=False)
            maps += image_maps
            forward_s += seconds
        stacked = np.stack(maps)
        scores = stacked.reshape(len(stacked), -1).max(axis=1)
        values = {"image_auroc": reference_metrics.image_auroc_naive(scores, data.labels),
                  "pixel_auroc": reference_metrics.pixel_auroc_naive(stacked, masks),
                  "aupro_200_thresholds": reference_metrics.aupro_naive(stacked, masks,
                                                                        n_thresholds=NAIVE_AUPRO_THRESHOLDS)}
        total = time.perf_counter() - started
    times = {"total_s": total, "forward_s": forward_s, "rest_s": total - forward_s, "peak_memory_mb": memory.peak_mb}
    return values, stacked, times


def _warm_up_scoring(model: ReverseDistillation, fast: FastPath, data: BenchData, device: torch.device) -> None:
    """Untimed: one batch of every size the timed evaluation meets (16 and the last, partial one), at the scoring
    precision of ``fast``, so that no kernel selection or first allocation falls in the timed region."""
    warm_up_batch_sizes(lambda size: score_images(model, data.test_images[:size], fast, device, EVAL_BATCH, "warm-up"),
                        len(data.test_images), EVAL_BATCH)


def bf16_evaluation(model: ReverseDistillation, fast: FastPath, data: BenchData, device: torch.device,
                    float32_values: dict[str, float], float32_maps: torch.Tensor,
                    float32_times: dict[str, float], exclude_mb: float = 0.0) -> dict[str, Any]:
    """The same evaluation with ``--eval-amp bf16``: its time and speed-up over float32, and the change it
    causes in each metric and in the maps (largest difference, also relative to the float32 maps' range)."""
    bf16 = replace(fast, eval_autocast_dtype=torch.bfloat16)
    model.keep_teacher_in(torch.bfloat16)
    _warm_up_scoring(model, bf16, data, device)
    values, maps, times = fast_evaluation(model, bf16, data, device, exclude_mb)
    largest = float((maps.double() - float32_maps.double()).abs().max())
    span = float(float32_maps.max() - float32_maps.min())
    change = {name: {"float32": float32_values[name], "bf16": values[name],
                     "change": values[name] - float32_values[name]} for name in ("image_auroc", "pixel_auroc", "aupro")}
    return {"times": times, "speedup": float32_times["total_s"] / times["total_s"], "metrics": change,
            "max_abs_map_diff": largest, "max_map_diff_of_range": largest / span if span > 0 else None}


def evaluation_section(model: ReverseDistillation, naive: ReverseDistillation, fast: FastPath,
                       data: BenchData, device: torch.device, bf16: bool = True) -> dict[str, Any]:
    """One whole evaluation per path (same weights), times split into network forward and the rest; the fast
    one at the scoring precision (float32 by default, as ``main.py test``), then again in bf16 (``bf16``)."""
    naive.load_state_dict(model.state_dict())  # the naive copy trained apart: give it the same weights
    model.eval()
    naive.eval()
    _warm_up_scoring(model, fast, data, device)  # untimed warm-up of both paths
    naive_maps(naive, host_batch(data.test_images, [0]), grad=False)
    fast_values, fast_maps, fast_times = fast_evaluation(model, fast, data, device, resident_mb([naive], device))
    naive_values, naive_maps_, naive_times = naive_evaluation(naive, data, device, resident_mb([model], device))
    exact_of_naive = metrics.aupro(naive_maps_, data.test_masks.numpy())  # untimed: the equality check
    values = {
        "image_auroc": {"fast": fast_values["image_auroc"], "naive": naive_values["image_auroc"]},
        "pixel_auroc": {"fast": fast_values["pixel_auroc"], "naive": naive_values["pixel_auroc"]},
        "aupro": {"fast": fast_values["aupro"], "naive": exact_of_naive,
                  "note": "naive = exact AUPRO of the naive path's maps (computed untimed)"},
    }
    for entry in values.values():
        entry["abs_diff"] = abs(entry["fast"] - entry["naive"])
    values["aupro_200_thresholds"] = {
        "naive": naive_values["aupro_200_thresholds"],
        "minus_exact": naive_values["aupro_200_thresholds"] - exact_of_naive,
        "note": "the naive path's timed AUPRO: 200 evenly spaced thresholds, not the exact curve"}
    identical = all(values[k]["abs_diff"] <= EQUAL_TOLERANCE for k in ("image_auroc", "pixel_auroc", "aupro"))
    result = {
        "images": len(data.test_images), "image_size": int(data.test_images.shape[-1]),
        "precision": str(fast.scoring().autocast_dtype or torch.float32).removeprefix("torch."),
        "tf32": _tf32_enabled(device),
        "fast": fast_times, "naive": naive_times,
        "ratio_total": naive_times["total_s"] / fast_times["total_s"],
        "ratio_without_forward": naive_times["rest_s"] / fast_times["rest_s"],
        "metrics": values, "identical_metrics": identical, "tolerance": EQUAL_TOLERANCE,
        "max_abs_map_diff": float(np.abs(fast_maps.double().numpy() - naive_maps_).max()),
    }
    if bf16 and fast.scoring().autocast_dtype is None:
        result["bf16_eval"] = bf16_evaluation(model, fast, data, device, fast_values, fast_maps, fast_times,
                                              resident_mb([naive], device))
    return result


def _tf32_enabled(device: torch.device) -> bool:
    """Whether float32 convolutions may use TF32 here (cuDNN's default on recent GPUs; never on a CPU)."""
    return device.type == "cuda" and bool(torch.backends.cudnn.allow_tf32)


def set_tf32(enabled: bool) -> None:
    """TF32 for cuDNN convolutions and cuBLAS matrix products (off: exact float32, the equality check)."""
    torch.backends.cudnn.allow_tf32 = enabled
    torch.backends.cuda.matmul.allow_tf32 = enabled


def study_estimate(config: TrainConfig, images_per_s: float, evaluation: dict[str, Any] | None) -> dict[str, Any]:
    """One backbone's 15-category, 200-epoch MVTec AD sweep from the fast figures measured here: sweep.py's
    estimate with the measured throughput and the official category sizes."""
    studied = [TrainConfig(data_root="", category=category, backbone=config.backbone, image_size=config.image_size,
                           batch_size=config.batch_size, epochs=SWEEP_EPOCHS) for category in MVTEC_CATEGORIES]
    estimate = sweep.estimate_sweep(studied, throughput=sweep.Throughput(images_per_s, "measured here"),
                                    epochs_done=lambda _: 0, train_images=sweep.official_train_images)
    images, train_s = estimate.images // SWEEP_EPOCHS, estimate.total_s
    test_images = sum(good + defect for _, good, defect in OFFICIAL_COUNTS.values())
    eval_s = None if evaluation is None else evaluation["fast"]["total_s"] * test_images / evaluation["images"]
    return {"train_images_per_epoch": images, "epochs": SWEEP_EPOCHS, "train_s": train_s, "eval_s": eval_s,
            "total_s": train_s + (eval_s or 0.0),
            "image_size": config.image_size,
            "basis": "fast training images/s at this image_size and fast evaluation time measured here "
                     "(at the evaluation's size); "
                     "validation-loss passes not included"}


def bench_backbone(backbone: str, data: BenchData, eval_data: BenchData, device: torch.device,
                   args: argparse.Namespace, parts: set[str]) -> dict[str, Any]:
    """Every selected section for one backbone; ``eval_data`` at the evaluation benchmark's size."""
    config = TrainConfig(data_root="", category=EVAL_CATEGORY, backbone=backbone, pretrained=False,
                         image_size=int(data.train_images.shape[-1]), batch_size=args.batch_size,
                         channels_last=args.channels_last, amp=args.amp or Amp.AUTO.value, compile=bool(args.compile))
    fast = FastPath.resolve(config, device)
    recipe.seed_everything(0)  # as train.py: seeds, and cuDNN autotuning (the input size is fixed)
    model = build_model(backbone, pretrained=False).to(device)
    naive = naive_model(model)
    fast.place(model, device)
    result: dict[str, Any] = {"fast_path": fast.as_dict()}
    if "train" in parts:
        result["train"] = train_section(model, naive, config, fast, data, device, args)
    if "inference" in parts:
        result["inference"] = inference_section(model, naive, fast, data, device, args)
    if "eval" in parts:
        result["evaluation"] = evaluation_section(model, naive, fast, eval_data, device)
    if "train" in parts:
        result["sweep_estimate"] = study_estimate(config, result["train"]["fast"]["images_per_s"],
                                                  result.get("evaluation"))
    return result


# ---------------------------------------------------------------------------------------------- report

def check_targets(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """The speed targets that this run's settings can check, each with its measured value."""
    checks = []
    cuda = payload["machine"]["device"] == "cuda"
    size = payload["settings"]["image_size"]
    for backbone, figures in payload["backbones"].items():
        train_figures, evaluation = figures.get("train"), figures.get("evaluation")
        if train_figures and not cuda and size == 128:
            checks.append({"target": f"{backbone}: CPU training step fast/naive >= {CPU_TRAIN_RATIO_TARGET}x at 128 px",
                           "value": train_figures["ratio"], "met": train_figures["ratio"] >= CPU_TRAIN_RATIO_TARGET})
        if train_figures and cuda and size == 256 and backbone in CUDA_TRAIN_TARGETS:
            value = train_figures["fast"]["images_per_s"]
            checks.append({"target": f"{backbone}: CUDA training >= {CUDA_TRAIN_TARGETS[backbone]:.0f} images/s "
                                     f"at 256 px", "value": value, "met": value >= CUDA_TRAIN_TARGETS[backbone]})
        if evaluation:
            forward_share = evaluation["fast"]["forward_s"] / evaluation["fast"]["total_s"]
            for key, what in (("ratio_total", "whole evaluation"), ("ratio_without_forward",
                                                                    "evaluation without the network forward")):
                checks.append({"target": f"{backbone}: {what} fast/naive >= {EVAL_RATIO_TARGET:.0f}x "
                                         f"({evaluation['images']} images at {evaluation['image_size']} px)",
                               "value": evaluation[key], "met": evaluation[key] >= EVAL_RATIO_TARGET})
            checks[-2]["note"] = (f"the network forward, the same work in both paths, is {forward_share:.0%} of the "
                                  f"fast evaluation here")
            checks.append({"target": f"{backbone}: identical metrics (<= {EQUAL_TOLERANCE:g})",
                           "value": evaluation["identical_metrics"], "met": evaluation["identical_metrics"]})
            if evaluation.get("precision", "float32") != "float32" or evaluation.get("tf32"):
                checks[-1]["note"] = "the fast path's network did not run in exact float32 (bf16 or TF32): rerun " \
                                     "with --parts eval --no-tf32 for the equality check"
            if cuda and evaluation["image_size"] == 256:
                value = evaluation["fast"]["total_s"]
                checks.append({"target": f"{backbone}: CUDA evaluation of a category < {CUDA_EVAL_TARGET_S:.0f} s",
                               "value": value, "met": value < CUDA_EVAL_TARGET_S})
        if cuda and size == 256 and "sweep_estimate" in figures:
            value = figures["sweep_estimate"]["total_s"]
            checks.append({"target": f"{backbone}: 15-category 200-epoch sweep < 30 min", "value": value,
                           "met": value < CUDA_SWEEP_TARGET_S})
    return checks


def _row(label: str, fast: float, naive: float, ratio: float, unit: str) -> str:
    return f"  {label:<44}{fast:>12.4g}{naive:>12.4g}{ratio:>9.2f}x  {unit}"


def format_report(payload: dict[str, Any]) -> str:
    """The readable table printed at the end."""
    machine, settings = payload["machine"], payload["settings"]
    where = machine.get("gpu") or f"{machine['cpu']} ({machine['cpu_cores']} cores)"
    load = payload["load_average"]
    lines = [f"RD4AD bench on {machine['device']}: {where}, torch {payload['versions']['torch']}, "
             f"{machine['torch_threads']} thread(s), {settings['image_size']} px, training batch "
             f"{settings['batch_size']}, best of {settings['rounds']} alternating rounds",
             f"load average (1 min) {load['start'][0]:.2f} at start, {load['end'][0]:.2f} at end",
             "random teachers (--no-pretrained implied): speed does not depend on the weights",
             f"  {'':<44}{'fast':>12}{'naive':>12}{'speed-up':>10}"]
    for backbone, figures in payload["backbones"].items():
        lines.append(f"{backbone}  (fast path: {figures['fast_path']})")
        if "train" in figures:
            t = figures["train"]
            lines.append(_row("training images/s", t["fast"]["images_per_s"], t["naive"]["images_per_s"],
                              t["ratio"], "img/s"))
            lines.append(f"  {'  ops dispatched per fast step (casts)':<44}{t['fast']['ops_per_step']:>12.0f}"
                         f"  ({t['fast']['casts_per_step']:.0f} casts; torch.profiler)")
            lines.append(_row("training peak memory MB", t["fast"]["peak_memory_mb"], t["naive"]["peak_memory_mb"],
                              t["naive"]["peak_memory_mb"] / max(t["fast"]["peak_memory_mb"], 1e-9), "MB"))
        if "inference" in figures:
            for key, entry in figures["inference"].items():
                if key == "batch_1":
                    lines.append(_row("inference ms/image, batch 1", entry["fast"]["ms_per_image"],
                                      entry["naive"]["ms_per_image"], entry["ratio"], "ms"))
                else:
                    lines.append(_row(f"inference images/s, {key.replace('_', ' ')}", entry["fast"]["images_per_s"],
                                      entry["naive"]["images_per_s"], entry["ratio"], "img/s"))
                    lines.append(_row(f"inference peak memory MB, {key.replace('_', ' ')}",
                                      entry["fast"]["peak_memory_mb"], entry["naive"]["peak_memory_mb"],
                                      entry["naive"]["peak_memory_mb"] / max(entry["fast"]["peak_memory_mb"], 1e-9),
                                      "MB"))
        if "evaluation" in figures:
            e = figures["evaluation"]
            f, n = e["fast"], e["naive"]
            what = f"{e['images']} images at {e['image_size']} px"
            lines.append(_row(f"evaluation of {what}, s", f["total_s"], n["total_s"], e["ratio_total"], "s"))
            lines.append(_row("  of which the network forward, s", f["forward_s"], n["forward_s"],
                              n["forward_s"] / f["forward_s"], "s"))
            lines.append(_row("  the rest (maps, blur, metrics), s", f["rest_s"], n["rest_s"],
                              e["ratio_without_forward"], "s"))
            lines.append(_row("evaluation peak memory MB", f["peak_memory_mb"], n["peak_memory_mb"],
                              n["peak_memory_mb"] / max(f["peak_memory_mb"], 1e-9), "MB"))
            m = e["metrics"]
            lines.append(f"  metrics (fast | naive | diff): image AUROC {m['image_auroc']['fast']:.6f} | "
                         f"{m['image_auroc']['naive']:.6f} | {m['image_auroc']['abs_diff']:.1e}; pixel AUROC "
                         f"{m['pixel_auroc']['fast']:.6f} | {m['pixel_auroc']['naive']:.6f} | "
                         f"{m['pixel_auroc']['abs_diff']:.1e}; AUPRO (exact) {m['aupro']['fast']:.6f} | "
                         f"{m['aupro']['naive']:.6f} | {m['aupro']['abs_diff']:.1e}")
            lines.append(f"  naive 200-threshold AUPRO {m['aupro_200_thresholds']['naive']:.6f} "
                         f"({m['aupro_200_thresholds']['minus_exact']:+.2e} from the exact one); max map difference "
                         f"{e['max_abs_map_diff']:.1e}; identical metrics: {e['identical_metrics']} "
                         f"(fast network in {e['precision']}{', TF32 allowed' if e['tf32'] else ''})")
            if "bf16_eval" in e:
                b = e["bf16_eval"]
                relative = "n/a" if b["max_map_diff_of_range"] is None else f"{b['max_map_diff_of_range']:.2%}"
                lines.append(f"  --eval-amp bf16: {b['times']['total_s']:.3g} s ({b['speedup']:.2f}x float32's speed); "
                             + "; ".join(f"{name.replace('_', ' ')} {v['change']:+.1e}" for name, v in
                                         b["metrics"].items())
                             + f"; max map difference {b['max_abs_map_diff']:.1e} ({relative} of the map range)")
        if "sweep_estimate" in figures:
            s = figures["sweep_estimate"]
            lines.append(f"  sweep estimate (15 MVTec AD categories, {s['epochs']} epochs, {s['image_size']} px): "
                         f"{sweep.format_duration(s['total_s'])}")
    lines.append("targets:")
    for check in payload["targets"]:
        value = "" if isinstance(check["value"], bool) else f": {check['value']:.4g}"
        note = f" ({check['note']})" if "note" in check else ""
        lines.append(f"  [{'met' if check['met'] else 'MISSED'}] {check['target']}{value}{note}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- CLI

PARTS = ("train", "inference", "eval")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbones", default="resnet50,convnext_tiny", help="comma list, or 'all'")
    parser.add_argument("--image-size", type=int, help="default 128 on CPU, 256 on CUDA")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, help="CPU intra-op threads (default: torch's, one per core); "
                                                    "on a shared 2-core machine 1 is steadier")
    parser.add_argument("--out", default="bench.json", help="where to write the figures (default bench.json)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)} (default all)")
    parser.add_argument("--batch-size", type=int, default=16, help="training batch (default 16, the recipe's)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per path; the best counts (default 3)")
    parser.add_argument("--warmup", type=int, help="untimed rounds first (default 1 on CPU, 2 on CUDA)")
    parser.add_argument("--steps", type=int, help="training steps and batch-32 batches per round; batch-1 "
                                                  "inference runs 4x as many images (default 1 on CPU, 10 on CUDA)")
    parser.add_argument("--eval-image-size", type=int, default=256,
                        help="size of the evaluation benchmark (default 256: a 167-image category at 256 px is "
                             "a whole MVTec-sized category, on CPU as on CUDA)")
    parser.add_argument("--eval-images", type=int, default=167, help="test images of the evaluated category "
                                                                     "(167 by default: an MVTec AD category's size)")
    parser.add_argument("--no-tf32", action="store_true",
                        help="CUDA: TF32 off for convolutions and matrix products (exact float32: the check that the "
                             "fast and naive evaluations give identical metrics)")
    sweep.add_fast_path_arguments(parser)


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    size = args.image_size or (256 if device.type == "cuda" else 128)
    validate_image_size(size)
    validate_image_size(args.eval_image_size, "--eval-image-size")
    backbones = parse_backbones(args.backbones)
    if args.eval_images < INFERENCE_BATCH:
        raise RDError(f"--eval-images {args.eval_images}: expected at least {INFERENCE_BATCH} (the inference batch)")
    parts = set(sweep.parse_list(args.parts, "--parts"))
    if not parts <= set(PARTS):
        raise RDError(f"--parts {args.parts!r}: expected a comma list of {', '.join(PARTS)}")
    args.warmup = args.warmup if args.warmup is not None else (2 if device.type == "cuda" else 1)
    args.steps = args.steps or (10 if device.type == "cuda" else 1)
    if args.no_tf32:
        set_tf32(False)
    load_start = os.getloadavg()
    results: dict[str, Any] = {}
    payload: dict[str, Any] = {
        "machine": describe_hardware(device),
        "versions": library_versions(),
        "settings": {"image_size": size, "eval_image_size": args.eval_image_size, "batch_size": args.batch_size,
                     "rounds": args.rounds, "warmup": args.warmup,
                     "steps_per_round": args.steps, "eval_images": args.eval_images, "parts": sorted(parts),
                     "pretrained": False, "threads": torch.get_num_threads(), "eval_category": EVAL_CATEGORY,
                     "tf32": _tf32_enabled(device)},
        "notes": ["random teachers: speed does not depend on the weights",
                  "ratios are speed-ups of the fast path (naive time / fast time); each figure is the best of "
                  "alternating rounds",
                  "peak memory: per path, measured around that path alone (CUDA: max allocated, its peak reset "
                  "there; CPU: process RSS sampled every 2 ms), less the other path's models and optimiser "
                  "state resident meanwhile; on CPU it includes the interpreter and libraries",
                  f"timed regions meet no first call of a batch shape: the fast evaluation first scores one batch "
                  f"of each size it meets ({EVAL_BATCH} and the last, partial one), untimed; training and inference "
                  f"rounds repeat the same shapes after --warmup untimed rounds",
                  f"training feed as train.py's: {TRAIN_STEPS_PER_EPOCH} whole batches per epoch, the epoch's "
                  f"indices copied to the device once",
                  "ops per step: every aten op dispatched (nested ones included), casts = aten::_to_copy"],
        "backbones": results,
    }
    with tempfile.TemporaryDirectory(prefix="rd4ad_bench_") as root:
        generate(root, categories=2, image_size=max(size, args.eval_image_size),
                 n_train=TRAIN_STEPS_PER_EPOCH * args.batch_size * 10 // 9 + 8,  # 10 % are held out for validation
                 n_test=args.eval_images, seed=0)
        data = load_data(root, size)
        eval_data = data if args.eval_image_size == size else load_data(root, args.eval_image_size)
        for backbone in backbones:
            print(f"bench {backbone} on {device}: {size} px, evaluation at {args.eval_image_size} px ...", flush=True)
            results[backbone] = bench_backbone(backbone, data, eval_data, device, args, parts)
            _write(payload, load_start, args.out)  # after each backbone: an interrupted run keeps what it measured
    _write(payload, load_start, args.out)
    print(format_report(payload))
    print(f"written: {args.out}")
    return 0


def _write(payload: dict[str, Any], load_start: tuple[float, float, float], out: str) -> None:
    payload["load_average"] = {"start": list(load_start), "end": list(os.getloadavg())}
    payload["targets"] = check_targets(payload)
    runs.atomic_write_json(out, payload)

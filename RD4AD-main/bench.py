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
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

import metrics
import recipe
import reference_metrics
import runs
import sweep
from backbones import build_model, parse_backbones
from bench_report import EQUAL_TOLERANCE, EVAL_RATIO_TARGET, category_evaluation, check_targets, format_report
from categories import MVTEC_CATEGORIES, OFFICIAL_COUNTS
from dataset import MVTecDataset
from errors import RDError
from evaluate import pin_for, score_images
from rd_model import ReverseDistillation, image_scores, validate_image_size
from recipe import Amp, FastPath, TrainConfig
from reference_pipeline import host_batch, naive_maps, naive_model, naive_train_step
from synth import generate
from toolchain import check_compile_toolchain
from system_info import describe_hardware, library_versions, resolve_device, synchronize
from storage import measure_write_speed
from timing import ForwardTimer, Measure, PeakMemory, alternate, count_ops, resident_mb, warm_up_batch_sizes

__all__ = ["BF16_METRICS_NOTE", "EQUAL_TOLERANCE", "EVAL_CATEGORY", "EVAL_RATIO_TARGET", "BenchData", "EpochFeed",
           "add_arguments", "bench_backbone", "bf16_evaluation", "check_targets", "evaluation_section", "format_report",
           "load_data", "run", "set_tf32", "study_estimate"]

EVAL_CATEGORY = "synth_object"  # RGB, the second category synth writes
NAIVE_AUPRO_THRESHOLDS = 200
INFERENCE_BATCH = 32
EVAL_BATCH = 16  # main.py test's default scoring batch
TRAIN_STEPS_PER_EPOCH = 8  # training images generated: this many whole batches, so an epoch has several steps
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
    """Training images/s, fast vs naive, alternating rounds (fast: ``args.steps`` steps, naive: ``args.naive_steps``);
    ops and casts per fast step. Under ``--compile`` the compiled step alternates with the eager one instead (same
    model, one process), after the first compiled step, whose time (compilation included) is ``compile_s``."""
    model.train()
    naive.train()
    optimizer = recipe.make_optimizer(model, config)
    step = recipe.compiled_train_step() if fast.compile else recipe.train_step
    # whole batches only (as most steps of a real epoch): every step then does the same work; several per epoch,
    # so that, as in train.py, the epoch's indices go to the device once for several steps
    usable = min(len(data.train_images) // config.batch_size, TRAIN_STEPS_PER_EPOCH) * config.batch_size
    if not usable:
        raise RDError(f"--batch-size {config.batch_size}: larger than the {len(data.train_images)} training images")
    feed = EpochFeed(data.train_images[:usable].to(device), config.batch_size, config.seed, device)

    def fast_step(run_step: Callable[..., Any] = step) -> None:
        run_step(model, optimizer, feed.next(fast), fast, device)

    def rounds_of(run_step: Callable[..., Any]) -> Callable[[], None]:
        def run_round() -> None:
            for _ in range(args.steps):
                fast_step(run_step)
        return run_round

    result: dict[str, Any] = {"batch_size": config.batch_size, "steps_per_epoch": usable // config.batch_size}
    if fast.compile:
        graphs = compile_counters()
        synchronize(device)
        started = time.perf_counter()
        fast_step()  # the first call compiles
        synchronize(device)
        result["compile_s"] = time.perf_counter() - started
        result["graphs_compiled"] = compile_counters() - graphs
        paths = {"fast": rounds_of(step), "eager": rounds_of(recipe.train_step)}
        work: int | dict[str, int] = args.steps * config.batch_size
        resident = None
    else:  # the naive path's optimiser and batch sampler: made only where it is measured (not under --compile)
        naive_optimizer = torch.optim.Adam(naive.trainable_modules().parameters(), lr=config.lr,
                                           betas=(config.beta1, config.beta2))
        generator = torch.Generator().manual_seed(0)

        def naive_round() -> None:
            for _ in range(args.naive_steps):
                indices = torch.randperm(usable, generator=generator)[:config.batch_size]
                naive_train_step(naive, naive_optimizer, data.train_images, indices, device)

        paths = {"fast": rounds_of(step), "naive": naive_round}
        work = {"fast": args.steps * config.batch_size, "naive": args.naive_steps * config.batch_size}
        resident = {"fast": lambda: resident_mb([naive, naive_optimizer], device),
                    "naive": lambda: resident_mb([model, optimizer, feed.images], device)}
    graphs = compile_counters()
    measured = alternate(paths, args.rounds, args.warmup, work, device, "train", resident)
    speeds = {name: _speed(m) for name, m in measured.items()}
    result["fast"] = measured["fast"].as_dict() | {"images_per_s": speeds["fast"]} | count_ops(fast_step, device)
    other = "eager" if fast.compile else "naive"
    result[other] = measured[other].as_dict() | {"images_per_s": speeds[other]}
    result["ratio"] = speeds["fast"] / speeds[other]
    if fast.compile:  # the timed rounds (whole batches) and the counted steps must reuse the first step's graphs
        result["graphs_compiled_after_first_step"] = compile_counters() - graphs
    return result


def compile_counters() -> int:
    """Graphs dynamo has compiled in this process so far (its own counter, whatever the backend)."""
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def inference_section(model: ReverseDistillation, naive: ReverseDistillation, fast: FastPath,
                      data: BenchData, device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    """Anomaly maps at batch 1 (ms/image) and at batch 32 (images/s), fast (at the scoring precision) vs naive;
    the naive rounds run ``args.naive_steps`` batches (and 4x as many single images), the fast ones ``args.steps``."""
    model.eval()
    naive.eval()
    images = data.test_images
    big = INFERENCE_BATCH
    singles = min(4 * args.steps, len(images))
    naive_singles_count = min(4 * args.naive_steps, len(images))
    on_device = images.to(device)
    scoring = fast.scoring()

    def fast_maps(start: int, count: int) -> None:
        with scoring.autocast(device):
            model.anomaly_map(scoring.prepare(on_device[start:start + count]))

    def fast_singles() -> None:
        for i in range(singles):
            fast_maps(i, 1)

    def naive_singles() -> None:
        for i in range(naive_singles_count):
            naive_maps(naive, host_batch(images, [i]), grad=True)

    def fast_big() -> None:
        for _ in range(args.steps):
            fast_maps(0, big)

    def naive_big() -> None:
        for _ in range(args.naive_steps):
            naive_maps(naive, host_batch(images, range(big)), grad=True)

    resident = {"fast": lambda: resident_mb([naive], device), "naive": lambda: resident_mb([model, on_device], device)}
    batch1 = alternate({"fast": fast_singles, "naive": naive_singles}, args.rounds, args.warmup,
                       {"fast": singles, "naive": naive_singles_count}, device, "inference, batch 1", resident)
    batch32 = alternate({"fast": fast_big, "naive": naive_big}, args.rounds, args.warmup,
                        {"fast": args.steps * big, "naive": args.naive_steps * big}, device,
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
                    float32_maps: torch.Tensor, float32_times: dict[str, float], exclude_mb: float = 0.0
                    ) -> dict[str, Any]:
    """The same evaluation with ``--eval-amp bf16``: its time and speed-up over float32, and how far it moves the maps
    (largest difference, also relative to the float32 maps' range). Its metric change is not reported: on a random
    teacher and a student trained a few steps it says nothing about a detector (cuda_check.sh measures it on a
    trained run, at a stated loss)."""
    bf16 = replace(fast, eval_autocast_dtype=torch.bfloat16)
    model.keep_teacher_in(torch.bfloat16)
    _warm_up_scoring(model, bf16, data, device)
    _, maps, times = fast_evaluation(model, bf16, data, device, exclude_mb)
    largest = float((maps.double() - float32_maps.double()).abs().max())
    span = float(float32_maps.max() - float32_maps.min())
    return {"times": times, "speedup": float32_times["total_s"] / times["total_s"], "max_abs_map_diff": largest,
            "max_map_diff_of_range": largest / span if span > 0 else None, "metric_change": BF16_METRICS_NOTE}


BF16_METRICS_NOTE = ("not reported here: a random teacher and a student trained a few steps are no detector; "
                     "benchmarks/cuda_check.sh measures it with `main.py test` on a trained run, at a stated loss")


def compared_subset(data: BenchData, count: int | None) -> BenchData:
    """``count`` test images spread evenly over the category (good and defective alike: the test split lists them by
    defect type), or all of them: what the naive reference path evaluates beside the fast one."""
    n = len(data.test_images)
    if count is None or count >= n:
        return data
    index = np.linspace(0, n - 1, count).round().astype(np.int64)
    return BenchData(data.train_images, data.test_images[index], data.test_masks[index], data.labels[index])


def evaluation_section(model: ReverseDistillation, naive: ReverseDistillation, fast: FastPath,
                       data: BenchData, device: torch.device, bf16: bool = True, naive_images: int | None = None
                       ) -> dict[str, Any]:
    """The fast evaluation of the whole category (what ``main.py test`` does, at its precision: float32 by default),
    then, on ``naive_images`` of its images (all by default), fast and naive side by side (same weights): times
    split into network forward and the rest, and the metrics of both; then the whole category again in bf16."""
    naive.load_state_dict(model.state_dict())  # the naive copy trained apart: give it the same weights
    model.eval()
    naive.eval()
    data = replace(data, test_images=pin_for(data.test_images, device))  # pinned once (on CUDA), untimed
    compared = compared_subset(data, naive_images)
    for evaluated in {id(data): data, id(compared): compared}.values():
        _warm_up_scoring(model, fast, evaluated, device)  # untimed warm-up of both paths
    naive_maps(naive, host_batch(data.test_images, [0]), grad=False)
    whole_values, whole_maps, whole_times = fast_evaluation(model, fast, data, device, resident_mb([naive], device))
    fast_values, fast_maps, fast_times = (whole_values, whole_maps, whole_times) if compared is data else \
        fast_evaluation(model, fast, compared, device, resident_mb([naive], device))
    naive_values, naive_maps_, naive_times = naive_evaluation(naive, compared, device, resident_mb([model], device))
    exact_of_naive = metrics.aupro(naive_maps_, compared.test_masks.numpy())  # untimed: the equality check
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
        "images": len(compared.test_images), "image_size": int(data.test_images.shape[-1]),
        "precision": str(fast.scoring().autocast_dtype or torch.float32).removeprefix("torch."),
        "tf32": _tf32_enabled(device),
        "fast": fast_times, "naive": naive_times,
        "ratio_total": naive_times["total_s"] / fast_times["total_s"],
        "ratio_without_forward": naive_times["rest_s"] / fast_times["rest_s"],
        "metrics": values, "identical_metrics": identical, "tolerance": EQUAL_TOLERANCE,
        "max_abs_map_diff": float(np.abs(fast_maps.double().numpy() - naive_maps_).max()),
    }
    if compared is not data:
        result["whole_category"] = {"images": len(data.test_images), "fast": whole_times, "metrics": whole_values,
                                    "note": f"the naive path evaluated {len(compared.test_images)} of these images "
                                            f"(evenly spread) beside the fast one: the ratios and metrics above"}
    if bf16 and fast.scoring().autocast_dtype is None:
        result["bf16_eval"] = bf16_evaluation(model, fast, data, device, whole_maps, whole_times,
                                              resident_mb([naive], device))
    return result


def _tf32_enabled(device: torch.device) -> bool:
    """Whether float32 convolutions may use TF32 here (cuDNN's default on recent GPUs; never on a CPU)."""
    return device.type == "cuda" and bool(torch.backends.cudnn.allow_tf32)


def set_tf32(enabled: bool) -> None:
    """TF32 for cuDNN convolutions and cuBLAS matrix products (off: exact float32, the equality check)."""
    torch.backends.cudnn.allow_tf32 = enabled
    torch.backends.cuda.matmul.allow_tf32 = enabled


def study_estimate(config: TrainConfig, images_per_s: float, scoring_images_per_s: float | None,
                   evaluation: dict[str, Any] | None, write_bytes_per_s: float) -> dict[str, Any]:
    """One backbone's 15-category, 200-epoch MVTec AD sweep from the fast figures measured here: sweep.py's
    estimate (training steps, validation passes, checkpoint writes) with the measured throughput, scoring speed and
    write speed and the official category sizes, plus the evaluation of the 15 test sets."""
    studied = [TrainConfig(data_root="", category=category, backbone=config.backbone, image_size=config.image_size,
                           batch_size=config.batch_size, epochs=SWEEP_EPOCHS) for category in MVTEC_CATEGORIES]
    throughput = sweep.Throughput(images_per_s, "measured here", scoring_images_per_s=scoring_images_per_s)
    estimate = sweep.estimate_sweep(studied, throughput=throughput, epochs_done=lambda _: 0,
                                    train_images=sweep.official_train_images, val_images=sweep.official_val_images,
                                    write_bytes_per_s=write_bytes_per_s)
    test_images = sum(good + defect for _, good, defect in OFFICIAL_COUNTS.values())
    eval_s = None
    if evaluation is not None:
        images, seconds = category_evaluation(evaluation)
        eval_s = seconds * test_images / images
    return {"train_images_per_epoch": estimate.images // SWEEP_EPOCHS, "epochs": SWEEP_EPOCHS,
            "train_s": estimate.train_s, "validation_s": estimate.validation_s, "checkpoint_s": estimate.checkpoint_s,
            "checkpoint_bytes": estimate.checkpoint_bytes, "write_bytes_per_s": write_bytes_per_s, "eval_s": eval_s,
            "total_s": estimate.total_s + (eval_s or 0.0), "image_size": config.image_size,
            "basis": "fast training images/s at this image_size, scoring images/s (batch 32) and the evaluation "
                     "time measured here (at the evaluation's size); each epoch's validation loss and the "
                     f"synthetic validation every {config.val_every} epochs; checkpoints every "
                     f"{config.checkpoint_every} epochs with Adam's moments at the write speed measured (synced) "
                     "beside the output"}


def bench_backbone(backbone: str, data: BenchData, eval_data: BenchData, device: torch.device,
                   args: argparse.Namespace, parts: set[str], save: Callable[[dict[str, Any]], None] = lambda _: None
                   ) -> dict[str, Any]:
    """Every selected section for one backbone; ``eval_data`` at the evaluation benchmark's size; ``save(result)``
    after each section, so that an interrupted run keeps what it measured."""
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
        save(result)
    if "inference" in parts:
        result["inference"] = inference_section(model, naive, fast, data, device, args)
        save(result)
    if "eval" in parts:
        result["evaluation"] = evaluation_section(model, naive, fast, eval_data, device, not args.no_tf32,
                                                  args.naive_images)
        save(result)
    if "train" in parts:
        scoring = result.get("inference", {}).get(f"batch_{INFERENCE_BATCH}", {}).get("fast", {}).get("images_per_s")
        if scoring is None and "evaluation" in result and eval_data.test_images.shape[-1] == config.image_size:
            images, seconds = category_evaluation(result["evaluation"])
            scoring = images / seconds
        result["sweep_estimate"] = study_estimate(config, result["train"]["fast"]["images_per_s"], scoring,
                                                  result.get("evaluation"), args.write_bytes_per_s)
        save(result)
    return result


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
                             "fast and naive evaluations give identical metrics; no bf16 evaluation then)")
    parser.add_argument("--naive-steps", type=int,
                        help="training steps and batch-32 batches per round of the naive reference path, which is "
                             "timed per image (default: --steps); a reference that costs seconds, not minutes")
    parser.add_argument("--naive-images", type=int,
                        help="test images (evenly spread) the naive evaluation scores beside the fast one; the fast "
                             "one also evaluates the whole category (default: all of them)")
    parser.add_argument("--data-root",
                        help=f"an existing synthetic data root (main.py synth; its {EVAL_CATEGORY} category) instead "
                             f"of one generated into a temporary folder: generated once, shared by several runs")
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
    args.naive_steps = args.naive_steps or args.steps
    if args.naive_images is not None and args.naive_images < 2:
        raise RDError(f"--naive-images {args.naive_images}: expected at least 2 (a good and a defective image)")
    if args.compile:
        check_compile_toolchain(device.type)
    if args.no_tf32:
        set_tf32(False)
    args.write_bytes_per_s = measure_write_speed(Path(args.out).absolute().parent) if "train" in parts else None
    load_start = os.getloadavg()
    results: dict[str, Any] = {}
    payload: dict[str, Any] = {
        "machine": describe_hardware(device),
        "versions": library_versions(),
        "settings": {"image_size": size, "eval_image_size": args.eval_image_size, "batch_size": args.batch_size,
                     "rounds": args.rounds, "warmup": args.warmup,
                     "steps_per_round": args.steps, "naive_steps_per_round": args.naive_steps,
                     "naive_images": args.naive_images, "eval_images": args.eval_images, "parts": sorted(parts),
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
    with tempfile.TemporaryDirectory(prefix="rd4ad_bench_") as scratch:
        root = args.data_root or scratch
        if not args.data_root:
            # normal training images: enough for the whole batches of one benchmark epoch once 10 % are held out for
            # validation, and a partial last batch in a training run of the same data (benchmarks/cuda_check.sh too)
            generate(root, categories=2, image_size=max(size, args.eval_image_size),
                     n_train=TRAIN_STEPS_PER_EPOCH * args.batch_size * 10 // 9 + 8, n_test=args.eval_images, seed=0)
        data = load_data(root, size)
        eval_data = data if args.eval_image_size == size else load_data(root, args.eval_image_size)
        if len(eval_data.test_images) < INFERENCE_BATCH:
            raise RDError(f"--data-root {root}: {len(eval_data.test_images)} test images of {EVAL_CATEGORY}; expected "
                          f"at least {INFERENCE_BATCH} (the inference batch)")
        payload["settings"]["eval_images"] = len(eval_data.test_images)
        for backbone in backbones:
            print(f"bench {backbone} on {device}: {size} px, evaluation at {args.eval_image_size} px ...", flush=True)

            def save(result: dict[str, Any], name: str = backbone) -> None:  # after each section
                results[name] = result
                _write(payload, load_start, args.out)

            results[backbone] = bench_backbone(backbone, data, eval_data, device, args, parts, save)
    _write(payload, load_start, args.out)
    print(format_report(payload))
    print(f"written: {args.out}")
    return 0


def _write(payload: dict[str, Any], load_start: tuple[float, float, float], out: str) -> None:
    payload["load_average"] = {"start": list(load_start), "end": list(os.getloadavg())}
    payload["targets"] = check_targets(payload)
    runs.atomic_write_json(out, payload)

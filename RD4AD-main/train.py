"""Training: one shared, backbone-agnostic recipe (RD4AD_FACTS section 2), resumable runs and sweeps.

``main.py train --data-root ROOT --categories all --backbones resnet50,convnext_tiny --seeds 0,1,2``
trains one model per (backbone, category, seed) with the same data, split and recipe. The training
images live on the device as uint8 and are normalised there (no DataLoader workers), the batch order
of each epoch is a function of (seed, epoch) alone, and checkpoints hold the optimiser state, so a
killed run resumed from its last checkpoint ends exactly where an uninterrupted one does.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import pickle
import random
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

import distributed
import runs
from backbones import build_model, get_backbone, parse_backbones, teacher_weights_id
from checkpoint import load_into, read_checkpoint, save_checkpoint
from dataset import MVTecDataset, list_categories, normalize, validate_image_size
from errors import CheckpointError, RDError, WeightsError
from rd_model import ReverseDistillation, distillation_loss
from system_info import describe_hardware, library_versions, peak_memory_mb, reset_peak_memory, synchronize

HISTORY_COLUMNS = ("epoch", "loss", "loss_scale1", "loss_scale2", "loss_scale3", "val_loss",
                   "epoch_time_s", "images_per_s", "peak_memory_mb")
# Fields that must match for a run to be resumed (the others, e.g. epochs or device, may change).
IDENTITY_FIELDS = ("backbone", "category", "seed", "data_root", "image_size", "batch_size", "lr", "beta1",
                   "beta2", "val_fraction", "split_seed", "pretrained", "teacher_weights_path", "model_knobs")


@dataclass
class TrainConfig:
    """Everything that defines one run; written to its config.json."""

    data_root: str
    category: str
    backbone: str = "wide_resnet50_2"
    seed: int = 0
    image_size: int = 256
    epochs: int = 200
    batch_size: int = 16
    lr: float = 0.005
    beta1: float = 0.5
    beta2: float = 0.999
    val_fraction: float = 0.1
    split_seed: int = 0
    pretrained: bool = True
    teacher_weights_path: str | None = None
    fallback_random_teacher: bool = False  # the demo only: warn loudly and go on without weights
    checkpoint_every: int = 10
    keep_optimizer: bool = False  # keep Adam's state in the final checkpoint too (3x its size) to extend the run later
    device: str = "auto"
    deterministic: bool = False
    channels_last: bool | None = None  # None: on (measured faster on CUDA and on this CPU, see FastPath)
    amp: str = "auto"  # "auto" (bf16 on CUDA, off on CPU where bf16 is slower), "bf16" or "off"
    compile: bool = False
    sync_bn: bool = False  # data-parallel only: BatchNorm statistics over the global batch (see distributed.py)
    results: str = "results"
    checkpoints: str = "checkpoints"
    model_knobs: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> runs.RunKey:
        return runs.RunKey(self.backbone, self.category, self.seed)

    @property
    def run_dir(self) -> Path:
        return runs.run_dir(self.results, self.key)

    @property
    def checkpoint_path(self) -> Path:
        return runs.checkpoint_path(self.checkpoints, self.key)


@dataclass
class FastPath:
    """The speed settings a run actually used (resolved from the config for its device)."""

    channels_last: bool
    autocast_dtype: torch.dtype | None
    compile: bool

    @classmethod
    def resolve(cls, config: TrainConfig, device: torch.device) -> "FastPath":
        if config.amp not in ("auto", "bf16", "off"):
            raise RDError(f"--amp {config.amp!r}: expected auto, bf16 or off")
        bf16 = config.amp == "bf16" or (config.amp == "auto" and device.type == "cuda")
        # channels_last by default on CPU too: measured on the 2-core EPYC, fast steps alternating with and
        # without it (batch 16, best of 3): training at 128 px +1..6% (resnet50, convnext_tiny, WRN-50-2, 1 and
        # 2 threads), scoring at 256 px +9..15% for the ResNets and +1..3% for convnext_tiny; never slower.
        channels_last = True if config.channels_last is None else config.channels_last
        return cls(channels_last, torch.bfloat16 if bf16 else None, config.compile)

    def autocast(self, device: torch.device):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device.type, dtype=self.autocast_dtype)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 batch on the device -> normalised float input in the chosen memory format."""
        images = normalize(images)
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def as_dict(self) -> dict[str, Any]:
        return {"channels_last": self.channels_last, "compile": self.compile,
                "autocast": str(self.autocast_dtype).removeprefix("torch.") if self.autocast_dtype else "off"}


class NonFiniteLoss(RDError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch; optionally force deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest kernels


def epoch_batches(n_images: int, batch_size: int, seed: int, epoch: int, rank: int = 0,
                  world_size: int = 1) -> Iterator[torch.Tensor]:
    """Index batches of one epoch, shuffled as a function of (seed, epoch) only.

    With ``world_size`` > 1 each global batch of ``batch_size`` is split evenly over the ranks.
    A last batch of a single image is dropped (BatchNorm cannot train on one sample).
    """
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n_images, generator=generator)
    for start in range(0, n_images, batch_size):
        batch = order[start:start + batch_size]
        if len(batch) < max(2, world_size):
            continue
        yield batch.tensor_split(world_size)[rank]


def make_optimizer(model: ReverseDistillation, config: TrainConfig) -> torch.optim.Adam:
    """Adam over bottleneck + student; the fused kernel (same update) is ~8x faster per step on CPU."""
    return torch.optim.Adam(model.trainable_modules().parameters(), lr=config.lr,
                            betas=(config.beta1, config.beta2), weight_decay=0.0, fused=True)


def build_run_model(config: TrainConfig) -> tuple[ReverseDistillation, str, str | None]:
    """The run's model, its teacher-weights id, and a warning when the demo fell back to a random teacher."""
    torch.manual_seed(config.seed)  # the student's initial weights depend on the seed only
    try:
        model = build_model(config.backbone, pretrained=config.pretrained,
                            weights_path=config.teacher_weights_path, **config.model_knobs)
        return model, teacher_weights_id(config.backbone, config.pretrained, config.teacher_weights_path), None
    except WeightsError as error:
        if not config.fallback_random_teacher:
            raise
        warning = (f"PRETRAINED TEACHER WEIGHTS UNAVAILABLE for {config.backbone}: training on a RANDOM "
                   f"teacher; these results say nothing about RD with ImageNet features. ({error})")
        print(f"\n{'!' * 100}\nWARNING: {warning}\n{'!' * 100}\n", flush=True)
        torch.manual_seed(config.seed)
        return build_model(config.backbone, pretrained=False, **config.model_knobs), "random", warning


def _check_resumable(config: TrainConfig) -> None:
    """A run directory written by another configuration must not be silently continued."""
    path = config.run_dir / runs.CONFIG_FILE
    if not path.is_file():
        return
    saved = runs.read_json(path)
    current = asdict(config)
    changed = [f"{name}: {saved.get(name)!r} -> {current[name]!r}" for name in IDENTITY_FIELDS
               if saved.get(name) != current[name]]
    if changed:
        raise CheckpointError(f"{path} belongs to a run with other settings ({'; '.join(changed)}); pass --restart "
                              f"to start it over, or use another --results/--checkpoints folder")


def _write_history(path: Path, history: list[dict[str, float]]) -> None:
    lines = [",".join(HISTORY_COLUMNS)]
    lines += [",".join(_fmt(row[c]) for c in HISTORY_COLUMNS) for row in history]
    runs.atomic_write_text(path, "\n".join(lines) + "\n")


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else f"{value:.6g}"


@torch.no_grad()
def validation_loss(model: ReverseDistillation, images: torch.Tensor, fast: FastPath, device: torch.device,
                    batch_size: int) -> float:
    """Mean distillation loss on the held-out normal images, in eval mode (the over-fitting watch)."""
    model.eval()
    total = 0.0
    for start in range(0, len(images), batch_size):
        batch = fast.prepare(images[start:start + batch_size].to(device, non_blocking=True))
        with fast.autocast(device):
            teacher, student = model(batch)
        loss, _ = distillation_loss([t.float() for t in teacher], [s.float() for s in student])
        total += loss.item() * len(batch)
    return total / max(len(images), 1)


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: torch.Tensor,
                fast: FastPath, device: torch.device, loss_scale: float = 1.0
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One optimiser step; ``loss_scale`` weights a rank's share of an unevenly split global batch."""
    with fast.autocast(device):
        teacher, student = model(batch)
    loss, per_scale = distillation_loss([t.float() for t in teacher], [s.float() for s in student])
    optimizer.zero_grad(set_to_none=True)
    (loss * loss_scale if loss_scale != 1.0 else loss).backward()
    optimizer.step()
    return loss.detach(), [s.detach() for s in per_scale]


def train_run(config: TrainConfig, restart: bool = False, quiet: bool = False) -> Path:
    """Train one (backbone, category, seed) to ``config.epochs``, resuming from its last checkpoint.

    Returns the run directory. Skips a run whose checkpoint already reached ``config.epochs``.
    In a torchrun group (``distributed.process_group``) every rank trains its share of each global
    batch and only rank 0 writes files and shows progress.
    """
    validate_image_size(config.image_size)
    get_backbone(config.backbone)
    world = distributed.current()
    quiet = quiet or not world.is_main
    if world.enabled and config.batch_size % world.size:
        raise RDError(f"--batch-size {config.batch_size} is the global batch and must be divisible by the "
                      f"{world.size} processes")
    if restart and world.is_main:
        config.checkpoint_path.unlink(missing_ok=True)
        (config.run_dir / runs.CONFIG_FILE).unlink(missing_ok=True)
    distributed.barrier()
    _check_resumable(config)

    # the data first: a wrong path fails before a large model is built
    train_set = MVTecDataset(config.data_root, config.category, "train", config.image_size,
                             config.val_fraction, config.split_seed)
    val_set = MVTecDataset(config.data_root, config.category, "val", config.image_size,
                           config.val_fraction, config.split_seed)
    device = distributed.device_for(config.device)
    seed_everything(config.seed, config.deterministic)
    fast = FastPath.resolve(config, device)
    model, weights_id, teacher_warning = build_run_model(config)
    model.to(device)
    if fast.channels_last:
        model.to(memory_format=torch.channels_last)
    net = distributed.DistributedRD(model, device, config.sync_bn) if world.enabled else model
    optimizer = make_optimizer(model, config)

    start_epoch, history = 0, []
    if config.checkpoint_path.is_file():
        payload = read_checkpoint(config.checkpoint_path, config.backbone, config.image_size)
        load_into(model, payload)
        state = payload["training_state"]
        start_epoch, history = int(state["epoch"]), list(state["history"])
        if start_epoch >= config.epochs:
            if not quiet:
                print(f"{config.key}: complete ({start_epoch} epochs), skipped")
            return config.run_dir
        if "optimizer" not in state:
            raise CheckpointError(
                f"{config.checkpoint_path} is a finished {start_epoch}-epoch run saved without its optimiser state "
                f"(final checkpoints drop it: 3x smaller); --epochs {config.epochs} cannot continue it exactly. "
                f"Pass --restart to train it from scratch, and --keep-optimizer to keep runs extendable")
        optimizer.load_state_dict(state["optimizer"])
        if world.is_main:
            print(f"{config.key}: resuming after epoch {start_epoch} of {config.epochs}")

    train_images = train_set.uint8_images().to(device)  # uint8 on the device: ~1/4 of float32
    val_images = val_set.uint8_images()
    if len(train_images) < 2:
        raise RDError(f"{config.data_root}/{config.category}: {len(train_images)} training image(s) after the "
                      f"validation split; at least 2 are needed")

    record = asdict(config) | {
        "teacher_weights": weights_id,
        "teacher_warning": teacher_warning,
        "fast_path": fast.as_dict(),
        "val_names": train_set.val_names,
        "n_train": len(train_set),
        "n_val": len(val_set),
        "versions": library_versions(),
        "hardware": describe_hardware(device),
        "world_size": world.size,
    }
    if world.is_main:
        runs.atomic_write_json(config.run_dir / runs.CONFIG_FILE, record)

    step = torch.compile(_train_step) if fast.compile else _train_step
    batches_per_epoch = sum(1 for _ in epoch_batches(len(train_images), config.batch_size, config.seed, 0,
                                                     world.rank, world.size))
    progress = tqdm(total=(config.epochs - start_epoch) * batches_per_epoch, desc=str(config.key), unit="batch",
                    disable=quiet, dynamic_ncols=True)
    for epoch in range(start_epoch + 1, config.epochs + 1):
        net.train()
        reset_peak_memory(device)
        started, shown, seen = time.perf_counter(), 0.0, 0
        sums = torch.zeros(4, device=device)  # loss and the 3 scales, image-weighted
        shares = list(epoch_batches(len(train_images), config.batch_size, config.seed, epoch, world.rank, world.size))
        whole = epoch_batches(len(train_images), config.batch_size, config.seed, epoch)  # the same order
        global_sizes = [len(b) for b, _ in zip(whole, shares)]
        # one host-to-device copy per epoch: a copy per step would wait for the GPU every step
        on_device = torch.cat(shares).to(device).split([len(b) for b in shares]) if shares else []
        for indices, global_size in zip(on_device, global_sizes):
            batch = fast.prepare(train_images[indices])
            loss, per_scale = step(net, optimizer, batch, fast, device,
                                   loss_scale=world.size * len(indices) / global_size)
            sums += torch.stack([loss, *per_scale]) * len(indices)
            seen += len(indices)
            progress.update()
            if not quiet and time.perf_counter() - shown > 0.5:  # .item() waits for the device: not every step
                shown = time.perf_counter()
                progress.set_postfix(epoch=epoch, loss=f"{loss.item():.4f}",
                                     img_s=f"{world.size * seen / (shown - started):.1f}")
        totals = distributed.all_reduce_sum(torch.cat([sums, sums.new_tensor([seen])]))
        seen = int(totals[4])
        means = (totals[:4] / seen).tolist()
        if not all(math.isfinite(v) for v in means):
            progress.close()
            raise NonFiniteLoss(f"{config.key}: the loss became {means[0]} in epoch {epoch}; stopped. The last good "
                                f"checkpoint {config.checkpoint_path} is kept (try a lower --lr or --amp off)")
        elapsed = time.perf_counter() - started
        if not world.is_main:  # rank 0 alone validates and writes; the others go on to the next epoch
            continue
        history.append({
            "epoch": epoch, "loss": means[0], "loss_scale1": means[1], "loss_scale2": means[2],
            "loss_scale3": means[3], "epoch_time_s": elapsed, "images_per_s": seen / elapsed,
            "val_loss": validation_loss(model, val_images, fast, device, config.batch_size),
            "peak_memory_mb": peak_memory_mb(device),
        })
        _write_history(config.run_dir / runs.HISTORY_FILE, history)
        if epoch % config.checkpoint_every == 0 or epoch == config.epochs:
            # Adam's moments (2x the weights) are needed only to continue: a finished run drops them
            training_state = {"epoch": epoch, "history": history}
            if epoch < config.epochs or config.keep_optimizer:
                training_state["optimizer"] = optimizer.state_dict()
            save_checkpoint(config.checkpoint_path, model, backbone=config.backbone, image_size=config.image_size,
                            teacher_weights=weights_id, model_knobs=config.model_knobs, training_state=training_state)
    progress.close()
    distributed.barrier()  # the checkpoint is complete before any rank moves on
    return config.run_dir


# ---------------------------------------------------------------------------------------------- CLI

def parse_list(text: str, flag: str, kind: type = str) -> list:
    try:
        return [kind(item.strip()) for item in text.split(",") if item.strip()]
    except ValueError:
        raise RDError(f"{flag} {text!r}: expected a comma-separated list of {kind.__name__}") from None


def resolve_categories(data_root: str, text: str) -> list[str]:
    """``all`` (every category found under the root) or a comma list."""
    return list_categories(data_root) if text == "all" else parse_list(text, "--categories")


SWEEP_DEFAULTS = {"backbones": "wide_resnet50_2", "categories": "all", "seeds": "0"}


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by train and test: which runs, and where their files live."""
    parser.add_argument("--backbones", help="comma list of backbones, or 'all' (train default: wide_resnet50_2)")
    parser.add_argument("--categories", help="comma list of categories, or 'all' (default)")
    parser.add_argument("--seeds", help="comma list of seeds (train default: 0)")
    parser.add_argument("--results", help="folder of run directories (default results/)")
    parser.add_argument("--checkpoints", help="folder of checkpoints (default checkpoints/)")
    parser.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every flag defaults to None: the value then comes from --config, else from TrainConfig's default."""
    d = TrainConfig(data_root="", category="")
    parser.add_argument("--data-root", help="MVTec-format data root (required, here or in --config)")
    add_common_arguments(parser)
    parser.add_argument("--config", help="JSON file of TrainConfig fields (and backbones/categories/seeds); "
                                         "flags given on the command line win")
    parser.add_argument("--image-size", type=int, help=f"input size in px (default {d.image_size})")
    parser.add_argument("--epochs", type=int, help=f"default {d.epochs}")
    parser.add_argument("--batch-size", type=int, help=f"default {d.batch_size}")
    parser.add_argument("--lr", type=float, help=f"Adam learning rate (default {d.lr})")
    parser.add_argument("--beta1", type=float, help=f"default {d.beta1}")
    parser.add_argument("--beta2", type=float, help=f"default {d.beta2}")
    parser.add_argument("--val-fraction", type=float, help=f"share of train/good held out (default {d.val_fraction})")
    parser.add_argument("--split-seed", type=int, help="seed of the validation split, shared by all backbones "
                                                       f"and seeds (default {d.split_seed})")
    parser.add_argument("--no-pretrained", dest="pretrained", action="store_false", default=None,
                        help="train on a RANDOM teacher on purpose (tests, smoke runs)")
    parser.add_argument("--teacher-weights", dest="teacher_weights_path", help="local teacher state dict .pth")
    parser.add_argument("--fallback-random-teacher", action="store_true", default=None,
                        help="demo only: if pretrained weights cannot be loaded, warn loudly and go on")
    parser.add_argument("--checkpoint-every", type=int, help=f"epochs between checkpoints (default {d.checkpoint_every})")
    parser.add_argument("--keep-optimizer", action="store_true", default=None,
                        help="keep the optimiser state in the final checkpoint (3x larger) so that the run can be "
                             "extended with more --epochs later; unfinished checkpoints always keep it")
    parser.add_argument("--deterministic", action="store_true", default=None,
                        help="deterministic kernels (slower on CUDA)")
    parser.add_argument("--channels-last", dest="channels_last", action="store_true", default=None,
                        help="channels_last memory format (default: on)")
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    parser.add_argument("--amp", choices=["auto", "bf16", "off"], help="bf16 autocast (default auto: CUDA only)")
    parser.add_argument("--compile", action="store_true", default=None, help="torch.compile the training step")
    parser.add_argument("--sync-bn", action="store_true", default=None,
                        help="torchrun only: BatchNorm statistics over the whole global batch (see distributed.py)")
    parser.add_argument("--model-knobs", type=json.loads,
                        help='JSON of builder knobs, e.g. \'{"embed_dim": 768}\' for ConvNeXt')
    parser.add_argument("--restart", action="store_true", help="discard existing checkpoints and start over")
    parser.add_argument("--resume", action="store_true",
                        help="require an existing checkpoint to continue (runs resume by default anyway)")
    parser.add_argument("--no-eta", action="store_true", help="do not estimate the sweep's time before it starts")
    parser.add_argument("--bench-json", default="bench.json",
                        help="a `main.py bench` output to take the throughput from for the estimate, when no "
                             "history of the same setting exists (default bench.json, if present)")


def _read_config_file(path: str) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise RDError(f"--config {file}: no such file")
    try:
        values = json.loads(file.read_text())
    except json.JSONDecodeError as error:
        raise RDError(f"--config {file}: not valid JSON ({error})") from None
    known = {f.name for f in fields(TrainConfig)} | set(SWEEP_DEFAULTS)
    unknown = sorted(set(values) - known - {"category", "backbone", "seed"})
    if not isinstance(values, dict) or unknown:
        raise RDError(f"--config {file}: unknown keys {unknown}; known: {sorted(known)}")
    return {k: ",".join(map(str, v)) if isinstance(v, list) and k in SWEEP_DEFAULTS else v for k, v in values.items()}


def configs_from_args(args: argparse.Namespace) -> list[TrainConfig]:
    """One TrainConfig per (backbone, category, seed): defaults <- --config file <- command-line flags."""
    values: dict[str, Any] = dict(SWEEP_DEFAULTS)
    if args.config:
        values.update(_read_config_file(args.config))
    values.update({k: v for k, v in vars(args).items() if v is not None})
    if not values.get("data_root"):
        raise RDError("--data-root is required (the MVTec-format data root), on the command line or in --config")
    categories = resolve_categories(values["data_root"], str(values["categories"]))
    per_run = {f.name: values[f.name] for f in fields(TrainConfig)
               if f.name in values and f.name not in ("category", "backbone", "seed")}
    return [TrainConfig(category=category, backbone=backbone, seed=seed, **per_run)
            for backbone in parse_backbones(str(values["backbones"]))
            for category in categories
            for seed in parse_list(str(values["seeds"]), "--seeds", int)]


def run(args: argparse.Namespace) -> int:
    """Train every selected run in turn; under torchrun, each run data-parallel over the group."""
    configs = configs_from_args(args)
    if not configs:
        raise RDError("no run selected: --categories, --backbones and --seeds must each name at least one")
    if args.resume:
        missing = [str(c.checkpoint_path) for c in configs if not c.checkpoint_path.is_file()]
        if missing:
            raise CheckpointError(f"--resume: no checkpoint to resume at {', '.join(missing[:3])}")
    with distributed.process_group(configs[0].device) as world:
        if world.is_main:
            print(f"training {len(configs)} run(s): " + ", ".join(str(c.key) for c in configs)
                  + (f" on {world.size} processes" if world.enabled else ""))
            if not args.no_eta and not args.restart:
                print(estimate_sweep(configs, args.bench_json), flush=True)
        distributed.barrier()
        for config in configs:
            train_run(config, restart=args.restart)
    return 0


# ---------------------------------------------------------------------------------------------- sweep estimate

def format_duration(seconds: float) -> str:
    """``1d 3h 05m``, ``2h 07m`` or ``4m 09s``."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours}h {minutes:02d}m"
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"


@dataclass
class Throughput:
    images_per_s: float
    basis: str
    world_size: int = 1  # processes that shared the work when it was measured


def checkpoint_epoch(path: Path) -> int:
    """Epochs trained in a checkpoint (0 when there is none), memory-mapped: the weights are not read."""
    if not path.is_file():
        return 0
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (OSError, RuntimeError, ValueError, pickle.UnpicklingError):
        return 0
    return int(payload.get("training_state", {}).get("epoch", 0))


def _same_setting(recorded: dict[str, Any], config: TrainConfig, hardware: dict[str, Any]) -> bool:
    """Same backbone size, batch and fast path on the same kind of hardware: the throughput carries over."""
    keys = ("device", "gpu") if hardware["device"] == "cuda" else ("device", "cpu", "torch_threads")
    same_hardware = all(recorded.get("hardware", {}).get(k) == hardware.get(k) for k in keys)
    return same_hardware and all(recorded.get(k) == getattr(config, k) for k in ("backbone", "image_size",
                                                                                  "batch_size", "model_knobs"))


def _throughput_from_history(config: TrainConfig, hardware: dict[str, Any], fast: dict[str, Any],
                             world_size: int) -> Throughput | None:
    """Mean images/s of the epochs after the first in an earlier run of the same setting and world size."""
    for config_file in sorted(Path(config.results).glob(f"{config.backbone}/*/seed*/{runs.CONFIG_FILE}")):
        recorded = runs.read_json(config_file)
        if not _same_setting(recorded, config, hardware) or recorded.get("fast_path") != fast \
                or recorded.get("world_size", 1) != world_size:
            continue
        speed = steady_images_per_s(config_file.with_name(runs.HISTORY_FILE))
        if speed is not None:
            return Throughput(speed, f"history of {config_file.parent}", world_size)
    return None


def steady_images_per_s(history_file: Path) -> float | None:
    """Mean training images/s of a history.csv without its first epoch (warm-up), when there are others."""
    if not history_file.is_file():
        return None
    with open(history_file, encoding="utf-8") as handle:
        speeds = [float(row["images_per_s"]) for row in csv.DictReader(handle)]
    steady = speeds[1:] or speeds
    return sum(steady) / len(steady) if steady else None


def _throughput_from_bench(config: TrainConfig, hardware: dict[str, Any], fast: dict[str, Any],
                           bench_file: str | None) -> Throughput | None:
    """The fast training images/s of a `main.py bench` output taken with the same setting."""
    if not bench_file or not Path(bench_file).is_file():
        return None
    try:
        bench = runs.read_json(bench_file)
        figures = bench["backbones"][config.backbone]
        recorded = {"hardware": bench["machine"], "backbone": config.backbone, "model_knobs": {},
                    "image_size": bench["settings"]["image_size"], "batch_size": bench["settings"]["batch_size"]}
        if not _same_setting(recorded, config, hardware) or figures["fast_path"] != fast:
            return None
        return Throughput(float(figures["train"]["fast"]["images_per_s"]), f"{bench_file} (main.py bench)")
    except (KeyError, TypeError, ValueError, json.JSONDecodeError):
        return None


def _measure_throughput(config: TrainConfig, device: torch.device, steps: int = 2) -> Throughput:
    """Time a few training steps of the run's model on random images (a random teacher: the speed does not
    depend on the weights), after one warm-up step; the best step counts."""
    fast = FastPath.resolve(config, device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        model = build_model(config.backbone, pretrained=False, **config.model_knobs).to(device)
        if fast.channels_last:
            model.to(memory_format=torch.channels_last)
        model.train()
        optimizer = make_optimizer(model, config)
        images = torch.randint(0, 256, (config.batch_size, 3, config.image_size, config.image_size),
                               dtype=torch.uint8, device=device)
        times = []
        for _ in tqdm(range(1 + steps), desc="timing steps for the estimate", unit="step", leave=False):
            synchronize(device)
            started = time.perf_counter()
            _train_step(model, optimizer, fast.prepare(images), fast, device)
            synchronize(device)
            times.append(time.perf_counter() - started)
    del model, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return Throughput(config.batch_size / min(times[1:]), f"{steps} timed training steps after a warm-up")


@dataclass
class SweepEstimate:
    """Estimated training time of the runs still to train; ``str()`` gives the printed summary."""

    total_s: float
    runs_to_train: int
    runs_complete: int
    lines: list[str]

    def __str__(self) -> str:
        if not self.runs_to_train:
            return "sweep estimate: every run is complete; nothing to train"
        return "\n".join([f"sweep estimate: {format_duration(self.total_s)} of training for {self.runs_to_train} "
                          f"run(s) to train ({self.runs_complete} complete); training steps only (the per-epoch "
                          f"validation pass and `main.py test` come on top)", *self.lines])


def estimate_sweep(configs: list[TrainConfig], bench_file: str | None = "bench.json") -> SweepEstimate:
    """The estimated training time of the runs still to train: images left x epochs / throughput.

    The throughput of each (backbone, size, batch) comes from, in this order: an earlier run's
    history.csv with the same setting and hardware, a bench.json of the same, or a few timed steps.
    """
    world = distributed.current()
    device = distributed.device_for(configs[0].device)
    hardware = describe_hardware(device)
    train_sizes: dict[tuple, int] = {}
    groups: dict[tuple, list[int]] = {}  # (backbone, size, batch, knobs) -> images left per run
    representative: dict[tuple, TrainConfig] = {}
    for config in configs:
        done = checkpoint_epoch(config.checkpoint_path)
        if done >= config.epochs:
            continue
        data_key = (config.data_root, config.category, config.val_fraction, config.split_seed)
        if data_key not in train_sizes:
            train_sizes[data_key] = len(MVTecDataset(config.data_root, config.category, "train", config.image_size,
                                                     config.val_fraction, config.split_seed))
        key = (config.backbone, config.image_size, config.batch_size, json.dumps(config.model_knobs, sort_keys=True))
        groups.setdefault(key, []).append((config.epochs - done) * train_sizes[data_key])
        representative.setdefault(key, config)
    lines, total = [], 0.0
    for key, images in groups.items():
        config = representative[key]
        fast = FastPath.resolve(config, device).as_dict()
        speed = (_throughput_from_history(config, hardware, fast, world.size)
                 or _throughput_from_bench(config, hardware, fast, bench_file)
                 or _measure_throughput(config, device))
        scale = world.size / speed.world_size
        seconds = sum(images) / (speed.images_per_s * scale)
        total += seconds
        scaling = f" x {world.size} processes (assumed linear)" if scale != 1 else ""
        lines.append(f"  {config.backbone} at {config.image_size} px, batch {config.batch_size}: {len(images)} run(s), "
                     f"{sum(images):,} images x epochs at {speed.images_per_s:.1f} img/s{scaling} -> "
                     f"{format_duration(seconds)} (throughput from {speed.basis})")
    to_train = sum(len(images) for images in groups.values())
    return SweepEstimate(total, to_train, len(configs) - to_train, lines)

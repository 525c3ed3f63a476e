"""What one run is: its settings (``TrainConfig``), the speed settings it resolves to on its device
(``FastPath``), seeding, the batch order, the optimiser and one training step.

The recipe is RD4AD's and is shared by every backbone (docs/reproduction.md#2-training-recipe): Adam
over bottleneck + student, lr 0.005, betas (0.5, 0.999), batch 16, the last epoch's weights. The
training loop that runs it lives in train.py; evaluation, the benchmark and the launcher build the
same runs from here.
"""
from __future__ import annotations

import os
import random
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

import runs
from backbones import build_model, teacher_weights_id
from dataset import AnomalyDataset, normalize
from errors import CheckpointError, RDError, WeightsError
from rd_model import ReverseDistillation, distillation_loss

__all__ = ["IDENTITY_FIELDS", "SELECTIONS", "SELECT_LAST", "SELECT_SYNTHETIC_VAL", "Amp", "FastPath",
           "NonFiniteLoss", "TrainConfig", "build_run_model", "check_resumable", "epoch_batches", "make_optimizer",
           "open_split", "seed_everything", "train_step"]

# Fields that must match for a run to be resumed (the others, e.g. epochs or device, may change).
IDENTITY_FIELDS = ("backbone", "category", "seed", "data_root", "data_format", "split_csv", "image_size",
                   "batch_size", "lr", "beta1", "beta2", "val_fraction", "split_seed", "pretrained",
                   "teacher_weights_path", "model_knobs", "selection")

# Which epoch is a run's model (``--selection``): the last (the paper's protocol) or the best on the
# synthetic-anomaly validation set (synthval.py; no test image involved).
SELECT_LAST = "last"
SELECT_SYNTHETIC_VAL = "synthetic-val"
SELECTIONS = (SELECT_LAST, SELECT_SYNTHETIC_VAL)


class Amp(str, Enum):
    """Autocast mode: ``auto`` is bf16 on CUDA and off on CPU (where bf16 is slower)."""

    AUTO = "auto"
    BF16 = "bf16"
    OFF = "off"


@dataclass
class TrainConfig:
    """Everything that defines one run; written to its config.json."""

    data_root: str
    category: str
    data_format: str = "auto"  # "auto", "mvtec", "visa" or "csv" (dataset.py)
    split_csv: str | None = None  # the split file of the "csv" format (VisA's is found in its root)
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
    amp: str = Amp.AUTO.value  # an Amp value
    compile: bool = False
    sync_bn: bool = False  # data-parallel only: BatchNorm statistics over the global batch (see distributed.py)
    results: str = "results"
    checkpoints: str = "checkpoints"
    model_knobs: dict[str, Any] = field(default_factory=dict)
    selection: str = SELECT_LAST  # a SELECTIONS value: which epoch's weights `main.py test` evaluates
    val_every: int = 10  # epochs between synthetic-validation passes (synthval.py); the last epoch always has one

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "TrainConfig":
        """The config of a run from its config.json (which also holds fields that are not settings)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in names})

    @property
    def key(self) -> runs.RunKey:
        return runs.RunKey(self.backbone, self.category, self.seed)

    @property
    def run_dir(self) -> Path:
        return runs.run_dir(self.results, self.key)

    @property
    def checkpoint_path(self) -> Path:
        return runs.checkpoint_path(self.checkpoints, self.key)

    @property
    def best_checkpoint_path(self) -> Path:
        return runs.best_checkpoint_path(self.checkpoints, self.key)

    @property
    def selected_checkpoint_path(self) -> Path:
        """The checkpoint holding the run's model under its ``selection``."""
        return self.best_checkpoint_path if self.selection == SELECT_SYNTHETIC_VAL else self.checkpoint_path


def open_split(config: TrainConfig, split: str) -> AnomalyDataset:
    """The run's ``train``, ``val`` or ``test`` split: same data, validation hold-out and size for every backbone."""
    return AnomalyDataset(config.data_root, config.category, split, config.image_size, config.val_fraction,
                          config.split_seed, data_format=config.data_format, split_csv=config.split_csv)


@dataclass
class FastPath:
    """The speed settings a run actually used (resolved from the config for its device)."""

    channels_last: bool
    autocast_dtype: torch.dtype | None
    compile: bool

    @classmethod
    def resolve(cls, config: TrainConfig, device: torch.device) -> "FastPath":
        try:
            amp = Amp(config.amp)
        except ValueError:
            raise RDError(f"--amp {config.amp!r}: expected {', '.join(m.value for m in Amp)}") from None
        bf16 = amp is Amp.BF16 or (amp is Amp.AUTO and device.type == "cuda")
        # channels_last by default on CPU too: measured on the 2-core EPYC, fast steps alternating with and
        # without it (batch 16, best of 3): training at 128 px +1..6% (resnet50, convnext_tiny, WRN-50-2, 1 and
        # 2 threads), scoring at 256 px +9..15% for the ResNets and +1..3% for convnext_tiny; never slower.
        channels_last = True if config.channels_last is None else config.channels_last
        return cls(channels_last, torch.bfloat16 if bf16 else None, config.compile)

    def autocast(self, device: torch.device):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device.type, dtype=self.autocast_dtype)

    def place(self, model: nn.Module, device: torch.device) -> nn.Module:
        """Move ``model`` to ``device`` in the chosen memory format (in place; returned for chaining)."""
        model.to(device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

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


def check_resumable(config: TrainConfig) -> None:
    """A run directory written by another configuration must not be silently continued."""
    path = config.run_dir / runs.CONFIG_FILE
    if not path.is_file():
        return
    saved = runs.read_json(path)
    current, defaults = asdict(config), asdict(TrainConfig(data_root="", category=""))
    # a field the saved run predates had its default value then
    changed = [f"{name}: {saved.get(name, defaults[name])!r} -> {current[name]!r}" for name in IDENTITY_FIELDS
               if saved.get(name, defaults[name]) != current[name]]
    if changed:
        raise CheckpointError(f"{path} belongs to a run with other settings ({'; '.join(changed)}); pass --restart "
                              f"to start it over, or use another --results/--checkpoints folder")


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: torch.Tensor,
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

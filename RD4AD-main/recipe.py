"""What one run is: its settings (``TrainConfig``), the speed settings it resolves to on its device
(``FastPath``), seeding, the batch order, the optimiser and one training step.

The recipe is RD4AD's and is shared by every backbone (docs/reproduction.md#2-training-recipe): Adam
over bottleneck + student, lr 0.005, betas (0.5, 0.999), batch 16, the last epoch's weights. ``--method
rdpp`` trains RD++ instead (rdpp.py, docs/reproduction.md#11-rd-a-second-method): the projection gets its own Adam group
(``make_optimizer``) and each step its noisy pairs and losses (``rdpp_train_step``). The training loop that
runs it lives in train.py; evaluation, the benchmark and the launcher build the same runs from here.
"""
from __future__ import annotations

import os
import random
import re
from dataclasses import asdict, dataclass, field, fields, replace
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

import rdpp
import runs
from backbone_facts import DEFAULT_METHOD, METHODS
from backbones import build_model, check_knobs, get_backbone, teacher_weights_id
from categories import validate_category
from dataset import DATA_FORMATS, AnomalyDataset, normalize
from errors import CheckpointError, RDError, WeightsError
from rd_model import ReverseDistillation, distillation_loss, validate_image_size
from toolchain import COMPILE_BACKEND_ENV, compile_backend

__all__ = ["COMPILE_BACKEND_ENV", "IDENTITY_FIELDS", "SELECTIONS", "SELECT_LAST", "SELECT_SYNTHETIC_VAL", "Amp",
           "EvalAmp", "FastPath", "NonFiniteLoss", "TrainConfig", "build_run_model", "check_config",
           "check_resumable", "compiled_train_step", "device_batches", "epoch_batches", "make_optimizer",
           "open_split", "rdpp_train_step", "seed_everything", "train_step"]

# Fields that must match for a run to be resumed (the others, e.g. epochs or device, may change).
IDENTITY_FIELDS = ("backbone", "method", "category", "seed", "data_root", "data_format", "split_csv", "image_size",
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


class EvalAmp(str, Enum):
    """Autocast when scoring (test, predict, synthetic validation): float32 unless bf16 is asked for, because
    bf16 features perturb the small teacher-student differences the maps are made of."""

    OFF = "off"
    BF16 = "bf16"


@dataclass
class TrainConfig:
    """Everything that defines one run; written to its config.json."""

    data_root: str
    category: str
    data_format: str = "auto"  # "auto", "mvtec", "visa" or "csv" (dataset.py)
    split_csv: str | None = None  # the split file of the "csv" format (VisA's is found in its root)
    backbone: str = "wide_resnet50_2"
    method: str = DEFAULT_METHOD  # "rd" (RD4AD) or "rdpp" (RD++, rdpp.py): part of the run's identity and folder
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
    amp: str = Amp.AUTO.value  # an Amp value (training)
    eval_amp: str = "off"  # an EvalAmp value: scoring in float32 (TF32 convolutions allowed on CUDA) unless "bf16"
    compile: bool = False
    # data-parallel only: BatchNorm statistics over the global batch (distributed.py). None: on under torchrun
    # when the student has BatchNorm (N processes then train as one); False (--no-sync-bn): per-rank statistics
    sync_bn: bool | None = None
    results: str = "results"
    checkpoints: str = "checkpoints"
    model_knobs: dict[str, Any] = field(default_factory=dict)
    selection: str = SELECT_LAST  # a SELECTIONS value: which epoch's weights `main.py test` evaluates
    val_every: int = 10  # epochs between synthetic-validation passes (synthval.py); the last epoch always has one
    tuned_by: str | None = None  # the tune.csv whose choice this recipe is (set by `main.py tune`'s config files)
    # score the TEST set at every synthetic-validation epoch into selection_audit.csv (selection_audit.py): an
    # audit of the selector that nothing else reads; training, selection and tuning are the same without it
    audit_test: bool = False

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "TrainConfig":
        """The config of a run from its config.json (which also holds fields that are not settings)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in names})

    @property
    def key(self) -> runs.RunKey:
        return runs.RunKey(self.backbone, self.category, self.seed, self.method)

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


# field -> (whether a value is allowed, what is allowed)
_RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    # NumPy's seed range; torch's 64-bit generators then also take the batch order's seed * 1_000_003 + epoch
    "seed": (lambda v: 0 <= v < 2**32, "a whole number from 0 to 4294967295 (2**32 - 1)"),
    "split_seed": (lambda v: v >= 0, "at least 0"),
    "epochs": (lambda v: v >= 1, "at least 1"),
    "batch_size": (lambda v: v >= 2, "at least 2 (BatchNorm students cannot train on one image)"),
    "lr": (lambda v: v > 0, "more than 0"),
    "beta1": (lambda v: 0 <= v < 1, "at least 0 and below 1"),
    "beta2": (lambda v: 0 <= v < 1, "at least 0 and below 1"),
    "val_fraction": (lambda v: 0 < v < 1, "between 0 and 1, e.g. 0.1"),
    "checkpoint_every": (lambda v: v >= 1, "at least 1"),
    "val_every": (lambda v: v >= 1, "at least 1"),
}
_CHOICES: dict[str, tuple[str, ...]] = {"amp": tuple(m.value for m in Amp), "eval_amp": tuple(m.value for m in EvalAmp),
                                         "data_format": DATA_FORMATS, "method": tuple(METHODS)}


def _expected_type(annotation: str) -> tuple[type, ...]:
    """The JSON value types a TrainConfig field of this annotation accepts (bool is not an int here)."""
    kinds = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}
    accepted: tuple[type, ...] = ()
    for part in annotation.replace(" ", "").split("|"):
        accepted += kinds.get(part, (dict,) if part.startswith("dict") else ())
    return accepted + ((type(None),) if "None" in annotation else ())


def check_config(config: TrainConfig, origin: Callable[[str], str] = lambda name: f"field {name!r}") -> None:
    """Raise RDError for the first field of the wrong type or out of range, naming it as ``origin(name)``
    does (a flag, or a field of a config file), with the value and what is allowed."""
    for f in fields(TrainConfig):
        value = getattr(config, f.name)
        accepted = _expected_type(str(f.type))
        wrong_type = accepted and (not isinstance(value, accepted) or (isinstance(value, bool) and bool not in accepted))
        if wrong_type:
            words = {int: "a whole number", float: "a number", bool: "true or false", str: "text",
                     dict: "a JSON object", type(None): "null"}
            names = " or ".join(dict.fromkeys(words[t] for t in accepted if not (t is int and float in accepted)))
            raise RDError(f"{origin(f.name)} {value!r}: expected {names}")
        if f.name in _RANGES and value is not None and not _RANGES[f.name][0](value):
            raise RDError(f"{origin(f.name)} {value!r}: expected {_RANGES[f.name][1]}")
        if f.name in _CHOICES and value not in _CHOICES[f.name]:
            raise RDError(f"{origin(f.name)} {value!r}: expected one of {', '.join(_CHOICES[f.name])}")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", config.device):
        raise RDError(f"{origin('device')} {config.device!r}: expected auto, cpu, cuda or cuda:N")
    validate_image_size(config.image_size, origin("image_size"))
    validate_category(config.category)
    get_backbone(config.backbone)
    check_knobs(config.backbone, config.model_knobs)


def open_split(config: TrainConfig, split: str, val_names: list[str] | None = None) -> AnomalyDataset:
    """The run's ``train``, ``val`` or ``test`` split: same data, validation hold-out and size for every backbone
    (``val_names``: a hold-out recorded by the run instead of the rule's)."""
    return AnomalyDataset(config.data_root, config.category, split, config.image_size, config.val_fraction,
                          config.split_seed, data_format=config.data_format, split_csv=config.split_csv,
                          val_names=val_names)


@dataclass
class FastPath:
    """The speed settings a run actually used (resolved from the config for its device).

    ``autocast_dtype`` is the training precision, ``eval_autocast_dtype`` the scoring one (float32, i.e.
    None, unless ``--eval-amp bf16``); ``scoring()`` gives the settings ``evaluate.score_images`` runs with.
    """

    channels_last: bool
    autocast_dtype: torch.dtype | None
    compile: bool
    eval_autocast_dtype: torch.dtype | None = None

    @classmethod
    def resolve(cls, config: TrainConfig, device: torch.device) -> "FastPath":
        try:
            amp = Amp(config.amp)
        except ValueError:
            raise RDError(f"--amp {config.amp!r}: expected {', '.join(m.value for m in Amp)}") from None
        try:
            eval_amp = EvalAmp(config.eval_amp)
        except ValueError:
            raise RDError(f"--eval-amp {config.eval_amp!r}: expected {', '.join(m.value for m in EvalAmp)}") from None
        bf16 = amp is Amp.BF16 or (amp is Amp.AUTO and device.type == "cuda")
        # channels_last by default on CPU too: measured on the 2-core EPYC, fast steps alternating with and
        # without it (batch 16, best of 3): training at 128 px +1..6% (resnet50, convnext_tiny, WRN-50-2, 1 and
        # 2 threads), scoring at 256 px +9..15% for the ResNets and +1..3% for convnext_tiny; never slower.
        channels_last = True if config.channels_last is None else config.channels_last
        return cls(channels_last, torch.bfloat16 if bf16 else None, config.compile,
                   torch.bfloat16 if eval_amp is EvalAmp.BF16 else None)

    def scoring(self) -> "FastPath":
        """The settings of scoring: the evaluation precision for the network, nothing compiled."""
        return replace(self, autocast_dtype=self.eval_autocast_dtype, compile=False)

    def autocast(self, device: torch.device) -> torch.autocast:
        """The precision these settings run the network in, whatever the caller runs under: bf16 autocast,
        or autocast off (float32)."""
        if self.autocast_dtype is None:
            return torch.autocast(device.type, enabled=False)
        return torch.autocast(device.type, dtype=self.autocast_dtype)

    def place(self, model: nn.Module, device: torch.device) -> nn.Module:
        """Move ``model`` to ``device`` in the chosen memory format (in place; returned for chaining); an RD
        model also keeps its frozen teacher in each autocast dtype it will run under (cast once, here)."""
        model.to(device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        if isinstance(model, ReverseDistillation):
            for dtype in {self.autocast_dtype, self.eval_autocast_dtype} - {None}:
                model.keep_teacher_in(dtype)
        return model

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 batch on the device -> normalised float input in the chosen memory format."""
        images = normalize(images)
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def as_dict(self) -> dict[str, Any]:
        """The training speed settings (config.json's ``fast_path``; the scoring precision is ``eval_amp``)."""
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


def device_batches(n_images: int, batch_size: int, seed: int, epoch: int, device: torch.device, rank: int = 0,
                   world_size: int = 1) -> list[tuple[torch.Tensor, int]]:
    """This rank's index batches of one epoch (``epoch_batches``), already on ``device``, each with the size of
    its global batch. One host-to-device copy per epoch: a copy per step would wait for the GPU every step."""
    shares = list(epoch_batches(n_images, batch_size, seed, epoch, rank, world_size))
    whole = epoch_batches(n_images, batch_size, seed, epoch)  # the same order, undivided
    global_sizes = [len(batch) for batch, _ in zip(whole, shares)]
    if not shares:
        return []
    on_device = torch.cat(shares).to(device).split([len(batch) for batch in shares])
    return list(zip(on_device, global_sizes))


def make_optimizer(model: ReverseDistillation, config: TrainConfig) -> torch.optim.Adam:
    """Adam over bottleneck + student; the fused kernel (same update) is ~8x faster per step on CPU.

    The groups are the model's (``optimizer_groups``): an RD++ model's projection is a second group with RD++'s own
    lr and betas, the official code's second Adam, with the same per-parameter updates (Adam keeps no state across
    parameters)."""
    return torch.optim.Adam(model.optimizer_groups(), lr=config.lr, betas=(config.beta1, config.beta2),
                            weight_decay=0.0, fused=True)


def build_run_model(config: TrainConfig, announce: bool = True) -> tuple[ReverseDistillation, str, str | None]:
    """The run's model, its teacher-weights id, and a warning when the demo fell back to a random teacher
    (printed as a banner unless ``announce`` is off: the demo prints one for all its runs)."""
    torch.manual_seed(config.seed)  # the student's initial weights depend on the seed only
    try:
        model = build_model(config.backbone, pretrained=config.pretrained,
                            weights_path=config.teacher_weights_path, method=config.method, **config.model_knobs)
        return model, teacher_weights_id(config.backbone, config.pretrained, config.teacher_weights_path), None
    except WeightsError as error:
        if not config.fallback_random_teacher:
            raise
        warning = (f"PRETRAINED TEACHER WEIGHTS UNAVAILABLE for {config.backbone}: training on a RANDOM "
                   f"teacher; these results say nothing about RD with ImageNet features. ({error})")
        if announce:
            print(f"\n{'!' * 100}\nWARNING: {warning}\n{'!' * 100}\n", flush=True)
        torch.manual_seed(config.seed)
        return build_model(config.backbone, pretrained=False, method=config.method, **config.model_knobs), "random", \
            warning


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
    """One optimiser step; ``loss_scale`` weights a rank's share of an unevenly split global batch.

    The network runs under the training autocast; the loss is float32 with autocast off (rd_model).
    """
    with fast.autocast(device):
        teacher, student = model(batch)
    loss, per_scale = distillation_loss(teacher, student)
    optimizer.zero_grad(set_to_none=True)
    (loss * loss_scale if loss_scale != 1.0 else loss).backward()
    optimizer.step()
    return loss.detach(), [s.detach() for s in per_scale]


def rdpp_train_step(model: rdpp.RevisitedReverseDistillation, optimizer: torch.optim.Optimizer, batch: torch.Tensor,
                    noisy: torch.Tensor, shuffle: torch.Tensor, fast: FastPath, device: torch.device,
                    fresh: bool = True, update: bool = True) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One RD++ iteration (the official loop body): the network on the batch and its noisy copy under the training
    autocast, ``L_distill + 0.2 L_proj`` in float32 with autocast off, backward. The gradients are cleared first when
    ``fresh`` (the previous iteration stepped) and the optimiser steps when ``update`` (every
    ``rdpp.ACCUMULATION_STEPS`` batches), so gradients add up over the batches in between as in the official loop.
    Returns the loss and, detached, RD's three per-scale terms then ``rdpp.LOSS_TERMS``."""
    with fast.autocast(device):
        pair = model.projected_pair(batch, noisy)
    terms = rdpp.projection_losses(pair.teacher_noisy, pair.projected_noisy, pair.projected, shuffle)
    with fast.autocast(device):  # the official order: projection loss, then OCBE and student
        student = model.student(model.bottleneck(pair.projected))
    distill, per_scale = distillation_loss(pair.teacher, student)
    loss = distill + rdpp.PROJECTION_WEIGHT * terms["projection"]
    if fresh:
        optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if update:
        optimizer.step()
    logged = [*per_scale, distill, *(terms[name] for name in rdpp.LOSS_TERMS[1:])]
    return loss.detach(), [term.detach() for term in logged]


def compiled_train_step(step_function: Callable[..., tuple[torch.Tensor, list[torch.Tensor]]] = train_step
                        ) -> Callable[..., tuple[torch.Tensor, list[torch.Tensor]]]:
    """``train_step`` (or ``rdpp_train_step``) under torch.compile, compiled once per run: the batch dimension is
    marked dynamic, so the smaller last batch of an epoch reuses the graph instead of compiling a second one. In
    RD++'s step geomloss's Sinkhorn loop runs eagerly (``torch.compiler.disable``: its hundreds of iterations are
    not traced), the rest is compiled.

    Call it once per run, before the run's first step: it empties dynamo's caches first. Dynamo keeps its
    compiled entries on ``train_step``'s code object, shared by every ``torch.compile`` wrapper, and guards
    them on the identity of the model and optimiser; each run of a sweep brings new ones, so without this
    the previous runs' dead entries would count toward the recompile limit (8) and from the 9th run of a
    process on the step would silently run eagerly. Emptying is sound here: a finished run's entries can
    never match again (their model and optimiser are gone), nothing else in this program is compiled, and
    runs are sequential. Inductor's on-disk caches survive it, so an identical graph is not rebuilt.
    """
    torch._dynamo.reset()
    compiled = torch.compile(step_function, backend=compile_backend())

    def step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: torch.Tensor, *args: Any,
             **kwargs: Any) -> tuple[torch.Tensor, list[torch.Tensor]]:
        for tensor in (batch, *args):  # the batch (and RD++'s noisy batch and shuffle): per-image tensors
            if isinstance(tensor, torch.Tensor):
                torch._dynamo.maybe_mark_dynamic(tensor, 0)
        return compiled(model, optimizer, batch, *args, **kwargs)

    return step

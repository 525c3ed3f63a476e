"""Data-parallel training of one model over several processes (``torchrun --nproc-per-node N main.py train``).

torchrun starts one process per device and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``
and ``MASTER_PORT``. ``process_group`` joins the group those variables describe (NCCL on CUDA, gloo on
CPU; a plain ``python main.py train`` is a group of one and joins nothing), and each rank then uses
``cuda:LOCAL_RANK``. Only the trainable path (bottleneck + student) is wrapped in
DistributedDataParallel: the frozen teacher runs outside it, under ``no_grad``, and the RD model has
no unused parameters (the original's dead ``conv4``/``bn4`` is gone), so DDP needs no unused-parameter
search.

BatchNorm: with plain BatchNorm each rank normalises with the statistics of its own share of the
batch, so the ResNet student would train differently from one process on the whole batch (16/N images
per statistic). Under torchrun BatchNorm students therefore use statistics over the whole global batch
by default (``--no-sync-bn`` opts out; the choice is recorded in config.json as ``sync_bn``):
``GlobalBatchNorm``, two differentiable all-reduces per layer, on every device. It never waits for the
device (torch's ``SyncBatchNorm`` indexes its per-rank counts with a boolean mask, a host sync in every
layer of every step, and refuses to run on CPU). With it, N processes give the loss curve of one process
with the same global batch and seed. The ConvNeXt and Swin models use LayerNorm only and need nothing.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from errors import RDError
from rd_model import ReverseDistillation
from system_info import resolve_device

__all__ = ["DistributedRD", "GlobalBatchNorm", "World", "all_reduce_sum", "barrier", "convert_batchnorm", "current",
           "device_for", "env_world", "has_batchnorm", "process_group", "resolve_sync_bn"]


@dataclass(frozen=True)
class World:
    """This process's place in the group; ``World()`` is a single process."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world() -> World:
    """The group described by torchrun's environment variables (a single process when they are absent)."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise RDError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (they are set by torchrun)") from None
    if size < 1 or not 0 <= rank < size:
        raise RDError(f"RANK {rank} / WORLD_SIZE {size}: expected 0 <= RANK < WORLD_SIZE")
    return World(rank, size, local_rank)


def current() -> World:
    """The joined group, or a single process when none is joined."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), env_world().local_rank)


def device_for(name: str) -> torch.device:
    """The device a rank trains on: ``--device`` resolved, with CUDA pinned to ``cuda:LOCAL_RANK`` in a group."""
    device = resolve_device(name)
    world = current()
    if world.enabled and device.type == "cuda":
        return torch.device("cuda", world.local_rank)
    return device


@contextmanager
def process_group(device_name: str) -> Iterator[World]:
    """Join torchrun's group for the block (NCCL for CUDA devices, gloo for CPU) and leave it after."""
    world = env_world()
    if not world.enabled or dist.is_initialized():
        yield current()
        return
    if not dist.is_available():
        raise RDError("torch.distributed is not available in this torch build; run without torchrun")
    if resolve_device(device_name).type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", rank=world.rank, world_size=world.size, device_id=device)
    else:
        dist.init_process_group("gloo", rank=world.rank, world_size=world.size)
    try:
        yield world
        barrier()
    finally:
        dist.destroy_process_group()


def barrier() -> None:
    if current().enabled:
        dist.barrier()


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum over the ranks, in place (a no-op for a single process)."""
    if current().enabled:
        dist.all_reduce(tensor)
    return tensor


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) whose gradient is the all-reduced gradient: every rank's loss reaches every input."""

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:  # noqa: ANN001 (autograd context)
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: ANN001
        return _SumOverRanks.apply(grad)


class GlobalBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics span the global batch of all ranks, on any device.

    The per-channel sum and sum of squared deviations are all-reduced by an autograd-aware collective,
    so gradients flow through the global statistics as in one process (two-pass variance, as torch's
    CPU kernel). Statistics are computed in float32 at least (bf16 activations under autocast are
    upcast, as BatchNorm's kernels do) and nothing is read back to the host, so no step waits for the
    device. Outside training, or in a group of one, it is plain BatchNorm2d.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and current().enabled):
            return super().forward(x)
        self._check_input_dim(x)
        dims = [0, 2, 3]
        values = x.float() if x.dtype in (torch.bfloat16, torch.float16) else x
        local_count = values.new_full((1,), x.numel() / x.shape[1])  # a fill kernel: no host-to-device copy
        totals = _SumOverRanks.apply(torch.cat([values.sum(dims), local_count]))
        count = totals[-1].detach()
        mean = totals[:-1] / count
        centered = values - mean.view(1, -1, 1, 1)
        var = _SumOverRanks.apply((centered * centered).sum(dims)) / count
        out = centered * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
        if self.affine:
            out = out * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = self.momentum if self.momentum is not None else \
                    (1.0 / self.num_batches_tracked).to(self.running_mean.dtype)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), factor)
                unbiased = var.detach() * count / (count - 1).clamp(min=1)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        return out.to(x.dtype)


def has_batchnorm(module: nn.Module) -> bool:
    """Whether ``module`` holds a BatchNorm layer (whose statistics depend on the batch it sees)."""
    return any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm))
               for m in module.modules())


def resolve_sync_bn(requested: bool | None, model: ReverseDistillation, world: World) -> bool:
    """Whether this run synchronises BatchNorm: only in a group, only for a BatchNorm student, and by
    default there (``requested`` None); ``False`` (``--no-sync-bn``) keeps per-rank statistics."""
    if not world.enabled or not has_batchnorm(model.trainable_modules()):
        return False
    return True if requested is None else bool(requested)


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """Make every BatchNorm of ``module`` use global-batch statistics (same parameters, buffers and keys)."""
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, GlobalBatchNorm):
        like = next((t for t in (module.weight, module.running_mean) if t is not None), None)
        factory = {} if like is None else {"device": like.device, "dtype": like.dtype}
        converted = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                    module.track_running_stats, **factory)
        converted.load_state_dict(module.state_dict())
        if module.affine:
            converted.weight, converted.bias = module.weight, module.bias  # keep the optimiser's Parameters
        converted.train(module.training)
        return converted
    for name, child in module.named_children():
        setattr(module, name, convert_batchnorm(child))
    return module


class _TrainablePath(nn.Module):
    """Bottleneck then student: the part of the RD model that DDP wraps."""

    def __init__(self, bottleneck: nn.Module, student: nn.Module) -> None:
        super().__init__()
        self.bottleneck, self.student = bottleneck, student

    def forward(self, teacher_features: list[Tensor]) -> list[Tensor]:
        return self.student(self.bottleneck(teacher_features))


class DistributedRD(nn.Module):
    """An RD model for data-parallel training: same ``forward`` contract as ``ReverseDistillation``
    (images -> teacher and student features), gradients of the trainable path averaged over the ranks."""

    def __init__(self, model: ReverseDistillation, device: torch.device, sync_bn: bool = False) -> None:
        super().__init__()
        if sync_bn:
            model.bottleneck = convert_batchnorm(model.bottleneck)
            model.student = convert_batchnorm(model.student)
        self.model = model
        self.path = DistributedDataParallel(_TrainablePath(model.bottleneck, model.student),
                                            device_ids=[device.index] if device.type == "cuda" else None)

    def forward(self, images: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        teacher_features = self.model.teacher_features(images)
        return teacher_features, self.path(teacher_features)

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
``GlobalBatchNorm``, one all-reduce per layer forward and one backward, on every device. It never waits for the
device (torch's ``SyncBatchNorm`` indexes its per-rank counts with a boolean mask, a host sync in every
layer of every step, and refuses to run on CPU). With it, N processes give the loss curve of one process
with the same global batch and seed. The ConvNeXt and Swin models use LayerNorm only and need nothing.
"""
from __future__ import annotations

import contextlib
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn import functional as F
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


_LOW_PRECISION = (torch.bfloat16, torch.float16)


class _GlobalBatchNormFunction(torch.autograd.Function):
    """Training-mode BatchNorm over the global batch with one all-reduce forward and one backward.

    Forward: each rank's per-channel count, mean and squared deviations are combined by one all-reduce of
    ``[n (m - K), n v + n (m - K)^2, n]`` (K: a per-channel shift equal on every rank, the running mean, so
    that the one-pass combination does not cancel). Backward: one all-reduce of the rank's sums of ``dy`` and
    ``dy * x_hat``, from which every rank gets the gradient of the global statistics, as torch's SyncBatchNorm.
    The elementwise work runs in BatchNorm's own kernels with the float32 (at least) statistics as its
    "running" statistics, so bf16 activations are read as bf16 and nothing float32 of their size is kept.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor | None, bias: Tensor | None, shift: Tensor,  # noqa: ANN001
                eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        with _autocast_off(x.device.type):
            dims = [0, 2, 3]
            local_n = x.numel() // x.shape[1]
            if x.dtype in _LOW_PRECISION:
                # one pass, accumulated in float32 (on CUDA straight from the bf16 values, no float32 copy); its
                # cancellation, ~6e-8 (mean/std)^2 of the variance, is below bf16's own rounding unless |mean| > 250 std
                local_mean = x.sum(dims, dtype=torch.float32) / local_n
                squares = torch.linalg.vector_norm(x, 2, dims, dtype=torch.float32).square() / local_n
                local_var = (squares - local_mean.square()).clamp_min(0)
            else:  # float32/float64: the two-pass kernel, no copy
                local_var, local_mean = torch.var_mean(x, dims, correction=0)
            offset = local_mean - shift
            count = local_mean.new_full((1,), local_n)  # a fill kernel: no host-to-device copy
            totals = torch.cat([offset * local_n, (local_var + offset.square()) * local_n, count])
            dist.all_reduce(totals)
            channels = x.shape[1]
            count = totals[-1:]
            centred_mean = totals[:channels] / count
            mean = shift + centred_mean
            var = (totals[channels:2 * channels] / count - centred_mean.square()).clamp_min(0)
            out = F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps)
        ctx.save_for_backward(x, weight, mean, var, count)
        ctx.eps = eps
        ctx.mark_non_differentiable(mean, var, count)
        return out, mean, var, count

    @staticmethod
    def backward(ctx, grad_out: Tensor, *_unused: Tensor  # noqa: ANN001
                 ) -> tuple[Tensor, Tensor | None, Tensor | None, None, None]:
        x, weight, mean, var, count = ctx.saved_tensors
        with _autocast_off(x.device.type):
            # local: dy * w / sqrt(var + eps), sum(dy * x_hat), sum(dy) (BatchNorm's backward kernel, eval mode).
            # The saved statistics are passed defined: CUDA's kernel asserts them on its channels_last path (and
            # uses them there instead of the "running" ones); the global mean and 1 / sqrt(var + eps) are both
            invstd = torch.rsqrt(var + ctx.eps)
            direct, grad_weight, grad_bias = torch.ops.aten.native_batch_norm_backward(
                grad_out.contiguous(memory_format=_memory_format(x)), x, weight, mean, var, mean, invstd, False,
                ctx.eps, [True, True, True])
            sums = torch.cat([grad_bias, grad_weight])
            dist.all_reduce(sums)
            channels = x.shape[1]
            scale = invstd / count if weight is None else weight.to(invstd.dtype) * invstd / count
            # the statistics' share of the input gradient: scale * (sum dy + x_hat * sum(dy * x_hat)), an affine
            # map of x per channel, computed by BatchNorm's kernel in its precision
            through_stats = F.batch_norm(x, mean, var, scale * sums[channels:], scale * sums[:channels], False,
                                         0.0, ctx.eps)
            grad_input = direct - through_stats
        return (grad_input, grad_weight if weight is not None and ctx.needs_input_grad[1] else None,
                grad_bias if ctx.needs_input_grad[2] else None, None, None)


def _autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast off where it exists (CUDA's would run the norm in float32 on a float32 copy); a no-op elsewhere."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def _memory_format(x: Tensor) -> torch.memory_format:
    return torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() \
        else torch.contiguous_format


class GlobalBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics span the global batch of all ranks, on any device.

    One all-reduce per layer in the forward (count, sum and squared deviations in one buffer) and one in the
    backward (``_GlobalBatchNormFunction``); gradients flow through the global statistics as in one process.
    Statistics are computed in float32 at least (bf16 activations under autocast are accumulated in float32,
    as BatchNorm's kernels do) and nothing is read back to the host, so no step waits for the device.
    Outside training, or in a group of one, it is plain BatchNorm2d.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and current().enabled):
            return super().forward(x)
        self._check_input_dim(x)
        stats_dtype = torch.promote_types(x.dtype, torch.float32)
        shift = (self.running_mean.detach().to(stats_dtype) if self.running_mean is not None
                 else x.new_zeros(x.shape[1], dtype=stats_dtype))
        out, mean, var, count = _GlobalBatchNormFunction.apply(x, self.weight, self.bias, shift, self.eps)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = self.momentum if self.momentum is not None else \
                    (1.0 / self.num_batches_tracked).to(self.running_mean.dtype)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                unbiased = var * count / (count - 1).clamp(min=1)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        return out


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
    (images -> teacher and student features), gradients of the trainable path averaged over the ranks.

    DDP broadcasts rank 0's buffers before every forward only where they can differ between the ranks: per-rank
    BatchNorm statistics (``sync_bn`` off). ``GlobalBatchNorm`` updates every rank's running statistics from the
    same all-reduced values, and a LayerNorm student has no statistics, so that broadcast would be a wasted
    collective per step."""

    def __init__(self, model: ReverseDistillation, device: torch.device, sync_bn: bool = False) -> None:
        super().__init__()
        if sync_bn:
            model.bottleneck = convert_batchnorm(model.bottleneck)
            model.student = convert_batchnorm(model.student)
        self.model = model
        path = _TrainablePath(model.bottleneck, model.student)
        self.path = DistributedDataParallel(path, device_ids=[device.index] if device.type == "cuda" else None,
                                            broadcast_buffers=has_batchnorm(path) and not sync_bn)

    def forward(self, images: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        teacher_features = self.model.teacher_features(images)
        return teacher_features, self.path(teacher_features)

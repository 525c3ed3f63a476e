"""The backbone-agnostic Reverse Distillation model: teacher, one-class bottleneck, student decoder.

It knows nothing of ResNet or ConvNeXt: any teacher returning a list of multi-scale features, a
bottleneck mapping that list to one embedding, and a student mapping the embedding back to the same
shapes will do. Loss and anomaly map follow RD4AD's official code (docs/reproduction.md#2-training-recipe
and #3-scoring).
"""
from __future__ import annotations

import copy
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from errors import RDError

__all__ = ["ANOMALY_MAP_SIGMA", "MIN_IMAGE_SIZE", "SIZE_MULTIPLE", "GaussianBlur", "ReverseDistillation",
           "anomaly_map", "autocast_dtype", "channel_cosine", "distillation_loss", "full_precision", "image_scores",
           "scale_maps", "sum_scales", "validate_image_size"]

ANOMALY_MAP_SIGMA = 4.0
SIZE_MULTIPLE = 32  # the OCBE embeds the teacher's features at 1/32 of the input (docs/reproduction.md#1-architecture)
MIN_IMAGE_SIZE = 32


class ReverseDistillation(nn.Module):
    """Frozen teacher E, trainable bottleneck and student D; ``forward`` returns (E features, D features).

    The teacher is kept in eval mode whatever ``.train()`` is called with, never takes gradients, and
    so its BatchNorm statistics (and ConvNeXt drop path) never move. Under autocast its features come
    out in the autocast dtype for every family (a ConvNeXt's float32 layer scale would otherwise
    promote them to float32 while a ResNet's stay bf16), computed by a copy of the teacher cast to
    that dtype once (``keep_teacher_in``) when there is one, so that no step casts its weights again.
    """

    def __init__(self, teacher: nn.Module, bottleneck: nn.Module, student: nn.Module) -> None:
        super().__init__()
        self.teacher = teacher.eval().requires_grad_(False)
        # the dtype copies' dict exists from here on: compiled code only reads it (dynamo 2.11 cannot trace
        # vars(module).setdefault, and splitting the forward there made the last partial batch recompile)
        vars(self.teacher).setdefault(_TEACHER_COPIES, {})
        self.bottleneck = bottleneck
        self.student = student
        self.blur = GaussianBlur(ANOMALY_MAP_SIGMA)
        self.teacher.register_load_state_dict_post_hook(_refresh_teacher_copies)

    def train(self, mode: bool = True) -> "ReverseDistillation":
        super().train(mode)
        self.teacher.eval()
        return self

    def trainable_modules(self) -> nn.ModuleDict:
        """The parts that are trained and checkpointed."""
        return nn.ModuleDict({"bottleneck": self.bottleneck, "student": self.student})

    def optimizer_groups(self) -> list[dict[str, Any]]:
        """The optimiser's parameter groups (``recipe.make_optimizer``): one, every trainable parameter, at the run's
        lr and betas."""
        return [{"params": list(self.trainable_modules().parameters())}]

    def keep_teacher_in(self, dtype: torch.dtype) -> None:
        """Keep a copy of the frozen teacher cast to ``dtype`` (bf16 under amp), used whenever autocast runs
        in that dtype: its weights are cast once here rather than at every step. The float32 teacher stays
        (float32 scoring, checkpoints); the copy follows ``.to()`` and reloads of the teacher's weights."""
        copies = vars(self.teacher).setdefault(_TEACHER_COPIES, {})  # not traced: the teacher may be new
        if dtype not in copies and dtype != _module_dtype(self.teacher):
            copies[dtype] = copy.deepcopy(self.teacher, memo={id(copies): {}}).to(dtype)

    def teacher_copies(self) -> list[nn.Module]:
        """The teacher's dtype copies (``keep_teacher_in``): not submodules, so not in ``parameters()``."""
        return list(_teacher_copies(self.teacher).values())

    def teacher_features(self, images: Tensor) -> list[Tensor]:
        """The frozen teacher's features, without gradients; under autocast in the autocast dtype."""
        dtype = autocast_dtype(images.device.type)
        teacher = self.teacher if dtype is None else _teacher_copies(self.teacher).get(dtype, self.teacher)
        with torch.no_grad():
            features = teacher(images)
        return features if dtype is None else [f.to(dtype) for f in features]

    def forward(self, images: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        teacher_features = self.teacher_features(images)
        student_features = self.student(self.bottleneck(teacher_features))
        return teacher_features, student_features

    @torch.no_grad()
    def anomaly_map(self, images: Tensor) -> Tensor:
        """Smoothed anomaly maps (N, H, W) at the input size, float32 (also when called under autocast)."""
        return self.anomaly_map_and_scales(images)[0]

    @torch.no_grad()
    def anomaly_map_and_scales(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        """The smoothed anomaly maps and the unsmoothed per-scale maps they are the blurred sum of, from one
        forward pass (the scale ablation of ``main.py test``: instruments.py)."""
        teacher_features, student_features = self(images)
        per_scale = scale_maps(teacher_features, student_features, images.shape[-2:])
        return self.blur(sum_scales(per_scale)), per_scale

    def _apply(self, fn, recurse: bool = True) -> "ReverseDistillation":  # noqa: ANN001 (torch's signature)
        """``.to(device)``, ``.to(memory_format=...)`` and the like move the teacher's dtype copies too."""
        super()._apply(fn, recurse)
        for dtype, teacher_copy in _teacher_copies(self.teacher).items():
            teacher_copy._apply(fn, recurse)
            teacher_copy.to(dtype)
        return self


_TEACHER_COPIES = "_rd_dtype_copies"  # a plain attribute of the teacher: not a submodule, not in any state dict


def _teacher_copies(teacher: nn.Module) -> dict[torch.dtype, nn.Module]:
    """The teacher's dtype copies (the dict ``ReverseDistillation.__init__`` created; read with getattr only,
    which every dynamo version traces)."""
    return getattr(teacher, _TEACHER_COPIES, _NO_COPIES)


_NO_COPIES: dict[torch.dtype, nn.Module] = {}  # never written: keep_teacher_in writes the teacher's own dict


def _refresh_teacher_copies(teacher: nn.Module, _incompatible_keys: object) -> None:
    """``load_state_dict`` post-hook of the teacher: reloaded weights reach its dtype copies too."""
    copies = getattr(teacher, _TEACHER_COPIES, {})
    if copies:
        state = teacher.state_dict()
        for teacher_copy in copies.values():
            teacher_copy.load_state_dict(state)


def _module_dtype(module: nn.Module) -> torch.dtype | None:
    return next((p.dtype for p in module.parameters()), None)


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast computes in on ``device_type`` now, or None outside autocast."""
    if not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


_LOW_PRECISION = (torch.bfloat16, torch.float16)


def full_precision(features: list[Tensor]) -> list[Tensor]:
    """Features in at least float32: bf16/fp16 upcast, float32 and float64 untouched (so unchanged results)."""
    return [f.float() if f.dtype in _LOW_PRECISION else f for f in features]


def distillation_loss(teacher_features: list[Tensor], student_features: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
    """RD4AD's loss: per scale ``1 - cos`` of whole flattened feature maps, batch mean, summed over scales.

    Computed in float32 (bf16 features upcast) with autocast off, whatever the caller runs under, so that
    every family's loss has the same precision. Returns the total and the per-scale terms (for logging).
    """
    with torch.autocast(teacher_features[0].device.type, enabled=False):
        per_scale = [
            (1 - F.cosine_similarity(t.flatten(1), s.flatten(1), dim=1)).mean()
            for t, s in zip(full_precision(teacher_features), full_precision(student_features), strict=True)
        ]
        return torch.stack(per_scale).sum(), per_scale


def anomaly_map(teacher_features: list[Tensor], student_features: list[Tensor], size: tuple[int, int] | torch.Size) -> Tensor:
    """Unsmoothed map (N, H, W): per scale ``1 - cos`` over channels, bilinearly upsampled, summed."""
    return sum_scales(scale_maps(teacher_features, student_features, size))


def scale_maps(teacher_features: list[Tensor], student_features: list[Tensor],
               size: tuple[int, int] | torch.Size) -> list[Tensor]:
    """Per scale (the teacher's taps, shallowest first) the unsmoothed map (N, H, W): ``1 - cos`` over channels,
    bilinearly upsampled to ``size``.

    Always float32 with autocast off: under autocast the channel cosine's einsum would otherwise run as a
    bf16 matrix product, whose error (up to ~4e-3) is the size of a normal pixel's ``1 - cos`` (~5e-3).
    """
    with torch.autocast(teacher_features[0].device.type, enabled=False):
        return [F.interpolate(1 - channel_cosine(t.float(), s.float()).unsqueeze(1), size=tuple(size),
                              mode="bilinear", align_corners=True).squeeze(1)
                for t, s in zip(teacher_features, student_features, strict=True)]


def sum_scales(maps: Iterable[Tensor]) -> Tensor:
    """The per-scale maps (or any terms, a generator too) added in their order, first to last, as ``a + b + c``
    (the anomaly map's order: bit-identical sums)."""
    iterator = iter(maps)
    total = next(iterator)
    for distance in iterator:
        total = total + distance
    return total


def channel_cosine(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Cosine similarity over the channels of (N, C, H, W) maps -> (N, H, W).

    Same values as ``F.cosine_similarity(a, b, dim=1)`` (to float rounding); written as einsum and
    vector norms, which on channels_last maps runs ~5x faster on CPU (measured at 256 px, batch 16).
    """
    dot = torch.einsum("nchw,nchw->nhw", a, b)
    return dot / (torch.linalg.vector_norm(a, dim=1) * torch.linalg.vector_norm(b, dim=1)).clamp_min(eps)


def image_scores(maps: Tensor) -> Tensor:
    """Image anomaly score: the maximum of its smoothed map."""
    return maps.flatten(1).amax(dim=1)


class GaussianBlur(nn.Module):
    """Separable Gaussian blur on the maps' device, always in float32 (also under bf16 autocast).

    Sigma 4, truncated at 4 sigma (kernel 33) with half-sample symmetric ("reflect") borders: the
    same result as ``scipy.ndimage.gaussian_filter(map, 4)`` that RD4AD runs per image on the CPU.
    Each 1-D pass is one matrix product with a banded matrix holding the kernel and the mirrored
    borders: on CPU 8-10x faster than a one-channel convolution (measured, 167 maps of 256 px).
    """

    def __init__(self, sigma: float = ANOMALY_MAP_SIGMA) -> None:
        super().__init__()
        self.radius = int(4 * sigma + 0.5)
        x = torch.arange(-self.radius, self.radius + 1, dtype=torch.float64)
        kernel = torch.exp(-0.5 * (x / sigma) ** 2)
        self._kernel64 = kernel / kernel.sum()
        self.register_buffer("kernel", self._kernel64.float(), persistent=False)
        self._bands: dict[tuple[int, str], Tensor] = {}

    def band(self, length: int, device: torch.device) -> Tensor:
        """(length, length) float32 matrix B with ``(x @ B)[j]`` = the blurred value at j (cached)."""
        key = (length, str(device))
        if key not in self._bands:
            taps = self._kernel64.numel()
            output = torch.arange(length)
            source = _symmetric_index(length, self.radius, torch.device("cpu"))[output[:, None] + torch.arange(taps)]
            band = torch.zeros(length, length, dtype=torch.float64)
            band.index_put_((source.flatten(), output.repeat_interleave(taps)), self._kernel64.repeat(length),
                            accumulate=True)
            self._bands[key] = band.float().to(device)
        return self._bands[key]

    def forward(self, maps: Tensor) -> Tensor:
        with torch.autocast(maps.device.type, enabled=False):
            x = maps.float()
            x = x @ self.band(x.shape[-1], x.device)
            return self.band(x.shape[-2], x.device).T @ x


def _symmetric_index(length: int, pad: int, device: torch.device) -> Tensor:
    """Indices padding a dimension by ``pad`` on both sides with mirror copies (d c b a | a b c d | d c)."""
    index = torch.arange(-pad, length + pad, device=device) % (2 * length)
    return torch.where(index >= length, 2 * length - 1 - index, index)


def validate_image_size(size: int, flag: str = "--image-size") -> None:
    """Raise RDError, naming ``flag``, unless ``size`` is an input size the RD models take: a multiple of
    ``SIZE_MULTIPLE`` (the bottleneck embeds at 1/32 of the input) of at least ``MIN_IMAGE_SIZE``."""
    if isinstance(size, int) and size >= MIN_IMAGE_SIZE and size % SIZE_MULTIPLE == 0:
        return
    if not isinstance(size, int):
        raise RDError(f"{flag} {size!r}: expected a whole number of pixels, e.g. 256")
    lower = max(MIN_IMAGE_SIZE, size // SIZE_MULTIPLE * SIZE_MULTIPLE)
    upper = lower + SIZE_MULTIPLE
    if size < MIN_IMAGE_SIZE or size - lower < upper - size:
        suggestion = f"nearest valid size: {lower}"
    elif size - lower > upper - size:
        suggestion = f"nearest valid size: {upper}"
    else:
        suggestion = f"nearest valid sizes: {lower} or {upper}"
    problem = f"smaller than {MIN_IMAGE_SIZE} px" if size < MIN_IMAGE_SIZE else f"not divisible by {SIZE_MULTIPLE}"
    raise RDError(
        f"{flag} {size} is {problem}; the model needs a multiple of {SIZE_MULTIPLE} of at least "
        f"{MIN_IMAGE_SIZE} px ({suggestion})"
    )

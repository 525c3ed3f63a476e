"""How local a feature extractor is: effective receptive fields (ERF) and linear CKA between two extractors.

The ERF of a tap (Luo et al., NeurIPS 2016) is the gradient of its centre feature (the sum over channels at the
centre position) with respect to the input image, in absolute value and summed over the colour channels. Its
mass is put in rings of 1 px around the centre of the centre cell's receptive field (ring k: distances in
[k - 0.5, k + 0.5)), taken from the network's own layers: the strides, paddings and kernels of its convolutions
and poolings (Araujo et al., Distill 2019), so a padded stride-2 ResNet stem puts cell i at 4 i, not at the
patchify midpoint 4 i + 1.5. The radius holding a fraction of the mass interpolates linearly between ring edges. Linear
CKA (Kornblith et al., ICML 2019) compares two feature sets on the same rows (image x position samples); it is
accumulated over batches from column sums and cross products, so no (rows x rows) matrix is ever formed.
Model-agnostic: any module returning a feature map or a list of them will do; the radius and CKA functions are
plain numpy (the report's bootstrap uses them without torch models).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.swin_transformer import PatchMerging, PatchMergingV2

__all__ = ["Grid", "LinearCKA", "centre_gradients", "feature_rows", "linear_cka", "mass_radius", "ring_profiles",
           "tap_grids"]


@dataclass(frozen=True)
class Grid:
    """Where the cells of a feature map sit along one axis: cell i's receptive field is centred on input pixel
    coordinate ``offset + step * i`` (pixel centres at 0, 1, ...)."""

    step: float = 1.0
    offset: float = 0.0

    def after(self, kernel: int, stride: int, padding: int, dilation: int = 1) -> "Grid":
        """The grid of a convolution or pooling's output: output cell i reads input cells ``stride * i - padding``
        to ``stride * i - padding + dilation * (kernel - 1)``, centred on ``stride * i - padding + dilation *
        (kernel - 1) / 2``."""
        return Grid(self.step * stride, self.offset + self.step * (dilation * (kernel - 1) / 2 - padding))

    def centre(self, size: int) -> float:
        """The input coordinate of the centre cell ``size // 2`` of a map ``size`` cells long."""
        return self.offset + self.step * (size // 2)


def _pair(value: Any) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _spatial_layer(module: nn.Module) -> tuple[tuple[int, int], tuple, tuple, tuple, tuple] | None:
    """(spatial dims of the input, kernel, stride, padding, dilation) of a layer that moves or resamples the
    grid, per (height, width); None for a layer that keeps every cell in place."""
    if isinstance(module, nn.Conv2d):
        if isinstance(module.padding, str):  # "valid" or "same"; PyTorch only allows "same" with stride 1
            padding = (0, 0) if module.padding == "valid" else tuple(d * (k - 1) // 2 for d, k in
                                                                    zip(module.dilation, module.kernel_size))
            if module.padding == "same" and any(d * (k - 1) % 2 for d, k in zip(module.dilation, module.kernel_size)):
                raise ValueError(f"{module}: 'same' padding with an even kernel pads one side more; its grid is "
                                 "not placed")
        else:
            padding = module.padding
        return (-2, -1), module.kernel_size, module.stride, padding, module.dilation
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        dilation = getattr(module, "dilation", 1)
        stride = module.stride if module.stride is not None else module.kernel_size
        return (-2, -1), _pair(module.kernel_size), _pair(stride), _pair(module.padding), _pair(dilation)
    if isinstance(module, (PatchMerging, PatchMergingV2)):  # channels-last 2x2 space-to-depth: a 2x2 stride-2 cell
        return (-3, -2), (2, 2), (2, 2), (0, 0), (1, 1)
    return None


@torch.no_grad()
def tap_grids(module: nn.Module, input_size: tuple[int, int]) -> list[tuple[Grid, Grid]]:
    """Per tap of ``module`` (a feature map or a list of them, channels first), its (height, width) grids, from the
    kernels, strides, paddings and dilations of its convolutions, poolings and patch mergings.

    One forward pass of a zero image records every such layer's input and output size; a map's grid is keyed by
    its length along the axis, starting from the input (step 1, offset 0). Layers between them (norms,
    activations, attention, residual sums) keep every cell where it is. Two grids for one length, or a length
    that no recorded layer produced (an upsampling, a crop), is a ValueError: the grid cannot be placed.
    """
    height, width = input_size
    grids: list[dict[int, Grid]] = [{height: Grid()}, {width: Grid()}]
    problems: list[str] = []

    def hook(layer: nn.Module, args: tuple, output: Any) -> None:
        spec = _spatial_layer(layer)
        if spec is None or not isinstance(output, Tensor):
            return
        dims, kernel, stride, padding, dilation = spec
        for axis in range(2):
            size_in, size_out = args[0].shape[dims[axis]], output.shape[dims[axis]]
            known = grids[axis].get(size_in)
            if known is None:
                problems.append(f"{layer} reads a map {size_in} cells long that no recorded layer produced")
                continue
            placed = known.after(kernel[axis], stride[axis], padding[axis], dilation[axis])
            if grids[axis].setdefault(size_out, placed) != placed:
                problems.append(f"{layer} makes a map {size_out} cells long at {placed}, another is at "
                                f"{grids[axis][size_out]}")

    layers = [m for m in module.modules() if _spatial_layer(m) is not None]
    handles = [layer.register_forward_hook(hook) for layer in layers]
    try:
        parameter = next(module.parameters(), None)
        x = torch.zeros(1, 3, height, width, device=parameter.device if parameter is not None else "cpu",
                        dtype=parameter.dtype if parameter is not None else torch.float32)
        features = module(x)
    finally:
        for handle in handles:
            handle.remove()
    features = [features] if isinstance(features, Tensor) else list(features)
    out = []
    for index, feature in enumerate(features):
        placed = [grids[axis].get(feature.shape[-2 + axis]) for axis in range(2)]
        if None in placed:
            problems.append(f"tap {index + 1} ({tuple(feature.shape[-2:])} cells) comes from a layer that is not a "
                            "convolution, pooling or patch merging")
        out.append(tuple(placed))
    if problems:
        raise ValueError(f"{type(module).__name__}: the receptive-field centres cannot be placed: "
                         + "; ".join(dict.fromkeys(problems)))
    return out


@torch.enable_grad()
def centre_gradients(module: nn.Module, inputs: Tensor) -> tuple[list[Tensor], list[Tensor]]:
    """The module's features of ``inputs`` (N, 3, H, W), detached, and per tap the ERF of each image (N, H, W):
    |d (sum over channels of the centre feature) / d input|, summed over colour channels.

    Images are independent (a module in eval mode mixes no samples), so one backward per tap gives every
    image's gradient at once.
    """
    x = inputs.detach().clone().requires_grad_(True)
    features = module(x)
    features = [features] if isinstance(features, Tensor) else list(features)
    maps = []
    for index, feature in enumerate(features):
        height, width = feature.shape[-2:]
        target = feature[:, :, height // 2, width // 2].float().sum()
        (gradient,) = torch.autograd.grad(target, x, retain_graph=index < len(features) - 1)
        maps.append(gradient.abs().sum(1).float())
    return [f.detach() for f in features], maps


def ring_profiles(maps: Tensor, centre_y: float, centre_x: float) -> Tensor:
    """Mass per 1-px ring around (centre_y, centre_x) of each map (N, H, W) -> (N, R) float64 (R: rings that
    hold a pixel); ring k holds the pixels at a distance d with k - 0.5 <= d < k + 0.5."""
    height, width = maps.shape[-2:]
    ys = torch.arange(height, dtype=torch.float64)[:, None] - centre_y
    xs = torch.arange(width, dtype=torch.float64)[None, :] - centre_x
    rings = torch.floor(torch.sqrt(ys ** 2 + xs ** 2) + 0.5).long().flatten()
    out = torch.zeros(maps.shape[0], int(rings.max()) + 1, dtype=torch.float64)
    return out.index_add_(1, rings, maps.detach().flatten(1).double().cpu())


def mass_radius(profiles: np.ndarray, fraction: float) -> np.ndarray:
    """Radius (px) holding ``fraction`` of the mass of ring profiles (..., R): the mass within radius k + 0.5 is
    exact, linear in between (from radius 0 and mass 0). NaN for a profile without mass."""
    profiles = np.asarray(profiles, dtype=np.float64)
    total = profiles.sum(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        cumulative = np.cumsum(profiles, -1) / total
    last = profiles.shape[-1] - 1
    ring = np.minimum((cumulative < fraction - 1e-12).sum(-1), last)
    upper = np.take_along_axis(cumulative, ring[..., None], -1)[..., 0]
    lower = np.where(ring > 0, np.take_along_axis(cumulative, np.maximum(ring - 1, 0)[..., None], -1)[..., 0], 0.0)
    inner = np.where(ring > 0, ring - 0.5, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        step = np.where(upper > lower, (fraction - lower) / (upper - lower), 1.0)
    radius = inner + step * (ring + 0.5 - inner)
    return np.where(total[..., 0] > 0, radius, np.nan)


def feature_rows(feature: Tensor, size: tuple[int, int]) -> Tensor:
    """(N, C, h, w) features as (N * h' * w', C) float64 rows at spatial ``size`` (average-pooled when smaller)."""
    if tuple(feature.shape[-2:]) != tuple(size):
        feature = F.adaptive_avg_pool2d(feature.float(), size)
    return feature.permute(0, 2, 3, 1).reshape(-1, feature.shape[1]).double().cpu()


@dataclass
class LinearCKA:
    """Linear CKA of two feature sets accumulated over batches of paired rows:
    ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F), Xc and Yc the column-centred features."""

    rows: int = 0
    sums: list[Tensor] = field(default_factory=list)  # sum x, sum y, X^T X, Y^T Y, Y^T X

    def update(self, x: Tensor, y: Tensor) -> None:
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"CKA needs paired rows: {x.shape[0]} and {y.shape[0]}")
        x, y = x.double(), y.double()
        parts = [x.sum(0), y.sum(0), x.T @ x, y.T @ y, y.T @ x]
        self.sums = parts if not self.sums else [a + b for a, b in zip(self.sums, parts)]
        self.rows += x.shape[0]

    def value(self) -> float:
        if self.rows < 2:
            return float("nan")
        sx, sy, xx, yy, yx = self.sums
        n = self.rows
        cross = yx - torch.outer(sy, sx) / n
        gram_x = xx - torch.outer(sx, sx) / n
        gram_y = yy - torch.outer(sy, sy) / n
        denominator = torch.linalg.matrix_norm(gram_x) * torch.linalg.matrix_norm(gram_y)
        return float((cross ** 2).sum() / denominator) if denominator > 0 else float("nan")


def linear_cka(x: Tensor | np.ndarray, y: Tensor | np.ndarray) -> float:
    """Linear CKA of (n, p) and (n, q) features in one go."""
    accumulator = LinearCKA()
    accumulator.update(torch.as_tensor(np.asarray(x)), torch.as_tensor(np.asarray(y)))
    return accumulator.value()

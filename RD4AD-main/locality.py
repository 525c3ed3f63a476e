"""How local a feature extractor is: effective receptive fields (ERF) and linear CKA between two extractors.

The ERF of a tap (Luo et al., NeurIPS 2016) is the gradient of its centre feature (the sum over channels at the
centre position) with respect to the input image, in absolute value and summed over the colour channels. Its
mass is put in rings of 1 px around the centre of the input region the centre cell covers (ring k: distances in
[k - 0.5, k + 0.5)); the radius holding a fraction of the mass interpolates linearly between ring edges. Linear
CKA (Kornblith et al., ICML 2019) compares two feature sets on the same rows (image x position samples); it is
accumulated over batches from column sums and cross products, so no (rows x rows) matrix is ever formed.
Model-agnostic: any module returning a feature map or a list of them will do; the radius and CKA functions are
plain numpy (the report's bootstrap uses them without torch models).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LinearCKA", "centre_gradients", "centre_of", "feature_rows", "linear_cka", "mass_radius", "ring_profiles"]


def centre_of(feature_size: int, input_size: int) -> float:
    """Input-pixel coordinate (pixel centres at 0, 1, ...) of the middle of the region the centre cell
    ``feature_size // 2`` covers: ``(i + 0.5) * stride - 0.5`` with stride = input / feature size."""
    return (feature_size // 2 + 0.5) * input_size / feature_size - 0.5


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

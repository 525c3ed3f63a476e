"""RD++ (Tien et al., CVPR 2023, "Revisiting Reverse Distillation for Anomaly Detection") as a second method on
every backbone: its projection layer and model, its losses and its simplex-noise training pairs (the step that uses
them is recipe.rdpp_train_step).

Following the official code (``tientrandinh/Revisiting-Reverse-Distillation``;
docs/reproduction.md#11-rd-a-second-method):

- a **multi-scale projection** between the frozen teacher and the OCBE, one ``ProjectionLayer`` per tap (four 3x3
  convolutions c -> c/2 -> c/4 -> c/2 -> c, each with InstanceNorm and LeakyReLU; ``utils/utils_train.py``
  ``ProjLayer``/``MultiProjectionLayer``), its widths from the teacher's tap channels, so every family gets one;
- **scoring through the projection**: student(OCBE(projection(teacher(x)))) against the raw teacher features, with
  RD's map (``evaluation_multi_proj``); ``RevisitedReverseDistillation.forward`` is that path;
- **training pairs**: each image and a copy with a patch of fractal simplex noise (``dataset/dataset.py``
  ``MVTecDataset_train``; ``NoisePairs``), and the loss ``L_distill + 0.2 L_proj`` (``main.py``), where
  ``L_proj = (SSOT + 0.01 reconstruction + 0.1 contrast) / 1.11`` (``Revisit_RDLoss``: ``projection_losses``);
- **two Adams**: the projection's (lr 0.001, betas (0.5, 0.999)) beside the distillation's over OCBE + student (the
  run's lr and betas; 0.005 and (0.5, 0.999) as RD's), here two parameter groups of one Adam (Adam's update is per
  parameter, so the same updates); both step every ``ACCUMULATION_STEPS`` = 2 batches on the summed gradients, as the
  official loop does, the count restarting each epoch (a last odd batch's gradients carry into the next epoch).

Deviations, each in docs/reproduction.md: the contrast loss's target is made on the features' device (the official
``.to('cuda')``), noise and shuffles come from the run's seeded generators, and the protocol's model is this
project's test-free choice (last epoch or synthetic validation), not the best test epoch.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backbone_facts import RDPP_LOSS_TERMS
from dataset import IMAGENET_STD
from errors import RDError
from rd_model import ReverseDistillation, full_precision, sum_scales
from simplex_noise import SEED_RANGE, fractal_noise

__all__ = ["ACCUMULATION_STEPS", "CONTRAST_MARGIN", "CONTRAST_WEIGHT", "LOSS_TERMS", "METHOD", "NOISE_AMPLITUDE",
           "PROJECTION_BETAS", "PROJECTION_LR", "PROJECTION_NORMALISER", "PROJECTION_WEIGHT", "RECONSTRUCT_WEIGHT",
           "SINKHORN_SETTINGS", "MultiProjection", "NoisePairs", "ProjectionLayer", "RevisitedReverseDistillation",
           "ProjectedPair", "noise_seed", "noisy_images", "patch_bounds", "projection_losses", "recipe_record",
           "sinkhorn_divergence"]

METHOD = "rdpp"
PROJECTION_LR = 0.001  # main.py --proj_lr
PROJECTION_BETAS = (0.5, 0.999)
PROJECTION_WEIGHT = 0.2  # main.py --weight_proj
ACCUMULATION_STEPS = 2  # main.py: optimiser steps every second batch, on the summed gradients
RECONSTRUCT_WEIGHT = 0.01
CONTRAST_WEIGHT = 0.1
CONTRAST_MARGIN = 0.5
PROJECTION_NORMALISER = 1.11  # (1 + 0.01 + 0.1): Revisit_RDLoss divides the weighted sum by it
NOISE_AMPLITUDE = 0.2  # the noise is added to the [0, 1] image at 0.2 x the field, before normalisation
# geomloss.SamplesLoss as Revisit_RDLoss builds it; "tensorized" is what its backend="auto" picks for a batch's
# point clouds (fewer than 5000 x 5000 pairs), named here so that pykeops is never tried
SINKHORN_SETTINGS = {"loss": "sinkhorn", "p": 2, "blur": 0.05, "reach": None, "diameter": 10000000, "scaling": 0.95,
                     "truncate": 10, "cost": None, "kernel": None, "cluster_scale": None, "debias": True,
                     "potentials": False, "verbose": False, "backend": "tensorized"}
# the step's loss terms after RD's three per-scale ones (history.csv's rdpp columns, runs.RDPP_LOSS_COLUMNS)
LOSS_TERMS = RDPP_LOSS_TERMS
# the noise stream of a run: its own generator per epoch (the batch order's is seed * 1_000_003 + epoch)
_NOISE_STREAM = 2**62


class ProjectionLayer(nn.Sequential):
    """One tap's projection: 3x3 convolutions c -> c/2 -> c/4 -> c/2 -> c, each followed by InstanceNorm (no affine,
    no running statistics) and LeakyReLU (slope 0.01): the official ``ProjLayer`` with ``out_c = in_c``."""

    def __init__(self, channels: int) -> None:
        widths = [channels, channels // 2, channels // 4, channels // 2, channels]
        layers: list[nn.Module] = []
        for width_in, width_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv2d(width_in, width_out, kernel_size=3, stride=1, padding=1),
                       nn.InstanceNorm2d(width_out), nn.LeakyReLU()]
        super().__init__(*layers)


class MultiProjection(nn.Module):
    """One ``ProjectionLayer`` per teacher tap (its width from the tap's channels; the official
    ``MultiProjectionLayer(base=64)`` is WRN-50-2's (256, 512, 1024)); PyTorch's default initialisation, as there."""

    def __init__(self, channels: tuple[int, ...]) -> None:
        super().__init__()
        if any(c < 4 for c in channels):
            raise RDError(f"RD++'s projection needs at least 4 channels per tap (c/4 > 0); this teacher has {channels}")
        self.channels = tuple(channels)
        self.layers = nn.ModuleList(ProjectionLayer(c) for c in channels)

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        return [layer(f) for layer, f in zip(self.layers, features, strict=True)]


class RevisitedReverseDistillation(ReverseDistillation):
    """An RD model with RD++'s projection between the frozen teacher and the bottleneck.

    ``forward`` (and so the anomaly maps of ``anomaly_map``) runs student(bottleneck(projection(teacher))) and
    returns (raw teacher features, student features): the student rebuilds the teacher's own features, as in the
    official training and ``evaluation_multi_proj``.
    """

    method = METHOD

    def __init__(self, teacher: nn.Module, bottleneck: nn.Module, student: nn.Module, projection: MultiProjection
                 ) -> None:
        super().__init__(teacher, bottleneck, student)
        self.projection = projection

    def trainable_modules(self) -> nn.ModuleDict:
        """The parts that are trained and checkpointed: bottleneck, student and projection."""
        return nn.ModuleDict({"bottleneck": self.bottleneck, "student": self.student, "projection": self.projection})

    def optimizer_groups(self) -> list[dict[str, Any]]:
        """Two groups: OCBE + student at the run's lr and betas, then the projection at RD++'s own (the official
        code's two Adams)."""
        return [{"params": [*self.bottleneck.parameters(), *self.student.parameters()]},
                {"params": list(self.projection.parameters()), "lr": PROJECTION_LR, "betas": PROJECTION_BETAS}]

    def forward(self, images: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        teacher_features = self.teacher_features(images)
        return teacher_features, self.student(self.bottleneck(self.projection(teacher_features)))

    def projected_pair(self, images: Tensor, noisy: Tensor) -> "ProjectedPair":
        """The raw teacher features of a batch and of its noisy copy, and their projections: what the projection
        loss needs (main.py's loop body, in its order: teacher on both, projections of the noisy copy first)."""
        teacher, teacher_noisy = self.teacher_features(images), self.teacher_features(noisy)
        projected_noisy, projected = self.projection(teacher_noisy), self.projection(teacher)
        return ProjectedPair(teacher, teacher_noisy, projected, projected_noisy)


@dataclass
class ProjectedPair:
    """The raw teacher features of a batch and of its noisy copy, and the projections of both."""

    teacher: list[Tensor]
    teacher_noisy: list[Tensor]
    projected: list[Tensor]
    projected_noisy: list[Tensor]


# ---------------------------------------------------------------------------------------------- losses

def sinkhorn_divergence(a: Tensor, b: Tensor) -> Tensor:
    """geomloss's debiased Sinkhorn divergence between the point clouds ``a`` and ``b`` (N, D): the official SSOT
    term's call (``SINKHORN_SETTINGS``). geomloss is imported here: only RD++ needs it."""
    try:
        from geomloss import SamplesLoss
    except ImportError:
        raise RDError("RD++ (--method rdpp) needs geomloss for its Sinkhorn loss: pip install geomloss==0.3.1 "
                      "(requirements.txt pins it)") from None
    return SamplesLoss(**SINKHORN_SETTINGS)(a, b)


# torch.compile: geomloss's epsilon-scaling loop (hundreds of iterations) is not traced; it runs eagerly in the graph
_sinkhorn = torch.compiler.disable(sinkhorn_divergence)


def projection_losses(teacher_noisy: list[Tensor], projected_noisy: list[Tensor], projected: list[Tensor],
                      shuffle: Tensor) -> dict[str, Tensor]:
    """RD++'s projection loss and its three terms (``Revisit_RDLoss``), summed over the taps, float32, autocast off.

    - ``ssot``: per tap, the Sinkhorn divergence between the batch's softmaxed, flattened projections (one point per
      image) and the same batch in the order ``shuffle``;
    - ``reconstruct``: per tap, the mean over positions of 1 - cosine over channels of noisy vs clean projections;
    - ``contrast``: per tap, cosine-embedding loss (target -1, margin 0.5) of the noisy raw teacher features vs the
      clean projections, both flattened per image;
    - ``projection``: (ssot + 0.01 reconstruct + 0.1 contrast) / 1.11.
    """
    with torch.autocast(projected[0].device.type, enabled=False):
        teacher_noisy, projected_noisy, projected = (full_precision(features) for features in
                                                     (teacher_noisy, projected_noisy, projected))
        batch = projected[0].shape[0]
        target = -torch.ones(batch, device=projected[0].device)  # the official .to('cuda'), on any device
        shuffled = [clean[shuffle] for clean in projected]
        # the official order (every SSOT term, then every reconstruction, then every contrast term): autograd adds
        # the gradients reaching one tensor in that order, so the float rounding is the official one too
        ssot = sum_scales(_sinkhorn(torch.softmax(clean.reshape(batch, -1), -1),
                                  torch.softmax(mixed.reshape(batch, -1), -1))
                        for clean, mixed in zip(projected, shuffled, strict=True))
        reconstruct = sum_scales((1 - F.cosine_similarity(noisy, clean, dim=1)).mean()
                               for noisy, clean in zip(projected_noisy, projected, strict=True))
        contrast = sum_scales(F.cosine_embedding_loss(raw.reshape(batch, -1), clean.reshape(batch, -1), target,
                                                    margin=CONTRAST_MARGIN)
                            for raw, clean in zip(teacher_noisy, projected, strict=True))
        total = (ssot + RECONSTRUCT_WEIGHT * reconstruct + CONTRAST_WEIGHT * contrast) / PROJECTION_NORMALISER
        return {"projection": total, "ssot": ssot, "reconstruct": reconstruct, "contrast": contrast}


# ---------------------------------------------------------------------------------------------- noise pairs

def patch_bounds(image_size: int) -> tuple[int, int]:
    """The noise patch's side range [low, high): the official [10, 32) at 256 px (``np.random.randint(10, size // 8)``),
    scaled with the image size below it (at 64 px [2, 8))."""
    high = image_size // 8
    low = max(1, 10 * image_size // 256)
    return low, max(high, low + 1)


def noise_seed(seed: int) -> int:
    """The simplex permutation's seed of a run: one draw in the official range (``np.random.randint(-1e10, 1e10)``,
    made once per data set there) from the run's noise generator."""
    generator = _noise_generator(seed, 0)
    while True:
        value = int(torch.randint(SEED_RANGE[0], SEED_RANGE[1], (1,), generator=generator))
        if value:  # the official newSeed(0) would draw again
            return value


def _noise_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(_NOISE_STREAM + seed * 1_000_003 + epoch)


class NoisePairs:
    """A run's noisy copies: one fractal simplex field (seeded by the run), its patch placements and the SSOT shuffles
    drawn per epoch from the run's noise generator, a function of (seed, epoch) only, so a resumed run draws what an
    uninterrupted one does.

    The official data set draws its simplex seed once, and its patches' noise starts at the origin, so every patch
    is a corner of one field: ``field`` holds the largest, (3, high - 1, high - 1), on the device.
    """

    def __init__(self, seed: int, image_size: int, device: torch.device) -> None:
        self.seed, self.image_size = seed, image_size
        self.low, self.high = patch_bounds(image_size)
        side = self.high - 1
        self.field = torch.from_numpy(fractal_noise((3, side, side), noise_seed(seed))).float().to(device)

    def epoch(self, epoch: int, batch_sizes: list[int]) -> list[tuple[Tensor, Tensor]]:
        """Per batch of the epoch, its images' patches (B, 4: height, width, top, left) and the SSOT shuffle (B,),
        on the field's device (one copy per epoch). Drawn as the official loop does: each image's height, width,
        top and left (``MVTecDataset_train.__getitem__``), then the batch's ``randperm`` (``Revisit_RDLoss``)."""
        generator = _noise_generator(self.seed, epoch)
        size = self.image_size
        patches, shuffles = [], []
        for count in batch_sizes:
            rows = []
            for _ in range(count):
                height = int(torch.randint(self.low, self.high, (1,), generator=generator))
                width = int(torch.randint(self.low, self.high, (1,), generator=generator))
                top = int(torch.randint(1, size - height, (1,), generator=generator))
                left = int(torch.randint(1, size - width, (1,), generator=generator))
                rows.append((height, width, top, left))
            patches.append(torch.tensor(rows, dtype=torch.long))
            shuffles.append(torch.randperm(count, generator=generator))
        if not patches:
            return []
        device = self.field.device
        on_device = torch.cat([torch.cat(patches), torch.cat(shuffles)[:, None].expand(-1, 4)]).to(device)
        placed, mixed = on_device.split([sum(batch_sizes)] * 2)
        return list(zip(placed.split(batch_sizes), mixed[:, 0].split(batch_sizes)))

    def noisy(self, clean: Tensor, patches: Tensor) -> Tensor:
        """The noisy copy of the normalised batch ``clean`` with this run's field at ``patches`` (``noisy_images``)."""
        return noisy_images(clean, self.field, patches)


def noisy_images(clean: Tensor, field: Tensor, patches: Tensor) -> Tensor:
    """The normalised noisy copy of a normalised batch: ``NOISE_AMPLITUDE`` x the field's corner of each patch's size
    added at the patch to the [0, 1] image, then normalised, i.e. added divided by the channel's std. (B, 3, H, W)
    in ``clean``'s memory format; one gather, no per-image loop."""
    size_y, size_x = clean.shape[-2:]
    height, width, top, left = patches.unbind(1)
    rows = torch.arange(size_y, device=clean.device)[None] - top[:, None]  # (B, H): row inside the patch
    cols = torch.arange(size_x, device=clean.device)[None] - left[:, None]
    inside = ((rows >= 0) & (rows < height[:, None]))[:, :, None] & ((cols >= 0) & (cols < width[:, None]))[:, None]
    limit_y, limit_x = field.shape[1] - 1, field.shape[2] - 1
    patch = field[:, rows.clamp(0, limit_y)[:, :, None], cols.clamp(0, limit_x)[:, None, :]]  # (3, B, H, W)
    noise = torch.where(inside[None], patch * NOISE_AMPLITUDE / _channel_std(clean.device, field.dtype), 0.0)
    return clean + noise.permute(1, 0, 2, 3).to(clean.dtype)


@lru_cache(maxsize=None)
def _channel_std(device: torch.device, dtype: torch.dtype) -> Tensor:
    """ImageNet's per-channel std as (3, 1, 1, 1), made once per device and dtype (no host copy per step)."""
    return torch.tensor(IMAGENET_STD, dtype=dtype).view(3, 1, 1, 1).to(device)


def recipe_record() -> dict[str, object]:
    """RD++'s fixed settings, for an RD++ run's config.json (``rdpp``) and the shared-protocol check."""
    return {"projection_lr": PROJECTION_LR, "projection_betas": list(PROJECTION_BETAS),
            "projection_weight": PROJECTION_WEIGHT, "accumulation_steps": ACCUMULATION_STEPS,
            "reconstruct_weight": RECONSTRUCT_WEIGHT, "contrast_weight": CONTRAST_WEIGHT,
            "contrast_margin": CONTRAST_MARGIN, "noise_amplitude": NOISE_AMPLITUDE,
            "sinkhorn": {k: v for k, v in SINKHORN_SETTINGS.items() if v is not None and k != "verbose"}}

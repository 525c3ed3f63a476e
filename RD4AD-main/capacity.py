"""What an RD model costs: parameters per part, GFLOPs of one forward pass, feature shapes per scale; per method
(RD4AD, or RD++ with its projection layer: its parameters are trainable and its forward is part of scoring).

Counted on randomly initialised models (counts and FLOPs do not depend on the weights). The fair pair
is held to ResNet-50 RD's trainable capacity (docs/reproduction.md#1-architecture).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from backbone_facts import DEFAULT_METHOD
from backbones import build_model, get_backbone

__all__ = ["RESNET50_TRAINABLE", "WRN50_TRAINABLE", "ModelSummary", "count_parameters", "forward_gflops", "summarize"]

RESNET50_TRAINABLE = 46_651_392  # ResNet-50 RD's OCBE + decoder: the fair pair's reference capacity
WRN50_TRAINABLE = 83_802_624  # WRN-50-2 RD's (the paper's model): the big pair's reference capacity


@dataclass
class ModelSummary:
    backbone: str
    image_size: int
    teacher_params: int  # the part of the teacher that is used (truncated after the last tap)
    bottleneck_params: int
    decoder_params: int
    trainable_params: int  # OCBE + decoder (+ projection for RD++)
    gflops: float  # one forward pass (teacher + bottleneck + student), batch 1; a multiply-add is 2 FLOPs
    feature_shapes: list[list[int]]  # per scale, (C, H, W); student shapes equal teacher shapes
    family: str
    teacher_weights: str  # the torchvision weights enum a pretrained run loads
    imagenet_top1: float  # of those weights, %
    oce_blocks: int | None  # blocks of the one-class embedding (the bottleneck's ``depth``), when it says
    decoder_blocks: list[int] | None  # blocks per decoder stage, 1/16 first (the student's ``depths``)
    knobs: dict[str, Any]  # the knobs the registry entry fixes (on top of the builder's defaults)
    method: str = DEFAULT_METHOD  # "rd" or "rdpp"
    projection_params: int = 0  # RD++'s projection layer (0 under RD4AD)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def forward_gflops(model: nn.Module, image_size: int) -> tuple[float, tuple]:
    """GFLOPs of one forward pass at batch 1 (a multiply-add counts 2), and the forward's output."""
    parameter = next(model.parameters())
    images = torch.zeros(1, 3, image_size, image_size, device=parameter.device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        output = model(images)
    return round(counter.get_total_flops() / 1e9, 3), output


def summarize(backbone: str, image_size: int = 256, method: str = DEFAULT_METHOD) -> ModelSummary:
    """Count a randomly initialised model of ``backbone`` under ``method`` at ``image_size``."""
    model = build_model(backbone, pretrained=False, method=method).eval()
    gflops, (teacher_features, student_features) = forward_gflops(model, image_size)
    for t, s in zip(teacher_features, student_features, strict=True):
        assert t.shape == s.shape, f"{backbone}: teacher {tuple(t.shape)} != student {tuple(s.shape)}"
    bottleneck, decoder = count_parameters(model.bottleneck), count_parameters(model.student)
    trainable = count_parameters(model.trainable_modules())
    projection = trainable - bottleneck - decoder  # RD++'s projection: trainable beyond OCBE and decoder
    entry = get_backbone(backbone)
    depths = getattr(model.student, "depths", None)
    return ModelSummary(
        backbone=backbone,
        image_size=image_size,
        teacher_params=count_parameters(model.teacher),
        bottleneck_params=bottleneck,
        decoder_params=decoder,
        trainable_params=trainable,
        gflops=gflops,
        feature_shapes=[list(t.shape[1:]) for t in teacher_features],
        family=entry.family,
        teacher_weights=str(entry.default_weights),
        imagenet_top1=entry.imagenet_top1,
        oce_blocks=getattr(model.bottleneck, "depth", None),
        decoder_blocks=None if depths is None else list(depths),
        knobs=dict(entry.knobs),
        method=method,
        projection_params=projection,
    )

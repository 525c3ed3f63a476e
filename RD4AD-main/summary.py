"""``main.py summary``: parameter counts per part, GFLOPs of one forward pass, feature shapes per scale."""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from backbones import BACKBONES, build_model, parse_backbones
from dataset import validate_image_size

RESNET50_TRAINABLE = 46_651_392  # the fair pair's reference capacity (RD4AD_FACTS section 1)


@dataclass
class ModelSummary:
    backbone: str
    image_size: int
    teacher_params: int  # the part of the teacher that is used (truncated after the last tap)
    bottleneck_params: int
    decoder_params: int
    trainable_params: int
    gflops: float  # one forward pass (teacher + bottleneck + student), batch 1; a multiply-add is 2 FLOPs
    feature_shapes: list[list[int]]  # per scale, (C, H, W); student shapes equal teacher shapes


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def forward_gflops(model: nn.Module, image_size: int) -> tuple[float, tuple]:
    """GFLOPs of one forward pass at batch 1 (a multiply-add counts 2), and the forward's output."""
    parameter = next(model.parameters())
    images = torch.zeros(1, 3, image_size, image_size, device=parameter.device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        output = model(images)
    return round(counter.get_total_flops() / 1e9, 3), output


def summarize(backbone: str, image_size: int = 256) -> ModelSummary:
    """Count a randomly initialised model (counts and FLOPs do not depend on the weights)."""
    model = build_model(backbone, pretrained=False).eval()
    gflops, (teacher_features, student_features) = forward_gflops(model, image_size)
    for t, s in zip(teacher_features, student_features, strict=True):
        assert t.shape == s.shape, f"{backbone}: teacher {tuple(t.shape)} != student {tuple(s.shape)}"
    bottleneck, decoder = count_parameters(model.bottleneck), count_parameters(model.student)
    return ModelSummary(
        backbone=backbone,
        image_size=image_size,
        teacher_params=count_parameters(model.teacher),
        bottleneck_params=bottleneck,
        decoder_params=decoder,
        trainable_params=bottleneck + decoder,
        gflops=gflops,
        feature_shapes=[list(t.shape[1:]) for t in teacher_features],
    )


def format_table(summaries: list[ModelSummary]) -> str:
    """A markdown table (also readable in a terminal)."""
    header = "| backbone | teacher (used) | OCBE | decoder | trainable | vs ResNet-50 RD | GFLOPs | features (C@HxW) |"
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|---|"]
    for s in summaries:
        shapes = ", ".join(f"{c}@{h}x{w}" for c, h, w in s.feature_shapes)
        ratio = s.trainable_params / RESNET50_TRAINABLE - 1
        lines.append(f"| {s.backbone} | {s.teacher_params:,} | {s.bottleneck_params:,} | {s.decoder_params:,} | "
                     f"{s.trainable_params:,} | {ratio:+.1%} | {s.gflops:.2f} | {shapes} |")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", default="all", help=f"one of {', '.join(BACKBONES)}, a comma list, or 'all'")
    parser.add_argument("--image-size", type=int, default=256, help="input size in pixels (default 256)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    validate_image_size(args.image_size)
    summaries = [summarize(name, args.image_size) for name in parse_backbones(args.backbone)]
    if args.json:
        data = [asdict(s) for s in summaries]
        print(json.dumps(data[0] if len(data) == 1 else data, indent=2))
    else:
        print(f"RD models at {args.image_size} px (parameter counts exact; GFLOPs of one forward pass, batch 1)")
        print(format_table(summaries))
    return 0

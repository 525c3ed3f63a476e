"""Backbone registry: name -> builder of (teacher, bottleneck, student) and its default teacher weights.

Adding a backbone is one file with a builder ``fn(*, state_dict=None, source="", **knobs)`` returning
(teacher, bottleneck, student), plus one entry here (RD_Model_ResNet_to_ConvNeXt_Guide.md shows how).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn
from torchvision.models import WeightsEnum

import RD_ConvNeXt_Model
import RD_Swin_Model
import resnet
from errors import RDError
from rd_model import ReverseDistillation
from weights import load_weights_enum, load_weights_file

__all__ = ["BACKBONES", "FAIR_PAIR", "Backbone", "build_model", "get_backbone", "parse_backbones",
           "teacher_weights_id"]

Builder = Callable[..., tuple[nn.Module, nn.Module, nn.Module]]
# The capacity-matched pair of the fair comparison: same trainable size, one ResNet and one ConvNeXt teacher.
FAIR_PAIR = ("resnet50", "convnext_tiny")


@dataclass(frozen=True)
class Backbone:
    name: str
    builder: Builder
    default_weights: WeightsEnum
    family: str  # "resnet", "convnext", "swin", ...: reports group backbones by it


BACKBONES: dict[str, Backbone] = {
    "wide_resnet50_2": Backbone("wide_resnet50_2", resnet.wide_resnet50_2_rd, resnet.DEFAULT_WEIGHTS["wide_resnet50_2"], "resnet"),
    "resnet50": Backbone("resnet50", resnet.resnet50_rd, resnet.DEFAULT_WEIGHTS["resnet50"], "resnet"),
    "convnext_tiny": Backbone("convnext_tiny", RD_ConvNeXt_Model.convnext_tiny_rd, RD_ConvNeXt_Model.DEFAULT_WEIGHTS["convnext_tiny"], "convnext"),
    "convnext_small": Backbone("convnext_small", RD_ConvNeXt_Model.convnext_small_rd, RD_ConvNeXt_Model.DEFAULT_WEIGHTS["convnext_small"], "convnext"),
    "swin_t": Backbone("swin_t", RD_Swin_Model.swin_t_rd, RD_Swin_Model.DEFAULT_WEIGHTS["swin_t"], "swin"),
}


def get_backbone(name: str) -> Backbone:
    try:
        return BACKBONES[name]
    except KeyError:
        raise RDError(f"--backbone {name!r} is unknown; choose one of {', '.join(BACKBONES)}") from None


def parse_backbones(text: str) -> list[str]:
    """``"all"`` or a comma-separated list of registered names."""
    names = list(BACKBONES) if text == "all" else [n.strip() for n in text.split(",") if n.strip()]
    for name in names:
        get_backbone(name)
    return names


def teacher_weights_id(name: str, pretrained: bool, weights_path: str | os.PathLike | None) -> str:
    """How a run's teacher was initialised: the enum name, ``file:PATH`` or ``random``."""
    if weights_path is not None:
        return f"file:{os.fspath(weights_path)}"
    return str(get_backbone(name).default_weights) if pretrained else "random"


def build_model(name: str, *, pretrained: bool = True, weights_path: str | os.PathLike | None = None,
                **knobs: Any) -> ReverseDistillation:
    """Build an RD model. Pretrained teacher weights by default; failing to load them is an error.

    ``weights_path`` (a local state dict file) takes precedence over the torchvision enum;
    ``pretrained=False`` gives a random teacher and must be asked for explicitly (``--no-pretrained``).
    """
    backbone = get_backbone(name)
    state, source = None, "random"
    if weights_path is not None:
        state, source = load_weights_file(weights_path), os.fspath(weights_path)
    elif pretrained:
        state, source = load_weights_enum(backbone.default_weights), str(backbone.default_weights)
    teacher, bottleneck, student = backbone.builder(state_dict=state, source=source, **knobs)
    return ReverseDistillation(teacher, bottleneck, student)

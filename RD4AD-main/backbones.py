"""Backbone registry: name -> builder of (teacher, bottleneck, student) and its default teacher weights.

Adding a backbone is one file with a builder ``fn(*, state_dict=None, source="", **knobs)`` returning
(teacher, bottleneck, student), plus one entry here (RD_Model_ResNet_to_ConvNeXt_Guide.md shows how).
"""
from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
import torchvision
from torch import nn
from torchvision.models import WeightsEnum

import RD_ConvNeXt_Model
import RD_Swin_Model
import resnet
from backbone_facts import BIG_PAIR, DEFAULT_METHOD, FAIR_PAIR, FAMILIES, METHODS
from errors import RDError, WeightsError
from rd_model import ReverseDistillation
from rdpp import METHOD as RDPP, MultiProjection, RevisitedReverseDistillation
from weights import load_weights_enum, load_weights_file, mismatched_keys

__all__ = ["BACKBONES", "BIG_PAIR", "FAIR_PAIR", "Backbone", "backbones_fitting", "build_model", "check_knobs",
           "check_method",
           "check_teacher_weights", "get_backbone", "torchvision_architecture",
           "parse_backbones", "teacher_imagenet_top1", "teacher_weights_id"]

Builder = Callable[..., tuple[nn.Module, nn.Module, nn.Module]]


@dataclass(frozen=True)
class Backbone:
    name: str
    builder: Builder
    default_weights: WeightsEnum
    family: str  # "resnet", "convnext", "swin", ...: reports group backbones by it
    knobs: Mapping[str, Any] = field(default_factory=dict)  # builder knobs this variant fixes

    @property
    def imagenet_top1(self) -> float:
        """ImageNet-1K top-1 (%) of the default weights, from torchvision's weights metadata."""
        return float(self.default_weights.meta["_metrics"]["ImageNet-1K"]["acc@1"])

    def known_knobs(self) -> list[str]:
        """The builder's own keyword arguments: what ``--model-knobs`` may set."""
        parameters = inspect.signature(self.builder).parameters.values()
        return sorted(p.name for p in parameters
                      if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in ("state_dict", "source"))


def _backbone(name: str, builder: Builder, weights: WeightsEnum, **knobs: Any) -> Backbone:
    """A registry entry; its family comes from backbone_facts.FAMILIES (the torch-free facts reports read)."""
    return Backbone(name, builder, weights, FAMILIES[name], knobs)


BACKBONES: dict[str, Backbone] = {b.name: b for b in (
    _backbone("wide_resnet50_2", resnet.wide_resnet50_2_rd, resnet.DEFAULT_WEIGHTS["wide_resnet50_2"]),
    _backbone("resnet50", resnet.resnet50_rd, resnet.DEFAULT_WEIGHTS["resnet50"]),
    # the same ResNet-50 RD with a modern-recipe teacher: separates architecture from pretraining
    _backbone("resnet50_v2", resnet.resnet50_rd, resnet.DEFAULT_WEIGHTS["resnet50_v2"]),
    _backbone("convnext_tiny", RD_ConvNeXt_Model.convnext_tiny_rd, RD_ConvNeXt_Model.DEFAULT_WEIGHTS["convnext_tiny"]),
    _backbone("convnext_small", RD_ConvNeXt_Model.convnext_small_rd,
              RD_ConvNeXt_Model.DEFAULT_WEIGHTS["convnext_small"]),
    # ConvNeXt-Small RD with a wider embedding: trainable parameters within 15 % of WRN-50-2 RD's (the big pair)
    _backbone("convnext_small_matched", RD_ConvNeXt_Model.convnext_small_rd,
              RD_ConvNeXt_Model.DEFAULT_WEIGHTS["convnext_small"], embed_dim=1280),
    _backbone("swin_t", RD_Swin_Model.swin_t_rd, RD_Swin_Model.DEFAULT_WEIGHTS["swin_t"]),
)}
if list(BACKBONES) != list(FAMILIES):  # one list of names: the facts and the builders must agree
    raise RuntimeError(f"backbones.py and backbone_facts.FAMILIES name different backbones: {list(BACKBONES)} vs "
                       f"{list(FAMILIES)}")


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


def teacher_imagenet_top1(name: str, weights_id: str) -> float | None:
    """ImageNet top-1 (%) of a run's teacher: known when it loaded the registry's weights enum, else None."""
    backbone = get_backbone(name)
    return backbone.imagenet_top1 if weights_id == str(backbone.default_weights) else None


def check_method(method: str, flag: str = "--method") -> str:
    """``method`` if it is a known training method (backbone_facts.METHODS), else an RDError naming ``flag``."""
    if method not in METHODS:
        raise RDError(f"{flag} {method!r} is unknown; choose one of {', '.join(METHODS)}")
    return method


def build_model(name: str, *, pretrained: bool = True, weights_path: str | os.PathLike | None = None,
                method: str = DEFAULT_METHOD, **knobs: Any) -> ReverseDistillation:
    """Build an RD model, or with ``method="rdpp"`` an RD++ one (rdpp.py: a projection sized from the teacher's taps,
    built after the RD parts, so that a seed initialises those alike under both methods). Pretrained teacher weights
    by default; failing to load them is an error.

    ``weights_path`` (a local state dict file) takes precedence over the torchvision enum;
    ``pretrained=False`` gives a random teacher and must be asked for explicitly (``--no-pretrained``).
    """
    check_method(method)
    backbone = get_backbone(name)
    state, source = None, "random"
    if weights_path is not None:
        state, source = load_weights_file(weights_path), os.fspath(weights_path)
    elif pretrained:
        state, source = load_weights_enum(backbone.default_weights), str(backbone.default_weights)
    check_knobs(name, knobs)
    try:
        teacher, bottleneck, student = backbone.builder(state_dict=state, source=source, **{**backbone.knobs, **knobs})
    except WeightsError as error:
        owners = backbones_fitting(state) if state is not None else []
        hint = (f"; these weights fit {', '.join(owners)}" if owners else
                "; they fit none of the registered backbones (a whole torchvision model's state_dict is expected)")
        raise WeightsError(f"the {name} teacher cannot use them: {error}{hint}") from None
    if method == RDPP:
        return RevisitedReverseDistillation(teacher, bottleneck, student, MultiProjection(teacher.channels))
    return ReverseDistillation(teacher, bottleneck, student)


def check_teacher_weights(name: str, *, pretrained: bool = True, weights_path: str | os.PathLike | None = None) -> str:
    """Load the teacher weights a run of ``name`` would use and check that they fit its architecture, without
    building the model (seconds, not the minutes a sweep takes to reach its next backbone); returns what
    was found, raises WeightsError saying what is missing or wrong."""
    if weights_path is None and not pretrained:
        return "random teacher (--no-pretrained)"
    if weights_path is not None:
        state = load_weights_file(weights_path)
        with torch.device("meta"):
            expected = torchvision.models.get_model(torchvision_architecture(name)).state_dict()
        problems = mismatched_keys(expected, state)
        if problems:
            owners = backbones_fitting(state)
            fit = f"they fit {', '.join(owners)}" if owners else "they fit none of the registered backbones"
            raise WeightsError(f"--teacher-weights {weights_path} does not fit {name} ({problems[0]} and "
                               f"{len(problems) - 1} more mismatches); {fit}")
        return f"file {weights_path}"
    load_weights_enum(get_backbone(name).default_weights)
    return f"{get_backbone(name).default_weights} (found)"


def torchvision_architecture(name: str) -> str:
    """The torchvision model a backbone's teacher is cut from (the one its default weights belong to)."""
    weights_class = type(get_backbone(name).default_weights)
    return next(arch for arch in torchvision.models.list_models(torchvision.models)
                if torchvision.models.get_model_weights(arch) is weights_class)


def backbones_fitting(state: Mapping[str, Any]) -> list[str]:
    """Registered backbones whose whole torchvision teacher model has exactly ``state``'s keys and shapes
    (built on the meta device: no memory, no time)."""
    fitting = []
    for name in BACKBONES:
        with torch.device("meta"):
            expected = torchvision.models.get_model(torchvision_architecture(name)).state_dict()
        if not mismatched_keys(expected, dict(state)):
            fitting.append(name)
    return fitting


def check_knobs(name: str, knobs: Mapping[str, Any]) -> None:
    """Raise RDError naming the known knobs when ``knobs`` holds one that ``name``'s builder does not take."""
    known = get_backbone(name).known_knobs()
    unknown = sorted(set(knobs) - set(known))
    if unknown:
        raise RDError(f"--model-knobs {', '.join(unknown)}: not a knob of {name}; its knobs are "
                      f"{', '.join(known) or 'none'}")

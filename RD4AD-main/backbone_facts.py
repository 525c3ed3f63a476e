"""What reports need to know about the registered backbones (names in registry order, family, the study pairs) and
the training methods, without torch: modules that read results files import this, never the model code (backbones.py
builds on it).

**Arms.** A compared arm is a (backbone, method) pair with one name, the arm label: the bare backbone name for
RD4AD (``resnet50``: the names, folders and results of every RD run are what they were before RD++ existed) and
``<backbone>+<method>`` for another method (``resnet50+rdpp``). The label names the run folder
(``<results>/<arm>/<category>/seed<k>``), the runs table's ``backbone`` column (runs.load_runs; the paired statistics
key arms by it and treat it as an opaque name) and the pairs of a study config; ``registered_backbone`` and
``method`` columns hold its parts. ``arm_label`` and ``split_arm`` are the one mapping between them, so the family,
registry order and capacity lookups below take either a backbone or an arm label.
"""
from __future__ import annotations

__all__ = ["ARM_SEPARATOR", "BIG_PAIR", "DEFAULT_METHOD", "FAIR_PAIR", "FAMILIES", "METHODS", "RDPP_LOSS_TERMS",
           "UNKNOWN_FAMILY", "arm_label", "backbone_family", "method_label", "registry_order", "split_arm"]

# Registry order (the default pair order of a report) -> family ("resnet", "convnext", "swin"): reports group by it.
FAMILIES: dict[str, str] = {
    "wide_resnet50_2": "resnet",
    "resnet50": "resnet",
    "resnet50_v2": "resnet",  # the same ResNet-50 RD with a modern-recipe teacher
    "convnext_tiny": "convnext",
    "convnext_small": "convnext",
    "convnext_small_matched": "convnext",  # ConvNeXt-Small RD with a wider embedding (the big pair)
    "swin_t": "swin",
}
# The capacity-matched pair of the fair comparison: same trainable size, one ResNet and one ConvNeXt teacher.
FAIR_PAIR = ("resnet50", "convnext_tiny")
# The arms of the study presets (configs/): the paper's reference and the big pair's ConvNeXt.
BIG_PAIR = ("wide_resnet50_2", "convnext_small_matched")
UNKNOWN_FAMILY = "unknown"
# Training methods (``--method``) -> how reports name them; the first is the default, whose arms are bare backbones.
METHODS: dict[str, str] = {
    "rd": "RD4AD",  # Deng & Li, CVPR 2022: the study's method (docs/reproduction.md sections 1-3)
    "rdpp": "RD++",  # Tien et al., CVPR 2023: projection, simplex-noise pairs, OT losses (docs/reproduction.md, 11)
}
DEFAULT_METHOD = "rd"
ARM_SEPARATOR = "+"
# RD++'s loss terms after RD's three per-scale ones (rdpp.LOSS_TERMS; history.csv's runs.RDPP_LOSS_COLUMNS), here
# so that the results readers know them without torch
RDPP_LOSS_TERMS = ("distill", "projection", "ssot", "reconstruct", "contrast")


def arm_label(backbone: str, method: str = DEFAULT_METHOD) -> str:
    """The arm of ``backbone`` trained with ``method``: the backbone itself under RD4AD, ``backbone+method`` else."""
    return backbone if method == DEFAULT_METHOD else f"{backbone}{ARM_SEPARATOR}{method}"


def split_arm(arm: str) -> tuple[str, str]:
    """(backbone, method) of an arm label (``arm_label``'s inverse); a name without a known method suffix is an RD4AD
    arm of that name."""
    backbone, separator, method = arm.rpartition(ARM_SEPARATOR)
    if separator and backbone and method in METHODS and method != DEFAULT_METHOD:
        return backbone, method
    return arm, DEFAULT_METHOD


def method_label(method: str) -> str:
    """How reports name a method (``RD++``); an unknown one by itself."""
    return METHODS.get(method, method)


def backbone_family(name: str) -> str:
    """The registry's family of a backbone or arm label, ``unknown`` when unregistered."""
    return FAMILIES.get(split_arm(name)[0], UNKNOWN_FAMILY)


def registry_order(name: str) -> tuple[int, int, str]:
    """Sort key of backbones and arm labels: registry order, then method order, then the others by name."""
    order, methods = list(FAMILIES), list(METHODS)
    backbone, method = split_arm(name)
    return (order.index(backbone) if backbone in order else len(order), methods.index(method), name)

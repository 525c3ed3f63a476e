"""What reports need to know about the registered backbones (names in registry order, family, the study pairs),
without torch: modules that read results files import this, never the model code (backbones.py builds on it)."""
from __future__ import annotations

__all__ = ["BIG_PAIR", "FAIR_PAIR", "FAMILIES", "UNKNOWN_FAMILY", "backbone_family", "registry_order"]

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


def backbone_family(name: str) -> str:
    """The registry's family of a backbone, ``unknown`` when unregistered."""
    return FAMILIES.get(name, UNKNOWN_FAMILY)


def registry_order(name: str) -> tuple[int, str]:
    """Sort key: registered backbones in registry order, then the others by name."""
    order = list(FAMILIES)
    return (order.index(name) if name in order else len(order), name)

"""ResNet teacher encoders and the one-class bottleneck embedding (OCBE) of RD4AD.

The teacher is torchvision's ResNet truncated after layer3; it returns the layer1/2/3 features
(256@1/4, 512@1/8, 1024@1/16). The OCBE fuses those three scales at 1/16 (multi-scale feature
fusion, MFF) and compresses them into one 2048@1/32 embedding with one ResNet stage of three
bottleneck blocks (one-class embedding, OCE). Unlike the original code it has no unused
``conv4``/``bn4`` (8.39 M dead parameters that break DistributedDataParallel).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn
from torchvision.models import ResNet, ResNet50_Weights, Wide_ResNet50_2_Weights, resnet50, wide_resnet50_2
from torchvision.models.resnet import Bottleneck, conv1x1, conv3x3

from de_resnet import ResNetDecoder, init_like_official
from weights import apply_state_dict

__all__ = ["DEFAULT_WEIGHTS", "ResNetOCBE", "ResNetTeacher", "resnet50_rd", "wide_resnet50_2_rd"]


class ResNetTeacher(nn.Module):
    """Stem and layer1..3 of a torchvision ResNet; returns the three stage outputs."""

    def __init__(self, model: ResNet) -> None:
        super().__init__()
        self.stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
        self.layer1, self.layer2, self.layer3 = model.layer1, model.layer2, model.layer3
        self.channels = (
            model.layer1[-1].conv3.out_channels,
            model.layer2[-1].conv3.out_channels,
            model.layer3[-1].conv3.out_channels,
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        f1 = self.layer1(self.stem(x))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        return [f1, f2, f3]


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(conv3x3(in_channels, out_channels, stride=2), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class ResNetOCBE(nn.Module):
    """Multi-scale fusion to 1/16 then a stride-2 stage of bottleneck blocks to 1/32.

    Args:
        channels: teacher channels per scale, e.g. (256, 512, 1024).
        width_per_group: bottleneck width of the OCE blocks; follows the teacher (128 for WRN-50-2).
        blocks: number of bottleneck blocks in the OCE stage (3 in RD4AD).
    """

    def __init__(self, channels: tuple[int, int, int] = (256, 512, 1024), width_per_group: int = 64,
                 blocks: int = 3) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.fuse1 = nn.Sequential(_conv_bn_relu(c1, c2), _conv_bn_relu(c2, c3))  # 1/4 -> 1/16
        self.fuse2 = _conv_bn_relu(c2, c3)  # 1/8 -> 1/16
        planes = c3 // 2  # 512 for the standard widths
        out_channels = planes * Bottleneck.expansion
        fused = 3 * c3
        shortcut = nn.Sequential(conv1x1(fused, out_channels, stride=2), nn.BatchNorm2d(out_channels))
        layers = [Bottleneck(fused, planes, stride=2, downsample=shortcut, base_width=width_per_group)]
        layers += [Bottleneck(out_channels, planes, base_width=width_per_group) for _ in range(blocks - 1)]
        self.embed = nn.Sequential(*layers)
        self.out_channels = out_channels
        self.depth = blocks
        init_like_official(self)

    def forward(self, features: list[Tensor]) -> Tensor:
        f1, f2, f3 = features
        fused = torch.cat([self.fuse1(f1), self.fuse2(f2), f3], dim=1)
        return self.embed(fused)


def _build(model_fn: Callable[..., ResNet], width_per_group: int, state_dict: dict[str, Tensor] | None,
           source: str) -> tuple[nn.Module, nn.Module, nn.Module]:
    model = model_fn(weights=None)
    if state_dict is not None:
        apply_state_dict(model, state_dict, source)
    teacher = ResNetTeacher(model)
    bottleneck = ResNetOCBE(teacher.channels, width_per_group=width_per_group)
    student = ResNetDecoder(bottleneck.out_channels, width_per_group=width_per_group)
    return teacher, bottleneck, student


def wide_resnet50_2_rd(*, state_dict: dict[str, Tensor] | None = None,
                       source: str = "") -> tuple[nn.Module, nn.Module, nn.Module]:
    """RD4AD as in the paper: WRN-50-2 teacher; (teacher, OCBE, decoder)."""
    return _build(wide_resnet50_2, 128, state_dict, source)


def resnet50_rd(*, state_dict: dict[str, Tensor] | None = None,
                source: str = "") -> tuple[nn.Module, nn.Module, nn.Module]:
    """RD with a ResNet-50 teacher; (teacher, OCBE, decoder)."""
    return _build(resnet50, 64, state_dict, source)


DEFAULT_WEIGHTS = {
    "wide_resnet50_2": Wide_ResNet50_2_Weights.IMAGENET1K_V1,  # the paper's teacher
    "resnet50": ResNet50_Weights.IMAGENET1K_V1,  # 2015-style recipe, as the paper's
    "resnet50_v2": ResNet50_Weights.IMAGENET1K_V2,  # a modern recipe: the pretraining-matched control
}

"""The RD4AD student: a ResNet decoder that maps the 1/32 embedding back to the teacher's three scales.

Three stages of bottleneck blocks ([3, 4, 6] blocks, planes 256/128/64) go 1/32 -> 1/16 -> 1/8 -> 1/4;
the first block of each stage upsamples with a 2x2 stride-2 transposed convolution in place of its
3x3 convolution, and its shortcut is a 2x2 stride-2 transposed convolution + BatchNorm.
"""
from __future__ import annotations

from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck, conv1x1

__all__ = ["ResNetDecoder", "UpBottleneck", "deconv2x2", "init_like_official"]


def deconv2x2(in_channels: int, out_channels: int) -> nn.ConvTranspose2d:
    """2x upsampling by a 2x2 stride-2 transposed convolution."""
    return nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2, bias=False)


class UpBottleneck(nn.Module):
    """Bottleneck block whose middle convolution upsamples x2 (the first block of a decoder stage)."""

    expansion = Bottleneck.expansion

    def __init__(self, in_channels: int, planes: int, width_per_group: int = 64) -> None:
        super().__init__()
        width = int(planes * width_per_group / 64)
        out_channels = planes * self.expansion
        self.conv1, self.bn1 = conv1x1(in_channels, width), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = deconv2x2(width, width), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = conv1x1(width, out_channels), nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.upsample = nn.Sequential(deconv2x2(in_channels, out_channels), nn.BatchNorm2d(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.upsample(x))


def init_like_official(module: nn.Module) -> None:
    """RD4AD's init loop (docs/reproduction.md#1-architecture): Kaiming-normal (fan_out, ReLU) for
    ``nn.Conv2d``, weight 1 / bias 0 for BatchNorm and GroupNorm. ``nn.ConvTranspose2d`` is not an
    ``nn.Conv2d``, so the transposed convolutions keep PyTorch's default init, as in the official code."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _stage(in_channels: int, planes: int, blocks: int, width_per_group: int) -> nn.Sequential:
    out_channels = planes * Bottleneck.expansion
    layers: list[nn.Module] = [UpBottleneck(in_channels, planes, width_per_group)]
    layers += [Bottleneck(out_channels, planes, base_width=width_per_group) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ResNetDecoder(nn.Module):
    """Student decoder; returns features at 1/4, 1/8, 1/16 (the teacher's order)."""

    def __init__(self, in_channels: int = 2048, width_per_group: int = 64,
                 blocks: tuple[int, int, int] = (3, 4, 6)) -> None:
        super().__init__()
        planes = (in_channels // 8, in_channels // 16, in_channels // 32)  # 256, 128, 64
        self.stage1 = _stage(in_channels, planes[0], blocks[0], width_per_group)  # -> 1/16
        self.stage2 = _stage(planes[0] * 4, planes[1], blocks[1], width_per_group)  # -> 1/8
        self.stage3 = _stage(planes[1] * 4, planes[2], blocks[2], width_per_group)  # -> 1/4
        self.depths = tuple(blocks)  # blocks per stage, 1/16 first
        init_like_official(self)

    def forward(self, embedding: Tensor) -> list[Tensor]:
        d3 = self.stage1(embedding)
        d2 = self.stage2(d3)
        d1 = self.stage3(d2)
        return [d1, d2, d3]

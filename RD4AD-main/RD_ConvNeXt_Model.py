"""Reverse Distillation with a ConvNeXt teacher: teacher taps, a ConvNeXt-style OCBE and decoder.

Design choices (see RD_Model_ResNet_to_ConvNeXt_Guide.md for the long form):

- Teacher: torchvision ConvNeXt truncated after stage 3. The taps are the outputs of stages 1-3
  (``features[1]``, ``features[3]``, ``features[5]``: 96@1/4, 192@1/8, 384@1/16 for Tiny), the same
  strides as ResNet's layer1-3. It is built with ``stochastic_depth_prob=0`` and kept in eval mode,
  so drop path can never make the distillation targets random. ``tap_norm=True`` (an ablation knob)
  takes each tap after the channel LayerNorm that opens the next downsampling layer (pretrained
  with the teacher) instead of from the raw residual stream.
- OCBE: ConvNeXt downsampling (channel LayerNorm + 2x2 stride-2 conv) brings scales 1 and 2 to 1/16,
  as RD4AD's strided 3x3 convs do; the three are concatenated (1152 channels for Tiny), downsampled
  to 1/32 and passed through ``oce_depth`` ConvNeXt blocks of width ``embed_dim``: the one-class
  embedding, mirroring RD4AD's one ResNet stage of three blocks.
- Decoder: per scale, LayerNorm + 2x2 stride-2 transposed conv upsampling (RD4AD's 2x2 deconv),
  then ConvNeXt blocks (depthwise 7x7, LayerNorm, inverted bottleneck with GELU, layer scale) whose
  depths mirror the teacher's stages 1-3 by default (the decoder's ``depths`` attribute; ``main.py
  summary`` prints every variant's, and the guide's table is generated from it).
- Capacity: ``embed_dim=1024`` with 3 OCE blocks puts the ConvNeXt-Tiny RD's trainable parameters
  close to the ResNet-50 RD's (``main.py summary --backbones all`` prints both; a test holds them
  within 15 %), so the fair pair is capacity-matched; ``embed_dim``, ``oce_depth``, ``decoder_depths``
  and ``tap_norm`` are the knobs. ``convnext_small_matched`` (backbones.py) widens the embedding so
  that ConvNeXt-Small RD matches WRN-50-2 RD's capacity: the big pair.
- Student blocks use no stochastic depth either: the recipe is shared with the ResNet student,
  which has no such regulariser.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Sequence

import torch
from torch import Tensor, nn
from torchvision.models import ConvNeXt, ConvNeXt_Small_Weights, ConvNeXt_Tiny_Weights, convnext_small, convnext_tiny
from torchvision.models.convnext import CNBlock, LayerNorm2d

from weights import apply_state_dict

__all__ = ["DEFAULT_WEIGHTS", "ConvNeXtDecoder", "ConvNeXtOCBE", "ConvNeXtTeacher", "convnext_small_rd",
           "convnext_tiny_rd"]

TAP_INDICES = (1, 3, 5)  # outputs of stages 1, 2, 3 in ConvNeXt.features
Norm2d = partial(LayerNorm2d, eps=1e-6)
BlockNorm = partial(nn.LayerNorm, eps=1e-6)


class ConvNeXtTeacher(nn.Module):
    """``features[0..5]`` of a torchvision ConvNeXt; returns the outputs of stages 1-3.

    With ``tap_norm`` each tap passes through the LayerNorm that opens the next downsampling layer
    (``features[2][0]``, ``[4][0]``, ``[6][0]``, with their pretrained weights).
    """

    def __init__(self, model: ConvNeXt, tap_norm: bool = False) -> None:
        super().__init__()
        self.features = model.features[: TAP_INDICES[-1] + 1]
        self.channels = tuple(self.features[i][-1].block[0].in_channels for i in TAP_INDICES)
        self.tap_norms = nn.ModuleList(model.features[i + 1][0] for i in TAP_INDICES) if tap_norm else None

    def forward(self, x: Tensor) -> list[Tensor]:
        taps = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in TAP_INDICES:
                taps.append(x)
        if self.tap_norms is not None:
            taps = [norm(tap) for norm, tap in zip(self.tap_norms, taps, strict=True)]
        return taps


def downsample(in_channels: int, out_channels: int) -> nn.Sequential:
    """ConvNeXt's between-stage downsampling: channel LayerNorm then a 2x2 stride-2 conv."""
    return nn.Sequential(Norm2d(in_channels), nn.Conv2d(in_channels, out_channels, kernel_size=2, stride=2))


def upsample(in_channels: int, out_channels: int) -> nn.Sequential:
    """The decoder's mirror of ``downsample``: LayerNorm then a 2x2 stride-2 transposed conv."""
    return nn.Sequential(Norm2d(in_channels), nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2))


def blocks(dim: int, depth: int, layer_scale: float) -> nn.Sequential:
    return nn.Sequential(*[CNBlock(dim, layer_scale, stochastic_depth_prob=0.0, norm_layer=BlockNorm) for _ in range(depth)])


class ConvNeXtOCBE(nn.Module):
    """Fuse the three taps at 1/16, then ``oce_depth`` ConvNeXt blocks of width ``embed_dim`` at 1/32."""

    def __init__(self, channels: Sequence[int] = (96, 192, 384), embed_dim: int = 1024, oce_depth: int = 3,
                 layer_scale: float = 1e-6) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.fuse1 = nn.Sequential(downsample(c1, c2), downsample(c2, c3))  # 1/4 -> 1/16
        self.fuse2 = downsample(c2, c3)  # 1/8 -> 1/16
        self.embed = nn.Sequential(downsample(3 * c3, embed_dim), blocks(embed_dim, oce_depth, layer_scale))
        self.out_channels = embed_dim
        self.depth = oce_depth
        _init_weights(self)

    def forward(self, features: list[Tensor]) -> Tensor:
        f1, f2, f3 = features
        return self.embed(torch.cat([self.fuse1(f1), self.fuse2(f2), f3], dim=1))


class ConvNeXtDecoder(nn.Module):
    """Upsample + ConvNeXt blocks per scale; returns features at 1/4, 1/8, 1/16 (the teacher's order)."""

    def __init__(self, embed_dim: int = 1024, channels: Sequence[int] = (96, 192, 384),
                 depths: Sequence[int] = (3, 3, 9), layer_scale: float = 1e-6) -> None:
        super().__init__()
        c1, c2, c3 = channels
        d1, d2, d3 = depths
        self.stage1 = nn.Sequential(upsample(embed_dim, c3), blocks(c3, d3, layer_scale))  # -> 1/16
        self.stage2 = nn.Sequential(upsample(c3, c2), blocks(c2, d2, layer_scale))  # -> 1/8
        self.stage3 = nn.Sequential(upsample(c2, c1), blocks(c1, d1, layer_scale))  # -> 1/4
        self.depths = (d3, d2, d1)  # blocks per stage, 1/16 first
        _init_weights(self)

    def forward(self, embedding: Tensor) -> list[Tensor]:
        d3 = self.stage1(embedding)
        d2 = self.stage2(d3)
        d1 = self.stage3(d2)
        return [d1, d2, d3]


def _init_weights(module: nn.Module) -> None:
    """Truncated-normal weights and zero biases, as torchvision's ConvNeXt."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _build(model_fn: Callable[..., ConvNeXt], state_dict: dict[str, Tensor] | None, source: str,
           embed_dim: int, oce_depth: int, decoder_depths: Sequence[int] | None,
           layer_scale: float, tap_norm: bool) -> tuple[nn.Module, nn.Module, nn.Module]:
    model = model_fn(weights=None, stochastic_depth_prob=0.0)
    if state_dict is not None:
        apply_state_dict(model, state_dict, source)
    teacher = ConvNeXtTeacher(model, tap_norm)
    if decoder_depths is None:  # mirror the teacher's stages 1-3
        decoder_depths = tuple(len(teacher.features[i]) for i in TAP_INDICES)
    bottleneck = ConvNeXtOCBE(teacher.channels, embed_dim, oce_depth, layer_scale)
    student = ConvNeXtDecoder(embed_dim, teacher.channels, decoder_depths, layer_scale)
    return teacher, bottleneck, student


def convnext_tiny_rd(*, state_dict: dict[str, Tensor] | None = None, source: str = "", embed_dim: int = 1024,
                     oce_depth: int = 3, decoder_depths: Sequence[int] | None = None,
                     layer_scale: float = 1e-6, tap_norm: bool = False) -> tuple[nn.Module, nn.Module, nn.Module]:
    """RD with a ConvNeXt-Tiny teacher, capacity-matched to the ResNet-50 RD; (teacher, OCBE, decoder).

    ``decoder_depths`` are given at 1/4, 1/8, 1/16 (default: the teacher's stages 1-3).
    """
    return _build(convnext_tiny, state_dict, source, embed_dim, oce_depth, decoder_depths, layer_scale, tap_norm)


def convnext_small_rd(*, state_dict: dict[str, Tensor] | None = None, source: str = "", embed_dim: int = 1024,
                      oce_depth: int = 3, decoder_depths: Sequence[int] | None = None,
                      layer_scale: float = 1e-6, tap_norm: bool = False) -> tuple[nn.Module, nn.Module, nn.Module]:
    """RD with a ConvNeXt-Small teacher (its stage 3, and so the decoder's 1/16 stage, has 27 blocks);
    (teacher, OCBE, decoder). ``decoder_depths`` are given at 1/4, 1/8, 1/16."""
    return _build(convnext_small, state_dict, source, embed_dim, oce_depth, decoder_depths, layer_scale, tap_norm)


DEFAULT_WEIGHTS = {
    "convnext_tiny": ConvNeXt_Tiny_Weights.IMAGENET1K_V1,
    "convnext_small": ConvNeXt_Small_Weights.IMAGENET1K_V1,
}

"""Reverse Distillation with a Swin-T teacher: teacher taps, a Swin-style OCBE and a Swin decoder.

Design choices:

- Teacher: torchvision ``swin_t`` truncated after stage 3. The taps are the outputs of stages 1-3
  (``features[1]``, ``features[3]``, ``features[5]``: 96@1/4, 192@1/8, 384@1/16), the same strides
  and tap indices as ConvNeXt's and ResNet's layer1-3. Swin keeps its token maps channels-last
  (N, H, W, C); the teacher hands them out as (N, C, H, W) views, so the loss and the anomaly map
  need no change. It is built with ``stochastic_depth_prob=0`` (torchvision's default is 0.2) and
  kept in eval mode, so drop path can never make the distillation targets random; as ``swin_t()``
  fixes that rate and refuses the keyword, the model is built from ``SwinTransformer`` with
  ``swin_t``'s configuration (a test checks it is the same architecture).
- Teacher padding: window-7 attention needs maps in whole windows, and torchvision pads the others
  with zero tokens that every real token of the window attends to (at 256 px the 64, 32 and 16 px
  maps become 70, 35 and 21: about a quarter of the stage-3 positions, a band along the bottom and
  right edges, attend partly to padding; a handicap only this family would carry). The teacher's
  attention (``PaddingMaskedAttention``) masks padded tokens out as keys, so no real token's output
  depends on what the padding holds; a map already in whole windows (every map at 224 px, Swin's
  pretraining size) runs torchvision's own code, bit for bit.
- OCBE (RD4AD's MFF + OCE): Swin's own downsampling, patch merging (2x2 space-to-depth, LayerNorm,
  linear), takes the place of RD4AD's strided 3x3 convs and of ConvNeXt's 2x2 strided convs: it
  brings scales 1 and 2 to 1/16 at the teacher's widths; the three are concatenated (1152 channels),
  merged to 1/32 at width ``embed_dim`` and passed through ``oce_depth`` Swin blocks (the second one
  shifted): the one-class embedding, in the place of the teacher's unused stage 4, as RD4AD's OCE is
  one ResNet stage in the place of layer4.
- Decoder: per scale, patch expanding (LayerNorm, linear to 4x the output width, depth-to-space in
  patch merging's 2x2 order: the exact transpose of patch merging, i.e. RD4AD's 2x2 stride-2
  deconvolution written channels-last), then Swin blocks (regular and shifted windows alternating)
  whose depths mirror the teacher's stages in reverse: 6, 2, 2 at 1/16, 1/8, 1/4. Each scale's
  output is the last block's residual stream, un-normalised, as the teacher's taps are.
- Same as the ConvNeXt student: the layout (downsample-fuse-concat, merge to 1/32, blocks; then
  upsample + blocks per scale, depths mirroring the teacher), ``embed_dim=1024`` so both modern
  families compress to the same embedding width, no stochastic depth, the teacher family's own
  from-scratch init. Different: the blocks are the teacher's (windowed self-attention + MLP
  instead of depthwise 7x7 conv + MLP), the OCE has 2 blocks (Swin's stage 4 depth; a 1024-wide Swin
  block holds 12.6 M parameters, so 3 would overshoot the capacity match), there is no layer scale
  (Swin v1 blocks have none), and everything between the taps runs channels-last.
- Window: the student's attention window is 8, not the teacher's 7. At the standard 256 px every
  student map (64, 32, 16, 8 px) is then a whole number of windows, so no padded token enters the
  student's attention and the 8x8 embedding attends globally in one window; with 7 the 8x8 embedding
  would be padded to 14x14 (4 windows, 3x the attention slots for the same 64 tokens). torchvision
  pads maps smaller than a window (the 2x2 embedding at 64 px) and turns the shift off there, so any
  multiple of 32 px works; at such sizes the trainable student does attend to zero padding (the
  teacher never does, see above). Heads follow Swin's head width of 32 channels.
- Capacity: ``embed_dim=1024``, ``oce_depth=2`` puts the trainable parameters within a few percent
  of the ResNet-50 RD's (``main.py summary`` prints both once the family is registered; a test holds
  them within 15 %); the knobs are ``embed_dim``, ``oce_depth``, ``decoder_depths``, ``window_size``
  and ``head_dim``.
"""
from __future__ import annotations

from functools import partial
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import SwinTransformer, Swin_T_Weights
from torchvision.models.swin_transformer import PatchMerging, ShiftedWindowAttention, SwinTransformerBlock

from weights import apply_state_dict

__all__ = ["SwinTeacher", "SwinOCBE", "SwinDecoder", "PatchExpanding", "PaddingMaskedAttention", "swin_t_teacher_model",
           "swin_t_rd", "DEFAULT_WEIGHTS"]

TAP_INDICES = (1, 3, 5)  # outputs of stages 1, 2, 3 in SwinTransformer.features
# torchvision's swin_t() configuration; its stochastic depth (0.2) is turned off in swin_t_teacher_model
SWIN_T_CONFIG = dict(patch_size=[4, 4], embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=[7, 7])
Norm = partial(nn.LayerNorm, eps=1e-5)  # torchvision's Swin norm layer


def to_channels_first(x: Tensor) -> Tensor:
    """(N, H, W, C) -> (N, C, H, W), a view (its memory is then channels_last)."""
    return x.permute(0, 3, 1, 2)


def to_channels_last(x: Tensor) -> Tensor:
    """(N, C, H, W) -> (N, H, W, C), a view."""
    return x.permute(0, 2, 3, 1)


class PaddingMaskedAttention(ShiftedWindowAttention):
    """torchvision's (shifted) window attention, with the tokens that pad a map to whole windows masked out as
    keys (-inf before the softmax: weight exactly 0), so a real token's output never depends on the padding.

    Same parameters and state-dict keys as ``ShiftedWindowAttention`` (an instance is converted in place); a map
    already in whole windows goes through torchvision's own forward unchanged.
    """

    @classmethod
    def convert(cls, attention: ShiftedWindowAttention) -> "PaddingMaskedAttention":
        attention.__class__ = cls
        return attention  # type: ignore[return-value]

    def pad(self, x: Tensor, bottom: int, right: int) -> Tensor:
        """The map padded to whole windows (zeros, as torchvision pads; masked out below whatever it holds)."""
        return F.pad(x, (0, 0, 0, right, 0, bottom))

    def forward(self, x: Tensor) -> Tensor:
        _, height, width, channels = x.shape
        wh, ww = self.window_size
        bottom, right = (wh - height % wh) % wh, (ww - width % ww) % ww
        if not bottom and not right:
            return super().forward(x)
        x = self.pad(x, bottom, right)
        n, ph, pw, _ = x.shape
        # as torchvision: no shift along a side that one window covers
        shift = [self.shift_size[0] if wh < ph else 0, self.shift_size[1] if ww < pw else 0]
        real = torch.zeros(ph, pw, dtype=torch.bool, device=x.device)
        real[:height, :width] = True
        if sum(shift) > 0:
            x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
            real = torch.roll(real, shifts=(-shift[0], -shift[1]), dims=(0, 1))
        windows = (ph // wh) * (pw // ww)
        tokens = wh * ww
        x = x.view(n, ph // wh, wh, pw // ww, ww, channels).permute(0, 1, 3, 2, 4, 5).reshape(n * windows, tokens,
                                                                                              channels)
        heads = self.num_heads
        qkv = F.linear(x, self.qkv.weight, self.qkv.bias)
        q, k, v = qkv.reshape(x.size(0), tokens, 3, heads, channels // heads).permute(2, 0, 3, 1, 4)
        attn = (q * (channels // heads) ** -0.5).matmul(k.transpose(-2, -1)) + self.get_relative_position_bias()
        mask = self._window_mask(ph, pw, shift, windows, attn.dtype, x.device)
        key_is_real = real.view(ph // wh, wh, pw // ww, ww).permute(0, 2, 1, 3).reshape(windows, 1, tokens)
        mask = mask.masked_fill(~key_is_real, float("-inf"))  # every window holds real keys: no row is all -inf
        attn = (attn.view(n, windows, heads, tokens, tokens) + mask.unsqueeze(1).unsqueeze(0)).view(-1, heads, tokens,
                                                                                                    tokens)
        attn = F.dropout(F.softmax(attn, dim=-1), p=self.attention_dropout, training=self.training)
        x = attn.matmul(v).transpose(1, 2).reshape(x.size(0), tokens, channels)
        x = F.dropout(F.linear(x, self.proj.weight, self.proj.bias), p=self.dropout, training=self.training)
        x = x.view(n, ph // wh, pw // ww, wh, ww, channels).permute(0, 1, 3, 2, 4, 5).reshape(n, ph, pw, channels)
        if sum(shift) > 0:
            x = torch.roll(x, shifts=(shift[0], shift[1]), dims=(1, 2))
        return x[:, :height, :width, :].contiguous()

    def _window_mask(self, ph: int, pw: int, shift: list[int], windows: int, dtype: torch.dtype,
                     device: torch.device) -> Tensor:
        """torchvision's shifted-window mask (-100 between tokens of different regions; zeros without a shift)."""
        wh, ww = self.window_size
        tokens = wh * ww
        if sum(shift) == 0:
            return torch.zeros(windows, tokens, tokens, dtype=dtype, device=device)
        region = torch.zeros(ph, pw, device=device)
        count = 0
        for h in ((0, -wh), (-wh, -shift[0]), (-shift[0], None)):
            for w in ((0, -ww), (-ww, -shift[1]), (-shift[1], None)):
                region[h[0]:h[1], w[0]:w[1]] = count
                count += 1
        region = region.view(ph // wh, wh, pw // ww, ww).permute(0, 2, 1, 3).reshape(windows, tokens)
        differs = region.unsqueeze(1) - region.unsqueeze(2)
        return differs.masked_fill(differs != 0, -100.0).masked_fill(differs == 0, 0.0).to(dtype)


class SwinTeacher(nn.Module):
    """``features[0..5]`` of a torchvision Swin Transformer; returns stages 1-3 as (N, C, H, W). Its attention
    masks the padding of maps that are not whole windows (``PaddingMaskedAttention``)."""

    # What the teacher computes changed without its weights changing: 2 = padded tokens masked out of the attention
    # (1 attended to unmasked zero padding). checkpoint.teacher_digest covers it, so a run trained on revision 1
    # is refused, not resumed or tested with a teacher it was not trained against.
    code_revision = 2

    def __init__(self, model: SwinTransformer) -> None:
        super().__init__()
        self.features = model.features[: TAP_INDICES[-1] + 1]
        self.channels = tuple(self.features[i][-1].norm1.normalized_shape[0] for i in TAP_INDICES)
        for module in self.features.modules():
            if type(module) is ShiftedWindowAttention:
                PaddingMaskedAttention.convert(module)

    def forward(self, x: Tensor) -> list[Tensor]:
        taps = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in TAP_INDICES:
                taps.append(to_channels_first(x))
        return taps


def patch_merging(in_dim: int, out_dim: int | None = None) -> PatchMerging:
    """Swin's 2x downsampling (2x2 space-to-depth, LayerNorm, linear) to ``out_dim`` (2x by default)."""
    merge = PatchMerging(in_dim, Norm)
    if out_dim is not None and out_dim != 2 * in_dim:
        merge.reduction = nn.Linear(4 * in_dim, out_dim, bias=False)
    return merge


class PatchExpanding(nn.Module):
    """Transpose of patch merging: LayerNorm, linear to 4x ``out_dim``, depth-to-space; channels-last."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = Norm(in_dim)
        self.expansion = nn.Linear(in_dim, 4 * out_dim, bias=False)
        self.out_dim = out_dim

    def forward(self, x: Tensor) -> Tensor:
        n, h, w, _ = x.shape
        x = self.expansion(self.norm(x))
        # channel groups in patch merging's order: (row 0, col 0), (1, 0), (0, 1), (1, 1)
        x = x.view(n, h, w, 2, 2, self.out_dim).permute(0, 1, 4, 2, 3, 5)  # n, h, row, w, col, c
        return x.reshape(n, 2 * h, 2 * w, self.out_dim)


def swin_blocks(dim: int, depth: int, window_size: int, head_dim: int) -> nn.Sequential:
    """``depth`` Swin blocks, regular and shifted windows alternating, no stochastic depth."""
    return nn.Sequential(*[
        SwinTransformerBlock(dim, dim // head_dim, window_size=[window_size] * 2,
                             shift_size=[0 if i % 2 == 0 else window_size // 2] * 2,
                             stochastic_depth_prob=0.0, norm_layer=Norm)
        for i in range(depth)
    ])


class SwinOCBE(nn.Module):
    """Fuse the three taps at 1/16 by patch merging, then ``oce_depth`` Swin blocks of width ``embed_dim`` at 1/32."""

    def __init__(self, channels: Sequence[int] = (96, 192, 384), embed_dim: int = 1024, oce_depth: int = 2,
                 window_size: int = 8, head_dim: int = 32) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.fuse1 = nn.Sequential(patch_merging(c1, c2), patch_merging(c2, c3))  # 1/4 -> 1/16
        self.fuse2 = patch_merging(c2, c3)  # 1/8 -> 1/16
        self.embed = nn.Sequential(patch_merging(3 * c3, embed_dim),
                                   swin_blocks(embed_dim, oce_depth, window_size, head_dim))
        self.out_channels = embed_dim
        self.depth = oce_depth
        _init_weights(self)

    def forward(self, features: list[Tensor]) -> Tensor:
        f1, f2, f3 = (to_channels_last(f) for f in features)
        fused = torch.cat([self.fuse1(f1), self.fuse2(f2), f3], dim=-1)
        return self.embed(fused)  # (N, H/32, W/32, embed_dim), channels-last


class SwinDecoder(nn.Module):
    """Patch expanding + Swin blocks per scale; (N, C, H, W) features at 1/4, 1/8, 1/16 (the teacher's order)."""

    def __init__(self, embed_dim: int = 1024, channels: Sequence[int] = (96, 192, 384),
                 depths: Sequence[int] = (2, 2, 6), window_size: int = 8, head_dim: int = 32) -> None:
        super().__init__()
        c1, c2, c3 = channels
        d1, d2, d3 = depths
        self.stage1 = nn.Sequential(PatchExpanding(embed_dim, c3), swin_blocks(c3, d3, window_size, head_dim))  # -> 1/16
        self.stage2 = nn.Sequential(PatchExpanding(c3, c2), swin_blocks(c2, d2, window_size, head_dim))  # -> 1/8
        self.stage3 = nn.Sequential(PatchExpanding(c2, c1), swin_blocks(c1, d1, window_size, head_dim))  # -> 1/4
        self.depths = (d3, d2, d1)  # blocks per stage, 1/16 first
        _init_weights(self)

    def forward(self, embedding: Tensor) -> list[Tensor]:
        d3 = self.stage1(embedding)
        d2 = self.stage2(d3)
        d1 = self.stage3(d2)
        return [to_channels_first(d) for d in (d1, d2, d3)]


def swin_t_teacher_model() -> SwinTransformer:
    """A whole torchvision Swin-T (random weights) without stochastic depth: deterministic targets."""
    return SwinTransformer(**SWIN_T_CONFIG, stochastic_depth_prob=0.0)


def _init_weights(module: nn.Module) -> None:
    """Truncated-normal (std 0.02) linear weights and zero biases: torchvision's Swin from-scratch init."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def swin_t_rd(*, state_dict: dict[str, Tensor] | None = None, source: str = "", embed_dim: int = 1024,
              oce_depth: int = 2, decoder_depths: Sequence[int] | None = None, window_size: int = 8,
              head_dim: int = 32) -> tuple[nn.Module, nn.Module, nn.Module]:
    """RD with a Swin-T teacher, capacity-matched to the ResNet-50 RD; (teacher, OCBE, decoder).

    Args:
        state_dict: weights of a whole torchvision ``swin_t``, loaded strictly before truncation;
            ``None`` keeps a random teacher.
        source: where ``state_dict`` came from, named in a ``WeightsError`` if it does not fit.
        embed_dim: width of the one-class embedding at 1/32 (a multiple of ``head_dim``).
        oce_depth: Swin blocks in the OCE.
        decoder_depths: Swin blocks per decoder scale at 1/4, 1/8, 1/16; ``None`` mirrors the
            teacher's stages 1-3 (2, 2, 6).
        window_size: attention window of the OCE and decoder blocks (the teacher keeps its 7).
        head_dim: channels per attention head in the OCE and decoder (Swin's is 32).
    """
    model = swin_t_teacher_model()
    if state_dict is not None:
        apply_state_dict(model, state_dict, source)
    teacher = SwinTeacher(model)
    if decoder_depths is None:  # mirror the teacher's stages 1-3
        decoder_depths = tuple(len(teacher.features[i]) for i in TAP_INDICES)
    bottleneck = SwinOCBE(teacher.channels, embed_dim, oce_depth, window_size, head_dim)
    student = SwinDecoder(embed_dim, teacher.channels, decoder_depths, window_size, head_dim)
    return teacher, bottleneck, student


DEFAULT_WEIGHTS = {"swin_t": Swin_T_Weights.IMAGENET1K_V1}

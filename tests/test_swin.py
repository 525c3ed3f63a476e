"""What is particular to the Swin-T RD family: capacity, shapes, channels-last taps, no drop path, weights.

The frozen-teacher and training tests of every registered family are in tests/test_models.py.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.models import resnet50, swin_t
from torchvision.models.swin_transformer import ShiftedWindowAttention
from torchvision.ops import StochasticDepth

from errors import WeightsError
from rd_model import ReverseDistillation
from RD_Swin_Model import (DEFAULT_WEIGHTS, PaddingMaskedAttention, PatchExpanding, SwinTeacher, patch_merging,
                           swin_t_rd, swin_t_teacher_model)
from capacity import RESNET50_TRAINABLE, count_parameters


@pytest.fixture(scope="module")
def model() -> ReverseDistillation:
    torch.manual_seed(0)
    return ReverseDistillation(*swin_t_rd())


def test_trainable_parameters_are_capacity_matched_to_resnet50(model):
    trainable = count_parameters(model.bottleneck) + count_parameters(model.student)
    assert trainable == 44_327_194
    assert abs(trainable / RESNET50_TRAINABLE - 1) <= 0.15


def test_knobs_change_capacity():
    _, bottleneck, student = swin_t_rd(embed_dim=256, oce_depth=1, decoder_depths=(1, 1, 1))
    assert count_parameters(bottleneck) + count_parameters(student) < RESNET50_TRAINABLE / 5
    with pytest.raises(TypeError):
        swin_t_rd(None)  # keyword-only, as torchvision's builders


def test_teacher_is_torchvisions_swin_t_without_drop_path():
    ours, reference = swin_t_teacher_model(), swin_t(weights=None)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}
    assert count_parameters(ours) == DEFAULT_WEIGHTS["swin_t"].meta["num_params"] == 28_288_354
    assert max(m.p for m in reference.modules() if isinstance(m, StochasticDepth)) > 0  # why we build it ourselves
    assert all(m.p == 0 for m in ours.modules() if isinstance(m, StochasticDepth))


@pytest.mark.parametrize("size", [64, 256])
def test_student_and_teacher_shapes_match(model, size):
    with torch.no_grad():
        teacher, student = model.eval()(torch.randn(1, 3, size, size))
    assert len(teacher) == len(student) == 3
    assert [size // t.shape[-1] for t in teacher] == [4, 8, 16]
    assert [t.shape[1] for t in teacher] == [96, 192, 384]
    for t, s in zip(teacher, student):
        assert t.shape == s.shape


def test_taps_are_stage_outputs_in_channels_first(model):
    """At 224 px (Swin's size: 56, 28, 14 px maps, whole windows of 7) the taps are torchvision's, bit for bit."""
    torch.manual_seed(2)
    reference = swin_t_teacher_model().eval()
    result = reference.load_state_dict(model.teacher.state_dict(), strict=False)  # the teacher is features[:6]
    assert not result.unexpected_keys
    assert all(k.startswith(("features.6.", "features.7.", "norm.", "head.")) for k in result.missing_keys)
    assert not any(isinstance(m, PaddingMaskedAttention) for m in reference.modules())  # torchvision's own code
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        taps = model.teacher(images)
        x, expected = images, []
        for index, layer in enumerate(reference.features[:6]):
            x = layer(x)
            if index in (1, 3, 5):
                expected.append(x.permute(0, 3, 1, 2))
    for tap, want in zip(taps, expected):
        assert torch.equal(tap, want)


def test_patch_expanding_undoes_patch_merging_layout():
    merge, expand = patch_merging(3, 12), PatchExpanding(12, 3)
    for layer, linear in ((merge, merge.reduction), (expand, expand.expansion)):
        layer.norm = torch.nn.Identity()
        with torch.no_grad():
            linear.weight.copy_(torch.eye(12))
    x = torch.randn(2, 6, 4, 3)  # (N, H, W, C)
    assert torch.equal(expand(merge(x)), x)


def test_no_stochastic_depth_anywhere(model):
    """Frozen, deterministic targets for every family are tests/test_models.py's; Swin-T's drop path is off too."""
    assert all(m.p == 0 for m in model.modules() if isinstance(m, StochasticDepth))


def test_swin_weights_are_loaded_into_the_teacher():
    torch.manual_seed(3)
    source = swin_t(weights=None)
    teacher, _, _ = swin_t_rd(state_dict=source.state_dict(), source="swin_t_random.pth")
    assert torch.equal(teacher.features[5][3].attn.qkv.weight, source.features[5][3].attn.qkv.weight)
    assert torch.equal(teacher.features[0][0].weight, source.features[0][0].weight)


def test_resnet50_state_dict_is_refused_naming_the_source():
    with pytest.raises(WeightsError, match="resnet50_wrong.pth"):
        swin_t_rd(state_dict=resnet50(weights=None).state_dict(), source="resnet50_wrong.pth")


# ---------------------------------------------------------------------------------------------- padding (issue 20)

def _noisy_pad(self, x, bottom, right):
    """Padding that holds large random values instead of zeros (the real tokens are kept)."""
    padded = F.pad(x, (0, 0, 0, right, 0, bottom))
    real = torch.zeros(padded.shape[1:3], dtype=torch.bool)
    real[: x.shape[1], : x.shape[2]] = True
    return torch.where(real[None, :, :, None], padded, 10 * torch.randn_like(padded))


def test_teacher_output_does_not_depend_on_what_the_padding_holds(model, monkeypatch):
    """96 px: 24, 12 and 6 px maps, none a whole number of 7-windows (the 6 px one is smaller than a window)."""
    torch.manual_seed(4)
    images = torch.randn(2, 3, 96, 96)
    reference = swin_t_teacher_model().eval()
    reference.load_state_dict(model.teacher.state_dict(), strict=False)
    with torch.no_grad():
        masked = model.teacher(images)
        unmasked = SwinTeacher.forward(_TorchvisionTeacher(reference), images)
        monkeypatch.setattr(PaddingMaskedAttention, "pad", _noisy_pad)
        noisy = model.teacher(images)
    for tap, with_noise in zip(masked, noisy):
        assert torch.equal(tap, with_noise)
    # torchvision's zero padding did change the taps: most along the bottom and right edges (stage 1: rows and
    # columns 21-23 are in the last, padded window), least far from them
    edge = (masked[0] - unmasked[0])[..., 21:, :].abs().max()
    assert edge > 1e-3 and (masked[2] - unmasked[2]).abs().max() > 1e-3


class _TorchvisionTeacher(torch.nn.Module):
    """torchvision's unmodified stages 1-3, for SwinTeacher.forward."""

    def __init__(self, model):
        super().__init__()
        self.features = model.features[:6]


@pytest.mark.parametrize("height, width", [(9, 10), (4, 5)])
def test_masked_window_attention_matches_attention_over_the_real_tokens_of_each_window(height, width):
    """Brute force, token by token: softmax over the real keys of the query's window only, no shift."""
    torch.manual_seed(5)
    dim, heads, window = 8, 2, 7
    attention = PaddingMaskedAttention.convert(ShiftedWindowAttention(dim, [window, window], [0, 0], heads)).eval()
    with torch.no_grad():
        attention.qkv.bias.normal_()  # padded keys are then not zero vectors
        x = torch.randn(1, height, width, dim)
        got = attention(x)
        q, k, v = F.linear(x[0], attention.qkv.weight, attention.qkv.bias).reshape(height, width, 3, heads,
                                                                                  dim // heads).unbind(2)
        bias = attention.relative_position_bias_table[attention.relative_position_index].view(
            window * window, window * window, heads)
        expected = torch.zeros(height, width, dim)
        for i in range(height):
            for j in range(width):
                keys = [(a, b) for a in range(height) for b in range(width)
                        if (a // window, b // window) == (i // window, j // window)]
                out = []
                for h in range(heads):
                    logits = torch.stack([
                        q[i, j, h] @ k[a, b, h] * (dim // heads) ** -0.5
                        + bias[(i % window) * window + j % window, (a % window) * window + b % window, h]
                        for a, b in keys])
                    weights = torch.softmax(logits, 0)
                    out.append(sum(w * v[a, b, h] for w, (a, b) in zip(weights, keys)))
                expected[i, j] = F.linear(torch.cat(out), attention.proj.weight, attention.proj.bias)
    assert torch.allclose(got[0], expected, atol=1e-5)


def test_a_checkpoint_of_the_unmasked_teacher_is_refused(model, tmp_path, monkeypatch):
    """The masked padding changed what the Swin teacher computes, not its weights: a checkpoint trained on the
    earlier code (code_revision 1) must not load silently into the current teacher (revision 2)."""
    from checkpoint import load_into, read_checkpoint, save_checkpoint, teacher_digest
    from errors import CheckpointError

    current = teacher_digest(model)
    monkeypatch.setattr(SwinTeacher, "code_revision", 1)
    old = teacher_digest(model)
    save_checkpoint(tmp_path / "old.pth", model, backbone="swin_t", image_size=64, teacher_weights="random",
                    teacher_seed=0)
    monkeypatch.undo()
    assert old != current
    with pytest.raises(CheckpointError, match="code_revision"):
        load_into(model, read_checkpoint(tmp_path / "old.pth"), tmp_path / "old.pth")
    save_checkpoint(tmp_path / "new.pth", model, backbone="swin_t", image_size=64, teacher_weights="random",
                    teacher_seed=0)
    load_into(model, read_checkpoint(tmp_path / "new.pth"), tmp_path / "new.pth")  # the current code loads


def test_teachers_without_a_code_revision_keep_their_digest():
    """ResNet and ConvNeXt teachers declare no code_revision: their digest is the weights' alone, as before."""
    import hashlib

    from checkpoint import teacher_digest

    from backbones import build_model

    rd = build_model("resnet50", pretrained=False)
    assert not hasattr(rd.teacher, "code_revision")
    digest = hashlib.sha256()
    for name, tensor in rd.teacher.state_dict().items():
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.view(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    assert teacher_digest(rd) == digest.hexdigest()

"""Issue 2: the RD models, their registry, teacher freezing, weights loading and checkpoints."""
from __future__ import annotations

import copy
import json
import os
import pickle
import time
from pathlib import Path

import pytest
import torch
from torchvision.models import resnet50

import backbones
from backbones import BACKBONES, build_model
from checkpoint import model_from_checkpoint, read_checkpoint, save_checkpoint
from errors import CheckpointError, WeightsError
from rd_model import distillation_loss
from capacity import RESNET50_TRAINABLE, count_parameters

# Variants that reuse another entry's builder (other weights or knobs only) are built, counted and summarised
# like the others, but the slow training tests run once per architecture.
VARIANTS = {"resnet50_v2": "resnet50", "convnext_small_matched": "convnext_small"}
ALL = [name for name in BACKBONES if name not in VARIANTS]


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {name: build_model(name, pretrained=False) for name in ALL}


@pytest.mark.parametrize("name, ocbe, decoder", [
    ("wide_resnet50_2", 58_885_120, 24_917_504),
    ("resnet50", 30_829_568, 15_821_824),
])
def test_resnet_parameter_counts_are_rd4ads(models, name, ocbe, decoder):
    model = models[name]
    assert count_parameters(model.bottleneck) == ocbe
    assert count_parameters(model.student) == decoder


def test_convnext_tiny_is_capacity_matched_to_resnet50(models):
    model = models["convnext_tiny"]
    trainable = count_parameters(model.bottleneck) + count_parameters(model.student)
    assert abs(trainable / RESNET50_TRAINABLE - 1) <= 0.15


def test_convnext_knobs_change_capacity():
    small = build_model("convnext_tiny", pretrained=False, embed_dim=256, oce_depth=1, decoder_depths=(1, 1, 1))
    assert count_parameters(small.bottleneck) + count_parameters(small.student) < RESNET50_TRAINABLE / 5


@pytest.mark.parametrize("size", [64, 256])
def test_student_and_teacher_shapes_match(models, size):
    images = torch.randn(1, 3, size, size)
    for name, model in models.items():
        with torch.no_grad():
            teacher, student = model.eval()(images)
        assert len(teacher) == len(student) == 3, name
        strides = [size // t.shape[-1] for t in teacher]
        assert strides == [4, 8, 16], name
        for t, s in zip(teacher, student):
            assert t.shape == s.shape, name


def test_convnext_taps_are_stage_outputs(models):
    teacher = models["convnext_tiny"].teacher
    shapes = [tuple(t.shape[1:]) for t in teacher(torch.randn(1, 3, 256, 256))]
    assert shapes == [(96, 64, 64), (192, 32, 32), (384, 16, 16)]


@pytest.mark.parametrize("name", ALL)
def test_teacher_is_frozen_and_deterministic(models, name):
    model = copy.deepcopy(models[name]).train()
    assert not model.teacher.training
    assert not any(p.requires_grad for p in model.teacher.parameters())
    assert all(p.requires_grad for p in model.trainable_modules().parameters())
    buffers = {k: v.clone() for k, v in model.teacher.named_buffers()}
    images = torch.randn(2, 3, 64, 64)
    first, _ = model(images)
    second, _ = model(images)
    for a, b in zip(first, second):
        assert torch.equal(a, b)  # no drop path, no batch statistics
    optimizer = torch.optim.Adam(model.trainable_modules().parameters(), lr=0.005, betas=(0.5, 0.999))
    loss, _ = distillation_loss(*model(images))
    loss.backward()
    optimizer.step()
    assert all(p.grad is None for p in model.teacher.parameters())
    for key, value in model.teacher.named_buffers():
        assert torch.equal(value, buffers[key]), key


@pytest.mark.parametrize("name", ALL)
def test_training_lowers_loss_and_map_finds_corrupted_patch(models, name):
    torch.manual_seed(1)
    model = copy.deepcopy(models[name]).train()
    images = torch.randn(4, 3, 64, 64)
    optimizer = torch.optim.Adam(model.trainable_modules().parameters(), lr=0.005, betas=(0.5, 0.999))
    losses = []
    for _ in range(30):
        loss, _ = distillation_loss(*model(images))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] <= 0.5 * losses[0], f"{name}: {losses[0]:.3f} -> {losses[-1]:.3f}"

    model.eval()
    corrupted = images[:1].clone()
    corrupted[..., 8:24, 8:24] = torch.randn(3, 16, 16) * 3
    anomaly = model.anomaly_map(corrupted)[0]
    assert anomaly.shape == (64, 64)
    inside, outside = anomaly[8:24, 8:24].mean(), anomaly[40:, 40:].mean()
    assert inside > outside, f"{name}: patch {inside:.3f} vs clean corner {outside:.3f}"


def test_pretrained_without_network_fails_fast_with_advice(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    enum = backbones.BACKBONES["resnet50"].default_weights
    # An address that refuses at once stands in for "no network" on any machine.
    monkeypatch.setattr(type(enum), "url", property(lambda self: "http://127.0.0.1:9/resnet50-0676ba61.pth"))
    start = time.monotonic()
    with pytest.raises(WeightsError) as error:
        build_model("resnet50", pretrained=True)
    assert time.monotonic() - start < 10
    message = str(error.value)
    assert str(tmp_path / "hub" / "checkpoints" / "resnet50-0676ba61.pth") in message
    assert "--no-pretrained" in message


def test_corrupt_cached_weights_are_named(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = tmp_path / "hub" / "checkpoints" / "resnet50-0676ba61.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="corrupt"):
        build_model("resnet50", pretrained=True)


def test_local_weights_file_is_loaded_and_used(tmp_path):
    torch.manual_seed(3)
    source = resnet50(weights=None)
    path = tmp_path / "resnet50_random.pth"
    torch.save(source.state_dict(), path)
    model = build_model("resnet50", weights_path=path)
    assert torch.equal(model.teacher.layer3[0].conv1.weight, source.layer3[0].conv1.weight)
    assert torch.equal(model.teacher.stem[1].running_var, source.bn1.running_var)
    assert backbones.teacher_weights_id("resnet50", True, path) == f"file:{path}"


def test_weights_file_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "wrong.pth"
    torch.save(resnet50(weights=None).state_dict(), path)
    with pytest.raises(WeightsError, match="wrong.pth"):
        build_model("convnext_tiny", weights_path=path)
    with pytest.raises(WeightsError, match="no such file"):
        build_model("resnet50", weights_path=tmp_path / "missing.pth")


def test_unknown_backbone_lists_choices():
    with pytest.raises(Exception, match="convnext_tiny"):
        build_model("vit_b_16", pretrained=False)


@pytest.mark.parametrize("name", ["resnet50", "convnext_tiny"])
def test_checkpoint_round_trip_reproduces_outputs(tmp_path, name):
    torch.manual_seed(4)
    model = build_model(name, pretrained=False).eval()
    path = tmp_path / "last.pth"
    save_checkpoint(path, model, backbone=name, image_size=64, teacher_weights="random")
    restored, payload = model_from_checkpoint(path, expected_backbone=name, expected_image_size=64)
    assert payload["versions"]["torch"] == str(torch.__version__)
    images = torch.randn(2, 3, 64, 64)
    assert torch.equal(model.anomaly_map(images), restored.eval().anomaly_map(images))
    with pytest.raises(CheckpointError, match=r"'resnet50'.*'wide_resnet50_2'|'convnext_tiny'.*'wide_resnet50_2'"):
        read_checkpoint(path, expected_backbone="wide_resnet50_2")
    with pytest.raises(CheckpointError, match="--image-size 64"):
        read_checkpoint(path, expected_image_size=128)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"format": "x", "payload": _Exploit()}, path)
    with pytest.raises(CheckpointError, match="refused"):
        read_checkpoint(path)
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError):
        read_checkpoint(plain)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(Path(tmp_path / "none.pth"))


def test_summary_json_and_doc_block(capsys, tmp_path):
    import main

    assert main.main(["summary", "--backbone", "resnet50", "--image-size", "64", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["bottleneck_params"], data["decoder_params"], data["trainable_params"]) == \
        (30_829_568, 15_821_824, 46_651_392)
    assert data["feature_shapes"] == [[256, 16, 16], [512, 8, 8], [1024, 4, 4]] and data["gflops"] > 0

    doc = tmp_path / "guide.md"
    doc.write_text("intro\n<!-- BEGIN GENERATED BY main.py summary -->\nold\n"
                   "<!-- END GENERATED BY main.py summary -->\noutro\n")
    assert main.main(["summary", "--backbones", "convnext_tiny", "--image-size", "64", "--update-doc", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old" not in text
    assert "| convnext_tiny | RD4AD | IMAGENET1K_V1 (82.52 %) | 12,348,000 |" in text
    assert main.main(["summary", "--backbone", "nope"]) == 2


def test_anomaly_map_matches_the_reference_formula():
    import torch.nn.functional as F

    from rd_model import anomaly_map

    torch.manual_seed(5)
    teacher = [torch.randn(2, c, s, s) for c, s in ((8, 16), (16, 8), (32, 4))]
    student = [t + 0.3 * torch.randn_like(t) for t in teacher]
    expected = sum(F.interpolate(1 - F.cosine_similarity(t, s, dim=1).unsqueeze(1), size=(64, 64), mode="bilinear",
                                 align_corners=True) for t, s in zip(teacher, student)).squeeze(1)
    channels_last = [x.contiguous(memory_format=torch.channels_last) for x in student]
    assert torch.allclose(anomaly_map(teacher, channels_last, (64, 64)), expected, atol=1e-6)


def test_variants_share_their_builder_and_differ_only_in_weights_or_knobs():
    for variant, base in VARIANTS.items():
        a, b = BACKBONES[variant], BACKBONES[base]
        assert a.builder is b.builder and a.family == b.family
        assert a.default_weights != b.default_weights or a.knobs != b.knobs


def test_every_backbone_reports_its_teacher_weights_and_imagenet_top1(capsys):
    import main

    assert main.main(["summary", "--backbones", "resnet50_v2", "--image-size", "64", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["teacher_weights"] == "ResNet50_Weights.IMAGENET1K_V2" and data["imagenet_top1"] == 80.858
    assert data["trainable_params"] == 46_651_392  # the same architecture as resnet50: only the pretraining differs
    tops = {name: b.imagenet_top1 for name, b in BACKBONES.items()}
    assert tops["resnet50"] == 76.13 and tops["wide_resnet50_2"] == 78.468 and tops["convnext_tiny"] == 82.52
    assert backbones.teacher_imagenet_top1("resnet50", "random") is None
    assert backbones.teacher_imagenet_top1("resnet50_v2", "ResNet50_Weights.IMAGENET1K_V2") == 80.858


def test_matched_convnext_small_is_within_15_percent_of_wrn50_rd():
    from capacity import WRN50_TRAINABLE

    model = build_model("convnext_small_matched", pretrained=False)
    trainable = count_parameters(model.trainable_modules())
    assert WRN50_TRAINABLE == 83_802_624 and abs(trainable / WRN50_TRAINABLE - 1) <= 0.15
    plain = count_parameters(build_model("convnext_small", pretrained=False).trainable_modules())
    assert abs(plain / WRN50_TRAINABLE - 1) > 0.15  # the unmatched variant is not (hence the preset)


def test_model_knobs_are_checked_against_the_builder():
    with pytest.raises(backbones.RDError, match=r"embed_dims: not a knob of convnext_tiny.*embed_dim"):
        build_model("convnext_tiny", pretrained=False, embed_dims=512)
    with pytest.raises(backbones.RDError, match="knobs are none"):
        build_model("resnet50", pretrained=False, embed_dim=512)


def test_tap_norm_knob_normalises_the_taps_with_the_teachers_own_layernorms():
    torch.manual_seed(0)
    plain = build_model("convnext_tiny", pretrained=False, decoder_depths=(1, 1, 1), oce_depth=1).eval()
    torch.manual_seed(0)
    normed = build_model("convnext_tiny", pretrained=False, decoder_depths=(1, 1, 1), oce_depth=1,
                         tap_norm=True).eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        raw, taps = plain.teacher(images), normed.teacher(images)
    for layer, r, t in zip(normed.teacher.tap_norms, raw, taps, strict=True):
        assert r.shape == t.shape and not torch.allclose(r, t)
        assert torch.allclose(layer(r), t)
    assert not any(p.requires_grad for p in normed.teacher.parameters())


def _uniform_bound(weight: torch.Tensor) -> float:
    """PyTorch's default conv init: kaiming_uniform_(a=sqrt(5)), i.e. U(-b, b) with b = 1/sqrt(fan_in)."""
    fan_in, _ = torch.nn.init._calculate_fan_in_and_fan_out(weight)
    return 1.0 / fan_in ** 0.5


@pytest.mark.parametrize("name", ["resnet50", "wide_resnet50_2"])
def test_resnet_student_starts_from_the_official_rd4ad_init(models, name):
    """The official init loop matches nn.Conv2d (Kaiming-normal, fan_out, ReLU) and BatchNorm (1, 0) only:
    the decoder's transposed convolutions keep PyTorch's default uniform init."""
    trainable = models[name].trainable_modules()
    transposed = [m for m in trainable.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert len(transposed) == 6
    for m in transposed:
        bound = _uniform_bound(m.weight)
        assert m.weight.abs().max() <= bound
        assert m.weight.std().item() == pytest.approx(bound / 3 ** 0.5, rel=0.05)  # U(-b, b), not a normal
    for m in trainable.modules():
        if isinstance(m, torch.nn.Conv2d) and m.weight.numel() > 10_000:
            _, fan_out = torch.nn.init._calculate_fan_in_and_fan_out(m.weight)
            assert m.weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.05)
        elif isinstance(m, torch.nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)


def test_checkpoint_rebuilds_a_random_teacher_from_its_seed_and_refuses_another_teacher(tmp_path):
    torch.manual_seed(7)
    model = build_model("resnet50", pretrained=False).eval()
    slim, whole = tmp_path / "slim.pth", tmp_path / "whole.pth"
    save_checkpoint(slim, model, backbone="resnet50", image_size=64, teacher_weights="random", teacher_seed=7)
    save_checkpoint(whole, model, backbone="resnet50", image_size=64, teacher_weights="random")
    teacher_bytes = 4 * count_parameters(model.teacher)
    assert whole.stat().st_size - slim.stat().st_size >= 0.99 * teacher_bytes  # the teacher is not in it
    restored, _ = model_from_checkpoint(slim, expected_backbone="resnet50")
    images = torch.randn(1, 3, 64, 64)
    assert torch.equal(model.anomaly_map(images), restored.eval().anomaly_map(images))

    payload = torch.load(slim, weights_only=True)
    torch.save(payload | {"teacher_seed": 8}, tmp_path / "other_seed.pth")
    with pytest.raises(CheckpointError, match="not the one this checkpoint was trained with"):
        model_from_checkpoint(tmp_path / "other_seed.pth")
    torch.save({k: v for k, v in payload.items() if k != "student"}, tmp_path / "no_student.pth")
    with pytest.raises(CheckpointError, match="lacks student"):
        read_checkpoint(tmp_path / "no_student.pth")
    torch.save(payload | {"student": {"stage1.0.conv1.weight": torch.zeros(1)}}, tmp_path / "bad_student.pth")
    with pytest.raises(CheckpointError, match="do not fit a 'resnet50' RD model"):
        model_from_checkpoint(tmp_path / "bad_student.pth")

"""Issue 15 and issue 10 (item 4): one precision for maps, loss and metrics, and for both arms, under autocast.

The CPU runs the same autocast code paths as CUDA (the project enables autocast per device type), so
these tests enter CPU bf16 autocast: anomaly maps, blur, loss and metrics stay float32 whatever the
caller runs under; evaluation runs the network in float32 unless bf16 is asked for; and under
autocast the teacher features of every family come out in one dtype and meet the student's in float32.
Without autocast (the CPU default) nothing changes.
"""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

import metrics
import rd_model
import runs
from backbones import BACKBONES, build_model
from evaluate import evaluate_run, score_images
from rd_model import anomaly_map, distillation_loss, image_scores
from recipe import FastPath, TrainConfig
from train import train_run

CPU = torch.device("cpu")
BF16 = torch.bfloat16
FAMILIES = ["resnet50", "wide_resnet50_2", "convnext_tiny", "convnext_small", "swin_t"]


def bf16_autocast():
    return torch.autocast("cpu", dtype=BF16)


@pytest.fixture(scope="module", params=FAMILIES)
def placed(request):
    """(name, model placed with a bf16 training fast path, float32 features of a 64 px batch)."""
    name = request.param
    config = TrainConfig(data_root="", category="c", backbone=name, pretrained=False, image_size=64, amp="bf16")
    fast = FastPath.resolve(config, CPU)
    torch.manual_seed(0)
    model = fast.place(build_model(name, pretrained=False), CPU).eval()
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        teacher, student = model(images.contiguous(memory_format=torch.channels_last))
    return name, model, fast, images, teacher, student


def test_the_five_families_are_covered():
    """Every registered architecture (variants reuse another entry's builder with other weights or knobs)."""
    builders = {b.builder for b in BACKBONES.values()}
    assert {BACKBONES[name].builder for name in FAMILIES} == builders and len(FAMILIES) == 5


def test_anomaly_map_is_the_float32_map_under_bf16_autocast(placed):
    """Same feature lists in, the float32 map out (within 1e-6 of its range): fails if the channel cosine's
    einsum runs under autocast (a bf16 matrix product)."""
    _, _, _, _, teacher, _ = placed
    noise = torch.Generator().manual_seed(2)
    # a trained-like pair: the student close to the teacher, so that 1 - cos is small, as on normal pixels
    student = [t + 0.1 * t.std() * torch.randn(t.shape, generator=noise) for t in teacher]
    expected = anomaly_map(teacher, student, (64, 64))
    with bf16_autocast():
        got = anomaly_map(teacher, student, (64, 64))
    assert got.dtype == torch.float32
    span = float(expected.max() - expected.min())
    assert float((got - expected).abs().max()) <= 1e-6 * span


def test_teacher_and_student_features_meet_in_float32_for_every_family(placed, monkeypatch):
    """Issue 10, item 4: under autocast the teacher's features are bf16 for every family (the teacher copy
    cast once; ConvNeXt's float32 layer scale no longer promotes them), and both arms reach the cosine of
    the loss and of the map in float32."""
    name, model, fast, images, _, _ = placed
    seen: list[tuple[str, torch.dtype, torch.dtype]] = []
    cosine, channel_cosine = F.cosine_similarity, rd_model.channel_cosine

    def spy_cosine(a, b, *args, **kwargs):
        seen.append(("loss", a.dtype, b.dtype))
        return cosine(a, b, *args, **kwargs)

    def spy_channel_cosine(a, b, *args, **kwargs):
        seen.append(("map", a.dtype, b.dtype))
        return channel_cosine(a, b, *args, **kwargs)

    monkeypatch.setattr(rd_model.F, "cosine_similarity", spy_cosine)
    monkeypatch.setattr(rd_model, "channel_cosine", spy_channel_cosine)
    fp32_teacher_calls = []
    hook = model.teacher.register_forward_pre_hook(lambda *_: fp32_teacher_calls.append(1))
    try:
        with torch.no_grad(), fast.autocast(CPU):
            teacher, student = model(fast.prepare(torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)))
            loss, _ = distillation_loss(teacher, student)
            anomaly_map(teacher, student, (64, 64))
    finally:
        hook.remove()
    assert {f.dtype for f in teacher} == {BF16}, name
    assert not fp32_teacher_calls, f"{name}: the float32 teacher ran under autocast (weights cast every step)"
    assert loss.dtype == torch.float32
    assert [kind for kind, _, _ in seen] == ["loss"] * 3 + ["map"] * 3
    assert all(a == b == torch.float32 for _, a, b in seen), seen


def test_loss_is_float32_with_autocast_off_inside():
    generator = torch.Generator().manual_seed(0)
    teacher = [torch.randn(4, 8, 6, 6, generator=generator) for _ in range(3)]
    student = [t + 0.05 * torch.randn(t.shape, generator=generator) for t in teacher]
    expected, expected_terms = distillation_loss(teacher, student)
    with bf16_autocast():
        got, terms = distillation_loss(teacher, student)
        from_bf16, _ = distillation_loss([t.to(BF16) for t in teacher], [s.to(BF16) for s in student])
    assert got.dtype == from_bf16.dtype == torch.float32
    assert torch.equal(got, expected) and all(map(torch.equal, terms, expected_terms))
    upcast, _ = distillation_loss([t.to(BF16).float() for t in teacher], [s.to(BF16).float() for s in student])
    assert torch.equal(from_bf16, upcast)  # bf16 features are upcast, then the float32 loss


def test_metrics_do_not_change_under_autocast():
    generator = torch.Generator().manual_seed(0)
    maps = torch.rand(6, 32, 32, generator=generator)
    masks = torch.zeros(6, 32, 32, dtype=torch.uint8)
    masks[3:, 8:20, 8:20] = 1
    labels = [0, 0, 0, 1, 1, 1]
    expected = metrics.pixel_metrics(maps, masks) | {"image": metrics.image_auroc(image_scores(maps), labels)}
    with bf16_autocast():
        got = metrics.pixel_metrics(maps, masks) | {"image": metrics.image_auroc(image_scores(maps), labels)}
    assert got == expected


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return build_model("resnet50", pretrained=False)


def test_default_scoring_is_float32_whatever_the_caller_or_training_precision(synthetic_root, small_model):
    """score_images (test, predict, synthetic validation) runs the network in float32 by default, even when
    handed the training's bf16 settings inside an autocast region; bf16 only when asked for."""
    from dataset import AnomalyDataset

    images = AnomalyDataset(str(synthetic_root), "synth_object", "test", 64).uint8_images()[:6]
    config = TrainConfig(data_root="", category="c", backbone="resnet50", pretrained=False, image_size=64)
    plain = FastPath.resolve(replace(config, amp="off"), CPU)
    training_bf16 = FastPath.resolve(replace(config, amp="bf16"), CPU)
    model = training_bf16.place(small_model, CPU)
    expected = score_images(model, images, plain, CPU, batch_size=4)
    with bf16_autocast():
        got = score_images(model, images, training_bf16, CPU, batch_size=4)
    assert got.dtype == torch.float32 and torch.equal(got, expected)

    asked = FastPath.resolve(replace(config, eval_amp="bf16"), CPU)
    asked.place(model, CPU)
    in_bf16 = score_images(model, images, asked, CPU, batch_size=4)
    assert in_bf16.dtype == torch.float32 and not torch.equal(in_bf16, expected)


def test_teacher_copy_follows_reloaded_weights(small_model):
    model = small_model
    model.keep_teacher_in(BF16)
    state = {k: v + 0.5 if v.is_floating_point() else v for k, v in model.teacher.state_dict().items()}
    model.teacher.load_state_dict(state)
    copy = vars(model.teacher)["_rd_dtype_copies"][BF16]
    for key, value in copy.state_dict().items():
        assert value.dtype == (BF16 if state[key].is_floating_point() else state[key].dtype)
        assert torch.equal(value, state[key].to(value.dtype)), key
    assert "_rd_dtype_copies" not in str(model.state_dict().keys())  # never checkpointed


def test_test_with_bf16_training_settings_gives_the_float32_metrics(synthetic_root, tmp_path):
    """A run trained under bf16 autocast (forced on, on the CPU) is tested in float32 by default: the same
    metrics as when its config says float32; --eval-amp bf16 is recorded as such."""
    config = TrainConfig(data_root=str(synthetic_root), category="synth_object", backbone="resnet50", epochs=1,
                         image_size=32, batch_size=8, pretrained=False, amp="bf16", results=str(tmp_path / "r"),
                         checkpoints=str(tmp_path / "c"))
    run_dir = train_run(config, quiet=True)
    forced = evaluate_run(run_dir, device="cpu")
    record = runs.read_json(run_dir / runs.CONFIG_FILE)
    (run_dir / runs.CONFIG_FILE).write_text(json.dumps(record | {"amp": "off"}))
    float32 = evaluate_run(run_dir, device="cpu")
    keys = ("image_auroc", "pixel_auroc", "aupro", "f1", "f1_max")
    assert forced["eval_precision"] == float32["eval_precision"] == "float32"
    assert {k: forced[k] for k in keys} == {k: float32[k] for k in keys}
    assert evaluate_run(run_dir, device="cpu", eval_amp="bf16")["eval_precision"] == "bfloat16"

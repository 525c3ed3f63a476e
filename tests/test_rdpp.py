"""Issue 26: RD++ as a second method beside RD4AD: arms, runs, checkpoints, resume, fast path, protocol and report.

The official-code parity of RD++ itself is tests/test_rdpp_parity.py.
"""
from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch

import recipe
import report
import runs
from backbone_facts import arm_label, backbone_family, registry_order, split_arm
from backbones import build_model
from checkpoint import read_checkpoint, teacher_digest
from errors import CheckpointError, RDError
from evaluate import evaluate_run
from fake_results import write_fake_results
from protocol import check_protocol
from rdpp import NoisePairs, noisy_images
from recipe import FastPath, TrainConfig, build_run_model, device_batches, open_split, seed_everything, train_step
from sweep import select_runs
from train import train_run

CPU = torch.device("cpu")
# the keys of an RD4AD checkpoint, exactly as before RD++ existed
RD_CHECKPOINT_KEYS = {"format", "format_version", "backbone", "image_size", "teacher_weights", "model_knobs",
                      "versions", "bottleneck", "student", "teacher", "teacher_seed", "teacher_sha256",
                      "training_state"}


@pytest.fixture(scope="module")
def small_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One synthetic category of 12 training images: 8 after the hold-out, trained at 32 px in 3 batches of 3 (odd)."""
    from synth import generate

    root = tmp_path_factory.mktemp("rdpp_data")
    generate(root, categories=1, image_size=64, n_train=12, n_test=8, seed=3)
    return root


# a ConvNeXt-Tiny RD with a small student (LayerNorm: any batch size), so that the runs and checkpoints stay small
SMALL_STUDENT = {"embed_dim": 96, "oce_depth": 1, "decoder_depths": [1, 1, 1]}


def _config(root: Path, tmp_path: Path, **overrides) -> TrainConfig:
    base = TrainConfig(data_root=str(root), category="synth_texture", backbone="convnext_tiny", epochs=1,
                       image_size=32, batch_size=3, pretrained=False, results=str(tmp_path / "results"),
                       checkpoints=str(tmp_path / "checkpoints"), checkpoint_every=1, val_every=100,
                       model_knobs=dict(SMALL_STUDENT))
    return replace(base, **overrides)


def _trainable(path: Path) -> dict[str, torch.Tensor]:
    payload = read_checkpoint(path)
    parts = ("bottleneck", "student", "projection")
    return {f"{part}.{k}": v for part in parts for k, v in payload.get(part, {}).items()}


def test_arm_labels_map_both_ways_and_feed_the_registry_lookups():
    assert arm_label("resnet50") == arm_label("resnet50", "rd") == "resnet50"  # RD arms keep the bare name
    assert arm_label("resnet50", "rdpp") == "resnet50+rdpp"
    for arm in ("resnet50", "resnet50+rdpp", "convnext_small_matched+rdpp", "a+b"):
        assert arm_label(*split_arm(arm)) == arm
    assert split_arm("a+b") == ("a+b", "rd")  # an unknown suffix is no method
    assert backbone_family("convnext_tiny+rdpp") == "convnext" and backbone_family("swin_t+rdpp") == "swin"
    assert sorted(["convnext_tiny+rdpp", "resnet50+rdpp", "convnext_tiny", "resnet50"], key=registry_order) == \
        ["resnet50", "resnet50+rdpp", "convnext_tiny", "convnext_tiny+rdpp"]
    with pytest.raises(RDError, match="--method 'rd3'.*rd, rdpp"):
        build_model("resnet50", pretrained=False, method="rd3")


def test_rd_runs_keep_their_folders_checkpoints_and_weights(small_root, tmp_path):
    """An RD run is what it was before RD++: folder, checkpoint keys, metrics keys, history columns, teacher digest,
    and weights bit-identical to the RD loop written out by hand (one Adam over bottleneck + student)."""
    config = _config(small_root, tmp_path)
    run_dir = train_run(config, quiet=True)
    assert run_dir == tmp_path / "results" / "convnext_tiny" / "synth_texture" / "seed0"
    assert config.checkpoint_path == tmp_path / "checkpoints" / "convnext_tiny" / "synth_texture" / "seed0" / "last.pth"
    payload = read_checkpoint(config.checkpoint_path)
    assert set(payload) == RD_CHECKPOINT_KEYS
    assert list(pd.read_csv(run_dir / runs.HISTORY_FILE).columns) == list(runs.HISTORY_COLUMNS)
    recorded = runs.read_json(run_dir / runs.CONFIG_FILE)
    assert recorded["method"] == "rd" and "rdpp" not in recorded

    seed_everything(config.seed)
    fast = FastPath.resolve(config, CPU)
    model = fast.place(build_run_model(config)[0], CPU)
    optimizer = torch.optim.Adam(model.trainable_modules().parameters(), lr=config.lr,
                                 betas=(config.beta1, config.beta2), fused=True)
    images = open_split(config, "train").uint8_images()
    model.train()
    for indices, _ in device_batches(len(images), config.batch_size, config.seed, 1, CPU):
        train_step(model, optimizer, fast.prepare(images[indices]), fast, CPU)
    assert payload["teacher_sha256"] == teacher_digest(model)
    for part in ("bottleneck", "student"):
        for name, value in getattr(model, part).state_dict().items():
            assert torch.equal(payload[part][name], value), f"{part}.{name}"
    assert "method" not in evaluate_run(run_dir, save_maps=False, scale_ablation=False)  # metrics.json as before


def test_rdpp_run_lives_beside_rd_trains_resumes_exactly_and_tests(small_root, tmp_path, monkeypatch):
    """RD++ runs live in <backbone>+rdpp folders; a run killed in its second epoch resumes to the uninterrupted one's
    weights (noise and shuffles per (seed, epoch); the odd last batch's gradients kept in the checkpoint)."""
    reference = _config(small_root, tmp_path / "a", method="rdpp", epochs=2)
    run_dir = train_run(reference, quiet=True)
    assert run_dir == tmp_path / "a" / "results" / "convnext_tiny+rdpp" / "synth_texture" / "seed0"
    payload = read_checkpoint(reference.checkpoint_path)
    assert payload["method"] == "rdpp" and set(payload) == RD_CHECKPOINT_KEYS | {"method", "projection"}
    history = pd.read_csv(run_dir / runs.HISTORY_FILE)
    assert list(history.columns) == list(runs.HISTORY_COLUMNS + runs.RDPP_LOSS_COLUMNS)
    assert (history["loss"] - history["loss_distill"] - 0.2 * history["loss_projection"]).abs().max() < 1e-4
    recorded = runs.read_json(run_dir / runs.CONFIG_FILE)
    assert recorded["method"] == "rdpp" and recorded["rdpp"]["accumulation_steps"] == 2

    resumed = _config(small_root, tmp_path / "b", method="rdpp", epochs=2)
    real_step, calls = recipe.rdpp_train_step, []

    def dies_in_epoch_two(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:  # 3 batches per epoch: the 2nd batch of epoch 2
            raise KeyboardInterrupt("simulated kill")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(recipe, "rdpp_train_step", dies_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train_run(resumed, quiet=True)
    state = read_checkpoint(resumed.checkpoint_path)["training_state"]
    assert state["epoch"] == 1 and len(state["pending_gradients"]) > 0  # 3 batches: the 3rd was not stepped yet
    monkeypatch.setattr(recipe, "rdpp_train_step", real_step)
    train_run(resumed, quiet=True)
    expected, actual = _trainable(reference.checkpoint_path), _trainable(resumed.checkpoint_path)
    assert expected.keys() == actual.keys() and any(k.startswith("projection.") for k in expected)
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key

    result = evaluate_run(run_dir, save_maps=False, scale_ablation=False)
    projection = sum(int(11.25 * c * c + 2.25 * c) for c in (96, 192, 384))  # 2,178,792: see the capacity test
    assert result["method"] == "rdpp" and result["efficiency"]["trainable_params"] == \
        sum(p.numel() for p in build_model("convnext_tiny", pretrained=False, **SMALL_STUDENT).trainable_modules()
            .parameters()) + projection
    frame = runs.load_runs(tmp_path / "a" / "results")
    assert frame[["backbone", "registered_backbone", "method"]].values.tolist() == [["convnext_tiny+rdpp",
                                                                                      "convnext_tiny", "rdpp"]]
    assert select_runs(tmp_path / "a" / "results", "convnext_tiny", "all", "all", "rdpp") == [run_dir]
    with pytest.raises(CheckpointError, match="no trained run"):
        select_runs(tmp_path / "a" / "results", "convnext_tiny", "all", "all", "rd")
    with pytest.raises(CheckpointError, match="holds a 'rdpp' model"):
        read_checkpoint(reference.checkpoint_path, expected_method="rd")


def test_rdpp_step_under_bf16_autocast_and_channels_last_keeps_float32_losses():
    """The fast path's precision rules hold for RD++: the network in bf16, every loss term float32 and finite."""
    torch.manual_seed(0)
    model = build_model("resnet50", pretrained=False, method="rdpp")
    fast = FastPath(channels_last=True, autocast_dtype=torch.bfloat16, compile=False)
    fast.place(model, CPU).train()
    optimizer = recipe.make_optimizer(model, TrainConfig(data_root="", category="", method="rdpp"))
    assert [group["lr"] for group in optimizer.param_groups] == [0.005, 0.001]  # distillation, projection
    noise = NoisePairs(0, 32, CPU)
    patches, shuffle = noise.epoch(1, [3])[0]
    batch = fast.prepare(torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8))
    noisy = noisy_images(batch, noise.field, patches)
    assert noisy.is_contiguous(memory_format=torch.channels_last)
    loss, terms = recipe.rdpp_train_step(model, optimizer, batch, noisy, shuffle, fast, CPU)
    assert loss.dtype == torch.float32 and all(t.dtype == torch.float32 for t in terms) and torch.isfinite(loss)


def test_capacity_table_counts_the_projection_per_method(capsys):
    """The projection of the official MultiProjectionLayer(base=64) for ResNet taps (256, 512, 1024): 11.25 c^2 + 2.25 c
    per tap (four 3x3 convolutions c -> c/2 -> c/4 -> c/2 -> c with biases), 15,486,912 parameters."""
    import json

    import main

    assert main.main(["summary", "--backbones", "resnet50", "--methods", "all", "--image-size", "32", "--json"]) == 0
    rd, rdpp = json.loads(capsys.readouterr().out)
    assert (rd["method"], rd["projection_params"], rd["trainable_params"]) == ("rd", 0, 46_651_392)
    assert rdpp["projection_params"] == sum(int(11.25 * c * c + 2.25 * c) for c in (256, 512, 1024)) == 15_486_912
    assert rdpp["trainable_params"] == 46_651_392 + 15_486_912 and rdpp["gflops"] > rd["gflops"]


def test_rdpp_is_refused_under_torchrun(small_root, tmp_path, monkeypatch):
    import distributed

    monkeypatch.setattr(distributed, "current", lambda: distributed.World(rank=0, size=2, local_rank=0))
    with pytest.raises(RDError, match="--method rdpp runs on one process"):
        train_run(_config(small_root, tmp_path, method="rdpp"), quiet=True)


def test_report_labels_method_comparisons_and_tabulates_method_by_backbone(tmp_path):
    arms = ("resnet50", "convnext_tiny", "resnet50+rdpp", "convnext_tiny+rdpp")
    results = write_fake_results(tmp_path, backbones=arms, categories=("synth_object",), seeds=(0, 1))
    frame = runs.load_runs(results)
    assert sorted(set(zip(frame["backbone"], frame["registered_backbone"], frame["method"]))) == sorted(
        (arm, *split_arm(arm)) for arm in arms)
    assert check_protocol(frame, ("resnet50", "resnet50+rdpp"), backbone_family).kind == \
        "method comparison (RD4AD vs RD++); shared recipe otherwise"
    assert check_protocol(frame, ("resnet50+rdpp", "convnext_tiny+rdpp"), backbone_family).kind == "shared recipe"
    built = report.build_report(results, [["resnet50", "convnext_tiny"], ["resnet50+rdpp", "convnext_tiny+rdpp"]],
                                n_boot=20)
    table = built.tables["method_backbone"].set_index("backbone")
    assert list(table.index) == ["convnext_tiny", "resnet50"]
    overall = report.group_stats(built.runs).query("group == 'overall' and metric == 'image_auroc'")
    means = dict(zip(overall["backbone"], overall["mean"]))
    expected = f"{100 * (means['resnet50+rdpp'] - means['resnet50']):+.2f}"
    assert table.at["resnet50", "image AUROC RD++ − RD4AD (points)"] == expected
    assert "## Method × backbone (descriptive)" in report.render_report(built, [])
    shutil.rmtree(results / "resnet50+rdpp")
    shutil.rmtree(results / "convnext_tiny+rdpp")
    assert "method_backbone" not in report.build_report(results, n_boot=20).tables  # RD alone: no such table

"""Issue 6: the benchmark writes every figure, the on-device blur equals scipy's, the sweep estimate.

Speed itself is never asserted here (timings depend on the machine): `main.py bench` checks targets.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

import bench
import runs
import storage
import sweep
from errors import RDError
from rd_model import GaussianBlur
from recipe import FastPath, TrainConfig
from sweep import estimate_sweep
from system_info import describe_hardware
from train import train_run


@pytest.mark.parametrize("shape", [(3, 32, 32), (2, 20, 70), (1, 64, 48)])
def test_blur_equals_scipy_also_under_bf16_autocast(shape):
    maps = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    expected = np.stack([gaussian_filter(m.astype(np.float64), 4.0) for m in maps.numpy()])
    blur = GaussianBlur()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the CUDA fast path scores under bf16 autocast
        blurred = blur(maps)
    assert blurred.dtype == torch.float32
    np.testing.assert_allclose(blurred.numpy(), expected, atol=1e-6)


def bench_args(tmp_path: Path, **overrides) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--backbones", "convnext_tiny", "--image-size", "64", "--device", "cpu",
                              "--eval-image-size", "96", "--eval-images", "32", "--batch-size", "4",
                              "--rounds", "1", "--warmup", "0",
                              "--out", str(tmp_path / "bench.json")])
    return argparse.Namespace(**(vars(args) | overrides))


def test_bench_writes_every_figure_with_its_naive_reference(tmp_path, capsys):
    assert bench.run(bench_args(tmp_path)) == 0
    payload = json.loads((tmp_path / "bench.json").read_text())
    assert payload["machine"]["device"] == "cpu" and payload["versions"]["torch"] == torch.__version__
    assert payload["settings"]["image_size"] == 64 and payload["settings"]["pretrained"] is False
    assert len(payload["load_average"]["start"]) == 3
    figures = payload["backbones"]["convnext_tiny"]
    assert figures["fast_path"]["autocast"] == "off"
    for path in ("fast", "naive"):
        assert figures["train"][path]["images_per_s"] > 0 and figures["train"][path]["peak_memory_mb"] > 0
        assert figures["inference"]["batch_1"][path]["ms_per_image"] > 0
        assert figures["inference"]["batch_32"][path]["images_per_s"] > 0
        assert figures["evaluation"][path]["total_s"] > figures["evaluation"][path]["forward_s"] > 0
    assert figures["train"]["ratio"] > 0 and figures["inference"]["batch_32"]["ratio"] > 0
    assert figures["train"]["steps_per_epoch"] == bench.TRAIN_STEPS_PER_EPOCH  # one index copy per 8 steps
    evaluation = figures["evaluation"]
    assert payload["settings"]["eval_image_size"] == 96 and evaluation["image_size"] == 96  # apart from training's
    assert evaluation["images"] == 32 and evaluation["ratio_total"] > 0 and evaluation["ratio_without_forward"] > 0
    assert evaluation["identical_metrics"], evaluation["metrics"]
    for name in ("image_auroc", "pixel_auroc", "aupro"):
        assert evaluation["metrics"][name]["abs_diff"] <= bench.EQUAL_TOLERANCE
    assert "minus_exact" in evaluation["metrics"]["aupro_200_thresholds"]
    # the ops the fast step dispatches, casts among them (none on CPU without autocast but the optimiser's)
    assert figures["train"]["fast"]["ops_per_step"] > figures["train"]["fast"]["casts_per_step"] >= 0
    # evaluation in float32 as `main.py test`, then bf16: its speed and how far it moves the maps; its metric change
    # is not reported on a random teacher with a barely trained student (issue 24: cuda_check.sh measures it on a
    # trained run)
    assert evaluation["precision"] == "float32" and evaluation["tf32"] is False
    bf16 = evaluation["bf16_eval"]
    assert bf16["speedup"] > 0 and bf16["max_abs_map_diff"] > 0  # bf16 features do move the maps
    assert "metrics" not in bf16 and bf16["metric_change"] == bench.BF16_METRICS_NOTE
    estimate = figures["sweep_estimate"]
    assert estimate["train_images_per_epoch"] == 3629 - 342
    assert estimate["total_s"] == pytest.approx(estimate["train_s"] + estimate["validation_s"]
                                                + estimate["checkpoint_s"] + estimate["eval_s"])
    assert estimate["validation_s"] > 0 and estimate["checkpoint_s"] > 0 and estimate["write_bytes_per_s"] > 0
    assert any("identical metrics" in check["target"] for check in payload["targets"])
    printed = capsys.readouterr().out
    assert "training images/s" in printed and "random teachers" in printed and "speed-up" in printed
    assert "ops dispatched per fast step" in printed and "--eval-amp bf16" in printed


def test_mvtec_sweep_size():
    # 3,629 training images minus the validation hold-out of each category (the stable rule on MVTec's file names)
    configs = [TrainConfig(data_root="", category=c) for c in bench.MVTEC_CATEGORIES]
    assert sum(map(sweep.official_train_images, configs)) == 3629 - 342
    estimate = sweep.estimate_sweep(configs, throughput=sweep.Throughput(10.0, "given", scoring_images_per_s=40.0),
                                    epochs_done=lambda _: 0, train_images=sweep.official_train_images,
                                    val_images=sweep.official_val_images, write_bytes_per_s=1e8)
    assert estimate.images == 200 * (3629 - 342) and estimate.train_s == pytest.approx(200 * (3629 - 342) / 10.0)
    # issue 24: the validation passes and the checkpoints count too. Each epoch's validation loss over the 342
    # held-out normals, and 20 synthetic-validation passes (every 10 epochs) over the normals and 2 copies of each
    assert estimate.validation_s == pytest.approx((200 + 20 * 3) * 342 / 40.0)
    # WRN-50-2 (the default): 19 checkpoints with Adam's moments (epochs 10 to 190) and the finished one, per run
    sizes = storage.checkpoint_sizes(configs[0])
    assert 0.99e9 < sizes.unfinished < 1.02e9 and 3 * sizes.finished == pytest.approx(sizes.unfinished, rel=0.01)
    assert estimate.checkpoint_bytes == 15 * (19 * sizes.unfinished + sizes.finished)
    assert estimate.checkpoint_s == pytest.approx(estimate.checkpoint_bytes / 1e8)
    assert estimate.total_s == pytest.approx(estimate.train_s + estimate.validation_s + estimate.checkpoint_s)
    printed = str(estimate)
    assert "validation passes" in printed and "GB written" in printed and "--checkpoint-every" in printed


def small_config(root: Path, tmp_path: Path, **overrides) -> TrainConfig:
    base = TrainConfig(data_root=str(root), category="synth_object", backbone="resnet50", epochs=1, image_size=64,
                       batch_size=8, pretrained=False, results=str(tmp_path / "results"),
                       checkpoints=str(tmp_path / "checkpoints"), checkpoint_every=1)
    return replace(base, **overrides)


def test_sweep_estimate_from_history_bench_or_timed_steps(synthetic_root, tmp_path):
    done = small_config(synthetic_root, tmp_path)
    train_run(done, quiet=True)
    n_train = runs.read_json(done.run_dir / runs.CONFIG_FILE)["n_train"]

    # the complete run is skipped; another seed with 3 epochs is estimated from the first run's history
    todo = replace(done, seed=1, epochs=3)
    estimate = estimate_sweep([done, todo], bench_file=None)
    assert (estimate.runs_to_train, estimate.runs_complete) == (1, 1)
    assert "history of" in str(estimate) and f"{3 * n_train:,} images x epochs" in str(estimate)
    assert estimate.total_s > 0

    # no history of that setting (other batch size): a bench.json of the same setting is used
    other = replace(todo, batch_size=4, results=str(tmp_path / "elsewhere"))
    fast = FastPath.resolve(other, torch.device("cpu")).as_dict()
    bench_file = tmp_path / "bench.json"
    bench_file.write_text(json.dumps({
        "machine": describe_hardware(torch.device("cpu")), "settings": {"image_size": 64, "batch_size": 4},
        "backbones": {"resnet50": {"fast_path": fast, "train": {"fast": {"images_per_s": 10.0}}}}}))
    estimate = estimate_sweep([other], bench_file=str(bench_file))
    assert "main.py bench" in str(estimate)
    assert estimate.train_s == pytest.approx(3 * n_train / 10.0)
    assert estimate.validation_s > 0 and estimate.checkpoint_s > 0  # scoring timed, the folder's write speed measured

    # neither: a few steps are timed
    estimate = estimate_sweep([other], bench_file=None)
    assert "timed training steps" in str(estimate) and estimate.total_s > 0
    assert str(estimate_sweep([done])).endswith("nothing to train")


@pytest.mark.parametrize("user_value, expected", [(None, "1"), ("0", "0")])
def test_main_asks_for_huge_pages_before_torch_is_imported_unless_the_user_chose(user_value, expected):
    """c10 reads THP_MEM_ALLOC_ENABLE once, at its first allocation: it must be set before `import torch`."""
    code_dir = Path(bench.__file__).resolve().parent
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    if user_value is not None:
        env["THP_MEM_ALLOC_ENABLE"] = user_value
    probe = ("import os, sys; sys.argv = ['main.py']; import main; "
             "print('torch' in sys.modules, os.environ['THP_MEM_ALLOC_ENABLE'])")
    out = subprocess.run([sys.executable, "-c", probe], cwd=code_dir, env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", expected]


def test_fast_path_defaults_per_device():
    """bf16 autocast by default on CUDA only (slower on this CPU); channels_last on both; --amp wins."""
    config = TrainConfig(data_root="", category="c")
    cuda, cpu = torch.device("cuda"), torch.device("cpu")  # resolving allocates nothing: no GPU needed
    assert FastPath.resolve(config, cuda).as_dict() == {"channels_last": True, "compile": False,
                                                        "autocast": "bfloat16"}
    assert FastPath.resolve(config, cpu).as_dict()["autocast"] == "off"
    assert FastPath.resolve(replace(config, amp="off"), cuda).as_dict()["autocast"] == "off"
    assert FastPath.resolve(replace(config, amp="bf16", channels_last=False), cpu).as_dict() == {
        "channels_last": False, "compile": False, "autocast": "bfloat16"}
    with pytest.raises(RDError, match="--amp 'fp8'"):
        FastPath.resolve(replace(config, amp="fp8"), cuda)


def _bench_payload(device: str, size: int, images_per_s: float, eval_s: float, sweep_s: float) -> dict:
    evaluation = {"images": 167, "image_size": 256, "ratio_total": 12.0, "ratio_without_forward": 30.0,
                  "identical_metrics": True, "fast": {"total_s": eval_s, "forward_s": eval_s / 2},
                  "precision": "float32", "tf32": device == "cuda"}
    figures = {"fast_path": {"autocast": "bfloat16" if device == "cuda" else "off"},
               "train": {"ratio": 1.4, "fast": {"images_per_s": images_per_s}}, "evaluation": evaluation,
               "sweep_estimate": {"total_s": sweep_s}}
    return {"machine": {"device": device}, "settings": {"image_size": size},
            "backbones": {"resnet50": figures, "wide_resnet50_2": figures}}


def test_targets_checked_for_the_device_and_size_that_ran():
    """The verdicts a GPU run would print: issue 6's CUDA targets at 256 px, the CPU ratio at 128 px."""
    verdicts = {c["target"]: c["met"] for c in bench.check_targets(_bench_payload("cuda", 256, 1200.0, 1.5, 1500.0))}
    assert verdicts["resnet50: CUDA training >= 1500 images/s at 256 px"] is False  # 1200 < 1500
    assert verdicts["wide_resnet50_2: CUDA training >= 800 images/s at 256 px"] is True
    assert verdicts["resnet50: CUDA evaluation of a category < 2 s (167 images)"] is True
    assert verdicts["resnet50: 15-category 200-epoch sweep < 30 min (training, validation passes, checkpoints and the "
                    "test sets' evaluation)"] is True
    assert not any("CPU training" in target for target in verdicts)
    notes = [c["note"] for c in bench.check_targets(_bench_payload("cuda", 256, 1600.0, 3.0, 2000.0))
             if "identical" in c["target"]]
    assert notes and "--no-tf32" in notes[0]  # TF32 convolutions are not expected to equal the fp32 naive ones

    cpu = {c["target"]: c["met"] for c in bench.check_targets(_bench_payload("cpu", 128, 9.0, 30.0, 7e4))}
    assert cpu["resnet50: CPU training step fast/naive >= 1.3x at 128 px"] is True
    assert cpu["resnet50: evaluation without the network forward fast/naive >= 10x (167 images at 256 px)"] is True
    assert not any("CUDA" in target or "sweep" in target for target in cpu)


def test_bad_evaluation_size_names_its_flag(tmp_path):
    with pytest.raises(bench.RDError, match=r"--eval-image-size 100 is not divisible by 32.*96"):
        bench.run(bench_args(tmp_path, eval_image_size=100))
    assert not (tmp_path / "bench.json").exists()


def test_the_timed_fast_evaluation_meets_no_first_call_of_a_batch_shape(tmp_path, monkeypatch):
    """Issue 19: 39 test images in batches of 16 end with a batch of 7. A counting hook on every RD model's forward
    records (batch shape, autocast dtype); each one met inside a timed fast evaluation (float32, then bf16)
    was met before that evaluation began, so no cuDNN autotuning or first allocation is timed."""
    from torch.nn.modules.module import register_module_forward_pre_hook

    from rd_model import ReverseDistillation, autocast_dtype
    seen: list[tuple] = []  # (key, inside a timed evaluation)
    timed = []
    fast_evaluation = bench.fast_evaluation

    def timed_evaluation(*args, **kwargs):
        timed.append(len(seen))
        try:
            return fast_evaluation(*args, **kwargs)
        finally:
            timed.append(len(seen))

    def hook(module, inputs):
        if isinstance(module, ReverseDistillation):
            images = inputs[0]
            seen.append((tuple(images.shape), autocast_dtype(images.device.type)))

    monkeypatch.setattr(bench, "fast_evaluation", timed_evaluation)
    handle = register_module_forward_pre_hook(hook)
    try:
        assert bench.run(bench_args(tmp_path, parts="eval", eval_images=39, backbones="resnet50")) == 0
    finally:
        handle.remove()
    assert len(timed) == 4  # float32, then bf16
    for begin, end in zip(timed[::2], timed[1::2]):
        inside = seen[begin:end]
        assert sorted({shape[0] for shape, _ in inside}) == [7, 16]
        assert all(key in seen[:begin] for key in inside), (inside, seen[:begin])
    assert {dtype for _, dtype in seen[timed[2]:timed[3]]} == {torch.bfloat16}


def test_resident_memory_counts_each_storage_once_with_teacher_copies_and_optimiser_state():
    """What a path keeps resident (subtracted from the other path's peak): parameters and buffers, an RD model's
    bf16 teacher copy (not a submodule), Adam's moments; a storage held twice counts once."""
    from rd_model import ReverseDistillation
    from timing import resident_mb

    cpu = torch.device("cpu")
    layer = torch.nn.Linear(1000, 1000)
    weights_mb = 1001000 * 4 / 2**20
    assert resident_mb([layer, layer], cpu) == pytest.approx(weights_mb, rel=1e-12)
    optimizer = torch.optim.Adam(layer.parameters())
    layer(torch.randn(2, 1000)).sum().backward()
    optimizer.step()
    assert resident_mb([layer, optimizer], cpu) == pytest.approx(3 * weights_mb + 2 * 4 / 2**20, rel=1e-12)
    assert resident_mb([layer], torch.device("meta")) == 0

    model = ReverseDistillation(torch.nn.Conv2d(3, 8, 3), torch.nn.Identity(), torch.nn.Conv2d(8, 8, 1))
    before = resident_mb([model], cpu)
    model.keep_teacher_in(torch.bfloat16)
    assert resident_mb([model], cpu) - before == pytest.approx((8 * 3 * 9 + 8) * 2 / 2**20, rel=1e-12)

"""Issues 6 and 10: data-parallel training (DDP over gloo, 2 CPU processes) matches one process on the global batch.

The ranks are started as torchrun starts them (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) and run
the real ``main.py train``. The loss-curve test uses ConvNeXt, whose student has LayerNorm only, so the
ranks' shares of a batch are independent and 2 processes give the 1-process curve to rounding. The
ResNet student has BatchNorm: without ``--sync-bn`` each rank normalises with the statistics of its
own 4 images, a different computation from one process's over 8. With ``--sync-bn`` the computation
is the same, which the second test shows exactly, on float64 gradients: in float32 a ResNet RD loss
curve at 64 px is sensitive to rounding (a memory-format change alone moves epoch 2's loss by ~1.6%),
so a float32 curve comparison would test rounding, not the method. Under torchrun the global-batch
statistics are the default for BatchNorm students (issue 10: N GPUs keep the 1-GPU recipe).
"""
from __future__ import annotations

import os
import socket
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils._python_dispatch import TorchDispatchMode

import distributed
import runs
from backbones import build_model
from rd_model import distillation_loss
from recipe import TrainConfig
from train import train_run

EPOCHS, BATCH = 2, 8


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _rank_main(rank: int, world_size: int, port: int, argv: list[str]) -> None:
    """One torchrun-like rank; any file write by a rank other than 0 fails the test."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import train
    from main import main

    if rank != 0:
        def refuse(*_args, **_kwargs):
            raise AssertionError(f"rank {rank} tried to write a file")

        runs.atomic_write_text = runs.atomic_write_json = refuse
        train.save_checkpoint = runs.write_history = refuse
    assert main(argv) == 0


def test_two_gloo_processes_give_the_single_process_loss_curve(synthetic_root, tmp_path):
    single = TrainConfig(data_root=str(synthetic_root), category="synth_object", backbone="convnext_tiny",
                         epochs=EPOCHS, image_size=64, batch_size=BATCH, pretrained=False,
                         results=str(tmp_path / "one" / "results"), checkpoints=str(tmp_path / "one" / "checkpoints"))
    train_run(single, quiet=True)
    parallel = replace(single, results=str(tmp_path / "two" / "results"),
                       checkpoints=str(tmp_path / "two" / "checkpoints"))
    argv = ["train", "--data-root", str(synthetic_root), "--categories", "synth_object", "--backbones",
            "convnext_tiny", "--epochs", str(EPOCHS), "--image-size", "64", "--batch-size", str(BATCH),
            "--no-pretrained", "--device", "cpu", "--no-eta", "--results", parallel.results,
            "--checkpoints", parallel.checkpoints]
    mp.spawn(_rank_main, args=(2, free_port(), argv), nprocs=2, join=True)

    expected = pd.read_csv(single.run_dir / runs.HISTORY_FILE)
    actual = pd.read_csv(parallel.run_dir / runs.HISTORY_FILE)
    assert len(expected) == len(actual) == EPOCHS
    for column in ("loss", "loss_scale1", "loss_scale2", "loss_scale3", "val_loss"):
        np.testing.assert_allclose(actual[column], expected[column], rtol=1e-4, err_msg=column)
    assert runs.read_json(parallel.run_dir / runs.CONFIG_FILE)["world_size"] == 2
    written = sorted(p.name for p in Path(parallel.results).rglob("*")  # .cache/: rank 0's synthetic validation set
                     if p.is_file() and p.name != runs.LOCK_FILE and ".cache" not in p.parts)
    assert written == [runs.CONFIG_FILE, runs.HISTORY_FILE]
    saved = [p.name for p in Path(parallel.checkpoints).rglob("*") if p.is_file() and p.name != runs.LOCK_FILE]
    assert saved == [runs.CHECKPOINT_FILE]


def _rd_gradients(rank: int, world_size: int, sync_bn: bool) -> dict[str, torch.Tensor]:
    """Float64 gradients and BatchNorm running statistics of a ResNet RD model after one backward on
    this rank's share of 8 fixed images (all 8 in a single process)."""
    torch.manual_seed(0)
    model = build_model("resnet50", pretrained=False).double()
    net = distributed.DistributedRD(model, torch.device("cpu"), sync_bn) if world_size > 1 else model
    if world_size > 1:  # rank 0's buffers are broadcast only where they can differ: per-rank statistics
        assert net.path.broadcast_buffers is (not sync_bn)
    net.train()
    images = torch.randn(8, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    teacher, student = net(images.tensor_split(world_size)[rank])
    distillation_loss(teacher, student)[0].backward()
    trainable = model.trainable_modules()
    return {**{name: p.grad for name, p in trainable.named_parameters()},
            **{name: b for name, b in trainable.named_buffers() if "running" in name}}


def _gradients_main(rank: int, world_size: int, port: int, out: Path) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        for sync_bn in (True, False):
            gradients = _rd_gradients(rank, world_size, sync_bn)
            if rank == 0:
                torch.save(gradients, out / f"sync_bn_{sync_bn}.pt")
    finally:
        dist.destroy_process_group()


def _worst_relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-300)) for k in a)


def test_sync_bn_gives_the_single_process_gradients_of_a_batchnorm_student(tmp_path):
    mp.spawn(_gradients_main, args=(2, free_port(), tmp_path), nprocs=2, join=True)
    single = _rd_gradients(0, 1, sync_bn=False)
    synced = torch.load(tmp_path / "sync_bn_True.pt")
    per_rank = torch.load(tmp_path / "sync_bn_False.pt")
    assert _worst_relative_difference(synced, single) < 1e-9  # gradients and running statistics
    assert _worst_relative_difference(per_rank, single) > 1e-3  # per-rank statistics: another computation


def test_global_batchnorm_is_batchnorm_outside_a_group():
    layer = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    converted = distributed.convert_batchnorm(torch.nn.Sequential(*layer))
    assert isinstance(converted[1], distributed.GlobalBatchNorm)
    assert converted[1].weight is layer[1].weight  # the optimiser's parameters are kept
    images = torch.randn(6, 3, 5, 5)
    assert torch.allclose(converted(images), layer(images))
    assert converted.state_dict().keys() == layer.state_dict().keys()


def test_batch_must_split_evenly(synthetic_root, tmp_path, monkeypatch):
    monkeypatch.setattr(distributed, "current", lambda: distributed.World(0, 3, 0))
    config = TrainConfig(data_root=str(synthetic_root), category="synth_object", backbone="resnet50",
                         batch_size=8, pretrained=False, results=str(tmp_path))
    with pytest.raises(distributed.RDError, match="divisible by the 3 processes"):
        train_run(config, quiet=True)


def _default_rank_main(rank: int, world_size: int, port: int, argv: list[str], out: Path) -> None:
    """A torchrun-like rank of `main.py train` without BatchNorm flags; rank 0 records how its student was wrapped."""
    wrap = distributed.DistributedRD.__init__

    def recording_init(self, model, device, sync_bn=False):
        wrap(self, model, device, sync_bn)
        if rank == 0:
            norms = [type(m).__name__ for m in model.trainable_modules().modules() if "BatchNorm" in type(m).__name__]
            (out / "norms.txt").write_text("\n".join(norms))

    distributed.DistributedRD.__init__ = recording_init
    _rank_main(rank, world_size, port, argv)


def test_batchnorm_students_sync_by_default_under_torchrun(synthetic_root, tmp_path):
    results = tmp_path / "results"
    argv = ["train", "--data-root", str(synthetic_root), "--categories", "synth_object", "--backbones", "resnet50",
            "--epochs", "1", "--image-size", "32", "--batch-size", str(BATCH), "--no-pretrained", "--device", "cpu",
            "--no-eta", "--results", str(results), "--checkpoints", str(tmp_path / "checkpoints")]
    mp.spawn(_default_rank_main, args=(2, free_port(), argv, tmp_path), nprocs=2, join=True)
    norms = (tmp_path / "norms.txt").read_text().split()
    expected = sum(isinstance(m, torch.nn.BatchNorm2d) for m in
                   build_model("resnet50", pretrained=False).trainable_modules().modules())
    assert len(norms) == expected > 0 and set(norms) == {"GlobalBatchNorm"}
    record = runs.read_json(next(results.rglob(runs.CONFIG_FILE)))
    assert record["sync_bn"] is True and record["world_size"] == 2


def test_sync_bn_resolution():
    resnet, convnext = (build_model(name, pretrained=False) for name in ("resnet50", "convnext_tiny"))
    group, alone = distributed.World(0, 2, 0), distributed.World()
    assert distributed.resolve_sync_bn(None, resnet, group) is True  # the default under torchrun
    assert distributed.resolve_sync_bn(False, resnet, group) is False  # --no-sync-bn
    assert distributed.resolve_sync_bn(None, convnext, group) is False  # LayerNorm only: nothing to synchronise
    assert distributed.resolve_sync_bn(True, resnet, alone) is False  # one process: plain BatchNorm
    from sweep import add_train_arguments
    import argparse

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    assert parser.parse_args([]).sync_bn is None and parser.parse_args(["--no-sync-bn"]).sync_bn is False


def test_global_batchnorm_reads_nothing_back_and_keeps_float32_statistics(monkeypatch):
    """In a group, GlobalBatchNorm never reads a value back to the host (it runs on the meta device, where any
    such read fails), and bf16 activations (autocast) get float32 statistics, as BatchNorm's own kernels."""
    monkeypatch.setattr(distributed, "current", lambda: distributed.World(0, 2, 0))
    monkeypatch.setattr(distributed.dist, "all_reduce", lambda tensor, *args, **kwargs: tensor)  # a group of one
    meta = distributed.GlobalBatchNorm(4, device="meta").train()
    out = meta(torch.randn(6, 4, 5, 5, device="meta", requires_grad=True))
    out.sum().backward()
    assert out.shape == (6, 4, 5, 5)

    layer = distributed.GlobalBatchNorm(4).train()
    reference = torch.nn.BatchNorm2d(4).train()
    images = torch.randn(6, 4, 5, 5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(layer(images), reference(images))
    torch.testing.assert_close(layer.running_var, reference.running_var)
    low = layer(images.to(torch.bfloat16))
    assert low.dtype == torch.bfloat16 and layer.running_mean.dtype == torch.float32
    torch.testing.assert_close(low.float(), reference(images.to(torch.bfloat16).float()), atol=2e-2, rtol=2e-2)


class CudaBatchNormBackwardContract(TorchDispatchMode):
    """``aten.native_batch_norm_backward`` as CUDA's kernel computes it, on the CPU: the saved mean and inverse std
    must be defined (CUDA asserts it on its channels_last path, where the fused kernel is skipped) and, when not
    empty, they are what it normalises with, in eval mode as in training. Torch's CPU kernel accepts ``None`` and
    ignores them in eval mode, which is how a backward that CUDA rejects passed the CPU tests."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        if func is not torch.ops.aten.native_batch_norm_backward.default:
            return func(*args, **(kwargs or {}))
        grad_out, x, weight, running_mean, running_var, save_mean, save_invstd, train, eps, mask = args
        assert save_mean is not None and save_invstd is not None, "save_mean should always be defined"
        accumulate = torch.promote_types(x.dtype, torch.float32)
        assert save_mean.dtype == save_invstd.dtype == accumulate, (save_mean.dtype, save_invstd.dtype)
        if save_mean.numel():
            mean, invstd = save_mean, save_invstd
        else:
            assert not train and running_mean is not None and running_var is not None
            mean, invstd = running_mean.to(accumulate), torch.rsqrt(running_var.to(accumulate) + eps)
        assert not train, "GlobalBatchNorm asks for the eval-mode backward"
        shape = (1, -1, 1, 1)
        centred = (x - mean.view(shape)) * invstd.view(shape)
        scale = invstd if weight is None else invstd * weight
        return grad_out * scale.view(shape), (grad_out * centred).sum((0, 2, 3)), grad_out.sum((0, 2, 3))


def test_the_contract_stand_in_rejects_undefined_saved_statistics():
    x, grad = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), correction=0)
    with CudaBatchNormBackwardContract(), pytest.raises(AssertionError, match="save_mean should always be defined"):
        torch.ops.aten.native_batch_norm_backward(grad, x, None, mean, var, None, None, False, 1e-5,
                                                  [True, True, True])


@pytest.mark.parametrize("memory_format", [torch.channels_last, torch.contiguous_format])
def test_global_batchnorm_gradients_equal_batchnorm_in_a_group_of_one_rank(monkeypatch, memory_format):
    """The custom backward (one all-reduce of sum(dy) and sum(dy * x_hat)) against autograd through BatchNorm2d,
    in float64, with the group's all-reduce standing in as the identity; channels_last (as the students run) and
    contiguous. GlobalBatchNorm's backward runs under CUDA's contract for BatchNorm's backward kernel
    (``CudaBatchNormBackwardContract``): undefined saved statistics would fail here as they fail on a GPU."""
    monkeypatch.setattr(distributed, "current", lambda: distributed.World(0, 2, 0))
    monkeypatch.setattr(distributed.dist, "all_reduce", lambda tensor, *args, **kwargs: tensor)
    generator = torch.Generator().manual_seed(0)
    images = (torch.randn(5, 3, 4, 6, dtype=torch.float64, generator=generator) * 3 + 7)
    images = images.contiguous(memory_format=memory_format)
    upstream = torch.randn(5, 3, 4, 6, dtype=torch.float64, generator=generator)
    results = []
    for layer in (distributed.GlobalBatchNorm(3), torch.nn.BatchNorm2d(3)):
        layer = layer.double().train()
        with torch.no_grad():
            layer.weight.copy_(torch.tensor([0.5, -2.0, 1.5]))
            layer.bias.copy_(torch.tensor([0.1, 0.2, -0.3]))
            layer.running_mean.fill_(6.0)  # the shift of the one-pass combination
        x = images.clone().requires_grad_()
        contract = CudaBatchNormBackwardContract() if isinstance(layer, distributed.GlobalBatchNorm) else nullcontext()
        with contract:
            (layer(x) * upstream).sum().backward()
        results.append([layer(images.clone()).detach(), x.grad, layer.weight.grad, layer.bias.grad,
                        layer.running_mean.clone(), layer.running_var.clone()])
    for ours, reference in zip(*results):
        torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)


def test_at_most_two_collectives_per_batchnorm_layer_in_a_resnet50_rd_step(tmp_path):
    """benchmarks/batchnorm_collectives.py under 2-process gloo DDP: one all-reduce per BatchNorm layer in the
    forward and one in the backward (previously four), besides DDP's own gradient buckets and broadcasts."""
    import subprocess
    import sys
    out = tmp_path / "collectives.json"
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, str(root / "benchmarks" / "batchnorm_collectives.py"), "--image-size", "32",
                    "--batch-size", "4", "--steps", "1", "--variants", "after", "--out", str(out)],
                   check=True, capture_output=True, timeout=300)
    after = runs.read_json(out)["after"]
    assert after["batchnorm_layers"] == 55  # ResNet-50 RD's bottleneck and student
    assert after["batchnorm_collectives_per_step"] == 2 * after["batchnorm_layers"]
    assert 0 < after["collectives_per_step"] - after["batchnorm_collectives_per_step"] < 20  # DDP's buckets, broadcasts

"""Issue 24: the tests that only mean something on a GPU, marked ``cuda`` and skipped without one.

``pytest -m cuda`` runs them (benchmarks/cuda_check.sh does, first, within 2 minutes on one GPU): GlobalBatchNorm's
backward through CUDA's own BatchNorm kernels (channels_last, where CUDA asserts the saved statistics) in a real NCCL
group of one, the training step compiled by inductor (not dynamo's eager stand-in), the bf16 maps, and the data path
on the device. Their CPU counterparts (a stand-in of CUDA's kernel contract, the eager backend) run everywhere.
"""
from __future__ import annotations

import socket
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.distributed as dist
from scipy.ndimage import gaussian_filter
from torch._dynamo.utils import counters

import distributed
import evaluate
import recipe
from backbones import build_model
from dataset import normalize
from helpers import TinyStudent, TinyTeacher
from rd_model import GaussianBlur, ReverseDistillation, distillation_loss

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (pytest -m cuda on one)")]
CUDA = torch.device("cuda", 0)


@pytest.fixture
def nccl_group_of_one(monkeypatch):
    """A real NCCL group of one process, with ``distributed.current`` saying 2 ranks so that GlobalBatchNorm takes
    its group path (its all-reduces then run through NCCL and sum one rank's values)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1, device_id=CUDA)
    monkeypatch.setattr(distributed, "current", lambda: distributed.World(0, 2, 0))
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("memory_format", [torch.channels_last, torch.contiguous_format])
def test_global_batchnorm_backward_runs_on_cuda_kernels_and_equals_batchnorm(nccl_group_of_one, memory_format):
    generator = torch.Generator(device=CUDA).manual_seed(0)
    images = (torch.randn(6, 8, 16, 16, device=CUDA, generator=generator) * 3 + 2).contiguous(
        memory_format=memory_format)
    upstream = torch.randn(6, 8, 16, 16, device=CUDA, generator=generator)
    results = []
    for layer in (distributed.GlobalBatchNorm(8), torch.nn.BatchNorm2d(8)):
        layer = layer.to(CUDA).train()
        x = images.clone().requires_grad_()
        (layer(x) * upstream).sum().backward()
        results.append([x.grad, layer.weight.grad, layer.bias.grad, layer.running_mean, layer.running_var])
    for ours, reference in zip(*results):
        torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)


def test_a_resnet_rd_backward_with_global_batchnorm_on_cuda(nccl_group_of_one):
    """All 55 BatchNorm layers of the ResNet-50 student through DDP and the backward CUDA asserts on (channels_last):
    in float64 the gradients are the plain BatchNorm model's (one rank: the same batch); then a step as a torchrun
    run trains it (bf16 autocast) has a finite loss and finite gradients."""
    torch.manual_seed(0)
    plain = build_model("resnet50", pretrained=False).double()
    synced = build_model("resnet50", pretrained=False).double()
    synced.load_state_dict(plain.state_dict())
    exact = recipe.FastPath(channels_last=True, autocast_dtype=None, compile=False)
    batch = exact.prepare(torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, device=CUDA)).double()
    gradients = []
    for model, wrap in ((plain, False), (synced, True)):
        exact.place(model, CUDA)
        net = distributed.DistributedRD(model, CUDA, sync_bn=True) if wrap else model
        net.train()
        teacher, student = net(batch)
        distillation_loss(teacher, student)[0].backward()
        gradients.append(torch.cat([p.grad.flatten() for p in model.trainable_modules().parameters()]))
    converted = [m for m in synced.trainable_modules().modules() if isinstance(m, distributed.GlobalBatchNorm)]
    assert len(converted) == 55
    difference = torch.linalg.vector_norm(gradients[1] - gradients[0]) / torch.linalg.vector_norm(gradients[0])
    assert difference < 1e-9, float(difference)

    bf16 = recipe.FastPath(channels_last=True, autocast_dtype=torch.bfloat16, compile=False)
    model = bf16.place(build_model("resnet50", pretrained=False), CUDA)
    net = distributed.DistributedRD(model, CUDA, sync_bn=True).train()
    loss, _ = recipe.train_step(net, recipe.make_optimizer(model, recipe.TrainConfig(data_root="", category="c")),
                                bf16.prepare(torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8, device=CUDA)),
                                bf16, CUDA)
    assert torch.isfinite(loss) and all(torch.isfinite(p).all() for p in model.trainable_modules().parameters())


def test_the_training_step_compiles_once_with_inductor(monkeypatch):
    """Inductor itself (triton kernels), bf16 autocast and channels_last as on CUDA by default: graphs at the first
    step only, the smaller last batch included, and the losses of the eager step from the same weights."""
    monkeypatch.delenv(recipe.COMPILE_BACKEND_ENV, raising=False)
    fast = recipe.FastPath(channels_last=True, autocast_dtype=torch.bfloat16, compile=True)
    losses = {}
    for compiled in (True, False):
        torch.manual_seed(0)
        model = fast.place(ReverseDistillation(TinyTeacher(), torch.nn.Identity(), TinyStudent()), CUDA)
        optimizer = torch.optim.Adam(model.trainable_modules().parameters(), lr=1e-3, fused=True)
        step = recipe.compiled_train_step() if compiled else recipe.train_step
        counters.clear()
        new_graphs, run_losses = [], []
        for size in (8, 8, 5, 8, 5):
            before = counters["stats"]["unique_graphs"]
            images = torch.randint(0, 256, (size, 3, 32, 32), dtype=torch.uint8, device=CUDA,
                                   generator=torch.Generator(device=CUDA).manual_seed(size))
            loss, _ = step(model, optimizer, fast.prepare(images), fast, CUDA)
            run_losses.append(float(loss))
            new_graphs.append(counters["stats"]["unique_graphs"] - before)
        losses[compiled] = run_losses
        if compiled:
            assert new_graphs[0] > 0 and new_graphs[1:] == [0] * 4, new_graphs
    np.testing.assert_allclose(losses[True], losses[False], rtol=2e-2)


def test_bf16_maps_are_float32_and_close_to_the_float32_maps():
    torch.manual_seed(0)
    model = build_model("resnet50", pretrained=False)
    images = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    maps = {}
    for dtype in (None, torch.bfloat16):
        fast = recipe.FastPath(channels_last=True, autocast_dtype=torch.bfloat16, compile=False,
                               eval_autocast_dtype=dtype)
        fast.place(model, CUDA)
        maps[dtype] = evaluate.score_images(model, images, fast, CUDA, batch_size=2)
        assert maps[dtype].dtype == torch.float32 and maps[dtype].device == CUDA
    assert {next(c.parameters()).dtype for c in model.teacher_copies()} == {torch.bfloat16}
    span = float(maps[None].max() - maps[None].min())
    assert 0 < float((maps[torch.bfloat16] - maps[None]).abs().max()) < 0.1 * span  # moved, but not far
    smooth = torch.rand(3, 40, 56, generator=torch.Generator().manual_seed(0))
    expected = np.stack([gaussian_filter(m.astype(np.float64), 4.0) for m in smooth.numpy()])
    with torch.autocast(CUDA.type, dtype=torch.bfloat16):
        blurred = GaussianBlur().to(CUDA)(smooth.to(CUDA))
    assert blurred.dtype == torch.float32
    np.testing.assert_allclose(blurred.cpu().numpy(), expected, atol=1e-5)


def test_the_data_path_on_the_device(monkeypatch):
    """uint8 images normalised on the GPU as on the CPU, an epoch's indices copied once, the test set pinned once."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # exact float32: the CPU's maps
    images = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8)
    fast = recipe.FastPath(channels_last=True, autocast_dtype=None, compile=False)
    prepared = fast.prepare(images.to(CUDA))
    assert prepared.device == CUDA and prepared.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(prepared.cpu(), normalize(images))
    batches = recipe.device_batches(10, 4, seed=0, epoch=1, device=CUDA)
    assert [global_size for _, global_size in batches] == [4, 4, 2]
    assert all(indices.device == CUDA for indices, _ in batches)
    assert torch.equal(torch.cat([i.cpu() for i, _ in batches]).sort().values, torch.arange(10))

    pinned = evaluate.pin_for(images, CUDA)
    assert pinned.is_pinned() and evaluate.pin_for(pinned, CUDA) is pinned and pinned[2:5].is_pinned()
    calls = []
    real = torch.Tensor.pin_memory
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    torch.manual_seed(0)
    model = recipe.FastPath(True, None, False).place(
        ReverseDistillation(TinyTeacher(), torch.nn.Identity(), TinyStudent()), CUDA)
    on_gpu = evaluate.score_images(model, pinned, fast, CUDA, batch_size=4)
    assert calls == []  # pinned once by the caller, never again per call
    cpu_model = replace(fast, channels_last=False).place(model.cpu(), torch.device("cpu"))
    torch.testing.assert_close(on_gpu.cpu(), evaluate.score_images(cpu_model, images, fast, torch.device("cpu")),
                               rtol=1e-3, atol=1e-4)

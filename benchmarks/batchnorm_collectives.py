"""Collectives per ResNet-50 RD training step under 2-process gloo DDP with global-batch BatchNorm (--sync-bn).

    .venv/bin/python benchmarks/batchnorm_collectives.py [--image-size 64] [--batch-size 8] [--steps 2]
                                                         [--variants before,after]
                                                         [--backbone resnet50] [--out batchnorm_collectives.json]

Two CPU processes join a gloo group as torchrun's ranks do, wrap a random-teacher RD model in
``distributed.DistributedRD(sync_bn=True)`` and run ``recipe.train_step`` on their halves of a global batch.
After one warm-up step, ``--steps`` steps are counted twice: every collective the step issues (torch.profiler's
``c10d::`` operations: GlobalBatchNorm's all-reduces and DDP's gradient buckets and buffer broadcasts), and
those issued by the BatchNorm layers alone (calls of ``torch.distributed.all_reduce``; DDP issues its own from
C++). "before" is the previous GlobalBatchNorm (``LegacyGlobalBatchNorm`` below: two autograd-aware
all-reduces in the forward, each all-reduced again in the backward), "after" is ``distributed.GlobalBatchNorm``.
The counts are per step and do not depend on the machine; the step times (CPU, gloo) are printed for scale.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "RD4AD-main"))

import distributed  # noqa: E402
from backbones import build_model  # noqa: E402
from recipe import FastPath, train_step  # noqa: E402

__all__ = ["LegacyGlobalBatchNorm", "main"]


class _LegacySumOverRanks(torch.autograd.Function):
    """The previous implementation's all-reduce whose gradient is all-reduced again."""

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:  # noqa: ANN001
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: ANN001
        return _LegacySumOverRanks.apply(grad)


class LegacyGlobalBatchNorm(distributed.GlobalBatchNorm):
    """GlobalBatchNorm as it was before issue 19 (the reference of the "before" count): sum and count, then the
    centred sum of squares, each through an autograd-aware all-reduce, on a float32 copy of bf16 activations."""

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and distributed.current().enabled):
            return super().forward(x)
        dims = [0, 2, 3]
        values = x.float() if x.dtype in (torch.bfloat16, torch.float16) else x
        local_count = values.new_full((1,), x.numel() / x.shape[1])
        totals = _LegacySumOverRanks.apply(torch.cat([values.sum(dims), local_count]))
        count = totals[-1].detach()
        mean = totals[:-1] / count
        centered = values - mean.view(1, -1, 1, 1)
        var = _LegacySumOverRanks.apply((centered * centered).sum(dims)) / count
        out = centered * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
        if self.affine:
            out = out * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                self.running_mean.lerp_(mean.detach(), self.momentum)
                self.running_var.lerp_(var.detach() * count / (count - 1), self.momentum)
        return out.to(x.dtype)


def _count(rank: int, args: argparse.Namespace, legacy: bool) -> dict:
    """This rank's collectives per step (all, and BatchNorm's alone) and its mean step time."""
    torch.manual_seed(0)
    model = build_model(args.backbone, pretrained=False)
    net = distributed.DistributedRD(model, torch.device("cpu"), sync_bn=True)
    layers = [m for m in net.modules() if isinstance(m, distributed.GlobalBatchNorm)]
    if legacy:
        for layer in layers:
            layer.__class__ = LegacyGlobalBatchNorm
    net.train()
    optimizer = torch.optim.Adam(model.trainable_modules().parameters(), lr=0.005, betas=(0.5, 0.999))
    fast = FastPath(channels_last=True, autocast_dtype=None, compile=False)
    share = args.batch_size // 2
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size,
                         generator=torch.Generator().manual_seed(1))[rank * share:(rank + 1) * share]
    batch = fast.prepare((images * 40 + 128).clamp(0, 255).to(torch.uint8))
    train_step(net, optimizer, batch, fast, torch.device("cpu"))  # warm-up: DDP's first step differs

    python_calls = Counter()
    all_reduce = dist.all_reduce

    def counting_all_reduce(tensor: Tensor, *a, **k):  # noqa: ANN002, ANN003
        python_calls["all_reduce"] += 1
        return all_reduce(tensor, *a, **k)

    dist.all_reduce = counting_all_reduce
    try:
        started = time.perf_counter()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            for _ in range(args.steps):
                train_step(net, optimizer, batch, fast, torch.device("cpu"))
        seconds = (time.perf_counter() - started) / args.steps
    finally:
        dist.all_reduce = all_reduce
    collectives = Counter(e.name for e in profile.events() if e.name.startswith("c10d::"))
    return {"batchnorm_layers": len(layers),
            "collectives_per_step": sum(collectives.values()) / args.steps,
            "by_kind_per_step": {name: n / args.steps for name, n in sorted(collectives.items())},
            "batchnorm_collectives_per_step": python_calls["all_reduce"] / args.steps,
            "step_s_with_profiler": round(seconds, 3)}


def _rank_main(rank: int, port: int, args: argparse.Namespace, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        figures = {name: _count(rank, args, legacy=name == "before") for name in args.variants.split(",")}
        if rank == 0:
            Path(out).write_text(json.dumps(figures))
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8, help="the global batch (half per process)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--variants", default="before,after", help="which GlobalBatchNorm to count: before, after or both")
    parser.add_argument("--out", default="batchnorm_collectives.json")
    args = parser.parse_args(argv)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory() as scratch:
        figures_file = str(Path(scratch) / "figures.json")
        mp.spawn(_rank_main, args=(port, args, figures_file), nprocs=2, join=True)
        figures = json.loads(Path(figures_file).read_text())
    payload = {"backbone": args.backbone, "image_size": args.image_size, "global_batch": args.batch_size,
               "world_size": 2, "backend": "gloo", "torch": torch.__version__, **figures}
    tmp = Path(args.out).with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(args.out)
    layers = next(iter(figures.values()))["batchnorm_layers"]
    print(f"{args.backbone} RD, {layers} BatchNorm layers, 2 gloo processes, collectives per training step:")
    for name in figures:
        f = figures[name]
        print(f"  {name:6s}: {f['collectives_per_step']:5.0f} in all, {f['batchnorm_collectives_per_step']:5.0f} from "
              f"BatchNorm ({f['batchnorm_collectives_per_step'] / layers:.1f} per layer); "
              f"{f['step_s_with_profiler']:.2f} s per step (CPU, profiled)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

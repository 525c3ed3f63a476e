"""What the synthetic validation (synthval.py) costs beside training: one pass vs one training epoch.

    .venv/bin/python benchmarks/synthval_benchmark.py [--backbones resnet50,convnext_tiny] [--image-size 64]
        [--train-images 240] [--batch-size 16] [--rounds 3] [--device auto]

Writes a synthetic object category whose train/good holds ``--train-images`` images (10 % held out for
validation, as in a run), and per backbone (random teacher: speed does not depend on the weights) times,
in alternating rounds, one training epoch of the shared recipe and one synthetic-validation pass (scoring
3 x the validation normals, then image AUROC, pixel AUROC and AUPRO), and prints their ratio: the share
of an epoch that a pass costs, i.e. 1/--val-every of it per epoch on average. Also prints the one-off time
to make the set. A benchmark, not a test: timings depend on the machine.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "RD4AD-main"))

import synthval  # noqa: E402  (needs the path above)
from recipe import (FastPath, TrainConfig, build_run_model, epoch_batches, make_optimizer,  # noqa: E402
                    open_split, train_step)
from synth import generate  # noqa: E402
from system_info import resolve_device  # noqa: E402
from timing import alternate  # noqa: E402


def measure(config: TrainConfig, device: torch.device, rounds: int) -> str:
    """One line: epoch time, validation-pass time and their ratio for ``config``'s backbone."""
    train_set, val_set = open_split(config, "train"), open_split(config, "val")
    started = time.perf_counter()
    synthetic = synthval.load_synthetic_set(config, train_set, val_set)
    made_s = time.perf_counter() - started
    fast = FastPath.resolve(config, device)
    model, _, _ = build_run_model(config)
    fast.place(model, device)
    optimizer = make_optimizer(model, config)
    images = train_set.uint8_images().to(device)

    def epoch() -> None:
        model.train()
        for batch in epoch_batches(len(images), config.batch_size, config.seed, 1):
            train_step(model, optimizer, fast.prepare(images[batch.to(device)]), fast, device)

    def validation() -> None:
        synthval.score_synthetic(model, synthetic, fast, device, config.batch_size)

    timed = alternate({"epoch": epoch, "validation": validation}, rounds, 1, len(images), device,
                      f"{config.backbone} epoch vs validation")
    epoch_s, validation_s = timed["epoch"].best, timed["validation"].best
    return (f"{config.backbone:>16} at {config.image_size} px: epoch ({len(images)} images) {epoch_s * 1000:8.0f} ms, "
            f"synthetic validation ({len(synthetic.images)} images) {validation_s * 1000:6.0f} ms = "
            f"{validation_s / epoch_s:.1%} of an epoch ({validation_s / epoch_s / config.val_every:.1%} per epoch at "
            f"--val-every {config.val_every}); making the set once: {made_s * 1000:.0f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="resnet50,convnext_tiny")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--train-images", type=int, default=240, help="size of train/good (MVTec AD: 60-391)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as root:
        generate(root, categories=2, image_size=args.image_size, n_train=args.train_images, n_test=4)
        base = TrainConfig(data_root=root, category="synth_object", image_size=args.image_size,
                           batch_size=args.batch_size, pretrained=False, results=str(Path(root) / "results"))
        print(f"device {device}, torch threads {torch.get_num_threads()}, batch {args.batch_size}")
        for backbone in args.backbones.split(","):
            print(measure(replace(base, backbone=backbone), device, args.rounds), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

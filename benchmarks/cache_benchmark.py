"""How much the in-memory uint8 cache saves: epoch 1 decodes PNGs, epoch 2 reads the cache.

    .venv/bin/python benchmarks/cache_benchmark.py [--images 300] [--image-size 256] [--batch-size 16]

Writes a synthetic object category (RGB) whose train split holds ``--images`` images, iterates a
DataLoader (num_workers=0) over it twice and prints both epoch times and their ratio (target >= 5x).
Exit status 1 when the ratio is below the target. A benchmark, not a test: timings depend on the machine.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "RD4AD-main"))

from dataset import MVTecDataset  # noqa: E402  (needs the path above)
from synth import generate  # noqa: E402

TARGET = 5.0
VAL_FRACTION = 0.1


def train_total_for(images: int) -> int:
    """Size of train/good whose train split (after the validation hold-out) is ``images`` images."""
    total = images
    while total - max(4, round(VAL_FRACTION * total)) < images:
        total += 1
    return total


def epoch_seconds(loader: torch.utils.data.DataLoader) -> float:
    start = time.perf_counter()
    for batch in loader:
        batch["image"].sum()  # touch the data, as a training step would
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        generate(root, categories=2, image_size=args.image_size, n_train=train_total_for(args.images), n_test=4)
        dataset = MVTecDataset(root, "synth_object", "train", args.image_size, VAL_FRACTION)
        loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, num_workers=0)
        first = epoch_seconds(loader)
        second = epoch_seconds(loader)
    ratio = first / second
    print(f"{len(dataset)} images at {args.image_size} px, batch {args.batch_size}, num_workers=0, "
          f"torch threads {torch.get_num_threads()}")
    print(f"epoch 1 (decode PNG, fill cache): {first:.3f} s")
    print(f"epoch 2 (from cache):             {second:.3f} s")
    print(f"speed-up: {ratio:.1f}x (target >= {TARGET:.0f}x): {'OK' if ratio >= TARGET else 'BELOW TARGET'}")
    return 0 if ratio >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())

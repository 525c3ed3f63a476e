"""Time the per-run instruments ``main.py test`` adds (instruments.py): the scale ablation (scales.csv) and the
region table (regions.csv), on random per-scale maps of a test split's size, on the CPU.

    .venv/bin/python benchmarks/instruments_cost.py [--sizes 64:16,256:150] [--repeats 2]

Each size is ``PIXELS:IMAGES``; a third of the images are normal, the others hold one rectangular defect. The
time does not depend on the map values, only on their number (sorts and blurs); the best of the repeats counts.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "RD4AD-main"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from instruments import region_table, scale_ablation  # noqa: E402
from rd_model import GaussianBlur, sum_scales  # noqa: E402


def _best(repeats: int, work) -> float:  # noqa: ANN001
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64:16,256:150", help="PIXELS:IMAGES pairs, comma-separated")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    blur = GaussianBlur()
    print(f"torch threads: {torch.get_num_threads()}\n\n| size (px) | test images | scale ablation (s) | regions (s) |")
    print("|---:|---:|---:|---:|")
    for item in args.sizes.split(","):
        size, n = (int(part) for part in item.split(":"))
        generator = torch.Generator().manual_seed(0)
        per_scale = [torch.rand(n, size, size, generator=generator) for _ in range(3)]
        masks = torch.zeros(n, size, size, dtype=torch.uint8)
        masks[n // 3:, size // 4:size // 2, size // 4:size // 3] = 1
        labels = np.array([0] * (n // 3) + [1] * (n - n // 3))
        maps = blur(sum_scales(per_scale))
        ablation = _best(args.repeats, lambda: scale_ablation(maps, per_scale, labels, masks, blur))
        regions = _best(args.repeats, lambda: region_table(maps, masks, [str(i) for i in range(n)]))
        print(f"| {size} | {n} | {ablation:.2f} | {regions:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

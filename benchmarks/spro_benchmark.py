"""Time MVTec LOCO's sPRO as ``main.py test`` computes it beside the pixel metrics it computes anyway, on random
maps of a LOCO-size test split, on the CPU.

    .venv/bin/python benchmarks/spro_benchmark.py [--size 256] [--good 115] [--logical 112] [--structural 86]
                                                  [--rounds 3]

The default split is MVTec LOCO's mean object (575 good, 561 logical, 432 structural test images over 5 objects);
each anomalous image has one to three rectangular regions (about 400 in all; the archive has 1,246 region files
over its 5 objects), saturation areas half of each region. The two paths run in alternation (timing.alternate)
and each figure is its best round: ``metrics.pixel_metrics`` on all images (pixel AUROC and AUPRO, one sort)
and the sPRO of ``layout_metrics.spro_results`` (per anomaly type on its images plus the good ones, two
``metrics.spro`` calls).
Prints both times and their ratio, and checks sPRO against ``reference_metrics.spro_naive`` on a small subset.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "RD4AD-main"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import metrics  # noqa: E402
import reference_metrics  # noqa: E402
from timing import alternate  # noqa: E402


def split(size: int, good: int, logical: int, structural: int, seed: int = 0):  # noqa: ANN201
    """Random maps (N, S, S), merged masks, and per kind the regions (masks, image index, saturation)."""
    rng = np.random.default_rng(seed)
    n = good + logical + structural
    maps = torch.from_numpy(rng.random((n, size, size), dtype=np.float32))
    merged = torch.zeros(n, size, size, dtype=torch.bool)
    regions: dict[str, list[tuple[torch.Tensor, int, float]]] = {"logical": [], "structural": []}
    for index in range(good, n):
        kind = "logical" if index < good + logical else "structural"
        for _ in range(int(rng.integers(1, 4))):
            h, w = (int(v) for v in rng.integers(max(1, size // 32), max(2, size // 6), 2))
            y, x = int(rng.integers(0, size - h)), int(rng.integers(0, size - w))
            mask = torch.zeros(size, size, dtype=torch.bool)
            mask[y:y + h, x:x + w] = True
            maps[index][mask] += 0.3
            merged[index] |= mask
            regions[kind].append((mask, index, 0.5 * h * w))
    return maps, merged, regions


def kind_inputs(maps: torch.Tensor, good: int, items: list) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, list]:
    """One kind's sPRO inputs: the maps of the good images and of its own, its region masks, each region's index
    in those maps, and their saturations."""
    members = list(range(good)) + sorted({index for _, index, _ in items})
    position = {index: p for p, index in enumerate(members)}
    masks = torch.stack([mask for mask, _, _ in items])
    images = np.array([position[index] for _, index, _ in items])
    return maps[members], masks, images, [s for _, _, s in items]


def spro_per_kind(maps: torch.Tensor, good: int, regions: dict) -> dict[str, float]:
    """As layout_metrics.spro_results: each kind on its images plus the good ones."""
    return {kind: metrics.spro(*kind_inputs(maps, good, items)) for kind, items in regions.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--good", type=int, default=115)
    parser.add_argument("--logical", type=int, default=112)
    parser.add_argument("--structural", type=int, default=86)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    maps, merged, regions = split(args.size, args.good, args.logical, args.structural)
    n_regions = sum(map(len, regions.values()))
    small_maps, _, small_regions = split(16, 2, 2, 2, seed=1)
    for kind, value in spro_per_kind(small_maps, 2, small_regions).items():
        kind_maps, masks, images, saturations = kind_inputs(small_maps, 2, small_regions[kind])
        naive = reference_metrics.spro_naive(kind_maps.numpy(), masks.numpy(), images, saturations)
        assert abs(value - naive) < 1e-12, (kind, value, naive)
    paths = {"pixel_metrics": lambda: metrics.pixel_metrics(maps, merged),
             "spro": lambda: spro_per_kind(maps, args.good, regions)}
    measures = alternate(paths, args.rounds, warmup=1, work=maps.shape[0], device=torch.device("cpu"),
                         desc="pixel metrics vs sPRO")
    pixel, spro = measures["pixel_metrics"].best, measures["spro"].best
    print(f"{maps.shape[0]} test images at {args.size} px, {n_regions} regions, torch threads "
          f"{torch.get_num_threads()}, best of {args.rounds} alternating rounds:")
    print(f"pixel AUROC + AUPRO (metrics.pixel_metrics): {pixel:.2f} s")
    print(f"sPRO per anomaly type (two metrics.spro calls): {spro:.2f} s  ({spro / pixel:.2f}x the pixel metrics)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

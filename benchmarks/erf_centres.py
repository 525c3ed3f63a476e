"""Where the ERF rings are centred, and what it does to the radii: the receptive-field centre of each tap's centre
cell from the teacher's own layers (locality.tap_grids) against the patchify midpoint the rings used before.

    .venv/bin/python benchmarks/erf_centres.py [--backbones resnet50,convnext_tiny] [--size 512] [--images 2]

Random-weight teachers (torch seed 0) on Gaussian-noise images (seed 0): per tap, both centres and the r50 / r90
of the mean ERF around each; then a sigma-10 Gaussian blob at the image centre, measured the same two ways.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "RD4AD-main"))

import torch  # noqa: E402

from backbones import build_model, parse_backbones  # noqa: E402
from locality import centre_gradients, mass_radius, ring_profiles, tap_grids  # noqa: E402


def patchify_midpoint(cells: int, size: int) -> float:
    """The centre the rings used before: the middle of the patch of cell ``cells // 2`` if cells tiled the image."""
    return (cells // 2 + 0.5) * size / cells - 0.5


def radii(erf: torch.Tensor, centre: float) -> tuple[float, float]:
    profile = ring_profiles(erf[None], centre, centre)[0].numpy()
    return float(mass_radius(profile, 0.5)), float(mass_radius(profile, 0.9))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--backbones", default="resnet50,convnext_tiny")
    parser.add_argument("--size", type=int, default=512, help="image size (px)")
    parser.add_argument("--images", type=int, default=2, help="noise images the ERF is averaged over")
    args = parser.parse_args()
    size = args.size
    print("| backbone | tap | cells | patchify midpoint (px) | receptive-field centre (px) | r50 / r90 at the "
          "midpoint (px) | r50 / r90 at the centre (px) |\n|---|---|---|---|---|---|---|")
    for name in parse_backbones(args.backbones):
        torch.manual_seed(0)
        teacher = build_model(name, pretrained=False).teacher.eval()
        images = torch.randn(args.images, 3, size, size, generator=torch.Generator().manual_seed(0))
        features, erfs = centre_gradients(teacher, images)
        for tap, ((grid, _), feature, erf) in enumerate(zip(tap_grids(teacher, (size, size)), features, erfs)):
            cells = feature.shape[-2]
            old, new = patchify_midpoint(cells, size), grid.centre(cells)
            mean = erf.double().mean(0)
            print(f"| {name} | {tap + 1} | {cells} | {old:g} | {new:g} | {'%.1f / %.1f' % radii(mean, old)} | "
                  f"{'%.1f / %.1f' % radii(mean, new)} |")
    coordinates = torch.arange(size, dtype=torch.float64)
    line = torch.exp(-((coordinates - size / 2) ** 2) / (2 * 10.0 ** 2))
    blob = torch.outer(line, line)
    for label, centre in (("its own centre", size / 2), ("a ResNet tap-3 patchify midpoint", size / 2 + 7.5)):
        r50, r90 = radii(blob, centre)
        print(f"sigma-10 Gaussian at {size / 2:g} px, rings around {label} ({centre:g} px): "
              f"r50 {r50:.1f} px, r90 {r90:.1f} px")


if __name__ == "__main__":
    main()

"""metrics.aupimo against the official AUPIMO code (github.com/jpcbertoldo/aupimo, numpy path) on synthetic maps.

    .venv/bin/python benchmarks/aupimo_crosscheck.py --aupimo-src PATH/aupimo/src/aupimo [--thresholds 30000]

PATH is a checkout of the official repository (it is not a dependency of this project; nothing of it is copied
here). Its numpy modules are loaded without its package ``__init__`` (which needs torchmetrics), and its
``np.trapz`` is pointed to ``np.trapezoid`` where numpy 2 removed it. Three seeded sets of 12 maps of 64 px (6 normal,
6 with a disc-shaped defect of varying strength) are scored twice per set, with two FPR bands (the default band needs
1e5 normal pixels; these have 24,576):

- band (1e-3, 1e-2): its ends fall between FPR levels (k / 24,576), so the official code snaps each end to the
  nearest sampled FPR while this project interpolates at the end: the difference shows that snapping;
- band (25 / 24,576, 246 / 24,576): both ends on FPR levels, so what is left is the official code's threshold
  sampling (``--thresholds`` evenly spaced between the normal images' extreme scores) against the exact curve.

Prints the largest absolute per-image difference of each.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import types
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "RD4AD-main"))

import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

import metrics  # noqa: E402

NORMAL_PIXELS = 6 * 64 * 64


def official_module(source: Path) -> types.ModuleType:
    """The official ``pimo_numpy`` module from a checkout's ``src/aupimo`` folder."""
    if not (source / "pimo_numpy.py").is_file():
        raise SystemExit(f"{source}: no pimo_numpy.py; expected the src/aupimo folder of github.com/jpcbertoldo/aupimo")
    package = types.ModuleType("aupimo_official")
    package.__path__ = [str(source)]
    sys.modules["aupimo_official"] = package
    if not hasattr(np, "trapz"):
        np.trapz = np.trapezoid  # numpy 2 renamed it; the official code still calls the old name
    return importlib.import_module("aupimo_official.pimo_numpy")


def synthetic_set(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """12 smooth 64 px maps; images 6-11 hold a disc whose pixels score higher by a seeded amount."""
    rng = np.random.default_rng(seed)
    n, size = 12, 64
    maps = ndimage.gaussian_filter(rng.random((n, size, size)), (0, 3, 3)).astype(np.float32)
    masks = np.zeros((n, size, size), dtype=bool)
    rows, columns = np.ogrid[:size, :size]
    for index in range(6, n):
        centre_y, centre_x = rng.integers(10, 54, 2)
        radius = int(rng.integers(3, 9))
        masks[index] = (rows - centre_y) ** 2 + (columns - centre_x) ** 2 <= radius * radius
    boost = rng.random((n, 1, 1)) * 0.12 * masks * (0.5 + rng.random((n, size, size)))
    return (maps + boost).astype(np.float32), masks, masks.any(axis=(1, 2))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--aupimo-src", type=Path, required=True, help="the src/aupimo folder of a checkout")
    parser.add_argument("--thresholds", type=int, default=30000, help="the official code's number of thresholds")
    args = parser.parse_args()
    official = official_module(args.aupimo_src)
    bands = {"ends between FPR levels (1e-3, 1e-2)": (1e-3, 1e-2),
             "ends on FPR levels (25/24576, 246/24576)": (25 / NORMAL_PIXELS, 246 / NORMAL_PIXELS)}
    print(f"official code: {args.aupimo_src} ({args.thresholds} thresholds, python binclf); ours: exact curve")
    for name, band in bands.items():
        worst = 0.0
        for seed in range(3):
            maps, masks, labels = synthetic_set(seed)
            ours = metrics.aupimo(maps, masks, labels, band).per_image
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # its "fewer than 300 points" and "bound not exactly achieved"
                theirs = official.aupimo_scores(maps, masks.astype(int), num_threshs=args.thresholds,
                                                binclf_algorithm="python", fpr_bounds=band)[4]
            worst = max(worst, float(np.nanmax(np.abs(ours - theirs))))
        print(f"  band {name}: largest |ours - official| over 3 sets x 6 images = {worst:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

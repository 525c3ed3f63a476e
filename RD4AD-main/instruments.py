"""The per-run instruments of ``main.py test`` (the report's "Why" section): which scale of the anomaly map
detects, and how each ground-truth defect region is found.

Both work on what the test pass already holds, so they cost no second forward pass:

- **scale ablation** (``scales.csv``): the anomaly map is the Gaussian blur of the sum over the teacher's taps of
  their upsampled ``1 - cos`` maps (rd_model.anomaly_map). Each scale's map alone and the map without each
  scale get the same blur and the same metrics (image AUROC of the map maximum, pixel AUROC, AUPRO) as the
  full map, whose row is metrics.json's values.
- **regions** (``regions.csv``): every 8-connected component of a test mask, with its area, the highest
  value of the map inside it and its overlap averaged up to the AUPRO's FPR limit: the per-region PRO curve
  with the FPR of all the run's normal pixels, as in metrics.aupro. The mean of ``overlap_auc`` over the
  regions is the run's AUPRO exactly (the curve is linear in the regions), which the tests check.

Whether a region counts as detected is left to the report: it compares ``max_score`` with the run's current
validation threshold (metrics.json), so a changed ``--threshold-rule`` needs no new forward pass.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from scipy import ndimage
from torch import Tensor

import metrics
import runs
from rd_model import image_scores, sum_scales

__all__ = ["AUPRO_FPR_LIMIT", "missing_files", "overlap_auc", "region_table", "scale_ablation", "write_instruments"]

AUPRO_FPR_LIMIT = 0.3  # metrics.pixel_metrics' default: the standard MVTec limit

_STRUCTURE_8 = np.zeros((3, 3, 3), dtype=bool)  # 8-connectivity within each image of a (N, H, W) stack
_STRUCTURE_8[1] = True


def _variants(n_scales: int) -> list[tuple[str, str, int, list[int]]]:
    """(map name, kind, scale, the scales summed) of every ablated map: each scale alone, then each left out."""
    only = [(f"scale {k + 1} only", "only", k + 1, [k]) for k in range(n_scales)]
    without = [(f"without scale {k + 1}", "without", k + 1, [j for j in range(n_scales) if j != k])
               for k in range(n_scales)]
    return only + without


def scale_ablation(maps: Tensor, per_scale: list[Tensor], labels: np.ndarray, masks: Tensor | None,
                   blur: Callable[[Tensor], Tensor]) -> pd.DataFrame:
    """The metrics of the full map ``maps`` (N, H, W) and of each ablated map, one row each (``runs.SCALES_COLUMNS``).

    ``per_scale``: the unsmoothed (N, H, W) map of each scale, whose blurred sum is ``maps``; ``blur``: the
    model's blur; ``masks`` (N, H, W) on the maps' device, or None (pixel metrics NaN).
    """
    def measured(name: str, kind: str, scale: int, smoothed: Tensor) -> dict:
        row = {"map": name, "kind": kind, "scale": scale,
               "image_auroc": metrics.image_auroc(image_scores(smoothed).cpu(), labels),
               "pixel_auroc": float("nan"), "aupro": float("nan")}
        if masks is not None:
            row.update(metrics.pixel_metrics(smoothed, masks, AUPRO_FPR_LIMIT))
        return row

    rows = [measured("all scales", "all", 0, maps)]
    for name, kind, scale, kept in _variants(len(per_scale)):
        rows.append(measured(name, kind, scale, blur(sum_scales([per_scale[j] for j in kept]))))
    return pd.DataFrame(rows, columns=list(runs.SCALES_COLUMNS))


def overlap_auc(values: np.ndarray, normal_sorted: np.ndarray, fpr_limit: float = AUPRO_FPR_LIMIT) -> float:
    """A region's overlap averaged over FPR in [0, ``fpr_limit``]: the area under its PRO curve divided by the limit.

    ``values``: the map at the region's pixels; ``normal_sorted``: every normal pixel's value, ascending. On the
    exact curve (metrics.pro_curve: trapezoids between the points of distinct scores) a pixel of value x is
    counted from FPR a = #(normals > x) / n and fully from b = #(normals >= x) / n, linearly in between (a tie
    with normal pixels), so its share of the area is the integral of that ramp up to the limit.
    """
    n = normal_sorted.size
    x = np.asarray(values, dtype=normal_sorted.dtype)
    a = (n - np.searchsorted(normal_sorted, x, side="right")) / n
    b = (n - np.searchsorted(normal_sorted, x, side="left")) / n
    width = b - a
    with np.errstate(divide="ignore", invalid="ignore"):
        inside = np.where(width > 0, (fpr_limit - a) ** 2 / (2.0 * width), 0.0)
    area = np.where(fpr_limit >= b, fpr_limit - b + width / 2.0, np.where(fpr_limit <= a, 0.0, inside))
    return float(area.mean() / fpr_limit)


def region_table(maps: Tensor | np.ndarray, masks: Tensor | np.ndarray, paths: list[str],
                 fpr_limit: float = AUPRO_FPR_LIMIT) -> pd.DataFrame:
    """One row per 8-connected ground-truth region of the (N, H, W) masks (``runs.REGIONS_COLUMNS``): its image, its
    number within the image (scipy.ndimage.label's order), area in pixels and as a fraction of the image, the
    map's maximum inside it and ``overlap_auc`` against the normal pixels of all N images."""
    maps_np = (maps.detach().float().cpu().numpy() if isinstance(maps, Tensor) else np.asarray(maps, np.float32))
    masks_np = (masks.cpu().numpy() if isinstance(masks, Tensor) else np.asarray(masks)) != 0
    if maps_np.shape != masks_np.shape or maps_np.ndim != 3 or len(paths) != maps_np.shape[0]:
        raise ValueError(f"maps {maps_np.shape}, masks {masks_np.shape} and {len(paths)} paths: expected (N, H, W) "
                         "maps and masks of the same shape and one path per image")
    labelled, n_regions = ndimage.label(masks_np, structure=_STRUCTURE_8)
    if n_regions == 0 or masks_np.all():
        return pd.DataFrame(columns=list(runs.REGIONS_COLUMNS))
    normal_sorted = np.sort(maps_np[~masks_np])
    boxes = ndimage.find_objects(labelled)
    image_of = np.array([box[0].start for box in boxes])
    region_pixels = labelled[masks_np]
    area = np.bincount(region_pixels, minlength=n_regions + 1)[1:]
    order = np.argsort(region_pixels, kind="stable")
    starts = np.r_[0, np.cumsum(area)]
    values = maps_np[masks_np][order]  # grouped by region
    peak = np.maximum.reduceat(values, starts[:-1])
    overlaps = [overlap_auc(values[starts[r]:starts[r + 1]], normal_sorted, fpr_limit) for r in range(n_regions)]
    number = np.zeros(n_regions, dtype=int)  # 1, 2, ... within each image, in label order
    for image in np.unique(image_of):
        members = np.flatnonzero(image_of == image)
        number[members] = np.arange(1, members.size + 1)
    pixels_per_image = masks_np.shape[1] * masks_np.shape[2]
    return pd.DataFrame({"path": [paths[i] for i in image_of], "region": number, "area_px": area,
                         "area_fraction": area / pixels_per_image, "max_score": np.asarray(peak, dtype=float),
                         "overlap_auc": overlaps}, columns=list(runs.REGIONS_COLUMNS))


def write_instruments(run_directory: Path, maps: Tensor, per_scale: list[Tensor] | None, labels: np.ndarray,
                      masks: Tensor | None, paths: list[str], blur: Callable[[Tensor], Tensor]) -> None:
    """Write scales.csv (when ``per_scale`` is given) and regions.csv (when there are masks) into the run."""
    if per_scale is not None:
        table = scale_ablation(maps, per_scale, labels, masks, blur)
        runs.write_csv(run_directory / runs.SCALES_FILE, runs.SCALES_COLUMNS, table.itertuples(index=False))
    if masks is not None:
        table = region_table(maps, masks, paths)
        runs.write_csv(run_directory / runs.REGIONS_FILE, runs.REGIONS_COLUMNS, table.itertuples(index=False))


def missing_files(run_directory: Path, scale_ablation_on: bool, masks_available: bool) -> bool:
    """Whether an evaluated run lacks an instrument file that ``main.py test`` would now write."""
    return ((scale_ablation_on and not (run_directory / runs.SCALES_FILE).is_file())
            or (masks_available and not (run_directory / runs.REGIONS_FILE).is_file()))

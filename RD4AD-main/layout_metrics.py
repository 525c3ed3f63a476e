"""What ``main.py test`` adds to metrics.json for the MVTec AD 2 and MVTec LOCO AD layouts
(docs/reproduction.md#10-mvtec-ad-2-and-mvtec-loco-ad): MVTec LOCO's sPRO per anomaly type where the data set's
``defects_config.json`` gives saturation thresholds, and the test sets without labels that ``test`` leaves to
``predict`` (MVTec AD 2's private ones). Other layouts get nothing here: their metrics.json is unchanged.

sPRO is computed at the run's size, as every pixel metric here: each region's mask is resized from its PNG
(a region that vanishes there is not scored and is counted in ``spro_regions_lost``), and an absolute saturation
threshold, a number of source pixels, is scaled by the ratio of the areas (working size² / source H·W).
As the LOCO evaluation code does, each anomaly type is scored on its own images plus the good ones (the false
positives of both count), and ``spro`` is the mean over the types.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

import metrics
from dataset import GOOD, AnomalyDataset
from defects_config import DEFECTS_CONFIG_FILE, saturation_area
from errors import DataError

__all__ = ["layout_results", "saturated_regions", "spro_results", "unscored_splits"]


def layout_results(maps: torch.Tensor, test_set: AnomalyDataset) -> dict[str, Any]:
    """The layout's additions to metrics.json (none for MVTec AD, VisA and split files)."""
    result: dict[str, Any] = {}
    if test_set.data_format == "mvtec_loco":
        result.update(spro_results(maps, test_set))
    result.update(unscored_splits(test_set))
    return result


def unscored_splits(test_set: AnomalyDataset) -> dict[str, Any]:
    """The test sets without labels and their image counts, which ``test`` does not pretend to score."""
    if not test_set.unlabelled_splits:
        return {}
    counts = {name: len(images) for name, images in test_set.unlabelled_splits.items()}
    first = next(iter(counts))
    return {"unscored_splits": counts,
            "unscored_note": (f"no labels here (MVTec's evaluation server holds them): `main.py test` scores "
                              f"{test_set.folder.name}/test_public only; `main.py predict --run-dir RUN --split "
                              f"{first}` writes these images' scores and maps")}


def saturated_regions(test_set: AnomalyDataset, indices: list[int]
                      ) -> tuple[torch.Tensor, np.ndarray, np.ndarray, list[str]]:
    """The regions of the items ``indices``: masks uint8 (R, S, S), the position in ``indices`` of each region's
    image, each region's saturation area at the working size, and the files of the regions lost at that size."""
    config = test_set.defects_config
    masks, images, saturations, lost = [], [], [], []
    for position, index in enumerate(indices):
        for region in test_set.regions(index):
            spec = config.get(region.pixel_value)
            if spec is None:
                raise DataError(f"{region.path}: pixel value {region.pixel_value} is not a defect type of "
                                f"{test_set.folder / DEFECTS_CONFIG_FILE} (its pixel values: "
                                f"{', '.join(map(str, sorted(config)))})")
            area = int(region.mask.sum())
            if area == 0:
                lost.append(region.path)
                continue
            masks.append(region.mask)
            images.append(position)
            saturations.append(saturation_area(spec, area, region.scale))
    size = test_set.image_size
    stacked = torch.stack(masks) if masks else torch.zeros((0, size, size), dtype=torch.uint8)
    return stacked, np.asarray(images, dtype=np.int64), np.asarray(saturations, dtype=np.float64), lost


def spro_results(maps: torch.Tensor, test_set: AnomalyDataset,
                 fpr_limit: float = metrics.SPRO_FPR_LIMIT) -> dict[str, Any]:
    """sPRO per anomaly type (its images and the good ones) and their mean, for metrics.json."""
    if test_set.defects_config is None or not test_set.has_masks:
        missing = f"no {DEFECTS_CONFIG_FILE}" if test_set.defects_config is None else "no ground_truth/ masks"
        return {"spro": None, "spro_by_type": None,
                "spro_note": f"not available: {test_set.folder.name} has {missing} (saturation thresholds and regions)"}
    good = [i for i, kind in enumerate(test_set.defect_types) if kind == GOOD]
    by_type: dict[str, float | None] = {}
    n_regions, lost = 0, []
    for kind in sorted(set(test_set.defect_types) - {GOOD}):
        members = good + [i for i, other in enumerate(test_set.defect_types) if other == kind]
        masks, images, saturations, kind_lost = saturated_regions(test_set, members)
        n_regions, lost = n_regions + len(images), lost + kind_lost
        selected = maps[torch.as_tensor(members, device=maps.device)]
        by_type[kind] = metrics.spro(selected, masks, images, saturations, fpr_limit) if len(images) else None
    scored = [value for value in by_type.values() if value is not None]
    return {
        "spro": float(np.mean(scored)) if scored else None,
        "spro_by_type": by_type,
        "spro_fpr_limit": fpr_limit,
        "spro_regions": n_regions,
        "spro_regions_lost": len(lost),
        "spro_note": (f"MVTec LOCO sPRO at {test_set.image_size} px, integrated to FPR {fpr_limit} and divided by it, "
                      f"per anomaly type (its images plus the good ones), 'spro' their mean; "
                      f"{len(lost)} region(s) vanish at this size and are not scored"
                      + (f" (first: {Path(lost[0]).as_posix()})" if lost else "")),
    }

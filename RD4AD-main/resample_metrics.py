"""Bootstrap replicates of the low-false-alarm metrics that are sums over images: SegF1 (pixel F1 at the run's
threshold) and a per-image metric's mean (AUPIMO). As in significance.py, a replicate is a row of image
multiplicities and each metric a weighted sum of per-image statistics, so a resample costs a matrix product."""
from __future__ import annotations

import numpy as np

__all__ = ["mean_replicates", "seg_f1_counts", "seg_f1_replicates"]


def seg_f1_counts(maps: np.ndarray, masks: np.ndarray, threshold: float) -> np.ndarray:
    """(N, 3) per image: true positives, false positives and false negatives of the pixels flagged when their map
    value > ``threshold`` (metrics.localisation_metrics' SegF1 rule), compared in float64."""
    maps = np.asarray(maps)
    defect = np.asarray(masks) != 0
    if maps.ndim != 3 or defect.shape != maps.shape:
        raise ValueError(f"maps and masks must be (N, H, W) of one shape, got {maps.shape} and {defect.shape}")
    flagged = maps.astype(np.float64) > float(threshold)
    flat = lambda array: array.reshape(len(array), -1).sum(axis=1)  # noqa: E731
    return np.stack([flat(flagged & defect), flat(flagged & ~defect), flat(~flagged & defect)], axis=1).astype(
        np.float64)


def seg_f1_replicates(counts: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """SegF1 = 2 TP / (2 TP + FP + FN) of each resample (row of ``weights``) from seg_f1_counts; NaN where a
    resample has neither a defect pixel nor a flagged one."""
    tp, fp, fn = (np.atleast_2d(weights) @ np.asarray(counts, dtype=np.float64)).T
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)


def mean_replicates(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The weighted mean of per-image ``values`` (finite) under each resample's multiplicities; NaN where a
    resample drew none of these images."""
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    total = weights.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, (weights @ np.asarray(values, dtype=np.float64)) / total, np.nan)

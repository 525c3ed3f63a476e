"""Straightforward metric implementations: naive on purpose; used by tests and benchmarks only.

They follow the definitions of docs/reproduction.md#4-metrics literally (Python lists for scikit-learn, a Python
loop over thresholds and regions for AUPRO, an explicit pairwise kernel for DeLong) so that the fast,
vectorised functions of ``metrics.py`` can be checked against them and timed against them.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from sklearn.metrics import roc_auc_score

__all__ = ["aupimo_naive", "aupro_naive", "delong_naive", "f1_max_naive", "image_auroc_naive", "integrate_naive",
           "pixel_auroc_naive", "pro_curve_naive", "seg_f1_naive", "spro_curve_naive", "spro_naive"]


def image_auroc_naive(scores: np.ndarray, labels: np.ndarray) -> float:
    """scikit-learn ROC AUC on Python lists."""
    return float(roc_auc_score(np.asarray(labels).astype(int).tolist(), np.asarray(scores, dtype=float).tolist()))


def pixel_auroc_naive(maps: np.ndarray, masks: np.ndarray) -> float:
    """scikit-learn ROC AUC on Python lists of every pixel of every image."""
    return image_auroc_naive(np.asarray(maps).ravel(), np.asarray(masks).ravel())


def _region_scores(maps: np.ndarray, masks: np.ndarray) -> list[np.ndarray]:
    """Scores of each 8-connected defect region, labelled image by image."""
    regions = []
    for image_map, image_mask in zip(maps, masks):
        labelled, count = ndimage.label(image_mask, structure=np.ones((3, 3), dtype=int))
        regions.extend(image_map[labelled == r] for r in range(1, count + 1))
    return regions


def pro_curve_naive(
    maps: np.ndarray, masks: np.ndarray, thresholds: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, PRO) from (0, 0) over descending thresholds (default: every distinct score), ``score >= t``.

    For each threshold, one pass over all pixels for the false positives and a loop over the regions.
    """
    maps = np.asarray(maps, dtype=np.float64)
    masks = np.asarray(masks).astype(bool)
    normal = ~masks
    n_normal = int(normal.sum())
    regions = _region_scores(maps, masks)
    if thresholds is None:
        thresholds = np.unique(maps)[::-1]
    fprs, pros = [0.0], [0.0]
    for t in thresholds:
        flagged = maps >= t
        fprs.append(float((flagged & normal).sum()) / n_normal)
        pros.append(float(np.mean([(region >= t).mean() for region in regions])))
    return np.array(fprs), np.array(pros)


def integrate_naive(fpr: np.ndarray, pro: np.ndarray, fpr_limit: float) -> float:
    """Trapezoid segment by segment up to ``fpr_limit``, the last one cut at an interpolated point."""
    area = 0.0
    for i in range(1, len(fpr)):
        x0, y0, x1, y1 = fpr[i - 1], pro[i - 1], fpr[i], pro[i]
        if x1 > fpr_limit:
            if x0 < fpr_limit:
                y_limit = y0 + (fpr_limit - x0) * (y1 - y0) / (x1 - x0)
                area += (fpr_limit - x0) * (y0 + y_limit) / 2.0
            break
        area += (x1 - x0) * (y0 + y1) / 2.0
    return area / fpr_limit


def aupro_naive(
    maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3, n_thresholds: int | None = None
) -> float:
    """AUPRO from the definition: every distinct score as a threshold, or ``n_thresholds`` evenly spaced
    between the largest and the smallest score (the benchmark's naive path)."""
    maps = np.asarray(maps, dtype=np.float64)
    thresholds = None if n_thresholds is None else np.linspace(maps.max(), maps.min(), n_thresholds)
    fpr, pro = pro_curve_naive(maps, masks, thresholds)
    return integrate_naive(fpr, pro, fpr_limit)


def f1_max_naive(scores: np.ndarray, labels: np.ndarray) -> float:
    """Best F1 over ``score > t`` for t in every score and -inf, counted with a loop."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    best = 0.0
    for t in [-math.inf, *np.unique(scores)]:
        flagged = scores > t
        tp = int((flagged & labels).sum())
        fp = int((flagged & ~labels).sum())
        fn = int((~flagged & labels).sum())
        if tp:
            best = max(best, 2 * tp / (2 * tp + fp + fn))
    return best


def delong_naive(scores_a: np.ndarray, scores_b: np.ndarray, labels: np.ndarray) -> tuple[float, float, float]:
    """(AUC a, AUC b, variance of the difference) from DeLong et al. (1988) with the explicit m x n kernel."""
    labels = np.asarray(labels).astype(bool)
    components = []
    for scores in (np.asarray(scores_a, dtype=float), np.asarray(scores_b, dtype=float)):
        pos, neg = scores[labels], scores[~labels]
        kernel = np.array([[1.0 if x > y else 0.5 if x == y else 0.0 for y in neg] for x in pos])
        components.append((kernel.mean(), kernel.mean(axis=1), kernel.mean(axis=0)))
    (auc_a, v10_a, v01_a), (auc_b, v10_b, v01_b) = components
    s10 = np.cov(np.vstack([v10_a, v10_b]))
    s01 = np.cov(np.vstack([v01_a, v01_b]))
    cov = s10 / len(v10_a) + s01 / len(v01_a)
    return float(auc_a), float(auc_b), float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])


def spro_curve_naive(maps: np.ndarray, region_masks: np.ndarray, region_images: np.ndarray,
                     saturations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, sPRO) from (0, 0) over every distinct score, descending, ``score >= t`` (MVTec LOCO's definition).

    For each threshold: FPR over the pixels outside every region of every map; sPRO as the mean over the regions
    of min(flagged pixels of the region / its saturation, 1), with a loop over the regions.
    """
    maps = np.asarray(maps, dtype=np.float64)
    region_masks = np.asarray(region_masks).astype(bool)
    normal = np.ones(maps.shape, dtype=bool)
    for mask, image in zip(region_masks, region_images):
        normal[image] &= ~mask
    fprs, spros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        flagged = maps >= t
        fprs.append(float((flagged & normal).sum()) / float(normal.sum()))
        overlaps = [min((flagged[image] & mask).sum() / saturation, 1.0)
                    for mask, image, saturation in zip(region_masks, region_images, saturations)]
        spros.append(float(np.mean(overlaps)))
    return np.array(fprs), np.array(spros)


def spro_naive(maps: np.ndarray, region_masks: np.ndarray, region_images: np.ndarray, saturations: np.ndarray,
               fpr_limit: float = 0.05) -> float:
    """Area under the sPRO curve up to ``fpr_limit``, divided by it (segment by segment)."""
    fpr, spro = spro_curve_naive(maps, region_masks, region_images, saturations)
    return integrate_naive(fpr, spro, fpr_limit)


def aupimo_naive(maps: np.ndarray, masks: np.ndarray, labels: np.ndarray,
                 fpr_band: tuple[float, float] = (1e-5, 1e-4)) -> np.ndarray:
    """Per-image AUPIMO from the definition, one value per image (NaN for normal images and images without a defect
    pixel; NaN for all when no threshold gives a positive FPR at or below the band's low end).

    Every distinct score is a threshold (``score >= t``); FPR(t) is the fraction of the normal images' pixels
    flagged, TPR(t) the fraction of the image's defect pixels. The curve (log FPR, TPR) over the thresholds with a
    positive FPR is integrated segment by segment, each cut to the band with its ends interpolated linearly, and
    divided by log(high / low).
    """
    maps = np.asarray(maps, dtype=np.float64)
    masks = np.asarray(masks).astype(bool)
    labels = np.asarray(labels).astype(bool)
    low, high = fpr_band
    normal_pixels = maps[~labels].ravel()
    thresholds = np.unique(maps)[::-1]
    fpr = np.array([(normal_pixels >= t).sum() / normal_pixels.size for t in thresholds])
    out = np.full(len(maps), np.nan)
    positive = fpr > 0
    if fpr[positive].min() > low:
        return out
    x = np.log(fpr[positive])
    for i in np.flatnonzero(labels):
        defect = maps[i][masks[i]]
        if defect.size == 0:
            continue
        tpr = [(defect >= t).sum() / defect.size for t in thresholds[positive]]
        area = 0.0
        for j in range(1, len(x)):
            x0, x1, y0, y1 = x[j - 1], x[j], tpr[j - 1], tpr[j]
            a, b = max(x0, math.log(low)), min(x1, math.log(high))
            if b > a:
                y_a = y0 + (a - x0) * (y1 - y0) / (x1 - x0)
                y_b = y0 + (b - x0) * (y1 - y0) / (x1 - x0)
                area += (b - a) * (y_a + y_b) / 2.0
        out[i] = min(max(area / math.log(high / low), 0.0), 1.0)
    return out


def seg_f1_naive(maps: np.ndarray, masks: np.ndarray, threshold: float) -> float:
    """Pixel F1 over every pixel of every image, flagging ``score > threshold``, counted in float64."""
    flagged = np.asarray(maps, dtype=np.float64) > threshold
    masks = np.asarray(masks).astype(bool)
    tp = int((flagged & masks).sum())
    fp = int((flagged & ~masks).sum())
    fn = int((~flagged & masks).sum())
    return 2 * tp / (2 * tp + fp + fn)

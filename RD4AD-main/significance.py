"""Is a difference between two models real? Paired tests on the same test images, resampling
replicates of the paired metrics, tests over categories, and the multiple-comparison correction.

- ``delong_test``: DeLong, DeLong & Clarke-Pearson (1988) test of two correlated AUROCs, with the
  fast midrank structural components of Sun & Xu (2014); checked against pROC's published example.
- ``paired_bootstrap_auroc_diff``: percentile interval of AUROC(a) - AUROC(b), resampling images in
  pairs, stratified by class.
- Resampling replicates (``multiplicities``, ``stratified_multiplicities``, ``auroc_replicates``,
  ``PixelStats`` / ``pixel_stats`` / ``pixel_replicates`` / ``aupro_replicates``): a bootstrap replicate is a
  vector of image multiplicities, and every metric of a replicate is a weighted sum over per-image statistics (matrix
  products), never a re-sort of the pixels. Pixel AUROC and AUPRO use per-image histograms of the
  normal pixels, the defect pixels and the per-region overlaps on one grid of cells per run (see
  ``pixel_stats``): exact when every distinct normal score is a cell edge, otherwise the curve is
  sampled at up to ``MAX_EDGES`` thresholds (the error is measured, not assumed: ``binned_metrics``).
- ``bootstrap_p_value``: two-sided p from a bootstrap standard error (normal approximation).
- ``signed_rank_test``: Wilcoxon's signed-rank test, exact over mid-ranks (ties) with zero differences left out,
  enumerated by dynamic programming over doubled ranks up to EXACT_SIGNED_RANK non-zero values, Monte Carlo beyond;
  with the smallest p the same method can give.
- ``holm``: Holm-Bonferroni adjusted p-values (family-wise error control), for a study's primary questions.
- ``benjamini_hochberg``: Benjamini-Hochberg adjusted p-values (false-discovery rate), for exploratory tables.

Scores follow metrics.py's conventions (label 1 = anomalous, higher score = more anomalous).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import zlib

import numpy as np
import pandas as pd
import torch
from scipy import ndimage, stats

from metrics import ArrayLike, as_binary, as_score_vector, require_both_classes

__all__ = ["BOOT_SEED", "BootstrapResult", "DeLongResult", "EXACT_SIGNED_RANK", "MAX_EDGES", "PixelStats",
           "SignedRankResult", "aupro_replicates", "auroc_replicates", "benjamini_hochberg", "binned_metrics",
           "bootstrap_p_value", "delong_covariance", "delong_test", "holm", "multiplicities",
           "paired_bootstrap_auroc_diff", "percentile_interval", "pixel_replicates", "pixel_stats", "seeded_rng",
           "signed_rank_test", "stratified_multiplicities"]


@dataclass(frozen=True)
class DeLongResult:
    """DeLong test of AUC(a) - AUC(b); ``variance`` is that of the difference, p-value two-sided."""

    auc_a: float
    auc_b: float
    difference: float
    variance: float
    z: float
    p_value: float


@dataclass(frozen=True)
class BootstrapResult:
    """Paired stratified bootstrap of AUC(a) - AUC(b): observed difference and percentile interval."""

    difference: float
    low: float
    high: float
    n_boot: int
    confidence: float


def _paired_scores(scores: Sequence[ArrayLike], labels: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    """(K, N) float64 scores of K models on the same N images and their bool labels."""
    rows = [as_score_vector(s) for s in scores]
    y = as_binary(labels, "labels").to("cpu").reshape(-1)
    for row in rows:
        if row.numel() != y.numel():
            raise ValueError(f"scores and labels differ in length: {row.numel()} vs {y.numel()}")
    require_both_classes(y)
    return torch.stack(rows), y


def delong_covariance(scores: Sequence[ArrayLike], labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """AUCs of K models on the same images and their DeLong (1988) covariance matrix (K, K).

    Structural components from midrank placements (Sun & Xu 2014): V10 per anomalous image = share of
    normals below it (ties 1/2), V01 per normal image = share of anomalous above it; cov = S10/m + S01/n.
    """
    s, y = _paired_scores(scores, labels)
    pos, neg = s[:, y], s[:, ~y]
    m, n = pos.shape[1], neg.shape[1]
    if m < 2 or n < 2:
        raise ValueError(f"DeLong needs at least 2 anomalous and 2 normal images, got {m} and {n}")
    neg_sorted, pos_sorted = torch.sort(neg, dim=1).values, torch.sort(pos, dim=1).values
    twice_below = torch.searchsorted(neg_sorted, pos, side="left") + torch.searchsorted(neg_sorted, pos, side="right")
    twice_above = 2 * m - torch.searchsorted(pos_sorted, neg, side="left") - torch.searchsorted(pos_sorted, neg, side="right")
    v10 = twice_below.double() / (2.0 * n)
    v01 = twice_above.double() / (2.0 * m)
    covariance = np.atleast_2d(np.cov(v10.numpy())) / m + np.atleast_2d(np.cov(v01.numpy())) / n
    return v10.mean(dim=1).numpy(), covariance


def delong_test(scores_a: ArrayLike, scores_b: ArrayLike, labels: ArrayLike) -> DeLongResult:
    """DeLong's test for two correlated AUCs (same images): z = diff / sd, two-sided normal p-value.

    A zero variance gives z = 0, p = 1 when the AUCs are equal (e.g. identical scores), else p = 0.
    """
    aucs, cov = delong_covariance([scores_a, scores_b], labels)
    difference = float(aucs[0] - aucs[1])
    variance = max(float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1]), 0.0)
    if variance == 0.0:
        z = 0.0 if difference == 0.0 else math.copysign(math.inf, difference)
    else:
        z = difference / math.sqrt(variance)
    p_value = math.erfc(abs(z) / math.sqrt(2.0))
    return DeLongResult(float(aucs[0]), float(aucs[1]), difference, variance, z, p_value)


def paired_bootstrap_auroc_diff(
    scores_a: ArrayLike,
    scores_b: ArrayLike,
    labels: ArrayLike,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> BootstrapResult:
    """Percentile CI of AUC(a) - AUC(b) by resampling images in pairs, stratified (class counts kept).

    Vectorised over resamples: with the (m, n) matrix D of pairwise kernel differences and the
    resample's multiplicities c_pos, c_neg, the resampled difference is c_pos' D c_neg / (m n).
    Deterministic for a given seed.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    s, y = _paired_scores([scores_a, scores_b], labels)
    pos, neg = s[:, y].numpy(), s[:, ~y].numpy()
    m, n = pos.shape[1], neg.shape[1]
    kernel = (pos[:, :, None] > neg[:, None, :]) + 0.5 * (pos[:, :, None] == neg[:, None, :])
    kernel_diff = kernel[0] - kernel[1]  # (m, n)
    difference = float(kernel_diff.mean())

    rng = np.random.default_rng(seed)

    def multiplicities(size: int) -> np.ndarray:
        draws = rng.integers(0, size, size=(n_boot, size)) + size * np.arange(n_boot)[:, None]
        return np.bincount(draws.ravel(), minlength=n_boot * size).reshape(n_boot, size).astype(np.float64)

    c_pos, c_neg = multiplicities(m), multiplicities(n)
    diffs = np.einsum("bi,ij,bj->b", c_pos, kernel_diff, c_neg, optimize=True) / (m * n)
    alpha = 1.0 - confidence
    low, high = np.quantile(diffs, [alpha / 2.0, 1.0 - alpha / 2.0])
    return BootstrapResult(difference, float(low), float(high), int(n_boot), float(confidence))


def holm(p_values: pd.Series) -> pd.Series:
    """Holm-Bonferroni adjusted p-values (family-wise error control); NaN stays NaN."""
    valid = p_values.dropna().sort_values(kind="stable")
    count = len(valid)
    scaled = [min(1.0, (count - rank) * p) for rank, p in enumerate(valid)]
    adjusted = pd.Series(np.maximum.accumulate(scaled) if count else [], index=valid.index, dtype=float)
    return adjusted.reindex(p_values.index)


def benjamini_hochberg(p_values: pd.Series) -> pd.Series:
    """Benjamini-Hochberg adjusted p-values (false-discovery-rate control under independence or positive
    dependence); NaN stays NaN. Adjusted p_(i) = min over j >= i of m p_(j) / j, capped at 1."""
    valid = p_values.dropna().sort_values(kind="stable")
    count = len(valid)
    scaled = valid.to_numpy(dtype=float) * count / np.arange(1, count + 1)
    adjusted = np.minimum(1.0, np.minimum.accumulate(scaled[::-1])[::-1]) if count else np.array([])
    return pd.Series(adjusted, index=valid.index, dtype=float).reindex(p_values.index)


# ----------------------------------------------------------------------------------------------------
# resampling replicates: multiplicities, and metrics as weighted sums of per-image statistics
# ----------------------------------------------------------------------------------------------------
BOOT_SEED = 0  # the seed under every resampling draw of the report


def seeded_rng(*parts: object) -> np.random.Generator:
    """A generator seeded from the parts' text: the same draws in every process, report and order of work."""
    return np.random.default_rng([BOOT_SEED, zlib.crc32("/".join(map(str, parts)).encode())])


def multiplicities(size: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, size) float64: how often each of ``size`` items is drawn in each of ``n_boot`` resamples of ``size``."""
    if size < 1 or n_boot < 1:
        raise ValueError(f"need at least one item and one resample, got {size} and {n_boot}")
    draws = rng.integers(0, size, size=(n_boot, size)) + size * np.arange(n_boot)[:, None]
    return np.bincount(draws.ravel(), minlength=n_boot * size).reshape(n_boot, size).astype(np.float64)


def stratified_multiplicities(labels: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, N) image multiplicities that redraw normal images among the normal ones and defective among the
    defective ones, so every resample keeps the class counts (an AUROC stays defined)."""
    labels = np.asarray(labels).astype(bool)
    weights = np.zeros((n_boot, labels.size))
    for members in (np.flatnonzero(~labels), np.flatnonzero(labels)):
        if members.size:
            weights[:, members] = multiplicities(members.size, n_boot, rng)
    return weights


def auroc_replicates(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC (ties 1/2) of each resample: row r counts image i ``weights[r, i]`` times; a bilinear form
    c_pos' K c_neg over the (defective x normal) kernel K, so no replicate sorts anything."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    positive, negative = scores[labels], scores[~labels]
    kernel = (positive[:, None] > negative[None, :]) + 0.5 * (positive[:, None] == negative[None, :])
    w_pos, w_neg = weights[:, labels], weights[:, ~labels]
    return ((w_pos @ kernel) * w_neg).sum(axis=1) / (w_pos.sum(axis=1) * w_neg.sum(axis=1))


# Thresholds of the pixel curve per run (cells: two per edge plus one below the lowest). 512 keeps the binned pixel
# AUROC and AUPRO within ~1e-5 of the exact ones (FPR steps of 1.2e-3 in the AUPRO range; the report prints the
# largest difference it measures) while a replicate stays a small matrix product.
MAX_EDGES = 512
FINE_FPR = 0.45  # the false-positive rates up to here (the AUPRO range and a margin) get FINE_SHARE of the edges
FINE_SHARE = 0.75
CURVE_MARGIN = 1.5  # a replicate's AUPRO sums the cells down to this multiple of the limit (full-sample FPR)


@dataclass(frozen=True)
class PixelStats:
    """One run's pixels as per-image histograms on a grid of cells (ascending scores).

    Cell 0 holds scores below the lowest edge, cell 2k+1 scores equal to edge k, cell 2k+2 scores
    strictly between edges k and k+1 (the last one: above the highest edge). Edges are normal-pixel
    scores, so thresholds at an edge or just above it are points of the exact PRO curve.
    """

    edges: np.ndarray  # (B,) ascending normal-pixel scores used as thresholds
    normal: np.ndarray  # (N, 2B+1) normal pixels of each image per cell
    defect: np.ndarray  # (N, 2B+1) defect pixels of each image per cell
    overlap: np.ndarray  # (N, 2B+1) per image: sum over its regions of (region pixels in the cell) / region size
    regions: np.ndarray  # (N,) 8-connected defect regions per image
    exact: bool  # every distinct normal score is an edge: the metrics equal metrics.py's exactly

    @property
    def n_cells(self) -> int:
        return self.normal.shape[1]


def _distinct_counts(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values (ascending) and their counts."""
    return np.unique(values.astype(np.float64, copy=False), return_counts=True)


def _normal_distinct_counts(maps: np.ndarray, defect_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct normal-pixel scores and their counts; for float16 maps, the histogram of every pixel's bit pattern
    minus the defect pixels' (no copy of the normal pixels)."""
    if maps.dtype != np.float16:
        return _distinct_counts(maps[~defect_mask])
    counts = np.bincount(maps.view(np.uint16).ravel(), minlength=1 << 16)
    counts -= np.bincount(maps[defect_mask].view(np.uint16), minlength=1 << 16)
    codes = np.flatnonzero(counts)
    distinct, inverse = np.unique(codes.astype(np.uint16).view(np.float16).astype(np.float64), return_inverse=True)
    return distinct, np.bincount(inverse, weights=counts[codes]).astype(np.int64)


def _choose_edges(distinct: np.ndarray, counts: np.ndarray, max_edges: int) -> np.ndarray:
    """Every distinct normal score when there are at most ``max_edges``, else scores at evenly spaced false-positive
    rates: FINE_SHARE of them up to FINE_FPR (the AUPRO range), the rest above, always the lowest and highest."""
    if distinct.size <= max_edges:
        return distinct
    at_or_above = np.cumsum(counts[::-1])[::-1] / counts.sum()  # FPR of a threshold at each distinct value
    n_fine = int(max_edges * FINE_SHARE)
    levels = np.r_[np.linspace(0.0, FINE_FPR, n_fine, endpoint=False), np.linspace(FINE_FPR, 1.0, max_edges - n_fine)]
    # the highest distinct value whose FPR reaches each level (FPR decreases along the ascending values)
    index = np.searchsorted(-at_or_above, -levels, side="right") - 1
    chosen = np.unique(np.r_[0, np.clip(index, 0, distinct.size - 1), distinct.size - 1])
    return distinct[chosen]


def _cells(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Cell of each value (see PixelStats); float16 maps through a lookup table over the 65,536 bit patterns."""
    def cell_of(v: np.ndarray) -> np.ndarray:
        above = np.searchsorted(edges, v, side="right")  # edges <= v
        equal = (above > 0) & (v == edges[np.maximum(above - 1, 0)])
        return np.where(above == 0, 0, 2 * above - equal).astype(np.int32)

    if values.dtype == np.float16:
        table = cell_of(np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float64))
        return table[values.view(np.uint16)]
    return cell_of(values.astype(np.float64, copy=False))


_STRUCTURE_8 = np.zeros((3, 3, 3), dtype=bool)
_STRUCTURE_8[1] = True  # 8-connected within an image, never across images (as metrics.py)


def pixel_stats(maps: np.ndarray, masks: np.ndarray, max_edges: int = MAX_EDGES) -> PixelStats:
    """The per-image sufficient statistics of pixel AUROC and AUPRO for one run's (N, H, W) maps and masks.

    Cost: one histogram of the normal scores, one cell look-up per pixel, one region labelling; after
    that a resample's metrics are matrix products over image multiplicities (``pixel_replicates``).
    """
    maps = np.asarray(maps)
    defect_mask = np.asarray(masks) != 0
    if maps.ndim != 3 or defect_mask.shape != maps.shape:
        raise ValueError(f"maps and masks must be (N, H, W) of one shape, got {maps.shape} and {defect_mask.shape}")
    if not defect_mask.any() or defect_mask.all():
        raise ValueError("pixel statistics need both normal and defect pixels")
    distinct, counts = _normal_distinct_counts(maps, defect_mask)
    if np.isnan(distinct).any() or np.isnan(maps[defect_mask]).any():
        raise ValueError("anomaly maps contain NaN")
    edges = _choose_edges(distinct, counts, max_edges)
    cells = _cells(maps, edges).reshape(len(maps), -1)
    n_images, n_cells = len(maps), 2 * edges.size + 1
    every = np.stack([np.bincount(row, minlength=n_cells) for row in cells]).astype(np.float64)

    defective = np.flatnonzero(defect_mask.reshape(n_images, -1).any(axis=1))
    local_image, pixel_of = np.nonzero(defect_mask[defective].reshape(defective.size, -1))
    image_of = defective[local_image]
    defect_cells = cells[image_of, pixel_of]
    regions, _ = ndimage.label(defect_mask[defective], structure=_STRUCTURE_8)  # defective images only
    region_of = regions.reshape(defective.size, -1)[local_image, pixel_of]
    sizes = np.bincount(region_of)
    flat = image_of * n_cells + defect_cells
    defect = np.bincount(flat, minlength=n_images * n_cells).reshape(n_images, n_cells).astype(np.float64)
    overlap = np.bincount(flat, weights=1.0 / sizes[region_of], minlength=n_images * n_cells).reshape(n_images, n_cells)
    first_pixel = np.unique(region_of, return_index=True)[1]  # one pixel per region -> its image
    per_image_regions = np.bincount(image_of[first_pixel], minlength=n_images).astype(np.float64)
    return PixelStats(edges, every - defect, defect, overlap, per_image_regions, edges.size == distinct.size)


def _trapezoid_to_limit(fpr: np.ndarray, pro: np.ndarray, limit: float) -> np.ndarray:
    """Row-wise area under (fpr, pro) curves (ascending fpr, from (0, 0)) up to ``limit``, divided by it, with the
    curve interpolated linearly at exactly ``limit``: metrics.integrate_to_limit on every row at once."""
    x0, x1, y0, y1 = fpr[:, :-1], fpr[:, 1:], pro[:, :-1], pro[:, 1:]
    x_end = np.minimum(x1, limit)
    with np.errstate(divide="ignore", invalid="ignore"):
        y_end = np.where(x1 > limit, y0 + (x_end - x0) * (y1 - y0) / (x1 - x0), y1)
    width = np.maximum(x_end - x0, 0.0)
    return np.where(width > 0, width * (y0 + y_end), 0.0).sum(axis=1) / 2.0 / limit


def _curves(above: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], weights: np.ndarray,
            n_columns: int) -> tuple[np.ndarray, np.ndarray]:
    """(R, K+1) FPR and PRO of each resample at descending thresholds: (0, 0), then the top ``n_columns`` cells."""
    fpr = _fpr_columns(above, weights, n_columns)
    return _with_origin(fpr), _with_origin(_pro_columns(above, weights, n_columns))


def _fpr_columns(above: tuple, weights: np.ndarray, n_columns: int) -> np.ndarray:
    normal_above, _, n_normal, _ = above
    return (weights @ normal_above[:, :n_columns]) / (weights @ n_normal)[:, None]


def _pro_columns(above: tuple, weights: np.ndarray, n_columns: int) -> np.ndarray:
    _, overlap_above, _, n_regions = above
    return (weights @ overlap_above[:, :n_columns]) / (weights @ n_regions)[:, None]


def _with_origin(values: np.ndarray) -> np.ndarray:
    return np.hstack([np.zeros((len(values), 1)), values])


def _above(stats: PixelStats) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per image, the normal pixels and region overlaps at or above each threshold (descending), and the totals."""
    normal_above = np.cumsum(stats.normal[:, ::-1], axis=1)
    overlap_above = np.cumsum(stats.overlap[:, ::-1], axis=1)
    return normal_above, overlap_above, normal_above[:, -1].copy(), stats.regions


def _aupro_rows(above: tuple, weights: np.ndarray, n_columns: int, n_cells: int, fpr_limit: float) -> np.ndarray:
    """AUPRO of each resample: FPR over the top ``n_columns`` cells, PRO only up to the first point past the limit
    (the only part the area needs); rows whose FPR stays below the limit there are redone with every cell."""
    fpr = _fpr_columns(above, weights, n_columns)
    inside = (fpr <= fpr_limit).sum(axis=1)  # points at or below the limit, (0, 0) not counted
    short = inside >= n_columns
    aupro = np.empty(len(weights))
    if (~short).any():
        needed = int(inside[~short].max()) + 1
        rows = ~short
        aupro[rows] = _trapezoid_to_limit(_with_origin(fpr[rows, :needed]),
                                          _with_origin(_pro_columns(above, weights[rows], needed)), fpr_limit)
    if short.any():
        fpr_all, pro_all = _curves(above, weights[short], n_cells)
        aupro[short] = _trapezoid_to_limit(fpr_all, pro_all, fpr_limit)
    return aupro


def pixel_replicates(stats: PixelStats, weights: np.ndarray, fpr_limit: float = 0.3,
                     chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Pixel AUROC and AUPRO of each resample (row of ``weights``: image multiplicities); a row of ones gives the
    full-sample values (``binned_metrics``). Equal to metrics.pixel_auroc / metrics.aupro on the resampled images
    when ``stats.exact``.

    Pixel AUROC is a bilinear form w' K w / (n_defect n_normal) with K[i, j] = image i's defect pixels against image
    j's normal ones (ties 1/2). AUPRO needs the curve only up to the first point past the limit: the FPR of the top
    cells (down to CURVE_MARGIN x the limit in the full sample), then the PRO of as many cells as the resamples
    need; a resample whose curve ends short of the limit there gets every cell, so the cut never changes a value.
    """
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    below = np.cumsum(stats.normal, axis=1) - stats.normal  # normal pixels strictly below each cell
    kernel = stats.defect @ (below + 0.5 * stats.normal).T  # (N, N)
    auroc = ((weights @ kernel) * weights).sum(axis=1) / (
        (weights @ stats.defect.sum(axis=1)) * (weights @ stats.normal.sum(axis=1)))
    return auroc, aupro_replicates(stats, weights, fpr_limit, chunk)


def aupro_replicates(stats: PixelStats, weights: np.ndarray, fpr_limit: float = 0.3, chunk: int = 512) -> np.ndarray:
    """AUPRO of each resample (row of ``weights``), pixel_replicates' second half: for callers that need no AUROC."""
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    above = _above(stats)
    full_fpr = above[0].sum(axis=0) / above[2].sum()  # descending thresholds: increasing FPR
    n_columns = min(int(np.searchsorted(full_fpr, min(1.0, CURVE_MARGIN * fpr_limit), side="right")) + 1,
                    stats.n_cells)
    return np.concatenate([_aupro_rows(above, weights[start:start + chunk], n_columns, stats.n_cells, fpr_limit)
                           for start in range(0, len(weights), chunk)])


def binned_metrics(stats: PixelStats, fpr_limit: float = 0.3) -> tuple[float, float, tuple[np.ndarray, np.ndarray]]:
    """Full-sample pixel AUROC, AUPRO and the PRO curve up to just past ``fpr_limit`` from the statistics."""
    ones = np.ones((1, len(stats.normal)))
    auroc, aupro = pixel_replicates(stats, ones, fpr_limit)
    fpr, pro = _curves(_above(stats), ones, stats.n_cells)
    stop = int(np.searchsorted(fpr[0], fpr_limit, side="right")) + 1
    return float(auroc[0]), float(aupro[0]), (fpr[0, :stop], pro[0, :stop])


def percentile_interval(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """The percentile bootstrap interval of ``values`` (NaN when there are none)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    alpha = 1.0 - confidence
    low, high = np.quantile(values, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


def bootstrap_p_value(estimate: float, replicates: np.ndarray) -> float:
    """Two-sided p of "no difference" from the bootstrap standard error (z = estimate / se, normal approximation);
    continuous, unlike a count of resamples past zero, so it stays usable after a multiple-comparison correction."""
    se = float(np.std(np.asarray(replicates, dtype=np.float64), ddof=1)) if np.size(replicates) > 1 else float("nan")
    if not np.isfinite(se) or se == 0.0:
        return float("nan")
    return math.erfc(abs(estimate) / se / math.sqrt(2.0))


# Up to this many non-zero differences the signed-rank null distribution is enumerated exactly (a dynamic programme
# over doubled mid-ranks: n^3 / 2 steps, 0.5 M at 100); above, it is drawn (Monte Carlo, labelled as such).
EXACT_SIGNED_RANK = 100


@dataclass(frozen=True)
class SignedRankResult:
    """Wilcoxon's signed-rank test: T+ (sum of the mid-ranks of the positive differences), p (two-sided; NaN when
    every difference is zero), how many differences were non-zero and zero, whether p is exact (else Monte Carlo)
    and the smallest p the same method can give with these differences (every non-zero sign alike)."""

    statistic: float
    p_value: float
    n_nonzero: int
    n_zero: int
    exact: bool
    min_p: float

    @property
    def method(self) -> str:
        return "exact" if self.exact else "Monte Carlo"


def _signed_rank_null(doubled: np.ndarray) -> np.ndarray:
    """P(sum of the doubled ranks given a + sign = k), k = 0 .. sum, every sign + or − with probability 1/2."""
    distribution = np.zeros(int(doubled.sum()) + 1)
    distribution[0] = 1.0
    for rank in doubled:
        shifted = np.zeros_like(distribution)
        shifted[rank:] = distribution[:-rank]
        distribution = 0.5 * (distribution + shifted)
    return distribution


def signed_rank_test(differences: ArrayLike, n_draws: int = 10_000,
                     rng: np.random.Generator | None = None) -> SignedRankResult:
    """Two-sided Wilcoxon signed-rank test of symmetry about 0: zero differences left out, tied magnitudes given
    their mid-rank, p from the exact conditional null distribution (every sign pattern of the non-zero values, given
    their ranks) when there are at most EXACT_SIGNED_RANK of them, else from ``n_draws`` random patterns plus the
    observed one. p = P(|T+ − E| >= |t+ − E|); NaN values are dropped, every zero gives NaN."""
    d = np.asarray(differences, dtype=np.float64).ravel()
    d = d[~np.isnan(d)]
    nonzero = d[d != 0]
    n, zeros = int(nonzero.size), int(d.size - nonzero.size)
    if n == 0:
        return SignedRankResult(float("nan"), float("nan"), 0, zeros, True, float("nan"))
    doubled = np.rint(2 * stats.rankdata(np.abs(nonzero))).astype(np.int64)  # mid-ranks are halves: integers
    total = int(doubled.sum())
    observed = int(doubled[nonzero > 0].sum())
    statistic = observed / 2.0
    extreme = abs(2 * observed - total)  # |2 T+ - sum| in doubled units: integers, compared exactly
    if n <= EXACT_SIGNED_RANK:
        distribution = _signed_rank_null(doubled)
        deviation = np.abs(2 * np.arange(total + 1) - total)
        p_value = float(min(1.0, distribution[deviation >= extreme].sum()))
        return SignedRankResult(statistic, p_value, n, zeros, True, min(1.0, 2.0 * 0.5 ** n))
    rng = np.random.default_rng(0) if rng is None else rng
    hits = 0
    for start in range(0, n_draws, 4096):
        positive = rng.integers(0, 2, size=(min(4096, n_draws - start), n))
        hits += int((np.abs(2 * (positive @ doubled) - total) >= extreme).sum())
    return SignedRankResult(statistic, (1 + hits) / (1 + n_draws), n, zeros, False, 1.0 / (1 + n_draws))

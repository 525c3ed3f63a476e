"""Is a difference between two models real? Paired tests on the same test images, and the
multiple-comparison correction applied over a report's family of tests.

- ``delong_test``: DeLong, DeLong & Clarke-Pearson (1988) test of two correlated AUROCs, with the
  fast midrank structural components of Sun & Xu (2014); checked against pROC's published example.
- ``paired_bootstrap_auroc_diff``: percentile interval of AUROC(a) - AUROC(b), resampling images in
  pairs, stratified by class.
- ``holm``: Holm-Bonferroni adjusted p-values (family-wise error control).

Scores follow metrics.py's conventions (label 1 = anomalous, higher score = more anomalous).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from metrics import ArrayLike, as_binary, as_score_vector, require_both_classes

__all__ = ["BootstrapResult", "DeLongResult", "delong_covariance", "delong_test", "holm",
           "paired_bootstrap_auroc_diff"]


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

"""Statistics of the chapter: how coherent a weight matrix is, before and after rotation.

- Incoherence  mu(W) = max_ij |W_ij| sqrt(m n) / ||W||_F  for W of shape (m, n):
  1 for a flat matrix (all |W_ij| equal), up to sqrt(mn) for a single spike.
- Excess kurtosis E[(w - mean)^4] / var^2 - 3 of all entries (0 for a Gaussian).
- Uniformity on the sphere: cut W (row-major, i.e. along the input dimension) into
  groups of L consecutive weights and normalise each group to unit length: v = w / ||w||.
  If v is uniform on S^{L-1}, every v_i^2 ~ Beta(1/2, (L-1)/2). We report the
  Kolmogorov-Smirnov distance between the empirical law of all v_i^2 and that Beta law.

Every statistic takes a NumPy array or a tensor (any real dtype, any device; computed in
float64 NumPy) and refuses complex, empty and non-finite input.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import beta

from .. import _checks, _tiers


def _stat_input(W) -> np.ndarray:
    """W (numpy or torch, any real dtype) as a non-empty, finite float64 array."""
    W = W.detach() if _tiers.is_torch(W) else np.asarray(W)   # no gradients needed
    _checks.real_dtype(W, "W")
    W = _tiers.to_numpy(W, np.float64).astype(np.float64, copy=False)
    if W.size == 0:
        raise ValueError(f"expected a non-empty array, got shape {W.shape}")
    _checks.finite(W, "W")
    return W


def incoherence(W) -> float:
    """mu(W) = max|W_ij| sqrt(mn) / ||W||_F.

    Chapter: Spherical coherence processing (book/coherence.ipynb)."""
    W = _stat_input(W)
    if W.ndim != 2 or not np.any(W):
        raise ValueError(f"expected a non-zero 2-D matrix, got shape {W.shape}")
    A = np.abs(W)
    return float(math.sqrt(W.size) / np.linalg.norm(A / A.max()))   # scaled: no overflow


def excess_kurtosis(W) -> float:
    """Excess kurtosis of all entries (0 for a Gaussian, -1.2 for a uniform law).

    Chapter: Spherical coherence processing (book/coherence.ipynb)."""
    w = _stat_input(W).ravel()
    w = w / max(np.abs(w).max(), 1.0)           # the mean of huge values cannot overflow
    d = w - w.mean()
    spread = np.abs(d).max()
    if spread == 0:
        raise ValueError("excess kurtosis is undefined for constant input (zero variance)")
    d2 = (d / spread) ** 2                      # scale-free; d^4 cannot under/overflow
    return float(np.mean(d2 * d2) / np.mean(d2) ** 2 - 3.0)


def sphere_coordinates(W, group: int = 128) -> np.ndarray:
    """v_i^2 of every unit-normalised group of ``group`` consecutive weights.

    Groups are cut from the row-major flattening of W, i.e. along the input dimension;
    when the row length is not a multiple of ``group`` (576 = 4.5 * 128) some groups span
    the end of one row and the start of the next. All-zero groups are skipped.

    Chapter: Spherical coherence processing (book/coherence.ipynb).
    """
    group = _checks.integer(group, "group", 1)
    W = _stat_input(W)
    if W.size % group:
        raise ValueError(f"W has {W.size} entries, not a multiple of group={group}")
    G = W.reshape(-1, group)
    peak = np.abs(G).max(axis=1)
    G = G[peak > 0] / peak[peak > 0, None]      # skip zero groups; scale: no overflow
    return ((G / np.linalg.norm(G, axis=1, keepdims=True)) ** 2).ravel()


def beta_law_ks(W, group: int = 128) -> float:
    """KS distance between the law of the v_i^2 and Beta(1/2, (group-1)/2).

    Chapter: Spherical coherence processing (book/coherence.ipynb)."""
    group = _checks.integer(group, "group", 2)   # group = 1: every v_1^2 = 1, no Beta law
    v2 = np.sort(sphere_coordinates(W, group))
    if v2.size == 0:
        raise ValueError("every group of W is zero: no directions to compare with the "
                         "Beta law")
    cdf = beta(0.5, (group - 1) / 2).cdf(v2)
    i = np.arange(1, v2.size + 1)
    return float(max(np.max(i / v2.size - cdf), np.max(cdf - (i - 1) / v2.size)))

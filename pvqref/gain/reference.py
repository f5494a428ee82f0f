"""The reference tier of the gain quantizer: the textbook version, one group at a time.

Chapter: Gain quantization (book/gain.ipynb). Plain NumPy and Python floats, no speed
tricks; it imports neither Numba nor torch. The numba tier (_numba.py) and the torch tier
(_torch.py) define the same functions and are tested against this one:

    matrix(W)                              W as a float64 matrix, and its row norms
    row_norms(r, bits)                     (stored, norm range, r_hat) of the norms r
    groups(G, rg, K, thresholds, ls)       pyramid points Y and gain codes of the groups
    reconstruct(Y, codes, rg, levels)      the decoded groups r_hat * t_c * y / ||y||

Groups: G (g, L) float64, the coded row norm of each group's row rg (g,), K, the gain
thresholds. Every tier computes

    t = <w_g, y> / ||y|| / r   ("ls")   or   ||w_g|| / r   ("norm"),   code = #{thresholds < t}

with sums left to right in float64, so this tier and the numba tier agree bit for bit; torch
sums in its own order (codes can differ only if t is within rounding of a threshold).

A zero group has no direction: it gets the fixed point y = (K, 0, ..., 0) and t = 0, so it
decodes to r_hat * t_0 * e_1 (pvqref.gain.quantize warns about such groups).
"""

from __future__ import annotations

import math

import numpy as np

from .. import _tiers, pyramid
from ..format import FP16_NORMS
from .norms import fp16_norms, fp32_norm_range, norm_levels, norm_thresholds


def matrix(W):
    """(X, r): W (NumPy, or a tensor, read detached) as a float64 NumPy matrix, and the
    Euclidean norm of every row, float64."""
    X = np.ascontiguousarray(_tiers.to_numpy(W.detach() if _tiers.is_torch(W) else W),
                             dtype=np.float64)
    return X, np.sqrt(np.sum(X ** 2, axis=1))


def row_norms(r, bits: int):
    """(stored, norm range, decoded) for float64 norms r: fp16 values (bits = 16) or log-grid
    codes, each the nearest level in log distance (code 0 for a zero row)."""
    if bits == FP16_NORMS:
        stored = fp16_norms(r)
        return stored, np.zeros(0, dtype=np.float32), stored.astype(np.float64)
    nonzero = [float(v) for v in r if v > 0]
    norm_range = fp32_norm_range(min(nonzero, default=0.0), max(nonzero, default=0.0))
    levels = norm_levels(norm_range[0], norm_range[1], bits)
    thresholds = norm_thresholds(levels)
    codes = np.zeros(len(r), dtype=np.uint16)
    for i, v in enumerate(r):
        if v > 0:                                 # code 1 + #{thresholds below r}
            codes[i] = 1 + sum(1 for th in thresholds if v > th)
    return codes, norm_range, levels[codes]


def fixed_point(L: int, K: int) -> np.ndarray:
    """The pyramid point (K, 0, ..., 0) used for all-zero groups."""
    y = np.zeros(L, dtype=np.int64)
    y[0] = K
    return y


def groups(G, rg, K: int, thresholds, ls: bool):
    """(Y, codes): the pyramid point (int64) and the gain code (int64) of every group."""
    Y = np.empty(G.shape, dtype=np.int64)
    codes = np.empty(len(G), dtype=np.int64)
    for i in range(len(G)):
        g = [float(v) for v in G[i]]
        if not any(g):                                  # no direction: fixed point, t = 0
            Y[i], t = fixed_point(len(g), K), 0.0
        else:
            Y[i] = pyramid.search_batch(G[i:i + 1], K, backend="reference")[0]
            y = [float(v) for v in Y[i]]
            gy = yy = gg = 0.0
            for a, b in zip(g, y):
                gy, yy, gg = gy + a * b, yy + b * b, gg + a * a
            t = (gy / math.sqrt(yy) if ls else math.sqrt(gg)) / float(rg[i])
        codes[i] = sum(1 for th in thresholds if t > th)
    return Y, codes


def reconstruct(Y, codes, rg, levels):
    """The decoded groups, float64: w_g = r * t_c * y / ||y|| for every row of Y."""
    out = np.empty(Y.shape, dtype=np.float64)
    for i in range(len(Y)):
        y = [float(v) for v in Y[i]]
        norm = math.sqrt(sum(v * v for v in y))
        gain = float(rg[i]) * float(levels[codes[i]])
        out[i] = [gain * v / norm for v in y]
    return out

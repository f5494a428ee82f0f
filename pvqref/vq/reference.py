"""Vector quantization, the NumPy float64 oracle (see :mod:`pvqref.vq`).

Distances are summed coordinate by coordinate in index order, (x_0 - c_0)^2 +
(x_1 - c_1)^2 + ..., in every tier, so that the tiers compute the same floats and pick
the same centroid (the lowest index among exact ties).
"""

from __future__ import annotations

import numpy as np

CHUNK = 512          # vectors per distance block: CHUNK x k floats at a time


def distances(X, C):
    """(len(X), len(C)) squared distances, summed in coordinate order."""
    d = np.zeros((len(X), len(C)))
    for t in range(X.shape[1]):
        d += (X[:, t, None] - C[None, :, t]) ** 2
    return d


def assign(X, C):
    """Index of the nearest centroid of each vector (int64), the lowest index on ties."""
    out = np.empty(len(X), dtype=np.int64)
    for s in range(0, len(X), CHUNK):
        out[s:s + CHUNK] = np.argmin(distances(X[s:s + CHUNK], C), axis=1)
    return out


def update(X, w, idx, C):
    """Weighted means of the vectors assigned to each centroid; a centroid that lost all
    its vectors moves to the vector farthest (weighted) from its own centroid."""
    k, v = C.shape
    sums = np.zeros((k, v))
    np.add.at(sums, idx, X * w[:, None])
    mass = np.bincount(idx, weights=w, minlength=k)
    new = C.copy()
    full = mass > 0
    new[full] = sums[full] / mass[full, None]
    if not full.all():
        far = w * np.sum((X - new[idx]) ** 2, axis=1)
        for c, i in zip(np.flatnonzero(~full), np.argsort(-far, kind="stable")):
            new[c] = X[i]
    return new

"""Vector quantization, the torch tier (the inputs' device): the same nearest-centroid
search as :mod:`pvqref.vq.reference`, in blocks of vectors."""

from __future__ import annotations

import torch

CHUNK = 2048


def assign(X, C):
    """Index of the nearest centroid of each vector (int64), the lowest index on ties."""
    out = torch.empty(len(X), dtype=torch.int64, device=X.device)
    for s in range(0, len(X), CHUNK):
        x = X[s:s + CHUNK]
        d = torch.zeros(len(x), len(C), dtype=X.dtype, device=X.device)
        for t in range(X.shape[1]):
            d += (x[:, t, None] - C[None, :, t]) ** 2
        out[s:s + CHUNK] = torch.argmin(d, dim=1)
    return out


def update(X, w, idx, C):
    """Weighted means of the vectors assigned to each centroid (as the reference)."""
    k, v = C.shape
    sums = torch.zeros(k, v, dtype=X.dtype, device=X.device).index_add_(0, idx, X * w[:, None])
    mass = torch.zeros(k, dtype=X.dtype, device=X.device).index_add_(0, idx, w)
    new = C.clone()
    full = mass > 0
    new[full] = sums[full] / mass[full, None]
    if not bool(full.all()):
        far = w * ((X - new[idx]) ** 2).sum(dim=1)
        empty = torch.nonzero(~full).flatten()
        new[empty] = X[torch.argsort(-far, stable=True)[:len(empty)]]
    return new

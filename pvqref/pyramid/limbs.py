"""Index limbs and their bit stream: checking (G, W) limb arrays, packing and unpacking.

A batch of G indices of a (L, K) group is a (G, W) array of unsigned 64-bit limbs, least
significant first (``W = n_limbs(L, K)``); torch holds the same bit patterns as int64.
``pack_indices`` writes group g at bits [g b, (g+1) b) of one little-endian stream,
``b = bits(L, K)``, least significant bit first, the last byte zero-padded;
``unpack_indices`` reads it back and checks length, padding and range.

Chapter: The pyramid lattice (book/pyramid.ipynb), section on packing.
"""

from __future__ import annotations

import numpy as np

from .. import _checks, _tiers
from .reference import bits, check_LK, count, ints_to_limbs, limbs_to_ints, n_limbs


def to_numpy_limbs(limbs) -> np.ndarray:
    """(G, W) limbs as a NumPy uint64 array (from uint64, or int64 bit patterns, NumPy or
    torch). TypeError for another dtype, ValueError for another shape."""
    if _tiers.is_torch(limbs):
        import torch
        if limbs.dtype not in (torch.int64, torch.uint64):
            raise TypeError("index limbs must be uint64 (or int64 bit patterns), "
                            f"got {limbs.dtype}")
    limbs = _tiers.to_numpy(limbs)
    if limbs.ndim != 2:
        raise ValueError(f"indices must be a (G, W) array of 64-bit limbs, got shape {limbs.shape}")
    if limbs.dtype == np.int64:
        limbs = limbs.view(np.uint64)
    if limbs.dtype != np.uint64:
        raise TypeError(f"index limbs must be uint64 (or int64 bit patterns), got {limbs.dtype}")
    return limbs


def check_limbs(limbs, L: int, K: int) -> np.ndarray:
    """Validate (G, W) limbs for (L, K): shape, dtype, and every index < N(L, K)."""
    limbs = to_numpy_limbs(limbs)
    W = n_limbs(L, K)
    if limbs.shape[1] != W:
        raise ValueError(f"indices for (L={L}, K={K}) need W={W} limbs per row, "
                         f"got {limbs.shape[1]}")
    n = ints_to_limbs([count(L, K) - 1], L, K)[0]          # largest valid index
    greater = np.zeros(len(limbs), dtype=bool)              # limbs > n, lexicographically
    decided = np.zeros(len(limbs), dtype=bool)
    for w in range(W - 1, -1, -1):
        greater |= ~decided & (limbs[:, w] > n[w])
        decided |= limbs[:, w] != n[w]
    if greater.any():
        g = int(np.flatnonzero(greater)[0])
        raise ValueError(f"index {limbs_to_ints(limbs[g:g + 1])[0]} (group {g}) out of range "
                         f"for N({L}, {K}) = {count(L, K)}")
    return np.ascontiguousarray(limbs)


def as_limbs(indices, L: int, K: int) -> np.ndarray:
    """Checked (G, W) uint64 limbs of indices given as limbs or as Python ints."""
    if isinstance(indices, (list, tuple, range)):
        return ints_to_limbs(indices, L, K)
    return check_limbs(indices, L, K)


def pack_indices(indices, L: int, K: int) -> bytes:
    """Indices ((G, W) limbs or Python ints) -> ceil(G * bits(L, K) / 8) bytes.

    Chapter: The pyramid lattice (book/pyramid.ipynb)."""
    L, K = check_LK(L, K)
    limbs = as_limbs(indices, L, K)
    b = bits(L, K)
    le = limbs.astype("<u8", copy=False)
    stream = np.unpackbits(le.view(np.uint8).reshape(len(le), 8 * le.shape[1]), axis=1,
                           bitorder="little")
    return np.packbits(stream[:, :b].reshape(-1), bitorder="little").tobytes()


def unpack_indices(data: bytes, n_groups: int, L: int, K: int) -> np.ndarray:
    """Inverse of ``pack_indices``: (n_groups, W) uint64 limbs. Checks length and range.

    Chapter: The pyramid lattice (book/pyramid.ipynb)."""
    L, K = check_LK(L, K)
    try:
        data = memoryview(data).cast("B")   # any contiguous bytes-like object, as bytes
    except TypeError:
        raise TypeError(f"data must be bytes-like, got {type(data).__name__}") from None
    n_groups = _checks.integer(n_groups, "n_groups", minimum=0)
    b, W = bits(L, K), n_limbs(L, K)
    expected = -(-n_groups * b // 8)
    if len(data) != expected:
        raise ValueError(f"{n_groups} groups of {b} bits need {expected} bytes, got {len(data)}")
    stream = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")
    if stream[n_groups * b:].any():
        raise ValueError("padding bits after the last group are not zero")
    full = np.zeros((n_groups, 64 * W), dtype=np.uint8)
    full[:, :b] = stream[:n_groups * b].reshape(n_groups, b)
    limbs = np.packbits(full, axis=1, bitorder="little").view("<u8").astype(np.uint64)
    return check_limbs(limbs.reshape(n_groups, W), L, K)

"""The pyramid lattice: count, enumerate (encode/decode), search, and bit-pack its points.

The PVQ codebook for a group of ``L`` weights with ``K`` pulses is::

    P(L, K) = { y in Z^L : |y_1| + ... + |y_L| = K },

used as directions ``y / ||y||_2`` on the unit sphere. The codebook is never stored:
``encode`` maps a point to its rank in ``range(count(L, K))`` and ``decode`` inverts it,
both with a table of counts. ``search`` finds the point whose direction is nearest to a
real vector ``x``.

Three tiers compute the same thing (``backend=`` in the batched functions, default
"auto": torch for a tensor, numba for an array; see ``pvqref._tiers``):

- ``"reference"`` (``reference.py``): plain Python integers, one group at a time. The
  oracle, and the file to read first.
- ``"numba"`` (``_numba.py``): jitted loops over a batch; indices as fixed-width
  multi-limb integers, exact at any width.
- ``"torch"`` (``_torch.py``): vectorised over the groups of a batch, on whatever device
  the input lives.

All tiers agree bit for bit (tests/test_pyramid.py). This file checks the inputs once,
picks the tier and converts the result back to the kind of the input (NumPy in, NumPy
out; a tensor in, a tensor out on its device). ``limbs.py`` holds the limb checks and
the bit packing.

Batched index representation
----------------------------
An index of a ``(L, K)`` group needs ``bits(L, K)`` bits, often more than 64 (L = 128 at
3 bits per weight: 384 bits). A batch of ``G`` indices is a ``(G, W)`` array of unsigned
64-bit *limbs*, least significant limb first, ``W = n_limbs(L, K) = max(1, ceil(bits / 64))``:

    index[g] = sum_w  limbs[g, w] * 2**(64 w).

NumPy arrays use dtype ``uint64``. Torch tensors use ``torch.int64`` holding the same
64-bit patterns (torch has no full uint64 arithmetic), so a limb >= 2**63 shows as
negative there. ``ints_to_limbs`` / ``limbs_to_ints`` convert to and from Python ints.

Limits of the table-based paths
-------------------------------
``count_table``, ``encode``, ``decode``, and ``encode_batch`` / ``decode_batch`` on every
tier work from a table of N(l, k) for l <= L, k <= K: (L + 1)(K + 1) entries of
``n_limbs(L, K)`` 64-bit limbs (Python ints of that size in the reference tier; the Numba
tier keeps two such tables). They refuse, with a ValueError, any (L, K) beyond

    L <= MAX_TABLE_L = 1024,   K <= MAX_TABLE_K = 16384,
    (L + 1)(K + 1) n_limbs(L, K) <= MAX_TABLE_LIMBS = 2**26   (512 MiB per table),

rather than silently build a table of gigabytes. The book and the chooser in
``pvqref.gain`` stay inside: L = 128 at 3 bits per weight needs 0.14 Mi limbs, L = 256,
K = 600 2.2 Mi, L = 384 at 5.25 and 6 bits per weight 32 and 61 Mi. ``count``, ``bits``,
``k_for_rate``, ``search`` and the packing functions build no table and have no such limit.
"""

from __future__ import annotations

import numpy as np

from .. import _checks, _tiers
from .._tiers import BACKENDS
from .limbs import check_limbs, pack_indices, to_numpy_limbs, unpack_indices
from .reference import (MAX_TABLE_K, MAX_TABLE_L, MAX_TABLE_LIMBS, bits, check_LK,
                        check_table, count, count_table, decode, encode, exhaustive_search,
                        ints_to_limbs, k_for_rate, log2_count, n_limbs, points, search)
from .reference import limbs_to_ints as _limbs_to_ints
from .reference import (NOT_FINITE, beyond_K_error, norm_error, points_shape_error,
                        zero_group_error)

__all__ = [
    "count", "count_table", "log2_count", "bits", "n_limbs", "k_for_rate",
    "encode", "decode", "search", "search_batch", "encode_batch", "decode_batch",
    "ints_to_limbs", "limbs_to_ints", "pack_indices", "unpack_indices",
    "exhaustive_search", "points", "BACKENDS", "MAX_TABLE_L", "MAX_TABLE_K",
    "MAX_TABLE_LIMBS",
]

_PACKAGE = __name__


def limbs_to_ints(limbs) -> list[int]:
    """(G, W) limbs (NumPy uint64 or torch int64 bit patterns) -> list of Python ints.

    Chapter: The pyramid lattice (book/pyramid.ipynb)."""
    return _limbs_to_ints(to_numpy_limbs(limbs))


# ---- input checks of the NumPy tiers (the torch tier checks on its device) ------------

def _check_X(X, values: bool = True) -> np.ndarray:
    """X as a C-contiguous float64 (G, L) array: shape and dtype checked, and (``values``)
    no NaN, Inf or group of zeros (the numba tier checks those itself, in one jitted pass:
    ``np.any(X, axis=1)`` alone took 12% of its search at L = 8)."""
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[1] < 1:
        raise ValueError(f"X must be a (G, L) array of groups, got shape {X.shape}")
    _checks.real_dtype(X, "X")
    X = np.ascontiguousarray(X, dtype=np.float64)     # a copy only if X is not that already
    if not values:
        return X
    if X.size and not (np.isfinite(X.min()) and np.isfinite(X.max())):  # NaN propagates
        raise ValueError(NOT_FINITE)
    zero = ~np.any(X, axis=1)
    if zero.any():
        raise zero_group_error(int(np.flatnonzero(zero)[0]))
    return X


def refuse_beyond_K(Y, big, K) -> None:
    """ValueError naming the first entry of Y flagged in ``big`` (|y| > K), if any."""
    if big.any():
        g, c = (int(v) for v in np.argwhere(big)[0])
        raise beyond_K_error(g, c, abs(int(Y[g, c])), K)


def _check_Y(Y, K) -> tuple[np.ndarray, int]:
    Y = np.asarray(Y)
    if Y.ndim != 2 or Y.shape[1] < 1:
        raise points_shape_error(Y.shape)
    _checks.integer_dtype(Y, "Y")
    L = Y.shape[1]
    if K is None:                           # the batch's K: row 0's norm, in exact ints
        check_table(L, 0)
        K = sum(abs(int(v)) for v in Y[0]) if len(Y) else 0
    L, K = check_LK(L, K)
    check_table(L, K)
    # A point has |y_i| <= K. Check it before anything can wrap: then the int64 norms are
    # exact (<= L K). A uint64 >= 2**63 would wrap in the int64 cast; abs(-2**63) is
    # -2**63 in int64, which read as uint64 is 2**63 > K.
    if Y.dtype == np.uint64:
        refuse_beyond_K(Y, Y > K, K)
    Y = np.ascontiguousarray(Y, dtype=np.int64)       # a copy only if Y is not that already
    A = np.abs(Y)
    if A.size and A.view(np.uint64).max() > K:        # one reduction; the mask only to report
        refuse_beyond_K(Y, A.view(np.uint64) > K, K)
    norms = np.einsum("ij->i", A)                     # row sums; 4x sum(axis=1)'s speed at L = 8
    bad = norms != K
    if bad.any():
        g = int(np.flatnonzero(bad)[0])
        raise norm_error(g, int(norms[g]), K)
    return Y, K


def _check_out(out, like_input, shape, limbs: bool = False):
    """``out`` (or None) checked as the buffer for a result of ``shape``: the kind of the
    caller's input (a NumPy array, or a tensor on the input's device), dtype int64 (limbs:
    uint64 for NumPy, int64 bit patterns for torch), that exact shape, C-contiguous and
    writable. Returns ``out`` if the tier of that kind can write into it directly."""
    if out is None:
        return None
    want = "int64" if limbs is False or _tiers.is_torch(like_input) else "uint64"
    if _tiers.is_torch(like_input):
        if not _tiers.is_torch(out):
            raise TypeError("out must be a torch tensor for tensor input, "
                            f"got {type(out).__name__}")
        if str(out.dtype) != "torch." + want:
            raise TypeError(f"out must have dtype torch.{want}, got {out.dtype}")
        if out.device != like_input.device:
            raise ValueError(f"out is on {out.device}, the input on {like_input.device}")
        ok = out.is_contiguous()
    else:
        if not isinstance(out, np.ndarray):
            raise TypeError("out must be a NumPy array for NumPy input, "
                            f"got {type(out).__name__}")
        if out.dtype != want:
            raise TypeError(f"out must have dtype {want}, got {out.dtype}")
        ok = out.flags.c_contiguous and out.flags.writeable
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"out must have shape {tuple(shape)}, got {tuple(out.shape)}")
    if not ok:
        raise ValueError("out must be C-contiguous and writable")
    return out


def _tier_out(out, tier):
    """``out`` if the tier computes in its kind (numba: NumPy; torch: tensors), else None."""
    return out if out is not None and _tiers.is_torch(out) == (tier == "torch") else None


def _back(res, like_input, limbs: bool = False, out=None):
    """A tier's result in the kind of the caller's input (limbs: uint64 for NumPy), written
    into ``out`` (checked by ``_check_out``) when given."""
    if out is not None and res is out:
        return out                           # the tier wrote there itself
    if limbs and not _tiers.is_torch(res):
        res = res.view(np.int64)             # torch holds limbs as int64 bit patterns
    res = _tiers.like(res, like_input)
    if limbs and not _tiers.is_torch(res):
        res = res.view(np.uint64)
    if out is None:
        return res
    if _tiers.is_torch(out):
        out.copy_(res)
    else:
        out[...] = res
    return out


# ---- the batched API ---------------------------------------------------------------------

def search_batch(X, K: int, backend: str = "auto", out=None):
    """``search`` on every row of X (G, L). NumPy in -> NumPy out; torch in -> torch out.

    ``out``: optional buffer for the (G, L) int64 result, of the input's kind (a tensor on
    the input's device), C-contiguous; written in place and returned.

    Chapter: The pyramid lattice (book/pyramid.ipynb)."""
    tier = _tiers.resolve(backend, X)
    if tier == "torch":
        if not _tiers.is_torch(X):
            _checks.real_dtype(np.asarray(X), "X")
            X_t = _tiers.to_torch(np.asarray(X, dtype=np.float64))
        else:
            X_t = X
        out = _check_out(out, X, tuple(X.shape)) if X_t.ndim == 2 else out
        res = _tiers.load(_PACKAGE, tier).search_batch(X_t, K, out=_tier_out(out, tier))
        return _back(res, X, out=out)
    X_n = _check_X(_tiers.to_numpy(X), values=tier != "numba")
    _, K = check_LK(X_n.shape[1], K)
    out = _check_out(out, X, X_n.shape)
    mod = _tiers.load(_PACKAGE, tier)
    res = mod.search_batch(X_n, K, out=_tier_out(out, tier))
    return _back(res, X, out=out)


def encode_batch(Y, K: int | None = None, backend: str = "auto", out=None):
    """Ranks of the rows of Y (G, L), all with ||y||_1 = K, as (G, W) limbs.

    K defaults to the norm of row 0. ValueError beyond the table limits (see above).
    ``out``: optional (G, W) buffer (NumPy uint64, or a torch int64 tensor on the input's
    device, as the result would be), C-contiguous; written in place and returned.

    Chapter: The pyramid lattice (book/pyramid.ipynb)."""
    tier = _tiers.resolve(backend, Y)
    if tier == "torch":
        if not _tiers.is_torch(Y):
            _checks.integer_dtype(np.asarray(Y), "Y")
        mod = _tiers.load(_PACKAGE, tier)
        Y_t, K = mod.check_points(_tiers.to_torch(Y), K)
        out = _check_out(out, Y, (Y_t.shape[0], n_limbs(Y_t.shape[1], K)), limbs=True)
        res = mod.encode_batch(Y_t, K, out=_tier_out(out, tier))
        return _back(res, Y, limbs=True, out=out)
    if _tiers.is_torch(Y):
        _checks.integer_dtype(Y, "Y")        # (bf16 etc. have no NumPy twin)
    Y_n, K = _check_Y(_tiers.to_numpy(Y), K)
    out = _check_out(out, Y, (Y_n.shape[0], n_limbs(Y_n.shape[1], K)), limbs=True)
    mod = _tiers.load(_PACKAGE, tier)
    res = mod.encode_batch(Y_n, K, out=_tier_out(out, tier))
    return _back(res, Y, limbs=True, out=out)


def decode_batch(indices, L: int, K: int, backend: str = "auto", out=None):
    """Points (G, L) int64 of (G, W) index limbs (or a list of Python ints).

    ValueError beyond the table limits (see above). ``out``: optional (G, L) int64 buffer of
    the input's kind (a tensor on its device), C-contiguous; written in place and returned.

    Chapter: The pyramid lattice (book/pyramid.ipynb)."""
    L, K = check_LK(L, K)
    check_table(L, K)
    if isinstance(indices, (list, tuple, range)):
        indices = ints_to_limbs(indices, L, K)
    tier = _tiers.resolve(backend, indices)
    if tier == "torch":
        I = indices if _tiers.is_torch(indices) else \
            _tiers.to_torch(to_numpy_limbs(indices).view(np.int64))   # int64 bit patterns
        mod = _tiers.load(_PACKAGE, tier)
        I = mod.check_indices(I, L, K)
        out = _check_out(out, indices, (I.shape[0], L))
        return _back(mod.decode_batch(I, L, K, out=_tier_out(out, tier)), indices, out=out)
    limbs = check_limbs(indices, L, K)
    out = _check_out(out, indices, (limbs.shape[0], L))
    mod = _tiers.load(_PACKAGE, tier)
    res = mod.decode_batch(limbs, L, K, out=_tier_out(out, tier))
    return _back(res, indices, out=out)

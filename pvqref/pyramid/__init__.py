"""The pyramid lattice: count, enumerate (encode/decode), search, and bit-pack its points.

The PVQ codebook for a group of ``L`` weights with ``K`` pulses is

    P(L, K) = { y in Z^L : |y_1| + ... + |y_L| = K },

used as directions ``y / ||y||_2`` on the unit sphere. The codebook is never stored:
``encode`` maps a point to its rank in ``range(count(L, K))`` and ``decode`` inverts it,
both with a table of counts. ``search`` finds the point whose direction is nearest to a
real vector ``x``.

Three tiers compute the same thing (``backend=`` in the batched functions):

- ``"reference"``: plain Python integers, one group at a time. The oracle.
- ``"numba"``: jitted loops over a batch; indices as fixed-width multi-limb integers,
  exact at any width (see ``pvqref/pyramid/_numba.py``).
- ``"torch"``: vectorised over the groups of a batch, on whatever device the input lives.

All tiers agree bit for bit (tests/test_pyramid.py).

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

import math
import numbers
from functools import lru_cache

import numpy as np

__all__ = [
    "count", "count_table", "log2_count", "bits", "n_limbs", "k_for_rate",
    "encode", "decode", "search", "search_batch", "encode_batch", "decode_batch",
    "ints_to_limbs", "limbs_to_ints", "pack_indices", "unpack_indices",
    "exhaustive_search", "BACKENDS", "MAX_TABLE_L", "MAX_TABLE_K", "MAX_TABLE_LIMBS",
]

BACKENDS = ("reference", "numba", "torch")

MAX_TABLE_L = 1024          # limits of the table-based paths (see the module docstring)
MAX_TABLE_K = 16384
MAX_TABLE_LIMBS = 1 << 26

# ---------------------------------------------------------------------------------------
# Counting.
#
# N(L, K) = |P(L, K)|. Split on the first coordinate y_1 = 0, or |y_1| = a >= 1 with two
# signs; the rest is a point of P(L-1, K-a):
#
#     N(L, K) = N(L-1, K) + 2 * sum_{a=1}^{K} N(L-1, K-a),        N(L, 0) = 1, N(0, K>0) = 0.
#
# Subtracting the same identity at K-1 gives Fischer's three-term recurrence
#
#     N(L, K) = N(L-1, K) + N(L-1, K-1) + N(L, K-1).
#
# Closed form: choose the i >= 1 non-zero coordinates (C(L, i) ways), their signs (2^i) and
# a composition of K into i positive parts (C(K-1, i-1)):
#
#     N(L, K) = sum_{i=1}^{min(L, K)} 2^i C(L, i) C(K-1, i-1)       (K >= 1).
# ---------------------------------------------------------------------------------------


def _check_LK(L, K) -> tuple[int, int]:
    for name, v in (("L", L), ("K", K)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name} must be an integer, got {type(v).__name__}")
    L, K = int(L), int(K)
    if L < 1:
        raise ValueError(f"group size L must be >= 1, got L={L}")
    if K < 0:
        raise ValueError(f"number of pulses K must be >= 0, got K={K}")
    return L, K


def count(L: int, K: int) -> int:
    """Number of points of the pyramid P(L, K), an exact Python int (closed form)."""
    L, K = _check_LK(L, K)
    if K == 0:
        return 1
    total, c_l, c_k = 0, 1, 1               # running C(L, i) and C(K-1, i-1)
    for i in range(1, min(L, K) + 1):
        c_l = c_l * (L - i + 1) // i         # C(L, i)
        if i > 1:
            c_k = c_k * (K - i + 1) // (i - 1)   # C(K-1, i-1)
        total += (1 << i) * c_l * c_k
    return total


@lru_cache(maxsize=64)
def _table_limbs(L: int, K: int) -> int:
    return (L + 1) * (K + 1) * n_limbs(L, K)


def _check_table(L: int, K: int) -> None:
    """Refuse (L, K) (checked ints) whose count table is beyond the documented limits."""
    if L <= MAX_TABLE_L and K <= MAX_TABLE_K and _table_limbs(L, K) <= MAX_TABLE_LIMBS:
        return                              # (n_limbs is cheap once L and K are bounded)
    raise ValueError(f"(L={L}, K={K}) is beyond the count table's limits: encoding and "
                     f"decoding need L <= {MAX_TABLE_L}, K <= {MAX_TABLE_K} and "
                     f"(L+1)(K+1) n_limbs(L, K) <= {MAX_TABLE_LIMBS} limbs (see pvqref.pyramid)")


@lru_cache(maxsize=16)
def count_table(L: int, K: int) -> tuple[tuple[int, ...], ...]:
    """Table ``N[l][k]`` for 0 <= l <= L, 0 <= k <= K by the three-term recurrence.

    Raises ValueError beyond the table limits (``MAX_TABLE_L``, ``MAX_TABLE_K``,
    ``MAX_TABLE_LIMBS``; see the module docstring)."""
    L, K = _check_LK(L, K)
    _check_table(L, K)
    rows = [[1] + [0] * K]                  # N(0, 0) = 1, N(0, k > 0) = 0
    for _ in range(L):
        prev, row = rows[-1], [1]
        for k in range(1, K + 1):
            row.append(prev[k] + prev[k - 1] + row[k - 1])
        rows.append(row)
    return tuple(tuple(r) for r in rows)


def log2_count(L: int, K: int) -> float:
    """log2 N(L, K): the information content of one group's index, in bits."""
    return math.log2(count(L, K))


def bits(L: int, K: int) -> int:
    """ceil(log2 N(L, K)): bits stored per group by ``pack_indices`` (0 when K = 0)."""
    return (count(L, K) - 1).bit_length()


def n_limbs(L: int, K: int) -> int:
    """Number W of 64-bit limbs per index in the batched representation."""
    return max(1, -(-bits(L, K) // 64))


def k_for_rate(L: int, bits_per_weight: float) -> int:
    """Largest K whose stored index fits the budget: ``bits(L, K) <= floor(L * bpw)``.

    The budget counts what the packer stores, ``ceil(log2 N)`` bits per group, so the
    index of every group fits in ``L * bits_per_weight`` bits. Fractional rates are fine.
    For L = 1 every K >= 1 gives the same two points {+-1} up to scale; we return K = 1.
    """
    _check_LK(L, 0)
    if isinstance(bits_per_weight, bool) or not isinstance(bits_per_weight, numbers.Real):
        raise TypeError(f"bits_per_weight must be a real number, got "
                        f"{type(bits_per_weight).__name__}")
    bpw = float(bits_per_weight)
    if not math.isfinite(bpw) or bpw < 0:
        raise ValueError(f"bits_per_weight must be a finite number >= 0, got {bits_per_weight}")
    budget = math.floor(L * bpw + 1e-9)
    if L == 1:                              # N(1, K) = 2 for every K >= 1: same two directions
        return 1 if budget >= 1 else 0
    hi = 1                                  # bits(L, K) grows with K: bracket, then bisect
    while bits(L, hi) <= budget:
        hi *= 2
    lo = hi // 2 if hi > 1 else 0           # bits(L, lo) <= budget < bits(L, hi); bits(L, 0) = 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if bits(L, mid) <= budget else (lo, mid)
    return lo


# ---------------------------------------------------------------------------------------
# Enumeration (Fischer 1986). Scan the coordinates left to right with l coordinates and
# k pulses remaining. Points are ordered by their first coordinate 0, +1, -1, +2, -2, ...
# so the rank of y adds, for a coordinate y_i with |y_i| = a > 0,
#
#     N(l-1, k) + 2 sum_{j=1}^{a-1} N(l-1, k-j) + [y_i < 0] N(l-1, k-a),
#
# then k -= a, l -= 1. A zero adds nothing. Decoding walks the same thresholds down.
# (The fast tiers use the telescoped form of this sum; see _numba.py.)
# ---------------------------------------------------------------------------------------


def _check_point(y, K=None) -> tuple[np.ndarray, int]:
    y = np.asarray(y)
    if y.ndim != 1 or y.size < 1:
        raise ValueError(f"y must be a non-empty 1-D integer vector, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError("y must have an integer dtype (pyramid points are integer), "
                         f"got {y.dtype}")
    norm = sum(abs(int(v)) for v in y)     # exact: Python ints (any integer dtype)
    if K is not None:
        _, K = _check_LK(len(y), K)
    if K is not None and norm != K:
        raise ValueError(f"y has L1 norm {norm}, expected K={K}")
    return y, norm


def encode(y, K: int | None = None) -> int:
    """Rank of the pyramid point ``y`` (K = ||y||_1, checked if given) in range(count).

    ValueError beyond the table limits (module docstring)."""
    y, norm = _check_point(y, K)
    L, k = len(y), norm
    _check_table(L, k)
    N = count_table(L, k)
    index = 0
    for i, v in enumerate(int(v) for v in y):
        l, a = L - i, abs(v)
        if a == 0:
            continue
        index += N[l - 1][k] + 2 * sum(N[l - 1][k - j] for j in range(1, a))
        if v < 0:
            index += N[l - 1][k - a]
        k -= a
    return index


def _check_index(index, L, K) -> int:
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
        raise TypeError(f"index must be an integer, got {type(index).__name__}")
    index, n = int(index), count(L, K)
    if not 0 <= index < n:
        raise ValueError(f"index {index} out of range for N({L}, {K}) = {n}")
    return index


def decode(index: int, L: int, K: int) -> np.ndarray:
    """The pyramid point of rank ``index`` in P(L, K), as an int64 vector.

    ValueError beyond the table limits (module docstring)."""
    L, K = _check_LK(L, K)
    _check_table(L, K)
    i, k = _check_index(index, L, K), K
    N = count_table(L, K)
    y = np.zeros(L, dtype=np.int64)
    for p in range(L):
        l = L - p
        if i < N[l - 1][k]:                 # y_p = 0 (also covers k = 0)
            continue
        i -= N[l - 1][k]
        a = 1
        while i >= 2 * N[l - 1][k - a]:     # skip the +a and -a blocks
            i -= 2 * N[l - 1][k - a]
            a += 1
        if i >= N[l - 1][k - a]:            # the -a half of the block
            i -= N[l - 1][k - a]
            a = -a
        y[p] = a
        k -= abs(a)
    return y


# ---------------------------------------------------------------------------------------
# Search (Opus celt/vq.c, op_pvq_search). Maximise the cosine <x, y> / ||y|| over P(L, K).
# Work on a = |x| / max|x| (signs restored at the end; the scale does not change the answer).
# 1. If K > L/2, pre-project: y_j = floor((K + 0.8) a_j / sum(a)). This never overshoots K.
# 2. Add the remaining pulses one at a time where they raise <a,y>^2/||y||^2 most: with
#    xy = <a, y>, yy = ||y||^2, a pulse at j gives (xy + a_j)^2 / (yy + 2 y_j + 1). Compare
#    candidates by cross-multiplication, num_j * best_den > best_num * den_j (strict: the
#    first index wins ties), as Opus does to avoid divisions.
# 3. y_j <- -y_j where x_j < 0.
# Every sum runs left to right in float64, so the three tiers agree bit for bit.
# Greedy is not always optimal; the pyramid chapter measures how often it misses.
# ---------------------------------------------------------------------------------------


def _check_x(x) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 1 or x.size < 1:
        raise ValueError(f"x must be a non-empty 1-D vector, got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"x must be real (float or integer dtype), got {x.dtype}")
    x = x.astype(np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError("x contains NaN or Inf")
    if not np.any(x):
        raise ValueError("x is all zeros: it has no direction to quantize")
    return x


def search(x, K: int) -> np.ndarray:
    """Pyramid point of P(len(x), K) nearest in direction to ``x`` (greedy, Opus-style)."""
    x = _check_x(x)
    L, K = _check_LK(len(x), K)
    ax = [float(v) for v in np.abs(x) / np.max(np.abs(x))]
    y = [0] * L
    if K > L // 2:                          # 1. projection
        s = 0.0
        for v in ax:
            s += v
        rcp = (K + 0.8) / s
        y = [math.floor(v * rcp) for v in ax]
        if sum(y) > K:                      # cannot happen in exact arithmetic; be safe
            y = [0] * L
    xy, yy = 0.0, 0.0
    for v, n in zip(ax, y):
        xy += v * n
        yy += float(n * n)
    for _ in range(K - sum(y)):             # 2. greedy pulses
        best, best_num, best_den = 0, (xy + ax[0]) * (xy + ax[0]), yy + 2.0 * y[0] + 1.0
        for j in range(1, L):
            num, den = (xy + ax[j]) * (xy + ax[j]), yy + 2.0 * y[j] + 1.0
            if num * best_den > best_num * den:
                best, best_num, best_den = j, num, den
        xy += ax[best]
        yy += 2.0 * y[best] + 1.0
        y[best] += 1
    return np.where(x < 0, -np.array(y, dtype=np.int64), np.array(y, dtype=np.int64))  # 3.


def exhaustive_search(x, K: int) -> np.ndarray:
    """The true nearest direction in P(L, K), by trying every point (small L, K only).

    Ties in the cosine (within 1e-12) go to the smallest index.
    """
    x = _check_x(x)
    L, K = _check_LK(len(x), K)
    n = count(L, K)
    if n > 2_000_000:
        raise ValueError(f"N({L}, {K}) = {n} points is too many for exhaustive search")
    Y = decode_batch(ints_to_limbs(range(n), L, K), L, K, backend="numba").astype(np.float64)
    cos = (Y @ x) / np.linalg.norm(Y, axis=1)
    best = np.flatnonzero(cos >= cos.max() - 1e-12)[0]
    return Y[best].astype(np.int64)


# ---------------------------------------------------------------------------------------
# Batched API and the multi-limb index representation.
# ---------------------------------------------------------------------------------------


def ints_to_limbs(indices, L: int, K: int) -> np.ndarray:
    """Python ints -> (G, W) uint64 limbs, least significant first. Checks the range."""
    L, K = _check_LK(L, K)
    W = n_limbs(L, K)
    ints = [_check_index(i, L, K) for i in indices]
    out = np.zeros((len(ints), W), dtype=np.uint64)
    mask = (1 << 64) - 1
    for g, v in enumerate(ints):
        for w in range(W):
            out[g, w] = (v >> (64 * w)) & mask
    return out


def limbs_to_ints(limbs) -> list[int]:
    """(G, W) limbs (NumPy uint64 or torch int64 bit patterns) -> list of Python ints."""
    limbs = _to_numpy_limbs(limbs)
    return [sum(int(v) << (64 * w) for w, v in enumerate(row)) for row in limbs]


def _is_torch(obj) -> bool:
    return type(obj).__module__.startswith("torch")


def _to_numpy_limbs(limbs) -> np.ndarray:
    if _is_torch(limbs):
        import torch
        if limbs.dtype not in (torch.int64, torch.uint64):
            raise ValueError("index limbs must be uint64 (or int64 bit patterns), "
                             f"got {limbs.dtype}")
        limbs = limbs.detach().cpu().numpy()
    limbs = np.asarray(limbs)
    if limbs.ndim != 2:
        raise ValueError(f"indices must be a (G, W) array of 64-bit limbs, got shape {limbs.shape}")
    if limbs.dtype == np.int64:
        limbs = limbs.view(np.uint64)
    if limbs.dtype != np.uint64:
        raise ValueError(f"index limbs must be uint64 (or int64 bit patterns), got {limbs.dtype}")
    return limbs


def _check_limbs(limbs, L, K) -> np.ndarray:
    """Validate (G, W) limbs for (L, K): shape, dtype, and every index < N(L, K)."""
    limbs = _to_numpy_limbs(limbs)
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


def _check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def _check_X(X) -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[1] < 1:
        raise ValueError(f"X must be a (G, L) array of groups, got shape {X.shape}")
    if not (np.issubdtype(X.dtype, np.floating) or np.issubdtype(X.dtype, np.integer)):
        raise ValueError(f"X must be real (float or integer dtype), got {X.dtype}")
    X = np.ascontiguousarray(X, dtype=np.float64)
    if not np.all(np.isfinite(X)):
        raise ValueError("X contains NaN or Inf")
    zero = ~np.any(X, axis=1)
    if zero.any():
        raise ValueError(f"group {int(np.flatnonzero(zero)[0])} of X is all zeros: no direction")
    return X


def _refuse_beyond_K(Y, big, K) -> None:
    """ValueError naming the first entry of Y flagged in ``big`` (|y| > K), if any."""
    if big.any():
        g, c = (int(v) for v in np.argwhere(big)[0])
        raise ValueError(f"row {g} of Y has |y| = {abs(int(Y[g, c]))} > K={K} at column {c}, "
                         "so its L1 norm exceeds K (all groups of a batch share K)")


def _check_Y(Y, K) -> tuple[np.ndarray, int]:
    Y = np.asarray(Y)
    if Y.ndim != 2 or Y.shape[1] < 1:
        raise ValueError(f"Y must be a (G, L) array of pyramid points, got shape {Y.shape}")
    if not np.issubdtype(Y.dtype, np.integer):
        raise ValueError(f"Y must have an integer dtype, got {Y.dtype}")
    L = Y.shape[1]
    if K is None:                           # the batch's K: row 0's norm, in exact ints
        _check_table(L, 0)
        K = sum(abs(int(v)) for v in Y[0]) if len(Y) else 0
    L, K = _check_LK(L, K)
    _check_table(L, K)
    # A point has |y_i| <= K. Check it before anything can wrap: then the int64 norms are
    # exact (<= L K). A uint64 >= 2**63 would wrap in the int64 cast; abs(-2**63) is
    # -2**63 in int64, which read as uint64 is 2**63 > K.
    if Y.dtype == np.uint64:
        _refuse_beyond_K(Y, Y > K, K)
    Y = np.ascontiguousarray(Y, dtype=np.int64)
    A = np.abs(Y)
    _refuse_beyond_K(Y, A.view(np.uint64) > K, K)
    norms = A.sum(axis=1)
    bad = norms != K
    if bad.any():
        g = int(np.flatnonzero(bad)[0])
        raise ValueError(f"row {g} of Y has L1 norm {int(norms[g])}, expected K={K} "
                         "(all groups of a batch share K)")
    return Y, K


def search_batch(X, K: int, backend: str = "reference"):
    """``search`` on every row of X (G, L). NumPy in -> NumPy out; torch in -> torch out."""
    _check_backend(backend)
    if backend == "torch" or _is_torch(X):
        from . import _torch
        return _torch.search_batch(X, K, backend)
    X = _check_X(X)
    _, K = _check_LK(X.shape[1], K)
    if backend == "reference":
        return np.array([search(x, K) for x in X], dtype=np.int64).reshape(X.shape)
    from . import _numba
    return _numba.search_batch(X, K)


def encode_batch(Y, K: int | None = None, backend: str = "reference"):
    """Ranks of the rows of Y (G, L), all with ||y||_1 = K, as (G, W) limbs.

    K defaults to the norm of row 0. ValueError beyond the table limits (module docstring)."""
    _check_backend(backend)
    if backend == "torch" or _is_torch(Y):
        from . import _torch
        return _torch.encode_batch(Y, K, backend)
    Y, K = _check_Y(Y, K)
    L = Y.shape[1]
    if backend == "reference":
        return ints_to_limbs([encode(y, K) for y in Y], L, K)
    from . import _numba
    return _numba.encode_batch(Y, K)


def decode_batch(indices, L: int, K: int, backend: str = "reference"):
    """Points (G, L) int64 of (G, W) index limbs (or a list of Python ints).

    ValueError beyond the table limits (module docstring)."""
    _check_backend(backend)
    L, K = _check_LK(L, K)
    _check_table(L, K)
    if backend == "torch" or _is_torch(indices):
        from . import _torch
        return _torch.decode_batch(indices, L, K, backend)
    if isinstance(indices, (list, tuple, range)):
        indices = ints_to_limbs(indices, L, K)
    limbs = _check_limbs(indices, L, K)
    if backend == "reference":
        return np.array([decode(i, L, K) for i in limbs_to_ints(limbs)],
                        dtype=np.int64).reshape(len(limbs), L)
    from . import _numba
    return _numba.decode_batch(limbs, L, K)


# ---------------------------------------------------------------------------------------
# Bit packing: group g occupies bits [g b, (g+1) b) of one little-endian bit stream,
# b = bits(L, K), least significant bit of the index first. The last byte is zero-padded.
# ---------------------------------------------------------------------------------------


def pack_indices(indices, L: int, K: int) -> bytes:
    """Indices ((G, W) limbs or Python ints) -> ceil(G * bits(L, K) / 8) bytes."""
    L, K = _check_LK(L, K)
    if isinstance(indices, (list, tuple, range)):
        indices = ints_to_limbs(indices, L, K)
    limbs = _check_limbs(indices, L, K)
    b = bits(L, K)
    le = limbs.astype("<u8", copy=False)
    stream = np.unpackbits(le.view(np.uint8).reshape(len(le), 8 * le.shape[1]), axis=1,
                           bitorder="little")
    return np.packbits(stream[:, :b].reshape(-1), bitorder="little").tobytes()


def unpack_indices(data: bytes, n_groups: int, L: int, K: int) -> np.ndarray:
    """Inverse of ``pack_indices``: (n_groups, W) uint64 limbs. Checks length and range."""
    L, K = _check_LK(L, K)
    try:
        data = memoryview(data).cast("B")   # any contiguous bytes-like object, as bytes
    except TypeError:
        raise TypeError(f"data must be bytes-like, got {type(data).__name__}") from None
    if isinstance(n_groups, bool) or not isinstance(n_groups, (int, np.integer)):
        raise TypeError(f"n_groups must be an integer, got {type(n_groups).__name__}")
    n_groups = int(n_groups)
    b, W = bits(L, K), n_limbs(L, K)
    if n_groups < 0:
        raise ValueError(f"n_groups must be >= 0, got {n_groups}")
    expected = -(-n_groups * b // 8)
    if len(data) != expected:
        raise ValueError(f"{n_groups} groups of {b} bits need {expected} bytes, got {len(data)}")
    stream = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")
    if stream[n_groups * b:].any():
        raise ValueError("padding bits after the last group are not zero")
    full = np.zeros((n_groups, 64 * W), dtype=np.uint8)
    full[:, :b] = stream[:n_groups * b].reshape(n_groups, b)
    limbs = np.packbits(full, axis=1, bitorder="little").view("<u8").astype(np.uint64)
    return _check_limbs(limbs.reshape(n_groups, W), L, K)

"""The reference tier of ``pvqref.pyramid``: the textbook algorithms, the oracle.

Plain Python integers (exact at any size) and NumPy arrays, one group at a time, no speed
tricks: counting N(L, K), Fischer's enumeration (``encode`` / ``decode``), Opus's greedy
``search``, an ``exhaustive_search`` to check it against, and the batched loops
``search_batch`` / ``encode_batch`` / ``decode_batch`` that the Numba and torch tiers
(``_numba.py``, ``_torch.py``, same names) must match bit for bit.

Chapter: The pyramid lattice (book/pyramid.ipynb).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from .. import _checks

MAX_TABLE_L = 1024          # limits of the table-based paths (see pvqref.pyramid)
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


def check_LK(L, K) -> tuple[int, int]:
    """(L, K) as Python ints: L >= 1 coordinates, K >= 0 pulses (TypeError, ValueError)."""
    return (_checks.integer(L, "group size L", minimum=1),
            _checks.integer(K, "number of pulses K", minimum=0))


def count(L: int, K: int) -> int:
    """Number of points of the pyramid P(L, K), an exact Python int (closed form).

    Chapter: The pyramid lattice (book/pyramid.ipynb)."""
    L, K = check_LK(L, K)
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


# The messages of a bad batch of points, one wording for every tier's checks.
def points_shape_error(shape) -> ValueError:
    return ValueError(f"Y must be a (G, L) batch of pyramid points, got shape {tuple(shape)}")


def beyond_K_error(g: int, c: int, value: int, K: int) -> ValueError:
    return ValueError(f"row {g} of Y has |y| = {value} > K={K} at column {c}, so its L1 "
                      "norm exceeds K (all groups of a batch share K)")


def norm_error(g: int, norm: int, K: int) -> ValueError:
    return ValueError(f"row {g} of Y has L1 norm {norm}, expected K={K} "
                      "(all groups of a batch share K)")


# ... and of a bad batch of groups to search.
NOT_FINITE = "X contains NaN or Inf"


def zero_group_error(g: int) -> ValueError:
    return ValueError(f"group {g} of X is all zeros: no direction")


def check_table(L: int, K: int) -> None:
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
    ``MAX_TABLE_LIMBS``; see the module docstring).

    Chapter: The pyramid lattice (book/pyramid.ipynb)."""
    L, K = check_LK(L, K)
    check_table(L, K)
    rows = [[1] + [0] * K]                  # N(0, 0) = 1, N(0, k > 0) = 0
    for _ in range(L):
        prev, row = rows[-1], [1]
        for k in range(1, K + 1):
            row.append(prev[k] + prev[k - 1] + row[k - 1])
        rows.append(row)
    return tuple(tuple(r) for r in rows)


def log2_count(L: int, K: int) -> float:
    """log2 N(L, K): the information content of one group's index, in bits.

    Chapter: The pyramid lattice (book/pyramid.ipynb)."""
    return math.log2(count(L, K))


def bits(L: int, K: int) -> int:
    """ceil(log2 N(L, K)): bits stored per group by ``pack_indices`` (0 when K = 0).

    Chapter: The pyramid lattice (book/pyramid.ipynb)."""
    return (count(L, K) - 1).bit_length()


def n_limbs(L: int, K: int) -> int:
    """Number W of 64-bit limbs per index in the batched representation.

    Chapter: The pyramid lattice (book/pyramid.ipynb)."""
    return max(1, -(-bits(L, K) // 64))


def k_for_rate(L: int, bits_per_weight: float) -> int:
    """Largest K whose stored index fits the budget: ``bits(L, K) <= floor(L * bpw)``.

    The budget counts what the packer stores, ``ceil(log2 N)`` bits per group, so the
    index of every group fits in ``L * bits_per_weight`` bits. Fractional rates are fine.
    For L = 1 every K >= 1 gives the same two points {+-1} up to scale; we return K = 1.

    Chapter: The pyramid lattice (book/pyramid.ipynb)."""
    check_LK(L, 0)
    bpw = _checks.real(bits_per_weight, "bits_per_weight", minimum=0)
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
    _checks.integer_dtype(y, "y (a pyramid point)")
    norm = sum(abs(int(v)) for v in y)     # exact: Python ints (any integer dtype)
    if K is not None:
        _, K = check_LK(len(y), K)
    if K is not None and norm != K:
        raise ValueError(f"y has L1 norm {norm}, expected K={K}")
    return y, norm


def encode(y, K: int | None = None) -> int:
    """Rank of the pyramid point ``y`` (K = ||y||_1, checked if given) in range(count).

    ValueError beyond the table limits (see pvqref.pyramid).

    Chapter: The pyramid lattice (book/pyramid.ipynb)."""
    y, norm = _check_point(y, K)
    L, k = len(y), norm
    check_table(L, k)
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


def check_index(index, L, K) -> int:
    """index as a Python int in range(N(L, K))."""
    index, n = _checks.integer(index, "index"), count(L, K)
    if not 0 <= index < n:
        raise ValueError(f"index {index} out of range for N({L}, {K}) = {n}")
    return index


def decode(index: int, L: int, K: int) -> np.ndarray:
    """The pyramid point of rank ``index`` in P(L, K), as an int64 vector.

    ValueError beyond the table limits (see pvqref.pyramid).

    Chapter: The pyramid lattice (book/pyramid.ipynb)."""
    L, K = check_LK(L, K)
    check_table(L, K)
    i, k = check_index(index, L, K), K
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
    _checks.real_dtype(x, "x")
    x = x.astype(np.float64)
    _checks.finite(x, "x")
    if not np.any(x):
        raise ValueError("x is all zeros: it has no direction to quantize")
    return x


def search(x, K: int) -> np.ndarray:
    """Pyramid point of P(len(x), K) nearest in direction to ``x`` (greedy, Opus-style).

    Chapter: The pyramid lattice (book/pyramid.ipynb)."""
    x = _check_x(x)
    L, K = check_LK(len(x), K)
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


def points(L: int, K: int) -> np.ndarray:
    """Every point of P(L, K) as rows of an (N(L, K), L) int64 array, in rank order.

    The order is the enumeration's definition read literally: points whose first
    coordinate is 0 first, then +1, -1, +2, -2, ..., each block followed recursively by the
    points of the remaining coordinates. So ``points(L, K)[i] == decode(i, L, K)``.
    Small (L, K) only (at most 2,000,000 points).

    Chapter: The pyramid lattice (book/pyramid.ipynb)."""
    L, K = check_LK(L, K)
    if count(L, K) > 2_000_000:
        raise ValueError(f"N({L}, {K}) = {count(L, K)} points is too many to list")
    return _points(L, K)


@lru_cache(maxsize=32)
def _points(L: int, K: int) -> np.ndarray:
    if L == 1:
        return np.array([[0]] if K == 0 else [[K], [-K]], dtype=np.int64)
    blocks = [np.hstack([np.zeros((count(L - 1, K), 1), np.int64), _points(L - 1, K)])]
    for a in range(1, K + 1):
        rest = _points(L - 1, K - a)
        for head in (a, -a):
            blocks.append(np.hstack([np.full((len(rest), 1), head, np.int64), rest]))
    return np.vstack(blocks)


def exhaustive_search(x, K: int) -> np.ndarray:
    """The true nearest direction in P(L, K), by trying every point (small L, K only).

    Ties in the cosine (within 1e-12) go to the smallest index.

    Chapter: The pyramid lattice (book/pyramid.ipynb)."""
    x = _check_x(x)
    L, K = check_LK(len(x), K)
    if count(L, K) > 2_000_000:
        raise ValueError(f"N({L}, {K}) = {count(L, K)} points is too many for exhaustive "
                         "search")
    Y = points(L, K).astype(np.float64)
    cos = (Y @ x) / np.linalg.norm(Y, axis=1)
    best = np.flatnonzero(cos >= cos.max() - 1e-12)[0]
    return Y[best].astype(np.int64)


# ---------------------------------------------------------------------------------------
# The batched loops: the oracle of the fast tiers. Inputs are checked by pvqref.pyramid:
# X (G, L) float64 with no zero row, Y (G, L) int64 rows of L1 norm K, limbs (G, W) uint64
# with every index < N(L, K).
# ---------------------------------------------------------------------------------------

def _into(result: np.ndarray, out) -> np.ndarray:
    """``result``, or copied into the caller's checked buffer ``out`` (the fast tiers'
    signature)."""
    if out is None:
        return result
    out[...] = result
    return out


def search_batch(X: np.ndarray, K: int, out=None) -> np.ndarray:
    """``search`` on every row of X: (G, L) int64.

    Chapter: The pyramid lattice (book/pyramid.ipynb)."""
    return _into(np.array([search(x, K) for x in X], dtype=np.int64).reshape(X.shape), out)


def encode_batch(Y: np.ndarray, K: int, out=None) -> np.ndarray:
    """``encode`` of every row of Y, as (G, W) uint64 limbs.

    Chapter: The pyramid lattice (book/pyramid.ipynb)."""
    return _into(ints_to_limbs([encode(y, K) for y in Y], Y.shape[1], K), out)


def decode_batch(limbs: np.ndarray, L: int, K: int, out=None) -> np.ndarray:
    """``decode`` of every index in (G, W) limbs: (G, L) int64.

    Chapter: The pyramid lattice (book/pyramid.ipynb)."""
    return _into(np.array([decode(i, L, K) for i in limbs_to_ints(limbs)],
                          dtype=np.int64).reshape(len(limbs), L), out)


# ---------------------------------------------------------------------------------------
# Indices as 64-bit limbs: index = sum_w limbs[w] 2^(64 w), least significant limb first.
# ---------------------------------------------------------------------------------------

def ints_to_limbs(indices, L: int, K: int) -> np.ndarray:
    """Python ints -> (G, W) uint64 limbs, least significant first. Checks the range.

    Chapter: The pyramid lattice (book/pyramid.ipynb)."""
    L, K = check_LK(L, K)
    W = n_limbs(L, K)
    ints = [check_index(i, L, K) for i in indices]
    out = np.zeros((len(ints), W), dtype=np.uint64)
    mask = (1 << 64) - 1
    for g, v in enumerate(ints):
        for w in range(W):
            out[g, w] = (v >> (64 * w)) & mask
    return out


def limbs_to_ints(limbs: np.ndarray) -> list[int]:
    """(G, W) uint64 limbs (or int64 holding the same bit patterns) -> Python ints.

    Chapter: The pyramid lattice (book/pyramid.ipynb)."""
    limbs = np.asarray(limbs)
    limbs = limbs.view(np.uint64) if limbs.dtype == np.int64 else limbs
    return [sum(int(v) << (64 * w) for w, v in enumerate(row)) for row in limbs]

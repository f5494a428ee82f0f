"""Numba tier of ``pvqref.pyramid``: batched search, encode and decode, exact at any width.

Enumeration
-----------
Indices are fixed-width unsigned integers of W 64-bit limbs (least significant first),
the representation of ``pvqref.pyramid``'s batched API. Encoding and decoding need only
add, subtract and compare on entries of two precomputed tables, so we never multiply or
divide big numbers:

    N[l, k] = N(l, k)                      (count of P(l, k))
    M[l, k] = N(l, k) + N(l-1, k)          (= the number of points of P(l, k+a) whose first
                                            coordinate has magnitude >= a, for any a >= 1)

Telescoping the reference sum with the recurrence N(l,k) - N(l,k-1) = N(l-1,k) + N(l-1,k-1)
turns the rank contribution of a coordinate with |y_i| = a into one difference of table
entries (a = 0 included: it gives N(l, k) - N(l, k) = 0, so no branch on zeros):

    y_i = +a:  N(l, k) - M(l, k-a)         y_i = -a or 0:  N(l, k) - N(l, k-a).

Every contribution is >= 0 and their sum is the rank, < N(L, K). So with one limb
(N(L, K) <= 2^64) plain wrapping uint64 sums are exact; with W limbs we add the
contributions as 2W signed 32-bit digits without carrying (|digit sum| < L 2^32 < 2^43)
and propagate the carries once per group.

Decode sets j = N(l, k) - i and finds the largest a with M(l, k-a) >= j by scanning a = 1,
2, ... (total scan length over a group is K): compares only, and two subtractions per
non-zero (j, then the rank inside the +a or -a block). Every number in play is <= N(l, k),
so the multi-limb compares and subtractions run on the width[l, k] low limbs only
(``_numba_limbs.py``: the kernels for indices wider than one limb).

Search
------
The greedy step must pick what the reference's float64 scan picks. We first score every
candidate in float32 (a vectorised sweep; see ``_scores``) and fall back to the float64
scan only when the float32 scores cannot tell the winner apart (``_best_pulse``).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from numba import njit

from ._numba_limbs import decode_limbs, encode_limbs
from .reference import NOT_FINITE, check_LK, check_table, n_limbs, zero_group_error

_ZERO = np.uint64(0)
_ONE = np.uint64(1)


# ---- tables ------------------------------------------------------------------------------

@njit(cache=True)
def _add_tab(acc, T, l, k):
    """acc += T[l, k]  (mod 2^(64 W))."""
    c = _ZERO
    for w in range(acc.shape[0]):
        a = acc[w]
        s = a + T[l, k, w]
        c1 = s < a
        t = s + c
        c = np.uint64(c1) + np.uint64(t < s)  # at most one of the two can carry
        acc[w] = t


@njit(cache=True)
def _build_tables(L, K, W):
    NM = np.zeros((2, L + 1, K + 1, W), dtype=np.uint64)   # N and M side by side
    N, M = NM[0], NM[1]
    for l in range(L + 1):
        N[l, 0, 0] = _ONE
    for l in range(1, L + 1):
        for k in range(1, K + 1):           # N(l,k) = N(l-1,k) + N(l-1,k-1) + N(l,k-1)
            acc = N[l, k]
            _add_tab(acc, N, l - 1, k)
            _add_tab(acc, N, l - 1, k - 1)
            _add_tab(acc, N, l, k - 1)
    M[:] = N
    for l in range(1, L + 1):
        for k in range(K + 1):              # M(l,k) = N(l,k) + N(l-1,k); M(l,K) may wrap, unused
            _add_tab(M[l, k], N, l - 1, k)
    width = np.ones((L + 1, K + 1), dtype=np.int64)
    for l in range(L + 1):
        for k in range(K + 1):              # limbs needed by N(l, k) (at least 1)
            for w in range(W - 1, 0, -1):
                if N[l, k, w] != _ZERO:
                    width[l, k] = w + 1
                    break
    return NM, width


@lru_cache(maxsize=8)
def tables(L: int, K: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(N, M, width, NM) for P(L', K'), L' <= L, K' <= K: W = n_limbs(L, K) limbs per entry;
    width[l, k] = limbs that N(l, k) needs (decode works on no more); NM stacks N and M
    (N = NM[0], M = NM[1]) so the kernels pick either by index instead of by branch.
    ValueError beyond pvqref.pyramid's table limits."""
    L, K = check_LK(L, K)
    check_table(L, K)
    NM, width = _build_tables(L, K, n_limbs(L, K))
    return NM[0], NM[1], width, NM


@lru_cache(maxsize=8)
def _one_limb(L: int, K: int) -> np.ndarray:
    """NM as a contiguous (2, L+1, K+1) uint64 table, for indices that fit one limb."""
    return np.ascontiguousarray(tables(L, K)[3][..., 0])


# ---- encode ---------------------------------------------------------------------------------

@njit(cache=True)
def _encode_one_limb(Y, K, NM1, out):
    G, L = Y.shape
    for g in range(G):
        acc, k = _ZERO, K
        for p in range(L):
            v = Y[g, p]
            a, l = abs(v), L - p
            acc += NM1[0, l, k] - NM1[np.int64(v > 0), l, k - a]   # 0 when v = 0
            k -= a
        out[g, 0] = acc


# ---- decode ---------------------------------------------------------------------------------

@njit(cache=True)
def _decode_one_limb(I, K, NM1, out):
    G, L = out.shape
    for g in range(G):
        i, k = I[g, 0], K
        for p in range(L):
            out[g, p] = 0
            l = L - p
            if k == 0 or i < NM1[0, l - 1, k]:
                continue                     # y_p = 0
            j = NM1[0, l, k] - i             # in [1, M(l, k-1)]
            a = 1
            while a < k and NM1[1, l, k - a - 1] >= j:
                a += 1                       # largest a with M(l, k-a) >= j
            # The rank inside the block is M(l,k-a) - j; it is in the -a half iff
            # j <= M(l,k-a) - N(l-1,k-a) = N(l,k-a), and then the rank there is N(l,k-a) - j.
            pos = np.int64(NM1[0, l, k - a] < j)
            i = NM1[pos, l, k - a] - j
            out[g, p] = a * (2 * pos - 1)
            k -= a


# ---- search ---------------------------------------------------------------------------------
#
# Write the reference's float64 quantities for candidate j as n_j = fl(fl(xy + a_j)^2) and
# e_j = yy + 2 y_j + 1 (an exact integer), and R_j = n_j / e_j (a real number). The scan keeps
# a best b and moves to j when fl(n_j e_b) > fl(n_b e_j); with u = 2^-53 a move implies
# R_j > R_b (1-u)/(1+u), and a refusal R_b >= R_j (1-u)/(1+u). So if m maximises R, the best
# after reaching m has R >= R_m (1-u)/(1+u), and each of the < L later moves loses at most
# the same factor: the scan's answer b has R_b >= R_m (1 - 2^-42) (L <= 1024).
#
# The float32 score s_j = (xy + a_j)^2 / (yy + d_j), d_j = 2 y_j + 1, with xy, a_j and yy
# rounded to float32 and four float32 operations (seven roundings, all of numbers >= 0, so
# no cancellation; t = xy + a_j counts twice, being squared) lies within the factors
# (1 - v)^6 / (1 + v)^2 and (1 + v)^6 / (1 - v)^2 = 1 + 8v + O(v^2) of (xy + a_j)^2 / e_j,
# v = 2^-24, up to an absolute 2^-130 where a_j is below float32's normal range; with n_j's
# own float64 roundings,
# |s_j - R_j| <= eps R_j + 2^-130, eps = 2^-21 (1 + 2^-19). (No overflow: xy + a_j <= K + 1.)
# Let top = max_j s_j and thr = fl32(top (1 - 2^-19)) <= top (1 - 2^-19)(1 + v). A j with
# s_j < thr has R_j < (thr + 2^-130) / (1 - eps) < (top - 2^-130)(1 - 2^-42) / (1 + eps)
# <= R_m (1 - 2^-42) <= R_b, since (1 - 2^-19)(1 + v)(1 + eps)/(1 - eps) < 1 - 2^-21 and
# top >= 2^-30 (the candidate with a_j = 1 scores (xy+1)^2 / (yy + 2 y_j + 1) >= 1/(K+1)^2).
# Such a j is not the scan's answer. So when exactly one j has s_j >= thr, that j is the
# reference's choice, bit for bit; otherwise (a near-tie, or an exact one: about 3% of the
# pulses for Gaussian groups at L = 128 after the projection, where the scores of the
# leading candidates differ by ~1e-4) ``_near_tie`` settles it in float64.
# ---------------------------------------------------------------------------------------------

_KEEP = np.float32(1.0 - 2.0 ** -19)        # thr = top * _KEEP (exact in float32)

# The sweeps below vectorise: error_model="numpy" drops the zero-division branch
# (denominators are >= 1); the max runs on the int32 bit patterns of the scores, which
# order like the floats because every score is >= 0 (LLVM vectorises integer max
# reductions but not float ones); the threshold count sums small integers in floats,
# exact in any order, so fastmath may reorder it (measured: 19.7 -> 21.6 M weights/s at
# (128, 187) against the int32 count, whose sums Numba widens to int64).


@njit(cache=True, error_model="numpy")
def _scores(a32, d32, xy32, yy32, s32):
    """s32[j] = (xy + a_j)^2 / (yy + d_j) in float32."""
    for j in range(a32.shape[0]):
        t = xy32 + a32[j]
        s32[j] = t * t / (yy32 + d32[j])


@njit(cache=True)
def _top(bits):
    """max_j bits[j] (the int32 patterns of non-negative float32 scores)."""
    top = np.int32(0)
    for j in range(bits.shape[0]):
        top = max(top, bits[j])
    return top


# Counting in floats under fastmath's reassociation is exact: the sums are of small
# integers (a count <= L and an index sum <= L (L - 1) / 2), which float32 (L <= 4096:
# sums < 2^24) or float64 (larger L) adds without rounding in any order, so the loop may
# be vectorised; the compares are plain float compares.
_FAST_SUM = {"reassoc", "nnan", "ninf", "nsz"}


@njit(cache=True, fastmath=_FAST_SUM)
def _above(s32, thr, idx):
    """(count of j with s32[j] >= thr, the sum of those j), in idx's float type (idx[j] =
    j): the index when the count is 1."""
    n, at = idx[0] * 0, idx[0] * 0
    for j in range(s32.shape[0]):
        hit = idx[1] * (s32[j] >= thr)      # idx[1] = 1
        n += hit
        at += hit * idx[j]
    return n, at


@njit(cache=True)
def _beats(ax, y, xy, yy, j, b):
    """The reference scan's test "j replaces the best b": fl(n_j e_b) > fl(n_b e_j)."""
    tj, tb = xy + ax[j], xy + ax[b]
    return (tj * tj) * (yy + 2.0 * y[b] + 1.0) > (tb * tb) * (yy + 2.0 * y[j] + 1.0)


@njit(cache=True)
def _near_tie(ax, y, xy, yy, bits, thr, thr2, cand):
    """The reference's choice when several scores reach thr (see the comment above).

    Let D = {j : s_j >= thr2}, thr2 = fl32(thr (1 - 2^-19)): by the same bound every j
    outside D is beaten by every j with s_j >= thr, in the reference's own float64 test,
    whichever way round it is asked. Take c = the scan restricted to those j with
    s_j >= thr. If c beats every earlier member of D and no later member of D beats c,
    the full scan ends at c: it moves to c from whatever best it holds on arriving (every
    j < c is beaten by c), then stays. Else (not seen in practice) scan everything."""
    nd = 0
    for j in range(bits.shape[0]):
        if bits[j] >= thr2:
            cand[nd] = j
            nd += 1
    c = -1
    for i in range(nd):
        j = cand[i]
        if bits[j] >= thr and (c < 0 or _beats(ax, y, xy, yy, j, c)):
            c = j
    for i in range(nd):
        j = cand[i]
        if (j < c and not _beats(ax, y, xy, yy, c, j)) or \
                (j > c and _beats(ax, y, xy, yy, j, c)):
            return _scan(ax, y, xy, yy)
    return c


@njit(cache=True)
def _scan(ax, y, xy, yy):
    """The reference's greedy step: the first j maximising (xy + a_j)^2 / (yy + 2 y_j + 1),
    by its left-to-right scan with strict cross-multiplied float64 comparisons."""
    t = xy + ax[0]
    best, bn, bd = 0, t * t, yy + 2.0 * y[0] + 1.0
    for j in range(1, ax.shape[0]):
        t = xy + ax[j]
        num, den = t * t, yy + 2.0 * y[j] + 1.0
        if num * bd > bn * den:
            best, bn, bd = j, num, den
    return best


@njit(cache=True, error_model="numpy")       # divisors are > 0 (checked inputs)
def _search_kernel(X, K, idx, out):
    G, L = X.shape
    ax = np.empty(L)
    a32 = np.empty(L, dtype=np.float32)
    d32 = np.empty(L, dtype=np.float32)
    s32 = np.empty(L, dtype=np.float32)
    bits = s32.view(np.int32)
    box = np.zeros(1, dtype=np.int32)        # one score, seen as int32 bits and as float32
    fbox = box.view(np.float32)
    y = np.zeros(L, dtype=np.int64)
    cand = np.empty(L, dtype=np.int64)
    for g in range(G):
        m = 0.0
        for j in range(L):
            m = max(m, abs(X[g, j]))
        for j in range(L):
            ax[j] = abs(X[g, j]) / m
        y[:] = 0
        used = 0
        if K > L // 2:                       # projection, the sum left to right
            s = 0.0
            for j in range(L):
                s += ax[j]
            rcp = (K + 0.8) / s
            for j in range(L):
                y[j] = np.int64(np.floor(ax[j] * rcp))
                used += y[j]
            if used > K:
                y[:] = 0
                used = 0
        xy, yy = 0.0, 0.0
        for j in range(L):
            xy += ax[j] * y[j]
            yy += float(y[j] * y[j])
            a32[j] = np.float32(ax[j])
            d32[j] = np.float32(2 * y[j] + 1)   # exact: 2 y_j + 1 <= 2K + 1 < 2^24
        for _ in range(K - used):            # greedy pulses
            _scores(a32, d32, np.float32(xy), np.float32(yy), s32)
            box[0] = _top(bits)
            fbox[0] *= _KEEP                 # thr = top (1 - 2^-19), as float32, then bits
            thr = box[0]
            n, at = _above(s32, fbox[0], idx)
            c = np.int64(at)
            if n != 1:                       # a near-tie (or an exact one)
                fbox[0] *= _KEEP
                c = _near_tie(ax, y, xy, yy, bits, thr, box[0], cand)
            xy += ax[c]
            yy += 2.0 * y[c] + 1.0
            y[c] += 1
            d32[c] += np.float32(2.0)
        for j in range(L):
            out[g, j] = -y[j] if X[g, j] < 0 else y[j]


@njit(cache=True, fastmath={"reassoc"})
def _not_finite(flat):
    """True if the 1-D array holds a NaN or Inf: x * 0 is NaN exactly for those, and a sum
    is NaN once any term is, in whatever order it is added (so it vectorises)."""
    acc = 0.0
    for i in range(flat.shape[0]):
        acc += flat[i] * 0.0
    return acc != acc


@njit(cache=True)
def _first_bad_group(X):
    """(-1, 1) if X holds a NaN or Inf anywhere (looked for first, as the reference tier
    does; the message names no group), else (g, 2) for the first group of only zeros, or
    (-1, 0), before the search writes anything. A group is all zeros when the OR of its
    bit patterns, shifted past the sign bit, is 0 (-0.0 counts as zero)."""
    if _not_finite(X.reshape(-1)):
        return -1, 1
    bits = X.view(np.uint64)
    for g in range(X.shape[0]):
        nz = _ZERO
        for j in range(X.shape[1]):
            nz |= bits[g, j] << _ONE
        if nz == _ZERO:
            return g, 2
    return -1, 0


# ---- entry points: the reference tier's names (inputs checked by pvqref.pyramid) -----------
# ``out`` (optional) is a C-contiguous writable array of the result's shape and dtype,
# checked by pvqref.pyramid; every entry is written. search_batch checks X's values itself.

def search_batch(X: np.ndarray, K: int, out: np.ndarray | None = None) -> np.ndarray:
    g, why = _first_bad_group(X)
    if why:
        raise ValueError(NOT_FINITE) if why == 1 else zero_group_error(g)
    out = np.empty(X.shape, dtype=np.int64) if out is None else out
    L = X.shape[1]                           # idx[j] = j, for _above's exact float sums
    _search_kernel(X, K, np.arange(max(L, 2), dtype=np.float32 if L <= 4096 else np.float64),
                   out)
    return out


def encode_batch(Y: np.ndarray, K: int, out: np.ndarray | None = None) -> np.ndarray:
    L = Y.shape[1]
    W = n_limbs(L, K)
    out = np.empty((len(Y), W), dtype=np.uint64) if out is None else out
    if W == 1:
        _encode_one_limb(Y, K, _one_limb(L, K), out)
    else:
        _, _, width, NM = tables(L, K)
        encode_limbs(Y, K, NM, width, out)
    return out


def decode_batch(I: np.ndarray, L: int, K: int, out: np.ndarray | None = None) -> np.ndarray:
    out = np.empty((len(I), L), dtype=np.int64) if out is None else out
    if I.shape[1] == 1:
        _decode_one_limb(I, K, _one_limb(L, K), out)
    else:
        _, _, width, NM = tables(L, K)
        decode_limbs(I, K, NM, width, out)
    return out


def count_limbs(L: int, K: int) -> np.ndarray:
    """N(L, K) as W limbs, from the jitted table (the tests compare it with ``count``)."""
    return tables(L, K)[0][L, K].copy()


__all__ = ["search_batch", "encode_batch", "decode_batch", "tables", "count_limbs"]

"""Numba tier of ``pvqref.pyramid``: batched search, encode and decode, exact at any width.

Indices are fixed-width unsigned integers of W 64-bit limbs (least significant first),
the representation of ``pvqref.pyramid``'s batched API. Encoding and decoding need only
add, subtract and compare on entries of two precomputed tables, so we never multiply or
divide big numbers:

    N[l, k] = N(l, k)                      (count of P(l, k))
    M[l, k] = N(l, k) + N(l-1, k)          (= the number of points of P(l, k+a) whose first
                                            coordinate has magnitude >= a, for any a >= 1)

Telescoping the reference sum with the recurrence N(l,k) - N(l,k-1) = N(l-1,k) + N(l-1,k-1)
turns the rank contribution of a coordinate with |y_i| = a > 0 into two table look-ups:

    y_i = +a:  N(l, k) - M(l, k-a)         y_i = -a:  N(l, k) - N(l, k-a).

So points whose first coordinate has magnitude >= a fill the last M(l, k-a) ranks. Decode
sets j = N(l, k) - i and finds the largest a with M(l, k-a) >= j by scanning a = 1, 2, ...
(total scan length over a group is K): compares only, and two subtractions per non-zero
(j, then the rank inside the +a or -a block).

Encoding adds and subtracts modulo 2^(64 W); the intermediate value may wrap but the
final rank is < N(L, K) <= 2^(64 W), so the result is exact. Carries are detected with
unsigned comparisons (s = a + b wraps iff s < a).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from numba import njit

from . import _check_LK, _check_table, n_limbs

_ZERO = np.uint64(0)
_ONE = np.uint64(1)


# ---- multi-limb primitives on rows of a (L+1, K+1, W) table ------------------------------

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
def _sub_tab(acc, T, l, k):
    """acc -= T[l, k]  (mod 2^(64 W))."""
    b = _ZERO
    for w in range(acc.shape[0]):
        a = acc[w]
        t = T[l, k, w]
        d = a - t
        b1 = a < t
        e = d - b
        b = np.uint64(b1) + np.uint64(d < b)  # at most one of the two can borrow
        acc[w] = e


@njit(cache=True)
def _tab_minus(out, T, l, k, v, nw):
    """out = T[l, k] - v on the low nw limbs."""
    b = _ZERO
    for w in range(nw):
        a = T[l, k, w]
        d = a - v[w]
        b1 = a < v[w]
        e = d - b
        b = np.uint64(b1) + np.uint64(d < b)  # at most one of the two can borrow
        out[w] = e


@njit(cache=True)
def _pair_minus(out, NM, s, l, k, v, nw):
    """out = NM[s, l, k] - v on the low nw limbs (s = 0: N, s = 1: M; chosen without a branch)."""
    b = _ZERO
    for w in range(nw):
        a = NM[s, l, k, w]
        d = a - v[w]
        b1 = a < v[w]
        e = d - b
        b = np.uint64(b1) + np.uint64(d < b)
        out[w] = e


@njit(cache=True)
def _lt_vec_tab(v, T, l, k, nw):
    """v < T[l, k], both known to fit in the low nw limbs."""
    for w in range(nw - 1, -1, -1):
        t = T[l, k, w]
        if v[w] != t:
            return v[w] < t
    return False


@njit(cache=True)
def _lt_tab_vec(T, l, k, v, nw):
    """T[l, k] < v, both known to fit in the low nw limbs."""
    for w in range(nw - 1, -1, -1):
        t = T[l, k, w]
        if v[w] != t:
            return t < v[w]
    return False


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
    (N = NM[0], M = NM[1]) so decode can pick either by index instead of by branch.
    ValueError beyond pvqref.pyramid's table limits."""
    L, K = _check_LK(L, K)
    _check_table(L, K)
    NM, width = _build_tables(L, K, n_limbs(L, K))
    return NM[0], NM[1], width, NM


# ---- the kernels --------------------------------------------------------------------------

@njit(cache=True)
def _encode_kernel(Y, K, N, M, out):
    G, L = Y.shape
    for g in range(G):
        acc = out[g]
        k = K
        for p in range(L):
            v = Y[g, p]
            if v == 0:
                continue
            l, a = L - p, abs(v)
            _add_tab(acc, N, l, k)
            if v > 0:
                _sub_tab(acc, M, l, k - a)
            else:
                _sub_tab(acc, N, l, k - a)
            k -= a


@njit(cache=True)
def _decode_kernel(I, K, NM, width, out):
    # Every number in play while decoding coordinate p is <= N(l, k), so all compares and
    # subtractions run on the width[l, k] low limbs only (fewer as the scan proceeds).
    G, W = I.shape
    L = out.shape[1]
    N, M = NM[0], NM[1]
    i = np.empty(W, dtype=np.uint64)
    j = np.empty(W, dtype=np.uint64)
    for g in range(G):
        i[:] = I[g]
        k = K
        for p in range(L):
            if k == 0:
                break                        # the rest is zero (out starts zeroed)
            l = L - p
            nw = width[l, k]
            if _lt_vec_tab(i, N, l - 1, k, nw):
                continue                     # y_p = 0
            _tab_minus(j, N, l, k, i, nw)    # j = N(l,k) - i, in [1, M(l,k-1)]
            a = 1
            while a < k and not _lt_tab_vec(M, l, k - a - 1, j, nw):
                a += 1                       # largest a with M(l, k-a) >= j
            # Rank inside the block: M(l,k-a) - j; it is in the -a half iff that is
            # >= N(l-1,k-a), i.e. iff j <= M(l,k-a) - N(l-1,k-a) = N(l,k-a), and then
            # the rank inside the -a half is N(l,k-a) - j. One compare, one subtraction,
            # no branch on the (unpredictable) sign.
            pos = np.int64(_lt_tab_vec(N, l, k - a, j, nw))
            _pair_minus(i, NM, pos, l, k - a, j, nw)
            out[g, p] = a * (2 * pos - 1)
            k -= a


@njit(cache=True)
def _best_pulse(ax, d, xy, yy, num, den, score):
    """Index the reference's left-to-right cross-multiplied scan would pick.

    The scan's loop-carried branch is slow. Instead take c = first index of the largest
    num/den (a branch-free pass plus a short argmax), then check in the reference's own
    comparisons that c beats every j < c and no j > c beats c: then the scan ends at c.
    If the check fails (a near-tie in float rounding) run the scan itself.
    """
    L = ax.shape[0]
    for j in range(L):
        t = xy + ax[j]
        num[j] = t * t
        den[j] = yy + d[j]                   # == yy + 2 y_j + 1 exactly (small integers)
        score[j] = num[j] / den[j]
    c, top = 0, score[0]
    for j in range(1, L):
        if score[j] > top:
            c, top = j, score[j]
    nc, dc = num[c], den[c]
    bad = False
    for j in range(c):
        bad |= not (nc * den[j] > num[j] * dc)
    for j in range(c + 1, L):
        bad |= num[j] * dc > nc * den[j]
    if bad:
        c, bn, bd = 0, num[0], den[0]
        for j in range(1, L):
            if num[j] * bd > bn * den[j]:
                c, bn, bd = j, num[j], den[j]
    return c


@njit(cache=True)
def _search_kernel(X, K, out):
    G, L = X.shape
    ax = np.empty(L)
    d = np.empty(L)
    num, den, score = np.empty(L), np.empty(L), np.empty(L)
    y = np.zeros(L, dtype=np.int64)
    for g in range(G):
        m = 0.0
        for j in range(L):
            m = max(m, abs(X[g, j]))
        for j in range(L):
            ax[j] = abs(X[g, j]) / m
        y[:] = 0
        used = 0
        if K > L // 2:                       # projection
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
            d[j] = 2.0 * y[j] + 1.0          # yy + d[j] == yy + 2 y_j + 1 exactly (integers)
        for _ in range(K - used):            # greedy pulses
            c = _best_pulse(ax, d, xy, yy, num, den, score)
            xy += ax[c]
            yy += d[c]
            d[c] += 2.0
            y[c] += 1
        for j in range(L):
            out[g, j] = -y[j] if X[g, j] < 0 else y[j]


# ---- entry points (inputs already validated by pvqref.pyramid) -----------------------------

def search_batch(X: np.ndarray, K: int) -> np.ndarray:
    out = np.empty(X.shape, dtype=np.int64)
    _search_kernel(X, K, out)
    return out


def encode_batch(Y: np.ndarray, K: int) -> np.ndarray:
    L = Y.shape[1]
    N, M = tables(L, K)[:2]
    out = np.zeros((len(Y), N.shape[2]), dtype=np.uint64)
    _encode_kernel(Y, K, N, M, out)
    return out


def decode_batch(I: np.ndarray, L: int, K: int) -> np.ndarray:
    _, _, width, NM = tables(L, K)
    out = np.zeros((len(I), L), dtype=np.int64)
    _decode_kernel(I, K, NM, width, out)
    return out


def count_limbs(L: int, K: int) -> np.ndarray:
    """N(L, K) as W limbs, from the jitted table (the tests compare it with ``count``)."""
    return tables(L, K)[0][L, K].copy()


__all__ = ["search_batch", "encode_batch", "decode_batch", "tables", "count_limbs"]

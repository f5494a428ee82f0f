"""Multi-limb kernels of ``pvqref.pyramid``'s Numba tier: encode and decode of indices wider
than 64 bits (``_numba.py`` states the telescoped rank and the tables N, M they use).

Numbers are W little-endian uint64 limbs. While coding coordinate p every number in play is
<= N(l, k), so it fits the ``width[l, k]`` low limbs, and that width only falls along a group.
The encoder adds each contribution on those limbs only. A limb loop over a run-time width
does not unroll, so the decoder runs each stretch of coordinates of one width ``nw`` in a
kernel compiled for that width (``_segment(nw)``, nw = 2..8, indices of up to 512 bits; one
kernel with the run-time width above that) and the stretch where nw = 1 in the one-limb loop.
Measured at (L, K) = (128, 187), 384-bit indices, one thread on an AMD EPYC: decode 30 M
weights/s with the run-time width everywhere, 39 with the specialisations; encode 54 -> 70
with the width-limited adds.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_ZERO = np.uint64(0)
_LO32 = np.uint64(0xFFFFFFFF)
_SH32 = np.uint64(32)
MAX_SPECIALISED = 8                          # widths 2..8 get a compiled segment of their own


# ---- encode ---------------------------------------------------------------------------------

@njit(cache=True)
def encode_limbs(Y, K, NM, width, out):
    """Ranks of the rows of Y into out (G, W). Each contribution N(l,k) - T(l,k-a) is added as
    low and high 32-bit digit differences into int64 accumulators (no carries inside the
    loop); one signed carry pass per group turns the digit sums into the W limbs of the rank.
    N(l,k) and T(l,k-a) <= N(l,k) both fit width[l,k] limbs, so only those are touched."""
    G, L = Y.shape
    W = NM.shape[3]
    lo = np.empty(W, dtype=np.int64)
    hi = np.empty(W, dtype=np.int64)
    for g in range(G):
        lo[:] = 0
        hi[:] = 0
        k = K
        for p in range(L):
            v = Y[g, p]
            if v == 0:
                continue
            a, l = abs(v), L - p
            P, T = NM[0, l, k], NM[np.int64(v > 0), l, k - a]
            for w in range(width[l, k]):
                lo[w] += np.int64(P[w] & _LO32) - np.int64(T[w] & _LO32)
                hi[w] += np.int64(P[w] >> _SH32) - np.int64(T[w] >> _SH32)
            k -= a
        c = np.int64(0)
        for w in range(W):                   # carries: the digits of a number >= 0
            t0 = lo[w] + c
            t1 = hi[w] + (t0 >> 32)
            c = t1 >> 32
            out[g, w] = np.uint64(t0 & 0xFFFFFFFF) | (np.uint64(t1 & 0xFFFFFFFF) << _SH32)


# ---- decode ---------------------------------------------------------------------------------
#
# Per coordinate (the algebra is the one-limb loop's, in _numba.py): y_p = 0 iff
# i < N(l-1, k); else j = N(l, k) - i, a = the largest magnitude with M(l, k-a) >= j, the
# sign is + iff N(l, k-a) < j, and the rank inside the block is T(l, k-a) - j.

def _segment(nw):
    """The decoder's loop over coordinates p.. of one group while width[l, k] == nw (nw a
    compile-time constant, so the limb loops unroll), or while width[l, k] > MAX_SPECIALISED
    with the run-time width (nw = 0). Returns the next (p, k)."""

    @njit(inline="always")
    def v_lt_t(v, T, l, k, n):               # v < T[l, k]: the most significant unequal limb
        r, decided = False, False
        for w in range(n - 1, -1, -1):
            t = T[l, k, w]
            if not decided and v[w] != t:
                r, decided = v[w] < t, True
        return r

    @njit(inline="always")
    def t_lt_v(T, l, k, v, n):               # T[l, k] < v
        r, decided = False, False
        for w in range(n - 1, -1, -1):
            t = T[l, k, w]
            if not decided and v[w] != t:
                r, decided = t < v[w], True
        return r

    @njit(inline="always")
    def t_minus_v(out, T, l, k, v, n):       # out = T[l, k] - v
        b = _ZERO
        for w in range(n):
            a = T[l, k, w]
            d = a - v[w]
            b1 = a < v[w]
            out[w] = d - b
            b = np.uint64(b1) + np.uint64(d < b)   # at most one of the two can borrow

    @njit(cache=True)
    def segment(i, j, k, p, NM, width, y):
        L = y.shape[0]
        N, M = NM[0], NM[1]
        while p < L and k > 0:
            l = L - p
            n = width[l, k]
            if (nw > 0 and n != nw) or (nw == 0 and n <= MAX_SPECIALISED):
                break
            n = nw if nw > 0 else n
            if not v_lt_t(i, N, l - 1, k, n):        # i >= N(l-1, k): y_p != 0
                t_minus_v(j, N, l, k, i, n)
                a = 1
                while a < k and not t_lt_v(M, l, k - a - 1, j, n):
                    a += 1
                pos = np.int64(t_lt_v(N, l, k - a, j, n))    # sign without a branch
                t_minus_v(i, NM[pos], l, k - a, j, n)
                y[p] = a * (2 * pos - 1)
                k -= a
            p += 1
        return p, k

    return segment


_s_any = _segment(0)
_s2, _s3, _s4, _s5, _s6, _s7, _s8 = (_segment(nw) for nw in range(2, MAX_SPECIALISED + 1))


@njit(cache=True)
def _tail_one_limb(i, k, p, NM, y):
    """The one-limb loop for coordinates p.. once every number in play fits limb 0."""
    L = y.shape[0]
    while p < L and k > 0:
        l = L - p
        if i >= NM[0, l - 1, k, 0]:
            j = NM[0, l, k, 0] - i
            a = 1
            while a < k and NM[1, l, k - a - 1, 0] >= j:
                a += 1
            pos = np.int64(NM[0, l, k - a, 0] < j)
            i = NM[pos, l, k - a, 0] - j
            y[p] = a * (2 * pos - 1)
            k -= a
        p += 1


@njit(cache=True)
def decode_limbs(I, K, NM, width, out):
    """Points of the (G, W) limb indices I into out (G, L), every entry written."""
    G, W = I.shape
    L = out.shape[1]
    i = np.empty(W, dtype=np.uint64)
    j = np.empty(W, dtype=np.uint64)
    for g in range(G):
        i[:] = I[g]
        y = out[g]
        y[:] = 0                             # (out may be a caller's buffer)
        k, p = K, 0
        while p < L and k > 0:               # width falls along the group: each stretch once
            nw = width[L - p, k]
            if nw == 1:
                _tail_one_limb(i[0], k, p, NM, y)
                break
            elif nw == 2:
                p, k = _s2(i, j, k, p, NM, width, y)
            elif nw == 3:
                p, k = _s3(i, j, k, p, NM, width, y)
            elif nw == 4:
                p, k = _s4(i, j, k, p, NM, width, y)
            elif nw == 5:
                p, k = _s5(i, j, k, p, NM, width, y)
            elif nw == 6:
                p, k = _s6(i, j, k, p, NM, width, y)
            elif nw == 7:
                p, k = _s7(i, j, k, p, NM, width, y)
            elif nw == 8:
                p, k = _s8(i, j, k, p, NM, width, y)
            else:
                p, k = _s_any(i, j, k, p, NM, width, y)

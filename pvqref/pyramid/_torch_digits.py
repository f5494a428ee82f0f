"""Enumeration of wide indices in the torch tier: ranks of more than 62 bits as digits.

``_torch.py`` codes indices below 2^62 in plain int64. Wider ones (L = 128 at 3 bits per
weight: 384 bits) are held as D little-endian 32-bit *digits* in int64 tensors, digit-major
((D, G): each digit of every group contiguous), so that one tensor operation serves a whole
digit of the batch.

Encode
------
The rank is the sum over coordinates of N(l, k) - T(l, k - |y_p|) (``_numba.py``). While
coding coordinate p every number is <= N(l, K), l = L - p, so it has at most
``digits[l]`` digits, and that count only falls along a group. So digit d of the rank is
summed over the leading coordinates whose numbers reach digit d only (a prefix of the
columns): about half of the L x D digit look-ups of a full-width sum at L = 128. The digit
sums (|sum| < L 2^32) are carried once at the end.

Decode
------
Write j = N(l, k) - i (1 <= j <= N(l, k)) for the index i still to decode with l
coordinates and k pulses left. In j the blocks of coordinate p (y_p = 0, +k, -k, ...,
+1, -1 read from the top) are cut by one increasing table row,

    Q(l, 2m) = N(l, m),   Q(l, 2m + 1) = M(l, m) = N(l, m) + N(l - 1, m),   Q(l, 2k) = N(l, k),

and the first q with Q(l, q) >= j names the block: y_p = 0 if q = 2k, else magnitude
k - q // 2, positive for odd q. The next j is j - (Q(l, q) - N(l - 1, q // 2)), with
k = q // 2 pulses left (the numba tier's algebra, written in j). So a coordinate costs one
lookup of j's block (``_torch_buckets.py``: two table reads by the bits of j as a float)
and one subtraction of a table entry. The decoder keeps each coordinate's q; the points
are read from them at the end (``points_of_blocks``).

The lookup runs on float64 values: j's from its (at most 31) digits, a dot product with
relative error below 30 2^-53 < 2^-48, Q's correctly rounded. The guess q is certain when
j_f is not within about 2^-45 of the block edge Q_f(T) that the tables name; the rare
groups where it is (j on a block edge, as for indices on block boundaries) are settled by
bisection on the exact digits. After each subtraction one carry round, without a check
(a check costs a device sync per coordinate), keeps every digit in [-1, 2^32): the number
is exact, its float64 reading as good (its top non-zero digit is >= 1, so the -1 terms
are below 2^-31 of it), and a full carry normalises it before an exact comparison and
where the digit count falls. Once N(l, K) < 2^62 the rest of the group is decoded in int64
by ``_torch.py``.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from ._torch_buckets import wide_tables
from .reference import count_table

MASK32 = 0xFFFFFFFF
SMALL_BITS = 62                              # numbers below 2^62: plain int64 arithmetic
_SAFE = 2.0 ** -45                           # relative margin of the float64 block guess


def n_digits(v: int) -> int:
    """32-bit digits of the non-negative int v (at least 1)."""
    return max(1, -(-v.bit_length() // 32))


def _digit_planes(rows, D: int) -> np.ndarray:
    """Python ints (a 2-D list) -> (D, rows, cols) int64 array of their 32-bit digits."""
    raw = b"".join(v.to_bytes(4 * D, "little") for row in rows for v in row)
    d = np.frombuffer(raw, dtype="<u4").astype(np.int64)
    return np.ascontiguousarray(d.reshape(len(rows), len(rows[0]), D).transpose(2, 0, 1))


def blocks(L: int, K: int) -> tuple[list[list[int]], list[list[int]]]:
    """The rows Q(l, 0..2K) of the decoder, and the steps S(l, q) = Q(l, q) - N(l-1, q // 2)
    it subtracts from j, for 1 <= l <= L (row 0: zeros), as exact Python ints."""
    N = count_table(L, K)
    Q, S = [[0] * (2 * K + 1)], [[0] * (2 * K + 1)]
    for l in range(1, L + 1):
        q_row = [N[l][q // 2] + (N[l - 1][q // 2] if q % 2 else 0) for q in range(2 * K + 1)]
        Q.append(q_row)
        S.append([q_row[q] - N[l - 1][q // 2] for q in range(2 * K + 1)])
    return Q, S


@lru_cache(maxsize=8)
def decode_tables(L: int, K: int, device: str):
    """(Qd, Sd, R, digits, l_small) for the wide decoder: Q and S as (D, L+1, 2K+1) digit
    planes; R, Q's float64 values with -inf in front and +inf behind (R[l, t] = Q(l, t-1));
    digits[l] = the digit count of N(l, K); l_small = the largest l with
    N(l, K) < 2^SMALL_BITS (from there ``_torch.py`` decodes in int64)."""
    N = count_table(L, K)
    Q, S = blocks(L, K)
    D = n_digits(N[L][K])
    digits = [n_digits(N[l][K]) for l in range(L + 1)]
    l_small = max(l for l in range(L + 1) if N[l][K] < 1 << SMALL_BITS)
    R = torch.tensor([[-math.inf] + [float(v) if v.bit_length() < 1024 else math.inf
                                     for v in row] + [math.inf] for row in Q],
                     dtype=torch.float64)
    return (torch.as_tensor(_digit_planes(Q, D), device=device),
            torch.as_tensor(_digit_planes(S, D), device=device),
            R.to(device), digits, l_small)


def counts_and_m(L: int, K: int) -> tuple[list, list]:
    """The rows N(l, .) and M(l, .) = N(l, .) + N(l-1, .) (M(0, .) = N(0, .)) for l <= L,
    as exact Python ints: the two tables the encoders look up."""
    N = count_table(L, K)
    return list(N), [N[0]] + [[N[l][k] + N[l - 1][k] for k in range(K + 1)]
                              for l in range(1, L + 1)]


@lru_cache(maxsize=8)
def encode_tables(L: int, K: int, device: str):
    """(T, digits): N and M as (D, 2 (L+1) (K+1)) digit planes (row-major (table, l, k) in
    each plane) and digits[l] = the digit count of N(l, K)."""
    N, M = counts_and_m(L, K)
    D = n_digits(N[L][K])
    cap = (1 << (32 * D)) - 1                # M(l, K) may not fit; it is never read
    planes = _digit_planes([[min(v, cap) for v in row] for row in N + M], D)
    return torch.as_tensor(planes.reshape(D, -1), device=device), \
        [n_digits(N[l][K]) for l in range(L + 1)]


# ---- digits ---------------------------------------------------------------------------------

def carry(v: torch.Tensor) -> torch.Tensor:
    """Digits (D, G) of numbers in [0, 2^(32 D)) put back in [0, 2^32), in place: carry
    rounds until the digits below the top are in range (the top digit is then too). One
    round nearly always suffices; the check is a min/max (``any`` is slower on CPU)."""
    low, high = v[:-1], v[1:]
    while low.numel():
        c = low >> 32                        # floor(v / 2^32), negative digits included
        low &= MASK32
        high += c
        lo, hi = torch.aminmax(low)
        if int(lo) >= 0 and int(hi) <= MASK32:
            break
    return v


def to_digits(limbs: torch.Tensor, D: int) -> torch.Tensor:
    """(G, W) int64 limb bit patterns -> (D, G) digits (D <= 2 W)."""
    d = torch.stack([limbs & MASK32, (limbs >> 32) & MASK32], dim=-1)
    d = d.reshape(len(limbs), 2 * limbs.shape[1])
    return d[:, :D].t().contiguous()


def to_limbs(d: torch.Tensor, W: int, out=None) -> torch.Tensor:
    """(D, G) normalised digits -> (G, W) int64 limb bit patterns (D <= 2 W)."""
    G = d.shape[1]
    full = torch.zeros((2 * W, G), dtype=torch.int64, device=d.device)
    full[: d.shape[0]] = d
    res = full[0::2] | (full[1::2] << 32)
    if out is None:
        return res.t().contiguous()
    out.copy_(res.t())
    return out


def less(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a < b per column, for normalised digits (D, n) (broadcast): the top unequal digit."""
    a, b = torch.broadcast_tensors(a, b)
    pos = torch.arange(1, a.shape[0] + 1, device=a.device)[:, None]
    top = ((a != b) * pos).amax(dim=0, keepdim=True) - 1          # -1: a == b
    at = top.clamp(min=0)
    return ((top >= 0) & (a.gather(0, at) < b.gather(0, at)))[0]


# ---- encode ---------------------------------------------------------------------------------

def term_indices(Y: torch.Tensor, K: int):
    """(at_N, at_T), each (G, L) int32 like Y (int32 points, ``_torch.check_points``): the
    flat indices, in a table of N then M over (l, k) (``encode_tables``,
    ``_torch._small_tables``), of N(l, k) and of T(l, k - |y_p|) for every coordinate p of
    every group, k the pulses left before p (T = M for y_p > 0, else N: then a zero
    coordinate's two entries cancel). int32 holds every index (2 (L+1)(K+1) < 2^31 within
    the table limits) and halves the traffic. Everything runs along the rows, in place
    where it can: torch's CPU cumsum and transposes across rows cost several times more."""
    G, L = Y.shape
    A = Y.abs()
    base = (L - torch.arange(L, device=Y.device, dtype=torch.int32)) * (K + 1) + K
    at_N = A.cumsum(dim=1, dtype=torch.int32)           # pulses used up to p ...
    at_N.sub_(A).neg_().add_(base)                       # ... k = K - (used before p)
    at_T = torch.sub(at_N, A)
    at_T.add_(Y.clamp(0, 1), alpha=(L + 1) * (K + 1))  # y_p > 0: the M half
    return at_N, at_T


def encode(Y: torch.Tensor, K: int, W: int, out=None) -> torch.Tensor:
    """Ranks of the rows of Y (checked int32 pyramid points of L1 norm K) as (G, W) limbs."""
    G, L = Y.shape
    T, digits = encode_tables(L, K, str(Y.device))
    at_N, at_T = (a.t().contiguous() for a in term_indices(Y, K))    # (L, G): prefixes
    acc = torch.empty((T.shape[0], G), dtype=torch.int64, device=Y.device)
    for d in range(T.shape[0]):
        n = sum(1 for l in range(L, 0, -1) if digits[l] > d)  # coordinates reaching digit d
        plus = T[d].index_select(0, at_N[:n].view(-1)).view(n, G).sum(dim=0)
        acc[d] = plus - T[d].index_select(0, at_T[:n].view(-1)).view(n, G).sum(dim=0)
    return to_limbs(carry(acc), W, out)


# ---- decode ---------------------------------------------------------------------------------
#
# With q the first block index (Q(l, q) >= j), the block counted from the top of the row is
# c = 2k - q: y_p = 0 for c = 0, and +1, -1, +2, -2, ... for c = 1, 2, 3, 4, ...; the pulses
# left after p are k - (c + 1) // 2 = q // 2, so 2k becomes q with its low bit cleared.


def y_of_count(K: int, device) -> torch.Tensor:
    """For c = 0 .. 2K: y_p (0, +1, -1, +2, ...)."""
    c = torch.arange(2 * K + 1, device=device)
    return ((c + 1) >> 1) * (2 * (c & 1) - 1)


def _first_block(j, Qd_l, k2):
    """The first q in [0, 2k] with Q(l, q) >= j, by bisection on the exact digits (the groups
    whose float64 guess is not certain; j (D, n) normalised, Qd_l (D, 2K+1), k2 = 2k)."""
    lo, hi = torch.zeros_like(k2), k2.clone()
    for _ in range(max(1, int(hi.max()).bit_length()) + 1):
        mid = (lo + hi) // 2
        below = less(Qd_l.gather(1, mid.expand(len(Qd_l), -1)), j) & (lo < hi)
        lo, hi = torch.where(below, mid + 1, lo), torch.where(below | (lo == hi), hi, mid)
    return lo


def _carry_once(v: torch.Tensor) -> torch.Tensor:
    """One carry round on digits (D, G), in place, with no check (no device sync): after a
    subtraction of normalised digits from digits in [-1, 2^32) every digit is in
    (-2^32 - 1, 2^32), and one round puts it back in [-1, 2^32) (the bottom one in
    [0, 2^32), the top one in [-1, 2^32]), the same number. The float64 guess reads such
    digits as well (the negative terms are below 2^-30 of the value); ``carry`` normalises
    fully before any exact comparison or before the digit count falls."""
    c = v[:-1] >> 32
    v[:-1] &= MASK32
    v[1:] += c
    return v


def points_of_blocks(qT: torch.Tensor, K: int, out=None) -> torch.Tensor:
    """The points (G, L) int64 of the decoder's blocks qT (L, G) int32 (overwritten):
    coordinate p's block q_p and 2k_p (2K, then q_(p-1) with its low bit cleared) give
    c = 2k_p - q_p and y_p = y(c). Whole-array passes with no temporary (a fresh one of
    this size costs a page fault per 4 KiB on a CPU, as much as the pass): c is built in
    ``out``'s memory, transposed in int32 into qT's, and read through y into ``out``."""
    L, G = qT.shape
    out = torch.empty((G, L), dtype=torch.int64, device=qT.device) if out is None else out
    c = out.view(-1).view(torch.int32)[: L * G].view(L, G)         # out's memory
    c[0] = 2 * K
    torch.bitwise_and(qT[:-1], -2, out=c[1:])         # 2k_p
    c -= qT
    cT = qT.view(G, L).copy_(c.t())                    # qT is spent: its memory holds c^T
    return torch.index_select(y_of_count(K, qT.device), 0, cT.view(-1), out=out.view(-1)) \
        .view(G, L)


def decode_wide(I: torch.Tensor, L: int, K: int, qT: torch.Tensor):
    """Decode coordinates p = 0 .. L - l_small - 1 of the (G, W) index limbs I: their
    blocks q into the rows of qT (L, G). Returns (j, p): j (int64, < 2^62) of every group
    and the first coordinate left to ``_torch.py``'s int64 loop."""
    dev = I.device
    Qd, Sd, R, digits, l_small = decode_tables(L, K, str(dev))
    shift, off, T, Vf = wide_tables(L, K, l_small + 1, str(dev))
    G = I.shape[0]
    D = digits[L]
    j = carry(Qd[:D, L, 2 * K, None] - to_digits(I, D))         # N(L, K) - i
    pw = torch.tensor([2.0 ** (32 * d) for d in range(min(D, 31))], dtype=torch.float64,
                      device=dev)
    p = 0
    for l in range(L, l_small, -1):
        n, q = digits[l], qT[p]
        if l < L and n < digits[l + 1]:
            carry(j)                                   # digits above n are now 0
        jd = j[:n]
        if n < 32:                                     # float64 holds j: guess, then check
            jf = pw[:n] @ jd.to(torch.float64)
            unsure = _guess_block(jf, l, shift, off, T, Vf, R, q)
        else:                                          # beyond float64's range: exact only
            unsure = torch.ones_like(q, dtype=torch.bool)
        if bool(unsure.any()):                         # near a block edge: exact digits
            r = unsure.nonzero()[:, 0]
            k2 = torch.full_like(r, 2 * K) if p == 0 else qT[p - 1, r].long() & -2
            q[r] = _first_block(carry(jd[:, r]), Qd[:n, l], k2).to(q.dtype)
        jd -= Sd[:n, l].gather(1, q.long().expand(n, -1))
        _carry_once(jd)
        p += 1
    carry(j)
    j64 = j[0] | (j[1] << 32) if D > 1 else j[0]
    return j64, p


def _guess_block(jf, l, shift, off, T, Vf, R, q):
    """q = the first block with Q(l, q) >= j, from jf (j in float64, to 2^-48) by the
    bucket tables (``_torch_buckets.py``) or ``searchsorted`` of the row R[l]; returns the
    groups where the guess is not certain (jf near a block edge)."""
    if shift[l] < 0:
        t = torch.searchsorted(R[l], jf)               # R[l, t] = Q(l, t - 1): q = t - 1
        q.copy_(t).sub_(1)
        return (R[l].index_select(0, t - 1) >= jf * (1 - _SAFE)) | \
            (R[l].index_select(0, t) <= jf * (1 + _SAFE))
    key = torch.bitwise_right_shift(jf.view(torch.int64), shift[l]).add_(off[l])
    torch.index_select(T, 0, key, out=q)
    gap = Vf.index_select(0, key).view(torch.int64).sub_(jf.view(torch.int64))
    q.sub_(gap >> 63)                                  # j > Q(l, T): the next block
    # Positive floats order as their bit patterns, and each step of a pattern moves the
    # float by at least 2^-53 of it: patterns more than 2^7 apart are floats more than
    # 2^-46 apart (relative), too far for jf's error (2^-48) and Q's rounding (2^-53) to
    # swap j and Q(l, T). The others are settled on the exact digits.
    return gap.abs_() <= 2 ** 7

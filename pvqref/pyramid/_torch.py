"""Torch tier of ``pvqref.pyramid``: search, encode and decode vectorised over the groups.

Device-agnostic: every tensor is created on the input's device. The arithmetic is the
reference tier's, reorganised so that one tensor operation serves all groups at once:

- Search: per pulse, each group's candidate is the first index of the largest score
  (xy + a_j)^2 / (yy + 2 y_j + 1). The reference compares by cross-multiplication in a
  left-to-right scan; the candidate c is the scan's answer exactly when c beats every
  j < c and no j > c beats c, in the reference's own float comparisons. We check that for
  every group and fall back to the scan for the (rare, near-tie) groups that fail, so the
  result is bit-identical to the reference. Sums run left to right, as in the reference.
- Encode: with 32-bit digits in int64 the rank contributions of all coordinates can be
  summed digit by digit without overflow and carried once at the end.
- Decode: coordinates in turn; for each, the magnitude is found by bisecting the increasing
  table row M(l, 0..k-1) for j (multi-digit comparisons, most significant digit first).

Index limbs are int64 tensors holding the bit patterns of the uint64 limbs (see
``pvqref.pyramid``). The entry points take and return tensors (``pvqref.pyramid``
converts NumPy input); the tables come from the reference tier's exact counts, so this
tier runs without Numba.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from .. import _checks
from .reference import (beyond_K_error, bits, check_LK, check_table, count, count_table,
                        limbs_to_ints, n_limbs, norm_error, points_shape_error)

_MASK32 = 0xFFFFFFFF


# ---- search ---------------------------------------------------------------------------------

def _check_X(X: torch.Tensor) -> torch.Tensor:
    if X.ndim != 2 or X.shape[1] < 1:
        raise ValueError(f"X must be a (G, L) tensor of groups, got shape {tuple(X.shape)}")
    _checks.real_dtype(X, "X")
    X = X.to(torch.float64)
    _checks.finite(X, "X")
    zero = ~(X != 0).any(dim=1)
    if bool(zero.any()):
        raise ValueError(f"group {int(zero.nonzero()[0, 0])} of X is all zeros: no direction")
    return X


def _scan_argmax(num, den):
    """The reference's left-to-right scan with cross-multiplied comparisons, per row."""
    best = torch.zeros(num.shape[0], dtype=torch.int64, device=num.device)
    bnum, bden = num[:, 0].clone(), den[:, 0].clone()
    for j in range(1, num.shape[1]):
        better = num[:, j] * bden > bnum * den[:, j]
        best = torch.where(better, j, best)
        bnum = torch.where(better, num[:, j], bnum)
        bden = torch.where(better, den[:, j], bden)
    return best


def _pulse_argmax(num, den, force_scan: bool = False):
    """Per row, the index the reference scan would pick, from float64 num and den: the
    first index c of the largest num/den, accepted where c beats every j < c and no j > c
    beats c in the reference's own comparisons (then the scan ends at c); the scan itself
    for the rows where that fails."""
    G, L = num.shape
    idx = torch.arange(L, device=num.device)
    score = num / den
    top = score.amax(dim=1, keepdim=True)
    c = torch.where(score == top, idx, L).amin(dim=1)
    num_c, den_c = num.gather(1, c[:, None]), den.gather(1, c[:, None])
    p_j = num * den_c                        # candidate j against best c: p_j > p_c
    p_c = num_c * den
    before = idx[None, :] < c[:, None]
    after = idx[None, :] > c[:, None]
    ok = ((p_c > p_j) | ~before).all(dim=1) & ~((p_j > p_c) & after).any(dim=1)
    if force_scan:
        ok = torch.zeros_like(ok)
    if not bool(ok.all()):
        bad = (~ok).nonzero()[:, 0]
        c = c.clone()
        c[bad] = _scan_argmax(num[bad], den[bad])
    return c


# thr = top (1 - 2^-19): see _numba.py for why a row with one float32 score >= thr has the
# reference's choice there (the same float32 operations, correctly rounded on CPU and GPU).
_KEEP = 1.0 - 2.0 ** -19
_CHUNK = 1 << 19                             # weights per chunk of rows


def _alone_above(s, idx):
    """Per row of the float32 scores s (all >= 0, top >= 2^-30): (c, n), n the number of
    j with s_j >= thr = fl32(top (1 - 2^-19)) and c their index sum (the index when n = 1).

    Float ops only (torch's float reductions are its fast ones): with t the float just
    below thr, s_j >= thr iff s_j - t > 0, and a float difference is 0 only for equal
    floats, so sign(max(s_j - t, 0)) is the exact 0/1 indicator. Its row sum and its
    product with j = 0..L-1 are sums of small integers, exact in float32."""
    top = s.amax(dim=1)
    t = ((top * _KEEP).view(torch.int32) - 1).view(torch.float32)
    w = s.sub_(t[:, None]).clamp_(min=0).sign_()        # reuses s: not needed afterwards
    return (w @ idx).to(torch.int64), w.sum(dim=1)


def _greedy(ax, y, xy, yy, left, force_scan):
    """Add the remaining pulses of a chunk of rows in place (y, xy, yy), all rows at once.

    Each pulse scores every candidate in float32; rows whose top score is not alone above
    thr (near-ties, about 3% per pulse at L = 128) are settled in float64 by
    ``_pulse_argmax``. Rows that are done take the step with weight 0."""
    G, L = ax.shape
    a32 = ax.to(torch.float32)
    d32 = (2 * y + 1).to(torch.float32)      # 2 y_j + 1, exact
    s = torch.empty_like(a32)
    den = torch.empty_like(a32)
    idx = torch.arange(L, dtype=torch.float32, device=ax.device)
    for step in range(int(left.max()) if G else 0):
        torch.add(a32, xy.to(torch.float32)[:, None], out=s)
        s.mul_(s)
        torch.add(d32, yy.to(torch.float32)[:, None], out=den)
        s.div_(den)
        c, n = _alone_above(s, idx)
        bad = n != 1
        if force_scan:
            bad = torch.ones_like(bad)
        if bool(bad.any()):
            r = bad.nonzero()[:, 0]
            t = xy[r, None] + ax[r]
            c[r] = _pulse_argmax(t * t, yy[r, None] + 2.0 * y[r].to(torch.float64) + 1.0,
                                 force_scan)
        c = c[:, None]
        inc = (left > step).to(torch.int64)[:, None]   # 0 for rows already done
        yc = y.gather(1, c)
        xy += (ax.gather(1, c) * inc)[:, 0]           # + 0.0 leaves xy >= 0 unchanged
        yy += ((2 * yc + 1) * inc)[:, 0].to(torch.float64)
        y.scatter_add_(1, c, inc)
        d32.scatter_add_(1, c, 2.0 * inc.to(torch.float32))


def _search(X: torch.Tensor, K: int, force_scan: bool = False, out=None) -> torch.Tensor:
    G, L = X.shape
    dev = X.device
    y = torch.zeros((G, L), dtype=torch.int64, device=dev)
    rows = max(1, _CHUNK // L)
    for s0 in range(0, G, rows):
        A = X[s0:s0 + rows].abs()
        ax = A / A.amax(dim=1, keepdim=True)
        yc = y[s0:s0 + rows]
        g = len(ax)
        if K > L // 2:                       # projection, sums left to right
            s = torch.zeros(g, dtype=torch.float64, device=dev)
            for j in range(L):
                s += ax[:, j]
            rcp = torch.full_like(s, K + 0.8) / s
            yc.copy_(torch.floor(ax * rcp[:, None]).to(torch.int64))
            yc[yc.sum(dim=1) > K] = 0
        xy = torch.zeros(g, dtype=torch.float64, device=dev)
        for j in range(L):
            xy += ax[:, j] * yc[:, j].to(torch.float64)
        yy = (yc * yc).sum(dim=1).to(torch.float64)   # exact integers: order does not matter
        _greedy(ax, yc, xy, yy, K - yc.sum(dim=1), force_scan)
    return torch.where(X < 0, -y, y, out=out) if out is not None else torch.where(X < 0, -y, y)


def search_batch(X: torch.Tensor, K: int, force_scan: bool = False, out=None) -> torch.Tensor:
    """``search`` on every row of the tensor X; ``force_scan`` (for tests) settles every
    pulse by the float64 path, and there always by the exact scan. ``out``: a (G, L) int64
    tensor on X's device to write into."""
    X = _check_X(X)
    _, K = check_LK(X.shape[1], K)
    return _search(X, K, force_scan, out)


# ---- multi-digit numbers: int64 digits of b bits, least significant first -------------------

@lru_cache(maxsize=8)
def _digit_tables(L: int, K: int, device: str):
    """N(l, k) and M(l, k) = N(l, k) + N(l-1, k) (mod 2^(64 W)) for l <= L, k <= K, as one
    (2, L+1, K+1, 2W) int64 tensor of 32-bit digits, from the reference's exact counts; and
    the float64 values of M (exact counts, rows increasing in k, for ``searchsorted``)."""
    N = count_table(L, K)
    W = n_limbs(L, K)
    mod = 1 << (64 * W)
    M = [N[0]] + [[N[l][k] + N[l - 1][k] for k in range(K + 1)] for l in range(1, L + 1)]
    raw = b"".join((v % mod).to_bytes(8 * W, "little") for T in (N, M) for row in T for v in row)
    d = np.frombuffer(raw, dtype="<u4").astype(np.int64).reshape(2, L + 1, K + 1, 2 * W)
    Mf = torch.tensor([[float(v) if v.bit_length() < 1024 else math.inf for v in row]
                       for row in M], dtype=torch.float64)
    return torch.as_tensor(d, device=device), Mf.to(device)


SMALL_BITS = 62                              # indices below 2^62: plain int64 arithmetic


@lru_cache(maxsize=8)
def _small_tables(L: int, K: int, device: str) -> torch.Tensor:
    """N and M as one (2, L+1, K+1) int64 tensor, for (L, K) whose counts fit SMALL_BITS
    (every entry used is <= N(L, K); M(l, K), never used, is clamped to fit)."""
    N = count_table(L, K)
    M = [N[0]] + [[N[l][k] + N[l - 1][k] for k in range(K + 1)] for l in range(1, L + 1)]
    cap = (1 << 63) - 1
    return torch.tensor([[[min(v, cap) for v in row] for row in T] for T in (N, M)],
                        dtype=torch.int64, device=device)


def _normalize(v: torch.Tensor) -> torch.Tensor:
    """Propagate carries/borrows so every digit is in [0, 2^32)."""
    out = torch.empty_like(v)
    carry = torch.zeros_like(v[..., 0])
    for d in range(v.shape[-1]):
        t = v[..., d] + carry
        out[..., d] = t & _MASK32
        carry = t >> 32
    return out


def _lex_lt(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a < b for normalised multi-digit numbers: the sign of the top non-zero digit of a - b."""
    d = a - b
    pos = torch.arange(d.shape[-1], device=d.device)
    top = torch.where(d != 0, pos, -1).amax(dim=-1, keepdim=True)
    return ((top >= 0) & (d.gather(-1, top.clamp(min=0)) < 0))[..., 0]


def _sub(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a - b for normalised a >= b (32-bit digits), borrows by look-ahead: digit i borrows
    exactly when the nearest non-zero digit of a - b below i is negative."""
    d = a - b
    pos = torch.arange(d.shape[-1], device=d.device).expand_as(d)
    last = torch.where(d != 0, pos, -1).cummax(dim=-1).values
    below = torch.cat([torch.full_like(last[..., :1], -1), last[..., :-1]], dim=-1)
    borrow = (below >= 0) & (d.gather(-1, below.clamp(min=0)) < 0)
    return (d - borrow.to(d.dtype)) & _MASK32


def _digits_to_limbs(d: torch.Tensor) -> torch.Tensor:
    return d[:, 0::2] | (d[:, 1::2] << 32)


def _limbs_to_digits(limbs: torch.Tensor) -> torch.Tensor:
    lo, hi = limbs & _MASK32, (limbs >> 32) & _MASK32
    return torch.stack([lo, hi], dim=-1).reshape(limbs.shape[0], 2 * limbs.shape[1])


# ---- encode / decode -------------------------------------------------------------------------

def check_points(Y: torch.Tensor, K):
    """(Y as int64, K): Y a (G, L) integer tensor of pyramid points of L1 norm K (K = row 0's
    norm if None), checked on its device (TypeError, ValueError)."""
    if Y.ndim != 2 or Y.shape[1] < 1:
        raise points_shape_error(Y.shape)
    _checks.integer_dtype(Y, "Y")
    L = Y.shape[1]
    if Y.dtype == torch.uint64:              # no uint64 compares in torch: read the bits as
        Y = Y.view(torch.int64)              # int64; entries >= 2**63 show as negative
        huge = Y < 0
        if bool(huge.any()):
            g, c = (int(v) for v in huge.nonzero()[0])
            raise ValueError(f"row {g} of Y has |y| = {int(Y[g, c]) + 2**64} at column {c}, "
                             "beyond int64 and any K: not a pyramid point")
    Y = Y.to(torch.int64)                    # exact for every other integer dtype
    if K is None:                            # the batch's K: row 0's norm, in exact ints
        check_table(L, 0)
        K = sum(abs(v) for v in Y[0].tolist()) if len(Y) else 0
    L, K = check_LK(L, K)
    check_table(L, K)
    # A point has |y_i| <= K; checking it first keeps the int64 norms exact (<= L K).
    # abs(-2**63) is -2**63 in int64: hence the A < 0.
    A = Y.abs()
    big = (A > K) | (A < 0)
    if bool(big.any()):
        g, c = (int(v) for v in big.nonzero()[0])
        raise beyond_K_error(g, c, abs(int(Y[g, c])), K)
    norms = A.sum(dim=1)
    bad = norms != K
    if bool(bad.any()):
        g = int(bad.nonzero()[0, 0])
        raise norm_error(g, int(norms[g]), K)
    return Y, K


def encode_batch(Y: torch.Tensor, K: int, out=None) -> torch.Tensor:
    """Ranks of the rows of Y (checked by ``check_points``) as (G, W) int64 limbs.

    The contribution of coordinate p (see _numba.py) is N(l, k) - T(l, k - |y_p|), T = M
    for y_p > 0 and N otherwise, k the pulses left before p: two gathers from one table.
    All L of them are summed digit by digit (32-bit digits in int64: no overflow for
    L < 2^30) and carried once."""
    G, L = Y.shape
    if bits(L, K) <= SMALL_BITS:
        return _encode_small(Y, K, out)
    T = _digit_tables(L, K, str(Y.device))[0]
    D = T.shape[-1]
    flat = T.reshape(-1, D)
    half = (L + 1) * (K + 1)                 # rows of the N half; the M half follows
    base = ((L - torch.arange(L, device=Y.device)) * (K + 1))[None, :]
    out = torch.empty((G, D // 2), dtype=torch.int64, device=Y.device) if out is None else out
    rows = max(1, (1 << 18) // (L * D))      # gathers of (rows, L, D) stay in cache
    for s in range(0, G, rows):
        y = Y[s:s + rows]
        a = y.abs()
        k_before = K - (a.cumsum(dim=1) - a)
        hi = flat[base + k_before].sum(dim=1)                    # sum of N(l, k)
        lo = flat[base + k_before - a + half * (y > 0)].sum(dim=1)
        out[s:s + rows] = _digits_to_limbs(_normalize(hi - lo))
    return out


def _encode_small(Y: torch.Tensor, K: int, out=None) -> torch.Tensor:
    """``encode_batch`` for ranks below 2^SMALL_BITS: the same two gathers, summed in int64
    (every contribution is >= 0 and their sum is the rank, so nothing overflows)."""
    G, L = Y.shape
    T = _small_tables(L, K, str(Y.device)).reshape(-1)
    half = (L + 1) * (K + 1)
    base = ((L - torch.arange(L, device=Y.device)) * (K + 1))[None, :]
    a = Y.abs()
    at_N = (base + K + a) - a.cumsum(dim=1)          # flat index of N(l, k), k = pulses left
    at_T = at_N - a
    at_T += (Y > 0) * half                           # ... and of N or M (l, k - a)
    rank = T.take(at_N).sum(dim=1) - T.take(at_T).sum(dim=1)
    if out is None:
        return rank[:, None]
    out[:, 0] = rank
    return out


def _decode_small(I: torch.Tensor, L: int, K: int, out=None) -> torch.Tensor:
    """``decode_batch`` for indices below 2^SMALL_BITS, in int64: per coordinate, y_p = 0
    iff i < N(l-1, k); else j = N(l, k) - i, the magnitude a = k - m with m the first entry
    of the increasing row M(l, .) that is >= j (``searchsorted``), the sign + iff
    N(l, m) < j, and the rank inside the block T(l, m) - j (the numba tier's algebra)."""
    dev = I.device
    T = _small_tables(L, K, str(dev))
    N, M = T[0], T[1]
    G = I.shape[0]
    i = I[:, 0].clone()
    k = torch.full((G,), K, dtype=torch.int64, device=dev)
    y = torch.zeros((G, L), dtype=torch.int64, device=dev) if out is None else out.zero_()
    for p in range(L):
        l = L - p
        nonzero = (k > 0) & (i >= N[l - 1][k])
        j = N[l][k] - i
        # first m with M(l, m) >= j, at most k - 1 (M(l, k-1) >= j when nonzero)
        m = torch.minimum(torch.searchsorted(M[l, :K], j), (k - 1).clamp(min=0))
        pos = N[l][m] < j
        r = torch.where(pos, M[l][m], N[l][m]) - j
        a = k - m
        y[:, p] = torch.where(nonzero, torch.where(pos, a, -a), 0)
        i = torch.where(nonzero, r, i)
        k = torch.where(nonzero, m, k)
    return y


def check_indices(I: torch.Tensor, L: int, K: int) -> torch.Tensor:
    """(G, W) limb tensor (int64 bit patterns, or uint64) checked for (L, K): dtype, shape,
    every index < N(L, K). Returns it as int64."""
    if I.dtype == torch.uint64:              # same 64-bit patterns
        I = I.view(torch.int64)
    W = n_limbs(L, K)
    if I.dtype != torch.int64:
        raise TypeError(f"index limbs must be uint64 (or int64 bit patterns), got {I.dtype}")
    if I.ndim != 2 or I.shape[1] != W:
        raise ValueError(f"indices for (L={L}, K={K}) must be a (G, {W}) tensor of limbs, "
                         f"got shape {tuple(I.shape)}")
    top = count(L, K) - 1                                   # largest valid index
    last = torch.tensor([(top >> (32 * d)) & _MASK32 for d in range(2 * W)],
                        dtype=torch.int64, device=I.device)
    bad = _lex_lt(last[None, :], _limbs_to_digits(I))
    if bool(bad.any()):
        g = int(bad.nonzero()[0, 0])
        raise ValueError(f"index {limbs_to_ints(I[g:g + 1])[0]} (group {g}) out of range "
                         f"for N({L}, {K}) = {count(L, K)}")
    return I


def _magnitude(Md_l, Mf_l, j, k, active, n_bisect):
    """Per active row, the smallest m in [0, k) with M(l, m) >= j (exact; M(l, k-1) >= j).

    A guess from float64 (``searchsorted`` on the increasing row M(l, .)), kept where the
    exact digits confirm it, M(l, m-1) < j <= M(l, m); bisection for the rows where not
    (ambiguous float64 values: rare but for indices on block boundaries)."""
    D = j.shape[1]
    if D < 32:                               # float64 holds up to 2^1024
        pw = torch.tensor([2.0 ** (32 * d) for d in range(D)], dtype=torch.float64,
                          device=j.device)
        m = torch.minimum(torch.searchsorted(Mf_l, (j.to(torch.float64) * pw).sum(dim=1)),
                          k - 1).clamp(min=0)
        below = (m == 0) | _lex_lt(Md_l[(m - 1).clamp(min=0)], j)     # M(l, m-1) < j
        ok = ~active | (~_lex_lt(Md_l[m], j) & below)
        if bool(ok.all()):
            return m
    else:
        m, ok = torch.zeros_like(k), torch.zeros_like(active)
    lo, hi = torch.zeros_like(k), k.clone()             # bisect: first m with M(l,m) >= j
    for _ in range(n_bisect):
        mid = (lo + hi) // 2
        below = _lex_lt(Md_l[mid], j) & (lo < hi)
        lo, hi = torch.where(below, mid + 1, lo), torch.where(below | (lo == hi), hi, mid)
    return torch.where(ok, m, lo)


def decode_batch(I: torch.Tensor, L: int, K: int, out=None) -> torch.Tensor:
    """Points (G, L) int64 of (G, W) int64 limb tensors (checked by ``check_indices``)."""
    if bits(L, K) <= SMALL_BITS:
        return _decode_small(I, L, K, out)
    dev = I.device
    T, Mf = _digit_tables(L, K, str(dev))
    Nd, Md = T[0], T[1]
    i = _limbs_to_digits(I)
    G = I.shape[0]
    k = torch.full((G,), K, dtype=torch.int64, device=dev)
    y = torch.zeros((G, L), dtype=torch.int64, device=dev) if out is None else out.zero_()
    n_bisect = max(1, K.bit_length())
    for p in range(L):
        l = L - p
        nonzero = ~_lex_lt(i, Nd[l - 1][k])                 # i >= N(l-1, k): |y_p| > 0
        if not bool(nonzero.any()):
            continue
        j = _sub(Nd[l][k], torch.where(nonzero[:, None], i, 0))
        m = _magnitude(Md[l], Mf[l], j, torch.where(nonzero, k, 1), nonzero, n_bisect)
        a = k - m                                           # largest a with M(l, k-a) >= j
        r = _sub(Md[l][m], j)
        neg = ~_lex_lt(r, Nd[l - 1][m])
        r = torch.where(neg[:, None], _sub(r, Nd[l - 1][m]), r)
        y[:, p] = torch.where(nonzero, torch.where(neg, -a, a), 0)
        i = torch.where(nonzero[:, None], r, i)
        k = torch.where(nonzero, k - a, k)
    return y

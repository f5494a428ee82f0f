"""Torch tier of ``pvqref.pyramid``: search, encode and decode vectorised over the groups.

Device-agnostic: every tensor is created on the input's device. The arithmetic is the
reference tier's, reorganised so that one tensor operation serves all groups at once:

- Search: per pulse, every candidate of every group is scored in float32 (the numba
  tier's filter, whose bound is proved in _numba.py): where one score is alone above the
  threshold it is the reference's choice. The near-ties are settled in float64: the
  candidate c is the reference scan's answer exactly when c beats every j < c and no
  j > c beats c in the reference's own float comparisons, and the scan itself runs for
  the groups where that fails; so the result is the reference's bit for bit. The groups
  of a chunk are sorted by pulses left, so each pulse works on a leading block of rows.
- Encode: the rank contributions of all coordinates are looked up in one table and summed
  in int64 (ranks below 2^62), or digit by digit in ``_torch_digits.py``.
- Decode: coordinates in turn; for each, a table lookup of j = N(l, k) - i in the buckets
  of an increasing row (``_torch_buckets.py``) gives the coordinate and one subtraction
  the next j, in int64, or on 32-bit digits guided by float64 (``_torch_digits.py``)
  while the numbers are wider.

Index limbs are int64 tensors holding the bit patterns of the uint64 limbs (see
``pvqref.pyramid``). The entry points take and return tensors (``pvqref.pyramid``
converts NumPy input); the tables come from the reference tier's exact counts, so this
tier runs without Numba.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from .. import _checks
from . import _torch_buckets as buckets
from . import _torch_digits as digits
from .reference import (beyond_K_error, bits, check_LK, check_table, count,
                        limbs_to_ints, n_limbs, norm_error, points_shape_error,
                        zero_group_error)


# ---- search ---------------------------------------------------------------------------------

def _check_X(X: torch.Tensor) -> torch.Tensor:
    """X as float64, its shape and dtype checked (its values: ``_check_rows``)."""
    if X.ndim != 2 or X.shape[1] < 1:
        raise ValueError(f"X must be a (G, L) tensor of groups, got shape {tuple(X.shape)}")
    _checks.real_dtype(X, "X")
    return X.to(torch.float64)


def _check_rows(X: torch.Tensor, m: torch.Tensor) -> None:
    """ValueError for a NaN or Inf in X or a group of zeros, read from m = the row maxima
    of |X| (a NaN propagates through the maximum, an Inf is one): one small pass."""
    if bool((torch.isfinite(m) & (m > 0)).all()):
        return
    _checks.finite(X, "X")
    raise zero_group_error(int((m[:, 0] == 0).nonzero()[0, 0]))


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
    for the rows where that fails.

    D_j = fl(n_c e_j) - fl(n_j e_c) has the sign of the reference's comparison (a float
    difference is 0 only for equal floats, else it has the exact difference's sign), and
    the test is sign(D_j) + [j >= c] >= 1 for every j: float operations only, which torch
    runs faster than bool masks on a CPU."""
    G, L = num.shape
    c = (num / den).argmax(dim=1)            # the first of the largest ratios
    num_c, den_c = num.gather(1, c[:, None]), den.gather(1, c[:, None])
    D = torch.mul(num_c, den).sub_(num * den_c).sign_()
    idx = torch.arange(L, device=num.device, dtype=num.dtype)
    D += torch.ge(idx, c.to(num.dtype)[:, None], out=torch.empty_like(D))
    ok = D.amin(dim=1) >= 1
    if force_scan:
        ok = torch.zeros_like(ok)
    if not bool(ok.all()):
        bad = (~ok).nonzero()[:, 0]
        c[bad] = _scan_argmax(num[bad], den[bad])
    return c


# thr = top (1 - 2^-19): see _numba.py for why a row with one float32 score >= thr has the
# reference's choice there (the same float32 operations, correctly rounded on CPU and GPU).
_KEEP = 1.0 - 2.0 ** -19


def _chunk(device) -> int:
    """Weights per chunk of rows in the greedy loop. Each pulse costs a dozen tensor
    operations per chunk, whatever its size, so larger chunks spread that fixed cost; on a
    CPU past 2^19 weights the float32 work arrays (2 MiB each) fall out of cache. Measured
    at (L, K) = (128, 187), 2^21 weights, one thread: 2.7 / 3.7 / 4.5 / 3.9 M weights/s
    for chunks of 2^17 / 2^18 / 2^19 / 2^20. An accelerator wants large batches."""
    return 1 << 19 if device.type == "cpu" else 1 << 22


def exact_float32_matmul(device) -> bool:
    """Whether a float32 matrix product on ``device`` is computed in IEEE float32 now. Users
    may allow TF32 or bfloat16 for float32 products (``torch.set_float32_matmul_precision``,
    the per-backend ``fp32_precision`` switches, ``allow_tf32``): then a count read off
    the product (``_alone_above``) would be rounded, so it is made in float64 instead."""
    if torch.get_float32_matmul_precision() != "highest":
        return False
    backend = torch.backends.cuda.matmul if device.type == "cuda" else \
        getattr(torch.backends.mkldnn, "matmul", None)
    if device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        return False
    return getattr(backend, "fp32_precision", "none") in ("none", "ieee")


def _alone_above(s, thr, wv, b):
    """Per row of the float32 scores s (n, L): (c, alone), alone = exactly one j has
    s_j >= thr (n,), and c that j.

    The indicator [s_j >= thr] is written as float32 0 / 1 (torch's compare into a float
    tensor runs at the speed of its float kernels; into bool it is several times slower on
    a CPU). Its product with wv_j = 1 + 2^b j (2^b > L) is 1 + 2^b c when one j is above,
    exact in float32 (< 2^24); with two or more it is count + 2^b (sum of j), exact below
    2^24 and an even integer above, so its low b bits read 1 only when one j is above.
    (wv is float64 where float32 products are not computed in IEEE float32:
    ``exact_float32_matmul``.) Overwrites s."""
    w = torch.ge(s, thr[:, None], out=s)
    v = (w.to(wv.dtype) @ wv).to(torch.int64)
    return v >> b, (v & ((1 << b) - 1)) == 1


def _greedy(ax, y, xy, yy, left, K, force_scan):
    """Add the remaining pulses of a chunk of rows in place (y, xy, yy), all rows at once,
    the rows sorted by pulses left (most first), so that the rows still adding pulses at
    each step are a leading block of the chunk.

    Each pulse scores every candidate in float32; rows whose top score is not alone above
    thr (near-ties, about 3% per pulse at L = 128) are settled in float64 by
    ``_pulse_argmax``. The loop keeps d_j = 2 y_j + 1 (exact in float32), not y, and the
    denominators yy + d_j: integers, exact in float32 and updated in place when below 2^24
    ((K + 1)^2 < 2^24; else recomputed from yy rounded to float32, as the bound assumes).
    A pulse's updates read and write one entry per row through flat indices."""
    G, L = ax.shape
    dev = ax.device
    a32 = ax.to(torch.float32)
    d32 = y.to(torch.float32).mul_(2).add_(1)    # exact: 2 y_j + 1 <= 2K + 1 < 2^24
    s = torch.empty_like(a32)
    den = torch.add(d32, yy[:, None].to(torch.float32))
    exact_den = (K + 1) ** 2 < 2 ** 24
    b = L.bit_length()
    wv = (1 + (torch.arange(L, device=dev, dtype=torch.float64) * 2 ** b))
    wv = wv.to(torch.float32 if L < 4096 and exact_float32_matmul(dev) else torch.float64)
    two = torch.full((G,), 2.0, device=dev)
    row_at = torch.arange(0, G * L, L, device=dev)     # flat index of each row's entry 0
    ax_f, d_f, den_f = ax.view(-1), d32.view(-1), den.view(-1)
    active = torch.bincount(left, minlength=int(left[0]) + 1 if G else 1)
    active = (G - active.cumsum(0))[:-1].tolist()       # rows with more than t pulses left
    for n in active:
        sv, dv = s[:n], den[:n]
        torch.add(a32[:n], xy[:n, None].to(torch.float32), out=sv)
        sv.mul_(sv)
        if not exact_den:
            torch.add(d32[:n], yy[:n, None].to(torch.float32), out=dv)
        sv.div_(dv)
        c, alone = _alone_above(sv, sv.amax(dim=1).mul_(_KEEP), wv, b)
        if force_scan or not bool(alone.all()):
            r = torch.arange(n, device=dev) if force_scan else (~alone).nonzero()[:, 0]
            t = ax.index_select(0, r).add_(xy.index_select(0, r)[:, None])
            e = den.index_select(0, r).to(torch.float64) if exact_den else \
                d32.index_select(0, r).to(torch.float64).add_(yy.index_select(0, r)[:, None])
            c[r] = _pulse_argmax(t.mul_(t), e, force_scan)
        at = c.add_(row_at[:n])                          # the pulse's entry in each row
        dc = d_f.index_select(0, at)                     # 2 y_c + 1, before the pulse
        xy[:n] += ax_f.index_select(0, at)
        yy[:n] += dc                                     # exact
        d_f.index_add_(0, at, two[:n])
        if exact_den:                                    # yy + d_j: + dc, and + 2 at c
            dv.add_(dc[:, None])
            den_f.index_add_(0, at, two[:n])
    y.copy_(d32.sub_(1).div_(2))             # exact small integers


# The set-up below works in place on a few buffers of a chunk's size: a fresh large tensor
# costs a page fault per 4 KiB on first touch, which on the virtual machines measured here
# was up to a third of the search time at L = 8 (tens of thousands of faults per call).

def _project(ax: torch.Tensor, work: torch.Tensor, yf: torch.Tensor, K: int, y: torch.Tensor):
    """Step 1 of the search, into the int64 rows y: y_j = floor((K + 0.8) a_j / sum(a)), the
    sum left to right, or zeros if that overshoots K (it cannot in exact arithmetic); and
    the reference's xy = sum_j a_j y_j (each product rounded, then added left to right) and
    yy = sum y_j^2, returned. ``work`` and ``yf``: float64 buffers of ax's size, clobbered."""
    G, L = ax.shape
    axT = work.view(L, G).copy_(ax.t())      # rows = columns of ax: contiguous sums
    s = axT[0].clone()
    for j in range(1, L):
        s += axT[j]
    torch.mul(ax, (torch.full_like(s, K + 0.8) / s)[:, None], out=yf).floor_()
    y.copy_(yf)                              # exact: small integers
    yy = torch.mul(yf, yf, out=work).sum(dim=1)         # exact integers: any order
    axT.copy_(yf.mul_(ax).t())                           # the products a_j y_j, transposed
    xy = axT[0].clone()
    for j in range(1, L):
        xy += axT[j]
    over = y.sum(dim=1) > K
    if bool(over.any()):
        y[over], xy[over], yy[over] = 0, 0.0, 0.0
    return xy, yy


def _search_rows(X: torch.Tensor, m: torch.Tensor, K: int, force_scan: bool,
                 y: torch.Tensor) -> None:
    """The search of one chunk of rows X (checked; m = its row maxima of |X|) into the int64
    rows y: the projection, the greedy pulses on the rows sorted by pulses left (most
    first), then the signs of X. Four float64 / int64 buffers of the chunk's size in all."""
    G, L = X.shape
    ax = torch.abs(X).div_(m)
    work = torch.empty_like(ax)
    if K <= L // 2:                          # no projection: every row has K pulses left
        y.zero_()
        xy = torch.zeros(G, dtype=torch.float64, device=X.device)
        _greedy(ax, y, xy, torch.zeros_like(xy), torch.full_like(xy, K, dtype=torch.int64), K,
                force_scan)
        sign = torch.empty_like(y)
    else:
        ax_sorted = torch.empty_like(ax)                # the projection's scratch first
        xy, yy = _project(ax, work, ax_sorted, K, y)
        n_left, order = (K - y.sum(dim=1)).sort(descending=True)
        sign = y.index_select(0, order)                 # the rows sorted, then the signs
        _greedy(torch.index_select(ax, 0, order, out=ax_sorted), sign,
                xy.index_select(0, order), yy.index_select(0, order), n_left, K, force_scan)
        y.index_copy_(0, order, sign)                   # back to the input's order
    # The signs: y_j where x_j >= 0 (-0.0 included), -y_j where x_j < 0, from a float
    # compare written into a float tensor (torch runs it several times faster on a CPU
    # than a bool mask and ``where``), then int64 products in place.
    sign.copy_(torch.lt(X, 0, out=work))                # 1 where x_j < 0
    y.mul_(sign.mul_(-2).add_(1))


def _search(X: torch.Tensor, K: int, force_scan: bool = False, out=None) -> torch.Tensor:
    """The search of every row of X (float64, shape-checked) into ``out`` or a new tensor,
    chunk by chunk (``_chunk``), so that the work arrays stay a chunk's size. The values are
    checked on every row before anything is written."""
    G, L = X.shape
    rows = max(1, _chunk(X.device) // L)
    parts = [slice(s0, s0 + rows) for s0 in range(0, G, rows)]
    m = torch.cat([X[part].abs().amax(dim=1, keepdim=True) for part in parts]) if G else \
        torch.zeros((0, 1), dtype=X.dtype, device=X.device)
    _check_rows(X, m)
    y = torch.empty((G, L), dtype=torch.int64, device=X.device) if out is None else out
    for part in parts:
        _search_rows(X[part], m[part], K, force_scan, y[part])
    return y


def search_batch(X: torch.Tensor, K: int, force_scan: bool = False, out=None) -> torch.Tensor:
    """``search`` on every row of the tensor X; ``force_scan`` (for tests) settles every
    pulse by the float64 path, and there always by the exact scan. ``out``: a (G, L) int64
    tensor on X's device to write into."""
    X = _check_X(X)
    _, K = check_LK(X.shape[1], K)
    return _search(X, K, force_scan, out)


# ---- encode / decode -------------------------------------------------------------------------
#
# Indices below 2^62 are coded here in plain int64; wider ones as 32-bit digits by
# ``_torch_digits.py`` (which states the decoder's algebra in j = N(l, k) - i).

SMALL_BITS = digits.SMALL_BITS


@lru_cache(maxsize=8)
def _small_tables(L: int, K: int, device: str) -> torch.Tensor:
    """N and M as one (2, L+1, K+1) int64 tensor, for (L, K) whose counts fit SMALL_BITS
    (every entry used is <= N(L, K); M(l, K), never used, is clamped to fit)."""
    N, M = digits.counts_and_m(L, K)
    cap = (1 << 63) - 1
    return torch.tensor([[[min(v, cap) for v in row] for row in T] for T in (N, M)],
                        dtype=torch.int64, device=device)


@lru_cache(maxsize=8)
def _small_blocks(L: int, K: int, l_max: int, device: str):
    """The decoder's rows Q(l, .) and steps S(l, .) (``_torch_digits.blocks``) for
    l <= l_max, where N(l, K) < 2^62, as two (l_max+1, 2K+1) int64 tensors."""
    Q, S = digits.blocks(L, K)
    return (torch.tensor(Q[: l_max + 1], device=device),
            torch.tensor(S[: l_max + 1], device=device))


def check_points(Y: torch.Tensor, K):
    """(Y as int32, K): Y a (G, L) integer tensor of pyramid points of L1 norm K (K = row 0's
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
    # A point has |y_i| <= K; checking it first (one min/max pass) makes int32 exact for Y
    # and its norms (<= L K < 2^31 within the table limits): torch's int32 kernels run
    # several times faster than its int64 abs on a CPU. abs(-2**63) is -2**63 in int64:
    # hence the A < 0 when reporting.
    if Y.numel():
        lo, hi = torch.aminmax(Y)
        if int(lo) < -K or int(hi) > K:
            A = Y.abs()
            g, c = (int(v) for v in ((A > K) | (A < 0)).nonzero()[0])
            raise beyond_K_error(g, c, abs(int(Y[g, c])), K)
    Y = Y.to(torch.int32)
    norms = Y.abs().sum(dim=1)
    bad = norms != K
    if bool(bad.any()):
        g = int(bad.nonzero()[0, 0])
        raise norm_error(g, int(norms[g]), K)
    return Y, K


def encode_batch(Y: torch.Tensor, K: int, out=None) -> torch.Tensor:
    """Ranks of the rows of Y (checked by ``check_points``) as (G, W) int64 limbs.

    The contribution of coordinate p (see _numba.py) is N(l, k) - T(l, k - |y_p|), T = M
    for y_p > 0 and N otherwise, k the pulses left before p: two look-ups in one table,
    summed over the coordinates in int64 (every contribution is >= 0 and their sum is the
    rank, so nothing overflows below 2^62), or digit by digit for wider ranks."""
    G, L = Y.shape
    if bits(L, K) > SMALL_BITS:
        return digits.encode(Y, K, n_limbs(L, K), out)
    T = _small_tables(L, K, str(Y.device)).reshape(-1)
    at_N, at_T = digits.term_indices(Y, K)           # (G, L)
    rank = T.index_select(0, at_N.view(-1)).view(G, L).sum(dim=1)
    rank -= T.index_select(0, at_T.view(-1)).view(G, L).sum(dim=1)
    if out is None:
        return rank[:, None]
    out[:, 0] = rank
    return out


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
    if W == 1 and top < 1 << 63 and I.numel():   # fast path, one pass: a limb of 2^63
        lo, hi = torch.aminmax(I)                 # or more reads negative in int64
        if int(lo) >= 0 and int(hi) <= top:
            return I                              # (else the loop below names the bad one)
    last = torch.tensor([(top >> (32 * d)) & digits.MASK32 for d in range(2 * W)],
                        dtype=torch.int64, device=I.device)
    bad = digits.less(last[:, None], digits.to_digits(I, 2 * W))
    if bool(bad.any()):
        g = int(bad.nonzero()[0, 0])
        raise ValueError(f"index {limbs_to_ints(I[g:g + 1])[0]} (group {g}) out of range "
                         f"for N({L}, {K}) = {count(L, K)}")
    return I


def decode_batch(I: torch.Tensor, L: int, K: int, out=None) -> torch.Tensor:
    """Points (G, L) int64 of (G, W) int64 limb tensors (checked by ``check_indices``).

    Per coordinate, with j = N(l, k) - i: the first q with Q(l, q) >= j (two table reads
    and one compare, ``_torch_buckets.py``; ``searchsorted`` on rows without a table) names
    the block, then j -= S(l, q) (``_torch_digits.py``). The q of every coordinate is kept
    and the points are read from them at the end (``points_of_blocks``). Indices wider
    than 2^62 run their first coordinates on digits there, then the rest here in int64."""
    dev = I.device
    qT = torch.empty((L, I.shape[0]), dtype=torch.int32, device=dev)   # q <= 2K < 2^31
    if bits(L, K) > SMALL_BITS:
        j, p = digits.decode_wide(I, L, K, qT)
    else:
        j, p = count(L, K) - I[:, 0], 0                # a new tensor: updated in place
    Q, S = _small_blocks(L, K, L - p, str(dev))
    shift, T, V = buckets.small_tables(L, K, L - p, str(dev))
    work = buckets.work_rows(j)
    for p in range(p, L):
        l, q = L - p, qT[p]
        if shift[l] < 0:
            torch.searchsorted(Q[l], j, out_int32=True, out=q)
        else:
            buckets.first_block(j, shift[l], T[l], V[l], work, out=q)
        j -= torch.index_select(S[l], 0, q, out=work[2])
    return digits.points_of_blocks(qT, K, out)

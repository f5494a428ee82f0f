"""The torch decoder's block lookup: the first q with Q(l, q) >= j by two table reads.

The decoder (``_torch_digits.py``) must find, for every group, the first q with
Q(l, q) >= j in an increasing table row Q(l, 0..2K). ``torch.searchsorted`` does it by
bisection, whose branches a CPU mispredicts (15 to 40 ns an element here). A float's bit
pattern read as an integer grows with the float, and its top bits are the exponent and
then the mantissa: so ``bits(j) >> (mantissa bits - b)`` names the bucket [E_t, E_(t+1))
of relative width 2^-b that holds j, E_t = 2^e (1 + m 2^-b). A table per row gives, for
each bucket t,

    T[t] = the first q with Q(l, q) >= E_t (1 - mu)     and    V[t] = Q(l, T[t]),

and b is the smallest that makes every bucket *simple*: Q(l, T[t] + 1) >= E_(t+1) (1 + mu)
(at most one block edge in the bucket) or Q(l, T[t]) >= E_(t+1) (1 + mu) (none). Then, for
j in bucket t,

    q = T[t]        if j <= V[t],        else T[t] + 1.

Why it is exact: every q < T[t] has Q(l, q) < E_t (1 - mu) < j, and if j > V[t] then
Q(l, T[t] + 1) >= E_(t+1) (1 + mu) > j. The margin mu covers the error of the float that
j was read as, and of the tables' float64 arithmetic (about 2^-53):

- int64 j (the rows where N(l, K) < 2^62) are read as float32 (error below 2^-23, mu =
  2^-21): the keys are int32, and each row's table is a view that starts 127 2^b entries
  before the row (all rows share one block of padding in front), so a key indexes it as
  it is. The compare j <= V[t] is exact, in int64.
- wide j (32-bit digits) are read as float64 to 2^-48 (``_torch_digits.py``; mu =
  2^-44), keys (int64) plus the row's offset index one flat table; j is then decided in
  float64 when it is not within 2^-45 of V[t], and by the exact digits when it is.

A row that no b <= ``B_MAX`` makes simple within ``MAX_ROW`` buckets (the last row, l = 1:
its entries 1, 2, 2, ... repeat), or that passes float64's range, keeps ``searchsorted``
(shift -1). The tables hold 4,000 to 20,000 entries at the small settings of the benchmark
(the int32 keys' padding included) and about 320,000 at (128, 187).

The numba tier keeps its own decoder: the same lookup there, one group at a time, makes
each coordinate a chain of dependent loads (j, its bucket, the edge, the step, the next j)
and measured 2.6x slower at (128, 187) than its scan, whose branches the CPU predicts and
runs ahead of.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

B_MAX = 12                                   # at most 2^12 buckets per octave
MAX_ROW = 1 << 16                            # and 2^16 per row
_F32 = (23, 127, 2.0 ** -21)                 # (mantissa bits, exponent bias, margin mu)
_F64 = (52, 1023, 2.0 ** -44)


def _row_buckets(row: list[int], e_lo: int, mu: float):
    """(b, T) for one increasing row of exact ints: the smallest b <= B_MAX that makes
    every bucket simple, and T[t] for the buckets of exponents e_lo .. (row's top) + 1;
    None when there is no such b (within MAX_ROW buckets) or the row passes float64's
    range."""
    top = row[-1].bit_length() + 1
    if top > 1000:
        return None
    Qf = np.array([float(v) for v in row] + [math.inf])
    for b in range(B_MAX + 1):
        if (top - e_lo + 1) << b > MAX_ROW:
            return None
        t = np.arange((top - e_lo + 1) << b)
        edge = lambda t: np.ldexp(1.0 + (t & ((1 << b) - 1)) / 2.0 ** b, (t >> b) + e_lo)
        lo, hi = edge(t) * (1 - mu), edge(t + 1) * (1 + mu)
        T = np.minimum(np.searchsorted(Qf[:-1], lo, side="left"), len(row) - 1)
        if ((Qf[T + 1] >= hi) | (Qf[T] >= hi)).all():
            return b, T
    return None


@lru_cache(maxsize=8)
def small_tables(L: int, K: int, l_max: int, device: str):
    """For the rows l = 1 .. l_max of ``_torch_digits.blocks(L, K)`` (all below 2^62):
    (shift, T, V), T[l] (int32) and V[l] (int64) views indexed by the int32 key
    bits(float32(j)) >> shift[l]; shift[l] = -1 and T[l] = V[l] = None: no table."""
    from ._torch_digits import blocks
    mant, bias, mu = _F32
    Q = blocks(L, K)[0]
    rows = {l: _row_buckets(Q[l], 0, mu) for l in range(1, l_max + 1)}
    rows = {l: got for l, got in rows.items() if got is not None}
    start = pad = max([bias << b for b, _ in rows.values()], default=0)
    Ts, Vs, shift, at = [np.zeros(pad, np.int32)], [np.zeros(pad, np.int64)], \
        [-1] * (l_max + 1), {}
    for l, (b, T) in rows.items():
        shift[l], at[l] = mant - b, start - (bias << b)   # key of 1.0 = bias << b
        Ts.append(T.astype(np.int32))
        Vs.append(np.array([Q[l][i] for i in T], dtype=np.int64))
        start += len(T)
    T_all = torch.as_tensor(np.concatenate(Ts), device=device)
    V_all = torch.as_tensor(np.concatenate(Vs), device=device)
    views = lambda A: [A[at[l]:] if l in at else None for l in range(l_max + 1)]
    return shift, views(T_all), views(V_all)


@lru_cache(maxsize=8)
def wide_tables(L: int, K: int, l_min: int, device: str):
    """For the rows l = l_min .. L: (shift, off, T, Vf): key = (bits(float64 j) >> shift[l])
    + off[l] indexes the flat tables T (int32) and Vf (float64 Q(l, T)); shift[l] = -1: no
    table. Buckets start at exponent -1 (a wide j read as a float may fall below 1)."""
    from ._torch_digits import blocks
    mant, bias, mu = _F64
    Q = blocks(L, K)[0]
    shift, off, Ts, Vfs, start = [-1] * (L + 1), [0] * (L + 1), [], [], 0
    for l in range(l_min, L + 1):
        got = _row_buckets(Q[l], -1, mu)
        if got is None:
            continue
        b, T = got
        shift[l], off[l] = mant - b, start - ((bias - 1) << b)
        Ts.append(T)
        Vfs.append(np.array([float(Q[l][i]) for i in T]))
        start += len(T)
    cat = lambda parts: np.concatenate(parts) if parts else np.zeros(1)
    return (shift, off, torch.as_tensor(cat(Ts), dtype=torch.int32, device=device),
            torch.as_tensor(cat(Vfs), dtype=torch.float64, device=device))


def work_rows(j: torch.Tensor):
    """The work rows of ``first_block`` for int64 j: (float32, int32 key, int64), reused
    from one coordinate to the next (no allocation per coordinate)."""
    return (torch.empty(j.shape, dtype=torch.float32, device=j.device),
            torch.empty(j.shape, dtype=torch.int32, device=j.device), torch.empty_like(j))


def first_block(j: torch.Tensor, shift: int, T: torch.Tensor, V: torch.Tensor, work,
                out: torch.Tensor) -> torch.Tensor:
    """out (int32) = the first q with Q(l, q) >= j for every int64 j (>= 1, below 2^62)
    of row l, from its ``small_tables`` (shift, T, V): q = T + [j > V], the compare
    exact as the sign of V - j."""
    jf, key, v = work
    torch.bitwise_right_shift(jf.copy_(j).view(torch.int32), shift, out=key)
    torch.index_select(T, 0, key, out=out)
    torch.index_select(V, 0, key, out=v)
    return out.sub_(v.sub_(j).bitwise_right_shift_(63))

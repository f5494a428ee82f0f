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
``pvqref.pyramid``). Inputs given as NumPy arrays come back as NumPy arrays.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from . import _check_LK, _check_table, _refuse_beyond_K, count, n_limbs

_MASK32 = 0xFFFFFFFF


def _as_tensor(obj, kinds: str, what: str):
    """(tensor, came_from_numpy). NumPy input must have a dtype kind in ``kinds`` (else
    ValueError "``what``, got <dtype>"); floats become float64, as on the NumPy tiers."""
    if isinstance(obj, torch.Tensor):
        return obj, False
    a = np.asarray(obj)
    if a.dtype.kind not in kinds:
        raise ValueError(f"{what}, got {a.dtype}")
    if a.dtype.kind == "f":
        a = a.astype(np.float64, copy=False)
    return torch.as_tensor(a), True


def _back(t: torch.Tensor, to_numpy: bool, uint64: bool = False):
    if not to_numpy:
        return t
    out = t.cpu().numpy()
    return out.view(np.uint64) if uint64 else out


# ---- search ---------------------------------------------------------------------------------

def _check_X(X: torch.Tensor) -> torch.Tensor:
    if X.ndim != 2 or X.shape[1] < 1:
        raise ValueError(f"X must be a (G, L) tensor of groups, got shape {tuple(X.shape)}")
    if X.dtype == torch.bool or X.is_complex():
        raise ValueError(f"X must be real (float or integer dtype), got {X.dtype}")
    X = X.to(torch.float64)
    if not bool(torch.isfinite(X).all()):
        raise ValueError("X contains NaN or Inf")
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
    """Per row, the index the reference scan would pick (vectorised, with exact fallback)."""
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


def _search(X: torch.Tensor, K: int, force_scan: bool = False) -> torch.Tensor:
    G, L = X.shape
    dev = X.device
    A = X.abs()
    ax = A / A.amax(dim=1, keepdim=True)
    y = torch.zeros((G, L), dtype=torch.int64, device=dev)
    if K > L // 2:                           # projection, sums left to right
        s = torch.zeros(G, dtype=torch.float64, device=dev)
        for j in range(L):
            s = s + ax[:, j]
        rcp = torch.full_like(s, K + 0.8) / s
        y = torch.floor(ax * rcp[:, None]).to(torch.int64)
        y[y.sum(dim=1) > K] = 0
    xy = torch.zeros(G, dtype=torch.float64, device=dev)
    for j in range(L):
        xy = xy + ax[:, j] * y[:, j].to(torch.float64)
    yy = (y * y).sum(dim=1).to(torch.float64)  # exact integers: order does not matter
    left = K - y.sum(dim=1)
    rows = torch.arange(G, device=dev)
    n_steps = int(left.max()) if G else 0
    for step in range(n_steps):
        act = rows[left > step]
        t = xy[act, None] + ax[act]
        yf = y[act].to(torch.float64)
        den = yy[act, None] + 2.0 * yf + 1.0
        c = _pulse_argmax(t * t, den, force_scan)
        xy[act] = xy[act] + ax[act, c]
        yy[act] = yy[act] + (2.0 * yf[torch.arange(len(act), device=dev), c] + 1.0)
        y[act, c] += 1
    return torch.where(X < 0, -y, y)


def search_batch(X, K: int, backend: str = "torch", force_scan: bool = False):
    from . import search_batch as np_search_batch
    X, to_numpy = _as_tensor(X, "iuf", "X must be real (float or integer dtype)")
    if backend != "torch":                   # torch tensor into a NumPy tier
        Xc = X.detach().cpu()
        if Xc.dtype.is_floating_point:       # bf16 has no NumPy dtype; float64 holds every
            Xc = Xc.to(torch.float64)        # fp16/bf16/fp32 exactly (and is what they use)
        out = np_search_batch(Xc.numpy(), K, backend)
        return torch.as_tensor(out, device=X.device)
    X = _check_X(X)
    _, K = _check_LK(X.shape[1], K)
    return _back(_search(X, K, force_scan), to_numpy)


# ---- multi-digit helpers (32-bit digits in int64, least significant first) ------------------

@lru_cache(maxsize=8)
def _digit_tables(L: int, K: int, device: str):
    from ._numba import tables
    N, M = tables(L, K)[:2]
    def split(T):
        lo, hi = T & np.uint64(_MASK32), T >> np.uint64(32)
        d = np.stack([lo, hi], axis=-1).reshape(T.shape[0], T.shape[1], -1)
        return torch.as_tensor(d.astype(np.int64), device=device)
    return split(N), split(M)


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
    """a - b for normalised a >= b, borrows by look-ahead: digit i borrows exactly when the
    nearest non-zero digit of a - b below i is negative."""
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

def _check_Y_dtype(Y: torch.Tensor):
    if Y.dtype.is_floating_point or Y.is_complex() or Y.dtype == torch.bool:
        raise ValueError(f"Y must have an integer dtype, got {Y.dtype}")


def _check_Y(Y: torch.Tensor, K):
    if Y.ndim != 2 or Y.shape[1] < 1:
        raise ValueError(f"Y must be a (G, L) tensor of pyramid points, "
                         f"got shape {tuple(Y.shape)}")
    _check_Y_dtype(Y)
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
        _check_table(L, 0)
        K = sum(abs(v) for v in Y[0].tolist()) if len(Y) else 0
    L, K = _check_LK(L, K)
    _check_table(L, K)
    # A point has |y_i| <= K; checking it first keeps the int64 norms exact (<= L K).
    # abs(-2**63) is -2**63 in int64: hence the A < 0.
    A = Y.abs()
    big = (A > K) | (A < 0)
    if bool(big.any()):                      # the NumPy tier words the error
        _refuse_beyond_K(Y.cpu().numpy(), big.cpu().numpy(), K)
    norms = A.sum(dim=1)
    bad = norms != K
    if bool(bad.any()):
        g = int(bad.nonzero()[0, 0])
        raise ValueError(f"row {g} of Y has L1 norm {int(norms[g])}, expected K={K} "
                         "(all groups of a batch share K)")
    return Y, K


def encode_batch(Y, K=None, backend: str = "torch"):
    from . import encode_batch as np_encode_batch
    Y, to_numpy = _as_tensor(Y, "iu", "Y must have an integer dtype")
    if backend != "torch":
        _check_Y_dtype(Y)                    # (bf16 etc. have no NumPy twin)
        out = np_encode_batch(Y.detach().cpu().numpy(), K, backend)
        return torch.as_tensor(out.view(np.int64), device=Y.device)
    Y, K = _check_Y(Y, K)
    G, L = Y.shape
    Nd, Md = _digit_tables(L, K, str(Y.device))
    D = Nd.shape[-1]
    flatN, flatM = Nd.reshape(-1, D), Md.reshape(-1, D)
    ls = (L - torch.arange(L, device=Y.device))[None, :]
    out = torch.empty((G, D), dtype=torch.int64, device=Y.device)
    chunk = max(1, (1 << 22) // (L * D))
    for s in range(0, G, chunk):
        y = Y[s:s + chunk]
        a = y.abs()
        k_before = K - (a.cumsum(dim=1) - a)
        hi = flatN[ls * (K + 1) + k_before]              # N(l, k)
        rest = ls * (K + 1) + k_before - a
        lo = torch.where((y > 0)[..., None], flatM[rest], flatN[rest])
        out[s:s + chunk] = _normalize((hi - lo).sum(dim=1))
    return _back(_digits_to_limbs(out), to_numpy, uint64=True)


def decode_batch(indices, L: int, K: int, backend: str = "torch"):
    from . import decode_batch as np_decode_batch, _to_numpy_limbs
    if isinstance(indices, (list, tuple, range)):
        from . import ints_to_limbs
        indices = ints_to_limbs(indices, L, K)
    if isinstance(indices, torch.Tensor):
        I, to_numpy = indices, False
    else:                                    # NumPy limbs, validated, as int64 bit patterns
        I, to_numpy = torch.as_tensor(_to_numpy_limbs(indices).view(np.int64)), True
    if backend != "torch":
        out = np_decode_batch(_to_numpy_limbs(I), L, K, backend)
        return torch.as_tensor(out, device=I.device)
    L, K = _check_LK(L, K)
    _check_table(L, K)
    if I.dtype == torch.uint64:              # same 64-bit patterns
        I = I.view(torch.int64)
    W = n_limbs(L, K)
    if I.ndim != 2 or I.shape[1] != W or I.dtype != torch.int64:
        raise ValueError(f"indices for (L={L}, K={K}) must be a (G, {W}) int64 tensor of limbs, "
                         f"got {tuple(I.shape)} {I.dtype}")
    dev = I.device
    Nd, Md = _digit_tables(L, K, str(dev))
    i = _limbs_to_digits(I)
    top = count(L, K) - 1                                   # largest valid index
    last = torch.tensor([(top >> (32 * d)) & _MASK32 for d in range(Nd.shape[-1])],
                        dtype=torch.int64, device=dev)
    bad = _lex_lt(last[None, :], i)
    if bool(bad.any()):
        g = int(bad.nonzero()[0, 0])
        from . import limbs_to_ints
        raise ValueError(f"index {limbs_to_ints(I[g:g + 1])[0]} (group {g}) out of range "
                         f"for N({L}, {K}) = {count(L, K)}")
    G = I.shape[0]
    k = torch.full((G,), K, dtype=torch.int64, device=dev)
    y = torch.zeros((G, L), dtype=torch.int64, device=dev)
    n_bisect = max(1, K.bit_length())
    for p in range(L):
        l = L - p
        nonzero = ~_lex_lt(i, Nd[l - 1][k])                 # i >= N(l-1, k): |y_p| > 0
        j = _sub(Nd[l][k], i)
        lo, hi = torch.zeros_like(k), k.clone()             # bisect: first m with M(l,m) >= j
        for _ in range(n_bisect):
            mid = (lo + hi) // 2
            below = _lex_lt(Md[l][mid], j) & (lo < hi)
            lo, hi = torch.where(below, mid + 1, lo), torch.where(below | (lo == hi), hi, mid)
        a = k - lo                                          # largest a with M(l, k-a) >= j
        r = _sub(Md[l][k - a], j)
        neg = ~_lex_lt(r, Nd[l - 1][k - a])
        r = torch.where(neg[:, None], _sub(r, Nd[l - 1][k - a]), r)
        y[:, p] = torch.where(nonzero, torch.where(neg, -a, a), 0)
        i = torch.where(nonzero[:, None], r, i)
        k = torch.where(nonzero, k - a, k)
    return _back(y, to_numpy)

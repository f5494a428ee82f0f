"""VPTQ-style vector quantization of one layer with GPTQ's error feedback.

    codebooks:  stage s trains 2^{k_s} entries on the residual of the stages before it,
                by k-means over the column vectors of W weighted by H_jj, stored in fp16;
    quantize:   for j = 0 .. n-1: column j's m / v vectors, each the sum over stages of its
                nearest entry of that stage (stage by stage, on the residual), then
                e_j = (X_j - Q_j) / C_jj and X_R <- X_R - e_j C_jR for the later columns R,
                with H^{-1} = C^T C (C upper triangular, damped H as GPTQ's).

The loop runs in NumPy float64 on the CPU, or in torch on the weight's device with
``backend="torch"`` (one rank-one update per column); the nearest-entry search, the
costly part, runs in the chosen tier.

Chapter: RSAVQ's natural-gradient error projection (book/rsavq.ipynb).
"""

from __future__ import annotations

import numpy as np

from .. import _checks, _tiers
from . import DEFAULT_ITERS, VECTOR, VQCodes, assign, kmeans, plan_stages, vectors


def _xp(torch_tier: bool):
    """The array module of the tier: torch, or NumPy."""
    if torch_tier:
        import torch
        return torch
    return np


def train_codebooks(W, H, index_bits, v: int = VECTOR, iters: int = DEFAULT_ITERS,
                    seed: int = 0, backend: str = "auto") -> tuple:
    """One codebook per stage for W (m, n), fp16 values held as float64 (NumPy, or tensors
    on W's device for the torch tier), stage s of 2^{k_s} entries trained on the residual
    of the stages before it, every vector of column j weighted by H_jj."""
    torch_tier = _tiers.resolve(backend, W) == "torch"
    X = vectors(W, v)
    diag = H.diagonal() if torch_tier else np.diag(H)
    w = diag.repeat_interleave(W.shape[0] // v) if torch_tier else np.repeat(diag, W.shape[0] // v)
    books = []
    for s, k in enumerate(index_bits):
        C = kmeans(X, 2 ** k, _tiers.to_numpy(w, np.float64), iters, seed + s, backend)
        C = C.half().double() if torch_tier else C.astype(np.float16).astype(np.float64)
        X = X - C[assign(X, C, backend)]
        books.append(C)
    return tuple(books)


def vq_quantize(W, H, bpw: float, v: int = VECTOR, feedback: bool = True,
                damp: float = 0.01, iters: int = DEFAULT_ITERS, seed: int = 0,
                max_stages: int = 2, name: str = "layer", backend: str = "numba",
                index_bits=None):
    """``(Q, codes)``: W (m, n) vector-quantized against H (n, n) within ``bpw`` bits per
    weight, codebooks included (:func:`pvqref.vq.plan_stages`, or the stages'
    ``index_bits`` given); Q float64 (NumPy, or a tensor on W's device with
    ``backend="torch"``) equal to ``codes.dequantize()``. ``feedback=False``: each column
    on its own (plain VQ). The loop runs in NumPy for "reference" and "numba", in torch on
    W's device for "torch". Chapter: RSAVQ's natural-gradient error projection
    (book/rsavq.ipynb)."""
    from ..hessian import check_hessian, reference as href
    if len(getattr(W, "shape", ())) != 2:
        raise ValueError(f"the weight of {name} must be 2-D, got shape "
                         f"{tuple(getattr(W, 'shape', ()))}")
    _checks.finite(W, f"the weight of {name}")
    check_hessian(H, W.shape[1], name)
    m, n = W.shape
    if m % v:
        raise ValueError(f"{name} has {m} output rows, not a multiple of the vector length "
                         f"{v}: vector quantization cuts each column into vectors of {v}")
    ks = tuple(index_bits) if index_bits else plan_stages((m, n), bpw, v, max_stages)
    torch_tier = _tiers.resolve(backend, W) == "torch"
    xp = _xp(torch_tier)
    if torch_tier:
        from ..hessian import _torch as htorch
        W = _tiers.to_torch(W).to(xp.float64).clone()
        H = _tiers.to_torch(H).to(device=W.device, dtype=xp.float64)
        C, dead, _ = htorch.inverse_cholesky(H, damp, 3, name)
    else:
        W = _tiers.to_numpy(W, np.float64).astype(np.float64)
        H = _tiers.to_numpy(H, np.float64).astype(np.float64)
        C, dead, _ = href.inverse_cholesky(H, damp, 3, name)
    W[:, dead] = 0
    books = train_codebooks(W, H, ks, v, iters, seed, backend)
    X, Q = W.clone() if torch_tier else W.copy(), xp.zeros_like(W)
    indices = [np.empty((n, m // v), dtype=np.int64) for _ in books]
    for j in range(n):
        r, q = X[:, j].reshape(m // v, v), xp.zeros_like(X[:, j]).reshape(m // v, v)
        for s, book in enumerate(books):
            i = assign(r, book, backend)
            indices[s][j] = _tiers.to_numpy(i)
            q += book[i]
            r = r - book[i]
        Q[:, j] = q.reshape(-1)
        if feedback and j + 1 < n:
            X[:, j + 1:] -= xp.outer((X[:, j] - Q[:, j]) / C[j, j], C[j, j + 1:])
    codes = VQCodes((m, n), v, tuple(_tiers.to_numpy(b, np.float64).astype(np.float16)
                                     for b in books), tuple(indices))
    return Q, codes

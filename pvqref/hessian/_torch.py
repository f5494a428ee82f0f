"""Hessian-aware quantization, torch tier: the same functions as ``reference.py``, every
tensor on the input's device (CUDA when present), the path that quantizes whole models.

Differences from the oracle are of speed only: GPTQ's updates are applied lazily, in
batches of columns (GPTQ's "lazy batch" trick: a column's update reaches the columns of
its own batch at once and the rest of the matrix once per batch, one matrix product), and
the metric refinement scores all rows of a block together. The maths is in
``reference.py``; tests/test_hessian.py checks that both tiers give the same weights.
"""

from __future__ import annotations

import torch

from .. import pyramid

LAZY_BATCH = 128        # columns per lazy batch (GPTQ's default)


def inverse_cholesky(H, damp: float, retries: int, name: str):
    """Torch version of ``reference.inverse_cholesky``: (C, dead, damp_used), C upper
    triangular with the damped H^{-1} = C^T C. Chapter: Hessian-aware PVQ (book/hessian.ipynb)."""
    H = H.to(torch.float64).clone()
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1.0
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    mean_diag = float(torch.diagonal(H).mean())
    for attempt in range(retries + 1):
        lower, info = torch.linalg.cholesky_ex(H + damp * mean_diag * eye)
        if int(info) == 0:
            inverse = torch.cholesky_inverse(lower)
            C, info = torch.linalg.cholesky_ex((inverse + inverse.T) / 2, upper=True)
            if int(info) == 0:
                return C, dead, damp
        damp = damp * 10 if damp > 0 else 1e-6
    raise ValueError(f"the Hessian of {name} is not positive definite even with damping "
                     f"{damp / 10:g} x mean diagonal ({retries} retries): not a second moment "
                     f"of activations (NaN, a negative eigenvalue or a wrong layer?)")


def minmax_grid(columns, bits: int):
    """(scale, zero) per row of ``columns`` (m, g), fp16-rounded as in ``reference``.
    Chapter: Hessian-aware PVQ (book/hessian.ipynb)."""
    lo, hi = columns.amin(dim=1), columns.amax(dim=1)
    return (((hi - lo) / (2 ** bits - 1)).half().double(), lo.half().double())


def round_to_grid(w, scale, zero, bits: int):
    """clip(round((w - zero) / scale), 0, 2^b - 1) scale + zero, broadcasting the grid.
    Chapter: Hessian-aware PVQ (book/hessian.ipynb)."""
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.clamp(torch.round((w - zero) / safe), 0, 2 ** bits - 1) * scale + zero


def _static_grids(W, bits: int, group: int):
    """Grid of every (row, group) of the original W: two (m, ceil(n/group)) tensors."""
    grids = [minmax_grid(W[:, g:g + group], bits) for g in range(0, W.shape[1], group)]
    return torch.stack([s for s, _ in grids], dim=1), torch.stack([z for _, z in grids], dim=1)


def gptq(W, C, order, bits: int, group: int, static: bool, feedback: bool = True):
    """Torch version of ``reference.gptq`` with lazy batches of ``LAZY_BATCH`` columns
    rounded to a multiple of ``group``, so that in natural order a group's grid is always
    computed from fully updated columns. Chapter: Hessian-aware PVQ
    (book/hessian.ipynb)."""
    m, n = W.shape
    order = torch.as_tensor(order, device=W.device)
    X = W.to(torch.float64)[:, order].clone()
    Q = torch.zeros_like(X)
    scale, zero = (_static_grids(W.to(torch.float64), bits, group) if static else
                   (torch.zeros(m, -(-n // group), dtype=X.dtype, device=X.device),) * 2)
    scale, zero = scale.clone(), zero.clone()
    group_of = (order // group).tolist()
    batch = group * max(1, LAZY_BATCH // group)
    for b0 in range(0, n, batch):
        b1 = min(b0 + batch, n)
        Xb, Cb = X[:, b0:b1], C[b0:b1, b0:b1]
        errors = torch.zeros_like(Xb)
        for i in range(b1 - b0):
            g = group_of[b0 + i]
            if not static and (b0 + i) % group == 0:
                scale[:, g], zero[:, g] = minmax_grid(Xb[:, i:i + group], bits)
            Q[:, b0 + i] = round_to_grid(Xb[:, i], scale[:, g], zero[:, g], bits)
            if feedback:
                errors[:, i] = (Xb[:, i] - Q[:, b0 + i]) / Cb[i, i]
                Xb[:, i + 1:] -= errors[:, i:i + 1] * Cb[i:i + 1, i + 1:]
        if feedback:
            X[:, b1:] -= errors @ C[b0:b1, b1:]
    out = torch.empty_like(Q)
    out[:, order] = Q
    return out, scale, zero


def _gain_and_error(X, U, A, levels, thresholds, r_hat):
    """Gain code nearest to the metric least-squares gain, reconstruction, metric error
    (as ``reference._gain_and_error``; A None means Euclidean)."""
    XA, UA = (X, U) if A is None else (X @ A, U @ A)
    g_star = (XA * UA).sum(dim=1) / (UA * UA).sum(dim=1)
    t = torch.where(r_hat > 0, g_star / torch.where(r_hat > 0, r_hat, 1.0), 0.0)
    codes = torch.searchsorted(thresholds, t.contiguous(), right=False)
    Qb = (r_hat * levels[codes])[:, None] * U
    E = X - Qb if A is None else (X - Qb) @ A
    return codes, Qb, (E * E).sum(dim=1)


def _directions(X, K: int):
    """Euclidean pyramid search of the rows of X on X's device (the Numba tier on the CPU,
    measured ~7x faster than the torch tier there); zero rows get (K, 0, ..., 0)."""
    Y = torch.zeros(X.shape, dtype=torch.int64, device=X.device)
    Y[:, 0] = K
    live = (X != 0).any(dim=1)
    if bool(live.any()):
        backend = "numba" if X.device.type == "cpu" else "torch"
        Y[live] = pyramid.search_batch(X[live], K, backend=backend).to(X.device)
    return Y


def _unit(Y):
    Yf = Y.to(torch.float64)
    return Yf / torch.linalg.vector_norm(Yf, dim=1, keepdim=True)


def _first_k_by_score(score, width: int):
    """Indices of the ``width`` largest scores per row, ties to the lowest index."""
    return torch.sort(score, dim=1, descending=True, stable=True).indices[:, :width]


def refine_in_metric(X, Y, M, moves: int, width: int):
    """Vectorised ``reference.refine_in_metric``: every row of the block scores its
    width x width candidate moves at once. Chapter: Hessian-aware PVQ (book/hessian.ipynb)."""
    B = X @ M                                     # rows of b = M x (M symmetric)
    Yf = Y.to(torch.float64).clone()
    rows = torch.arange(len(Yf), device=Yf.device)[:, None, None]
    diag = torch.diagonal(M)
    for _ in range(moves):
        p = (B * Yf).sum(dim=1, keepdim=True)
        V = Yf @ M
        q = (Yf * V).sum(dim=1, keepdim=True)
        G = q * B - p * V
        S = torch.sign(Yf)
        rem = _first_k_by_score(torch.where(Yf != 0, -(S * G), -torch.inf), width)
        S_add = torch.where(Yf != 0, S, torch.where(G >= 0, 1.0, -1.0))
        add = _first_k_by_score(S_add * G, width)
        i, j = rem[:, :, None], add[:, None, :]
        si, sj = S[rows, i], S_add[rows, j]
        p2 = p[:, :, None] - si * B[rows, i] + sj * B[rows, j]
        q2 = (q[:, :, None] + 2 * (-si * V[rows, i] + sj * V[rows, j]) + diag[i] + diag[j]
              - 2 * si * sj * M[i, j])
        ok = (i != j) & (p2 > 0) & (Yf[rows, i] != 0)
        score = torch.where(ok, p2 / torch.sqrt(torch.where(ok, q2, 1.0)), -torch.inf)
        flat = score.reshape(len(Yf), -1)
        best = torch.argmax(flat, dim=1)          # first maximum: lowest (i, j) rank
        gain = flat[rows[:, 0, 0], best] > (p / torch.sqrt(q))[:, 0] * (1 + 1e-12)
        if not bool(gain.any()):
            break
        r = rows[gain, 0, 0]
        bi, bj = rem[r, best[gain] // width], add[r, best[gain] % width]
        Yf[r, bi] -= S[r, bi]
        Yf[r, bj] += S_add[r, bj]
    return Yf.to(torch.int64)


def pvq_block_ldlq(W, C, L: int, K: int, levels, thresholds, r_hat, feedback: bool,
                   metric_search: bool, moves: int, width: int, search_backend: str = None):
    """Torch version of ``reference.pvq_block_ldlq`` (``search_backend`` is ignored: the
    search runs on X's device). Chapter: Hessian-aware PVQ (book/hessian.ipynb)."""
    m, n = W.shape
    X_all = W.to(torch.float64).clone()
    Q = torch.zeros_like(X_all)
    Y_all = torch.zeros(X_all.shape, dtype=torch.int64, device=W.device)
    codes_all = torch.zeros((m, n // L), dtype=torch.int64, device=W.device)
    for j in range(n // L):
        lo, hi = j * L, (j + 1) * L
        X = X_all[:, lo:hi]
        A = torch.linalg.solve_triangular(C[lo:hi, lo:hi], torch.eye(
            L, dtype=C.dtype, device=C.device), upper=True)
        Y = _directions(X, K)
        codes, Qb, err = _gain_and_error(X, _unit(Y), A if metric_search else None,
                                         levels, thresholds, r_hat)
        if metric_search:
            Y2 = refine_in_metric(X, Y, A @ A.T, moves, width)
            codes2, Qb2, err2 = _gain_and_error(X, _unit(Y2), A, levels, thresholds, r_hat)
            better = err2 < err
            Y[better], codes[better], Qb[better] = Y2[better], codes2[better], Qb2[better]
        Q[:, lo:hi], Y_all[:, lo:hi], codes_all[:, j] = Qb, Y, codes
        if feedback:
            X_all[:, hi:] -= (X - Qb) @ A @ C[lo:hi, hi:]
    return Q, codes_all, Y_all


def pvq_column_gptq(W, C, L: int, K: int, levels, thresholds, r_hat, feedback: bool,
                    search_backend: str = None):
    """Torch version of ``reference.pvq_column_gptq`` (``search_backend`` is ignored).
    Chapter: Hessian-aware PVQ (book/hessian.ipynb)."""
    m, n = W.shape
    X = W.to(torch.float64).clone()
    Q = torch.zeros_like(X)
    Y_all = torch.zeros(X.shape, dtype=torch.int64, device=W.device)
    codes_all = torch.zeros((n, m // L), dtype=torch.int64, device=W.device)
    for i in range(n):
        x = X[:, i].reshape(m // L, L)
        Y = _directions(x, K)
        codes, Qb, _ = _gain_and_error(x, _unit(Y), None, levels, thresholds,
                                       r_hat[i].expand(m // L))
        Q[:, i], Y_all[:, i], codes_all[i] = Qb.reshape(m), Y.reshape(m), codes
        if feedback:
            err = (X[:, i] - Q[:, i]) / C[i, i]
            X[:, i + 1:] -= torch.outer(err, C[i, i + 1:])
    return Q, codes_all, Y_all


def proxy_loss(W, Q, H) -> float:
    """tr((W - Q) H (W - Q)^T) in float64 on W's device. Chapter: Hessian-aware PVQ
    (book/hessian.ipynb)."""
    E = W.to(torch.float64) - Q.to(torch.float64)
    return float(((E @ H.to(torch.float64)) * E).sum())

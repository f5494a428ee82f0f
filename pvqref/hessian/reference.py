"""Hessian-aware quantization, reference tier: NumPy float64, one column (or block) at a time.

The oracle for :mod:`pvqref.hessian`'s torch tier. Imports neither Numba nor torch; the
PVQ direction search is :func:`pvqref.pyramid.search_batch` on the pyramid tier named by
``search_backend`` ("reference" for the pure oracle, "numba" for speed).

The maths shared by every function here (derived in ``pvqref/hessian/__init__.py``):
the proxy loss of a layer with weights W (m, n) and input second moment H (n, n) is

    loss(Q) = tr((W - Q) H (W - Q)^T) = sum over rows w of (w - q) H (w - q)^T.

Write H^{-1} = C^T C with C upper triangular (Cholesky of the inverse). Quantizing the
columns left to right, block j (columns J) with the error E_J = X_J - Q_J of its
feedback-adjusted target X_J, and then updating the later columns R by

    W_R <- W_R - E_J C_JJ^{-1} C_JR                                     (feedback)

makes the loss split exactly into one term per block,

    loss = sum_j || E_j C_jj^{-1} ||^2    (metric of block j: D_j = C_jj^{-1} C_jj^{-T}),

GPTQ being the case of blocks of one column (D_j = 1 / C_jj^2).
"""

from __future__ import annotations

import numpy as np

from .. import pyramid


def inverse_cholesky(H, damp: float, retries: int, name: str):
    """(C, dead, damp_used): C upper triangular with (H + damp mean(diag H) I)^{-1} = C^T C,
    after GPTQ's dead-column rule (a zero diagonal entry, an input that never fired, is set
    to 1). A failed factorisation retries with ten times the damping, ``retries`` times;
    then ValueError naming the layer. Chapter: Hessian-aware PVQ (book/hessian.ipynb)."""
    H = np.array(H, dtype=np.float64)
    dead = np.diag(H) == 0
    H[dead, dead] = 1.0
    mean_diag = float(np.mean(np.diag(H)))
    for attempt in range(retries + 1):
        damped = H + damp * mean_diag * np.eye(len(H))
        try:
            lower = np.linalg.cholesky(damped)                 # damped = lower lower^T
            inverse = np.linalg.inv(lower.T) @ np.linalg.inv(lower)
            inverse = (inverse + inverse.T) / 2                # exact symmetry for the next
            C = np.linalg.cholesky(inverse).T                  # inverse = C^T C, C upper
            return C, dead, damp
        except np.linalg.LinAlgError:
            damp = damp * 10 if damp > 0 else 1e-6
    raise ValueError(f"the Hessian of {name} is not positive definite even with damping "
                     f"{damp / 10:g} x mean diagonal ({retries} retries): not a second moment "
                     f"of activations (NaN, a negative eigenvalue or a wrong layer?)")


def minmax_grid(columns, bits: int):
    """Per row, the asymmetric min-max grid of ``columns`` (m, g) as (scale, zero): the
    ``pvqref.baselines`` RTN format, fp16 scale (max - min) / (2^bits - 1) and fp16 zero
    point min. Chapter: Hessian-aware PVQ (book/hessian.ipynb)."""
    lo, hi = columns.min(axis=1), columns.max(axis=1)
    scale = ((hi - lo) / (2 ** bits - 1)).astype(np.float16).astype(np.float64)
    zero = lo.astype(np.float16).astype(np.float64)
    return scale, zero


def round_to_grid(w, scale, zero, bits: int):
    """Nearest grid point of every entry of w: clip(round((w - zero) / scale), 0, 2^b - 1)
    scale + zero (a zero scale maps everything to the zero point).
    Chapter: Hessian-aware PVQ (book/hessian.ipynb)."""
    safe = np.where(scale > 0, scale, 1.0)
    codes = np.clip(np.round((w - zero) / safe), 0, 2 ** bits - 1)
    return codes * scale + zero


def gptq(W, C, order, bits: int, group: int, static: bool, feedback: bool = True):
    """GPTQ on W (m, n) float64 with C the upper Cholesky factor of the damped H^{-1}
    *in processing order* ``order`` (a permutation of the columns). Groups are ``group``
    consecutive original columns sharing a min-max grid per row (the last group is shorter
    when ``group`` does not divide n: GPTQ's g_idx = column // group), computed from the
    original W when ``static`` (needed with act-order), else from the updated W when the
    loop reaches the group's first column. Column by column, no lazy batches (the oracle); without
    ``feedback`` each column is just rounded (RTN on the same grid). Returns Q in the
    original column order and the grid, (scale, zero) each (m, ceil(n / group)).
    Chapter: Hessian-aware PVQ (book/hessian.ipynb)."""
    m, n = W.shape
    X = np.array(W[:, order], dtype=np.float64)     # targets, updated by the feedback
    Q = np.zeros_like(X)
    grids = {}
    if static:
        for g in range(-(-n // group)):             # the last group may be shorter
            grids[g] = minmax_grid(W[:, g * group:(g + 1) * group], bits)
    for i in range(n):
        g = order[i] // group
        if g not in grids:                          # natural order: group starts here
            grids[g] = minmax_grid(X[:, i:i + group], bits)
        Q[:, i] = round_to_grid(X[:, i], *grids[g], bits)
        # err = (x - q) / C_ii; every later column k moves by -err C_ik.
        if feedback:
            err = (X[:, i] - Q[:, i]) / C[i, i]
            X[:, i + 1:] -= np.outer(err, C[i, i + 1:])
    out = np.empty_like(Q)
    out[:, order] = Q
    groups = range(-(-n // group))
    return (out, np.stack([grids[g][0] for g in groups], axis=1),
            np.stack([grids[g][1] for g in groups], axis=1))


def _gain_and_error(X, U, A, levels, thresholds, r_hat):
    """For unit directions U (m, L) of targets X: the gain code minimising the error in the
    metric of A (||(x - g u) A||^2, A = I for Euclidean), the reconstruction and that error.
    The error is a parabola in g with its minimum at g* = <xA, uA> / ||uA||^2, so the level
    nearest to t* = g* / r_hat is the best level."""
    XA, UA = X @ A, U @ A
    g_star = np.sum(XA * UA, axis=1) / np.sum(UA * UA, axis=1)
    t = np.divide(g_star, r_hat, out=np.zeros_like(g_star), where=r_hat > 0)
    codes = np.searchsorted(thresholds, t, side="left")
    Qb = (r_hat * levels[codes])[:, None] * U
    return codes, Qb, np.sum(((X - Qb) @ A) ** 2, axis=1)


def _directions(X, K: int, search_backend: str):
    """Pyramid points of the rows of X (Euclidean search); an all-zero row gets the fixed
    point (K, 0, ..., 0), as in pvqref.gain."""
    Y = np.zeros(X.shape, dtype=np.int64)
    Y[:, 0] = K
    live = np.any(X != 0, axis=1)
    if live.any():
        Y[live] = pyramid.search_batch(X[live], K, backend=search_backend)
    return Y


def _unit(Y):
    Yf = Y.astype(np.float64)
    return Yf / np.linalg.norm(Yf, axis=1, keepdims=True)


def refine_in_metric(X, Y, M, moves: int, width: int):
    """Move pulses of the pyramid points Y (m, L) to raise s(y) = <x, y>_M / ||y||_M, the
    cosine in the metric M (L, L), row by row (plain loops: the oracle).

    One move takes a pulse off a coordinate i with y_i != 0 and puts one on j != i, with
    the sign of y_j (where y_j = 0: the sign of g_j below), so ||y||_1 stays K. With
    b = M x, p = <b, y>, q = y^T M y, v = M y, a move by d = -s_i e_i + s e_j changes
        p by  -s_i b_i + s b_j,
        q by  2 (-s_i v_i + s v_j) + M_ii + M_jj - 2 s_i s M_ij.
    The gradient of s, proportional to g = q b - p v, ranks the coordinates: the ``width``
    with the smallest s_i g_i are removal candidates, the ``width`` with the largest
    |g_j| (s = sign g_j where y_j = 0, else s = sign y_j and score s g_j) addition candidates;
    every pair is scored exactly and the best move is made if it raises s. At most
    ``moves`` moves per row. Ties go to the lowest index. Returns the new points.
    Chapter: Hessian-aware PVQ (book/hessian.ipynb)."""
    Y = Y.copy()
    for r in range(len(Y)):
        b = M @ X[r]
        y = Y[r].astype(np.float64)
        for _ in range(moves):
            p, v = b @ y, M @ y
            q = y @ v
            g = q * b - p * v
            s_y = np.sign(y)
            rem = np.flatnonzero(y != 0)
            rem = rem[np.argsort(s_y[rem] * g[rem], kind="stable")[:width]]
            s_add = np.where(y != 0, s_y, np.where(g >= 0, 1.0, -1.0))
            add = np.argsort(-(s_add * g), kind="stable")[:width]
            moves_scored = []                          # (score, move) in (i, j) rank order
            for i in rem:
                for j in add:
                    si, sj = s_y[i], s_add[j]
                    p2 = p - si * b[i] + sj * b[j]
                    q2 = (q + 2 * (-si * v[i] + sj * v[j]) + M[i, i] + M[j, j]
                          - 2 * si * sj * M[i, j])
                    ok = i != j and p2 > 0
                    moves_scored.append((p2 / np.sqrt(q2) if ok else -np.inf, (i, j, si, sj)))
            scores = [score for score, _ in moves_scored]
            best = int(np.argmax(scores))               # the first maximum
            if not scores[best] > p / np.sqrt(q) * (1 + 1e-12):
                break
            i, j, si, sj = moves_scored[best][1]
            y[i] -= si
            y[j] += sj
        Y[r] = y.astype(np.int64)
    return Y


def pvq_block_ldlq(W, C, L: int, K: int, levels, thresholds, r_hat, feedback: bool,
                   metric_search: bool, moves: int, width: int, search_backend: str):
    """PVQ of W (m, n) in groups of L consecutive columns, one block of L columns (one group
    of every row) at a time, left to right (BlockLDLQ). Per block J: targets X = W_J (with
    the feedback of earlier blocks); Euclidean direction y = search(x, K); gain code the
    level of ``levels`` nearest to t = g / r_hat (``r_hat``: the coded row norms of the
    original W). With ``metric_search`` the gain is the least-squares gain in the block's
    metric D_J = A A^T, A = C_JJ^{-1}, and the direction is also refined in that metric
    (:func:`refine_in_metric`); each row keeps whichever of the two directions has the
    smaller error ||(x - q) A||^2. With ``feedback`` the later columns receive
    -E C_JJ^{-1} C_JR. Returns (Q, codes, Y) with Q float64 (m, n), codes (m, n/L), Y (m, n)
    the pyramid points. Chapter: Hessian-aware PVQ (book/hessian.ipynb)."""
    m, n = W.shape
    X_all = np.array(W, dtype=np.float64)
    Q, Y_all = np.zeros_like(X_all), np.zeros(X_all.shape, dtype=np.int64)
    codes_all = np.zeros((m, n // L), dtype=np.int64)
    for j in range(n // L):
        J = slice(j * L, (j + 1) * L)
        X = X_all[:, J]
        A = np.linalg.inv(C[J, J])                    # upper triangular, D_J = A A^T
        metric = A if metric_search else np.eye(L)
        # Candidate directions: the Euclidean search, and (Hessian search) its refinement
        # in the metric. Each row keeps the candidate with the smaller metric error; on a
        # tie the Euclidean one (argmin takes the first).
        points = [_directions(X, K, search_backend)]
        if metric_search:
            points.append(refine_in_metric(X, points[0], A @ A.T, moves, width))
        coded = [_gain_and_error(X, _unit(Y), metric, levels, thresholds, r_hat) for Y in points]
        pick = np.argmin(np.stack([err for _, _, err in coded]), axis=0)
        for r in range(m):
            Y_all[r, J], codes_all[r, j] = points[pick[r]][r], coded[pick[r]][0][r]
            Q[r, J] = coded[pick[r]][1][r]
        if feedback:                                   # X_R <- X_R - E_J C_JJ^{-1} C_JR
            X_all[:, J.stop:] -= (X - Q[:, J]) @ A @ C[J, J.stop:]
    return Q, codes_all, Y_all


def pvq_column_gptq(W, C, L: int, K: int, levels, thresholds, r_hat, feedback: bool,
                    search_backend: str):
    """PVQ with groups along the *output* dimension, inside GPTQ's column loop: column i of
    W (m, n) is m / L groups of L consecutive rows, each searched (Euclidean) and given the
    gain code nearest to its least-squares gain over ``r_hat[i]`` (the coded norm of the
    original column i); then, as in GPTQ, the later columns move by -err C_i,R with
    err = (x_i - q_i) / C_ii. A group lies in one column, whose metric is the scalar
    1 / C_ii^2, so a metric search would change nothing. Returns (Q, codes, Y): Q float64
    (m, n), codes (n, m / L) (column i's gain codes), Y (m, n) the pyramid points (group g
    of column i in rows gL..gL+L-1). Chapter: Hessian-aware PVQ (book/hessian.ipynb)."""
    m, n = W.shape
    X = np.array(W, dtype=np.float64)
    Q, Y_all = np.zeros_like(X), np.zeros(X.shape, dtype=np.int64)
    codes_all = np.zeros((n, m // L), dtype=np.int64)
    for i in range(n):
        x = X[:, i].reshape(m // L, L)
        Y = _directions(x, K, search_backend)
        codes, Qb, _ = _gain_and_error(x, _unit(Y), np.eye(L), levels, thresholds,
                                       np.full(m // L, r_hat[i]))
        Q[:, i], Y_all[:, i], codes_all[i] = Qb.reshape(m), Y.reshape(m), codes
        if feedback:
            err = (X[:, i] - Q[:, i]) / C[i, i]
            X[:, i + 1:] -= np.outer(err, C[i, i + 1:])
    return Q, codes_all, Y_all


def proxy_loss(W, Q, H) -> float:
    """tr((W - Q) H (W - Q)^T), in float64. Chapter: Hessian-aware PVQ (book/hessian.ipynb)."""
    E = np.asarray(W, dtype=np.float64) - np.asarray(Q, dtype=np.float64)
    return float(np.sum((E @ np.asarray(H, dtype=np.float64)) * E))

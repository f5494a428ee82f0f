"""RSAVQ's Fisher computations, the NumPy float64 oracle (see :mod:`pvqref.rsavq`).

Every function takes float64 arrays: A (out, out) and B (in, in) the damped Kronecker
factors, ``scale`` = E ||G||^2, D (out, in) the damped diagonal Fisher, g (out, in) the
mean gradient. The Kronecker Fisher acts on a matrix X as F X = A X B / scale.
"""

from __future__ import annotations

import numpy as np


def _solve_spd(M, R, side: str):
    """M^{-1} R (side "left") or R M^{-1} (side "right") for a symmetric positive
    definite M, by its Cholesky factor: two triangular solves, never an explicit inverse."""
    C = np.linalg.cholesky(M)                              # M = C C^T
    if side == "left":
        return np.linalg.solve(C.T, np.linalg.solve(C, R))
    return np.linalg.solve(C.T, np.linalg.solve(C, R.T)).T


def kronecker_apply(A, B, scale, X):
    """F X = A X B / scale: the Kronecker Fisher applied to X (out, in)."""
    return A @ X @ B / scale


def kronecker_natural_gradient(A, B, scale, g):
    """F^{-1} g = scale A^{-1} g B^{-1}."""
    return scale * _solve_spd(B, _solve_spd(A, g, "left"), "right")


def kronecker_norm2(A, B, scale, X) -> float:
    """The squared Fisher norm <X, F X> = tr(A X B X^T) / scale."""
    return float(np.sum(X * (A @ X @ B)) / scale)


def kronecker_sensitivity(A, B, scale, g):
    """I_c = 1/2 g_c F_c^{-1} g_c^T + 1 per output channel c, where F_c = A_cc B / scale is
    row c's diagonal block of the Kronecker Fisher."""
    quad = np.sum(g * _solve_spd(B, g, "right"), axis=1)     # g_c B^{-1} g_c^T
    return 0.5 * scale * quad / np.diag(A) + 1.0


def diagonal_natural_gradient(D, g):
    """F^{-1} g = g / D for the diagonal Fisher D (out, in)."""
    return g / D


def diagonal_norm2(D, X) -> float:
    """sum D X^2."""
    return float(np.sum(D * X * X))


def diagonal_sensitivity(D, g):
    """I_c = 1/2 sum_j g_cj^2 / D_cj + 1."""
    return 0.5 * np.sum(g * g / D, axis=1) + 1.0

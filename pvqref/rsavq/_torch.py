"""RSAVQ's Fisher computations, the torch tier: the same functions as
:mod:`pvqref.rsavq.reference`, float64 tensors on their own device (CUDA when present)."""

from __future__ import annotations

import torch


def _solve_spd(M, R, side: str):
    """M^{-1} R (side "left") or R M^{-1} (side "right"), M symmetric positive definite."""
    C = torch.linalg.cholesky(M)
    if side == "left":
        return torch.cholesky_solve(R, C)
    return torch.cholesky_solve(R.T, C).T


def kronecker_apply(A, B, scale, X):
    return A @ X @ B / scale


def kronecker_natural_gradient(A, B, scale, g):
    return scale * _solve_spd(B, _solve_spd(A, g, "left"), "right")


def kronecker_norm2(A, B, scale, X) -> float:
    return float(torch.sum(X * (A @ X @ B)) / scale)


def kronecker_sensitivity(A, B, scale, g):
    quad = torch.sum(g * _solve_spd(B, g, "right"), dim=1)
    return 0.5 * scale * quad / torch.diagonal(A) + 1.0


def diagonal_natural_gradient(D, g):
    return g / D


def diagonal_norm2(D, X) -> float:
    return float(torch.sum(D * X * X))


def diagonal_sensitivity(D, g):
    return 0.5 * torch.sum(g * g / D, dim=1) + 1.0

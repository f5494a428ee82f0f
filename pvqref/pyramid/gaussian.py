"""PVQ of a Gaussian source: the pyramid's direction with the simplest gain code.

For x ~ N(0, I_L) the norm ||x|| follows the chi law with L degrees of freedom and is
independent of the direction x / ||x||. A gain-shape quantizer codes the two apart:

    u = y / ||y||,  y = search(x, K)        the direction: a point of the pyramid P(L, K)
    g = <x, u>                              the least-squares gain along u
    g_hat = the nearest of 2^b levels       the midpoint quantiles of chi(L)
    x_hat = g_hat u

and spends bits(L, K) + b bits per group. The pyramid chapter measures it on Gaussian
vectors against scalar quantizers (``pvqref.baselines``); the gain chapter replaces the
chi law by the Beta law of a weight group's share of its row (``pvqref.gain``).

Chapter: The pyramid lattice (book/pyramid.ipynb), "Distortion on Gaussian vectors".
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from .. import _checks
from ..baselines import nearest_level
from . import search_batch


def chi_levels(L: int, bits: int) -> np.ndarray:
    """The 2^bits midpoint quantiles (i + 1/2) / 2^bits of the chi law with L degrees of
    freedom: gain levels for the norm of an N(0, I_L) vector.

    Chapter: The pyramid lattice (book/pyramid.ipynb)."""
    L = _checks.integer(L, "group size L", minimum=1)
    n = 2 ** _checks.integer(bits, "gain bits", minimum=0, maximum=24)
    return stats.chi.ppf((np.arange(n) + 0.5) / n, L)


def quantize_gaussian(X, K: int, gain_bits: int = 8, backend: str = "auto") -> np.ndarray:
    """The gain-shape PVQ reconstruction of every row of X (G, L), float64 (see above).

    Chapter: The pyramid lattice (book/pyramid.ipynb)."""
    X = np.asarray(X, dtype=np.float64)
    U = np.asarray(search_batch(X, K, backend=backend), dtype=np.float64)
    U /= np.linalg.norm(U, axis=1, keepdims=True)
    levels = chi_levels(X.shape[1], gain_bits)
    g = (X * U).sum(axis=1)
    return levels[nearest_level(g, levels)][:, None] * U

"""The Beta laws of a group's energy, and the gain codebooks built on them.

Chapter: Gain quantization (book/gain.ipynb), sections "The Beta law of a group's energy
share" and "Three codebooks for the gain". :func:`share_law` is the law of a group's share
of its row's energy, :func:`coordinate_law` that of one squared coordinate of a unit
vector; a :class:`GainCodebook` holds 2^b levels of the normalised gain t = gain / row
norm, placed at the quantiles of the share law (:func:`quantile_levels`), MSE-optimally
(:func:`lloyd_max_levels`) or evenly (:func:`uniform_levels`, the baseline);
:func:`gain_codebook` builds any of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import special, stats
from scipy.linalg import solve_banded

from .. import _checks

#     v_i^2 ~ Beta(1/2, (L-1)/2).
# A group's gain is ||w_g|| = ||w|| * sqrt(S): we store the row norm once per row (coded,
# see the complete quantizer below) and code the normalised gain  T = sqrt(S)  with b bits.
# Its law follows from S's:
#     F_T(t) = I_{t^2}(L/2, (n-L)/2)   (I = regularised incomplete beta function),
#     density f_T(t) = 2 t f_S(t^2)  proportional to  t^{L-1} (1 - t^2)^{(n-L)/2 - 1},
# which is log-concave for L >= 1, n - L >= 2 (sum of (L-1) log t and a concave term).
# ----------------------------------------------------------------------------------------


def _check_group(L: int, n: int) -> None:
    _checks.integer(L, "L", 1)
    _checks.integer(n, "n", 1)
    if L >= n:
        raise ValueError(f"the share law needs a group shorter than its row (L < n), got "
                         f"L={L}, n={n}; with one group per row the gain is the row norm")


def share_law(L: int, n: int):
    """Frozen scipy law Beta(L/2, (n-L)/2) of ||w_g||^2 / ||w||^2 for an isotropic row.

    Chapter: Gain quantization (book/gain.ipynb), "The Beta law of a group's energy
    share"."""
    _check_group(L, n)
    return stats.beta(L / 2, (n - L) / 2)


def coordinate_law(L: int):
    """Frozen scipy law Beta(1/2, (L-1)/2) of v_i^2 for v uniform on the unit sphere of R^L.

    Chapter: Gain quantization (book/gain.ipynb), "The Beta law of a group's energy
    share"."""
    _checks.integer(L, "L", 2)
    return stats.beta(0.5, (L - 1) / 2)


# ----------------------------------------------------------------------------------------
# Gain codebooks: 2^b levels t_0 < ... < t_{2^b - 1} for T = sqrt(S).
#
# Encoder: nearest level (for fixed levels this minimises the squared gain error), i.e.
#     code = #{thresholds < t},  thresholds = midpoints (t_i + t_{i+1}) / 2.
# Levels:
#   quantile   t_i = sqrt(F_S^{-1}((i + 1/2) / 2^b)) -- the quantiles of S, mapped to T
#              (quantiles commute with the monotone map s -> sqrt(s)). Each level is the
#              median of an equal-probability cell.
#   lloyd_max  minimise E[(T - Q(T))^2]. Stationary point: every threshold is the midpoint of
#              its two levels and every level is the conditional mean of its cell
#              (a_i, a_{i+1}]. The conditional mean is closed-form, since
#                  E[S^{1/2} 1{u < S <= v}] = B(a + 1/2, c) / B(a, c) * (I_v(a+1/2, c) - I_u(a+1/2, c))
#              with a = L/2, c = (n-L)/2, u = a_i^2, v = a_{i+1}^2. Lloyd's iteration
#              (alternate the two conditions) starts at the quantile levels; for a
#              log-concave density the stationary point is unique and is the optimum
#              (Fleischer 1964).
#   uniform    the baseline: 2^b evenly spaced levels between the extreme quantile levels.
# ----------------------------------------------------------------------------------------

GAIN_KINDS = ("quantile", "lloyd_max", "uniform")


def check_gain_bits(bits) -> int:
    """``bits`` as an int in 0..8 (TypeError for 2.0, True, "2"; ValueError outside)."""
    return _checks.integer(bits, "gain bits", 0, 8)


def quantile_levels(L: int, n: int, bits: int) -> np.ndarray:
    """t_i = sqrt(F^{-1}((i + 1/2) / 2^bits)) for the share law Beta(L/2, (n-L)/2).

    Chapter: Gain quantization (book/gain.ipynb), "Three codebooks for the gain"."""
    check_gain_bits(bits)
    p = (np.arange(2 ** bits) + 0.5) / 2 ** bits
    return np.sqrt(share_law(L, n).ppf(p))


def uniform_levels(L: int, n: int, bits: int) -> np.ndarray:
    """2^bits evenly spaced levels from the first to the last quantile level (the
    baseline).

    Chapter: Gain quantization (book/gain.ipynb), "Three codebooks for the gain"."""
    q = quantile_levels(L, n, bits)
    return np.linspace(q[0], q[-1], q.size)


def _cell_means(L: int, n: int, levels: np.ndarray) -> np.ndarray:
    """E[T | T in cell i] for the nearest-level cells of ``levels`` (T = sqrt(S))."""
    a, c = L / 2, (n - L) / 2
    edges = np.concatenate([[0.0], (levels[1:] + levels[:-1]) / 2, [1.0]]) ** 2
    mass = np.diff(special.betainc(a, c, edges))
    # Upper tails with betaincc: 1 - I_u loses all digits when I_u is close to 1.
    mass[-1] = special.betaincc(a, c, edges[-2])
    first = np.diff(special.betainc(a + 0.5, c, edges))
    first[-1] = special.betaincc(a + 0.5, c, edges[-2])
    ratio = np.exp(special.betaln(a + 0.5, c) - special.betaln(a, c))
    if np.any(mass <= 0):
        raise ValueError(f"a gain cell has zero probability (L={L}, n={n}, "
                         f"{levels.size} levels): use fewer gain bits")
    return ratio * first / mass


def lloyd_max_levels(L: int, n: int, bits: int, tol: float = 1e-10,
                     max_iter: int = 1000) -> np.ndarray:
    """MSE-optimal levels for T = sqrt(S), S ~ Beta(L/2, (n-L)/2).

    Solves the stationarity conditions  m(t) = t  (every level the conditional mean of its
    nearest-level cell) from the quantile levels. Plain Lloyd iteration t <- m(t) converges
    linearly and slowly for many levels (about 18k iterations for 64 levels), so each step
    tries Newton's step on r(t) = m(t) - t first (its Jacobian is tridiagonal: a cell's mean
    moves with its two edges only) and falls back to the Lloyd step when Newton does not
    reduce max|r| or breaks the order of the levels. Stops when max|r| <= tol * sd(T);
    RuntimeError after ``max_iter`` steps.

    Chapter: Gain quantization (book/gain.ipynb), "Three codebooks for the gain".
    """
    levels = quantile_levels(L, n, bits)
    scale = _sd_of_t(L, n)
    for _ in range(max_iter):
        r = _cell_means(L, n, levels) - levels
        err = np.max(np.abs(r))
        if err <= tol * scale:
            return levels
        trial = levels - _solve_tridiagonal(_lloyd_jacobian(L, n, levels), r)
        ordered = np.all(np.diff(trial) > 0) and trial[0] > 0 and trial[-1] < 1
        if ordered and np.max(np.abs(_cell_means(L, n, trial) - trial)) < err:
            levels = trial
        else:
            levels = levels + r                              # the Lloyd step t <- m(t)
    raise RuntimeError(f"Lloyd-Max did not converge in {max_iter} steps "
                       f"(L={L}, n={n}, bits={bits})")


def _lloyd_jacobian(L: int, n: int, levels: np.ndarray) -> np.ndarray:
    """Tridiagonal Jacobian of r(t) = m(t) - t as (sub, diag, super) rows, shape (3, N).

    For a cell (a, b] with probability P and mean m under the density f of T:
    dm/db = f(b) (b - m) / P and dm/da = f(a) (m - a) / P; each inner edge is the midpoint
    of its two levels, so it moves by 1/2 with each of them.
    """
    N = levels.size
    edges = np.concatenate([[0.0], (levels[1:] + levels[:-1]) / 2, [1.0]])
    law = share_law(L, n)
    f = np.zeros(N + 1)                                       # density of T at the edges;
    f[1:-1] = 2 * edges[1:-1] * law.pdf(edges[1:-1] ** 2)     # the outer edges do not move
    mass = np.diff(law.cdf(edges ** 2))
    mass[-1] = law.sf(edges[-2] ** 2)
    m = _cell_means(L, n, levels)
    d_low = f[:-1] * (m - edges[:-1]) / mass                  # dm_i / d(lower edge)
    d_up = f[1:] * (edges[1:] - m) / mass                     # dm_i / d(upper edge)
    band = np.zeros((3, N))
    band[0, 1:] = d_up[:-1] / 2                               # dm_i / dt_{i+1}
    band[1] = (d_low + d_up) / 2 - 1.0                        # dm_i / dt_i - 1
    band[2, :-1] = d_low[1:] / 2                              # dm_i / dt_{i-1}
    return band


def _solve_tridiagonal(band: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    if rhs.size == 1:
        return rhs / band[1]
    return solve_banded((1, 1), band, rhs)


def _sd_of_t(L: int, n: int) -> float:
    """Standard deviation of T = sqrt(S): E[T^2] = E[S] = L/n, E[T] from the Beta moments."""
    a, c = L / 2, (n - L) / 2
    mean_t = math.exp(special.betaln(a + 0.5, c) - special.betaln(a, c))
    return math.sqrt(max(L / n - mean_t ** 2, 0.0))


@dataclass(frozen=True)
class GainCodebook:
    """2^bits levels of the normalised gain t = gain / row norm, and their nearest-level
    encoder. ``bits = 0`` is allowed: one level, nothing stored per group.

    Chapter: Gain quantization (book/gain.ipynb), "Three codebooks for the gain"."""
    kind: str
    L: int
    n: int
    bits: int
    levels: np.ndarray = field(repr=False)

    @property
    def thresholds(self) -> np.ndarray:
        """Cell boundaries: midpoints between consecutive levels (2^bits - 1 of them)."""
        return (self.levels[1:] + self.levels[:-1]) / 2

    def encode(self, t) -> np.ndarray:
        """Code (int64) of the nearest level to every t (array-like, finite)."""
        t = np.asarray(t, dtype=np.float64)
        _checks.finite(t, "the normalised gains")
        return np.searchsorted(self.thresholds, t, side="left").astype(np.int64)

    def decode(self, codes) -> np.ndarray:
        """Level (float64) of every code; ValueError for a code outside 0..2^bits-1."""
        codes = np.asarray(codes)
        if codes.size and (codes.min() < 0 or codes.max() >= self.levels.size):
            raise ValueError(f"gain codes must lie in 0..{self.levels.size - 1}")
        return self.levels[codes]

    def mse(self) -> float:
        """E[(T - Q(T))^2] under the Beta-derived law of T (exact, by the cell integrals)."""
        a, c = self.L / 2, (self.n - self.L) / 2
        edges = np.concatenate([[0.0], self.thresholds, [1.0]]) ** 2
        m0 = np.diff(special.betainc(a, c, edges))                     # P(cell)
        m1 = np.diff(special.betainc(a + 0.5, c, edges)) * math.exp(
            special.betaln(a + 0.5, c) - special.betaln(a, c))         # E[T; cell]
        m2 = np.diff(special.betainc(a + 1, c, edges)) * (a / (a + c))  # E[T^2; cell]
        return float(np.sum(m2 - 2 * self.levels * m1 + self.levels ** 2 * m0))


def gain_codebook(L: int, n: int, bits: int, kind: str = "lloyd_max") -> GainCodebook:
    """The ``kind`` codebook ("quantile", "lloyd_max" or "uniform") for groups of L in rows
    of n, with 2^bits levels.

    Chapter: Gain quantization (book/gain.ipynb), "Three codebooks for the gain"."""
    builders = {"quantile": quantile_levels, "lloyd_max": lloyd_max_levels,
                "uniform": uniform_levels}
    _checks.choice(kind, "gain kind", GAIN_KINDS)
    levels = builders[kind](L, n, bits)
    return GainCodebook(kind, int(L), int(n), int(bits), np.asarray(levels, dtype=np.float64))


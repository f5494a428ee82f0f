"""Gain quantization under the Beta law, and the complete PVQ group quantizer.

PVQ writes a weight group as ``w_g = gain * direction``: the pyramid codes the direction
(:mod:`pvqref.pyramid`), this module codes the gain and assembles the whole quantizer of a
weight matrix with exact bit accounting.

Contents, in reading order:

- The laws: :func:`share_law` (a group's share of its row's energy) and
  :func:`coordinate_law` (a squared coordinate of a unit vector), both Beta laws.
- Gain codebooks on ``t = gain / row norm`` (:class:`GainCodebook`): Beta quantile levels
  :func:`quantile_levels`, Lloyd-Max levels :func:`lloyd_max_levels`, the uniform
  baseline :func:`uniform_levels`; :func:`gain_codebook` builds any of them.
- The side information: row norms stored as fp16 or as log-grid codes between a
  per-matrix min and max (:func:`norm_levels`, :func:`coded_row_norms`,
  :func:`decode_row_norms`).
- The complete quantizer: :class:`PVQConfig` (L, K, gain bits, norm bits, ...),
  :func:`quantize` -> :class:`QuantizedMatrix` -> :func:`dequantize`, the shortcut
  :func:`quantize_dequantize` (same result without enumerating indices), bit packing
  (:meth:`QuantizedMatrix.to_bytes`, :func:`from_bytes`), and :func:`choose_config`, which
  picks (L, K, gain bits) for a target rate by measured distortion.
- Baselines for the chapter: :func:`rtn_quantize_dequantize` (min-max round-to-nearest),
  :func:`gaussian_bound`, :func:`relative_mse`.

Reconstruction: the PVQ-for-LLMs paper quantizes the gain at the quantiles of a Beta law
but publishes no details. Everything below (what is stored, which law, the least-squares
gain, the Lloyd-Max alternative) is our reconstruction; the gain chapter measures it.
"""

from __future__ import annotations

import json
import math
import operator
import warnings
import zlib
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import torch
from numba import njit
from scipy import special, stats

# ----------------------------------------------------------------------------------------
# The Beta laws.
#
# Let w in R^n be isotropic: w = rho * u with u uniform on the sphere S^{n-1}, independent of
# rho (true for a Gaussian row, and what a random rotation makes of any row). Write
# u = z / ||z|| with z ~ N(0, I_n). Cut the row into groups of L coordinates. The energy
# share of one group is
#     S = ||w_g||^2 / ||w||^2 = ||z_g||^2 / (||z_g||^2 + ||z_rest||^2),
# a ratio chi2_L / (chi2_L + chi2_{n-L}) of independent chi-squares, hence
#     S ~ Beta(L/2, (n-L)/2),   E[S] = L/n.
# With L = 1 and n = L this is the law of one squared coordinate of a unit vector in R^L:
#     v_i^2 ~ Beta(1/2, (L-1)/2).
# A group's gain is ||w_g|| = ||w|| * sqrt(S): we store the row norm once per row (coded,
# see the complete quantizer below) and code the normalised gain  T = sqrt(S)  with b bits.
# Its law follows from S's:
#     F_T(t) = I_{t^2}(L/2, (n-L)/2)   (I = regularised incomplete beta function),
#     density f_T(t) = 2 t f_S(t^2)  proportional to  t^{L-1} (1 - t^2)^{(n-L)/2 - 1},
# which is log-concave for L >= 1, n - L >= 2 (sum of (L-1) log t and a concave term).
# ----------------------------------------------------------------------------------------


def _check_group(L: int, n: int) -> None:
    for name, v in (("L", L), ("n", n)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if L >= n:
        raise ValueError(f"the share law needs a group shorter than its row (L < n), got "
                         f"L={L}, n={n}; with one group per row the gain is the row norm")


def share_law(L: int, n: int):
    """Frozen scipy law Beta(L/2, (n-L)/2) of ||w_g||^2 / ||w||^2 for an isotropic row."""
    _check_group(L, n)
    return stats.beta(L / 2, (n - L) / 2)


def coordinate_law(L: int):
    """Frozen scipy law Beta(1/2, (L-1)/2) of v_i^2 for v uniform on the unit sphere of R^L."""
    if isinstance(L, bool) or not isinstance(L, (int, np.integer)) or L < 2:
        raise ValueError(f"L must be an integer >= 2, got {L!r}")
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


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 0 <= bits <= 8:
        raise ValueError(f"gain bits must be an integer in 0..8, got {bits!r}")


def quantile_levels(L: int, n: int, bits: int) -> np.ndarray:
    """t_i = sqrt(F^{-1}((i + 1/2) / 2^bits)) for the share law Beta(L/2, (n-L)/2)."""
    _check_bits(bits)
    p = (np.arange(2 ** bits) + 0.5) / 2 ** bits
    return np.sqrt(share_law(L, n).ppf(p))


def uniform_levels(L: int, n: int, bits: int) -> np.ndarray:
    """2^bits evenly spaced levels from the first to the last quantile level."""
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
    from scipy.linalg import solve_banded
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
    encoder. ``bits = 0`` is allowed: one level, nothing stored per group."""
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
        if not np.all(np.isfinite(t)):
            raise ValueError("normalised gains contain NaN or Inf")
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
    of n, with 2^bits levels."""
    builders = {"quantile": quantile_levels, "lloyd_max": lloyd_max_levels,
                "uniform": uniform_levels}
    if kind not in builders:
        raise ValueError(f"gain kind must be one of {GAIN_KINDS}, got {kind!r}")
    levels = builders[kind](L, n, bits)
    return GainCodebook(kind, int(L), int(n), int(bits), np.asarray(levels, dtype=np.float64))


# ----------------------------------------------------------------------------------------
# The complete PVQ quantizer of a weight matrix W (m rows of length n; groups of L
# consecutive weights of a row, L dividing n, L < n). What is stored:
#     per matrix  a format-version byte                              8 bits
#                 the norm range lo, hi as fp32 (log norms only)      64 bits
#                 a CRC-32 checksum (see below)                       32 bits
#     per row     the coded row norm r_hat (see below)               norm_bits
#     per group   the pyramid index of y = search(w_g, K)           bits(L, K) = ceil(log2 N(L, K))
#                 the gain code c (nearest level to t)              gain_bits
# and the decoder returns  w_g ~ r_hat * t_c * y / ||y||.  Exactly, nothing else stored:
#     bits per weight = (bits(L, K) + gain_bits) / L + norm_bits / n + matrix_bits / (m n)
# with matrix_bits = 40 (fp16 norms) or 104 (log norms). L, K, the bit counts, the codebook
# kind and the shape are the format (known to the reader, like a file's schema), not data:
# a model file stores them once per configuration (the chooser picks one per row length),
# and the architecture gives the shapes. So that a reader with the wrong schema cannot
# decode garbage silently, the checksum is the CRC-32 of the schema (config and shape, as
# text) followed by the rest of the stream: corrupt bytes, another config or another
# shape all fail the check.
#
# Row norms (the side information; PVQConfig.norm_bits):
#   norm_bits = 16   r_hat = fp16(r): 16 bits per row, relative error <= 2^-11.
#   norm_bits = b    (2 <= b <= 15) a logarithmic grid between the extreme non-zero row
#                    norms of the matrix, lo = fp32(min r) and hi = fp32(max r), stored once
#                    per matrix. With N = 2^b - 1 levels
#                        l_j = lo * (hi / lo)^((j - 1) / (N - 1)),    j = 1..N,
#                    code 0 means a zero row (r_hat = 0) and code j means r_hat = l_j. The
#                    encoder takes the nearest level in log distance (thresholds at the
#                    geometric midpoints sqrt(l_j l_{j+1})), so
#                        |log(r_hat / r)| <= log(hi / lo) / (2 (N - 1)).
#   A log grid because r_hat / r is what matters (it scales the whole row). And the gain
#   codes are computed from r_hat (t = g / r_hat), so a norm error does not add to the
#   reconstruction directly: it only moves t by the factor r / r_hat against the gain levels.
#   That is why a few bits are enough; the gain chapter measures the trade-off.
#
# Which t to code. For a unit direction u = y/||y|| the error of the group is
#     ||w_g - g u||^2 = ||w_g||^2 - <w_g, u>^2 + (g - <w_g, u>)^2,
# minimised by the least-squares gain g* = <w_g, u> = ||w_g|| cos(angle). We code
# t = g* / r_hat ("ls", the default); "norm" codes t = ||w_g|| / r_hat instead, which
# overshoots by the factor 1 / cos(angle) of the direction error. Both are measured in the
# gain chapter.
#
# Edge cases (documented, tested): a row of zeros has r_hat = 0 and decodes to exact zeros
# (with log norms it gets code 0; a matrix of zeros stores lo = hi = 0). A zero group inside
# a non-zero row has no direction: it is coded as the fixed point y = (K, 0, ..., 0) with
# t = 0, i.e. the smallest gain level, so it decodes to r_hat * t_0 * e_1 (the nearest
# reconstruction this format can give), and quantize() warns with the number of such groups
# (they cannot arise after a random rotation unless the whole row is zero, but can in a
# pruned, unrotated matrix). NaN/Inf, a row norm the norm format cannot hold (outside fp16's
# normal range, or fp32's for log norms) and n not divisible by L are ValueErrors.
# ----------------------------------------------------------------------------------------

GAIN_TARGETS = ("ls", "norm")
FP16_MAX = 65504.0
FP16_MIN_NORMAL = 2.0 ** -14
FP32_MAX = float(np.finfo(np.float32).max)
FP32_MIN_NORMAL = float(np.finfo(np.float32).tiny)
FP16_NORMS = 16                  # norm_bits value meaning "fp16 row norms"
DEFAULT_NORM_BITS = 5            # chosen by measurement (gain chapter, "Side information")
FORMAT_VERSION = 2               # first byte of to_bytes(); version 1 had no header
VERSION_BITS = 8
CHECKSUM_BITS = 32               # CRC-32 of the schema and the stream, the last 4 bytes
NORM_RANGE_BITS = 64             # lo and hi, fp32 each (log norms only)


def _pyramid():
    from . import pyramid
    return pyramid


@dataclass(frozen=True)
class PVQConfig:
    """Format of a PVQ-quantized matrix: group size L, pulses K, gain bits and codebook,
    and the row-norm format (``norm_bits`` = 16: fp16; 2..15: log-grid codes)."""
    L: int
    K: int
    gain_bits: int
    gain_kind: str = "lloyd_max"
    gain_target: str = "ls"
    norm_bits: int = DEFAULT_NORM_BITS

    def __post_init__(self):
        for name in ("L", "K"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        _check_bits(self.gain_bits)
        if self.gain_kind not in GAIN_KINDS:
            raise ValueError(f"gain_kind must be one of {GAIN_KINDS}, got {self.gain_kind!r}")
        if self.gain_target not in GAIN_TARGETS:
            raise ValueError(f"gain_target must be one of {GAIN_TARGETS}, got "
                             f"{self.gain_target!r}")
        _check_norm_bits(self.norm_bits)

    @property
    def index_bits(self) -> int:
        """Bits of one group's pyramid index, ceil(log2 N(L, K))."""
        return _pyramid().bits(self.L, self.K)

    @property
    def matrix_bits(self) -> int:
        """Bits stored once per matrix: the version byte, the checksum, and the norm range
        for log norms."""
        return (VERSION_BITS + CHECKSUM_BITS
                + (0 if self.norm_bits == FP16_NORMS else NORM_RANGE_BITS))

    def bits(self, shape) -> int:
        """Every bit stored for a matrix of ``shape`` = (m, n), L dividing n."""
        m, n = _check_shape(shape)
        if n % self.L:
            raise ValueError(f"row length n={n} is not divisible by the group size L={self.L}")
        return (m * n // self.L * (self.index_bits + self.gain_bits) + m * self.norm_bits
                + self.matrix_bits)

    def bits_per_weight(self, shape) -> float:
        """Everything stored, per weight, for a matrix of ``shape`` = (m, n):
        (bits(L, K) + gain_bits) / L + norm_bits / n + matrix_bits / (m n), computed as one
        division of integers (so an exact fit to a budget compares as exact)."""
        m, n = _check_shape(shape)
        return self.bits((m, n)) / (m * n)

    def codebook(self, n: int) -> GainCodebook:
        return _cached_codebook(self.L, int(n), self.gain_bits, self.gain_kind)


def _check_norm_bits(b) -> None:
    if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or not 2 <= b <= 16:
        raise ValueError(f"norm_bits must be 16 (fp16 row norms) or an integer in 2..15 "
                         f"(log-grid codes), got {b!r}")


def _check_shape(shape) -> tuple:
    try:
        m, n = (operator.index(v) for v in shape)         # integers only: 4.7 is an error
    except (TypeError, ValueError):
        raise ValueError(f"shape must be a pair (rows m, row length n), got {shape!r}") from None
    if m < 1 or n < 1:
        raise ValueError(f"shape must have m, n >= 1, got {shape!r}")
    return m, n


_CODEBOOKS: dict = {}


def _cached_codebook(L: int, n: int, bits: int, kind: str) -> GainCodebook:
    key = (L, n, bits, kind)
    if key not in _CODEBOOKS:
        _CODEBOOKS[key] = gain_codebook(L, n, bits, kind)
    return _CODEBOOKS[key]


def config_for_rate(L: int, shape, bpw: float, gain_bits: int, **kw) -> PVQConfig | None:
    """The config with the most pulses K whose bits per weight for a matrix of ``shape``
    = (m, n) do not exceed ``bpw`` (nor for any matrix with more rows, since the per-matrix
    bits only shrink): index budget floor(L (bpw - norm_bits/n - matrix_bits/(m n)))
    - gain_bits bits. ``kw`` are further PVQConfig fields (norm_bits, gain_kind, ...).
    None if not even K = 1 fits."""
    m, n = _check_shape(shape)
    side = PVQConfig(L, 1, gain_bits, **kw)
    _check_group_size(L, n)
    if isinstance(bpw, bool) or not isinstance(bpw, (int, float, np.integer, np.floating)) \
            or not math.isfinite(bpw) or bpw <= 0:
        raise ValueError(f"bpw must be a positive finite number, got {bpw!r}")
    # Exact rational arithmetic: (bits(L,K) + gain_bits) * mn/L + m norm_bits + matrix_bits
    # <= bpw * m n  <=>  bits(L,K) <= L (bpw - norm_bits/n - matrix_bits/(mn)) - gain_bits.
    budget = math.floor(L * (Fraction(bpw) - Fraction(side.norm_bits, n)
                             - Fraction(side.matrix_bits, m * n))) - gain_bits
    if budget < 1:
        return None
    K = _pyramid().k_for_rate(L, budget / L)
    return PVQConfig(L, K, gain_bits, **kw) if K >= 1 else None


def _check_group_size(L: int, n: int) -> None:
    """L must divide the row length n and be smaller than it."""
    if n % L:
        raise ValueError(f"row length n={n} is not divisible by the group size L={L}: L must "
                         f"divide n (choose L among the divisors of n)")
    if L >= n:
        raise ValueError(f"group size L={L} must be smaller than the row length n={n}, and "
                         f"divide it (the gain is coded relative to the row norm)")


def _check_matrix(W, L: int):
    """Validate W (numpy or torch, 2-D, real, finite) against group size L; return (m, n)."""
    shape = tuple(getattr(W, "shape", ()))
    if len(shape) != 2:
        raise ValueError(f"expected a 2-D weight matrix (rows, n), got shape {shape}")
    m, n = shape
    if m < 1 or n < 1:
        raise ValueError(f"the weight matrix is empty: shape {shape}")
    _check_group_size(L, n)
    if isinstance(W, torch.Tensor):
        if not W.is_floating_point():
            raise TypeError(f"expected a floating-point tensor, got {W.dtype}")
        if not bool(torch.isfinite(W).all()):
            raise ValueError("the weight matrix contains NaN or Inf")
    else:
        if not isinstance(W, np.ndarray) or W.dtype.kind != "f":
            raise TypeError(f"expected a float numpy array or torch tensor, got "
                            f"{type(W).__name__} of dtype {getattr(W, 'dtype', None)}")
        if not np.all(np.isfinite(W)):
            raise ValueError("the weight matrix contains NaN or Inf")
    return m, n


# ---- row norms: fp16 or log-grid codes, three tiers -------------------------------------
#
# The grid (levels and thresholds) is computed once, in numpy float64, from the stored
# fp32 lo and hi; every tier encodes against the same thresholds and decodes with the same
# levels, so the tiers agree bit for bit given the same float64 norms. There are only m
# norms per matrix, so the fast CPU tier (backend "numba") is plain vectorised numpy.

def norm_levels(lo: float, hi: float, bits: int) -> np.ndarray:
    """Decoded row norm of every code 0..2^bits-1: 0 for code 0, then the 2^bits - 1
    log-spaced levels lo .. hi (all equal to lo when lo == hi; all 0 when hi == 0)."""
    _check_norm_bits(bits)
    if bits == FP16_NORMS:
        raise ValueError("norm_levels is for log-grid codes (norm_bits 2..15), not fp16")
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo <= hi and (lo > 0) == (hi > 0)):
        raise ValueError(f"the norm range must satisfy 0 < lo <= hi < inf, or lo = hi = 0 for "
                         f"a matrix of zeros; got lo={lo!r}, hi={hi!r} (corrupt data?)")
    N = 2 ** bits - 1
    levels = np.zeros(N + 1)
    if hi > 0:
        levels[1:] = lo * np.exp(np.arange(N) / (N - 1) * math.log(hi / lo))
        levels[1], levels[-1] = lo, hi                    # the ends exactly
    return levels


def _norm_thresholds(levels: np.ndarray) -> np.ndarray:
    """Geometric midpoints between consecutive non-zero levels (2^bits - 2 of them)."""
    return np.sqrt(levels[1:-1] * levels[2:])


def _norm_range(r_min: float, r_max: float) -> np.ndarray:
    """fp32 (lo, hi) from the extreme non-zero norms; ValueError if fp32 cannot hold them."""
    if r_max == 0:
        return np.zeros(2, dtype=np.float32)
    if r_min < FP32_MIN_NORMAL or r_max > FP32_MAX:
        raise ValueError(f"row norms span [{r_min:.3g}, {r_max:.3g}], outside fp32's normal "
                         f"range [{FP32_MIN_NORMAL:.3g}, {FP32_MAX:.3g}]: rescale the matrix")
    return np.array([r_min, r_max], dtype=np.float32)


def _fp16_norms(r: np.ndarray) -> np.ndarray:
    big = r > FP16_MAX
    small = (r > 0) & (r < FP16_MIN_NORMAL)
    if big.any() or small.any():
        i = int(np.flatnonzero(big | small)[0])
        raise ValueError(f"row {i} has norm {r[i]:.3g}, outside fp16's normal range "
                         f"[{FP16_MIN_NORMAL:.3g}, {FP16_MAX:.0f}]: rescale the matrix first "
                         f"(or use log-grid norms, norm_bits < 16)")
    return r.astype(np.float16)


def _norms_reference(r, bits: int):
    """Plain loop: (stored, norm range, decoded) for float64 norms r (numpy)."""
    if bits == FP16_NORMS:
        stored = _fp16_norms(r)
        return stored, np.zeros(0, dtype=np.float32), stored.astype(np.float64)
    nonzero = [float(v) for v in r if v > 0]
    rng_ = _norm_range(min(nonzero, default=0.0), max(nonzero, default=0.0))
    levels = norm_levels(rng_[0], rng_[1], bits)
    thresholds = _norm_thresholds(levels)
    codes = np.zeros(len(r), dtype=np.uint16)
    for i, v in enumerate(r):
        if v > 0:                                 # code 1 + #{thresholds below r}
            codes[i] = 1 + sum(1 for th in thresholds if v > th)
    return codes, rng_, levels[codes]


def _norms_numpy(r, bits: int):
    """Vectorised numpy version of _norms_reference (the fast CPU tier: m values only)."""
    if bits == FP16_NORMS:
        stored = _fp16_norms(r)
        return stored, np.zeros(0, dtype=np.float32), stored.astype(np.float64)
    nz = r > 0
    rng_ = _norm_range(float(r[nz].min()) if nz.any() else 0.0, float(r.max()))
    levels = norm_levels(rng_[0], rng_[1], bits)
    codes = np.where(nz, 1 + np.searchsorted(_norm_thresholds(levels), r, side="left"), 0)
    codes = codes.astype(np.uint16)
    return codes, rng_, levels[codes]


def _norms_torch(r: torch.Tensor, bits: int):
    """Torch version, on r's device: (stored tensor, norm range numpy, decoded float64)."""
    if bits == FP16_NORMS:
        bad = (r > FP16_MAX) | ((r > 0) & (r < FP16_MIN_NORMAL))
        if bool(bad.any()):
            _fp16_norms(r.cpu().numpy())                  # raises with the message
        stored = r.to(torch.float16)
        return stored, np.zeros(0, dtype=np.float32), stored.to(torch.float64)
    nz = r > 0
    r_min = float(r[nz].min()) if bool(nz.any()) else 0.0
    rng_ = _norm_range(r_min, float(r.max()))
    levels = norm_levels(rng_[0], rng_[1], bits)
    th = torch.as_tensor(_norm_thresholds(levels), device=r.device)
    levels = torch.as_tensor(levels, device=r.device)
    codes = torch.where(nz, 1 + torch.searchsorted(th, r.contiguous(), right=False),
                        torch.zeros_like(r, dtype=torch.int64))
    return codes, rng_, levels[codes]


def decode_row_norms(stored, norm_range, bits: int) -> np.ndarray:
    """float64 row norms from what is stored: fp16 values, or codes and the (lo, hi) range."""
    _check_norm_bits(bits)
    stored = np.asarray(stored)
    if bits == FP16_NORMS:
        r = stored.astype(np.float64)
        if not np.all(np.isfinite(r)) or np.any(r < 0):
            raise ValueError("row norms must be finite and non-negative (corrupt data?)")
        return r
    if np.asarray(norm_range).shape != (2,):
        raise ValueError(f"log-grid row norms need a norm range (lo, hi), got "
                         f"{np.asarray(norm_range).shape}")
    levels = norm_levels(norm_range[0], norm_range[1], bits)
    if stored.size and int(stored.max()) >= levels.size:
        raise ValueError(f"row-norm codes must lie in 0..{levels.size - 1}")
    if stored.size and levels[-1] == 0 and stored.max() > 0:
        raise ValueError("non-zero row-norm codes with an all-zero norm range (corrupt data?)")
    return levels[stored.astype(np.int64)]


def coded_row_norms(W, config: PVQConfig, backend: str = "numba") -> np.ndarray:
    """The decoded row norms r_hat that :func:`quantize` uses for W (float64 numpy)."""
    _check_backend(backend)
    _check_matrix(W, config.L)
    r_hat = _coded_norms(W, config.norm_bits, backend)[2]
    return r_hat.cpu().numpy() if isinstance(r_hat, torch.Tensor) else r_hat


def _as_torch(W) -> torch.Tensor:
    """W as a tensor without grad (numpy input is wrapped, not copied)."""
    return W.detach() if isinstance(W, torch.Tensor) else torch.from_numpy(np.asarray(W))


def _coded_norms(W, norm_bits: int, backend: str):
    """(stored, norm range, r_hat) for the row norms of a checked W on one tier (torch
    tensors on the torch tier, numpy otherwise; the norm range is always numpy)."""
    if backend == "torch":
        r = torch.linalg.vector_norm(_as_torch(W).to(torch.float64), dim=1)
        return _norms_torch(r, norm_bits)
    return _NORM_TIERS[backend](_row_norms_numpy(W), norm_bits)


def _as_numpy(W) -> np.ndarray:
    """A numpy view or copy of W (a torch tensor of any float dtype, bf16 included, on any
    device, with or without grad; or anything numpy takes)."""
    if isinstance(W, torch.Tensor):
        W = W.detach().cpu()
        return (W.to(torch.float32) if W.dtype == torch.bfloat16 else W).numpy()
    return np.asarray(W)


def _row_norms_numpy(W) -> np.ndarray:
    return np.sqrt(np.sum(_as_numpy(W).astype(np.float64) ** 2, axis=1))


_NORM_TIERS = {"reference": _norms_reference, "numba": _norms_numpy}


# ---- directions and gain codes of many groups, three tiers ------------------------------
#
# Input: groups G (g, L), the coded row norm of each group's row rg (g,), K, thresholds.
# Output: pyramid points Y (g, L) int64 and gain codes (g,) int64. All tiers compute
#     t = <w_g, y> / ||y|| / r   ("ls")   or   ||w_g|| / r   ("norm"),   code = #{thresholds < t}
# with sums left to right in float64, so reference and numba agree bit for bit; torch sums
# in its own order (codes can differ only if t is within rounding of a threshold).

def _fixed_point(L: int, K: int) -> np.ndarray:
    """The pyramid point (K, 0, ..., 0) used for all-zero groups."""
    y = np.zeros(L, dtype=np.int64)
    y[0] = K
    return y


def _groups_reference(G, rg, K, thresholds, ls):
    pyramid = _pyramid()
    Y = np.empty(G.shape, dtype=np.int64)
    codes = np.empty(len(G), dtype=np.int64)
    for i in range(len(G)):
        g = [float(v) for v in G[i]]
        if not any(g):                                  # no direction: fixed point, t = 0
            Y[i], t = _fixed_point(len(g), K), 0.0
        else:
            Y[i] = pyramid.search(G[i], K)
            y = [float(v) for v in Y[i]]
            gy = yy = gg = 0.0
            for a, b in zip(g, y):
                gy, yy, gg = gy + a * b, yy + b * b, gg + a * a
            t = (gy / math.sqrt(yy) if ls else math.sqrt(gg)) / float(rg[i])
        codes[i] = sum(1 for th in thresholds if t > th)
    return Y, codes


@njit(cache=True)
def _gain_codes_kernel(G, Y, rg, thresholds, ls, codes):
    for i in range(G.shape[0]):
        gy = 0.0
        yy = 0.0
        gg = 0.0
        for j in range(G.shape[1]):
            gy += G[i, j] * Y[i, j]
            yy += float(Y[i, j]) * Y[i, j]
            gg += G[i, j] * G[i, j]
        t = 0.0
        if gg > 0.0:
            t = (gy / math.sqrt(yy) if ls else math.sqrt(gg)) / rg[i]
        c = 0
        for th in thresholds:
            if t > th:
                c += 1
        codes[i] = c
    return codes


def _groups_numba(G, rg, K, thresholds, ls):
    Y = np.tile(_fixed_point(G.shape[1], K), (len(G), 1))
    nz = np.any(G != 0, axis=1)
    if nz.any():
        Y[nz] = _pyramid().search_batch(G[nz], K, backend="numba")
    codes = np.empty(len(G), dtype=np.int64)
    _gain_codes_kernel(G, Y, rg.astype(np.float64), thresholds, ls, codes)
    return Y, codes


def _groups_torch(G, rg, K, thresholds, ls):
    """G, rg: float64 tensors on one device; returns tensors on that device."""
    dev = G.device
    Y = torch.as_tensor(_fixed_point(G.shape[1], K), device=dev).repeat(len(G), 1)
    nz = (G != 0).any(dim=1)
    if bool(nz.any()):
        Y[nz] = _pyramid().search_batch(G[nz], K, backend="torch").to(dev)
    Yf = Y.to(torch.float64)
    if ls:
        t = (G * Yf).sum(dim=1) / torch.linalg.vector_norm(Yf, dim=1)
    else:
        t = torch.linalg.vector_norm(G, dim=1)
    t = torch.where(nz, t / torch.where(nz, rg, torch.ones_like(rg)), torch.zeros_like(t))
    th = torch.as_tensor(thresholds, dtype=torch.float64, device=dev)
    return Y, torch.searchsorted(th, t.contiguous(), right=False)


_GROUP_TIERS = {"reference": _groups_reference, "numba": _groups_numba,
                "torch": _groups_torch}
BACKENDS = tuple(_GROUP_TIERS)


def _check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


# ---- reconstruction: w_g = r * t_c * y / ||y|| ------------------------------------------

def _reconstruct_reference(Y, codes, rg, levels):
    out = np.empty(Y.shape, dtype=np.float64)
    for i in range(len(Y)):
        y = [float(v) for v in Y[i]]
        norm = math.sqrt(sum(v * v for v in y))
        gain = float(rg[i]) * float(levels[codes[i]])
        out[i] = [gain * v / norm for v in y]
    return out


@njit(cache=True)
def _reconstruct_kernel(Y, codes, rg, levels, out):
    for i in range(Y.shape[0]):
        yy = 0.0
        for j in range(Y.shape[1]):
            yy += float(Y[i, j]) * Y[i, j]
        norm = math.sqrt(yy)
        gain = rg[i] * levels[codes[i]]
        for j in range(Y.shape[1]):
            out[i, j] = gain * Y[i, j] / norm
    return out


def _reconstruct_numba(Y, codes, rg, levels):
    out = np.empty(Y.shape, dtype=np.float64)
    return _reconstruct_kernel(np.ascontiguousarray(Y), np.asarray(codes, dtype=np.int64),
                               np.asarray(rg, dtype=np.float64), levels, out)


def _reconstruct_torch(Y, codes, rg, levels):
    Yf = Y.to(torch.float64)
    lv = torch.as_tensor(levels, dtype=torch.float64, device=Y.device)
    gain = rg.to(torch.float64) * lv[codes.long()]
    return gain[:, None] * Yf / torch.linalg.vector_norm(Yf, dim=1, keepdim=True)


_RECONSTRUCT_TIERS = {"reference": _reconstruct_reference, "numba": _reconstruct_numba,
                      "torch": _reconstruct_torch}


# ---- the quantizer ----------------------------------------------------------------------

def _encode_core(W, config: PVQConfig, backend: str):
    """(Y, codes, stored norms, norm range, decoded norms) of W, in W's framework (numpy
    or torch; the norm range is always numpy)."""
    _check_backend(backend)
    m, n = _check_matrix(W, config.L)
    cb = config.codebook(n)
    ls = config.gain_target == "ls"
    _warn_zero_groups(W, config.L)
    stored, rng_, r_hat = _coded_norms(W, config.norm_bits, backend)
    if backend == "torch":
        G = _as_torch(W).to(torch.float64).reshape(-1, config.L)
        Y, codes = _groups_torch(G, r_hat.repeat_interleave(n // config.L), config.K,
                                 cb.thresholds, ls)
        return Y, codes, stored, rng_, r_hat
    G = np.ascontiguousarray(_as_numpy(W), dtype=np.float64).reshape(-1, config.L)
    rg = np.repeat(r_hat, n // config.L)
    Y, codes = _GROUP_TIERS[backend](G, rg, config.K, cb.thresholds, ls)
    return Y, codes, stored, rng_, r_hat


def _decode_core(Y, codes, r_hat, config: PVQConfig, shape, backend: str):
    m, n = shape
    levels = config.codebook(n).levels
    if backend == "torch":
        rg = r_hat.to(torch.float64).repeat_interleave(n // config.L)
        return _reconstruct_torch(Y, codes, rg, levels).reshape(m, n)
    rg = np.repeat(np.asarray(r_hat, dtype=np.float64), n // config.L)
    return _RECONSTRUCT_TIERS[backend](Y, codes, rg, levels).reshape(m, n)


def normalised_gains(W, config: PVQConfig, backend: str = "numba") -> np.ndarray:
    """The uncoded t of every group, shape (m, n/L): t = <w_g, y>/||y|| / r_hat ("ls") or
    ||w_g|| / r_hat ("norm"), with r_hat the coded row norm (:func:`coded_row_norms`) and y
    the pyramid point of the group (the gain codes of :func:`quantize` are
    ``config.codebook(n).encode(t)``). For the chapter's measurements; float64 numpy out."""
    m, n = _check_matrix(W, config.L)
    wide = PVQConfig(config.L, config.K, 0, "quantile", config.gain_target, config.norm_bits)
    Y, _, _, _, r_hat = _encode_core(W, wide, backend)
    if isinstance(Y, torch.Tensor):
        Y, r_hat = Y.cpu().numpy(), r_hat.cpu().numpy()
    G = _as_numpy(W).astype(np.float64).reshape(m, -1, config.L)
    Yf = Y.reshape(G.shape).astype(np.float64)
    if config.gain_target == "ls":
        g = np.sum(G * Yf, axis=2) / np.linalg.norm(Yf, axis=2)
    else:
        g = np.linalg.norm(G, axis=2)
    r = np.asarray(r_hat, dtype=np.float64)[:, None]
    return np.divide(g, r, out=np.zeros_like(g), where=r > 0)


def _like(out, W):
    """out (float64, numpy or torch) converted to W's type, dtype and device."""
    if isinstance(W, torch.Tensor):
        out = out if isinstance(out, torch.Tensor) else torch.from_numpy(out)
        return out.to(dtype=W.dtype, device=W.device)
    out = out.cpu().numpy() if isinstance(out, torch.Tensor) else out
    return out.astype(W.dtype, copy=False)


def quantize_dequantize(W, config: PVQConfig, backend: str = "numba"):
    """W -> its PVQ reconstruction, without enumerating indices (decode(encode(y)) = y, so
    this equals ``dequantize(quantize(W))``). Same type, dtype and device as W."""
    Y, codes, _, _, r_hat = _encode_core(W, config, backend)
    return _like(_decode_core(Y, codes, r_hat, config, tuple(W.shape), backend), W)


@dataclass(frozen=True)
class QuantizedMatrix:
    """A PVQ-quantized (m, n) matrix: what a file would store, as numpy arrays.

    Groups are numbered row-major (group j of row i is number i * n/L + j).
    ``indices``: (groups, W) uint64 limbs of the pyramid indices (see pvqref.pyramid);
    ``gain_codes``: (groups,) uint16; ``row_norms``: (m,) float16 values (norm_bits = 16)
    or uint16 log-grid codes; ``norm_range``: (lo, hi) float32 for log-grid codes, empty
    for fp16 norms.
    """
    shape: tuple
    config: PVQConfig
    row_norms: np.ndarray = field(repr=False)
    indices: np.ndarray = field(repr=False)
    gain_codes: np.ndarray = field(repr=False)
    norm_range: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32),
                                   repr=False)

    @property
    def n_groups(self) -> int:
        return self.shape[0] * self.shape[1] // self.config.L

    def decoded_row_norms(self) -> np.ndarray:
        """The row norms r_hat the decoder uses (float64)."""
        return decode_row_norms(self.row_norms, self.norm_range, self.config.norm_bits)

    def bit_counts(self) -> dict:
        """Bits stored, by kind: per matrix (version byte, checksum, norm range), indices,
        gain codes, row norms (and their total, equal to ``config.bits(shape)``)."""
        c = {"matrix": self.config.matrix_bits,
             "indices": self.n_groups * self.config.index_bits,
             "gain_codes": self.n_groups * self.config.gain_bits,
             "row_norms": self.config.norm_bits * self.shape[0]}
        c["total"] = sum(c.values())
        return c

    def bits_per_weight(self) -> float:
        return self.bit_counts()["total"] / (self.shape[0] * self.shape[1])

    def to_bytes(self) -> bytes:
        """One little-endian bit stream: the version byte, the norm range (two fp32, log
        norms only), all indices (bits(L, K) each), all gain codes (gain_bits each), all row
        norms (norm_bits each), zero-padded to a whole byte, then the CRC-32 of the schema
        and all that (4 bytes); so len = ceil(bit_counts()['total'] / 8)."""
        _check_quantized(self)
        cfg = self.config
        idx = np.unpackbits(np.frombuffer(_pyramid().pack_indices(self.indices, cfg.L, cfg.K),
                                          dtype=np.uint8), bitorder="little")
        norms = self.row_norms.view(np.uint16) if cfg.norm_bits == FP16_NORMS \
            else self.row_norms
        parts = [_uint_bits([FORMAT_VERSION], VERSION_BITS),
                 _uint_bits(self.norm_range.astype(np.float32).view(np.uint32), 32),
                 idx[:self.n_groups * cfg.index_bits],
                 _uint_bits(self.gain_codes, cfg.gain_bits),
                 _uint_bits(norms, cfg.norm_bits)]
        return _sealed(np.packbits(np.concatenate(parts), bitorder="little").tobytes(),
                       self.shape, cfg)


def _schema(shape, config: PVQConfig) -> bytes:
    """The format a stream is read with, as canonical text (covered by its checksum)."""
    return json.dumps({"format": "pvqref.gain", "version": FORMAT_VERSION,
                       "shape": [int(v) for v in shape], "L": int(config.L), "K": int(config.K),
                       "gain_bits": int(config.gain_bits), "gain_kind": config.gain_kind,
                       "gain_target": config.gain_target, "norm_bits": int(config.norm_bits)},
                      sort_keys=True).encode()


def _sealed(payload: bytes, shape, config: PVQConfig) -> bytes:
    """payload + CRC-32(schema + payload), 4 bytes little-endian."""
    crc = zlib.crc32(payload, zlib.crc32(_schema(shape, config)))
    return payload + crc.to_bytes(CHECKSUM_BITS // 8, "little")


def _uint_bits(values, b: int) -> np.ndarray:
    """The b low bits of each value, least significant first, concatenated."""
    v = np.asarray(values, dtype=np.uint64)
    return ((v[:, None] >> np.arange(b, dtype=np.uint64)) & np.uint64(1)).astype(np.uint8).ravel()


def _bits_uint(bits: np.ndarray, b: int) -> np.ndarray:
    """Inverse of _uint_bits: (count,) uint64."""
    if b == 0:
        return np.zeros(0, dtype=np.uint64)
    w = bits.reshape(-1, b).astype(np.uint64) << np.arange(b, dtype=np.uint64)
    return w.sum(axis=1, dtype=np.uint64)


def from_bytes(data: bytes, shape, config: PVQConfig) -> QuantizedMatrix:
    """Inverse of :meth:`QuantizedMatrix.to_bytes` (the shape and config are the format).
    ValueError for a wrong length, another format version, a checksum that does not match
    (corrupt bytes, or another config or shape than the writer's), non-zero padding or
    values the format cannot hold (Inf/NaN norms, an inverted norm range, codes out of
    range)."""
    m, n = _check_shape(shape)
    if n % config.L:
        raise ValueError(f"shape {shape} does not fit group size L={config.L}")
    G = m * n // config.L
    log_norms = config.norm_bits != FP16_NORMS
    sizes = [VERSION_BITS, NORM_RANGE_BITS if log_norms else 0, G * config.index_bits,
             G * config.gain_bits, config.norm_bits * m]
    total = sum(sizes)                                # without the checksum
    n_bytes = -(-total // 8) + CHECKSUM_BITS // 8
    data = bytes(data)
    if len(data) != n_bytes:
        raise ValueError(f"shape {shape} with {config} needs {n_bytes} bytes, got {len(data)}")
    if data[0] != FORMAT_VERSION:
        raise ValueError(f"format version {data[0]} is not supported (this reader reads "
                         f"version {FORMAT_VERSION})")
    payload = data[:-(CHECKSUM_BITS // 8)]
    if _sealed(payload, (m, n), config) != data:
        raise ValueError(f"checksum mismatch: the bytes are corrupt, or were written with "
                         f"another config or shape than {config} and {(m, n)}")
    stream = np.unpackbits(np.frombuffer(payload, dtype=np.uint8), bitorder="little")
    if stream[total:].any():
        raise ValueError("padding bits after the last row norm are not zero")
    _, range_bits, idx_bits, gain_bits, norm_bits = np.split(stream[:total],
                                                             np.cumsum(sizes)[:-1])
    idx = np.packbits(idx_bits, bitorder="little").tobytes()
    indices = _pyramid().unpack_indices(idx, G, config.L, config.K)
    codes = np.zeros(G, dtype=np.uint16) if config.gain_bits == 0 else \
        _bits_uint(gain_bits, config.gain_bits).astype(np.uint16)
    norms = _bits_uint(norm_bits, config.norm_bits).astype(np.uint16)
    if not log_norms:
        norms = norms.view(np.float16)
    norm_range = _bits_uint(range_bits, 32).astype(np.uint32).view(np.float32) if log_norms \
        else np.zeros(0, dtype=np.float32)
    Q = QuantizedMatrix((m, n), config, norms, indices, codes, norm_range)
    _check_quantized(Q)
    return Q


def _check_quantized(Q: QuantizedMatrix) -> None:
    """Consistency of a QuantizedMatrix before decoding (the index range is checked by the
    pyramid decoder)."""
    m, n = Q.shape
    G = Q.n_groups
    if Q.row_norms.shape != (m,) or Q.gain_codes.shape != (G,) or len(Q.indices) != G:
        raise ValueError(f"inconsistent QuantizedMatrix for shape {Q.shape}: row_norms "
                         f"{Q.row_norms.shape}, gain_codes {Q.gain_codes.shape}, indices "
                         f"{Q.indices.shape}")
    fp16 = Q.config.norm_bits == FP16_NORMS
    if (Q.row_norms.dtype != (np.float16 if fp16 else np.uint16)
            or Q.norm_range.shape != ((0,) if fp16 else (2,))):
        raise ValueError(f"norm_bits={Q.config.norm_bits} needs row_norms of dtype "
                         f"{'float16' if fp16 else 'uint16'} and a norm range of shape "
                         f"{'(0,)' if fp16 else '(2,)'}, got {Q.row_norms.dtype} and "
                         f"{Q.norm_range.shape}")
    Q.decoded_row_norms()                             # checks values, range and codes
    if G and int(Q.gain_codes.max()) >= 2 ** Q.config.gain_bits:
        raise ValueError(f"gain codes must lie in 0..{2 ** Q.config.gain_bits - 1}")


def quantize(W, config: PVQConfig, backend: str = "numba") -> QuantizedMatrix:
    """Quantize every group of W (numpy array or torch tensor, shape (m, n)) with PVQ."""
    Y, codes, stored, rng_, _ = _encode_core(W, config, backend)
    limbs = _pyramid().encode_batch(Y, config.K, backend=backend)
    if isinstance(limbs, torch.Tensor):
        limbs = limbs.cpu().numpy().view(np.uint64)
        codes, stored = codes.cpu().numpy(), stored.cpu().numpy()
    stored = stored if config.norm_bits == FP16_NORMS else stored.astype(np.uint16)
    return QuantizedMatrix(tuple(int(v) for v in W.shape), config, np.asarray(stored),
                           np.ascontiguousarray(limbs, dtype=np.uint64),
                           np.asarray(codes, dtype=np.uint16), rng_)


def _warn_zero_groups(W, L: int) -> None:
    if isinstance(W, torch.Tensor):
        G = W.reshape(W.shape[0], -1, L)
        zero_group, zero_row = ~(G != 0).any(dim=2), ~(W != 0).any(dim=1)
        count = int((zero_group & ~zero_row[:, None]).sum())
    else:
        G = np.asarray(W).reshape(W.shape[0], -1, L)
        zero_group, zero_row = ~np.any(G != 0, axis=2), ~np.any(W != 0, axis=1)
        count = int(np.sum(zero_group & ~zero_row[:, None]))
    if count:
        warnings.warn(f"{count} all-zero group(s) in non-zero rows: each is coded as the "
                      f"smallest gain level along the fixed direction (K, 0, ..., 0), so it "
                      f"does not decode to zero (see pvqref.gain)", stacklevel=4)


def dequantize(Q: QuantizedMatrix, backend: str = "numba", device=None):
    """Reconstruct the (m, n) matrix: float64 numpy, or with backend="torch" a float64
    tensor on ``device`` (default CPU)."""
    _check_backend(backend)
    _check_quantized(Q)
    cfg = Q.config
    r_hat = Q.decoded_row_norms()
    if backend == "torch":
        dev = torch.device(device) if device is not None else torch.device("cpu")
        limbs = torch.from_numpy(Q.indices.view(np.int64).copy()).to(dev)
        Y = _pyramid().decode_batch(limbs, cfg.L, cfg.K, backend="torch")
        codes = torch.from_numpy(Q.gain_codes.astype(np.int64)).to(dev)
        return _decode_core(Y, codes, torch.from_numpy(r_hat).to(dev), cfg, Q.shape, "torch")
    Y = _pyramid().decode_batch(Q.indices, cfg.L, cfg.K, backend=backend)
    return _decode_core(Y, Q.gain_codes.astype(np.int64), r_hat, cfg, Q.shape, backend)


# ----------------------------------------------------------------------------------------
# Choosing (L, K, gain bits) for a target rate R (bits per weight, fractional allowed).
# For each group size L dividing n and each gain bit count b, the largest K with
#     (bits(L, K) + b) / L + norm_bits / n + matrix_bits / (m n) <= R
# (m = the fewest rows of the matrices the choice is for); then measure the relative MSE
#     ||W - W_hat||_F^2 / ||W||_F^2
# on a sample matrix and keep the best. The pyramid is cheap to evaluate, so we measure
# rather than model.
# ----------------------------------------------------------------------------------------

DEFAULT_GROUP_SIZES = (16, 32, 48, 64, 96, 128, 144, 192, 256, 288, 384)


def relative_mse(W, W_hat) -> float:
    """||W - W_hat||^2 / ||W||^2 (numpy or torch, computed in float64)."""
    W, W_hat = _as_numpy(W).astype(np.float64), _as_numpy(W_hat).astype(np.float64)
    if W.shape != W_hat.shape:
        raise ValueError(f"shapes differ: {W.shape} and {W_hat.shape}")
    energy = np.sum(W ** 2)
    if not np.isfinite(energy) or energy == 0:
        raise ValueError("relative MSE needs a finite, non-zero reference W")
    if not np.all(np.isfinite(W_hat)):
        raise ValueError("the reconstruction W_hat contains NaN or Inf")
    return float(np.sum((W - W_hat) ** 2) / energy)


def choose_config(W, target_bpw: float, group_sizes=DEFAULT_GROUP_SIZES,
                  gain_bits=(1, 2, 3, 4), backend: str = "numba", rows: int | None = None,
                  **kw):
    """Best PVQConfig for ``target_bpw`` on the sample W, and the table of every candidate
    (dicts with L, K, gain_bits, bpw, rel_mse), best first. ``rows``: the fewest rows of
    the matrices the choice will be applied to (default: W's); the per-matrix bits are
    counted for that many rows, so every such matrix stays within the target. ``kw``:
    further PVQConfig fields (norm_bits, gain_kind, ...)."""
    if len(getattr(W, "shape", ())) != 2:
        raise ValueError(f"expected a 2-D sample matrix, got shape {getattr(W, 'shape', None)}")
    shape = (int(W.shape[0]) if rows is None else rows, int(W.shape[1]))
    n = shape[1]
    table = []
    for L in group_sizes:
        if n % L or L >= n:
            continue
        for b in gain_bits:
            cfg = config_for_rate(L, shape, target_bpw, b, **kw)
            if cfg is None:
                continue
            err = relative_mse(W, quantize_dequantize(W, cfg, backend))
            table.append({"L": L, "K": cfg.K, "gain_bits": b,
                          "bpw": cfg.bits_per_weight(shape), "rel_mse": err, "config": cfg})
    if not table:
        raise ValueError(f"no configuration fits {target_bpw} bits per weight for rows of "
                         f"n={n} with group sizes {tuple(group_sizes)}")
    table.sort(key=lambda r: r["rel_mse"])
    return table[0]["config"], table


# ----------------------------------------------------------------------------------------
# Baselines.
# Min-max asymmetric round-to-nearest with groups of `group` consecutive weights of the
# row-major flattened matrix (when group divides n these are groups within a row):
#     scale = fp16((max - min) / (2^b - 1)),  zero = fp16(min),
#     q = clip(round((w - zero) / scale), 0, 2^b - 1),   w_hat = q * scale + zero;
#     bits per weight = b + 32 / group  (fp16 scale and fp16 zero point per group).
# Gaussian bound: an i.i.d. Gaussian source at R bits per sample cannot be coded with
# relative MSE below D(R) = 2^(-2R) (Shannon's distortion-rate function).
# ----------------------------------------------------------------------------------------

def rtn_quantize_dequantize(W, bits: int, group: int = 128) -> np.ndarray:
    """Min-max asymmetric RTN of W (numpy, any shape with size divisible by group): per
    group of ``group`` consecutive weights (row-major) an fp16 scale (max - min) / (2^b - 1)
    and an fp16 zero point min; codes round((w - zero) / scale) clamped to 0..2^b - 1."""
    for name, v, top in (("bits", bits, 16), ("group", group, None)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 \
                or (top and v > top):
            raise ValueError(f"{name} must be an integer in 1..{top or 'size'}, got {v!r}")
    W = _as_numpy(W)
    if W.dtype.kind != "f":
        raise TypeError(f"expected float weights, got dtype {W.dtype}")
    if W.size == 0 or W.size % group:
        raise ValueError(f"{W.size} weights do not split into groups of {group}")
    if not np.all(np.isfinite(W)):
        raise ValueError("the weight matrix contains NaN or Inf")
    G = W.astype(np.float64).reshape(-1, group)
    lo, hi = G.min(axis=1, keepdims=True), G.max(axis=1, keepdims=True)
    with np.errstate(over="ignore"):
        scale = ((hi - lo) / (2 ** bits - 1)).astype(np.float16).astype(np.float64)
        zero = lo.astype(np.float16).astype(np.float64)
    if not (np.all(np.isfinite(scale)) and np.all(np.isfinite(zero))):
        raise ValueError(f"a group's range exceeds fp16 ({FP16_MAX:.0f}): the fp16 scale or "
                         f"zero point would be Inf; rescale the matrix first")
    safe = np.where(scale > 0, scale, 1.0)
    q = np.clip(np.round((G - zero) / safe), 0, 2 ** bits - 1)
    return (q * scale + zero).reshape(W.shape)


def rtn_bits_per_weight(bits: int, group: int = 128) -> float:
    return bits + 32 / group


def gaussian_bound(bpw) -> np.ndarray | float:
    """Shannon's distortion-rate bound 2^(-2R) on the relative MSE of a Gaussian source
    (a float for a scalar R, an array for an array)."""
    out = 2.0 ** (-2.0 * np.asarray(bpw, dtype=np.float64))
    return float(out) if out.ndim == 0 else out

"""The format of a PVQ-quantized matrix (:class:`PVQConfig`), its exact bit count, and the
checks every entry point shares (group size, weight matrix).

Chapter: Gain quantization (book/gain.ipynb), section "The complete quantizer and its bits".

The complete PVQ quantizer of a weight matrix W (m rows of length n; groups of L
consecutive weights of a row, L dividing n, L < n) stores (see :mod:`pvqref.format` for
the byte layout):

    per matrix  a format-version byte                              8 bits
                the norm range lo, hi as fp32 (log norms only)      64 bits
                a CRC-32 checksum                                   32 bits
    per row     the coded row norm r_hat (see pvqref.gain.norms)    norm_bits
    per group   the pyramid index of y = search(w_g, K)           bits(L, K) = ceil(log2 N(L, K))
                the gain code c (nearest level to t)              gain_bits

and the decoder returns  w_g ~ r_hat * t_c * y / ||y||.  Exactly, nothing else stored:

    bits per weight = (bits(L, K) + gain_bits) / L + norm_bits / n + matrix_bits / (m n)

with matrix_bits = 40 (fp16 norms) or 104 (log norms). L, K, the bit counts, the codebook
kind and the shape are the format (known to the reader, like a file's schema), not data:
a model file stores them once per configuration (the chooser picks one per row length),
and the architecture gives the shapes.

Which t to code. For a unit direction u = y/||y|| the error of the group is

    ||w_g - g u||^2 = ||w_g||^2 - <w_g, u>^2 + (g - <w_g, u>)^2,

minimised by the least-squares gain g* = <w_g, u> = ||w_g|| cos(angle). We code
t = g* / r_hat ("ls", the default); "norm" codes t = ||w_g|| / r_hat instead, which
overshoots by the factor 1 / cos(angle) of the direction error. Both are measured in the
gain chapter.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import _checks, _tiers, pyramid
from ..format import check_shape, matrix_bits
from .laws import GAIN_KINDS, GainCodebook, check_gain_bits, gain_codebook

GAIN_TARGETS = ("ls", "norm")
DEFAULT_NORM_BITS = 5            # chosen by measurement (gain chapter, "Side information")


def check_norm_bits(b) -> int:
    """``b`` as an int: 16 (fp16 row norms) or 2..15 (log-grid codes)."""
    return _checks.integer(b, "norm_bits (16: fp16 row norms, 2..15: log-grid codes)", 2, 16)


@dataclass(frozen=True)
class PVQConfig:
    """Format of a PVQ-quantized matrix: group size L, pulses K, gain bits and codebook,
    and the row-norm format (``norm_bits`` = 16: fp16; 2..15: log-grid codes).

    Chapter: Gain quantization (book/gain.ipynb), "The complete quantizer and its bits"."""
    L: int
    K: int
    gain_bits: int
    gain_kind: str = "lloyd_max"
    gain_target: str = "ls"
    norm_bits: int = DEFAULT_NORM_BITS

    def __post_init__(self):
        _checks.integer(self.L, "L", 1)
        _checks.integer(self.K, "K", 1)
        check_gain_bits(self.gain_bits)
        _checks.choice(self.gain_kind, "gain_kind", GAIN_KINDS)
        _checks.choice(self.gain_target, "gain_target", GAIN_TARGETS)
        check_norm_bits(self.norm_bits)

    @property
    def index_bits(self) -> int:
        """Bits of one group's pyramid index, ceil(log2 N(L, K))."""
        return pyramid.bits(self.L, self.K)

    @property
    def matrix_bits(self) -> int:
        """Bits stored once per matrix: the version byte, the checksum, and the norm range
        for log norms."""
        return matrix_bits(self.norm_bits)

    def bits(self, shape) -> int:
        """Every bit stored for a matrix of ``shape`` = (m, n), L dividing n."""
        m, n = check_shape(shape)
        if n % self.L:
            raise ValueError(f"row length n={n} is not divisible by the group size L={self.L}")
        return (m * n // self.L * (self.index_bits + self.gain_bits) + m * self.norm_bits
                + self.matrix_bits)

    def bits_per_weight(self, shape) -> float:
        """Everything stored, per weight, for a matrix of ``shape`` = (m, n):
        (bits(L, K) + gain_bits) / L + norm_bits / n + matrix_bits / (m n), computed as one
        division of integers (so an exact fit to a budget compares as exact)."""
        m, n = check_shape(shape)
        return self.bits((m, n)) / (m * n)

    def codebook(self, n: int) -> GainCodebook:
        """The gain codebook of this config for rows of length n (built once, cached)."""
        return _cached_codebook(self.L, int(n), self.gain_bits, self.gain_kind)


_CODEBOOKS: dict = {}


def _cached_codebook(L: int, n: int, bits: int, kind: str) -> GainCodebook:
    key = (L, n, bits, kind)
    if key not in _CODEBOOKS:
        _CODEBOOKS[key] = gain_codebook(L, n, bits, kind)
    return _CODEBOOKS[key]


def check_group_size(L: int, n: int) -> None:
    """L must divide the row length n and be smaller than it."""
    if n % L:
        raise ValueError(f"row length n={n} is not divisible by the group size L={L}: L must "
                         f"divide n (choose L among the divisors of n)")
    if L >= n:
        raise ValueError(f"group size L={L} must be smaller than the row length n={n}, and "
                         f"divide it (the gain is coded relative to the row norm)")


def check_matrix(W, L: int) -> tuple[int, int]:
    """Validate W (NumPy array or torch tensor, 2-D, floating, finite) against group size L;
    return (m, n)."""
    shape = tuple(getattr(W, "shape", ()))
    if len(shape) != 2:
        raise ValueError(f"expected a 2-D weight matrix (rows, n), got shape {shape}")
    m, n = shape
    if m < 1 or n < 1:
        raise ValueError(f"the weight matrix is empty: shape {shape}")
    check_group_size(L, n)
    if not (_tiers.is_torch(W) or isinstance(W, np.ndarray)):
        raise TypeError(f"expected a float NumPy array or torch tensor, got "
                        f"{type(W).__name__}")
    _checks.real_dtype(W, "the weight matrix", integers=False)
    _checks.finite(W, "the weight matrix")
    return m, n

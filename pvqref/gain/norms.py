"""Row norms, the side information of the PVQ quantizer: fp16 values or log-grid codes.

Chapter: Gain quantization (book/gain.ipynb), section "Side information: how many bits
for a row norm?".

Row norms (``PVQConfig.norm_bits``):

  norm_bits = 16   r_hat = fp16(r): 16 bits per row, relative error <= 2^-11.
  norm_bits = b    (2 <= b <= 15) a logarithmic grid between the extreme non-zero row
                   norms of the matrix, lo = fp32(min r) and hi = fp32(max r), stored once
                   per matrix. With N = 2^b - 1 levels
                       l_j = lo * (hi / lo)^((j - 1) / (N - 1)),    j = 1..N,
                   code 0 means a zero row (r_hat = 0) and code j means r_hat = l_j. The
                   encoder takes the nearest level in log distance (thresholds at the
                   geometric midpoints sqrt(l_j l_{j+1})), so
                       |log(r_hat / r)| <= log(hi / lo) / (2 (N - 1)).

A log grid because r_hat / r is what matters (it scales the whole row). And the gain codes
are computed from r_hat (t = g / r_hat), so a norm error does not add to the reconstruction
directly: it only moves t by the factor r / r_hat against the gain levels. That is why a
few bits are enough; the gain chapter measures the trade-off.

The grid (levels and thresholds) is computed here once, in NumPy float64, from the stored
fp32 lo and hi; every tier (``row_norms`` in reference.py, _numba.py, _torch.py) encodes
against the same thresholds and decodes with the same levels, so the tiers agree bit for
bit given the same float64 norms. A row norm the format cannot hold (outside fp16's normal
range, or fp32's for log norms) is a ValueError.
"""

from __future__ import annotations

import math

import numpy as np

from .. import _tiers
from ..format import FP16_NORMS
from .config import check_matrix, check_norm_bits

FP16_MAX = 65504.0
FP16_MIN_NORMAL = 2.0 ** -14
FP32_MAX = float(np.finfo(np.float32).max)
FP32_MIN_NORMAL = float(np.finfo(np.float32).tiny)


def norm_levels(lo: float, hi: float, bits: int) -> np.ndarray:
    """Decoded row norm of every code 0..2^bits-1: 0 for code 0, then the 2^bits - 1
    log-spaced levels lo .. hi (all equal to lo when lo == hi; all 0 when hi == 0).

    Chapter: Gain quantization (book/gain.ipynb), "Side information"."""
    check_norm_bits(bits)
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


def norm_thresholds(levels: np.ndarray) -> np.ndarray:
    """Geometric midpoints between consecutive non-zero levels (2^bits - 2 of them)."""
    return np.sqrt(levels[1:-1] * levels[2:])


def fp32_norm_range(r_min: float, r_max: float) -> np.ndarray:
    """fp32 (lo, hi) from the extreme non-zero norms; ValueError if fp32 cannot hold them."""
    if r_max == 0:
        return np.zeros(2, dtype=np.float32)
    if r_min < FP32_MIN_NORMAL or r_max > FP32_MAX:
        raise ValueError(f"row norms span [{r_min:.3g}, {r_max:.3g}], outside fp32's normal "
                         f"range [{FP32_MIN_NORMAL:.3g}, {FP32_MAX:.3g}]: rescale the matrix")
    return np.array([r_min, r_max], dtype=np.float32)


def fp16_norms(r: np.ndarray) -> np.ndarray:
    """float64 norms r (NumPy) as fp16; ValueError for one outside fp16's normal range."""
    big = r > FP16_MAX
    small = (r > 0) & (r < FP16_MIN_NORMAL)
    if big.any() or small.any():
        i = int(np.flatnonzero(big | small)[0])
        raise ValueError(f"row {i} has norm {r[i]:.3g}, outside fp16's normal range "
                         f"[{FP16_MIN_NORMAL:.3g}, {FP16_MAX:.0f}]: rescale the matrix first "
                         f"(or use log-grid norms, norm_bits < 16)")
    return r.astype(np.float16)


def decode_row_norms(stored, norm_range, bits: int) -> np.ndarray:
    """float64 row norms from what is stored: fp16 values, or codes and the (lo, hi) range.

    Chapter: Gain quantization (book/gain.ipynb), "Side information"."""
    check_norm_bits(bits)
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


def encode_row_norms(W, config, backend: str = "auto"):
    """``(stored, norm_range, r_hat)``: the row norms of W as :func:`pvqref.gain.quantize`
    stores them (fp16 values, or uint16 log-grid codes), the norm range (fp32 (lo, hi), or
    empty for fp16 norms) and the decoded norms r_hat (float64), all NumPy, computed on
    ``backend``'s tier ("auto": torch for a tensor, numba otherwise).

    Chapter: Gain quantization (book/gain.ipynb), "Side information"."""
    tier = _tiers.load("pvqref.gain", _tiers.resolve(backend, W))
    check_matrix(W, config.L)
    _, r = tier.matrix(W)
    stored, norm_range, r_hat = tier.row_norms(r, config.norm_bits)
    stored = _tiers.to_numpy(stored, np.float16)
    if config.norm_bits != FP16_NORMS:
        stored = stored.astype(np.uint16)
    return stored, np.asarray(norm_range, dtype=np.float32), _tiers.to_numpy(r_hat)


def coded_row_norms(W, config, backend: str = "auto") -> np.ndarray:
    """The decoded row norms r_hat that :func:`pvqref.gain.quantize` uses for W (float64
    NumPy): the last of :func:`encode_row_norms`.

    Chapter: Gain quantization (book/gain.ipynb), "Side information"."""
    return encode_row_norms(W, config, backend)[2]

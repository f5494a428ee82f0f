"""Every baseline the book measures PVQ against, one definition each.

- :func:`rtn_quantize_dequantize`, :func:`rtn_bits_per_weight`: min-max round-to-nearest
  with fp16 scale and zero point per group (gain chapter, coherence chapter).
- :func:`gaussian_bound`: Shannon's distortion-rate bound of a Gaussian source (gain
  chapter; the pyramid chapter's "Distortion on Gaussian vectors").
- :func:`lloyd_max_gaussian`, :func:`nearest_level`, :func:`gaussian_quantizer_mse`: the
  MSE-optimal scalar quantizer of N(0, 1) (pyramid chapter).
- :func:`relative_mse`: the distortion every chapter reports (and that
  :func:`pvqref.gain.choose_config` minimises).

Later chapters add GPTQ here. This module imports NumPy and SciPy only (not pvqref.gain),
so every chapter can use it.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from . import _checks, _tiers

FP16_MAX = float(np.finfo(np.float16).max)       # 65504


def _values(x) -> np.ndarray:
    """x (NumPy, or a tensor of any float dtype on any device, read detached) as float64."""
    return _tiers.to_numpy(x.detach() if _tiers.is_torch(x) else x).astype(np.float64)


def relative_mse(W, W_hat) -> float:
    """||W - W_hat||^2 / ||W||^2 (NumPy or torch, computed in float64).

    Used in every chapter's measurements: gain (book/gain.ipynb), coherence
    (book/coherence.ipynb), and by pvqref.gain.choose_config."""
    W, W_hat = _values(W), _values(W_hat)
    if W.shape != W_hat.shape:
        raise ValueError(f"shapes differ: {W.shape} and {W_hat.shape}")
    energy = np.sum(W ** 2)
    if not np.isfinite(energy) or energy == 0:
        raise ValueError("relative MSE needs a finite, non-zero reference W")
    if not np.all(np.isfinite(W_hat)):
        raise ValueError("the reconstruction W_hat contains NaN or Inf")
    return float(np.sum((W - W_hat) ** 2) / energy)


def rtn_quantize_dequantize(W, bits: int, group: int = 128) -> np.ndarray:
    """Min-max asymmetric round-to-nearest (RTN) of W, and its reconstruction (float64).

    Groups are ``group`` consecutive weights of the row-major flattened W (when ``group``
    divides the row length: groups within a row); W.size must be a multiple of ``group``.
    What is stored, exactly::

        per weight   a code q in 0 .. 2^bits - 1                     bits
        per group    scale = fp16((max - min) / (2^bits - 1))        16 bits
                     zero  = fp16(min)                               16 bits

    with min and max of the group in float64, and the scale rounded from the unrounded
    range (not from the rounded zero). The codes are q = clip(round((w - zero) / scale),
    0, 2^bits - 1) (clipping matters: fp16(min) can lie above min), and the decoder returns
    w_hat = q * scale + zero in float64. So :func:`rtn_bits_per_weight` counts
    bits + 32 / group and nothing per matrix. ValueError when a group's range or minimum
    does not fit fp16 (rescale first).

    Used in: Gain quantization (book/gain.ipynb), "Rate–distortion on real weights"; Spherical
    coherence (book/coherence.ipynb), as the gain chapter's baseline."""
    codes, scale, zero = rtn_codes(W, bits, group)
    G = codes.astype(np.float64).reshape(len(scale), -1)
    return (G * scale[:, None] + zero[:, None]).reshape(codes.shape)


def rtn_codes(W, bits: int, group: int = 128):
    """What :func:`rtn_quantize_dequantize` stores: ``(codes, scale, zero)``, the codes
    (uint8 for bits <= 8, else uint16) in W's shape, and per group (of the row-major
    flattened W) the scale and zero point as float64 holding fp16 values; the
    reconstruction is codes * scale + zero. Chapter: Hessian-aware PVQ
    (book/hessian.ipynb)."""
    bits = _checks.integer(bits, "bits", 1, 16)
    group = _checks.integer(group, "group", 1)
    W = _tiers.to_numpy(W.detach() if _tiers.is_torch(W) else W)
    _checks.real_dtype(W, "the weights", integers=False)
    if W.size == 0 or W.size % group:
        raise ValueError(f"{W.size} weights do not split into groups of {group}")
    _checks.finite(W, "the weight matrix")
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
    dtype = np.uint8 if bits <= 8 else np.uint16
    return q.astype(dtype).reshape(W.shape), scale[:, 0], zero[:, 0]


def rtn_bits_per_weight(bits: int, group: int = 128) -> float:
    """Bits per weight of :func:`rtn_quantize_dequantize`: bits + 32 / group (the code, and
    an fp16 scale and zero point per group).

    Used in: Gain quantization (book/gain.ipynb), "Rate–distortion on real weights"."""
    return _checks.integer(bits, "bits", 1, 16) + 32 / _checks.integer(group, "group", 1)


def gaussian_bound(bpw) -> np.ndarray | float:
    """Shannon's distortion-rate bound D(R) = 2^(-2R): no code of an i.i.d. Gaussian source
    at R bits per sample has a lower relative MSE (a float for a scalar R, an array for an
    array).

    Used in: Gain quantization (book/gain.ipynb), throughout; Pyramid (book/pyramid.ipynb),
    "Distortion on Gaussian vectors"."""
    out = 2.0 ** (-2.0 * np.asarray(bpw, dtype=np.float64))
    return float(out) if out.ndim == 0 else out


def _cells(levels: np.ndarray) -> np.ndarray:
    """Edges -inf, midpoints, +inf of the nearest-level cells of sorted levels."""
    return np.concatenate([[-np.inf], (levels[1:] + levels[:-1]) / 2, [np.inf]])


def lloyd_max_gaussian(levels: int, tol: float = 1e-12, max_iter: int = 100_000) -> np.ndarray:
    """The MSE-optimal ``levels`` levels for N(0, 1), ascending (Lloyd-Max).

    Lloyd's iteration from the quantiles (i + 1/2) / levels: thresholds midway between
    levels, each level the mean of its cell, E[X | a < X <= b] = (phi(a) - phi(b)) /
    (Phi(b) - Phi(a)). The Gaussian density is log-concave, so the fixed point is unique and
    is the optimum (Fleischer 1964). Stops when no level moves by more than ``tol``;
    RuntimeError after ``max_iter`` steps. 2 levels: +-sqrt(2/pi).

    Used in: Pyramid (book/pyramid.ipynb), "Distortion on Gaussian vectors"."""
    n = _checks.integer(levels, "levels", 1)
    q = stats.norm.ppf((np.arange(n) + 0.5) / n)
    for _ in range(max_iter):
        t = _cells(q)
        mass = stats.norm.cdf(t[1:]) - stats.norm.cdf(t[:-1])
        new = (stats.norm.pdf(t[:-1]) - stats.norm.pdf(t[1:])) / mass
        if np.max(np.abs(new - q)) <= tol:
            return new
        q = new
    raise RuntimeError(f"Lloyd-Max for N(0, 1) did not converge in {max_iter} steps "
                       f"({n} levels)")


def nearest_level(x, levels) -> np.ndarray:
    """Index (int64) of the nearest of the sorted ``levels`` to every x; a tie goes to the
    lower level.

    Used in: Pyramid (book/pyramid.ipynb), "Distortion on Gaussian vectors"."""
    x, levels = np.asarray(x, dtype=np.float64), np.asarray(levels, dtype=np.float64)
    if levels.size == 1:
        return np.zeros(x.shape, dtype=np.int64)
    i = np.clip(np.searchsorted(levels, x), 1, levels.size - 1)
    return np.where(np.abs(x - levels[i - 1]) <= np.abs(x - levels[i]), i - 1, i).astype(np.int64)


def gaussian_quantizer_mse(levels) -> float:
    """E[(X - Q(X))^2] for X ~ N(0, 1) and Q the nearest of the sorted ``levels``, exact:
    per cell (a, b], E[X^2; cell] - 2 q E[X; cell] + q^2 P(cell), with E[X; cell] =
    phi(a) - phi(b) and E[X^2; cell] = P(cell) + a phi(a) - b phi(b). For the Lloyd-Max
    levels of 1 bit this is 1 - 2/pi.

    Used in: Pyramid (book/pyramid.ipynb), "Distortion on Gaussian vectors"."""
    q = np.asarray(levels, dtype=np.float64)
    t = _cells(q)
    phi = stats.norm.pdf(t)
    mass = np.diff(stats.norm.cdf(t))
    first = phi[:-1] - phi[1:]
    tphi = np.zeros_like(t)                                   # t phi(t) -> 0 at +-inf
    tphi[1:-1] = t[1:-1] * phi[1:-1]
    second = mass + tphi[:-1] - tphi[1:]
    return float(np.sum(second - 2 * q * first + q ** 2 * mass))

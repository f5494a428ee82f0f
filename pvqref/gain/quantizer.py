"""The complete PVQ quantizer of a weight matrix: quantize, dequantize, and the shortcut.

Chapter: Gain quantization (book/gain.ipynb), section "The complete quantizer and its bits".
:func:`quantize` -> :class:`QuantizedMatrix` (what a file stores, see :mod:`pvqref.format`)
-> :func:`dequantize`; :func:`quantize_dequantize` gives the same reconstruction without
enumerating indices; :func:`normalised_gains` exposes the uncoded gains for measurements.

Every function takes ``backend`` ("auto", the default: torch for a tensor, numba
otherwise; or "reference", "numba", "torch", see :mod:`pvqref._tiers`) and runs the
functions of that tier (reference.py, _numba.py, _torch.py in this package).

Edge cases (documented, tested): a row of zeros has r_hat = 0 and decodes to exact zeros
(with log norms it gets code 0; a matrix of zeros stores lo = hi = 0). A zero group inside
a non-zero row has no direction: it is coded as the fixed point y = (K, 0, ..., 0) with
t = 0, i.e. the smallest gain level, so it decodes to r_hat * t_0 * e_1 (the nearest
reconstruction this format can give), and quantize() warns with the number of such groups
(they cannot arise after a random rotation unless the whole row is zero, but can in a
pruned, unrotated matrix). NaN/Inf, a row norm the norm format cannot hold and n not
divisible by L are ValueErrors. A tensor that requires grad is read detached: quantization
has no gradient.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from .. import _tiers, pyramid
from .. import format as _format
from ..format import FP16_NORMS
from .config import PVQConfig, check_matrix
from .norms import decode_row_norms

_PACKAGE = "pvqref.gain"


@dataclass(frozen=True)
class QuantizedMatrix:
    """A PVQ-quantized (m, n) matrix: what a file would store, as NumPy arrays.

    Groups are numbered row-major (group j of row i is number i * n/L + j).
    ``indices``: (groups, W) uint64 limbs of the pyramid indices (see pvqref.pyramid);
    ``gain_codes``: (groups,) uint16; ``row_norms``: (m,) float16 values (norm_bits = 16)
    or uint16 log-grid codes; ``norm_range``: (lo, hi) float32 for log-grid codes, empty
    for fp16 norms.

    Chapter: Gain quantization (book/gain.ipynb), "The complete quantizer and its bits".
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
        """Number of groups, m n / L."""
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
        """Every bit stored, per weight (equal to ``config.bits_per_weight(shape)``)."""
        return self.bit_counts()["total"] / (self.shape[0] * self.shape[1])

    def to_bytes(self) -> bytes:
        """The stream of :func:`pvqref.format.to_bytes` (its docstring gives the layout)."""
        return _format.to_bytes(self)

    def validate(self) -> None:
        """ValueError unless the arrays are consistent with the shape and config and hold
        values the format can (the index range is checked by the pyramid decoder)."""
        m, n = self.shape
        G = self.n_groups
        if (self.row_norms.shape != (m,) or self.gain_codes.shape != (G,)
                or len(self.indices) != G):
            raise ValueError(f"inconsistent QuantizedMatrix for shape {self.shape}: row_norms "
                             f"{self.row_norms.shape}, gain_codes {self.gain_codes.shape}, "
                             f"indices {self.indices.shape}")
        fp16 = self.config.norm_bits == FP16_NORMS
        if (self.row_norms.dtype != (np.float16 if fp16 else np.uint16)
                or self.norm_range.shape != ((0,) if fp16 else (2,))):
            raise ValueError(f"norm_bits={self.config.norm_bits} needs row_norms of dtype "
                             f"{'float16' if fp16 else 'uint16'} and a norm range of shape "
                             f"{'(0,)' if fp16 else '(2,)'}, got {self.row_norms.dtype} and "
                             f"{self.norm_range.shape}")
        self.decoded_row_norms()                      # checks values, range and codes
        if G and int(self.gain_codes.max()) >= 2 ** self.config.gain_bits:
            raise ValueError(f"gain codes must lie in 0..{2 ** self.config.gain_bits - 1}")


def from_bytes(data: bytes, shape, config: PVQConfig) -> QuantizedMatrix:
    """Inverse of :meth:`QuantizedMatrix.to_bytes`: :func:`pvqref.format.from_bytes`.

    Chapter: Gain quantization (book/gain.ipynb), "The complete quantizer and its bits"."""
    return _format.from_bytes(data, shape, config)


class _Encoded(NamedTuple):
    """What the encoder computes, in the tier's array kind (the norm range is NumPy)."""
    tier: str
    X: object                 # W as float64, (m, n)
    Y: object                 # pyramid points, (groups, L) int64
    codes: object             # gain codes, (groups,) int64
    stored: object            # row norms as stored: fp16 values or log-grid codes
    norm_range: np.ndarray
    r_hat: object             # decoded row norms, float64


def _per_group(r_hat, groups_per_row: int):
    """The row norm of every group's row (NumPy or tensor, like r_hat)."""
    if _tiers.is_torch(r_hat):
        return r_hat.repeat_interleave(groups_per_row)
    return np.repeat(np.asarray(r_hat, dtype=np.float64), groups_per_row)


def _encode(W, config: PVQConfig, backend: str) -> _Encoded:
    """Directions, gain codes and row norms of W on the tier ``backend`` resolves to."""
    tier = _tiers.resolve(backend, W)
    m, n = check_matrix(W, config.L)
    thresholds = config.codebook(n).thresholds
    _warn_zero_groups(W, config.L)
    t = _tiers.load(_PACKAGE, tier)
    X, r = t.matrix(W)
    stored, norm_range, r_hat = t.row_norms(r, config.norm_bits)
    Y, codes = t.groups(X.reshape(-1, config.L), _per_group(r_hat, n // config.L), config.K,
                        thresholds, config.gain_target == "ls")
    return _Encoded(tier, X, Y, codes, stored, norm_range, r_hat)


def _decode(tier: str, Y, codes, r_hat, config: PVQConfig, shape):
    """The (m, n) float64 reconstruction from points, gain codes and row norms."""
    m, n = shape
    rg = _per_group(r_hat, n // config.L)
    out = _tiers.load(_PACKAGE, tier).reconstruct(Y, codes, rg, config.codebook(n).levels)
    return out.reshape(m, n)


def _warn_zero_groups(W, L: int) -> None:
    """Warn with the number of all-zero groups in non-zero rows (NumPy or tensor W)."""
    G = W.reshape(W.shape[0], -1, L)
    zero_group, zero_row = ~(G != 0).any(2), ~(W != 0).any(1)
    count = int((zero_group & ~zero_row[:, None]).sum())
    if count:
        warnings.warn(f"{count} all-zero group(s) in non-zero rows: each is coded as the "
                      f"smallest gain level along the fixed direction (K, 0, ..., 0), so it "
                      f"does not decode to zero (see pvqref.gain)", stacklevel=4)


def quantize(W, config: PVQConfig, backend: str = "auto") -> QuantizedMatrix:
    """Quantize every group of W (NumPy array or torch tensor, shape (m, n)) with PVQ.

    Chapter: Gain quantization (book/gain.ipynb), "The complete quantizer and its bits"."""
    e = _encode(W, config, backend)
    limbs = _tiers.to_numpy(pyramid.encode_batch(e.Y, config.K, backend=e.tier))
    stored = _tiers.to_numpy(e.stored, np.float16)
    if config.norm_bits != FP16_NORMS:
        stored = stored.astype(np.uint16)
    return QuantizedMatrix(tuple(int(v) for v in W.shape), config, stored,
                           np.ascontiguousarray(limbs.view(np.uint64)),
                           np.asarray(_tiers.to_numpy(e.codes), dtype=np.uint16), e.norm_range)


def dequantize(Q: QuantizedMatrix, backend: str = "auto", device=None,
               index_backend: str | None = None):
    """Reconstruct the (m, n) matrix: float64 NumPy, or with backend="torch" a float64
    tensor on ``device`` (default CPU). ("auto" is numba here: Q holds NumPy arrays.)
    ``index_backend``: the tier that decodes the pyramid indices (integer work, the same
    points in every tier; default ``backend``), e.g. "numba" for a torch reconstruction on
    the CPU, where the Numba decoder is the faster.

    Chapter: Gain quantization (book/gain.ipynb), "The complete quantizer and its bits"."""
    tier = _tiers.resolve(backend)
    Q.validate()
    cfg = Q.config
    limbs, codes, r_hat = Q.indices, Q.gain_codes.astype(np.int64), Q.decoded_row_norms()
    index_backend = _tiers.resolve(index_backend or tier)
    if index_backend == "torch":
        limbs = _tiers.to_torch(limbs, device)
    Y = pyramid.decode_batch(limbs, cfg.L, cfg.K, backend=index_backend)
    if tier == "torch":
        Y, codes, r_hat = (_tiers.to_torch(a, device).to(device) for a in (Y, codes, r_hat))
    else:
        Y = _tiers.to_numpy(Y)
    return _decode(tier, Y, codes, r_hat, cfg, Q.shape)


def normalised_gains(W, config: PVQConfig, backend: str = "auto") -> np.ndarray:
    """The uncoded t of every group, shape (m, n/L): t = <w_g, y>/||y|| / r_hat ("ls") or
    ||w_g|| / r_hat ("norm"), with r_hat the coded row norm (:func:`coded_row_norms`) and y
    the pyramid point of the group (the gain codes of :func:`quantize` are
    ``config.codebook(n).encode(t)``). For the chapter's measurements; float64 NumPy out.

    Chapter: Gain quantization (book/gain.ipynb), "Which gain to code"."""
    m, n = check_matrix(W, config.L)
    wide = PVQConfig(config.L, config.K, 0, "quantile", config.gain_target, config.norm_bits)
    e = _encode(W, wide, backend)
    G = _tiers.to_numpy(e.X).reshape(m, -1, config.L)
    Yf = _tiers.to_numpy(e.Y).reshape(G.shape).astype(np.float64)
    if config.gain_target == "ls":
        g = np.sum(G * Yf, axis=2) / np.linalg.norm(Yf, axis=2)
    else:
        g = np.linalg.norm(G, axis=2)
    r = np.asarray(_tiers.to_numpy(e.r_hat), dtype=np.float64)[:, None]
    return np.divide(g, r, out=np.zeros_like(g), where=r > 0)


def quantize_dequantize(W, config: PVQConfig, backend: str = "auto"):
    """W -> its PVQ reconstruction, without enumerating indices (decode(encode(y)) = y, so
    this equals ``dequantize(quantize(W))``). Same type, dtype and device as W.

    Chapter: Gain quantization (book/gain.ipynb), "The complete quantizer and its bits"."""
    e = _encode(W, config, backend)
    out = _decode(e.tier, e.Y, e.codes, e.r_hat, config, tuple(W.shape))
    if _tiers.is_torch(W):
        return _tiers.like(out, W, W.dtype)
    return _tiers.to_numpy(out).astype(W.dtype, copy=False)

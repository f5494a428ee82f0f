"""Gain quantization under the Beta law, and the complete PVQ group quantizer.

Chapter: Gain quantization (book/gain.ipynb).

PVQ writes a weight group as ``w_g = gain * direction``: the pyramid codes the direction
(:mod:`pvqref.pyramid`), this package codes the gain and assembles the whole quantizer of a
weight matrix with exact bit accounting. Its modules, in reading order:

- ``laws``: :func:`share_law` (a group's share of its row's energy) and
  :func:`coordinate_law` (a squared coordinate of a unit vector), both Beta laws; gain
  codebooks on ``t = gain / row norm`` (:class:`GainCodebook`): Beta quantile levels
  :func:`quantile_levels`, Lloyd-Max levels :func:`lloyd_max_levels`, the uniform
  baseline :func:`uniform_levels`; :func:`gain_codebook` builds any of them.
- ``config``: :class:`PVQConfig` (L, K, gain bits, norm bits, ...), what is stored and its
  exact bit count.
- ``norms``: the side information, row norms stored as fp16 or as log-grid codes between a
  per-matrix min and max (:func:`norm_levels`, :func:`encode_row_norms`,
  :func:`coded_row_norms`, :func:`decode_row_norms`).
- ``reference``, ``_numba``, ``_torch``: the three tiers of the per-group work (directions
  and gain codes, reconstruction, row-norm codes), the same functions in each; every entry
  point takes ``backend=`` ("auto" by default, see :mod:`pvqref._tiers`).
- ``quantizer``: :func:`quantize` -> :class:`QuantizedMatrix` -> :func:`dequantize`, the
  shortcut :func:`quantize_dequantize` (same result without enumerating indices),
  :func:`normalised_gains`; the bytes are :mod:`pvqref.format`'s
  (:meth:`QuantizedMatrix.to_bytes`, :func:`from_bytes`).
- ``rate``: :func:`config_for_rate` and :func:`choose_config`, which picks (L, K, gain
  bits) for a target rate by measured distortion.

The baselines the chapter compares against (round-to-nearest, the Gaussian bound) are in
:mod:`pvqref.baselines`; :func:`relative_mse` is re-exported here because the chooser
reports it.

Reconstruction: the PVQ-for-LLMs paper quantizes the gain at the quantiles of a Beta law
but publishes no details. Everything here (what is stored, which law, the least-squares
gain, the Lloyd-Max alternative) is our reconstruction; the gain chapter measures it.
"""

from .._tiers import BACKENDS
from ..baselines import relative_mse
from .config import DEFAULT_NORM_BITS, GAIN_TARGETS, PVQConfig
from .laws import (GAIN_KINDS, GainCodebook, coordinate_law, gain_codebook, lloyd_max_levels,
                   quantile_levels, share_law, uniform_levels)
from .norms import coded_row_norms, decode_row_norms, encode_row_norms, norm_levels
from .quantizer import (QuantizedMatrix, dequantize, from_bytes, normalised_gains, quantize,
                        quantize_dequantize)
from .rate import DEFAULT_GROUP_SIZES, choose_config, config_for_rate

__all__ = [
    "BACKENDS", "GAIN_KINDS", "GAIN_TARGETS", "DEFAULT_NORM_BITS", "DEFAULT_GROUP_SIZES",
    "share_law", "coordinate_law", "quantile_levels", "uniform_levels", "lloyd_max_levels",
    "GainCodebook", "gain_codebook", "PVQConfig", "norm_levels", "coded_row_norms",
    "encode_row_norms",
    "decode_row_norms", "QuantizedMatrix", "quantize", "dequantize", "quantize_dequantize",
    "normalised_gains", "from_bytes", "config_for_rate", "choose_config", "relative_mse",
]

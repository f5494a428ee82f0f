"""Choosing (L, K, gain bits) for a target rate R (bits per weight, fractional allowed).

Chapter: Gain quantization (book/gain.ipynb), section "Choosing L, K and the gain bits for
a rate".

For each group size L dividing n and each gain bit count b, the largest K with

    (bits(L, K) + b) / L + norm_bits / n + matrix_bits / (m n) <= R

(m = the fewest rows of the matrices the choice is for); then measure the relative MSE
||W - W_hat||_F^2 / ||W||_F^2 on a sample matrix and keep the best. The pyramid is cheap to
evaluate, so we measure rather than model. Nothing here draws random numbers: the choice
depends on the sample W only.
"""

from __future__ import annotations

import math
from fractions import Fraction

from .. import _checks, pyramid
from ..baselines import relative_mse
from ..format import check_shape
from .config import PVQConfig, check_group_size
from .quantizer import quantize_dequantize

DEFAULT_GROUP_SIZES = (16, 32, 48, 64, 96, 128, 144, 192, 256, 288, 384)


def config_for_rate(L: int, shape, bpw: float, gain_bits: int, **kw) -> PVQConfig | None:
    """The config with the most pulses K whose bits per weight for a matrix of ``shape``
    = (m, n) do not exceed ``bpw`` (nor for any matrix with more rows, since the per-matrix
    bits only shrink): index budget floor(L (bpw - norm_bits/n - matrix_bits/(m n)))
    - gain_bits bits. ``kw`` are further PVQConfig fields (norm_bits, gain_kind, ...).
    None if not even K = 1 fits.

    Chapter: Gain quantization (book/gain.ipynb), "Choosing L, K and the gain bits"."""
    m, n = check_shape(shape)
    side = PVQConfig(L, 1, gain_bits, **kw)
    check_group_size(L, n)
    bpw = _checks.real(bpw, "bpw", positive=True)
    # Exact rational arithmetic: (bits(L,K) + gain_bits) * mn/L + m norm_bits + matrix_bits
    # <= bpw * m n  <=>  bits(L,K) <= L (bpw - norm_bits/n - matrix_bits/(mn)) - gain_bits.
    budget = math.floor(L * (Fraction(bpw) - Fraction(side.norm_bits, n)
                             - Fraction(side.matrix_bits, m * n))) - gain_bits
    if budget < 1:
        return None
    K = pyramid.k_for_rate(L, budget / L)
    return PVQConfig(L, K, gain_bits, **kw) if K >= 1 else None


def choose_config(W, target_bpw: float, group_sizes=DEFAULT_GROUP_SIZES,
                  gain_bits=(1, 2, 3, 4), backend: str = "auto", rows: int | None = None,
                  **kw):
    """Best PVQConfig for ``target_bpw`` on the sample W, and the table of every candidate
    (dicts with L, K, gain_bits, bpw, rel_mse), best first. ``rows``: the fewest rows of
    the matrices the choice will be applied to (default: W's); the per-matrix bits are
    counted for that many rows, so every such matrix stays within the target. ``kw``:
    further PVQConfig fields (norm_bits, gain_kind, ...). Deterministic: no random draws.

    Chapter: Gain quantization (book/gain.ipynb), "Choosing L, K and the gain bits"."""
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

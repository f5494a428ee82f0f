"""WCSG on PVQ: a layer's output channels sorted into groups that share a rate, each
group a PVQ matrix of its own with its own pulses K.

PVQ's rate is set per group of L weights by K alone (bits(L, K) = ceil(log2 N(L, K))),
so a channel-wise allocation maps onto it without a new codebook. For a layer (m, n) at a
budget of ``bpw`` bits per weight:

1. budget = floor(bpw m n) bits for the whole layer, side data included, less each row's
   group label (ceil(log2 G) bits per row, what the packed model stores to say which
   rows a group holds);
2. the channels' real-valued allocation from their sensitivities I_c
   (:mod:`pvqref.rsavq.allocation`, the paper's rule or the Lagrange rule), rounded to whole
   bits that sum to the budget exactly, and the channels split into G groups by
   decreasing I_c; a group's budget is the sum of its channels' bits;
3. each group, least sensitive first, takes the PVQConfig with the most pulses whose
   every stored bit (:meth:`pvqref.gain.PVQConfig.bits` for its rows: indices, gains,
   row norms, its own norm range) fits its budget plus what the groups before it left
   unused; the last group (the most sensitive) gets everything left over.

So the layer never stores more than its budget; what PVQ's discrete K cannot spend is
reported (``unused_bits``, under one K step of the most sensitive group). With G = 1 and
the same budget this is plain PVQ's config (a test checks it). Each group is then quantized
by PVQ-H on its own rows against the layer's H: rows are independent in the proxy loss
and in the block-LDL feedback, so this is the same problem split by rows.

Chapter: RSAVQ's natural-gradient error projection (book/rsavq.ipynb).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import _checks
from . import allocation


@dataclass(frozen=True)
class RowGroupPlan:
    """The row groups of one layer: ``rows`` (index arrays, most sensitive first) and
    their formats (PVQConfigs, or VQ stages' index bits), the layer's ``budget_bits`` and
    the ``used_bits`` they store."""
    rows: tuple
    configs: tuple
    budget_bits: int
    used_bits: int

    @property
    def unused_bits(self) -> int:
        return self.budget_bits - self.used_bits

    def bits_per_weight(self, shape) -> float:
        m, n = shape
        return self.used_bits / (m * n)


def _best_config(method, L, rows, n, bits, gain_bits):
    """The format with the most bits that fit ``bits`` for (rows, n) and its bit count: a
    PVQConfig (the most pulses) or, for "vq", the stages' index bits; (None, 0) if none."""
    from .. import gain, vq
    bpw = bits / (rows * n)
    if bpw <= 0:
        return None, 0
    if method == "vq":
        try:
            ks = vq.plan_stages((rows, n), bpw)
        except ValueError:
            return None, 0
        return ks, vq.stage_bits((rows, n), ks)
    cfg = gain.config_for_rate(L, (rows, n), bpw, gain_bits)
    return cfg, (0 if cfg is None else cfg.bits((rows, n)))


def plan_row_groups(shape, bpw: float, sensitivity, L: int, gain_bits: int,
                    groups: int = allocation.DEFAULT_GROUPS,
                    rule: str = "lagrange", method: str = "pvq") -> RowGroupPlan:
    """The :class:`RowGroupPlan` of a layer of ``shape`` (m, n) at ``bpw`` bits per weight
    from its channel ``sensitivity`` (m,) (see the module docstring). ``method`` "vq":
    each group is instead a VQ matrix of its own stages (:mod:`pvqref.vq`), groups of a
    multiple of the vector length. ValueError if a group's budget cannot hold even K = 1
    (or a 1-bit codebook)."""
    from .. import vq
    method = _checks.choice(method, "method", ("pvq", "vq"))
    m, n = (int(v) for v in shape)
    bpw = _checks.real(bpw, "bpw", positive=True)
    I = np.asarray(sensitivity, dtype=np.float64)
    if I.shape != (m,):
        raise ValueError(f"need one sensitivity per output channel ({m}), got shape {I.shape}")
    budget = math.floor(bpw * m * n)
    parts = allocation.sensitivity_groups(I, groups, vq.VECTOR if method == "vq" else 1)
    labels = m * int(len(parts) - 1).bit_length()
    b = allocation.allocate(I, bpw, rule)
    channel_bits = allocation.round_to_budget(b * n, budget - labels)   # bits per channel
    group_budget = allocation.group_bits(channel_bits, parts)
    configs, carry, spent = [None] * len(parts), 0, 0
    for g in reversed(range(len(parts))):                          # least sensitive first
        rows = len(parts[g])
        cfg, bits = _best_config(method, L, rows, n, int(group_budget[g]) + carry, gain_bits)
        if cfg is None:
            raise ValueError(f"group {g} ({rows} channels) gets {group_budget[g] + carry} "
                             f"bits, too few for its smallest format: lower the number of "
                             f"groups or raise the rate")
        if bits > int(group_budget[g]) + carry:       # never: both choosers floor the rate
            raise RuntimeError(f"group {g}'s format overspends its budget")
        carry += int(group_budget[g]) - bits
        configs[g], spent = cfg, spent + bits
    used = labels + spent
    return RowGroupPlan(tuple(parts), tuple(configs), budget, used)

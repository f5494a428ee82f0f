"""WCSG's channel bit allocation: bits per output channel from its sensitivity I_c.

The distortion model: channel c quantized at b_c bits per weight costs D_c = I_c 2^{-2 b_c}
(high-rate theory: each bit quarters the squared error, weighted by how much the loss
cares). Given a budget of B bits per weight on average over C channels (sum b_c = C B):

- the paper's rule (RSAVQ, as implemented there): b_c = C B log2 I_c / sum log2 I_c',
  bits proportional to log-sensitivity (a channel with I_c = 1, the floor, gets none);
- the exact Lagrange rule: minimising sum I_c 2^{-2 b_c} under sum b_c = C B gives
  b_c = B + 1/2 log2(I_c / geomean I) (reverse water-filling: channels whose b_c would be
  negative get 0 and the rest are solved again), which equalises the marginal distortion
  I_c 2^{-2 b_c} over the channels that get bits.

Both are real-valued; :func:`round_to_budget` makes integers in units of ``step`` bits
per weight that sum to the budget exactly (largest remainders). :func:`sensitivity_groups`
then sorts the channels by I_c and splits them into G groups (4, as RSAVQ) that share one
rate, the mean of their channels' allocations: the bits of a group are the sum of its
channels', so the total is still the budget, exactly.

Plain NumPy, one tier: a sort and a few vector operations per layer.

Chapter: RSAVQ's natural-gradient error projection (book/rsavq.ipynb).
"""

from __future__ import annotations

import numpy as np

from .. import _checks

RULES = ("paper", "lagrange")
DEFAULT_GROUPS = 4


def _sensitivities(I) -> np.ndarray:
    I = np.asarray(I, dtype=np.float64)
    if I.ndim != 1 or I.size == 0:
        raise ValueError(f"sensitivities must be a non-empty vector, got shape {I.shape}")
    if not np.all(np.isfinite(I)):
        raise ValueError("sensitivities are not finite (NaN or Inf): check the gradients")
    if I.min() < 1:
        raise ValueError(f"sensitivities must be >= 1 (I_c = 1/2 g F^-1 g + 1), got min "
                         f"{I.min():.3g}")
    return I


def paper_rule(I, bpw: float) -> np.ndarray:
    """b_c = C bpw log2 I_c / sum log2 I_c' (C channels; real-valued, sums to C bpw).
    Where every I_c is 1 (no gradient signal) the rule is 0/0: ValueError."""
    I = _sensitivities(I)
    bpw = _checks.real(bpw, "bpw", minimum=0.0)
    logs = np.log2(I)
    if not logs.sum() > 0:
        raise ValueError("the paper's rule is undefined when every sensitivity is 1 (sum of "
                         "log2 I_c = 0): use rule='lagrange'")
    return I.size * bpw * logs / logs.sum()


def lagrange_rule(I, bpw: float) -> np.ndarray:
    """The b_c >= 0 minimising sum I_c 2^{-2 b_c} under sum b_c = C bpw (real-valued):
    b_c = bpw' + 1/2 log2(I_c / geomean over the active channels), the channels that would
    go negative set to 0 and the others solved again (at most C rounds)."""
    I = _sensitivities(I)
    bpw = _checks.real(bpw, "bpw", minimum=0.0)
    total, active = I.size * bpw, np.ones(I.size, bool)
    b = np.zeros(I.size)
    for _ in range(I.size):
        logs = 0.5 * np.log2(I[active])
        b[:] = 0
        b[active] = total / active.sum() + logs - logs.mean()
        if b.min() >= 0:
            return b
        active &= b > 0
    return b


def allocate(I, bpw: float, rule: str = "lagrange") -> np.ndarray:
    """Real-valued bits per weight per channel by ``rule`` ("paper" or "lagrange")."""
    rule = _checks.choice(rule, "rule", RULES)
    return paper_rule(I, bpw) if rule == "paper" else lagrange_rule(I, bpw)


def round_to_budget(b, total_units: int, maximum: int | None = None) -> np.ndarray:
    """Integers n_c >= 0 (each <= ``maximum`` if given) with sum n_c = ``total_units``
    exactly, nearest to the real allocation ``b`` scaled to that total: floors, then one
    more unit to the largest remainders (ties to the lower index). ValueError if the
    budget cannot be met within the bounds."""
    b = np.asarray(b, dtype=np.float64)
    total_units = _checks.integer(total_units, "total_units", 0)
    if maximum is not None and total_units > maximum * b.size:
        raise ValueError(f"a budget of {total_units} units cannot be met by {b.size} "
                         f"channels of at most {maximum} units each")
    if b.min() < 0 or not np.all(np.isfinite(b)):
        raise ValueError("the allocation must be finite and non-negative")
    x = b * (total_units / b.sum()) if b.sum() > 0 else np.full(b.size, total_units / b.size)
    if maximum is not None:
        x = _cap(x, maximum, total_units)
    n = np.floor(x + 1e-12).astype(np.int64)
    rest = total_units - int(n.sum())
    order = np.lexsort((np.arange(b.size), -(x - n)))
    if maximum is not None:
        order = order[n[order] < maximum]
    n[order[:rest]] += 1
    return n


def _cap(x, maximum, total):
    """x with every entry <= maximum, the excess spread over the others in proportion."""
    for _ in range(x.size):
        over = x > maximum
        if not over.any():
            break
        free = ~over & (x < maximum)
        x = np.where(over, maximum, x)
        excess = total - x.sum()
        x[free] += excess * x[free] / x[free].sum() if x[free].sum() > 0 else excess / free.sum()
    return x


def sensitivity_groups(I, groups: int = DEFAULT_GROUPS, multiple: int = 1) -> list:
    """The channels sorted by decreasing I_c and split into ``groups`` runs of (nearly)
    equal size, each a multiple of ``multiple`` channels (VQ's vector length): a list of
    index arrays, the most sensitive group first. ValueError if there are fewer units of
    ``multiple`` channels than groups."""
    I = _sensitivities(I)
    groups = _checks.integer(groups, "groups", 1)
    multiple = _checks.integer(multiple, "multiple", 1)
    if I.size % multiple or groups > I.size // multiple:
        raise ValueError(f"cannot split {I.size} channels into {groups} groups of a multiple "
                         f"of {multiple}")
    order = np.argsort(-I, kind="stable")
    sizes = [len(u) * multiple for u in np.array_split(np.arange(I.size // multiple), groups)]
    return [np.sort(part) for part in np.split(order, np.cumsum(sizes)[:-1])]


def group_bits(b, groups: list) -> np.ndarray:
    """The bits of each group: the sum of its channels' allocation (so that the groups'
    total is the channels' total)."""
    b = np.asarray(b)
    return np.array([b[g].sum() for g in groups])


def model_distortion(I, b) -> float:
    """sum_c I_c 2^{-2 b_c}: the distortion model both rules minimise (the Lagrange rule
    exactly)."""
    I, b = _sensitivities(I), np.asarray(b, dtype=np.float64)
    return float(np.sum(I * 2.0 ** (-2 * b)))

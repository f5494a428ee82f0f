"""RSAVQ on a whole model: the Fisher of every layer, then the sequential quantizer with
EDSG's targets and WCSG's row groups.

:func:`quantize_model` is :func:`pvqref.pipeline.quantize_model` (same calibration, same
rotations, same packed codes) with two inputs computed first from one backward pass per
calibration window on the unquantized model (:func:`pvqref.rsavq.fisher.layer_fishers`):

- EDSG: every layer coded as W - lam N (``shifts``), N = F^{-1} g scaled by ``step``;
- WCSG: every layer's output channels in ``groups`` row groups by sensitivity, each its
  own PVQ rate (``sensitivities``; PVQ methods only).

``RSAVQ(edsg=False, wcsg=False)`` is the base method bit for bit. Unlike the block-by-block
streamed quantizer this needs the whole model in memory: the gradients of block b depend
on every block after it.

Chapter: RSAVQ's natural-gradient error projection (book/rsavq.ipynb).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .. import _checks
from . import DEFAULT_DAMP, DEFAULT_LAMBDA, STEPS, edsg_shifts
from .allocation import DEFAULT_GROUPS, RULES


@dataclass(frozen=True)
class RSAVQ:
    """RSAVQ's settings: EDSG on/off with its step ``lam`` (``step`` "relative" or
    "raw"), WCSG on/off with its ``rule`` and number of ``groups``, and the Fisher
    (``kind`` "kronecker" or "diagonal", damped by ``damp``)."""
    edsg: bool = True
    lam: float = DEFAULT_LAMBDA
    step: str = "relative"
    wcsg: bool = True
    rule: str = "lagrange"
    groups: int = DEFAULT_GROUPS
    kind: str = "kronecker"
    damp: float = DEFAULT_DAMP

    def __post_init__(self):
        _checks.real(self.lam, "lam")
        _checks.choice(self.step, "step", STEPS)
        _checks.choice(self.rule, "rule", RULES)
        _checks.integer(self.groups, "groups", 1)
        _checks.choice(self.kind, "kind", ("kronecker", "diagonal"))
        _checks.real(self.damp, "damp", minimum=0.0)

    def to_dict(self) -> dict:
        return asdict(self)


def inputs(model, windows, settings: RSAVQ, progress=None) -> tuple[dict, dict]:
    """(shifts, sensitivities) for :func:`pvqref.pipeline.quantize_model` from the Fisher
    of every decoder-block linear layer of ``model`` on ``windows``; empty dicts for what
    ``settings`` switches off (nothing is computed when both are off)."""
    if not (settings.edsg or settings.wcsg):
        return {}, {}
    from . import fisher
    fishers = fisher.layer_fishers(model, windows, kind=settings.kind, damp=settings.damp,
                                   progress=progress)
    weights = {n: model.get_submodule(n).weight.detach() for n in fishers}
    shifts = edsg_shifts(fishers, weights, settings.lam, settings.step) if settings.edsg \
        else {}
    sens = {n: f.fisher.sensitivity(f.gradient) for n, f in fishers.items()} \
        if settings.wcsg else {}
    return shifts, sens


def quantize_model(model, method: str, bpw: float, calibration_windows, settings=RSAVQ(),
                   fisher_progress=None, **options):
    """RSAVQ on top of ``method`` (one of ``pvqref.pipeline.METHODS``; WCSG needs a
    PVQ one): ``(quantized model, reports)`` as :func:`pvqref.pipeline.quantize_model`,
    to which ``options`` go (seed, L, rotation, inplace, keep_codes, ...)."""
    from .. import pipeline
    if not isinstance(settings, RSAVQ):
        raise TypeError(f"settings must be a pvqref.rsavq.quantize.RSAVQ, got "
                        f"{type(settings).__name__}")
    if calibration_windows is None:
        raise ValueError("RSAVQ needs calibration windows (its Fisher comes from gradients "
                         "on them)")
    shifts, sens = inputs(model, calibration_windows, settings, fisher_progress)
    return pipeline.quantize_model(model, method, bpw, calibration_windows, shifts=shifts,
                                   sensitivities=sens, wcsg_groups=settings.groups,
                                   wcsg_rule=settings.rule, **options)

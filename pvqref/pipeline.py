"""The whole-model sequential quantizer: every linear layer of every decoder block.

:func:`quantize_model` walks a LLaMA model block by block in GPTQ's sequential order
(:mod:`pvqref.hessian.calibration`): the calibration windows enter block b through the
already-quantized blocks 0..b-1; inside the block, one distinct input at a time
(attention input -> q, k, v; attention output -> o; MLP input -> gate, up; MLP hidden ->
down), its second moment H is collected with the layers before it already quantized, and
the layers reading it are quantized against it. The weights are replaced by their
reconstructions (simulated quantization: the same function a packed model computes).

Each layer goes through three plain stages, so that packing, reloading and a CLI can be
added later without touching this loop:

    plan    = layer_plan(method, bpw, shape, ...)     what to store (LayerPlan, a dataclass)
    result  = quantize_layer(W, H, plan)              the reconstruction and what it codes
    report  = LayerReport(...)                        bits as stored, proxy loss, seconds

Methods: ``rtn`` (``pvqref.baselines`` min-max RTN, groups of ``group`` consecutive
weights), ``gptq`` (act-order, static groups of ``group`` input columns), ``pvq`` (PVQ
groups of ``L`` input columns, each on its own: ``pvqref.gain``'s quantizer),
``pvq-fb`` (the same with block-LDL error feedback), ``pvq-h`` (feedback and the Hessian
metric search), ``vq`` (k-means vector quantization of 6-weight column vectors with GPTQ
feedback, the base of the faithful RSAVQ: :mod:`pvqref.vq`; codebooks counted). Scalar
methods use bits = bpw - 32/group (3.25 -> 3-bit, group 128); PVQ
methods the most pulses that fit ``bpw`` for the layer's shape with ``gain_bits`` gain
bits (:func:`pvqref.gain.config_for_rate`).

Rotation. ``rotation="input"`` (the default) quantizes every layer in the coordinates of a
randomized Hadamard rotation R of its input (W R^T against R H R^T) and rotates back: the
function of an online input transform, folded into the weight. Measured (proxy loss on
SmolLM2, 3.25 bpw): the down_proj inputs of blocks 11 and 28 carry "massive activations"
(one channel with E[x^2] ~ 1e4 against a median ~0.02-0.5), and unrotated PVQ cannot code
that channel's weights finely enough (nothing can feed its error back: the channel is
uncorrelated with the rest): PVQ-H 4.4e4 and 1.8e5 unrotated against 20 and 202 rotated,
GPTQ 160 and 3368 (37 and 497 rotated). Rotation spreads the channel over every
coordinate, where feedback can compensate it. ``rotation="residual"`` (QuaRot-style, two
online transforms per block instead of four) was measured against it on the whole model
at 3.25 bpw (``benchmarks/results/hessian_models.json``): perplexity 17.64 against 17.31
for PVQ-H, 25.28 against 23.69 for GPTQ (no rotation: 25.05 and 36.39).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from . import _checks, baselines, gain, hessian, quantized
from .hessian import calibration

METHODS = ("rtn", "gptq", "pvq", "pvq-fb", "pvq-h", "vq")
HESSIAN_METHODS = ("gptq", "pvq-fb", "pvq-h", "vq")   # those that read H; rtn, pvq data-free
ROTATIONS = (None, "input", "residual")
RESIDUAL_SEED = 10_000   # offset of the residual rotation's seed from ``seed``
DEFAULT_L = 64          # PVQ group size: with 3 gain bits the best PVQ-H cell of the chapter
DEFAULT_GAIN_BITS = 3


@dataclass(frozen=True)
class LayerPlan:
    """What one layer stores: the method and its format (scalar bits and group; in ``pvq``
    a PVQConfig, VQ's stage index bits, or RSAVQ's :class:`pvqref.rsavq.wcsg.RowGroupPlan`),
    and the rotation seed (None: no rotation)."""
    method: str
    bits: int | None
    group: int | None
    pvq: object | None
    rotation_seed: int | None

    def bits_per_weight(self, shape) -> float:
        """Bits stored per weight for a weight of ``shape`` (out, in), everything counted."""
        m, n = shape
        if self.method == "rtn":
            return baselines.rtn_bits_per_weight(self.bits, self.group)
        if self.method == "gptq":
            return hessian.gptq_bits_per_weight(self.bits, self.group, n)
        if self.method == "vq" and isinstance(self.pvq, tuple):
            from . import vq
            return vq.stage_bits((m, n), self.pvq) / (m * n)
        return self.pvq.bits_per_weight((m, n))


@dataclass(frozen=True)
class LayerReport:
    """One row of the report of :func:`quantize_model` (``proxy_loss`` None where no H
    was collected: a data-free method without ``measure_loss``); ``plan`` is the layer's
    LayerPlan, ``codes`` what it stores (kept with ``keep_codes``, for
    :func:`pvqref.packed.save`)."""
    name: str
    method: str
    shape: tuple
    bits_per_weight: float
    proxy_loss: float | None
    seconds: float
    plan: LayerPlan | None = field(default=None, repr=False, compare=False)
    codes: object = field(default=None, repr=False, compare=False)


def layer_plan(method: str, bpw: float, shape, group: int = 128, L: int = DEFAULT_L,
               gain_bits: int = DEFAULT_GAIN_BITS, rotation_seed: int | None = None):
    """The LayerPlan of ``method`` at ``bpw`` bits per weight for a weight of ``shape``.
    Chapter: Hessian-aware PVQ (book/hessian.ipynb)."""
    method = _checks.choice(method, "method", METHODS)
    bpw = _checks.real(bpw, "bpw", positive=True)
    if method in ("rtn", "gptq"):
        bits = round(bpw - 32 / group)
        if bits < 1:
            raise ValueError(f"bpw={bpw} leaves no code bits with group {group}")
        return LayerPlan(method, bits, group, None, rotation_seed)
    if method == "vq":                   # pvq holds the stages' index bits
        from . import vq
        return LayerPlan(method, None, None, vq.plan_stages(tuple(shape), bpw), rotation_seed)
    cfg = gain.config_for_rate(L, tuple(shape), bpw, gain_bits)
    if cfg is None:
        raise ValueError(f"no PVQ configuration with L={L} and {gain_bits} gain bits fits "
                         f"{bpw} bits per weight for shape {tuple(shape)}")
    return LayerPlan(method, None, None, cfg, rotation_seed)


def rotation_of(plan: LayerPlan, n: int):
    """The input rotation of a plan for n input columns (None without one)."""
    if plan.rotation_seed is None:
        return None
    from . import coherence
    return coherence.RandomizedHadamard(n, plan.rotation_seed)


def rotate_problem(W: torch.Tensor, H: torch.Tensor | None, R):
    """(W R^T, R H R^T): a layer and its Hessian in the coordinates of an input rotation R
    (the proxy loss is the same in both); H None stays None.
    Chapter: Hessian-aware PVQ (book/hessian.ipynb)."""
    from . import coherence
    H = None if H is None else coherence.rotate_weight(H, R_in=R, R_out=R, backend="torch")
    return coherence.rotate_weight(W, R_in=R, backend="torch"), H


def fold_rotation(Q: torch.Tensor, R) -> torch.Tensor:
    """Q' R: a weight coded in the coordinates of the input rotation R back in the input's
    own coordinates (Q' itself when R is None). Chapter: Hessian-aware PVQ
    (book/hessian.ipynb)."""
    return Q if R is None else R.inverse(Q, axis=1, backend="torch")


def encode_layer(W: torch.Tensor, H: torch.Tensor | None, plan: LayerPlan,
                 name: str = "layer"):
    """``(codes, R)``: what W (out, in) stores under ``plan`` against H -- a
    :class:`pvqref.gain.QuantizedMatrix` or a :class:`pvqref.codes.ScalarCodes` of
    W R^T, coded against R H R^T -- and the input rotation R (None: no rotation, the codes
    are of W itself). H: float64 (in, in), None for the data-free rtn and pvq.
    Chapter: Quantizing a real LLaMA model (book/llama.ipynb)."""
    from . import codes
    if H is None and plan.method in HESSIAN_METHODS:
        raise ValueError(f"method {plan.method!r} needs the Hessian of {name}")
    R = rotation_of(plan, W.shape[1])
    if R is not None:
        W, H = rotate_problem(W, H, R)
    if plan.method == "rtn":
        q, scale, zero = baselines.rtn_codes(W, plan.bits, plan.group)
        c = codes.ScalarCodes(tuple(W.shape), plan.bits, plan.group, "flat", q,
                              scale.astype(np.float16), zero.astype(np.float16))
    elif plan.method == "gptq":
        c = codes.scalar_codes(*hessian.gptq_quantize(W, H, plan.bits, plan.group,
                                                      act_order=True, name=name,
                                                      return_grid=True),
                               plan.bits, plan.group, "row")
    elif isinstance(plan.pvq, (gain.PVQConfig, tuple)):       # one format: PVQ or VQ stages
        c = _pvq_encode(W, H, plan.pvq, plan.method, name)
    else:                                           # RSAVQ's WCSG: a RowGroupPlan
        parts = [_pvq_encode(W[torch.as_tensor(rows, device=W.device)], H, cfg, plan.method,
                             f"{name} (row group {g})")
                 for g, (rows, cfg) in enumerate(zip(plan.pvq.rows, plan.pvq.configs))]
        c = codes.RowGroupCodes(tuple(W.shape), plan.pvq.rows, tuple(parts))
    return c, R


def _pvq_encode(W, H, cfg, method: str, name: str):
    """The codes of W under one format: a QuantizedMatrix for a PVQConfig by a PVQ
    ``method``, VQCodes for "vq" (``cfg`` its stages' index bits)."""
    from . import codes
    if method == "vq":
        from .vq import quantizer
        backend = "numba" if W.device.type == "cpu" else "torch"     # on a GPU: stay there
        return quantizer.vq_quantize(W, H, 0, name=name, index_bits=cfg, backend=backend)[1]
    if method == "pvq":
        return gain.quantize(W.cpu().numpy(), cfg)
    return codes.pvq_codes(hessian.pvq_quantize(
        W, H, cfg, feedback=True, name=name,
        search="hessian" if method == "pvq-h" else "euclidean"))


def quantize_layer_rotated(W: torch.Tensor, H: torch.Tensor | None, plan: LayerPlan,
                           name: str = "layer"):
    """``(Q', R)``: the reconstruction Q' of W R^T (out, in) under ``plan`` against
    R H R^T, in the rotated coordinates where it is coded (decoded from
    :func:`encode_layer`'s codes by :func:`pvqref.codes.dequantize`, float64 on W's
    device), and the input rotation R (None: no rotation, Q' is in W's own coordinates).
    Chapter: Hessian-aware PVQ (book/hessian.ipynb)."""
    from . import codes
    c, R = encode_layer(W, H, plan, name)
    return codes.dequantize(c, W.device), R


def quantize_layer(W: torch.Tensor, H: torch.Tensor | None, plan: LayerPlan,
                   name: str = "layer"):
    """The reconstruction of W (out, in) under ``plan`` against H, in W's original
    coordinates: :func:`quantize_layer_rotated` with the rotation folded back (Q = Q' R).
    Chapter: Hessian-aware PVQ (book/hessian.ipynb)."""
    return fold_rotation(*quantize_layer_rotated(W, H, plan, name))


def _quantize_readers(layer, prefix, H, readers, plan_of, reports, fold: bool,
                      keep_codes: bool, shifts=None):
    """Quantize every linear layer in ``readers`` against their shared H: the weight
    replaced in place (``fold``) or the layer by a QuantizedLinear in rotated coordinates,
    the readers sharing one SharedInputRotation. ``shifts``: {layer name: D}, the layer
    coded as W + D (EDSG's target), its proxy loss still measured against W."""
    from . import codes
    shared = None
    for path in readers:
        linear = calibration.module(layer, path)
        W = linear.weight.detach().to(torch.float64)
        name = f"{prefix}.{path}"
        plan = plan_of(tuple(W.shape), name)
        start = time.perf_counter()
        target = W if not shifts or name not in shifts else W + torch.as_tensor(
            shifts[name], dtype=torch.float64, device=W.device)
        c, R = encode_layer(target, H, plan, name)
        Q_rot = codes.dequantize(c, W.device)
        Q = fold_rotation(Q_rot, R)
        seconds = time.perf_counter() - start
        loss = None if H is None else hessian.proxy_loss(W, Q, H)
        reports.append(LayerReport(name, plan.method, tuple(W.shape),
                                   plan.bits_per_weight(tuple(W.shape)), loss, seconds,
                                   plan, c if keep_codes else None))
        if fold or R is None:
            with torch.no_grad():
                linear.weight.copy_(Q.to(linear.weight.dtype))
            continue
        shared = shared or quantized.SharedInputRotation(R)
        bias = None if linear.bias is None else linear.bias.detach().clone()
        new = quantized.QuantizedLinear(Q_rot.to(linear.weight.dtype), bias, shared)
        parent, _, leaf = path.rpartition(".")
        setattr(calibration.module(layer, parent), leaf, new)


def quantize_model(model, method: str, bpw: float, calibration_windows: torch.Tensor | None,
                   seed: int = 0, group: int = 128, L: int = DEFAULT_L,
                   gain_bits: int = DEFAULT_GAIN_BITS, rotation: str | None = "input",
                   measure_loss: bool = False, fold_rotations: bool = True,
                   inplace: bool = False, progress=None, keep_codes: bool = False,
                   shifts: dict | None = None, sensitivities: dict | None = None,
                   wcsg_groups: int = 4, wcsg_rule: str = "lagrange", activations=None):
    """Quantize every linear layer of every decoder block of a LLaMA ``model`` with
    ``method`` (one of ``METHODS``) at ``bpw`` bits per weight, calibrating on
    ``calibration_windows`` (n, T) token ids
    (:func:`pvqref.hessian.calibration.calibration_windows`).
    ``rotation``: "input" (default, chosen by measurement: see the module docstring),
    "residual" (QuaRot-style: the residual stream rotated once by
    :func:`pvqref.coherence.rotate_llama_model` with seed ``seed`` + RESIDUAL_SEED, norm
    weights folded, embeddings and head rotated; o_proj's and down_proj's inputs, outside
    the residual stream, rotated on their input side) or None. Returns
    ``(quantized model, report)``: a copy unless ``inplace``, and one LayerReport per layer
    in model order. ``seed`` seeds the rotations: one per distinct
    input, input i (0..3, ``calibration.LLAMA_INPUTS``) of block b gets seed + 100 b + i,
    shared by the layers reading it; the rest is deterministic. ``progress(block, reports)``
    is called after each block. The data-free methods (rtn, pvq) run no calibration at all
    (``calibration_windows`` may be None) unless ``measure_loss``, which collects every H
    to report their proxy losses. ``fold_rotations=False`` keeps every rotated layer as a
    :class:`pvqref.quantized.QuantizedLinear` (the weight as coded, in rotated coordinates,
    and an online input rotation computed once per input for all its readers) instead of
    folding R back into a dense weight; same function up to float rounding.
    ``keep_codes`` keeps each layer's codes in its LayerReport, for
    :func:`pvqref.packed.save`. ``shifts`` {layer name: D (out, in)}: code W + D instead
    of W (RSAVQ's EDSG target, :func:`pvqref.rsavq.edsg_shifts`; in the layer's own
    coordinates, rotated with it). ``sensitivities`` {layer name: I (out,)}: RSAVQ's WCSG
    for the PVQ methods, each layer's output channels in ``wcsg_groups`` row groups of
    their own rate by ``wcsg_rule`` (:func:`pvqref.rsavq.wcsg.plan_row_groups`), within
    the layer's budget of ``bpw``. Every weight is set from
    :func:`pvqref.codes.dequantize` of its codes, so a packed and reloaded model has the
    same weights bit for bit. ``activations``: also quantize the input of every linear
    layer of the returned model, with an :class:`pvqref.activations.ActivationConfig` as
    given, or a dict of :func:`pvqref.activations.calibrate` arguments (``bits``,
    ``method``, ...) whose PVQ groups are chosen on the quantized model's own inputs on
    ``calibration_windows`` (the Hessians are those of unquantized activations);
    :func:`pvqref.packed.save` records it. Chapter: Hessian-aware PVQ (book/hessian.ipynb).
    """
    _checks.choice(method, "method", METHODS)
    needs_h = method in HESSIAN_METHODS or bool(measure_loss)
    if needs_h and calibration_windows is None:
        raise ValueError(f"method {method!r} (or measure_loss) needs calibration windows")
    if rotation is not None:
        _checks.choice(rotation, "rotation", ROTATIONS[1:])
    seed = _checks.integer(seed, "seed", 0)
    if sensitivities and method in ("rtn", "gptq"):
        raise ValueError(f"WCSG's row groups (sensitivities=) need a PVQ method or vq, not "
                         f"{method!r}")
    if not inplace:
        model = copy.deepcopy(model)
    if rotation == "residual":
        from . import coherence
        hidden = model.model.embed_tokens.weight.shape[1]
        coherence.rotate_llama_model(model, coherence.RandomizedHadamard(
            hidden, seed + RESIDUAL_SEED), backend="torch")
    reports: list[LayerReport] = []
    inputs = calibration.first_block_inputs(model, calibration_windows) if needs_h else None
    settings = BlockSettings(method, bpw, seed, group, L, gain_bits, rotation, fold_rotations,
                             keep_codes, shifts, sensitivities, wcsg_groups, wcsg_rule)
    for b, layer in enumerate(model.model.layers):
        inputs = quantize_block(layer, b, inputs, settings, reports)
        if progress is not None:
            progress(b, reports)
    if activations is not None:
        from . import activations as act
        if not isinstance(activations, act.ActivationConfig):
            activations = act.calibrate(model, calibration_windows, seed=seed, **activations)
        act.enable(model, activations)
    return model, reports


@dataclass(frozen=True)
class BlockSettings:
    """What :func:`quantize_block` needs besides the block (quantize_model's arguments)."""
    method: str
    bpw: float
    seed: int = 0
    group: int = 128
    L: int = DEFAULT_L
    gain_bits: int = DEFAULT_GAIN_BITS
    rotation: str | None = "input"
    fold_rotations: bool = True
    keep_codes: bool = False
    shifts: dict | None = field(default=None, repr=False, compare=False)
    sensitivities: dict | None = field(default=None, repr=False, compare=False)
    wcsg_groups: int = 4
    wcsg_rule: str = "lagrange"


def quantize_block(layer, b: int, inputs, settings: BlockSettings, reports: list):
    """Quantize every linear layer of decoder block ``b`` (``layer``) in place, one
    distinct input at a time against its second moment on ``inputs`` (the block's
    calibration inputs, :class:`pvqref.hessian.calibration.BlockInputs`; None for a
    data-free method), appending a LayerReport per layer to ``reports``. Returns the
    next block's inputs (None without calibration). The loop body of
    :func:`quantize_model`, also used by :func:`pvqref.stream.quantize_checkpoint`.
    Chapter: Quantizing a real LLaMA model (book/llama.ipynb)."""
    s = settings
    for i, (_, path, readers) in enumerate(calibration.LLAMA_INPUTS):
        rotation_seed = _input_rotation_seed(s.rotation, s.seed, b, i)

        def plan_of(shape, name, rotation_seed=rotation_seed):
            plan = layer_plan(s.method, s.bpw, shape, s.group, s.L, s.gain_bits, rotation_seed)
            if not s.sensitivities or name not in s.sensitivities:
                return plan
            from .rsavq import wcsg
            groups = wcsg.plan_row_groups(shape, s.bpw, s.sensitivities[name], s.L,
                                          s.gain_bits, s.wcsg_groups, s.wcsg_rule,
                                          "vq" if s.method == "vq" else "pvq")
            return LayerPlan(plan.method, None, None, groups, rotation_seed)

        H = None if inputs is None else calibration.input_second_moment(layer, inputs, path)
        _quantize_readers(layer, f"model.layers.{b}", H, readers, plan_of, reports,
                          s.fold_rotations, s.keep_codes, s.shifts)
    return None if inputs is None else calibration.run_block(layer, inputs)


def _input_rotation_seed(rotation, seed: int, block: int, i: int):
    """The seed of the input-side rotation of input i of ``block``, or None: every input
    with "input"; with "residual" only the inputs outside the residual stream (attention
    output, MLP hidden), the others being rotated by the residual rotation."""
    in_residual_stream = calibration.LLAMA_INPUTS[i][0] in calibration.RESIDUAL_INPUTS
    if rotation is None or (rotation == "residual" and in_residual_stream):
        return None
    return seed + 100 * block + i


def mean_bits_per_weight(reports) -> float:
    """Bits per weight of all the quantized layers together (weighted by their sizes).
    Chapter: Hessian-aware PVQ (book/hessian.ipynb)."""
    sizes = [r.shape[0] * r.shape[1] for r in reports]
    return sum(r.bits_per_weight * s for r, s in zip(reports, sizes)) / sum(sizes)

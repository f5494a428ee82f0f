"""PVQ for activations: the input of every linear layer quantized as the model runs.

Chapter: PVQ for activations (book/activations.ipynb).

A token's input x (length n) to a linear layer y = W x is quantized the way a weight row
is, after a randomized Hadamard rotation R of its n coordinates (the same rotation for
every token, fixed by ``(n, seed)``):

    x  ->  x_hat = R^T Q(R x),     then y = W x_hat,

where Q is one of

- ``"pvq"``: the complete PVQ quantizer of :mod:`pvqref.gain` applied to the token as one
  row: groups of L coordinates, each a pyramid point of K pulses and a Beta-law gain code
  of ``gain_bits``, and the token's norm as fp16. Nothing is calibrated per tensor, so
  the search runs at inference time with no codebook.
- ``"rtn"``: the baseline, symmetric round-to-nearest per token: b-bit integers
  q = clamp(round(x / s), -(2^(b-1) - 1), 2^(b-1) - 1) with one fp16 scale per token,
  s = clip * max_i abs(x_i) / (2^(b-1) - 1); with or without the rotation.

Bits per activation, exactly as stored: ``bits`` of payload per activation (PVQ:
(ceil(log2 N(L, K)) + gain_bits) / L <= bits; RTN: b) plus the token's fp16 norm or scale,
16 / n. Both methods pay the same 16 / n, so "b bits" compares like with like.

Which (L, K, gain_bits) for a width n and a budget: :func:`choose` measures the error of
every candidate on activations captured from the calibration split (:func:`capture`) and
keeps the least, the same "measure, do not model" rule as the weights' rate chooser
(:func:`pvqref.gain.choose_config`).

In a model, :func:`enable` puts a forward pre-hook on every linear layer of the decoder
blocks (not the LM head, as QuaRot); layers that read the same tensor (q, k, v; gate and
up) share one quantization, computed once (:class:`pvqref.quantized.LastInput`, as the
online input rotations of :class:`pvqref.quantized.SharedInputRotation`). The model's weights and
modules are untouched: removing the hooks gives back the weight-only model exactly.

Tiers (``backend``): "reference", "numba", "torch" run the rotation and the quantizer of
that tier (:mod:`pvqref.coherence`, :mod:`pvqref.gain`, :mod:`pvqref.pyramid`); "auto"
means numba for NumPy arrays and CPU tensors, torch for tensors on an accelerator (the
torch tier is the slower one on a CPU). NaN or Inf in an activation is a ValueError naming
the layer, never a silently wrong output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from . import _checks, _tiers, gain, pyramid
from .coherence import RandomizedHadamard
from .gain.config import check_group_size
from .quantized import LastInput, QuantizedLinear

METHODS = ("pvq", "rtn")
TOKEN_BITS = 16                  # fp16 token norm (PVQ) or fp16 scale (RTN), per token
GROUP_SIZES = (32, 64, 96)   # larger L measured no better (chapter), and slower to search
GAIN_BITS = (2, 4, 6, 8)
CALIBRATION_WINDOWS = 2           # windows whose activations choose PVQ's groups
FP16_MAX = float(np.finfo(np.float16).max)


@dataclass(frozen=True)
class ActivationConfig:
    """How activations are quantized: ``method`` ("pvq" or "rtn"), ``bits`` of payload per
    activation (RTN: an integer 2..16), the rotation (``rotate``, ``seed``), RTN's ``clip``
    ratio, and for PVQ the chosen ``groups``: ((n, L, K, gain_bits), ...), one per input
    width (see :func:`choose`). Chapter: PVQ for activations (book/activations.ipynb)."""
    method: str
    bits: float
    rotate: bool = True
    seed: int = 0
    clip: float = 1.0
    groups: tuple = field(default=())

    def __post_init__(self):
        _checks.choice(self.method, "activation method", METHODS)
        _checks.real(self.bits, "activation bits", positive=True)
        if self.method == "rtn":
            _checks.integer(self.bits, "RTN activation bits", 2, 16)
        if not isinstance(self.rotate, bool):
            raise TypeError(f"rotate must be a bool, got {type(self.rotate).__name__}")
        _checks.integer(self.seed, "seed", 0)
        if not 0 < _checks.real(self.clip, "clip", positive=True) <= 1:
            raise ValueError(f"clip must lie in (0, 1], got {self.clip}")
        object.__setattr__(self, "groups", tuple(tuple(int(v) for v in g)
                                                 for g in self.groups))
        for n, L, K, b in self.groups:
            cfg = self._pvq(L, K, b)
            check_group_size(L, n)
            if cfg.index_bits + b > self.bits * L + 1e-9:
                raise ValueError(f"group (n={n}, L={L}, K={K}, gain_bits={b}) needs "
                                 f"{(cfg.index_bits + b) / L:.4f} bits per activation, more "
                                 f"than the budget {self.bits}")

    @staticmethod
    def _pvq(L: int, K: int, gain_bits: int) -> gain.PVQConfig:
        return gain.PVQConfig(L, K, gain_bits, norm_bits=TOKEN_BITS)

    def pvq_config(self, n: int) -> gain.PVQConfig:
        """The PVQ format of tokens of width n (fp16 token norms)."""
        for width, L, K, b in self.groups:
            if width == n:
                return self._pvq(L, K, b)
        raise ValueError(f"this PVQ activation config has no group for width {n} (it has "
                         f"{[g[0] for g in self.groups]}); choose one with "
                         f"pvqref.activations.choose")

    def bits_per_activation(self, n: int) -> float:
        """Every bit stored per activation of a width-n token, its fp16 norm or scale
        included: (index bits + gain bits) / L + 16 / n (PVQ) or b + 16 / n (RTN)."""
        n = _checks.integer(n, "width", 1)
        if self.method == "rtn":
            return self.bits + TOKEN_BITS / n
        c = self.pvq_config(n)
        return (c.index_bits + c.gain_bits) / c.L + TOKEN_BITS / n

    def to_dict(self) -> dict:
        return {"version": 1, "method": self.method, "bits": self.bits,
                "rotate": self.rotate, "seed": self.seed, "clip": self.clip,
                "groups": [list(g) for g in self.groups]}

    @classmethod
    def from_dict(cls, d: dict) -> "ActivationConfig":
        if not isinstance(d, dict) or d.get("version") != 1:
            raise ValueError(f"not an activation config of version 1: {d!r}")
        return cls(d["method"], d["bits"], d["rotate"], d["seed"], d["clip"],
                   tuple(tuple(g) for g in d["groups"]))


def _tier(backend, x) -> str:
    """The tier for ``x``: "auto" is numba on the CPU, torch on an accelerator."""
    backend = _tiers.check_backend(backend)
    if backend != _tiers.AUTO:
        return backend
    return "torch" if _tiers.is_torch(x) and x.device.type != "cpu" else "numba"


def check_activations(x, name: str = "activations") -> int:
    """The width n of ``x`` (array or tensor, floating, finite, at least 1-D); ValueError
    naming ``name`` and the count of NaN/Inf values otherwise."""
    _checks.real_dtype(x, name, integers=False)
    if x.ndim < 1 or x.shape[-1] < 2:
        raise ValueError(f"{name} must have a last axis of at least 2 values, got shape "
                         f"{tuple(x.shape)}")
    bad = int((~torch.isfinite(x)).sum()) if _tiers.is_torch(x) else int((~np.isfinite(x)).sum())
    if bad:
        raise ValueError(f"{name} hold {bad} NaN/Inf value(s) of {math.prod(x.shape)}: "
                         f"activation quantization needs finite inputs")
    return int(x.shape[-1])


def rotation(n: int, seed: int) -> RandomizedHadamard:
    """The rotation of width-n tokens, H_n diag(s) with signs from ``seed``."""
    return RandomizedHadamard(n, seed)


def rtn(X, bits: int, clip: float = 1.0):
    """Symmetric per-row round-to-nearest of a 2-D float64 array or tensor (the module
    docstring's formula; the scale is rounded to fp16, as stored)."""
    qmax = 2 ** (int(bits) - 1) - 1
    torch_in = _tiers.is_torch(X)
    scale = clip * (X.abs().amax(1, keepdim=True) if torch_in else
                    np.abs(X).max(1, keepdims=True)) / qmax
    if len(X) and float(scale.max()) > FP16_MAX:
        raise ValueError(f"a token's RTN scale {float(scale.max()):.4g} exceeds fp16's "
                         f"largest value {FP16_MAX:.0f}")
    if torch_in:
        scale = scale.to(torch.float16).to(X.dtype)
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        return torch.clamp(torch.round(X / safe), -qmax, qmax) * scale
    scale = scale.astype(np.float16).astype(X.dtype)
    safe = np.where(scale > 0, scale, 1.0)
    return np.clip(np.round(X / safe), -qmax, qmax) * scale


def _matrix(x, tier: str, n: int):
    """x as a float64 (tokens, n) matrix of the tier's kind."""
    if tier == "torch":
        return torch.as_tensor(x).reshape(-1, n).to(torch.float64)
    return np.ascontiguousarray(_tiers.to_numpy(x, np.float64).reshape(-1, n),
                                dtype=np.float64)


def _rotated_tokens(x, config: ActivationConfig, backend, name: str):
    """(R x as a float64 (tokens, n) matrix of the tier's kind, the tier, R or None, n)."""
    n = check_activations(x, name)
    tier = _tier(backend, x)
    X = _matrix(x, tier, n)
    R = rotation(n, config.seed) if config.rotate else None
    if R is not None:
        X = R.forward(X, backend=tier)
    return X, tier, R, n


def quantize_dequantize(x, config: ActivationConfig, backend: str = "auto",
                        name: str = "activations"):
    """x (array or tensor, last axis the width n) -> x_hat = R^T Q(R x), every token
    quantized on its own. Same type, shape, dtype and device as x. Chapter: PVQ for
    activations (book/activations.ipynb)."""
    X, tier, R, n = _rotated_tokens(x, config, backend, name)
    if config.method == "rtn":
        Xq = rtn(X, config.bits, config.clip)
    else:
        Xq = gain.quantize_dequantize(X, config.pvq_config(n), backend=tier)
    if R is not None:
        Xq = R.inverse(Xq, backend=tier)
    if _tiers.is_torch(x):
        return _tiers.like(Xq, x, x.dtype).reshape(x.shape)
    return np.asarray(Xq).reshape(x.shape).astype(x.dtype, copy=False)


def encode(x, config: ActivationConfig, backend: str = "auto") -> gain.QuantizedMatrix:
    """The stored form of PVQ-quantized tokens (rotated, one row per token): a
    :class:`pvqref.gain.QuantizedMatrix` whose bits per token are counted by its
    ``bit_counts`` (what :meth:`ActivationConfig.bits_per_activation` states)."""
    if config.method != "pvq":
        raise ValueError("encode stores PVQ activations; RTN codes are integers and a scale")
    X, tier, _, n = _rotated_tokens(x, config, backend, "activations")
    return gain.quantize(X, config.pvq_config(n), backend=tier)


def decode(Q: gain.QuantizedMatrix, config: ActivationConfig) -> np.ndarray:
    """Inverse of :func:`encode`: the (tokens, n) float64 activations."""
    X = gain.dequantize(Q)
    return rotation(Q.shape[1], config.seed).inverse(X) if config.rotate else X


def relative_error(X, config: ActivationConfig, backend: str = "auto") -> float:
    """||X - X_hat||^2 / ||X||^2 of :func:`quantize_dequantize` over all tokens of X."""
    X = np.asarray(_tiers.to_numpy(X, np.float64))
    return float(((X - quantize_dequantize(X, config, backend)) ** 2).sum() / (X ** 2).sum())


def crest_factor(X, rotate_seed: int | None = None) -> np.ndarray:
    """max_i abs(x_i) / rms(x) of every token of X (rotated first with ``rotate_seed``): what
    sets per-token RTN's step, max_i abs(x_i) / (2^(b-1) - 1), against the token's size."""
    X = np.asarray(_tiers.to_numpy(X, np.float64))
    if rotate_seed is not None:
        X = rotation(X.shape[-1], rotate_seed).forward(X)
    rms = np.sqrt((X ** 2).mean(-1))
    return np.abs(X).max(-1) / np.where(rms > 0, rms, 1.0)


def group_for_bits(n: int, L: int, bits: float, gain_bits: int) -> tuple | None:
    """(n, L, K, gain_bits) with the most pulses K whose index and gain code fit
    ``bits`` per activation (floor(L bits) - gain_bits index bits), or None."""
    check_group_size(L, n)
    budget = math.floor(L * bits + 1e-9) - gain_bits
    if budget < 1:
        return None
    K = pyramid.k_for_rate(L, budget / L)
    return (n, L, K, gain_bits) if K >= 1 else None


def choose(samples: dict, bits: float, seed: int = 0, group_sizes=GROUP_SIZES,
           gain_bits=GAIN_BITS, backend: str = "auto") -> tuple[ActivationConfig, list]:
    """The PVQ config for ``bits`` per activation with, for each width n of ``samples``
    ({n: (tokens, n) activations}), the candidate (L, K, gain_bits) of least relative
    error ||X - X_hat||^2 / ||X||^2 on those tokens; and the table of every candidate
    (dicts n, L, K, gain_bits, bits, rel_mse), best first per width."""
    bits = _checks.real(bits, "activation bits", positive=True)
    groups, table = [], []
    for n, X in sorted(samples.items()):
        rows = []
        for L in group_sizes:
            if n % L or L >= n:
                continue
            for b in gain_bits:
                g = group_for_bits(n, L, bits, b)
                if g is None:
                    continue
                cfg = ActivationConfig("pvq", bits, True, seed, groups=(g,))
                err = relative_error(X, cfg, backend)
                rows.append({"n": n, "L": L, "K": g[2], "gain_bits": b,
                             "bits": cfg.bits_per_activation(n), "rel_mse": err})
        if not rows:
            raise ValueError(f"no PVQ group fits {bits} bits per activation at width {n}")
        rows.sort(key=lambda r: r["rel_mse"])
        best = rows[0]
        groups.append((n, best["L"], best["K"], best["gain_bits"]))
        table += rows
    return ActivationConfig("pvq", bits, True, seed, groups=tuple(groups)), table


def decoder_linears(model) -> dict:
    """{name: module} of the linear layers inside the decoder blocks, in order (the
    layers whose inputs are quantized; the LM head is not)."""
    return {name: m for name, m in model.named_modules()
            if ".layers." in f".{name}" and isinstance(m, (torch.nn.Linear, QuantizedLinear))}


def capture(model, windows: torch.Tensor, tokens: int = 64, seed: int = 0) -> dict:
    """{n: (samples, n) float64} inputs of the decoder's linear layers on ``windows``
    (count, length) token ids: from each distinct input tensor (q, k, v read one), at
    most ``tokens`` token vectors drawn without replacement with ``seed``."""
    out: dict = {}
    seen: dict = {}
    rng = np.random.default_rng(seed)

    def hook(module, args):
        x = args[0]
        if seen.get(id(module)) is x:
            return
        for m in readers:
            seen[id(m)] = x
        X = x.detach().reshape(-1, x.shape[-1]).to(torch.float64).cpu().numpy()
        pick = rng.choice(len(X), size=min(tokens, len(X)), replace=False)
        out.setdefault(X.shape[1], []).append(X[np.sort(pick)])

    readers = list(decoder_linears(model).values())
    handles = [m.register_forward_pre_hook(hook) for m in readers]
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for row in windows:
                model(row[None].to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return {n: np.concatenate(v) for n, v in out.items()}


def calibrate(model, windows: torch.Tensor | None, bits: float, method: str = "pvq",
              rotate: bool = True, seed: int = 0, clip: float = 1.0,
              backend: str = "auto", max_windows: int = CALIBRATION_WINDOWS,
              **choose_kw) -> ActivationConfig:
    """The activation config of ``method`` at ``bits`` for ``model``: RTN needs nothing
    measured (``windows`` may be None); PVQ chooses its groups on inputs captured from
    the first ``max_windows`` of ``windows`` (:func:`capture`, :func:`choose`). PVQ always
    rotates (``rotate`` is for RTN). Chapter: PVQ for activations (book/activations.ipynb)."""
    if method == "rtn":
        return ActivationConfig("rtn", bits, rotate, seed, clip)
    _checks.choice(method, "activation method", METHODS)
    if not rotate:
        raise ValueError("PVQ activations are always rotated (rotate=False is for RTN)")
    if windows is None:
        raise ValueError("PVQ activations need calibration windows to choose their groups")
    max_windows = _checks.integer(max_windows, "max_windows", 1)
    config, _ = choose(capture(model, windows[:max_windows], seed=seed), bits, seed,
                       backend=backend, **choose_kw)
    return config


class ActivationQuantization:
    """The hooks that quantize a model's linear inputs (see :func:`enable`): ``config``,
    ``calls`` (quantizations computed), ``reads`` (layer inputs served), :meth:`remove`;
    also a context manager that removes them on exit."""

    def __init__(self, model, config: ActivationConfig, backend: str = "auto"):
        self.model, self.config, self.backend = model, config, backend
        self.reads = 0
        self._cache = LastInput()
        linears = decoder_linears(model)
        if not linears:
            raise ValueError("the model has no linear layers inside decoder blocks "
                             "(model.model.layers): nothing to quantize")
        if config.method == "pvq":
            for name, m in linears.items():
                config.pvq_config(m.in_features)   # every width has its group
        self._names = {id(m): name for name, m in linears.items()}
        self._handles = [m.register_forward_pre_hook(self._hook) for m in linears.values()]
        model.pvqref_activations = self

    @property
    def calls(self) -> int:
        return self._cache.calls

    def _hook(self, module, args):
        self.reads += 1
        name = f"input of {self._names[id(module)]}"
        x_hat = self._cache.compute(args[0], lambda x: quantize_dequantize(
            x.detach(), self.config, self.backend, name=name))
        return (x_hat, *args[1:])

    def remove(self) -> None:
        """Take the hooks off: the model is the weight-only model again."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self._cache.clear()
        if getattr(self.model, "pvqref_activations", None) is self:
            del self.model.pvqref_activations

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


def enable(model, config: ActivationConfig, backend: str = "auto") -> ActivationQuantization:
    """Quantize the input of every linear layer of ``model``'s decoder blocks with
    ``config`` from now on (replacing any earlier activation quantization of the model);
    the returned handle's ``remove()`` switches it off. Chapter: PVQ for activations
    (book/activations.ipynb)."""
    if not isinstance(config, ActivationConfig):
        raise TypeError(f"config must be an ActivationConfig, got {type(config).__name__}")
    disable(model)
    return ActivationQuantization(model, config, backend)


def disable(model) -> None:
    """Remove the activation quantization of ``model``, if any."""
    old = getattr(model, "pvqref_activations", None)
    if old is not None:
        old.remove()

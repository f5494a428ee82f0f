"""Hessian-aware quantization: GPTQ, and PVQ with block-LDL error feedback (BlockLDLQ).

A linear layer y = W x is quantized to Q so that its *outputs* move least on the inputs it
really sees. Over calibration inputs x with second moment H = E[x x^T] (collected by
:mod:`pvqref.hessian.calibration`), the expected output error is the proxy loss

    E ||(W - Q) x||^2 = tr((W - Q) H (W - Q)^T),

which weights an error by how strongly its input direction is excited, not by its size.

Error feedback (GPTQ; QuIP#'s LDLQ and BlockLDLQ). Factor the damped inverse Hessian as
H^{-1} = C^T C (C upper triangular) and quantize the columns left to right in blocks J
(one column for GPTQ, L columns = one PVQ group of every row for BlockLDLQ). After block J
is quantized with error E_J = X_J - Q_J (X_J: its target, W_J plus the feedback so far),
move every later column R by

    X_R <- X_R - E_J C_JJ^{-1} C_JR.

Then the loss splits exactly into one term per block, loss = sum_J ||E_J C_JJ^{-1}||^2:
each block is quantized in its own metric D_J = C_JJ^{-1} C_JJ^{-T} (the block pivots of
the LDL factorisation H = U D U^T, U unit block upper triangular), and nothing a block does
is lost later, since later blocks absorb it. For one column D_J = 1 / C_jj^2 and the update
is GPTQ's err / C_jj * C_j,R.

Contents:

- :func:`proxy_loss` -- tr((W - Q) H (W - Q)^T).
- :func:`gptq_quantize` -- scalar min-max grid with groups of ``group`` input columns
  (fp16 scale and zero per group and row, the format of ``pvqref.baselines``' RTN),
  act-order, lazy batches; ``feedback=False`` is RTN on the same grid.
- :func:`pvq_quantize` -- PVQ groups of L input columns (a :class:`pvqref.gain.PVQConfig`)
  with block feedback; ``search="hessian"`` chooses each group's direction and gain in the
  block metric D_J instead of by angle.

Tiers (``backend=``): "reference" is the NumPy float64 oracle (``reference.py``) with the
pyramid's reference search; "torch" (``_torch.py``) runs on the input's device and is what
the pipeline uses. There is **no Numba tier**: the column loops are sequential and each
step is a row-vector or matrix operation that NumPy/BLAS already does at full speed, so
"numba" (and "auto" for NumPy input) means the NumPy tier with the pyramid's Numba
search, the part that does pay for jitting.

Design choices where the papers are silent (measured in the chapter):

- act-order uses *static* groups (each group's grid from the original weights, as GPTQ's
  ``static_groups``), so the groups stay consecutive input columns and nothing beyond the
  RTN format is stored; without act-order the grid is computed from the updated weights
  when the loop reaches the group (GPTQ's default).
- PVQ row norms are coded from the original W before any feedback (they set the scale of
  the gain codebook, which must be known before the first block); every group's gain code
  is then the level nearest to its least-squares gain over that norm.

Chapter: Hessian-aware PVQ (book/hessian.ipynb).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import _checks, _tiers

__all__ = ["proxy_loss", "gptq_quantize", "gptq_bits_per_weight", "pvq_quantize", "PVQResult",
           "check_hessian", "SEARCHES", "ORIENTATIONS"]

SEARCHES = ("euclidean", "hessian")
ORIENTATIONS = ("input", "output")
DEFAULT_DAMP = 0.01          # GPTQ's 1% of the mean diagonal
DAMP_RETRIES = 3             # x10 each: 1%, 10%, 100%, 1000% of the mean diagonal
DEFAULT_MOVES = 8            # pulse moves per group in the metric refinement (measured: 4-8
                             # reach what 64 do on SmolLM2 block 15)
DEFAULT_WIDTH = 8            # removal x addition candidates scored per move


def _tier(backend, *inputs):
    """(tier module, pyramid search backend) for ``backend`` (see the module docstring)."""
    b = _tiers.resolve(backend, *inputs)
    if b == "torch":
        return _tiers.load("pvqref.hessian", "torch"), "torch"
    return _tiers.load("pvqref.hessian", "reference"), b


def _check_weight(W, name: str):
    if len(getattr(W, "shape", ())) != 2 or min(W.shape) < 1:
        raise ValueError(f"the weight of {name} must be a non-empty 2-D matrix (out, in), got "
                         f"shape {tuple(getattr(W, 'shape', ()))}")
    _checks.real_dtype(W, f"the weight of {name}", integers=False)
    _checks.finite(W, f"the weight of {name}")


def check_hessian(H, n: int, name: str = "layer"):
    """ValueError unless H is a finite, symmetric (n, n) matrix with a non-negative diagonal
    (TypeError for a non-float dtype). Positive definiteness is checked by the factorisation,
    after damping. Chapter: Hessian-aware PVQ (book/hessian.ipynb)."""
    shape = tuple(getattr(H, "shape", ()))
    if shape != (n, n):
        raise ValueError(f"the Hessian of {name} must be ({n}, {n}) to match the weight's {n} "
                         f"input columns, got shape {shape}")
    _checks.real_dtype(H, f"the Hessian of {name}", integers=False)
    _checks.finite(H, f"the Hessian of {name}")
    A = _tiers.to_numpy(H, np.float64).astype(np.float64)
    if np.any(np.diag(A) < 0):
        raise ValueError(f"the Hessian of {name} has a negative diagonal entry "
                         f"({float(np.diag(A).min()):.3g}): not a second moment E[x x^T]")
    if np.max(np.abs(A - A.T)) > 1e-6 * max(float(np.max(np.abs(A))), 1e-300):
        raise ValueError(f"the Hessian of {name} is not symmetric (max |H - H^T| = "
                         f"{float(np.max(np.abs(A - A.T))):.3g})")


def _as_tier(x, tier_name: str, like):
    """x as float64 in the framework of the tier (a tensor on ``like``'s device for torch)."""
    if tier_name == "torch":
        import torch
        device = like.device if _tiers.is_torch(like) else None
        return _tiers.to_torch(x).to(device=device, dtype=torch.float64)
    return _tiers.to_numpy(x, np.float64).astype(np.float64)


def proxy_loss(W, Q, H, backend: str = "auto") -> float:
    """tr((W - Q) H (W - Q)^T) in float64: the expected squared output error of quantizing
    W to Q on inputs with second moment H. Chapter: Hessian-aware PVQ (book/hessian.ipynb)."""
    _check_weight(W, "W")
    if tuple(Q.shape) != tuple(W.shape):
        raise ValueError(f"Q has shape {tuple(Q.shape)}, W has {tuple(W.shape)}")
    check_hessian(H, W.shape[1], "W")
    tier, _ = _tier(backend, W, Q, H)
    name = "torch" if tier.__name__.endswith("_torch") else "reference"
    return tier.proxy_loss(*(_as_tier(x, name, W) for x in (W, Q, H)))


def _factor(tier, H, damp, name):
    """Damped, factored H: (C upper with H_damped^{-1} = C^T C, dead-column mask)."""
    damp = _checks.real(damp, "damp", minimum=0.0)
    C, dead, _ = tier.inverse_cholesky(H, damp, DAMP_RETRIES, name)
    return C, dead


def _prepare(W, H, backend, name):
    """Checks, then (tier, tier name, pyramid search backend, W and H as float64 copies in
    the tier's framework)."""
    _check_weight(W, name)
    check_hessian(H, W.shape[1], name)
    tier, search_backend = _tier(backend, W, H)
    tname = "torch" if tier.__name__.endswith("_torch") else "reference"
    return tier, tname, search_backend, _as_tier(W, tname, W), _as_tier(H, tname, W)


def gptq_quantize(W, H, bits: int, group: int = 128, act_order: bool = True,
                  feedback: bool = True, damp: float = DEFAULT_DAMP, name: str = "layer",
                  backend: str = "auto", return_grid: bool = False):
    """GPTQ of W (out, in) against the input second moment H (in, in): per row and group of
    ``group`` consecutive input columns a min-max grid of 2^bits levels (fp16 scale and
    zero point: :func:`gptq_bits_per_weight`; a shorter last group when ``group`` does not
    divide the row, as GPTQ's g_idx = column // group), columns quantized in order of
    decreasing H_ii when ``act_order`` (static grids then), each column's error fed back to
    the columns not yet quantized. ``feedback=False`` is plain RTN on the same grid.
    H is damped by ``damp`` x its mean diagonal (x10 up to three more times if the
    factorisation fails; then ValueError naming ``name``); input columns with H_ii = 0 are
    dead: their weights become 0. Returns Q like W (type, device, dtype); with
    ``return_grid`` also the grid, (Q, scale, zero), scale and zero float64 (out,
    ceil(in / group)) holding fp16 values, with Q = code * scale + zero exactly (what a
    packed model stores: :mod:`pvqref.codes`).
    Chapter: Hessian-aware PVQ (book/hessian.ipynb)."""
    bits = _checks.integer(bits, "bits", 1, 8)
    group = _checks.integer(group, "group", 1)
    tier, tname, _, W64, H64 = _prepare(W, H, backend, name)
    n = W64.shape[1]
    diag = np.diag(_tiers.to_numpy(H64)).copy()
    order = (np.argsort(-diag, kind="stable") if act_order else np.arange(n)).astype(np.int64)
    perm = _tiers.to_torch(order).to(W64.device) if tname == "torch" else order
    C, _ = _factor(tier, H64[perm][:, perm], damp, name)     # C in processing order
    W64[:, _dead_columns(diag, tname, W64)] = 0
    Q, scale, zero = tier.gptq(W64, C, order, bits, group, static=act_order, feedback=feedback)
    return (_like(Q, W), scale, zero) if return_grid else _like(Q, W)


def gptq_bits_per_weight(bits: int, group: int, n: int) -> float:
    """Bits stored per weight by :func:`gptq_quantize` for rows of n: the codes plus an
    fp16 scale and an fp16 zero point for each of the ceil(n / group) groups of a row.
    Chapter: Hessian-aware PVQ (book/hessian.ipynb)."""
    return bits + 32 * -(-n // group) / n


def _dead_columns(diag, tname: str, like):
    """Mask of the inputs that never fired (H_ii = 0), in the tier's framework."""
    dead = diag == 0
    return _tiers.to_torch(dead).to(like.device) if tname == "torch" else dead


def _like(Q, W):
    """A tier's float64 result in W's dtype (and framework, which the tier already has)."""
    return Q.to(W.dtype) if _tiers.is_torch(W) else Q.astype(W.dtype, copy=False)


@dataclass(frozen=True)
class PVQResult:
    """What :func:`pvq_quantize` chose: the reconstruction ``Q`` (like W), the pyramid
    points ``points`` (out, in) int64, the gain codes, the coded norms (float64) and the
    config; together they are what :mod:`pvqref.gain` stores, so a packer can write them.
    ``orientation`` "input": group j of row i is columns jL..jL+L-1, gain codes
    (out, in/L), ``row_norms`` (out,) the coded row norms. "output": group g of column i
    is rows gL..gL+L-1, gain codes (in, out/L), ``row_norms`` (in,) the coded column norms
    (the format of gain applied to W^T). ``stored_norms`` and ``norm_range``: the norms as
    stored (:func:`pvqref.gain.encode_row_norms`)."""
    Q: object
    points: object
    gain_codes: object
    row_norms: np.ndarray
    config: object
    orientation: str = "input"
    stored_norms: np.ndarray | None = None
    norm_range: np.ndarray | None = None


def pvq_quantize(W, H, config, feedback: bool = True, search: str = "euclidean",
                 damp: float = DEFAULT_DAMP, moves: int = DEFAULT_MOVES,
                 width: int = DEFAULT_WIDTH, orientation: str = "input", name: str = "layer",
                 backend: str = "auto") -> PVQResult:
    """PVQ of W (out, in) in groups of ``config.L`` input columns (a PVQConfig of
    :mod:`pvqref.gain`: same format, same bits per weight), one block of L columns at a
    time with block-LDL error feedback (``feedback=False``: each group on its own, as
    ``gain.quantize_dequantize`` but with the least-squares gain). ``search="hessian"``
    picks each group's gain by least squares in its block metric D_J and its direction by
    up to ``moves`` pulse moves that raise the cosine in that metric (``width`` x ``width``
    candidate moves scored per step), keeping the Euclidean direction where it is better:
    never worse in the metric. Row norms are coded from the original W (gain's format).
    ``orientation="output"`` puts the groups along the output dimension instead (L
    consecutive rows of one column, gain's format for W^T, ``config`` chosen for W^T's
    shape) inside GPTQ's column loop (``reference.pvq_column_gptq``); its metric per
    group is a scalar, so ``search="hessian"`` is refused there. The default orientation
    is the better one by measurement (chapter). Chapter: Hessian-aware PVQ
    (book/hessian.ipynb)."""
    from .. import gain
    search = _checks.choice(search, "search", SEARCHES)
    orientation = _checks.choice(orientation, "orientation", ORIENTATIONS)
    moves = _checks.integer(moves, "moves", 0)
    width = _checks.integer(width, "width", 1)
    if not isinstance(config, gain.PVQConfig):
        raise TypeError(f"config must be a pvqref.gain.PVQConfig, got {type(config).__name__}")
    if orientation == "output" and search == "hessian":
        raise ValueError("search='hessian' changes nothing with orientation='output': each "
                         "group lies in one column, whose metric is the scalar 1 / C_ii^2")
    tier, tname, search_backend, W64, H64 = _prepare(W, H, backend, name)
    m, n = W64.shape
    length = n if orientation == "input" else m
    if length % config.L or config.L >= length:
        side = "input columns" if orientation == "input" else "output rows"
        raise ValueError(f"group size L={config.L} must divide and be smaller than the "
                         f"{length} {side} of {name}")
    C, dead = _factor(tier, H64, damp, name)
    W64[:, dead] = 0
    rows = _tiers.to_numpy(W64) if orientation == "input" else _tiers.to_numpy(W64).T
    stored, norm_range, r_hat = gain.encode_row_norms(np.ascontiguousarray(rows), config)
    r_hat = np.asarray(r_hat, dtype=np.float64)
    book = config.codebook(length)
    levels, thresholds, r = (_as_tier(v, tname, W64) for v in (book.levels, book.thresholds,
                                                               r_hat))
    if orientation == "output":
        Q, codes, Y = tier.pvq_column_gptq(W64, C, config.L, config.K, levels, thresholds, r,
                                           feedback, search_backend)
    else:
        Q, codes, Y = tier.pvq_block_ldlq(W64, C, config.L, config.K, levels, thresholds, r,
                                          feedback, search == "hessian", moves, width,
                                          search_backend)
    return PVQResult(_like(Q, W), Y, codes, r_hat, config, orientation, stored, norm_range)

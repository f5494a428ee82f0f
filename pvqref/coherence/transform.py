"""The fast transform y = H_n x (or H_n^T x) along any axis, and its checks.

:func:`hadamard_transform` (and the rotations in ``rotations.py``) check the input once
here, pick a tier with ``pvqref._tiers.resolve`` and run that tier's ``transform`` on the
last axis: ``reference.py`` (NumPy, readable), ``_numba.py`` (jitted, CPU) or
``_torch.py`` (tensors, any device). Output follows input: NumPy in, NumPy out; a
tensor in, a tensor out in its dtype on its device, whichever tier computed it.
NaN/Inf input and a result that overflows the dtype raise ValueError.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .. import _checks, _tiers
from .constructions import _base_matrix, _require
from .reference import NAN_OR_INF, OVERFLOW

PACKAGE = "pvqref.coherence"


def _check_input(x, n: int, axis):
    """Validate x (numpy array-like or torch tensor) and axis; return (x as a float array
    or tensor, axis as an int). NaN/Inf are caught on the result (:func:`check_result`)
    or inside the Numba kernel."""
    if _tiers.is_torch(x):
        _checks.real_dtype(x, "x", integers=False)
    else:
        x = np.asarray(x)
        if x.dtype.kind in "iub":
            x = x.astype(np.float64)
        if x.dtype not in (np.float32, np.float64):
            raise TypeError(f"x must be a float32/float64 array, got dtype {x.dtype}")
    if len(x.shape) == 0:
        raise ValueError("expected an array with at least one dimension, got a scalar")
    axis = _checks.axis(axis, len(x.shape), x.shape)
    if x.shape[axis] != n:
        raise ValueError(f"axis {axis} has length {x.shape[axis]}, the transform has n={n} "
                         f"(array shape {tuple(x.shape)})")
    return x, axis


def _finite_sum(x) -> bool:
    """True iff the float64 sum of x is finite: then every entry is finite (NaN and Inf
    propagate through sums; float32 data cannot overflow a float64 sum)."""
    if _tiers.is_torch(x):
        total = x.detach().sum(dtype=torch.float64)
    else:
        with np.errstate(over="ignore", invalid="ignore"):     # inf + -inf: NaN, no warning
            total = x.sum(dtype=np.float64)
    return math.isfinite(float(total))       # for a tensor: one read-back to the host


def _all_finite(x) -> bool:
    return bool(x.isfinite().all() if _tiers.is_torch(x) else np.isfinite(x).all())


def check_result(x, y) -> None:
    """Raise ValueError unless y = R x (R orthogonal, along some axis) is finite.

    One check of y suffices: column j of an orthogonal R has unit norm, so some
    R_ij != 0, and a NaN or Inf in x_j makes y_i = ... + R_ij x_j non-finite. So a finite
    y certifies a finite x; x is only looked at afterwards, to word the error (bad input,
    or an overflow of the dtype). For a tensor the check reads one number back to the
    host, a device sync on a GPU: the price of raising a Python error on bad data (an
    asynchronous device assert would leave the CUDA context unusable). Meta tensors have
    no values and are not checked.
    """
    if _tiers.is_torch(y) and y.device.type == "meta":
        return
    if _finite_sum(y):
        return
    if not _all_finite(x):
        raise ValueError(NAN_OR_INF)
    if not _all_finite(y):
        raise ValueError(OVERFLOW)
    raise ValueError("values so large that the float64 sum of the result overflows; rescale")


def hadamard_transform(x, axis: int = -1, backend: str | None = "auto",
                       transpose: bool = False):
    """y = H_n x along ``axis`` (or H_n^T x with ``transpose=True``), H_n orthonormal.

    x: numpy array (float32/float64; integers are promoted to float64) or torch tensor
    (floating, any device); the result has x's type, dtype, shape and device.
    backend: "reference" (numpy, readable), "numba" (jitted loops, CPU), "torch", or
    "auto" (the default; None too): "torch" for tensors and "numba" otherwise.

    A tensor on the numpy tiers ("reference", "numba") is copied to the CPU, computed in
    float32 (float16, bfloat16 and other low-precision dtypes) or its own float32/float64,
    and returned in its dtype on its device. Those tiers cannot carry gradients: for a
    tensor that requires grad (with grad mode on) they raise ValueError; use "torch",
    which is differentiable, or pass ``x.detach()`` / run under ``torch.no_grad()``.
    Raises ValueError for NaN/Inf input or a result that overflows the dtype.

    Chapter: Spherical coherence processing (book/coherence.ipynb).
    """
    shape = getattr(x, "shape", None)
    if shape is None:
        x = np.asarray(x)
        shape = x.shape
    if len(shape) == 0:
        raise ValueError("expected an array with at least one dimension, got a scalar")
    n = int(shape[_checks.axis(axis, len(shape), shape)])
    return rotate(x, n, axis, backend, transpose, None, None)


def _move(x, source: int, destination: int):
    if _tiers.is_torch(x):
        return torch.movedim(x, source, destination)
    return np.moveaxis(x, source, destination)


def _contiguous(y):
    return y.contiguous() if _tiers.is_torch(y) else np.ascontiguousarray(y)


def rotate(x, n: int, axis, backend, transpose: bool, pre, post):
    """post * H_n^(T) (pre * x) along axis, on the tier ``backend`` resolves to; pre and
    post are sign vectors or None. The shared dispatch of every Hadamard rotation."""
    tier = _tiers.resolve(backend, x)
    k, M, _ = _require(n)
    x, axis = _check_input(x, n, axis)
    Hk = _base_matrix(k)
    Hk = np.ascontiguousarray(Hk.T) if transpose else Hk
    if tier == "torch":
        work = _tiers.to_torch(x)
    else:           # tensors: on the CPU in float32/float64 (float16, bfloat16: float32)
        work = _tiers.to_numpy(x, float_dtype=np.float32)
    xm = _move(work, axis, -1)
    y = _tiers.load(PACKAGE, tier).transform(xm, Hk, M, pre, post)
    if tier != "numba":                  # the Numba kernel checks NaN/Inf and overflow
        check_result(xm, y)
    y = _contiguous(_move(y, -1, axis))
    if not _tiers.is_torch(x) or tier == "torch":
        return _tiers.like(y, x)
    computed = _tiers.to_torch(y)                  # a tensor on a numpy tier: back as x was
    out = computed.to(x.dtype)
    if out.dtype != computed.dtype and not _all_finite(out):  # finite in float32, not in x's
        raise ValueError(OVERFLOW)
    return out.to(x.device)


def rotate_dense(x, Q: np.ndarray, axis, backend):
    """Q x along axis for a dense orthogonal Q, with the library of the input (numpy's
    BLAS product for arrays, torch's for tensors: their device, dtype and gradients are
    kept on every backend); ``backend`` is only checked. NaN/Inf and overflow raise."""
    _tiers.check_backend(backend)
    x, axis = _check_input(x, Q.shape[0], axis)
    tier = "torch" if _tiers.is_torch(x) else "reference"
    y = _tiers.load(PACKAGE, tier).dense(_move(x, axis, -1), Q)
    y = _contiguous(_move(y, -1, axis))
    check_result(x, y)
    return y

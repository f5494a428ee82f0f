"""How every algorithm picks its tier: one ``backend=`` argument, one resolver.

Each algorithm with several tiers is a small package (``pvqref.pyramid``, ...) holding

    reference.py   the oracle: plain NumPy / Python integers, short and obviously right
    _numba.py      the same function names, jitted loops over a batch (CPU)
    _torch.py      the same function names, tensor ops on whatever device the input is on

and an ``__init__.py`` that checks the inputs once, picks a tier with :func:`resolve`
and re-exports the public names. The tiers do not import one another: the torch tier
runs without Numba and the oracle without either.

``backend`` is one of ``"auto"`` (the default everywhere), ``"reference"``, ``"numba"``
or ``"torch"``. ``"auto"`` means torch for a torch tensor (on the tensor's device) and
numba otherwise. Output follows input: NumPy in, NumPy out; a tensor in, a tensor out on
its device, whichever tier computed it (:func:`to_numpy` and :func:`like` convert).
"""

from __future__ import annotations

import importlib

import numpy as np

BACKENDS = ("reference", "numba", "torch")
AUTO = "auto"
_FILES = {"reference": "reference", "numba": "_numba", "torch": "_torch"}


def is_torch(x) -> bool:
    """True for a torch tensor (without importing torch)."""
    return type(x).__module__.startswith("torch") and hasattr(x, "device")


def check_backend(backend) -> str:
    """``backend`` itself if it names a tier or "auto" (None means "auto"), else ValueError."""
    if backend is None:
        return AUTO
    if not isinstance(backend, str) or backend not in (AUTO, *BACKENDS):
        raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {backend!r}")
    return backend


def resolve(backend, *inputs) -> str:
    """The tier to run: ``backend`` checked, with "auto" (or None) meaning "torch" when any
    input is a torch tensor and "numba" otherwise."""
    backend = check_backend(backend)
    if backend != AUTO:
        return backend
    return "torch" if any(is_torch(x) for x in inputs) else "numba"


def load(package: str, backend: str):
    """The tier module of ``package`` (e.g. "pvqref.pyramid") for a resolved backend."""
    return importlib.import_module(f"{package}.{_FILES[backend]}")


def to_numpy(x, float_dtype=None) -> np.ndarray:
    """A tensor's values as a NumPy array for a NumPy tier (a NumPy input passes through).

    Low-precision floats (float16, bfloat16) become ``float_dtype`` (default float64, which
    holds them exactly). A tensor that carries gradients is refused: the NumPy tiers cannot
    propagate them."""
    if not is_torch(x):
        return np.asarray(x)
    import torch
    if x.device.type == "meta":
        raise ValueError("a meta tensor has no values for a NumPy tier; use backend='torch'")
    if x.requires_grad and torch.is_grad_enabled():
        raise ValueError("a NumPy tier cannot carry gradients of a tensor that requires "
                         "grad; use backend='torch', or x.detach() / torch.no_grad()")
    x = x.detach().cpu()
    if x.is_floating_point() and x.dtype not in (torch.float32, torch.float64):
        x = x.to(getattr(torch, np.dtype(float_dtype or np.float64).name))
    if x.dtype == torch.uint64:
        return x.view(torch.int64).numpy().view(np.uint64)
    return x.numpy()


def to_torch(x, device=None):
    """A NumPy input as a tensor for the torch tier (a tensor passes through)."""
    import torch
    if is_torch(x):
        return x
    return torch.as_tensor(np.ascontiguousarray(x), device=device)


def like(out, x, dtype=None):
    """``out`` (a tier's result) in the kind of ``x``: NumPy for NumPy input, a tensor on
    x's device for tensor input; ``dtype`` (a torch dtype) casts a tensor result."""
    if is_torch(x):
        t = to_torch(out).to(x.device)
        return t if dtype is None else t.to(dtype)
    if is_torch(out):
        return to_numpy(out)
    return out

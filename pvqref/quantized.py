"""Quantized linear layers: stored weights run with their online input rotation.

The pipeline quantizes a layer y = W x in the coordinates of a rotation R of its input:
x' = R x, W' = W R^T, and it is W' that gets coded, Q' ~ W'. There are two ways to run
the result, with the same function up to float rounding:

- fold the rotation back into a dense weight, Q = Q' R (what
  :func:`pvqref.pipeline.quantize_model` returns by default: a plain model, simulated
  quantization);
- keep Q' (what a packed model stores and decodes) and rotate the input online,
  y = Q' (R x): :class:`QuantizedLinear`.

Several layers read one input (q, k, v read the attention input; gate and up the MLP
input) and share one rotation. :class:`SharedInputRotation` computes R x once per
forward pass for all of them: it remembers the last input it saw (by identity and
in-place version, through a weak reference, so it never keeps an activation alive) and
hands the same rotated tensor to the next reader of that input.
"""

from __future__ import annotations

import weakref

import torch


class LastInput:
    """``f(x)`` computed once for consecutive calls on the same tensor: the result for the
    last input is kept, recognised by identity and in-place version through a weak
    reference (so it never keeps an activation alive). ``calls`` counts the computations.
    Used by :class:`SharedInputRotation` and :mod:`pvqref.activations`."""

    def __init__(self):
        self.calls = 0
        self._last = None              # (weakref to x, x._version, f(x))

    def compute(self, x: torch.Tensor, f):
        last = self._last
        if last is not None and last[0]() is x and last[1] == x._version:
            return last[2]
        y = f(x)
        self.calls += 1
        self._last = (weakref.ref(x), x._version, y)
        return y

    def clear(self) -> None:
        self._last = None


class SharedInputRotation(torch.nn.Module):
    """x -> R x on the last axis, computed once for consecutive calls on the same tensor
    (``calls`` counts the transforms actually computed). Chapter: Hessian-aware PVQ
    (book/hessian.ipynb)."""

    def __init__(self, rotation):
        super().__init__()
        self.rotation = rotation
        self._cache = LastInput()

    @property
    def calls(self) -> int:
        return self._cache.calls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._cache.compute(x, lambda x: self.rotation.forward(x, backend="torch"))


class QuantizedLinear(torch.nn.Module):
    """y = Q' (R x) + b: a quantized weight ``weight`` (out, in) stored in the coordinates
    of the input rotation (a :class:`SharedInputRotation`, or None for y = Q' x + b).
    ``weight`` and ``bias`` are buffers (a quantized layer is not trained here).
    Chapter: Hessian-aware PVQ (book/hessian.ipynb)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None,
                 input_rotation: SharedInputRotation | None = None):
        super().__init__()
        if weight.ndim != 2:
            raise ValueError(f"a quantized weight must be 2-D (out, in), got shape "
                             f"{tuple(weight.shape)}")
        if input_rotation is not None and input_rotation.rotation.n != weight.shape[1]:
            raise ValueError(f"the input rotation has n={input_rotation.rotation.n} but the "
                             f"weight has {weight.shape[1]} input columns")
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self.input_rotation = input_rotation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_rotation is not None:
            x = self.input_rotation(x)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return torch.nn.functional.linear(x, self.weight.to(x.dtype), bias)

    def dense_weight(self) -> torch.Tensor:
        """Q = Q' R: the same layer as a plain weight in the input's own coordinates."""
        if self.input_rotation is None:
            return self.weight
        return self.input_rotation.rotation.inverse(self.weight, axis=1, backend="torch")

    def extra_repr(self) -> str:
        rotation = "none" if self.input_rotation is None else type(
            self.input_rotation.rotation).__name__
        return f"in={self.in_features}, out={self.out_features}, input rotation={rotation}"

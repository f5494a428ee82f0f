"""Input checks shared by every module: one spelling, one exception type per kind of fault.

- A value of the wrong *type* (a float, bool or string where an integer is needed; an
  integer array where floats are needed; a complex dtype) raises **TypeError**.
- A value of the right type but outside what the algorithm accepts (out of range, NaN or
  Inf, a wrong shape, an unsupported size, an unknown name) raises **ValueError**.

Every message names the quantity (``name``) and shows what was given.
"""

from __future__ import annotations

import math
import numbers
import operator

import numpy as np

from ._tiers import is_torch


def integer(value, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as a Python int in [minimum, maximum].

    Accepts Python and NumPy integers (anything with ``__index__`` except bool): 2.0, 2.5,
    True and "2" raise TypeError rather than being read as 2, 2, 1 and 2."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer, got bool {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} "
                        f"{value!r}") from None
    if minimum is not None and v < minimum:
        kind = {0: "a non-negative integer", 1: "a positive integer"}.get(
            minimum, f"an integer >= {minimum}")
        raise ValueError(f"{name} must be {kind}, got {v}")
    if maximum is not None and v > maximum:
        raise ValueError(f"{name} must be at most {maximum}, got {v}")
    return v


def real(value, name: str, minimum: float | None = None, positive: bool = False) -> float:
    """``value`` as a finite Python float (>= minimum; > 0 if ``positive``).

    Accepts Python and NumPy reals except bool (TypeError); NaN and Inf raise ValueError."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    if positive and v <= 0:
        raise ValueError(f"{name} must be positive, got {v}")
    if minimum is not None and v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return v


def choice(value, name: str, options) -> str:
    """``value`` if it is one of ``options``, else ValueError listing them."""
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name} must be one of {tuple(options)}, got {value!r}")
    return value


def axis(value, ndim: int, shape=None) -> int:
    """An axis in [-ndim, ndim) as a Python int (TypeError for bool/float)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"axis must be an integer, got {value!r}")
    if not -ndim <= value < ndim:
        raise ValueError(f"axis {value} is out of range for an array of shape "
                         f"{tuple(shape) if shape is not None else ndim}")
    return int(value)


def kind_of(x) -> str:
    """The NumPy dtype kind of an array or tensor: 'f', 'i', 'u', 'b' or 'c'."""
    if is_torch(x):
        if x.is_complex():
            return "c"
        if x.is_floating_point():
            return "f"
        if x.dtype.is_signed:
            return "i"
        return "b" if str(x.dtype) == "torch.bool" else "u"
    return np.asarray(x).dtype.kind


def real_dtype(x, name: str, integers: bool = True) -> None:
    """TypeError unless x has a real dtype (floating; also integer when ``integers``)."""
    kinds = "fiu" if integers else "f"
    k = kind_of(x)
    if k not in kinds:
        what = "real (float or integer dtype)" if integers else "floating-point"
        raise TypeError(f"{name} must be {what}, got dtype {x.dtype}")


def integer_dtype(x, name: str) -> None:
    """TypeError unless x has an integer dtype."""
    if kind_of(x) not in "iu":
        raise TypeError(f"{name} must have an integer dtype, got {x.dtype}")


def finite(x, name: str) -> None:
    """ValueError if the array or tensor x holds a NaN or Inf."""
    ok = bool(x.isfinite().all()) if is_torch(x) else bool(np.isfinite(x).all())
    if not ok:
        raise ValueError(f"{name} contains NaN or Inf")


def ndim(x, n: int, name: str, what: str) -> None:
    """ValueError unless x has ``n`` dimensions; ``what`` describes the expected layout."""
    shape = tuple(x.shape)
    if len(shape) != n:
        raise ValueError(f"{name} must be {what}, got shape {shape}")

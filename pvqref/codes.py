"""What a quantized layer stores, as integers, and the one decoder every path uses.

Every method of :mod:`pvqref.pipeline` codes a weight W' (out, in) -- W itself, or W R^T
in the coordinates of an input rotation R -- into integers and a little side data:

- PVQ methods (pvq, pvq-fb, pvq-h): a :class:`pvqref.gain.QuantizedMatrix`, the pyramid
  index of every group of L input columns, its gain code, and the row norms as stored
  (log-grid codes and their fp32 range, or fp16 values);
- scalar methods (rtn, gptq): a :class:`ScalarCodes`, one integer code of ``bits`` bits
  per weight and an fp16 scale and zero point per group, W' ~ code * scale + zero.

:func:`dequantize` turns either into the float64 reconstruction Q' (on a device, in the
coded coordinates). The pipeline sets a quantized model's weights from this function, and
:mod:`pvqref.packed` reloads a model through it, so a reloaded model has exactly the
quantizer's weights: there is one decoder, not a quantizer's reconstruction and a
loader's. (The index decoding is integer work and the same in every tier; the float
reconstruction is torch float64, so on one device it is the same bits.)

Chapter: Quantizing a real LLaMA model (book/llama.ipynb).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from . import _checks

SCALAR_LAYOUTS = ("flat", "row")


def scalar_grid_shape(shape, group: int, layout: str) -> tuple:
    """The shape of the scales and zero points of :class:`ScalarCodes` of ``layout`` for a
    weight of ``shape`` (m, n). Chapter: Quantizing a real LLaMA model (book/llama.ipynb)."""
    m, n = shape
    return (m * n // group,) if layout == "flat" else (m, -(-n // group))


@dataclass(frozen=True)
class ScalarCodes:
    """Min-max scalar codes of an (m, n) weight: ``codes`` (m, n) uint8, and per group an
    fp16 ``scale`` and ``zero``. ``layout`` "flat": groups of ``group`` consecutive weights
    of the row-major flattened matrix (:func:`pvqref.baselines.rtn_codes`), scale and zero
    of shape (m n / group,); "row": groups of ``group`` consecutive input columns of every
    row, the last one shorter when ``group`` does not divide n (GPTQ's), shape
    (m, ceil(n / group)). Chapter: Quantizing a real LLaMA model (book/llama.ipynb)."""
    shape: tuple
    bits: int
    group: int
    layout: str
    codes: np.ndarray = field(repr=False)
    scale: np.ndarray = field(repr=False)
    zero: np.ndarray = field(repr=False)

    def grid_shape(self) -> tuple:
        """The shape of ``scale`` and ``zero``."""
        return scalar_grid_shape(self.shape, self.group, self.layout)

    def validate(self) -> None:
        """ValueError unless the arrays fit the shape, layout and bits."""
        _checks.choice(self.layout, "layout", SCALAR_LAYOUTS)
        m, n = self.shape
        if self.layout == "flat" and (m * n) % self.group:
            raise ValueError(f"{m * n} weights do not split into flat groups of {self.group}")
        if self.codes.shape != (m, n) or self.codes.dtype != np.uint8:
            raise ValueError(f"codes must be uint8 of shape {(m, n)}, got {self.codes.dtype} "
                             f"{self.codes.shape}")
        for name in ("scale", "zero"):
            a = getattr(self, name)
            if a.shape != self.grid_shape() or a.dtype != np.float16:
                raise ValueError(f"{name} must be float16 of shape {self.grid_shape()}, got "
                                 f"{a.dtype} {a.shape}")
            if not np.all(np.isfinite(a)):
                raise ValueError(f"{name} holds NaN or Inf (corrupt data?)")
        if self.codes.size and int(self.codes.max()) >= 2 ** self.bits:
            raise ValueError(f"codes must lie in 0..{2 ** self.bits - 1} for {self.bits} bits")

    def bit_counts(self) -> dict:
        """Bits stored, by kind (codes, scales, zeros) and in total."""
        c = {"codes": self.codes.size * self.bits, "scales": 16 * self.scale.size,
             "zeros": 16 * self.zero.size}
        c["total"] = sum(c.values())
        return c


def _expand(grid: torch.Tensor, codes: ScalarCodes) -> torch.Tensor:
    """A per-group tensor of ``codes``' layout spread over the (m, n) weights."""
    m, n = codes.shape
    if codes.layout == "flat":
        return grid.repeat_interleave(codes.group).reshape(m, n)
    return grid.repeat_interleave(codes.group, dim=1)[:, :n]


def _scalar_dequantize(codes: ScalarCodes, device) -> torch.Tensor:
    q = torch.from_numpy(codes.codes).to(device=device, dtype=torch.float64)
    scale, zero = (_expand(torch.from_numpy(a.astype(np.float64)).to(device), codes)
                   for a in (codes.scale, codes.zero))
    return q * scale + zero


def scalar_codes(Q, scale, zero, bits: int, group: int, layout: str) -> ScalarCodes:
    """The ScalarCodes of a reconstruction Q (out, in) on the grid (scale, zero) of
    ``layout`` (float64 holding fp16 values, as :func:`pvqref.hessian.gptq_quantize` with
    ``return_grid`` and :func:`pvqref.baselines.rtn_codes` return them): each code is
    recovered as round((Q - zero) / scale), and decoding the codes must give Q exactly
    (else RuntimeError: Q was not on that grid). Chapter: Quantizing a real LLaMA model
    (book/llama.ipynb)."""
    if bits > 8:
        raise ValueError(f"packed scalar codes hold at most 8 bits, got {bits}")
    Q = torch.as_tensor(Q).to(torch.float64).cpu()
    m, n = Q.shape
    scale16 = np.asarray(torch.as_tensor(scale).cpu(), dtype=np.float16)
    zero16 = np.asarray(torch.as_tensor(zero).cpu(), dtype=np.float16)
    proto = ScalarCodes((m, n), bits, group, layout, np.zeros((m, n), np.uint8), scale16,
                        zero16)
    s, z = (_expand(torch.from_numpy(a.astype(np.float64)), proto) for a in (scale16, zero16))
    q = torch.round((Q - z) / torch.where(s > 0, s, 1.0)).clamp(0, 2 ** bits - 1)
    out = ScalarCodes((m, n), bits, group, layout, q.to(torch.uint8).numpy(), scale16, zero16)
    out.validate()
    if not torch.equal(_scalar_dequantize(out, "cpu"), Q):
        raise RuntimeError("the reconstruction is not on the given grid: its codes do not "
                           "decode back to it")
    return out


def pvq_codes(result):
    """The :class:`pvqref.gain.QuantizedMatrix` of a :class:`pvqref.hessian.PVQResult`
    (input orientation): the points enumerated into pyramid indices (Numba tier), the gain
    codes and the norms as stored. Chapter: Quantizing a real LLaMA model
    (book/llama.ipynb)."""
    from . import gain, pyramid
    if result.orientation != "input" or result.stored_norms is None:
        raise ValueError("only input-oriented PVQ results with their stored norms can be "
                         "packed")
    cfg = result.config
    points = np.asarray(torch.as_tensor(result.points).cpu(), dtype=np.int64)
    m, n = points.shape
    limbs = pyramid.encode_batch(points.reshape(-1, cfg.L), cfg.K, backend="numba")
    codes = np.asarray(torch.as_tensor(result.gain_codes).cpu()).reshape(-1)
    Q = gain.QuantizedMatrix((m, n), cfg, result.stored_norms,
                             np.ascontiguousarray(np.asarray(limbs).view(np.uint64)),
                             codes.astype(np.uint16), np.asarray(result.norm_range, np.float32))
    Q.validate()
    return Q


@dataclass(frozen=True)
class RowGroupCodes:
    """A weight (m, n) coded as row groups (RSAVQ's WCSG: :mod:`pvqref.rsavq.wcsg`):
    ``rows`` the row indices of each group, ``parts`` each group's QuantizedMatrix (its
    rows in increasing order, its own format). Chapter: RSAVQ's natural-gradient error
    projection (book/rsavq.ipynb)."""
    shape: tuple
    rows: tuple = field(repr=False)
    parts: tuple = field(repr=False)

    def validate(self) -> None:
        order = np.sort(np.concatenate(self.rows))
        if not np.array_equal(order, np.arange(self.shape[0])):
            raise ValueError("the row groups must partition the rows of the weight")
        for r, part in zip(self.rows, self.parts):
            if tuple(part.shape) != (len(r), self.shape[1]):
                raise ValueError(f"a row group of {len(r)} rows holds a part of shape "
                                 f"{tuple(part.shape)}")

    def bit_counts(self) -> dict:
        """The parts' bits, by kind, plus each row's group label ("row_group",
        ceil(log2 groups) bits per row)."""
        total: dict = {"row_group": self.shape[0] * int(len(self.parts) - 1).bit_length()}
        for part in self.parts:
            for k, v in bit_counts(part).items():
                total[k] = total.get(k, 0) + v
        total["total"] += total["row_group"]
        return total


def dequantize(codes, device=None) -> torch.Tensor:
    """The float64 reconstruction Q' (out, in) of ``codes`` (a QuantizedMatrix, a
    ScalarCodes or a RowGroupCodes) on ``device`` (default CPU): the decoder of the
    pipeline and of every reload. Chapter: Quantizing a real LLaMA model
    (book/llama.ipynb)."""
    from . import gain
    from .vq import VQCodes
    device = torch.device(device or "cpu")
    if isinstance(codes, VQCodes):
        return torch.from_numpy(codes.dequantize()).to(device)
    if isinstance(codes, RowGroupCodes):
        codes.validate()
        Q = torch.empty(codes.shape, dtype=torch.float64, device=device)
        for rows, part in zip(codes.rows, codes.parts):
            Q[torch.as_tensor(rows, device=device)] = dequantize(part, device)
        return Q
    if isinstance(codes, ScalarCodes):
        codes.validate()
        return _scalar_dequantize(codes, device)
    if isinstance(codes, gain.QuantizedMatrix):
        index_backend = "numba" if device.type == "cpu" else "torch"
        return gain.dequantize(codes, backend="torch", device=device,
                               index_backend=index_backend)
    raise TypeError(f"expected a QuantizedMatrix or ScalarCodes (or RowGroupCodes), got "
                    f"{type(codes).__name__}")


def bit_counts(codes) -> dict:
    """Bits stored by ``codes``, by kind, with their "total" (the per-matrix header and
    checksum of a PVQ stream are not counted here: a packed model checksums each tensor in
    its file header). Chapter: Quantizing a real LLaMA model (book/llama.ipynb)."""
    c = dict(codes.bit_counts())
    if isinstance(codes, RowGroupCodes):
        return c
    if "matrix" in c:                 # gain's stream header: version byte, CRC, norm range
        norm_range = c.pop("matrix")
        c["norm_range"] = 64 if codes.config.norm_bits < 16 else 0
        c["total"] -= norm_range - c["norm_range"]
    return c

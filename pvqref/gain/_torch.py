"""The torch tier of the gain quantizer: tensor ops over a batch, on the input's device.

Chapter: Gain quantization (book/gain.ipynb), "Throughput of the tiers". Same functions as
the reference tier (reference.py, where they are explained); float64 throughout. Row-norm
codes agree with the other tiers bit for bit given the same norms (the same float64
thresholds); gain codes can differ only where t is within rounding of a threshold, since
torch sums in its own order. Imports torch, not Numba.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import _tiers, pyramid
from ..format import FP16_NORMS
from .norms import (FP16_MAX, FP16_MIN_NORMAL, fp16_norms, fp32_norm_range, norm_levels,
                    norm_thresholds)


def matrix(W):
    """(X, r): W as a float64 tensor on its device (NumPy input is wrapped; a tensor is read
    detached) and its row norms."""
    X = _tiers.to_torch(W).detach().to(torch.float64)
    return X, torch.linalg.vector_norm(X, dim=1)


def row_norms(r, bits: int):
    """(stored tensor, norm range as NumPy, decoded float64 tensor) for float64 norms r."""
    if bits == FP16_NORMS:
        bad = (r > FP16_MAX) | ((r > 0) & (r < FP16_MIN_NORMAL))
        if bool(bad.any()):
            fp16_norms(r.cpu().numpy())                   # raises with the message
        stored = r.to(torch.float16)
        return stored, np.zeros(0, dtype=np.float32), stored.to(torch.float64)
    nz = r > 0
    r_min = float(r[nz].min()) if bool(nz.any()) else 0.0
    norm_range = fp32_norm_range(r_min, float(r.max()))
    levels = norm_levels(norm_range[0], norm_range[1], bits)
    th = torch.as_tensor(norm_thresholds(levels), device=r.device)
    levels = torch.as_tensor(levels, device=r.device)
    codes = torch.where(nz, 1 + torch.searchsorted(th, r.contiguous(), right=False),
                        torch.zeros_like(r, dtype=torch.int64))
    return codes, norm_range, levels[codes]


def groups(G, rg, K: int, thresholds, ls: bool):
    """(Y, codes) of every group; G, rg float64 tensors on one device, results on it."""
    dev = G.device
    Y = torch.zeros(G.shape, dtype=torch.int64, device=dev)
    Y[:, 0] = K                                           # the fixed point of zero groups
    nz = (G != 0).any(dim=1)
    if bool(nz.any()):
        Y[nz] = pyramid.search_batch(G[nz], K, backend="torch").to(dev)
    Yf = Y.to(torch.float64)
    if ls:
        t = (G * Yf).sum(dim=1) / torch.linalg.vector_norm(Yf, dim=1)
    else:
        t = torch.linalg.vector_norm(G, dim=1)
    t = torch.where(nz, t / torch.where(nz, rg, torch.ones_like(rg)), torch.zeros_like(t))
    th = torch.as_tensor(thresholds, dtype=torch.float64, device=dev)
    return Y, torch.searchsorted(th, t.contiguous(), right=False)


def reconstruct(Y, codes, rg, levels):
    """The decoded groups, a float64 tensor: w_g = r * t_c * y / ||y||."""
    Yf = Y.to(torch.float64)
    lv = torch.as_tensor(levels, dtype=torch.float64, device=Y.device)
    gain = rg.to(torch.float64) * lv[codes.long()]
    return gain[:, None] * Yf / torch.linalg.vector_norm(Yf, dim=1, keepdim=True)

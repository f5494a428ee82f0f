"""Vector quantization with k-means codebooks: the base quantizer of the faithful RSAVQ.

RSAVQ builds on VPTQ: weights cut into short vectors (length v = 6), each replaced by the
nearest entry of a k-means codebook, with GPTQ's error feedback. Our reconstruction of it
(VPTQ's own code is not used; where its paper leaves a choice, ours is named):

- vectors run along the *output* dimension: column j of W (m, n) is cut into m / v
  vectors of v consecutive rows, so that one column is quantized at a time and its error
  fed forward exactly as GPTQ's (``X_R <- X_R - e_j C_jR / C_jj``);
- the codebook of a layer is trained on its own weights by k-means weighted by the
  Hessian's diagonal (a vector of column j counts H_jj), from ``k`` distinct vectors drawn
  with a seeded generator, ``iters`` Lloyd iterations;
- more bits come from residual stages: stage s quantizes what the stages before it left,
  with its own codebook of 2^{k_s} entries (trained on the original weights' residuals);
- every codebook is stored in fp16 and counted: bits = sum_s k_s m n / v +
  sum_s 2^{k_s} v 16. On a 135M-parameter model this side data is large (a 12-bit
  codebook costs 1.19 bits per weight of a 576 x 576 layer), so :func:`plan_stages` picks
  the stages that give the most index bits within the budget, codebooks included.

Tiers (``backend=``) for the nearest-centroid search, the part that costs (N x k x v per
pass): "reference" (NumPy), "numba" (parallel loops), "torch" (the inputs' device); all
three sum distances in the same order and agree exactly. The feedback loop runs in NumPy,
or in torch on the weight's device with ``backend="torch"`` (the whole quantizer then
stays on a GPU), as in :mod:`pvqref.hessian`.

Chapter: RSAVQ's natural-gradient error projection (book/rsavq.ipynb).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .. import _checks, _tiers

VECTOR = 6                 # VPTQ's and RSAVQ's vector length
MAX_INDEX_BITS = 12        # codebooks of up to 4096 entries (k-means cost grows with 2^k)
DEFAULT_ITERS = 10


def _tier(backend, *inputs):
    b = _tiers.resolve(backend, *inputs)
    return _tiers.load("pvqref.vq", b), b


def _framework(x, b):
    if b == "torch":
        import torch
        return _tiers.to_torch(x).to(torch.float64)
    return _tiers.to_numpy(x, np.float64).astype(np.float64)


def assign(X, codebook, backend: str = "auto"):
    """The index (int64) of the nearest codebook entry of every row of X (N, v), the
    lowest index on exact ties; like X (NumPy or a tensor on X's device)."""
    if X.ndim != 2 or codebook.ndim != 2 or X.shape[1] != codebook.shape[1]:
        raise ValueError(f"vectors {tuple(X.shape)} and codebook {tuple(codebook.shape)} "
                         f"must be 2-D with the same vector length")
    tier, b = _tier(backend, X, codebook)
    Xf = _framework(X, b)
    Cf = _framework(codebook, b)
    if b == "torch":
        Cf = Cf.to(Xf.device)
    return tier.assign(Xf, Cf)


def kmeans(X, k: int, weights=None, iters: int = DEFAULT_ITERS, seed: int = 0,
           backend: str = "auto"):
    """A k-entry codebook (k, v) float64 for the vectors X (N, v) by weighted k-means:
    k distinct vectors drawn by numpy Generator(seed) to start, ``iters`` rounds of
    assignment and weighted means (an emptied entry moves to the vector it serves worst).
    ValueError if there are fewer vectors than entries."""
    k = _checks.integer(k, "k", 1)
    iters = _checks.integer(iters, "iters", 0)
    tier, b = _tier(backend, X)
    Xf = _framework(X, b)
    if len(Xf) < k:
        raise ValueError(f"{len(Xf)} vectors cannot train a codebook of {k} entries")
    w = np.ones(len(Xf)) if weights is None else _tiers.to_numpy(weights, np.float64)
    if w.shape != (len(Xf),) or np.any(w < 0) or not np.all(np.isfinite(w)):
        raise ValueError("weights must be finite, non-negative, one per vector")
    wf = _framework(w, b)
    if b == "torch":
        wf = wf.to(Xf.device)
    start = np.sort(np.random.default_rng(seed).choice(len(Xf), k, replace=False))
    C = Xf[_tiers.to_torch(start).to(Xf.device) if b == "torch" else start]
    from . import reference
    update = tier.update if b == "torch" else reference.update     # NumPy scatter otherwise
    for _ in range(iters):
        C = update(Xf, wf, tier.assign(Xf, C), C)
    return C


def vectors(W, v: int = VECTOR):
    """The column-direction vectors of W (m, n): (n m / v, v), column 0's m / v vectors
    first, each v consecutive rows of one column."""
    m, n = W.shape
    if m % v:
        raise ValueError(f"the output dimension {m} is not divisible by the vector length {v}")
    return W.T.reshape(n * m // v, v)


def stage_bits(shape, index_bits, v: int = VECTOR) -> int:
    """Every bit a layer of ``shape`` stores with stages of ``index_bits``: the indices
    (k_s bits per vector per stage) and each stage's fp16 codebook (2^k_s x v x 16)."""
    m, n = shape
    return sum(k * m * n // v + (2 ** k) * v * 16 for k in index_bits)


def plan_stages(shape, bpw: float, v: int = VECTOR, max_stages: int = 2) -> tuple:
    """The index bits per stage (k_1 >= k_2 >= ..., at most ``max_stages`` stages of at
    most MAX_INDEX_BITS) with the most index bits whose :func:`stage_bits` fit ``bpw``
    bits per weight; fewer stages on ties. ValueError if not even one 1-bit stage fits."""
    m, n = shape
    budget = math.floor(_checks.real(bpw, "bpw", positive=True) * m * n)
    best = None
    for count in range(1, max_stages + 1):
        for ks in _non_increasing(count, MAX_INDEX_BITS):
            if stage_bits(shape, ks, v) <= budget and (
                    best is None or sum(ks) > sum(best)):
                best = ks
    if best is None:
        raise ValueError(f"no codebook fits {bpw} bits per weight for shape {tuple(shape)} "
                         f"with vectors of {v}")
    return best


def _non_increasing(count, top):
    if count == 0:
        yield ()
        return
    for k in range(top, 0, -1):
        for rest in _non_increasing(count - 1, k):
            yield (k,) + rest


@dataclass(frozen=True)
class VQCodes:
    """A VQ-coded weight (m, n): per stage a codebook (2^k_s, v) of fp16 values and the
    indices (n, m / v) of column j's vectors in row j (what a file stores)."""
    shape: tuple
    v: int
    codebooks: tuple = field(repr=False)
    indices: tuple = field(repr=False)

    def validate(self) -> None:
        """ValueError unless the codebooks and indices fit the shape and each other."""
        m, n = self.shape
        if m % self.v or len(self.codebooks) != len(self.indices) or not self.codebooks:
            raise ValueError(f"VQ codes of shape {self.shape} with vectors of {self.v} "
                             f"need one index array per codebook")
        for book, idx in zip(self.codebooks, self.indices):
            k = len(book)
            if k & (k - 1) or book.shape != (k, self.v):
                raise ValueError(f"a codebook has shape {book.shape}: not 2^k x {self.v}")
            if idx.shape != (n, m // self.v) or idx.min() < 0 or idx.max() >= k:
                raise ValueError(f"indices of shape {idx.shape} (range {idx.min()}.."
                                 f"{idx.max()}) do not fit a codebook of {k} entries")

    @property
    def index_bits(self) -> tuple:
        return tuple(int(len(c)).bit_length() - 1 for c in self.codebooks)

    def bit_counts(self) -> dict:
        m, n = self.shape
        idx = sum(k * m * n // self.v for k in self.index_bits)
        book = sum(c.size * 16 for c in self.codebooks)
        return {"indices": idx, "codebooks": book, "total": idx + book}

    def dequantize(self):
        """The float64 reconstruction (m, n) NumPy."""
        m, n = self.shape
        Q = np.zeros((n, m // self.v, self.v))
        for C, idx in zip(self.codebooks, self.indices):
            Q += C.astype(np.float64)[idx]
        return Q.reshape(n, m).T.copy()

"""RSAVQ: the Fisher geometry of weight space, natural-gradient error projection (EDSG)
and channel bit allocation (WCSG).

Information geometry in one paragraph. Moving a model's weights by a small dW changes its
next-token distributions by KL(p_W || p_{W+dW}) ~ 1/2 dW^T F dW, where F = E[s s^T] is
the Fisher information, s = grad log p the score. F is the metric of weight space in which
"how far did the model move" means "how much did its predictions change". The natural
gradient F^{-1} g (g = grad L) is the steepest-descent direction of the loss in that
metric.

The Fisher of one linear layer (W: out x in). With per-sequence gradients G_s (out, in)
on the calibration windows, the empirical Fisher E[vec G_s vec G_s^T] has (out in)^2
entries, too many. RSAVQ approximates it by a Kronecker product of an output factor and
an input factor; our reading of the paper (``../shared/notes/papers.md`` section 5):

    A = E[G_s G_s^T]  (out, out),   B = E[G_s^T G_s]  (in, in),   F ~ (A kron B) / s,

with the scale s = E ||G_s||^2 = tr A = tr B, which the paper leaves open. We choose it
because it makes the approximation exact when every G_s is the same rank-one matrix and
keeps tr F exact in general (a test checks both). F acts on a matrix X as
F X = A X B / s, so the natural gradient is F^{-1} g = s A^{-1} g B^{-1} (two Cholesky
solves), and the Fisher norm is ||X||_F^2 = tr(A X B X^T) / s. The diagonal variant keeps
D = E[G_s * G_s] (elementwise). Both are damped like GPTQ's Hessian: ``damp`` x the mean
diagonal added to each factor.

EDSG (error direction sensitivity guidance). To second order the loss after quantizing
W to Q = W + E is L + <g, E> + 1/2 ||E||_F^2 (with F standing in for the loss Hessian),
which is minimised by E = -F^{-1} g. RSAVQ steers the error toward a fraction of it,

    minimise || E + lambda F^{-1} g ||_F^2,   i.e. quantize the shifted target
    T = W - lambda F^{-1} g  instead of W,

so that What - W points downhill: <g, E> ~ -lambda g^T F^{-1} g < 0. The paper's text
writes the sign both ways; this is the sign for which the first-order loss change is
negative, and the chapter measures both signs (:func:`edsg_target`). lambda = 0 gives the
base quantizer's target exactly. The paper's lambda (0.01 to 0.1) cannot be meant for the
raw F^{-1} g: on SmolLM2 (block 15, 16 windows of 512 tokens, damp 1%) ||F^{-1} g|| is
1e7 to 6e7 against ||W|| of 60 to 180, so lambda = 0.05 would move every weight by
thousands of times its size. We reconstruct lambda as a *relative* step (``step=
"relative"``, the default): the direction of F^{-1} g scaled to lambda ||W||_F, so that
lambda = 0.05 moves W by 5% of its norm, the size of a 4-bit quantization error;
``step="raw"`` keeps the literal formula.

WCSG (weighted channel sensitivity guidance). Output channel c's sensitivity is
I_c = 1/2 g_c F_c^{-1} g_c^T + 1 (g_c its gradient row, F_c its block of F; the +1 keeps
log2 I_c >= 0), and bits are allocated to channels by the paper's rule or the exact
Lagrange optimum of the distortion model sum_c I_c 2^{-2 b_c}
(:mod:`pvqref.rsavq.allocation`).

Contents: :class:`KroneckerFisher`, :class:`DiagonalFisher` (both with
``natural_gradient``, ``norm2``, ``sensitivity``), :class:`FisherAccumulator` (the factors
from per-sequence gradients, accumulated: memory (out^2 + in^2) per layer, never a
gradient per sequence kept), :func:`edsg_target`; :mod:`pvqref.rsavq.fisher` collects
them from a model, :mod:`pvqref.rsavq.allocation` allocates bits.

Tiers (``backend=``): "reference" is NumPy float64 (``reference.py``); "torch"
(``_torch.py``) runs on the factors' device. There is no Numba tier here: every step is a
Cholesky solve or a matrix product that LAPACK/BLAS already runs at full speed.

Chapter: RSAVQ's natural-gradient error projection (book/rsavq.ipynb).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import _checks, _tiers

__all__ = ["KroneckerFisher", "DiagonalFisher", "FisherAccumulator", "edsg_target",
           "edsg_shifts", "DEFAULT_DAMP", "DEFAULT_LAMBDA"]

DEFAULT_DAMP = 0.01          # 1% of the mean diagonal, as GPTQ's Hessian
DEFAULT_LAMBDA = 0.05        # the paper's default step (its range: 0.01 to 0.1)


def _tier(backend, *inputs):
    b = _tiers.resolve(backend, *inputs)
    return _tiers.load("pvqref.rsavq", "torch" if b == "torch" else "reference")


def _float64(x, tier, like=None):
    """x as float64 in the tier's framework (for torch on ``like``'s device, if a tensor)."""
    if tier.__name__.endswith("_torch"):
        import torch
        device = like.device if _tiers.is_torch(like) else None
        return _tiers.to_torch(x).to(device=device, dtype=torch.float64)
    return _tiers.to_numpy(x, np.float64).astype(np.float64)


def _check_matrix(x, shape, name: str):
    if tuple(getattr(x, "shape", ())) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got "
                         f"{tuple(getattr(x, 'shape', ()))}")
    _checks.real_dtype(x, name, integers=False)
    _checks.finite(x, name)


def _damped(M, damp: float, name: str):
    """M + damp * mean(diag M) I, float64 NumPy; ValueError if M is not a usable factor."""
    M = _tiers.to_numpy(M, np.float64).astype(np.float64)
    d = np.diag(M)
    if d.min() < 0 or not d.max() > 0:
        raise ValueError(f"the Fisher factor {name} is singular (its diagonal is "
                         f"{'negative somewhere' if d.min() < 0 else 'all zero'}): no "
                         f"gradient reached this layer")
    return M + damp * d.mean() * np.eye(len(M))


@dataclass(frozen=True)
class KroneckerFisher:
    """F ~ (A kron B) / scale for a layer (out, in): ``A`` (out, out) and ``B`` (in, in)
    the damped factors (float64), ``scale`` = E ||G_s||^2. Build with :meth:`from_factors`
    or :class:`FisherAccumulator`."""
    A: object
    B: object
    scale: float

    @classmethod
    def from_factors(cls, A, B, scale: float, damp: float = DEFAULT_DAMP):
        """Checked and damped (``damp`` x each factor's mean diagonal added to it)."""
        damp = _checks.real(damp, "damp", minimum=0.0)
        scale = _checks.real(scale, "scale", positive=True)
        for M, name in ((A, "A"), (B, "B")):
            if len(getattr(M, "shape", ())) != 2 or M.shape[0] != M.shape[1]:
                raise ValueError(f"the Fisher factor {name} must be square, got shape "
                                 f"{tuple(getattr(M, 'shape', ()))}")
            _checks.finite(M, f"the Fisher factor {name}")
        return cls(_damped(A, damp, "A"), _damped(B, damp, "B"), scale)

    @property
    def shape(self):
        return (self.A.shape[0], self.B.shape[0])

    def dense(self) -> np.ndarray:
        """The (out in, out in) matrix acting on row-major vec(X): small sizes only."""
        return np.kron(self.A, self.B) / self.scale

    def apply(self, X, backend: str = "auto"):
        """F X = A X B / scale."""
        _check_matrix(X, self.shape, "X")
        t = _tier(backend, X)
        return _tiers.like(t.kronecker_apply(*(_float64(v, t, X) for v in (self.A, self.B)),
                                             self.scale, _float64(X, t)), X)

    def natural_gradient(self, g, backend: str = "auto"):
        """F^{-1} g = scale A^{-1} g B^{-1} for a gradient g (out, in), like g."""
        _check_matrix(g, self.shape, "the gradient")
        t = _tier(backend, g)
        N = t.kronecker_natural_gradient(*(_float64(v, t, g) for v in (self.A, self.B)),
                                         self.scale, _float64(g, t))
        return _tiers.like(N, g)

    def norm2(self, X, backend: str = "auto") -> float:
        """||X||_F^2 = tr(A X B X^T) / scale."""
        _check_matrix(X, self.shape, "X")
        t = _tier(backend, X)
        return t.kronecker_norm2(*(_float64(v, t, X) for v in (self.A, self.B)), self.scale,
                                 _float64(X, t))

    def sensitivity(self, g, backend: str = "auto") -> np.ndarray:
        """I_c = 1/2 g_c F_c^{-1} g_c^T + 1 per output channel (out,) float64."""
        _check_matrix(g, self.shape, "the gradient")
        t = _tier(backend, g)
        s = t.kronecker_sensitivity(*(_float64(v, t, g) for v in (self.A, self.B)),
                                    self.scale, _float64(g, t))
        return _tiers.to_numpy(s, np.float64)


@dataclass(frozen=True)
class DiagonalFisher:
    """The diagonal Fisher D = E[G_s * G_s] (out, in), damped, float64."""
    D: object

    @classmethod
    def from_diagonal(cls, D, damp: float = DEFAULT_DAMP):
        damp = _checks.real(damp, "damp", minimum=0.0)
        if len(getattr(D, "shape", ())) != 2:
            raise ValueError(f"the diagonal Fisher must be (out, in), got shape "
                             f"{tuple(getattr(D, 'shape', ()))}")
        _checks.finite(D, "the diagonal Fisher")
        D = _tiers.to_numpy(D, np.float64).astype(np.float64)
        if D.min() < 0 or not D.max() > 0:
            raise ValueError("the diagonal Fisher is singular (negative or all zero): no "
                             "gradient reached this layer")
        return cls(D + damp * D.mean())

    @property
    def shape(self):
        return self.D.shape

    def dense(self) -> np.ndarray:
        return np.diag(self.D.ravel())

    def apply(self, X, backend: str = "auto"):
        _check_matrix(X, self.shape, "X")
        t = _tier(backend, X)
        return _tiers.like(_float64(self.D, t, X) * _float64(X, t), X)

    def natural_gradient(self, g, backend: str = "auto"):
        _check_matrix(g, self.shape, "the gradient")
        t = _tier(backend, g)
        return _tiers.like(t.diagonal_natural_gradient(_float64(self.D, t, g), _float64(g, t)), g)

    def norm2(self, X, backend: str = "auto") -> float:
        _check_matrix(X, self.shape, "X")
        t = _tier(backend, X)
        return t.diagonal_norm2(_float64(self.D, t, X), _float64(X, t))

    def sensitivity(self, g, backend: str = "auto") -> np.ndarray:
        _check_matrix(g, self.shape, "the gradient")
        t = _tier(backend, g)
        return _tiers.to_numpy(t.diagonal_sensitivity(_float64(self.D, t, g), _float64(g, t)),
                               np.float64)


class FisherAccumulator:
    """Running sums over per-sequence gradients G_s (out, in) of one layer: sum G G^T,
    sum G^T G (``kind="kronecker"``) or sum G * G (``"diagonal"``), sum G and the count,
    in float64 on the gradients' device. :meth:`fisher` damps and returns the Fisher,
    :meth:`mean_gradient` the mean g. A non-finite gradient is refused when added."""

    KINDS = ("kronecker", "diagonal")

    def __init__(self, shape, kind: str = "kronecker", name: str = "layer"):
        self.kind = _checks.choice(kind, "kind", self.KINDS)
        self.shape, self.name = tuple(shape), name
        self.count, self._sums = 0, None

    def add(self, G) -> None:
        import torch
        G = _tiers.to_torch(G)
        if tuple(G.shape) != self.shape:
            raise ValueError(f"a gradient of {self.name} has shape {tuple(G.shape)}, "
                             f"expected {self.shape}")
        if not torch.isfinite(G).all():
            raise ValueError(f"a gradient of {self.name} is not finite (NaN or Inf): the "
                             f"calibration loss overflowed; check the model's dtype")
        G = G.detach().to(torch.float64)
        terms = (G @ G.T, G.T @ G) if self.kind == "kronecker" else (G * G,)
        terms += (G, (G * G).sum())
        if self._sums is None:
            self._sums = [t.clone() for t in terms]
        else:
            for s, t in zip(self._sums, terms):
                s += t
        self.count += 1

    def _mean(self, i):
        if self.count == 0:
            raise ValueError(f"no gradients of {self.name} were collected")
        return (self._sums[i] / self.count).cpu().numpy()

    def mean_gradient(self) -> np.ndarray:
        """g = E[G_s] (out, in) float64."""
        return self._mean(-2)

    def fisher(self, damp: float = DEFAULT_DAMP):
        """The damped :class:`KroneckerFisher` or :class:`DiagonalFisher`."""
        if self.kind == "diagonal":
            return DiagonalFisher.from_diagonal(self._mean(0), damp)
        scale = float(self._mean(-1))
        if not scale > 0:
            raise ValueError(f"every gradient of {self.name} is zero: the Fisher is singular")
        return KroneckerFisher.from_factors(self._mean(0), self._mean(1), scale, damp)


STEPS = ("relative", "raw")


def _step(N, W, step: str):
    """The natural gradient N scaled as ``step`` says: "raw" as it is; "relative" to the
    Frobenius norm of W, N ||W|| / ||N|| (so lam is the size of the move as a fraction of
    the weight's)."""
    if step == "raw":
        return N
    n = float(np.linalg.norm(N))
    return N * (float(np.linalg.norm(W)) / n) if n > 0 else N


def edsg_target(W, fisher, g, lam: float = DEFAULT_LAMBDA, step: str = "relative",
                backend: str = "auto"):
    """EDSG's target T = W - lam N, N = F^{-1} g scaled by ``step`` (see the module
    docstring: "relative", the default, makes lam a fraction of ||W||; "raw" is the paper's
    formula read literally), like W: quantizing T instead of W steers the error What - W
    toward -lam N, downhill in the Fisher metric. ``lam`` = 0 returns W itself (the base
    quantizer's target); a negative ``lam`` is the opposite sign, kept for the measurement
    that picks the sign."""
    lam = _checks.real(lam, "lam")
    step = _checks.choice(step, "step", STEPS)
    _check_matrix(W, fisher.shape, "W")
    if lam == 0:
        return W
    W64 = _tiers.to_numpy(W, np.float64).astype(np.float64)
    N = _step(_tiers.to_numpy(fisher.natural_gradient(g, backend), np.float64), W64, step)
    T = W64 - lam * N
    if _tiers.is_torch(W):
        return _tiers.to_torch(T).to(device=W.device, dtype=W.dtype)
    return T.astype(W.dtype)


def edsg_shifts(fishers: dict, weights: dict, lam: float = DEFAULT_LAMBDA,
                step: str = "relative") -> dict:
    """{layer name: -lam N} (float64 NumPy), N = F^{-1} g scaled by ``step`` against the
    layer's weight in ``weights`` ({name: W}), for each layer's
    :class:`pvqref.rsavq.fisher.LayerFisher`: the ``shifts`` of
    :func:`pvqref.pipeline.quantize_model`,
    which then codes every layer's EDSG target W - lam N. ``lam`` = 0: no shifts (an empty
    dict: the base quantizer, bit for bit)."""
    lam = _checks.real(lam, "lam")
    step = _checks.choice(step, "step", STEPS)
    if lam == 0:
        return {}
    out = {}
    for name, f in fishers.items():
        W = _tiers.to_numpy(weights[name], np.float64).astype(np.float64)
        out[name] = -lam * _step(np.asarray(f.fisher.natural_gradient(f.gradient),
                                            np.float64), W, step)
    return out

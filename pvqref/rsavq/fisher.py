"""Collecting each linear layer's Fisher and mean gradient from per-sequence gradients.

For every calibration window s the model's mean next-token loss on s is back-propagated
once, and each chosen layer's weight gradient G_s (out, in) is added to that layer's
:class:`pvqref.rsavq.FisherAccumulator` and dropped: what is held is the accumulated
factors (out^2 + in^2 float64 per layer, or out x in for the diagonal), never a gradient
per sequence. The gradients are those of the *unquantized* model, computed once before
quantizing (the paper's setting; GPTQ's sequential order applies to the Hessians only).

Cost: one forward and backward pass per window, plus two products G G^T and G^T G per
layer and window (for SmolLM2-135M about 0.2 TFLOP per window in all, the products
dominating).

Chapter: RSAVQ's natural-gradient error projection (book/rsavq.ipynb).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import DEFAULT_DAMP, FisherAccumulator


@dataclass(frozen=True)
class LayerFisher:
    """One layer's damped Fisher (``KroneckerFisher`` or ``DiagonalFisher``), its mean
    gradient g (out, in) float64 and the number of sequences it came from."""
    fisher: object
    gradient: np.ndarray
    sequences: int


def linear_layers(model, blocks=None) -> list:
    """Names of the nn.Linear layers inside the decoder blocks (all, or those of the
    block indices ``blocks``), in model order."""
    n = len(model.model.layers)
    keep = set(range(n) if blocks is None else blocks)
    bad = sorted(b for b in keep if not 0 <= b < n)
    if bad:
        raise ValueError(f"block {bad[0]} does not exist (the model has {n} blocks)")
    return [name for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and name.startswith("model.layers.")
            and int(name.split(".")[2]) in keep]


def layer_fishers(model, windows: torch.Tensor, layers=None, kind: str = "kronecker",
                  damp: float = DEFAULT_DAMP, progress=None) -> dict:
    """{layer name: :class:`LayerFisher`} for ``layers`` (default every decoder-block
    linear layer) from one backward pass per row of ``windows`` (n, T) int64: the
    model's mean loss on the window, predicting each token from those before it. The
    model's parameters are left as they were (values and requires_grad).
    ``progress``: a callable wrapping the window iterator (e.g. tqdm)."""
    layers = linear_layers(model) if layers is None else list(layers)
    weights = {name: model.get_submodule(name).weight for name in layers}
    accs = {name: FisherAccumulator(tuple(w.shape), kind, name) for name, w in weights.items()}
    flags = {p: p.requires_grad for p in model.parameters()}
    rows = windows if progress is None else progress(windows)
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for w in weights.values():
            w.requires_grad_(True)
        with torch.enable_grad():
            for row in rows:
                ids = row[None].to(model.device)
                loss = model(ids, labels=ids, use_cache=False).loss
                loss.backward()
                for name, w in weights.items():
                    accs[name].add(w.grad)
                    w.grad = None
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
            p.grad = None
    return {name: LayerFisher(acc.fisher(damp), acc.mean_gradient(), acc.count)
            for name, acc in accs.items()}


def similarity(B, H) -> dict:
    """How alike two (n, n) metrics are, e.g. a layer's Fisher input factor B and its
    Hessian H = E[x x^T]: ``cosine``, <B, H> / (||B|| ||H||) (1: the same up to scale);
    ``diagonal``, the correlation of log diagonals (do they rank the inputs alike?); and
    ``top``, the overlap of their leading 8 eigenvectors' spans (mean squared cosine, 1 for
    the same subspace, 8/n for unrelated ones).
    Chapter: RSAVQ's natural-gradient error projection (book/rsavq.ipynb)."""
    B = np.asarray(B, dtype=np.float64)
    H = np.asarray(H, dtype=np.float64)
    cosine = float(np.sum(B * H) / (np.linalg.norm(B) * np.linalg.norm(H)))
    lb, lh = np.log(np.diag(B)), np.log(np.maximum(np.diag(H), 1e-300))
    diagonal = float(np.corrcoef(lb, lh)[0, 1])
    k = min(8, len(B))
    vb = np.linalg.eigh(B)[1][:, -k:]
    vh = np.linalg.eigh(H)[1][:, -k:]
    top = float(np.sum((vb.T @ vh) ** 2) / k)
    return {"cosine": cosine, "diagonal": diagonal, "top": top}

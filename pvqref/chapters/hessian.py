"""The Hessian chapter's experiments, tables and figures.

The chapter measures quantization error where it acts, on a layer's outputs
(:func:`pvqref.hessian.proxy_loss`), on the four distinct inputs of SmolLM2's block 15, and
then on the whole model. The algorithms live in :mod:`pvqref.hessian` (GPTQ, PVQ with
block feedback, the metric search), :mod:`pvqref.hessian.calibration` (the second moments
H) and :mod:`pvqref.pipeline` (layer plans, the whole-model quantizer); this module only
runs them over the layers and the recorded runs and presents the results:

- the second moments: :func:`block_weights`, :func:`spectrum`, :func:`spectra_table`,
  :func:`spectra_figure`; GPTQ against its peer: :func:`peer_table`;
- one block, one layer at a time: :func:`pvq`, :func:`orientation_table`,
  :func:`moved_share`, :func:`search_table`, :func:`group_size_table`,
  :func:`methods_table`;
- where the rotation goes: :func:`hot_channel_figure`, :func:`rotation_table`,
  :func:`rotation_grid_table`;
- the whole model (``bench.load("hessian_models")``, recorded by
  ``benchmarks/bench_hessian.py --mode model``): :func:`recorded`, :func:`live_table`,
  :func:`within`, :func:`model_table`, :func:`cost_table`.

Chapter: Hessian-aware PVQ (book/hessian.ipynb).
"""

from __future__ import annotations

import numpy as np
import torch

from .. import book, gain, hessian, pipeline
from ..bench.hessian import METHODS
from ..hessian import calibration

# -- the second moments -------------------------------------------------------------------

def block_weights(block, kinds) -> dict:
    """{kind: float64 weight (out, in)} of the linear layers ``kinds`` (e.g. "q_proj") of a
    decoder block, found through :data:`pvqref.hessian.calibration.LLAMA_INPUTS`.

    Chapter: Hessian-aware PVQ (book/hessian.ipynb)."""
    paths = {path.split(".")[-1]: path
             for _, _, readers in calibration.LLAMA_INPUTS for path in readers}
    return {kind: calibration.module(block, paths[kind]).weight.detach().double()
            for kind in kinds}


def spectrum(H) -> np.ndarray:
    """The eigenvalues of the symmetric matrix H (torch), largest first, negative rounding
    errors clamped to 0, divided by their mean.

    Chapter: Hessian-aware PVQ (book/hessian.ipynb)."""
    lam = torch.linalg.eigvalsh(H).flip(0).clamp_min(0).numpy()
    return lam / lam.mean()


def spectra_table(H: dict, reads: dict) -> book.Table:
    """Per input (``reads``: reading layer -> input name, ``H``: input name -> H): its size,
    the top eigenvalue over the mean, how many eigenvalues make half the trace, and the
    largest diagonal entry over the median one.

    Chapter: Hessian-aware PVQ (book/hessian.ipynb)."""
    rows = []
    for kind, name in reads.items():
        lam, d = spectrum(H[name]), torch.diagonal(H[name]).numpy()
        half = int(np.searchsorted(np.cumsum(lam) / lam.sum(), 0.5)) + 1
        rows.append([name, kind, len(lam), lam[0], half, d.max() / np.median(d)])
    return book.table(["input", "read by", "n", "top eigenvalue / mean",
                       "eigenvalues for half the trace", "max / median diagonal"],
                      rows, [None, None, "d", ".0f", "d", ".0f"])


def spectra_figure(H: dict, reads: dict, block: int):
    """The spectra (:func:`spectrum`, log scale) of the inputs of ``reads`` against the
    eigenvalue's rank over n. Returns the figure.

    Chapter: Hessian-aware PVQ (book/hessian.ipynb)."""
    fig, ax = book.figure()
    for name in reads.values():
        lam = spectrum(H[name])
        ax.semilogy(np.arange(1, len(lam) + 1) / len(lam), lam,
                    label=f"{name} (n = {len(lam)})")
    ax.set(xlabel="eigenvalue rank / n", ylabel="eigenvalue / mean eigenvalue",
           title=f"Spectra of the four input second moments H of block {block}")
    ax.legend()
    return fig


def peer_table(peer: dict) -> book.Table:
    """Proxy losses of RTN, our GPTQ and GPTQModel's (with our grid and its own) per layer
    and bits, from ``bench.load("gptq_peer")`` (``benchmarks/peer_gptqmodel.py``).

    Chapter: Hessian-aware PVQ (book/hessian.ipynb)."""
    keys = ["layer", "bits", "rtn", "ours", "gptqmodel_pvqref_grid", "gptqmodel"]
    return book.table(["layer", "bits", "RTN", "ours", "GPTQModel, our grid",
                       "GPTQModel, its grid"],
                      [[r[k] for k in keys] for r in peer["rows"]],
                      [None, "d", ".4g", ".4g", ".4g", ".4g"])


# -- one block, one layer at a time -------------------------------------------------------

def pvq(W, H, bpw: float = 3.25, L: int = 64, gain_bits: int = 3,
        orientation: str = "input", **kw) -> hessian.PVQResult:
    """:func:`pvqref.hessian.pvq_quantize` of W against H in ``orientation`` with the most
    pulses that fit ``bpw`` for groups of L and ``gain_bits`` gain bits
    (:func:`pvqref.gain.config_for_rate` of W's shape, or of W^T's for "output" groups);
    ``kw``: feedback, search, ...

    Chapter: Hessian-aware PVQ (book/hessian.ipynb)."""
    shape = tuple(W.shape) if orientation == "input" else tuple(W.shape)[::-1]
    cfg = gain.config_for_rate(L, shape, bpw, gain_bits)
    return hessian.pvq_quantize(W, H, cfg, orientation=orientation, **kw)


def orientation_table(kinds, pvq, relative) -> book.Table:
    """Per layer of ``kinds``: the relative proxy loss ``relative(kind, Q)`` of
    ``pvq(kind, orientation=..., feedback=...)`` for groups along the input and the output
    dimension, without and with feedback, and output / input with feedback.

    Chapter: Hessian-aware PVQ (book/hessian.ipynb)."""
    rows = []
    for kind in kinds:
        losses = [relative(kind, pvq(kind, orientation=o, feedback=fb).Q)
                  for o in ("input", "output") for fb in (False, True)]
        rows.append([kind, *losses, losses[3] / losses[1]])
    return book.table(["layer", "input, no feedback", "input, feedback",
                       "output, no feedback", "output, feedback",
                       "output / input (feedback)"],
                      rows, [None, ".3e", ".3e", ".3e", ".3e", ".2f"])


def moved_share(result, start, L: int = 64) -> float:
    """The fraction of the groups of L (along each row) whose pyramid point differs
    between two :class:`pvqref.hessian.PVQResult` of the same layer.

    Chapter: Hessian-aware PVQ (book/hessian.ipynb)."""
    after = np.asarray(result.points).reshape(len(result.points), -1, L)
    before = np.asarray(start.points).reshape(after.shape)
    return float(np.any(after != before, axis=2).mean())


def search_table(kinds, pvq, relative) -> book.Table:
    """Per layer: the relative proxy loss of PVQ with feedback and of PVQ-H (the metric
    search), the share of groups whose point the search moved (:func:`moved_share`), and
    PVQ-H over PVQ with feedback and over output-oriented groups with feedback.

    Chapter: Hessian-aware PVQ (book/hessian.ipynb)."""
    rows = []
    for kind in kinds:
        fb, h = pvq(kind), pvq(kind, search="hessian")
        out = relative(kind, pvq(kind, orientation="output").Q)
        loss_fb, loss_h = relative(kind, fb.Q), relative(kind, h.Q)
        rows.append([kind, loss_fb, loss_h, moved_share(h, fb), loss_h / loss_fb,
                     loss_h / out])
    return book.table(["layer", "PVQ + feedback", "PVQ-H", "groups whose point moved",
                       "PVQ-H / PVQ + feedback", "PVQ-H / output orientation"],
                      rows, [None, ".3e", ".3e", ".1%", ".3f", ".3f"])


def group_size_table(kinds, pvq, relative, sizes, gain_bits) -> book.Table:
    """For each group size L of ``sizes`` and gain bit count of ``gain_bits``: the geometric
    mean over ``kinds`` of the relative proxy loss of PVQ-H, ``pvq(kind, L=, gain_bits=,
    search="hessian")``.

    Chapter: Hessian-aware PVQ (book/hessian.ipynb)."""
    rows = []
    for L in sizes:
        losses = []
        for b in gain_bits:
            per_layer = [relative(k, pvq(k, L=L, gain_bits=b, search="hessian").Q)
                         for k in kinds]
            losses.append(float(np.exp(np.mean(np.log(per_layer)))))
        rows.append([L, *losses])
    return book.table(["L", *(f"{b} gain bits" for b in gain_bits)], rows,
                      ["d"] + [".3e"] * len(gain_bits))


def methods_table(loss, methods, rates, kinds) -> book.Table:
    """``loss(kind, method, bpw)`` for every rate, method and layer (one row per rate and
    method, one column per layer).

    Chapter: Hessian-aware PVQ (book/hessian.ipynb)."""
    rows = [[bpw, method, *(loss(kind, method, bpw) for kind in kinds)]
            for bpw in rates for method in methods]
    return book.table(["bpw", "method", *kinds], rows,
                      [".2f", None] + [".2e"] * len(kinds))


# -- where the rotation goes --------------------------------------------------------------

def hot_channel_figure(ratio):
    """The largest over the median channel energy of down_proj's input per block (log
    scale). Returns the figure.

    Chapter: Hessian-aware PVQ (book/hessian.ipynb)."""
    fig, ax = book.figure()
    ax.semilogy(np.arange(len(ratio)), ratio, "o-")
    ax.set(xlabel="decoder block", ylabel="max / median of E[x_i^2]",
           title="Energy of the hottest input channel of down_proj (8 windows)")
    return fig


def rotation_table(problems: dict, label: str, methods=("gptq", "pvq-h"),
                   bpw: float = 3.25) -> book.Table:
    """The proxy loss of each method's :func:`pvqref.pipeline.quantize_layer` at ``bpw`` on
    the layer without rotation and rotated (``problems``: "no rotation" and "rotated" ->
    (W, H)), and their ratio.

    Chapter: Hessian-aware PVQ (book/hessian.ipynb)."""
    shape = tuple(problems["no rotation"][0].shape)       # the rotation keeps it
    rows = []
    for method in methods:
        plan = pipeline.layer_plan(method, bpw, shape)
        losses = {key: hessian.proxy_loss(W, pipeline.quantize_layer(W, H, plan), H)
                  for key, (W, H) in problems.items()}
        rows.append([method, losses["no rotation"], losses["rotated"],
                     losses["no rotation"] / losses["rotated"]])
    return book.table([label, "proxy loss, no rotation", "rotated", "ratio"],
                      rows, [None, ".3g", ".3g", ".0f"])


def recorded(grid: dict, method: str, bpw: float, rotation="input") -> dict:
    """The row of the recorded whole-model run ``grid`` (``bench.load("hessian_models")``)
    of ``method`` asked for ``bpw`` bits per weight with ``rotation``.

    Chapter: Hessian-aware PVQ (book/hessian.ipynb)."""
    rows = [r for r in grid["rows"] if (r["method"], r["bpw_asked"], r["rotation"])
            == (method, bpw, rotation)]
    if len(rows) != 1:
        raise KeyError(f"{len(rows)} recorded rows for {method} at {bpw} with {rotation}")
    return rows[0]


def rotation_grid_table(grid: dict, methods=("pvq-h", "gptq"),
                        bpw: float = 3.25) -> book.Table:
    """The recorded whole model at ``bpw`` with each rotation (input, residual, none):
    bits per weight, perplexity, and perplexity over the input-side rotation's.

    Chapter: Hessian-aware PVQ (book/hessian.ipynb)."""
    rows = []
    for method in methods:
        base = recorded(grid, method, bpw, "input")["perplexity"]
        for rotation in ("input", "residual", None):
            r = recorded(grid, method, bpw, rotation)
            rows.append([method, rotation or "none", r["bpw"], r["perplexity"],
                         r["perplexity"] / base])
    return book.table(["method", "rotation", "bits per weight", "perplexity",
                       "/ input-side"], rows, [None, None, ".3f", ".2f", ".3f"])


# -- the whole model ----------------------------------------------------------------------

def live_table(live) -> book.Table:
    """The live whole-model runs, rows (method, bits per weight, perplexity).

    Chapter: Hessian-aware PVQ (book/hessian.ipynb)."""
    return book.table(["method (live)", "bits per weight", "perplexity"], live,
                      [None, ".3f", ".2f"])


def within(measured, reference, tol: float) -> bool:
    """Whether every ``measured`` value is within the relative tolerance ``tol`` of the
    ``reference`` value at the same place (the two of the same length).

    Chapter: Hessian-aware PVQ (book/hessian.ipynb)."""
    measured, reference = list(measured), list(reference)
    if len(measured) != len(reference):
        raise ValueError(f"{len(measured)} measured values, {len(reference)} references")
    return all(abs(m / r - 1) < tol for m, r in zip(measured, reference))


def model_table(grid: dict, unquantized: float, rotation="input") -> book.Table:
    """The recorded whole model with ``rotation``, by rate then method (in
    :data:`pvqref.bench.hessian.METHODS` order): bits per weight, perplexity, and
    perplexity over ``unquantized`` (the chapter passes the live unquantized perplexity
    rounded to 3 decimals, digits no CPU changes).

    Chapter: Hessian-aware PVQ (book/hessian.ipynb)."""
    rows = sorted((r for r in grid["rows"] if r["rotation"] == rotation),
                  key=lambda r: (r["bpw_asked"], METHODS.index(r["method"])))
    return book.table(["method", "bits per weight", "perplexity", "/ unquantized"],
                      [[r["method"], r["bpw"], r["perplexity"],
                        r["perplexity"] / unquantized] for r in rows],
                      [None, ".3f", ".2f", ".3f"])


def cost_table(grid: dict) -> book.Table:
    """Bits per weight, minutes and peak resident memory of every recorded whole-model
    run, in the order recorded.

    Chapter: Hessian-aware PVQ (book/hessian.ipynb)."""
    return book.table(["whole model (recorded)", "bits per weight", "minutes",
                       "peak RSS (GB)"],
                      [[f"{r['method']}, {r['rotation'] or 'no rotation'}", r["bpw"],
                        r["seconds"] / 60, r["peak_rss_gb"]] for r in grid["rows"]],
                      [None, ".3f", ".1f", ".2f"])

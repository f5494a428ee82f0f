"""The coherence chapter's experiments, tables and figures.

The chapter rotates SmolLM2's linear weights with seeded randomized Hadamard transforms
(:mod:`pvqref.coherence`) and shows what that does: incoherence and kurtosis before and
after, histograms and a QQ plot against the law of a uniform direction, output
invariance of a rotated layer and of a QuaRot-style rotated model (in float64 too), and
what the online transform costs. The algorithms live in :mod:`pvqref.coherence`; this
module only runs them over the model and presents the results:

- weights and their statistics: :func:`linear_weights`, :func:`statistics` (one
  :class:`Record` per matrix), :func:`statistics_table`, :func:`statistics_summary`,
  :func:`statistics_figure`, :func:`histogram_figure`, :func:`largest_mu_by_shape`;
- uniformity on the sphere: :func:`ks_distances`, :func:`ks_table`, :func:`qq_figure`;
- a rotated layer and model: :func:`capture`, :func:`agreement`, :func:`float64_model`,
  :func:`block_incoherence`, :func:`quarot_table`;
- cost: :func:`speed_ratio_table`; and the Hadamard matrices themselves:
  :func:`hadamard_figure`.

Chapter: Spherical coherence processing (book/coherence.ipynb).
"""

from __future__ import annotations

import contextlib
import math
from typing import NamedTuple

import numpy as np
import torch

from .. import book, data
from .. import coherence as coh

KINDS = data.LINEAR_KINDS


def hadamard_figure(orders=(12, 36)):
    """The orthonormal Hadamard matrices of the given orders, scaled to +-1, side by side,
    titled with their construction. Returns the figure.

    Chapter: Spherical coherence processing (book/coherence.ipynb)."""
    fig, axes = book.figure(1, len(orders), height=3.6)
    for ax, k in zip(axes, orders):
        ax.imshow(coh.hadamard(k) * math.sqrt(k), cmap="gray", interpolation="nearest")
        ax.set_title(f"H_{k}: {coh.construction(k)}")
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def linear_weights(state_dict) -> dict:
    """{(layer, kind): float64 NumPy matrix} of every decoder linear weight of a state
    dict, in :func:`pvqref.data.linear_weight_names` order.

    Chapter: Spherical coherence processing (book/coherence.ipynb)."""
    return {(int(name.split(".")[2]), name.split(".")[-2]):
            state_dict[name].numpy().astype(np.float64)
            for name in data.linear_weight_names(state_dict)}


class Record(NamedTuple):
    """Incoherence mu and excess kurtosis of one matrix, before and after rotation.

    Chapter: Spherical coherence processing (book/coherence.ipynb)."""
    layer: int
    kind: str
    mu: float
    mu_rotated: float
    kurtosis: float
    kurtosis_rotated: float


def statistics(weights: dict, rotated: dict) -> list[Record]:
    """One :class:`Record` per matrix of ``weights`` (same keys in ``rotated``).

    Chapter: Spherical coherence processing (book/coherence.ipynb)."""
    return [Record(layer, kind, coh.incoherence(W), coh.incoherence(rotated[layer, kind]),
                   coh.excess_kurtosis(W), coh.excess_kurtosis(rotated[layer, kind]))
            for (layer, kind), W in weights.items()]


def statistics_table(records: list[Record], weights: dict):
    """Per kind of layer: shape, then median and max over the layers of mu and kurtosis,
    before and after rotation (each statistic rounded to 2 decimals first).

    Chapter: Spherical coherence processing (book/coherence.ipynb)."""
    rows = []
    for kind in KINDS:
        r = np.array([rec[2:] for rec in records if rec.kind == kind])
        r = np.round(r, 2) + 0.0                       # + 0.0: print -0.00 as 0.00
        rows.append([kind, "x".join(map(str, weights[0, kind].shape))]
                    + [f(r[:, c]) for c in range(4) for f in (np.median, np.max)])
    return book.table(["kind", "shape", "mu before: median", "max", "mu after: median",
                       "max", "kurtosis before: median", "max", "kurtosis after: median",
                       "max"],
                      rows, [None, None, ".1f", ".1f", ".2f", ".2f", ".2f", ".1f", ".2f",
                             ".2f"])


def statistics_summary(records: list[Record]) -> str:
    """The ranges of mu over all matrices, and the three largest kurtoses after rotation.

    Chapter: Spherical coherence processing (book/coherence.ipynb)."""
    r = np.array([rec[2:] for rec in records])
    top = sorted(records, key=lambda rec: -rec.kurtosis_rotated)[:3]
    return (f"all {len(records)} matrices: mu {r[:, 0].min():.1f} to {r[:, 0].max():.1f} "
            f"before, {r[:, 1].min():.2f} to {r[:, 1].max():.2f} after; kurtosis after "
            f"at most {r[:, 3].max():.2f}\nlargest kurtosis after rotation: "
            + ", ".join(f"layer {rec.layer} {rec.kind} {rec.kurtosis_rotated:.2f}"
                        for rec in top))


def statistics_figure(records: list[Record]):
    """mu (top) and kurtosis (bottom, floored at 0.01 for the log scale) per layer, one
    colour per kind: before solid, after dashed. Returns the figure.

    Chapter: Spherical coherence processing (book/coherence.ipynb)."""
    fig, axes = book.figure(2, 1, height=3.0)
    for kind in KINDS:
        r = sorted((rec for rec in records if rec.kind == kind), key=lambda rec: rec.layer)
        x = [rec.layer for rec in r]
        line, = axes[0].plot(x, [rec.mu for rec in r], label=kind)
        axes[0].plot(x, [rec.mu_rotated for rec in r], ls="--", color=line.get_color())
        axes[1].plot(x, [rec.kurtosis for rec in r], label=kind)
        axes[1].plot(x, [max(rec.kurtosis_rotated, 1e-2) for rec in r], ls="--",
                     color=line.get_color())
    axes[0].set(xlabel="layer", ylabel="incoherence mu", yscale="log",
                title="mu per layer: before (solid), after (dashed)")
    axes[1].set(xlabel="layer", ylabel="excess kurtosis\n(floored at 0.01)", yscale="log",
                title="kurtosis per layer: before (solid), after (dashed)")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=4)
    return fig


def histogram_figure(weights: dict, rotated: dict, layer: int = 15):
    """Histograms (log density) of one layer's entries in standard deviations, one panel
    per kind, before and after rotation, with the N(0, 1) density; each title gives the
    largest |z| before and after. Returns the figure.

    Chapter: Spherical coherence processing (book/coherence.ipynb)."""
    from scipy import stats
    fig, axes = book.figure(2, 4, sharey=True)
    z = {(kind, label): (W / W.std()).ravel() for kind in KINDS
         for W, label in ((weights[layer, kind], "before"), (rotated[layer, kind], "after"))}
    zmax = math.ceil(max(np.abs(v).max() for v in z.values()))   # show the largest outlier
    edges = np.linspace(-zmax, zmax, 2 * zmax + 1)
    for ax, kind in zip(axes.flat, KINDS):
        for label in ("before", "after"):
            ax.hist(z[kind, label], bins=edges, histtype="step", label=label, density=True)
        ax.plot(edges, stats.norm.pdf(edges), "k:", lw=0.8, label="N(0,1)")
        ax.set(yscale="log", ylim=(1e-7, 1), xlabel="w / std(w)",
               title=f"{kind}\nmax |z| {np.abs(z[kind, 'before']).max():.1f} -> "
                     f"{np.abs(z[kind, 'after']).max():.1f}")
    for ax in axes[:, 0]:
        ax.set_ylabel("density (log)")
    axes[1, 3].axis("off")
    axes[1, 3].legend(*axes[0, 0].get_legend_handles_labels(), loc="center")
    fig.suptitle(f"Layer {layer}: entries in standard deviations, before and after "
                 "rotation")
    return fig


def largest_mu_by_shape(records: list[Record], weights: dict) -> dict:
    """{(m, n): the largest mu after rotation over the matrices of that shape}, by shape.

    Chapter: Spherical coherence processing (book/coherence.ipynb)."""
    shapes = sorted({weights[0, kind].shape for kind in KINDS})
    return {s: max(rec.mu_rotated for rec in records if weights[0, rec.kind].shape == s)
            for s in shapes}


def ks_distances(weights: dict, rotated: dict, layers, rng) -> dict:
    """{kind: array (len(layers), 3)}: the KS distance of the squared coordinates of
    128-groups to the Beta law (:func:`pvqref.coherence.beta_law_ks`) before rotation,
    after, and for a Gaussian matrix of the same shape drawn from ``rng`` (kind by kind,
    layer by layer).

    Chapter: Spherical coherence processing (book/coherence.ipynb)."""
    ks = {}
    for kind in KINDS:
        rows = []
        for layer in layers:
            W, Wr = weights[layer, kind], rotated[layer, kind]
            G = rng.standard_normal(W.shape)
            rows.append((coh.beta_law_ks(W), coh.beta_law_ks(Wr), coh.beta_law_ks(G)))
        ks[kind] = np.array(rows)
    return ks


def ks_table(ks: dict):
    """Median (max) over the layers of each KS distance of :func:`ks_distances`.

    Chapter: Spherical coherence processing (book/coherence.ipynb)."""
    return book.table(
        ["kind", "before: median (max)", "after: median (max)",
         "Gaussian baseline: median (max)"],
        [[kind] + [f"{np.median(k[:, c]):.4f} ({k[:, c].max():.4f})" for c in range(3)]
         for kind, k in ks.items()])


def qq_figure(before, after, label: str, group: int = 128):
    """QQ plot (log-log) of the squared coordinates of ``group``-groups of one matrix,
    before and after rotation, against Beta(1/2, (group-1)/2). Returns the figure.

    Chapter: Spherical coherence processing (book/coherence.ipynb)."""
    from scipy import stats
    beta = stats.beta(0.5, (group - 1) / 2)
    probs = (np.arange(1, 2001) - 0.5) / 2000
    fig, ax = book.figure(height=4.0)
    for W, when in ((before, "before"), (after, "after")):
        ax.loglog(beta.ppf(probs), np.quantile(coh.sphere_coordinates(W, group), probs),
                  ".", ms=2, label=f"{label}, {when}")
    lim = [beta.ppf(probs[0]), beta.ppf(probs[-1])]
    ax.loglog(lim, lim, "k--", lw=0.8, label="Beta law")
    ax.set(xlabel=f"Beta(1/2, {group - 1}/2) quantile",
           ylabel="empirical quantile of $v_i^2$", title="QQ plot of squared coordinates")
    ax.legend()
    return fig


def capture(model, module, ids):
    """Run ``model`` on ``ids`` once without gradients; return (the input of ``module``,
    its output, the model's logits).

    Chapter: Spherical coherence processing (book/coherence.ipynb)."""
    captured = {}
    hook = module.register_forward_hook(
        lambda mod, inp, out: captured.update(x=inp[0], y=out))
    try:
        with torch.no_grad():
            logits = model(ids).logits
    finally:
        hook.remove()
    return captured["x"], captured["y"], logits


def agreement(logits, reference) -> tuple[float, float]:
    """(max |logits - reference|, fraction of positions with the same top-1 token).

    Chapter: Spherical coherence processing (book/coherence.ipynb)."""
    diff = (logits - reference).abs().max().item()
    top1 = (logits.argmax(-1) == reference.argmax(-1)).float().mean().item()
    return diff, top1


def rms_norm_in_input_dtype(self, h):
    """``LlamaRMSNorm.forward`` without its cast to float32: computes in h's dtype.

    Chapter: Spherical coherence processing (book/coherence.ipynb)."""
    return self.weight * h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True)
                                         + self.variance_epsilon)


@contextlib.contextmanager
def float64_model(model, blocks):
    """Inside: ``model`` in float64 with its decoder blocks replaced by ``blocks`` (which
    are converted too), no gradients, and every LlamaRMSNorm computing in its input's
    dtype (:func:`rms_norm_in_input_dtype`). On exit the model gets its own blocks back
    and returns to float32, and so do ``blocks`` (float32 -> float64 -> float32 is exact).

    Chapter: Spherical coherence processing (book/coherence.ipynb)."""
    from unittest import mock
    from transformers.models.llama.modeling_llama import LlamaRMSNorm
    own = model.model.layers
    try:
        with torch.no_grad(), mock.patch.object(LlamaRMSNorm, "forward",
                                                rms_norm_in_input_dtype):
            model.model.layers = torch.nn.ModuleList(blocks)
            model.double()
            yield model
    finally:
        model.model.layers = own
        model.float()
        for block in blocks:
            block.float()


def block_incoherence(model) -> dict:
    """{kind: [mu of that linear weight in each block]} for a model whose blocks are
    :class:`pvqref.coherence.RotatedResidualBlock` (down_proj after its online rotation).

    Chapter: Spherical coherence processing (book/coherence.ipynb)."""
    mu = {kind: [] for kind in KINDS}
    for wrapped in model.model.layers:
        attn, mlp = wrapped.layer.self_attn, wrapped.layer.mlp
        mats = {"q_proj": attn.q_proj, "k_proj": attn.k_proj, "v_proj": attn.v_proj,
                "o_proj": attn.o_proj, "gate_proj": mlp.gate_proj, "up_proj": mlp.up_proj,
                "down_proj": mlp.down_proj[1]}
        for kind, lin in mats.items():
            mu[kind].append(coh.incoherence(lin.weight))
    return mu


def quarot_table(records: list[Record], mu_quarot: dict):
    """Per kind: median and max over the layers of mu, original against QuaRot-style.

    Chapter: Spherical coherence processing (book/coherence.ipynb)."""
    before = {kind: [rec.mu for rec in records if rec.kind == kind] for kind in KINDS}
    return book.table(["kind", "mu original: median", "max", "mu QuaRot-style: median",
                       "max"],
                      [[kind, np.median(before[kind]), max(before[kind]),
                        np.median(mu_quarot[kind]), max(mu_quarot[kind])] for kind in KINDS],
                      [None, ".1f", ".1f", ".1f", ".1f"])


def speed_ratio_table(rows: list[dict]):
    """From a run of ``benchmarks/bench_coherence.py``: per size, the Numba tier's speed
    over the faster dense product, and its time over the linear layer's time.

    Chapter: Spherical coherence processing (book/coherence.ipynb)."""
    from ..bench.coherence import SIZES
    rate = {(r["n"], r["method"]): r["vectors_per_s"] for r in rows}
    ratios = []
    for n in SIZES:
        dense = max(v for (m, method), v in rate.items()
                    if m == n and method.startswith("dense"))
        linear = next(v for (m, method), v in rate.items()
                      if m == n and method.startswith("linear"))
        ratios.append([n, rate[n, "numba"] / dense, linear / rate[n, "numba"]])
    return book.table(["n", "numba speed / faster dense product",
                       "numba transform time / linear layer time"],
                      ratios, [None, ".1f", ".0%"])

"""What the RSAVQ chapter shows around its ideas: its tables and its figure.

The algorithms are in :mod:`pvqref.rsavq` (Fisher, EDSG, WCSG) and the recorded runs in
:mod:`pvqref.bench.rsavq`; these functions only present them.

Chapter: RSAVQ's natural-gradient error projection (book/rsavq.ipynb).
"""

from __future__ import annotations

import numpy as np

from .. import bench, book
from ..rsavq import allocation


def unquantized_row() -> dict:
    """The unquantized model's row of the final chapter's recorded run (its perplexity is
    what every excess here is measured against).

    Chapter: RSAVQ's natural-gradient error projection (book/rsavq.ipynb)."""
    return next(r for r in bench.load("llama")["rows"] if r["method"] == "unquantized")


def similarity_table(rows):
    """(layer, input, cosine, log-diagonal correlation, top-8 overlap) rows as a table.

    Chapter: RSAVQ's natural-gradient error projection (book/rsavq.ipynb)."""
    return book.table(["layer", "input", "cosine", "log-diagonal corr.", "top-8 overlap"],
                      rows, [None, None, ".2f", ".2f", ".2f"])


def sweep_table(sweep: dict, fp: dict):
    """The recorded lambda sweep: perplexity, its excess over ``fp``'s, top-1, KL.

    Chapter: RSAVQ's natural-gradient error projection (book/rsavq.ipynb)."""
    return book.table(["lambda", "perplexity", "excess", "ppl at 2048", "top-1",
                       "KL (nats)"],
                      [(r["lambda"], r["perplexity"], r["perplexity"] / fp["perplexity"] - 1,
                        r["perplexity_2048"], r["top1"], r["kl"]) for r in sweep["rows"]],
                      ["+.2f", ".3f", ".3f", ".3f", ".4f", ".4f"])


def allocation_summary(I: np.ndarray, paper: np.ndarray, lagrange: np.ndarray,
                       bpw: float) -> str:
    """Four lines on one layer's channel sensitivities and the two allocations of ``bpw``:
    ranges, slopes in log2 I_c, and the paper's rule's model distortion over Lagrange's.

    Chapter: RSAVQ's natural-gradient error projection (book/rsavq.ipynb)."""
    ratio = allocation.model_distortion(I, paper) / allocation.model_distortion(I, lagrange)
    return "\n".join([
        f"I_c from {I.min():.3g} to {I.max():.3g} (median {np.median(I):.3g})",
        f"rates: paper's rule {paper.min():.2f} to {paper.max():.2f}, Lagrange "
        f"{lagrange.min():.2f} to {lagrange.max():.2f} bits per weight",
        f"slopes in log2 I_c: paper's rule {bpw / np.log2(I).mean():.2f}, Lagrange 0.5",
        f"model distortion, paper's rule / Lagrange: {ratio:.3f}"])


def plan_table(plan, shape):
    """A WCSG row-group plan (``rsavq.wcsg.plan_row_groups``) as a table: channels, K and
    bits per weight of each group, most sensitive first.

    Chapter: RSAVQ's natural-gradient error projection (book/rsavq.ipynb)."""
    return book.table(["group (most sensitive first)", "channels", "K", "bits per weight"],
                      [(g, len(r), c.K, c.bits_per_weight((len(r), shape[1])))
                       for g, (r, c) in enumerate(zip(plan.rows, plan.configs))],
                      [None, None, None, ".3f"])


def allocation_figure(I: np.ndarray, paper: np.ndarray, lagrange: np.ndarray, bpw: float):
    """Sensitivities by decreasing size, and the two allocations against them.

    Chapter: RSAVQ's natural-gradient error projection (book/rsavq.ipynb)."""
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = book.figure(1, 2)
    order = np.argsort(-I)
    ax1.semilogy(I[order])
    ax1.set(xlabel="channel (by decreasing sensitivity)", ylabel="$I_c$",
            title="sensitivity")
    ax2.plot(paper[order], label="paper's rule")
    ax2.plot(lagrange[order], label="Lagrange")
    ax2.set(xlabel="channel (by decreasing sensitivity)", ylabel="bits per weight",
            title=f"allocation at {bpw} bpw")
    ax2.legend()
    plt.show()

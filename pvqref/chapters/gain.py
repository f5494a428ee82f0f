"""What the gain chapter shows around its ideas: the loops over SmolLM2's matrices, the
tables and the figures.

The algorithms are elsewhere (:mod:`pvqref.gain`, :mod:`pvqref.baselines`,
:mod:`pvqref.coherence`); these functions only orchestrate and present them, in the order
of the chapter's sections: the Beta laws, the gain codebooks, side information, the rate
chooser, rate-distortion on real weights and throughput. A pooled error is the sum of the
squared errors over the matrices divided by the sum of their energies, both summed in the
order the matrices are given (the chapter's printed digits depend on it).

Chapter: Gain quantization (book/gain.ipynb).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .. import baselines, book, coherence, data, gain


# -- matrices -----------------------------------------------------------------------------

def weight_name(layer: int, kind: str) -> str:
    """The state-dict name of the ``kind`` ("q_proj" ... "down_proj") weight of ``layer``.

    Chapter: Gain quantization (book/gain.ipynb)."""
    block = "self_attn" if kind in data.LINEAR_KINDS[:4] else "mlp"
    return f"model.layers.{layer}.{block}.{kind}.weight"


def layer_of(name: str) -> int:
    """The decoder layer of a state-dict name.

    Chapter: Gain quantization (book/gain.ipynb)."""
    return int(name.split(".")[2])


def kind_of(name: str) -> str:
    """The kind ("q_proj" ... "down_proj") of a state-dict name.

    Chapter: Gain quantization (book/gain.ipynb)."""
    return name.split(".")[-2]


def weight(sd: dict, name: str) -> np.ndarray:
    """The weight ``name`` of the state dict as a float64 array.

    Chapter: Gain quantization (book/gain.ipynb)."""
    return sd[name].numpy().astype(np.float64)


@lru_cache(maxsize=None)
def _rotation(n: int, seed: int) -> coherence.RandomizedHadamard:
    return coherence.RandomizedHadamard(n, seed=seed)


def rotated(sd: dict, name: str, seed: int = 0) -> np.ndarray:
    """The weight ``name`` (float64) with its input dimension rotated, W (H_n S)^T, by
    the randomized Hadamard transform of ``seed``.

    Chapter: Gain quantization (book/gain.ipynb)."""
    W = weight(sd, name)
    return _rotation(W.shape[1], seed).forward(W, axis=1)


def shares(W, L: int) -> np.ndarray:
    """Every group's (``L`` consecutive weights of a row) energy share S = ||w_g||^2 / ||w||^2.

    Chapter: Gain quantization (book/gain.ipynb)."""
    m = W.shape[0]
    return (np.sum(W.reshape(m, -1, L) ** 2, axis=2)
            / np.sum(W ** 2, axis=1, keepdims=True)).ravel()


# -- the Beta laws ------------------------------------------------------------------------

def law_figure(share, unit, L: int, n: int):
    """Histograms of the shares and of the squared coordinates of unit vectors against
    their Beta laws (:func:`pvqref.gain.share_law`, :func:`pvqref.gain.coordinate_law`).

    Chapter: Gain quantization (book/gain.ipynb)."""
    fig, axes = book.figure(1, 2)
    x = np.linspace(1e-4, 0.25, 400)
    axes[0].hist(share, bins=80, density=True, color="C0", alpha=0.6, label="Gaussian rows")
    axes[0].plot(x, gain.share_law(L, n).pdf(x), "k", label=f"Beta({L}/2, ({n}-{L})/2)")
    axes[0].set(xlabel="group energy share S", ylabel="density")
    axes[0].legend(loc="upper right")
    x = np.linspace(1e-4, 0.08, 400)
    axes[1].hist((unit ** 2).ravel(), bins=200, range=(0, 0.08), density=True, color="C1",
                 alpha=0.6, label="unit vectors")
    axes[1].plot(x, gain.coordinate_law(L).pdf(x), "k", label=f"Beta(1/2, ({L}-1)/2)")
    axes[1].set(xlabel="squared coordinate $v_i^2$", ylabel="density", ylim=(0, 120))
    axes[1].legend()
    return fig


def ks_by_kind(sd: dict, names, layers, distances, rng) -> dict:
    """Per layer kind, the mean over ``layers`` of ``distances(W)`` (a pair: share law,
    coordinate law) on the raw matrix, the rotated one and a Gaussian matrix of the same
    shape (drawn from ``rng``, one per matrix in the order of ``names``). Returns kind ->
    the six means (share: raw, rotated, Gaussian; coordinate: raw, rotated, Gaussian).

    Chapter: Gain quantization (book/gain.ipynb)."""
    rows = {k: [] for k in data.LINEAR_KINDS}
    for name in names:
        if layer_of(name) not in layers:
            continue
        W = weight(sd, name)
        d = [distances(X) for X in (W, rotated(sd, name), rng.standard_normal(W.shape))]
        rows[kind_of(name)].append([x[0] for x in d] + [x[1] for x in d])
    return {k: np.mean(r, axis=0) for k, r in rows.items()}


def ks_table(ks_mean: dict) -> book.Table:
    """The KS distances of :func:`ks_by_kind`, with the raw / Gaussian ratios.

    Chapter: Gain quantization (book/gain.ipynb)."""
    return book.table(["kind", "S raw", "S rotated", "S Gauss", "S raw / Gauss",
                       "v² raw", "v² rotated", "v² Gauss", "v² raw / Gauss"],
                      [[k, r[0], r[1], r[2], r[0] / r[2], r[3], r[4], r[5], r[3] / r[5]]
                       for k, r in ks_mean.items()],
                      [None, ".3f", ".3f", ".3f", ".1f", ".3f", ".3f", ".3f", ".1f"])


def qq_figure(sd: dict, L: int = 64, cases=((0, "q_proj"), (15, "o_proj"))):
    """Quantile-quantile plots of the shares against Beta(L/2, (n-L)/2), raw and rotated,
    for the (layer, kind) ``cases``.

    Chapter: Gain quantization (book/gain.ipynb)."""
    fig, axes = book.figure(1, len(cases))
    p = (np.arange(1, 400) - 0.5) / 399
    for ax, (layer, kind) in zip(axes, cases):
        name = weight_name(layer, kind)
        W = weight(sd, name)
        theory = gain.share_law(L, W.shape[1]).ppf(p)
        for X, label, c in ((W, "raw", "C3"), (rotated(sd, name), "rotated", "C0")):
            ax.plot(theory, np.quantile(shares(X, L), p), ".", ms=3, color=c, label=label)
        ax.plot(theory, theory, "k", lw=1)
        ax.set(xlabel="Beta(L/2, (n-L)/2) quantile", ylabel="empirical quantile of S",
               title=f"layer {layer} {kind}, L = {L}", ylim=(0, 2 * theory[-1]))
        ax.legend()
    return fig


# -- the gain codebooks -------------------------------------------------------------------

def levels_figure(L: int, n: int, bits: int = 3):
    """The density of T = ||w_g|| / ||w|| with the levels of each codebook kind below it.

    Chapter: Gain quantization (book/gain.ipynb)."""
    fig, ax = book.figure()
    t = np.linspace(0.35, 0.65, 500)
    ax.plot(t, 2 * t * gain.share_law(L, n).pdf(t ** 2), "k", lw=1, label="density of T")
    for j, kind in enumerate(gain.GAIN_KINDS):
        levels = gain.gain_codebook(L, n, bits, kind).levels
        ax.plot(levels, np.full(levels.size, -0.6 - 0.9 * j), "|", ms=12, mew=2,
                color=f"C{j}", label=kind)
    ax.set(xlabel=f"t = ||w_g|| / ||w||   (L = {L}, n = {n}, {bits} bits)",
           ylabel="density of T (levels below 0)")
    ax.legend(loc="upper left")
    return fig


def gain_samples(mats, ls_config, norm_config):
    """Over all groups of ``mats`` (in order): the uncoded least-squares gains g*/r
    (``ls_config``), the uncoded norms ||w_g||/r (``norm_config``) and r^2, the squared
    coded row norm of each group's row (:func:`pvqref.gain.normalised_gains`,
    :func:`pvqref.gain.coded_row_norms`).

    Chapter: Gain quantization (book/gain.ipynb)."""
    t_ls, t_norm, r2 = [], [], []
    for W in mats:
        t_ls.append(gain.normalised_gains(W, ls_config).ravel())
        t_norm.append(gain.normalised_gains(W, norm_config).ravel())
        r2.append(np.repeat(gain.coded_row_norms(W, ls_config) ** 2,
                            W.shape[1] // ls_config.L))
    return tuple(map(np.concatenate, (t_ls, t_norm, r2)))


def gain_error_table(gain_err, L: int, n: int, bits=range(2, 7)) -> book.Table:
    """The added relative MSE (x 1e-4) ``gain_err(kind, bits, target)`` of each codebook
    kind on the LS gain, of Lloyd-Max on the norm, and the theory (n/L) E[(T - Q(T))^2]
    of the Lloyd-Max codebook on the exact law.

    Chapter: Gain quantization (book/gain.ipynb)."""
    return book.table(
        ["bits", *gain.GAIN_KINDS, "lloyd_max, norm", "theory lloyd_max"],
        [[b] + [1e4 * gain_err(k, b, "ls") for k in gain.GAIN_KINDS]
         + [1e4 * gain_err("lloyd_max", b, "norm"),
            1e4 * n / L * gain.gain_codebook(L, n, b, "lloyd_max").mse()]
         for b in bits],
        [None] + [".3f"] * (len(gain.GAIN_KINDS) + 2))


# -- side information ---------------------------------------------------------------------

def pooled_mse(mats, configs: dict) -> float:
    """Relative MSE of PVQ pooled over ``mats`` (summed squared errors over summed energy),
    each matrix quantized with ``configs[n]`` for its row length n.

    Chapter: Gain quantization (book/gain.ipynb)."""
    mats = list(mats)
    err = sum(np.sum((W - gain.quantize_dequantize(W, configs[W.shape[1]])) ** 2)
              for W in mats)
    return err / sum(np.sum(W ** 2) for W in mats)


def norm_bits_sweep(mats, group_sizes: dict, bpw: float, norm_bits) -> dict:
    """For each row-norm bit count b_r of ``norm_bits`` (16: fp16), at ``bpw`` with 3 gain
    bits and L = ``group_sizes[n]``: the rms log error of the coded norms, the K that
    :func:`pvqref.gain.config_for_rate` gives each n, and the pooled MSE / Gaussian bound
    at that K ("rate") and at fp16's K ("fixed").

    Chapter: Gain quantization (book/gain.ipynb)."""
    rows = {n: min(W.shape[0] for W in mats if W.shape[1] == n) for n in group_sizes}
    D = baselines.gaussian_bound(bpw)

    def config(n, b_r, K=None):
        if K is None:
            return gain.config_for_rate(group_sizes[n], (rows[n], n), bpw, 3, norm_bits=b_r)
        return gain.PVQConfig(group_sizes[n], K, 3, norm_bits=b_r)

    fp16_K = {n: config(n, 16).K for n in group_sizes}
    sweep = {}
    for b_r in norm_bits:
        cfg = {n: config(n, b_r) for n in group_sizes}
        log_err = np.concatenate([np.log(gain.coded_row_norms(W, cfg[W.shape[1]])
                                         / np.linalg.norm(W, axis=1)) for W in mats])
        sweep[b_r] = {"rms": np.sqrt(np.mean(log_err ** 2)),
                      "K": {n: c.K for n, c in cfg.items()},
                      "fixed": pooled_mse(mats, {n: config(n, b_r, fp16_K[n])
                                                for n in group_sizes}) / D,
                      "rate": pooled_mse(mats, cfg) / D}
    return sweep


def norm_bits_table(sweep: dict, bpw: float, n: int = 576) -> book.Table:
    """The table of :func:`norm_bits_sweep` at ``bpw`` (norm bits per weight for rows of
    ``n``).

    Chapter: Gain quantization (book/gain.ipynb)."""
    sizes = list(next(iter(sweep.values()))["K"])
    return book.table(["norm bits", "rms norm error", f"norm bpw (n = {n})",
                       *(f"K ({m})" for m in sizes), "MSE / bound, fixed K",
                       f"MSE / bound at {bpw} bpw"],
                      [[b if b < 16 else "fp16", f"{100 * s['rms']:.3f}%", b / n,
                        *s["K"].values(), s["fixed"], s["rate"]] for b, s in sweep.items()],
                      [None, None, ".4f", *["d"] * len(sizes), ".4f", ".4f"],
                      align="r" * (5 + len(sizes)))


# -- the rate chooser ---------------------------------------------------------------------

def fewest_rows(sd: dict, names, sizes=(576, 1536)) -> dict:
    """Row length n -> the fewest rows of the matrices ``names`` with rows of n.

    Chapter: Gain quantization (book/gain.ipynb)."""
    return {n: min(sd[nm].shape[0] for nm in names if sd[nm].shape[1] == n) for n in sizes}


def chooser_samples(sd: dict, names, layers, rng, rows: int = 32,
                    sizes=(576, 1536)) -> dict:
    """Row length n -> ``rows`` random rows (from ``rng``) of every rotated matrix of
    ``layers`` with rows of n, stacked: the sample for :func:`pvqref.gain.choose_config`.

    Chapter: Gain quantization (book/gain.ipynb)."""
    return {n: np.concatenate([rotated(sd, nm)[rng.choice(sd[nm].shape[0], rows,
                                                          replace=False)]
                               for nm in names
                               if layer_of(nm) in layers and sd[nm].shape[1] == n])
            for n in sizes}


def candidates_table(candidates) -> book.Table:
    """Candidates of :func:`pvqref.gain.choose_config` (its second result).

    Chapter: Gain quantization (book/gain.ipynb)."""
    return book.table(["L", "K", "gain bits", "bpw", "rel. MSE"],
                      [[r["L"], r["K"], r["gain_bits"], r["bpw"], r["rel_mse"]]
                       for r in candidates], ["d", "d", "d", ".4f", ".5f"])


def choice_table(choice: dict, rows: dict) -> book.Table:
    """The chosen configuration of every (n, R), bits per weight counted for ``rows[n]``
    rows, with the gain's and the row norms' shares.

    Chapter: Gain quantization (book/gain.ipynb)."""
    return book.table(["n", "R", "L", "K", "gain bits", "bpw", "gain bpw", "norm bpw"],
                      [[n, R, c.L, c.K, c.gain_bits, c.bits_per_weight((rows[n], n)),
                        c.gain_bits / c.L, c.norm_bits / n] for (n, R), c in choice.items()],
                      ["d", ".2f", "d", "d", "d", ".4f", ".3f", ".3f"])


# -- rate-distortion ----------------------------------------------------------------------

def matrix_sets(sd: dict, names, rng) -> dict:
    """The rate-distortion data sets, name -> float64 matrix: rotated weights, raw weights
    and Gaussian matrices of the same shapes (drawn from ``rng`` in the order of ``names``).

    Chapter: Gain quantization (book/gain.ipynb)."""
    return {"rotated": {nm: rotated(sd, nm) for nm in names},
            "raw": {nm: weight(sd, nm) for nm in names},
            "Gaussian": {nm: rng.standard_normal(sd[nm].shape) for nm in names}}


def rate_distortion(sets: dict, rates, squared_errors):
    """``squared_errors(W, R)``: quantizer -> squared error of the matrix W at rate R.
    Returns (quantizer, set, R, name) -> squared error, and (quantizer, set, R) -> relative
    MSE pooled over the set's matrices (summed errors over summed energy).

    Chapter: Gain quantization (book/gain.ipynb)."""
    err, rd = {}, {}
    for label, mats in sets.items():
        energy = sum(np.sum(W ** 2) for W in mats.values())
        for R in rates:
            for nm, W in mats.items():
                err.update({(q, label, R, nm): e for q, e in squared_errors(W, R).items()})
            for q in dict.fromkeys(key[0] for key in err):
                rd[q, label, R] = sum(err[q, label, R, nm] for nm in mats) / energy
    return err, rd


def mean_bits(mats: dict, choice: dict, rates) -> dict:
    """R -> PVQ's bits per weight over ``mats`` (weighted by their sizes), each with the
    configuration ``choice[n, R]`` of its row length, everything stored counted.

    Chapter: Gain quantization (book/gain.ipynb)."""
    size = sum(W.size for W in mats.values())
    return {R: sum(choice[W.shape[1], R].bits_per_weight(W.shape) * W.size
                   for W in mats.values()) / size for R in rates}


def rd_table(rd: dict, bits_pvq: dict, rates) -> book.Table:
    """Rotated weights: PVQ's bits, the Gaussian bound, MSE / bound for PVQ and RTN, and
    RTN / PVQ.

    Chapter: Gain quantization (book/gain.ipynb)."""
    D = baselines.gaussian_bound
    return book.table(["R", "PVQ bpw", "bound 2^(-2R)", "PVQ / bound", "RTN / bound",
                       "RTN / PVQ"],
                      [[R, bits_pvq[R], D(R), rd["PVQ", "rotated", R] / D(R),
                        rd["RTN", "rotated", R] / D(R),
                        rd["RTN", "rotated", R] / rd["PVQ", "rotated", R]] for R in rates],
                      [".2f", ".4f", ".5f", ".2f", ".2f", ".2f"])


def control_table(rd: dict, rates) -> book.Table:
    """Raw weights and the Gaussian control: MSE / bound, and raw / rotated MSE.

    Chapter: Gain quantization (book/gain.ipynb)."""
    def f(q, s, R):
        return rd[q, s, R] / baselines.gaussian_bound(R)
    return book.table(["R", "PVQ raw", "RTN raw", "PVQ Gauss", "RTN Gauss", "PVQ raw / rot.",
                       "RTN raw / rot."],
                      [[R, f("PVQ", "raw", R), f("RTN", "raw", R), f("PVQ", "Gaussian", R),
                        f("RTN", "Gaussian", R),
                        rd["PVQ", "raw", R] / rd["PVQ", "rotated", R],
                        rd["RTN", "raw", R] / rd["RTN", "rotated", R]] for R in rates],
                      [".2f", ".2f", ".2f", ".2f", ".2f", ".3f", ".3f"])


def rd_figure(rd: dict, bits_pvq: dict, rates, R: float = 3.25):
    """Relative MSE (top) and its ratio to the Gaussian bound (bottom) against the bits per
    weight PVQ and RTN g128 use, for the three data sets; the rotated values at ``R`` named.

    Chapter: Gain quantization (book/gain.ipynb)."""
    fig, (ax, bx) = book.figure(2, 1, height=3.4)
    Rs = np.array(rates)
    ax.semilogy(Rs, baselines.gaussian_bound(Rs), "k-", lw=1, label="Gaussian bound $2^{-2R}$")
    bx.axhline(1.0, color="k", lw=1, label="Gaussian bound")
    styles = {"rotated": ("-", "o", 7), "raw": (":", "v", 6), "Gaussian": ("--", "x", 8)}
    for label, (ls, mk, ms) in styles.items():
        for q, c in (("PVQ", "C0"), ("RTN", "C3")):
            y = np.array([rd[q, label, r] for r in Rs])
            x = np.array([bits_pvq[r] for r in Rs]) if q == "PVQ" else Rs  # the rate each uses
            name = f"{q if q == 'PVQ' else 'RTN g128'}, {label}"
            ax.semilogy(x, y, marker=mk, ms=ms, ls=ls, color=c, label=name)
            bx.plot(x, y / baselines.gaussian_bound(x), marker=mk, ms=ms, ls=ls, color=c,
                    label=name)
    for q, at in (("PVQ", (3.4, 0.025)), ("RTN", (3.45, 0.07))):
        ax.annotate(f"{q} {rd[q, 'rotated', R]:.4f}", (R, rd[q, "rotated", R]), xytext=at,
                    arrowprops=dict(arrowstyle="->"))
    ax.set(xlabel="total bits per weight (everything stored)", ylabel="relative MSE",
           title="Layers 5 and 25 of SmolLM2-135M (14 matrices)")
    ax.legend(ncol=2)
    ax.grid(alpha=0.3)
    bx.set(xlabel="total bits per weight", ylabel="relative MSE / $2^{-2R}$",
           title="distance to the Gaussian bound", ylim=(0, 6.5))
    bx.legend(ncol=3, loc="upper right")
    bx.grid(alpha=0.3)
    return fig


def by_kind_table(err: dict, mats: dict, R: float, label: str = "rotated") -> book.Table:
    """Per layer kind, MSE / Gaussian bound at ``R`` of PVQ and RTN g128, pooled over the
    matrices ``mats`` (name -> matrix) of that kind.

    Chapter: Gain quantization (book/gain.ipynb)."""
    D, rows = baselines.gaussian_bound(R), []
    for k in data.LINEAR_KINDS:
        of_kind = [nm for nm in mats if kind_of(nm) == k]
        e = sum(np.sum(mats[nm] ** 2) for nm in of_kind)
        pvq, rtn = (sum(err[q, label, R, nm] for nm in of_kind) / e for q in ("PVQ", "RTN"))
        rows.append([k, mats[of_kind[0]].shape[1], pvq / D, rtn / D])
    return book.table(["kind", "n", "PVQ / bound", "RTN g128 / bound"], rows,
                      [None, "d", ".2f", ".2f"])


# -- throughput ---------------------------------------------------------------------------

def throughput_table(run: dict) -> book.Table:
    """The recorded run of ``benchmarks/bench_gain.py`` (``bench.load("gain")``): thousands
    of weights per second for each shape, configuration and tier.

    Chapter: Gain quantization (book/gain.ipynb)."""
    cols = ["quantize_dequantize", "quantize", "dequantize", "search only"]
    return book.table(["n", "L", "K", "tier", "quantize + dequantize", "quantize",
                       "dequantize", "search only"],
                      [[r["n"], r["L"], r["K"], r["backend"]] + [r[c] / 1e3 for c in cols]
                       for r in run["rows"]],
                      ["d", "d", "d", None] + [".0f"] * 4)

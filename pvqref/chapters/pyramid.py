"""What the pyramid chapter shows around its ideas: the points as directions, the printed
tables, the greedy-versus-exhaustive and distortion experiments, the figures and a quick
timing of the tiers.

The algorithms are in :mod:`pvqref.pyramid` (counting, enumeration, search, packing) and
:mod:`pvqref.baselines`; these functions only orchestrate and present them, in the order of
the chapter's sections:

- points on the sphere: :func:`directions`, :func:`points_figure`;
- counting and rates: :func:`count_table_text`, :func:`rates_text`;
- numbering: :func:`listing_text`, :func:`table_megabytes`;
- greedy search against every point: :func:`unit_vectors`, :func:`cosines`,
  :func:`best_cosines`, :func:`miss_table_text`;
- distortion on Gaussian data: :func:`mse`, :func:`db`, :func:`bound_db`,
  :func:`lloyd_max_mse`, :func:`distortion_rows`, :func:`distortion_text`,
  :func:`distortion_figure`;
- throughput: :func:`quick_throughput` (the recorded runs are rendered by
  :mod:`pvqref.bench.pyramid`).

Random draws come from the ``rng`` passed in, in the order the chapter has always drawn
them, so its printed numbers do not depend on how the code is split into cells.

Chapter: The pyramid lattice (book/pyramid.ipynb).
"""

from __future__ import annotations

import numpy as np

from .. import baselines, book
from .. import pyramid as P


# -- points on the sphere -----------------------------------------------------------------

def directions(L: int, K: int) -> np.ndarray:
    """All ``count(L, K)`` points of P(L, K), in rank order, scaled to unit length: a
    (count, L) float64 array.

    Chapter: The pyramid lattice (book/pyramid.ipynb)."""
    Y = P.decode_batch(range(P.count(L, K)), L, K, backend="numba").astype(float)
    return Y / np.linalg.norm(Y, axis=1, keepdims=True)


def points_figure(K2: int = 5, K3: int = 8):
    """Three panels: the integer points of P(2, ``K2``) on their diamond, the same points
    projected onto the circle, and P(3, ``K3``) on the sphere. Returns the figure.

    Chapter: The pyramid lattice (book/pyramid.ipynb)."""
    import matplotlib.pyplot as plt
    fig = plt.figure(figsize=(book.COLUMN_WIDTH, 3.4), dpi=112)
    _circle_panels(fig, K2)
    U3 = directions(3, K3)
    ax = fig.add_subplot(1, 3, 3, projection="3d")
    ax.scatter(U3[:, 0], U3[:, 1], U3[:, 2], s=6, c=U3[:, 2], cmap="viridis")
    ax.set_title(f"P(3, {K3}) on the sphere:\n{len(U3)} points")
    ax.set_box_aspect((1, 1, 1))
    return fig


def _circle_panels(fig, K: int) -> None:
    """The first two panels of :func:`points_figure`: P(2, K) on its diamond, then on the
    circle."""
    Y = P.decode_batch(range(P.count(2, K)), 2, K, backend="numba")
    ax = fig.add_subplot(1, 3, 1)
    ax.plot([K, 0, -K, 0, K], [0, K, 0, -K, 0], color="0.8", lw=1)
    ax.scatter(Y[:, 0], Y[:, 1], s=18)
    ax.set_title(f"P(2, {K}):\n{len(Y)} integer points")
    ax.set_aspect("equal")
    ax = fig.add_subplot(1, 3, 2)
    U, t = directions(2, K), np.linspace(0, 2 * np.pi, 200)
    ax.plot(np.cos(t), np.sin(t), color="0.8", lw=1)
    ax.scatter(U[:, 0], U[:, 1], s=18)
    ax.set_title("projected\nonto the circle")
    ax.set_aspect("equal")


# -- counting and rates -------------------------------------------------------------------

def count_table_text(T) -> str:
    """The table ``T[L][K]`` = N(L, K) (from :func:`pvqref.pyramid.count_table`), one line
    per L >= 1, columns K = 0, 1, ..., as fixed-width text.

    Chapter: The pyramid lattice (book/pyramid.ipynb)."""
    ks = range(len(T[0]))
    lines = ["N(L, K)   K=" + "".join(f"{k:>8}" for k in ks)]
    lines += [f"   L={L}     " + "".join(f"{T[L][k]:>8}" for k in ks)
              for L in range(1, len(T))]
    return "\n".join(lines)


def rates_text(group_sizes, rates) -> str:
    """For each group size L and rate r (bits per weight): K = ``k_for_rate(L, r)``, log2 of
    the number of points, the bits an index is stored in and its 64-bit limbs.

    Chapter: The pyramid lattice (book/pyramid.ipynb)."""
    lines = [f"{'L':>4} {'bpw':>5} {'K':>5} {'log2 N':>8} {'bits':>5} {'64-bit limbs':>13}"]
    for L in group_sizes:
        for r in rates:
            K = P.k_for_rate(L, r)
            lines.append(f"{L:>4} {r:>5} {K:>5} {P.log2_count(L, K):>8.1f} "
                         f"{P.bits(L, K):>5} {P.n_limbs(L, K):>13}")
    return "\n".join(lines)


# -- numbering the points -----------------------------------------------------------------

def listing_text(L: int, K: int, per_line: int = 6) -> str:
    """Every point of P(L, K) with its rank, "rank: point", decoded by
    :func:`pvqref.pyramid.decode`, ``per_line`` to a line.

    Chapter: The pyramid lattice (book/pyramid.ipynb)."""
    items = [f"{i:>2}: {tuple(int(v) for v in P.decode(i, L, K))}"
             for i in range(P.count(L, K))]
    return "\n".join("   ".join(items[i:i + per_line])
                     for i in range(0, len(items), per_line))


def table_megabytes(L: int, K: int) -> float:
    """Megabytes of the fast tiers' two count tables N and M at (L, K): 2 (L+1)(K+1)
    ``n_limbs(L, K)`` limbs of 8 bytes.

    Chapter: The pyramid lattice (book/pyramid.ipynb)."""
    return 2 * (L + 1) * (K + 1) * P.n_limbs(L, K) * 8 / 1e6


# -- greedy search against every point ----------------------------------------------------

def unit_vectors(rng, n: int, L: int) -> np.ndarray:
    """``n`` Gaussian vectors of length ``L`` (one draw from ``rng``) scaled to unit length.

    Chapter: The pyramid lattice (book/pyramid.ipynb)."""
    X = rng.standard_normal((n, L))
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def cosines(X, Y) -> np.ndarray:
    """Per row, the cosine between the unit vector ``X[i]`` and the point ``Y[i]``.

    Chapter: The pyramid lattice (book/pyramid.ipynb)."""
    Y = np.asarray(Y).astype(float)
    return (Y * X).sum(axis=1) / np.linalg.norm(Y, axis=1)


def best_cosines(X, U, chunks: int = 8) -> np.ndarray:
    """Per row of the unit vectors ``X``, the largest cosine to any of the unit directions
    ``U`` (e.g. all points, :func:`directions`): exhaustive search, ``chunks`` rows of X at
    a time to bound the memory.

    Chapter: The pyramid lattice (book/pyramid.ipynb)."""
    return np.concatenate([(chunk @ U.T).max(axis=1)
                           for chunk in np.array_split(X, chunks)])


def miss_table_text(miss) -> str:
    """The fractions ``miss[L - 1, K - 1]`` as percentages, one line per L.

    Chapter: The pyramid lattice (book/pyramid.ipynb)."""
    lines = ["fraction of vectors where greedy misses the best point",
             "      K=" + "".join(f"{k:>7}" for k in range(1, miss.shape[1] + 1))]
    lines += [f"  L={L} " + "".join(f"{100 * m:>6.2f}%" for m in miss[L - 1])
              for L in range(1, miss.shape[0] + 1)]
    return "\n".join(lines)


# -- distortion on Gaussian vectors -------------------------------------------------------

def mse(x, x_hat) -> float:
    """Mean squared error per weight.

    Chapter: The pyramid lattice (book/pyramid.ipynb)."""
    return np.mean((x - x_hat) ** 2)


def db(d):
    """A distortion of a unit-variance source as SNR in dB, -10 log10(d).

    Chapter: The pyramid lattice (book/pyramid.ipynb)."""
    return -10 * np.log10(d)


def bound_db(rate):
    """The Gaussian rate-distortion bound D(R) = 2^(-2R) in dB.

    Chapter: The pyramid lattice (book/pyramid.ipynb)."""
    return db(2.0 ** (-2 * rate))


def lloyd_max_mse(x, R: int) -> float:
    """MSE of the Lloyd-Max quantizer of N(0, 1) with 2^R levels on ``x``: the best fixed
    scalar quantizer, R bits per weight.

    Chapter: The pyramid lattice (book/pyramid.ipynb)."""
    q = baselines.lloyd_max_gaussian(2 ** R)
    return mse(x, q[baselines.nearest_level(x, q)])


def distortion_rows(rng, quantizers: dict, rates=(2, 3, 4), group_sizes=(8, 32, 128),
                    n_weights: int = 1 << 16) -> list[tuple]:
    """Rows (method, L, bits per weight, MSE): for each rate R, ``n_weights`` N(0, 1)
    weights (one draw from ``rng``) quantized by Lloyd-Max (L shown as "-"), then, for each
    group size L, cut into groups of L and quantized by each of ``quantizers`` (name ->
    ``q(X, R)`` returning (bits per weight, X_hat)), in that order.

    Chapter: The pyramid lattice (book/pyramid.ipynb)."""
    rows = []
    for R in rates:
        x = rng.standard_normal(n_weights)
        rows.append(("Lloyd-Max", "-", R, lloyd_max_mse(x, R)))
        for L in group_sizes:
            X = x.reshape(-1, L)
            for name, quantize in quantizers.items():
                rate, X_hat = quantize(X, R)
                rows.append((name, L, rate, mse(X, X_hat)))
    return rows


def distortion_text(rows) -> str:
    """The rows of :func:`distortion_rows` sorted by method, L (as text) and rate, with
    their SNR, the bound at the rate they spend and the gap between the two, in dB.

    Chapter: The pyramid lattice (book/pyramid.ipynb)."""
    lines = [f"{'method':>9} {'L':>4} {'bits/weight':>11} {'SNR dB':>7} {'bound dB':>8} "
             f"{'gap dB':>6}"]
    for name, L, rate, d in sorted(rows, key=lambda r: (r[0], str(r[1]), r[2])):
        lines.append(f"{name:>9} {L:>4} {rate:>11.3f} {db(d):>7.2f} {bound_db(rate):>8.2f} "
                     f"{bound_db(rate) - db(d):>6.2f}")
    return "\n".join(lines)


def distortion_figure(rows):
    """SNR against the bits per weight each method spends (the rows of
    :func:`distortion_rows`), with the bound. Returns the figure.

    Chapter: The pyramid lattice (book/pyramid.ipynb)."""
    fig, ax = book.figure(height=3.6)
    rr = np.linspace(1.8, 8.2, 50)
    ax.plot(rr, bound_db(rr), color="0.5", lw=3, alpha=0.5, label="bound $2^{-2R}$")
    for name, style in (("PVQ", "-o"), ("RTN", "--s")):
        for L, colour in ((8, "C0"), (32, "C1"), (128, "C2")):
            pts = sorted((r[2], db(r[3])) for r in rows if r[0] == name and r[1] == L)
            ax.plot(*zip(*pts), style, color=colour, label=f"{name}, L = {L}", ms=4)
    pts = sorted((r[2], db(r[3])) for r in rows if r[0] == "Lloyd-Max")
    ax.plot(*zip(*pts), "k:d", label="Lloyd-Max scalar")
    ax.set(xlabel="bits per weight, everything stored", ylabel="SNR (dB)",
           title="Gaussian source: PVQ vs scalar quantizers")
    ax.legend(ncol=2)
    return fig


# -- throughput ---------------------------------------------------------------------------

def quick_throughput(rng, L: int, K: int, groups: dict, repeats: int = 3) -> book.Table:
    """A quick timing of each tier on ``groups[tier]`` Gaussian groups (drawn from ``rng``
    in the order of ``groups``), after a warm-up: millions of weights per CPU-second of
    search+encode and of decode, best of ``repeats``.

    Chapter: The pyramid lattice (book/pyramid.ipynb)."""
    import torch
    from ..bench.pyramid import best_times
    rows = []
    for tier, G in groups.items():
        X = rng.standard_normal((G, L))
        X = torch.as_tensor(X) if tier == "torch" else X
        P.decode_batch(P.encode_batch(P.search_batch(X[:2], K, tier), K, tier), L, K, tier)
        I = P.encode_batch(P.search_batch(X, K, backend=tier), K, backend=tier)
        t_se = best_times(lambda: P.encode_batch(P.search_batch(X, K, backend=tier), K,
                                                 backend=tier), repeats)[1]
        t_de = best_times(lambda: P.decode_batch(I, L, K, backend=tier), repeats)[1]
        rows.append([tier, G, G * L / t_se / 1e6, G * L / t_de / 1e6])
    return book.table(["tier", "groups", "search+encode (M w/s)", "decode (M w/s)"], rows,
                      [None, None, ".3g", ".3g"])

"""The pyramid chapter's helpers (pvqref.chapters.pyramid) that hold logic: the points as
unit directions in rank order, the chunked exhaustive search, the listing of ranks, and the
distortion experiment's order of draws and rows and its comparison with the bound."""

import ast

import numpy as np
import pytest

from pvqref import pyramid as P
from pvqref.chapters import pyramid as chapter


@pytest.mark.parametrize("L, K", [(2, 5), (3, 2), (4, 3)])
def test_directions_are_the_points_in_rank_order_scaled_to_the_sphere(L, K):
    U = chapter.directions(L, K)
    Y = P.points(L, K).astype(float)
    np.testing.assert_allclose(np.linalg.norm(U, axis=1), 1.0, rtol=1e-15)
    np.testing.assert_allclose(U, Y / np.linalg.norm(Y, axis=1, keepdims=True), rtol=1e-15)


@pytest.mark.parametrize("L, K, n", [(3, 3, 40), (4, 5, 40), (5, 4, 5)])
def test_best_cosines_is_the_exhaustive_search(L, K, n):
    # n = 5 rows in 8 chunks: some chunks are empty, every row still gets its answer
    X = chapter.unit_vectors(np.random.default_rng(L * K), n, L)
    best = chapter.best_cosines(X, chapter.directions(L, K))
    truth = chapter.cosines(X, [P.exhaustive_search(x, K) for x in X])
    assert best.shape == (n,)
    np.testing.assert_allclose(best, truth, rtol=0, atol=1e-12)


def test_cosines_of_a_point_with_its_own_direction_are_one():
    Y = P.points(3, 4)
    X = Y / np.linalg.norm(Y, axis=1, keepdims=True)
    np.testing.assert_allclose(chapter.cosines(X, Y), 1.0, rtol=1e-15)
    np.testing.assert_allclose(chapter.cosines(X, -Y), -1.0, rtol=1e-15)


def test_listing_numbers_every_point_in_rank_order():
    text = chapter.listing_text(3, 2, per_line=4)
    lines = text.splitlines()
    assert [len(line.split("   ")) for line in lines] == [4, 4, 4, 4, 2]   # 18 points
    entries = [e.split(": ") for line in lines for e in line.split("   ")]
    assert [int(i) for i, _ in entries] == list(range(P.count(3, 2)))
    points = [ast.literal_eval(point) for _, point in entries]
    assert points == [tuple(y) for y in P.points(3, 2)]


def test_distortion_rows_draw_once_per_rate_in_the_chapters_order():
    calls = []

    def zero(name):                 # reconstructs nothing: the MSE is the mean square
        def quantize(X, R):
            calls.append((name, X.shape, R))
            return R + 1 / X.shape[1], np.zeros_like(X)
        return quantize

    rng, same = np.random.default_rng(5), np.random.default_rng(5)
    rows = chapter.distortion_rows(rng, {"A": zero("A"), "B": zero("B")}, rates=(2, 3),
                                   group_sizes=(4, 8), n_weights=64)
    assert calls == [(q, (64 // L, L), R)
                     for R in (2, 3) for L in (4, 8) for q in "AB"]
    assert [r[:2] for r in rows] == [("Lloyd-Max", "-"), ("A", 4), ("B", 4), ("A", 8),
                                     ("B", 8)] * 2
    for R, start in ((2, 0), (3, 5)):
        x = same.standard_normal(64)                # the same draw, rate by rate
        assert rows[start] == ("Lloyd-Max", "-", R, chapter.lloyd_max_mse(x, R))
        assert rows[start + 1][2:] == (R + 1 / 4, np.mean(x ** 2))
    assert rng.standard_normal() == same.standard_normal()    # nothing else was drawn


def test_distortion_text_sorts_the_rows_and_measures_the_gap_to_the_bound():
    rows = [("PVQ", 8, 2.0, 2.0 ** -4), ("PVQ", 128, 3.0, 10 * 2.0 ** -6),
            ("Lloyd-Max", "-", 2, 2.0 * 2.0 ** -4), ("PVQ", 32, 2.0, 2.0 ** -4)]
    lines = chapter.distortion_text(rows).splitlines()
    assert lines[0].split() == ["method", "L", "bits/weight", "SNR", "dB", "bound", "dB",
                                "gap", "dB"]
    body = [line.split() for line in lines[1:]]
    assert [(m, L) for m, L, *_ in body] == [("Lloyd-Max", "-"), ("PVQ", "128"),
                                             ("PVQ", "32"), ("PVQ", "8")]
    assert body[0][2:] == ["2.000", "9.03", "12.04", "3.01"]      # twice the bound: 3 dB
    assert body[1][2:] == ["3.000", "8.06", "18.06", "10.00"]     # ten times: 10 dB
    assert body[2][5] == body[3][5] == "0.00"                     # at the bound

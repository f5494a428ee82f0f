"""The fast paths of pvqref.pyramid: float32 search filter, one-limb enumeration, out= buffers.

The float32-scored search (``_numba._search_kernel``, ``_torch._greedy``) must return the
reference's point bit for bit; the corpus below (about 20 s) mixes Gaussian and
heavy-tailed groups, where the filter decides almost every pulse, with small-integer
groups, where exact ties send pulses to the float64 near-tie path: 576,000 weights
(24,000 per (L, K, kind); 27,248 groups) against the reference tier.
"""

import numpy as np
import pytest
import torch

from pvqref import pyramid as P

# the (L, K) of issue 15's table, and both sides of the one-limb / projection thresholds
CORPUS = [(8, 36), (16, 12), (32, 7), (128, 187), (64, 33), (24, 200)]
KINDS = ["gauss", "cauchy", "student2", "integer"]


def corpus_groups(L, K, kind, G):
    rng = np.random.default_rng([L, K, KINDS.index(kind)])
    if kind == "gauss":
        X = rng.standard_normal((G, L))
    elif kind == "cauchy":
        X = rng.standard_cauchy((G, L))
    elif kind == "student2":
        X = rng.standard_t(2, (G, L))
    else:                                    # small integers: many exact ties
        X = rng.integers(-3, 4, size=(G, L)).astype(np.float64)
    X[:, 0] += (X == 0).all(axis=1)
    return X


@pytest.mark.parametrize("L,K", CORPUS)
@pytest.mark.parametrize("kind", KINDS)
def test_fast_search_is_the_reference_on_a_corpus(L, K, kind):
    G = 24000 // L                           # 24,000 weights per case, 6 x 4 cases
    X = corpus_groups(L, K, kind, G)
    ref = P.search_batch(X, K, backend="reference")
    assert (P.search_batch(X, K, backend="numba") == ref).all()
    Xt = torch.as_tensor(X[: max(4, G // 4)])
    assert (P.search_batch(Xt, K, backend="torch").numpy() == ref[: len(Xt)]).all()


@pytest.mark.parametrize("L,K", [(32, 7), (8, 36), (128, 187)])   # one limb, one, six
def test_enumeration_paths_agree_with_the_reference(L, K):
    X = corpus_groups(L, K, "gauss", 200)
    Y = P.search_batch(X, K)
    ints = [P.encode(y, K) for y in Y]
    for tier in ("numba", "torch"):
        Yin = torch.as_tensor(Y) if tier == "torch" else Y
        I = P.encode_batch(Yin, K, backend=tier)
        assert P.limbs_to_ints(I) == ints, tier
        assert (np.asarray(P.decode_batch(I, L, K, backend=tier)) == Y).all(), tier


@pytest.mark.parametrize("tier", P.BACKENDS)
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_out_buffers_are_written_and_returned(tier, kind):
    L, K = 16, 12
    X = corpus_groups(L, K, "gauss", 9)
    ref = P.search_batch(X, K, backend="reference")
    lim = P.encode_batch(ref, K, backend="reference")
    if kind == "torch":
        Xin, Yin, Iin = torch.as_tensor(X), torch.as_tensor(ref), torch.as_tensor(lim.view(np.int64))
        oY, oI, oD = (torch.full((9, L), 7, dtype=torch.int64), torch.zeros((9, 1), dtype=torch.int64),
                      torch.full((9, L), 7, dtype=torch.int64))
    else:
        Xin, Yin, Iin = X, ref, lim
        oY, oI, oD = np.full((9, L), 7), np.zeros((9, 1), np.uint64), np.full((9, L), 7)
    assert P.search_batch(Xin, K, backend=tier, out=oY) is oY
    assert P.encode_batch(Yin, K, backend=tier, out=oI) is oI
    assert P.decode_batch(Iin, L, K, backend=tier, out=oD) is oD
    assert (np.asarray(oY) == ref).all() and (np.asarray(oD) == ref).all()
    assert P.limbs_to_ints(oI) == P.limbs_to_ints(lim)


@pytest.mark.parametrize("tier", ["numba", "torch"])
def test_out_buffers_are_checked(tier):
    L, K = 16, 12
    X = corpus_groups(L, K, "gauss", 4)
    Y = P.search_batch(X, K)
    I = P.encode_batch(Y, K)
    with pytest.raises(ValueError, match="shape"):
        P.search_batch(X, K, backend=tier, out=np.empty((4, L + 1), np.int64))
    with pytest.raises(TypeError, match="dtype int64"):
        P.search_batch(X, K, backend=tier, out=np.empty((4, L), np.int32))
    with pytest.raises(TypeError, match="NumPy array"):
        P.search_batch(X, K, backend=tier, out=torch.empty((4, L), dtype=torch.int64))
    with pytest.raises(TypeError, match="torch tensor"):
        P.search_batch(torch.as_tensor(X), K, backend=tier, out=np.empty((4, L), np.int64))
    with pytest.raises(TypeError, match="dtype uint64"):
        P.encode_batch(Y, K, backend=tier, out=np.empty((4, 1), np.int64))
    with pytest.raises(ValueError, match="contiguous"):
        P.decode_batch(I, L, K, backend=tier, out=np.empty((L, 4), np.int64).T)
    with pytest.raises(ValueError, match="shape"):
        P.encode_batch(torch.as_tensor(Y), K, backend=tier, out=torch.empty((4, 2), dtype=torch.int64))


def test_torch_wide_decode_through_a_digit_left_at_minus_one(monkeypatch):
    # The torch tier's wide decoder runs one unchecked carry round per coordinate, which
    # leaves a digit at -1 where the subtraction's digit is 0 and the one below borrows.
    # Build such an index: for an odd block q = 2m + 1 of the first coordinate,
    # S(L, q) = Q(L, q - 1), so j = S(L, q) + 2^64 - 1 lies in block q when N(L-1, m) > 2^64,
    # and its digits are S's with digit 0 one lower and digit 2 one higher.
    from pvqref.pyramid import _torch_digits as D
    L, K = 128, 187
    Q, S = D.blocks(L, K)
    N = P.count_table(L, K)
    digit = lambda v, d: (v >> (32 * d)) & D.MASK32
    q = next(2 * m + 1 for m in range(K) if N[L - 1][m] > 2 ** 64 and
             digit(S[L][2 * m + 1], 0) >= 1 and digit(S[L][2 * m + 1], 2) < D.MASK32)
    ints = [N[L][K] - (S[L][q] + 2 ** 64 - 1 + t) for t in (0, 2 ** 40, 2 ** 70)]
    Y = np.array([P.decode(i, L, K) for i in ints])
    seen = []
    carry_once = D._carry_once
    monkeypatch.setattr(D, "_carry_once", lambda v: seen.append(int(carry_once(v).min())) or v)
    limbs = torch.as_tensor(P.ints_to_limbs(ints, L, K).view(np.int64))
    assert (P.decode_batch(limbs, L, K, backend="torch").numpy() == Y).all()
    assert seen[0] == -1                     # the first coordinate left a digit at -1


def test_opus_settings_benchmark_times_both_tiers_side_by_side():
    # benchmarks/bench_pyramid.py's Opus-settings table: a tiny run checks its rows and that
    # every timed call wrote the right points (measure_opus_case asserts it).
    from pvqref.bench.pyramid import measure_opus_case
    rows = measure_opus_case(16, 12, scale=1e-3, rounds=2)
    assert [r["tier"] for r in rows] == ["numba", "torch"]
    assert all(r[op] > 0 for r in rows for op in ("search", "encode", "decode"))
    assert rows[0]["index_bits"] == P.bits(16, 12)
    assert all(r[op + "_page_faults"] >= 0 for r in rows for op in ("search", "encode", "decode"))


def test_torch_search_chunk_by_chunk_and_checks_every_row_first(monkeypatch):
    # The torch search runs chunk by chunk (work arrays of a chunk's size); force 12-row
    # chunks: the points are the reference's across chunk edges, with and without the
    # projection, and a bad row in a late chunk is refused before out is touched.
    from pvqref.pyramid import _torch as PT
    monkeypatch.setattr(PT, "_chunk", lambda device: 12 * 16)
    X = corpus_groups(16, 12, "gauss", 100)
    X[5, 3] = -0.0
    for K in (5, 12, 40):
        ref = P.search_batch(X, K, backend="reference")
        out = torch.full((100, 16), 7, dtype=torch.int64)
        assert P.search_batch(torch.as_tensor(X), K, backend="torch", out=out) is out
        assert (out.numpy() == ref).all()
    bad = torch.as_tensor(X.copy())
    bad[90] = 0
    out = torch.full((100, 16), 7, dtype=torch.int64)
    with pytest.raises(ValueError, match="group 90 of X is all zeros"):
        P.search_batch(bad, 5, backend="torch", out=out)
    assert (out == 7).all()


# ---- the torch decoder's bucket lookup (``_torch_buckets.py``) ----------------------------

def _edges(row):
    """Every block edge Q(l, q) of a row with its neighbours, within [1, top]."""
    return sorted(j for j in {v + d for v in row for d in (-1, 0, 1)} if 1 <= j <= row[-1])


def _random(top, rng, n):
    """n random j in [1, top] (exact ints of any size)."""
    return sorted(1 + int(rng.integers(0, 2**62)) * top // 2**62 for _ in range(n))


@pytest.mark.parametrize("L,K", [(8, 36), (16, 12), (32, 7), (128, 187), (3, 40), (2, 1000)])
def test_bucket_lookup_is_the_first_block_at_every_edge(L, K):
    # int64 rows (N(l, K) < 2^62): the two table reads and one compare give the first q
    # with Q(l, q) >= j, as bisection does, at every edge, one off it, and at random j.
    import bisect
    from pvqref.pyramid import _torch_buckets as B, _torch_digits as D
    Q = D.blocks(L, K)[0]
    l_max = max(l for l in range(1, L + 1) if P.count(l, K) < 2**62)
    shift, T, V = B.small_tables(L, K, l_max, "cpu")
    assert shift[1] == -1 and all(shift[l] >= 0 for l in range(2, l_max + 1))
    rng = np.random.default_rng(L * K)
    for l in range(2, l_max + 1):
        js = _edges(Q[l]) + _random(Q[l][-1], rng, 300)
        j = torch.tensor(js)
        q = torch.full((len(js),), -5, dtype=torch.int32)
        B.first_block(j, shift[l], T[l], V[l], B.work_rows(j), out=q)
        assert q.tolist() == [bisect.bisect_left(Q[l], v) for v in js], l


@pytest.mark.parametrize("L,K", [(128, 187), (64, 300)])
def test_wide_bucket_guess_is_right_where_it_says_it_is_sure(L, K):
    # Wide rows: j is known to the decoder as a float64 within 2^-48; the guess must be
    # the first block wherever it is not flagged, for j read low, exactly and high, and
    # flag only the j next to an edge (none of the random ones, here).
    import bisect
    from pvqref.pyramid import _torch_buckets as B, _torch_digits as D
    Q = D.blocks(L, K)[0]
    _, _, R, _, l_small = D.decode_tables(L, K, "cpu")
    shift, off, T, Vf = B.wide_tables(L, K, l_small + 1, "cpu")
    rng = np.random.default_rng(L + K)
    flagged = 0
    for l in range(l_small + 1, L + 1):
        assert shift[l] >= 0, l                 # every row within float64's range
        edges, rand = _edges(Q[l]), _random(Q[l][-1], rng, 100)
        for js in (edges, rand):
            want = torch.tensor([bisect.bisect_left(Q[l], v) for v in js], dtype=torch.int32)
            for err in (-(2.0**-48), 0.0, 2.0**-48):
                jf = torch.tensor([float(v) * (1 + err) for v in js], dtype=torch.float64)
                q = torch.empty(len(js), dtype=torch.int32)
                unsure = D._guess_block(jf, l, shift, off, T, Vf, R, q)
                assert (q[~unsure] == want[~unsure]).all(), (l, err)
                if js is rand:
                    assert not unsure.any(), (l, err)
                else:
                    flagged += int(unsure.sum())
    assert flagged > 0                           # edges do reach the exact path


def test_torch_one_limb_index_check_names_the_bad_group():
    # One-limb indices are checked in one min/max pass; a bad one is still named.
    L, K = 32, 7
    top = P.count(L, K) - 1
    Y = P.decode_batch(torch.tensor([[0], [top]]), L, K, backend="torch")
    assert (Y.numpy() == np.array([P.decode(0, L, K), P.decode(top, L, K)])).all()
    for bad in (top + 1, 2**63, 2**64 - 1):
        I = torch.tensor([[0], [top], [bad - 2**64 if bad >= 2**63 else bad]])
        with pytest.raises(ValueError, match=rf"index {bad} \(group 2\) out of range"):
            P.decode_batch(I, L, K, backend="torch")


@pytest.mark.parametrize("fmt", ["float32", "float64"])
def test_bucket_margins_cover_the_error_of_j_as_a_float(fmt):
    # An edge just below a power of two, whose j reads as a float in the next bucket: as
    # float32 (an int64 j: 2^40 - 1 rounds to 2^40), or as float64 read high by 2^-48 (a
    # wide j). The tables' margin still gives the bucket a T at or below j's block.
    import bisect
    from pvqref.pyramid import _torch_buckets as B
    mant, bias, mu = B._F32 if fmt == "float32" else B._F64
    e = 40 if fmt == "float32" else 60
    row = [1, 2**e - (1 if fmt == "float32" else 1024), 2**(e + 1), 3 * 2**(e + 1)]
    b, T = B._row_buckets(row, 0, mu)
    ftype, itype = (np.float32, np.int32) if fmt == "float32" else (np.float64, np.int64)
    for j in _edges(row):
        f = np.array(j, dtype=ftype) * ftype(1 if fmt == "float32" else 1 + 2.0**-48)
        t = (int(f.view(itype)) >> (mant - b)) - (bias << b)
        q = int(T[t]) + (j > row[T[t]])
        assert q == bisect.bisect_left(row, j), j


@pytest.mark.parametrize("bad", ["nan", "inf", "zeros"])
def test_numba_search_checks_every_group_before_writing(bad):
    # The numba tier checks X's values in its own jitted pass (pvqref.pyramid leaves them
    # to it): a bad late group is refused, with the reference's message, before out is
    # touched.
    X = corpus_groups(16, 12, "gauss", 50)
    X[47] = {"nan": np.nan, "inf": -np.inf, "zeros": 0.0}[bad]
    out = np.full((50, 16), 7)
    msg = "group 47 of X is all zeros" if bad == "zeros" else "NaN or Inf"
    for tier in ("numba", "reference"):
        with pytest.raises(ValueError, match=msg):
            P.search_batch(X, 12, backend=tier, out=out)
    assert (out == 7).all()


def test_torch_search_counts_in_float64_when_float32_products_may_round():
    # The count of scores above the threshold is read off a float32 matrix product, which
    # users may let torch compute in TF32 or bfloat16: then the search counts in float64.
    from pvqref.pyramid import _torch as PT
    X = corpus_groups(16, 12, "gauss", 40)
    ref = P.search_batch(X, 12, backend="reference")
    cpu = torch.device("cpu")
    before = torch.get_float32_matmul_precision()
    assert before == "highest" and PT.exact_float32_matmul(cpu)
    try:
        torch.set_float32_matmul_precision("medium")
        assert not PT.exact_float32_matmul(cpu)
        assert (P.search_batch(torch.as_tensor(X), 12, backend="torch").numpy() == ref).all()
    finally:
        torch.set_float32_matmul_precision(before)
    assert PT.exact_float32_matmul(cpu)


@pytest.mark.parametrize("K", [4094, 4095])
def test_torch_search_both_sides_of_the_exact_denominators(K):
    # The torch search keeps yy + d_j in place while (K + 1)^2 < 2^24 (exact integers in
    # float32) and recomputes it from yy rounded to float32 above: the reference's points
    # on both sides of that edge.
    X = corpus_groups(6, K, "gauss", 30)
    ref = P.search_batch(X, K, backend="reference")
    assert (P.search_batch(torch.as_tensor(X), K, backend="torch").numpy() == ref).all()


def test_a_nan_anywhere_is_named_before_a_group_of_zeros():
    # Every tier looks for NaN and Inf in the whole batch first, then for a group of zeros.
    X = corpus_groups(8, 5, "gauss", 20)
    X[3] = 0.0
    X[15, 2] = np.nan
    for tier in P.BACKENDS:
        Xin = torch.as_tensor(X) if tier == "torch" else X
        with pytest.raises(ValueError, match="NaN or Inf"):
            P.search_batch(Xin, 5, backend=tier)

"""Tests of pvqref.coherence's Hadamard constructions: every factor, every supported size
(dense and by the fast transform), the unsupported-size errors and the size limits."""

import json
import math
import time

import numpy as np
import pytest

from pvqref import coherence as coh
from pvqref.coherence.constructions import _base_matrix

SMOLLM2_SIZES = (64, 192, 576, 1536)
# Hidden and feed-forward widths of LLaMA-family models, and the two head dimensions.
LLAMA_FAMILY = {"Llama-2-7B": (4096, 11008), "Llama-2-13B": (5120, 13824),
                "Llama-2-70B": (8192, 28672), "Llama-3-8B": (4096, 14336),
                "Llama-3-70B": (8192, 28672), "TinyLlama-1.1B": (2048, 5632),
                "SmolLM2-135M": (576, 1536), "SmolLM2-360M": (960, 2560),
                "SmolLM2-1.7B": (2048, 8192), "Mistral-7B": (4096, 14336),
                "head_dim": (64, 128)}
# Every one of them is constructed, and how (the chapter prints this table):
LLAMA_FAMILY_CONSTRUCTIONS = {
    64: "sylvester(64)", 128: "sylvester(128)",
    576: "paley2(q=17) (x) sylvester(16)",        # 36 * 16
    960: "paley1(q=59) (x) sylvester(16)",        # 60 * 16 = 15 * 64
    1536: "paley1(q=11) (x) sylvester(128)",      # 12 * 128
    2048: "sylvester(2048)",
    2560: "paley1(q=19) (x) sylvester(128)",      # 20 * 128 = 5 * 512
    4096: "sylvester(4096)",
    5120: "paley1(q=19) (x) sylvester(256)",
    5632: "paley1(q=43) (x) sylvester(128)",      # 44 * 128
    8192: "sylvester(8192)",
    11008: "paley1(q=343) (x) sylvester(32)",     # 344 * 32 = 43 * 256, GF(7^3)
    13824: "paley1(q=107) (x) sylvester(128)",    # 108 * 128
    14336: "paley2(q=13) (x) sylvester(512)",     # 28 * 512
    28672: "paley2(q=13) (x) sylvester(1024)",
}
LLAMA_SIZES = {n: True for n in (2048, 4096, 5632, 8192, 11008, 13824, 14336, 28672)}
# The factors k <= 256 (the cap before 1024) and their constructions: unchanged, so every
# size supported before keeps its construction (and its stored rotations stay loadable).
FACTORS_UP_TO_256 = {
    1: "sylvester", 12: "paley1(q=11)", 20: "paley1(q=19)", 28: "paley2(q=13)",
    36: "paley2(q=17)", 44: "paley1(q=43)", 52: "paley2(q=25)", 60: "paley1(q=59)",
    68: "paley1(q=67)", 76: "paley2(q=37)", 84: "paley1(q=83)", 100: "paley2(q=49)",
    108: "paley1(q=107)", 124: "paley2(q=61)", 132: "paley1(q=131)", 140: "paley1(q=139)",
    148: "paley2(q=73)", 164: "paley1(q=163)", 180: "paley1(q=179)", 196: "paley2(q=97)",
    204: "paley2(q=101)", 212: "paley1(q=211)", 220: "paley2(q=109)", 228: "paley1(q=227)",
    244: "paley1(q=243)", 252: "paley1(q=251)"}


def _factor(n):
    """The smallest constructed k with n / k a power of two (the documented rule)."""
    return min(k for k in coh.base_orders() if n % k == 0 and (n // k) & (n // k - 1) == 0)


# ---------------------------------------------------------------- constructions

@pytest.mark.parametrize("k", coh.base_orders())
def test_every_constructed_factor_is_an_integer_hadamard_matrix(k):
    H = _base_matrix(k)
    assert H.dtype == np.int64 and H.shape == (k, k) and set(np.unique(H)) <= {-1, 1}
    if k <= 512:
        G = H @ H.T                                      # int64 arithmetic
    else:
        # Exact as well, and 20x faster than numpy's int64 product at k ~ 1000: every
        # partial sum of the float64 BLAS product is an integer of magnitude <= k < 2^53.
        Hf = H.astype(np.float64)
        G = Hf @ Hf.T
    np.testing.assert_array_equal(G, k * np.eye(k, dtype=np.int64))


def test_factors_up_to_256_and_the_chapter_sizes_keep_their_constructions():
    base = coh.constructions._base_constructions()
    assert {k: v for k, v in base.items() if k <= 256} == FACTORS_UP_TO_256
    assert coh.MAX_BASE_ORDER == 1024 and max(base) <= 1024 and len(base) == 93
    for n, how in LLAMA_FAMILY_CONSTRUCTIONS.items():
        assert coh.construction(n) == how, n


def test_decomposition_is_the_smallest_constructed_factor():
    # The look-up by odd part gives what scanning the factors in increasing order does.
    bases = coh.base_orders()
    assert len({k >> ((k & -k).bit_length() - 1) for k in bases}) == len(bases)  # odd parts
    for n in range(1, 40000):
        k = next((k for k in bases if n % k == 0 and (n // k) & (n // k - 1) == 0), None)
        assert coh.is_supported(n) == (k is not None), n
        if k is not None and n % 97 == 0:
            assert coh.construction(n).startswith(
                "sylvester" if k == 1 else coh.constructions._base_constructions()[k]), n


@pytest.mark.parametrize("q", [3, 7, 11, 19, 27, 243, 343])
def test_paley1_over_prime_and_prime_power_fields(q):
    H = coh.paley1(q)
    np.testing.assert_array_equal(H @ H.T, (q + 1) * np.eye(q + 1, dtype=np.int64))


@pytest.mark.parametrize("q", [5, 9, 13, 17, 25, 49, 81, 121, 125])
def test_paley2_over_prime_and_prime_power_fields(q):
    H = coh.paley2(q)
    n = 2 * (q + 1)
    np.testing.assert_array_equal(H @ H.T, n * np.eye(n, dtype=np.int64))


def test_quadratic_character_of_gf9_has_four_squares_and_is_symmetric():
    chi = coh.quadratic_character(9)
    assert (chi[1:, 0] == 1).sum() == 4 and (np.diag(chi) == 0).all()
    np.testing.assert_array_equal(chi, chi.T)            # -1 is a square in GF(9)


@pytest.mark.parametrize("bad, fn", [(15, coh.paley1), (5, coh.paley1), (7, coh.paley2),
                                     (21, coh.paley2), (12, coh.sylvester)])
def test_constructions_reject_wrong_parameters(bad, fn):
    with pytest.raises(ValueError):
        fn(bad)


def test_required_sizes_are_supported_and_llama_coverage_is_as_documented():
    for n in SMOLLM2_SIZES + (12, 36, 20, 28, 44, 52, 60):
        assert coh.is_supported(n), n
    assert coh.construction(576) == "paley2(q=17) (x) sylvester(16)"
    assert coh.construction(1536) == "paley1(q=11) (x) sylvester(128)"
    assert coh.construction(12) == "paley1(q=11)" and coh.construction(8) == "sylvester(8)"
    for n, covered in LLAMA_SIZES.items():
        assert coh.is_supported(n) == covered, n
    sizes = coh.supported_sizes(16384)
    assert sizes == [n for n in range(1, 16385) if coh.is_supported(n)][: len(sizes)]
    assert sizes[-1] == 16384 and 172 not in sizes and 11008 in coh.supported_sizes(11008)
    assert sum(coh.is_supported(n) for n in range(64, 32769, 64)) == 302     # of 512


def test_every_llama_family_width_is_supported():
    widths = sorted({n for pair in LLAMA_FAMILY.values() for n in pair})
    assert widths == sorted(LLAMA_FAMILY_CONSTRUCTIONS)
    rows = coh.construction_table(widths)
    assert [n for n, _, _ in rows] == widths
    assert all(ok for _, ok, _ in rows), [r for r in rows if not r[1]]
    assert {n: how for n, _, how in rows} == LLAMA_FAMILY_CONSTRUCTIONS


def test_construction_table_gives_the_reason_for_unsupported_widths():
    assert coh.construction_table([11008, 172, 6, 3776]) == [
        (11008, True, "paley1(q=343) (x) sylvester(32)"),
        (172, False, "n = 43 * 2^2, and the smallest constructed factor with odd part 43 "
                     "is k = 344 = 43 * 2^3, which does not divide n"),
        (6, False, "6 is not a multiple of 4; a Hadamard order must be 1, 2 or a multiple "
                   "of 4"),
        (3776, False, "n = 59 * 2^6, and no factor k = 59 * 2^j <= 1024 comes from Paley I "
                      "(q = k - 1 a prime power = 3 mod 4) or Paley II (q = k/2 - 1 a prime "
                      "power = 1 mod 4)")]
    assert coh.construction_table(np.array([12, 20])) == [
        (12, True, "paley1(q=11)"), (20, True, "paley1(q=19)")]
    with pytest.raises(ValueError, match="^Hadamard order must be a positive integer"):
        coh.construction_table([0])
    with pytest.raises(TypeError, match="^Hadamard order must be an integer"):
        coh.construction_table([12.0])


@pytest.mark.parametrize("n", coh.supported_sizes(2048))
def test_dense_hadamard_is_orthonormal_for_every_supported_n_up_to_2048(n):
    # Every n: H_n is exactly (H_k (x) H_M) / sqrt(n) (so every |entry| is 1/sqrt(n)), with
    # H_k H_k^T = k I tested in exact arithmetic, so H_n is orthonormal up to the rounding
    # of 1/sqrt(n). The O(n^3) Gram check in floating point as well wherever it was made
    # before the factors above 256 were added (k <= 256), and for every n <= 1024: at the
    # new sizes in (1024, 2048] it would triple the cost of this test.
    H = coh.hadamard(n)
    k = _factor(n)
    np.testing.assert_array_equal(
        H, np.kron(_base_matrix(k) / math.sqrt(n), coh.sylvester(n // k).astype(np.float64)))
    if k <= 256 or n <= 1024:
        assert np.abs(H @ H.T - np.eye(n)).max() < 1e-6


def _exact_hadamard_entries(n, rows, cols):
    """H_n[rows][:, cols] straight from the definition H_n = (H_k (x) H_M) / sqrt(n), without
    the n x n matrix: H[a M + b, a' M + b'] = H_k[a, a'] (-1)^popcount(b & b') / sqrt(n)
    (Sylvester in natural order), k the smallest constructed factor with n / k = M = 2^m."""
    k = _factor(n)
    M = n // k
    a, b = np.divmod(np.asarray(rows), M)
    a2, b2 = np.divmod(np.asarray(cols), M)
    sylvester = 1 - 2 * (np.bitwise_count(b[:, None] & b2[None, :]).astype(np.int64) % 2)
    return _base_matrix(k)[a[:, None], a2[None, :]] * sylvester / math.sqrt(n)


def _sampled_indices(n, count, seed):
    """``count`` random indices plus the block boundaries of every factorisation."""
    M = n // _factor(n)
    fixed = [i for i in (0, 1, M - 1, M, n - M, n - 1, n // 2) if i < n]
    rng = np.random.default_rng(seed)
    return np.unique(np.r_[fixed, rng.choice(n, size=count, replace=False)])


def test_exact_entry_formula_is_the_dense_matrix():
    for n in (1, 2, 12, 40, 96, 576, 1536):
        idx = np.arange(n)
        np.testing.assert_array_equal(_exact_hadamard_entries(n, idx, idx), coh.hadamard(n))


LLAMA_SUPPORTED = [n for n, covered in LLAMA_SIZES.items() if covered]


def _large_sizes():
    """The sizes in (2048, 32768] checked by sampled columns: every one whose factor k is
    <= 256 (all there were before the cap was raised from 256 to 1024: every Sylvester
    length M from 16 to 2^13 with those factors); for each factor k > 256 its smallest
    multiple k 2^m in the range (the butterfly on length M does not depend on k, the
    dense k-mix does not depend on M); and two at the largest M for a large k: 11008 =
    344 * 32 (Llama-2-7B) and 32640 = 1020 * 32 (the largest factor)."""
    sizes = {11008, 32640}
    for k in coh.base_orders():
        multiples = [k << m for m in range(16) if 2048 < k << m <= 32768]
        sizes.update(multiples if k <= 256 else multiples[:1])
    return sorted(sizes)


LARGE_SIZES = _large_sizes()


@pytest.mark.parametrize("n", LARGE_SIZES)
def test_fast_transform_is_orthonormal_for_supported_n_up_to_32768(n):
    """What is checked, in float64:

    - every supported n <= 2048 exhaustively: the dense H_n equals the Kronecker product
      exactly, and H_n H_n^T = I to 1e-6 wherever k <= 256 or n <= 1024 (test above; also,
      to 1e-12, the tiers against that dense matrix);
    - the supported n in (2048, 32768] of :func:`_large_sizes` (every one with k <= 256,
      the smallest for each larger k, and 11008 and 32640 at M = 32), which include the
      LLaMA sizes 4096, 5632, 8192, 11008, 13824, 14336 and 28672 (2048 is in the
      exhaustive set), by sampled columns and rows:
      the fast transform of e_j (column j) for ~47 sampled j and the transposed transform
      of e_i (row i) for ~23 sampled i, always including the factor blocks' boundaries,
      equal the exact entries H_k[a, a'] (-1)^popcount(b & b') / sqrt(n) of the definition
      to 1e-12, and the sampled columns' Gram matrix is I to 1e-12;
    - that the definition is orthonormal for every n follows from H_k H_k^T = k I (exact
      integers, tested for every constructed k) and H_M H_M^T = M I, since the Kronecker
      product of orthonormal matrices is orthonormal. Tier agreement at the LLaMA sizes:
      test_tiers_agree_at_llama_sizes.
    """
    cols = _sampled_indices(n, 40, n)
    E = np.zeros((cols.size, n))
    E[np.arange(cols.size), cols] = 1.0
    Hcols = coh.hadamard_transform(E)                  # row t = H e_{cols[t]} = column
    np.testing.assert_allclose(Hcols.T, _exact_hadamard_entries(n, np.arange(n), cols),
                               rtol=0, atol=1e-12)
    assert np.abs(Hcols @ Hcols.T - np.eye(cols.size)).max() < 1e-12
    rows = _sampled_indices(n, 16, n + 1)
    E = np.zeros((rows.size, n))
    E[np.arange(rows.size), rows] = 1.0
    Hrows = coh.hadamard_transform(E, transpose=True)  # H^T e_i = row i of H
    np.testing.assert_allclose(Hrows, _exact_hadamard_entries(n, rows, np.arange(n)),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("n", LLAMA_SUPPORTED)
def test_tiers_agree_at_llama_sizes(n):
    # All three tiers, float64, against each other (1e-12), against the exact definition
    # on sampled output coordinates, and forward then inverse is the identity.
    R = coh.RandomizedHadamard(n, 5)
    x = np.random.default_rng(n).standard_normal((3, n))
    rows = _sampled_indices(n, 24, n + 2)
    exact = (x * R.signs) @ _exact_hadamard_entries(n, rows, np.arange(n)).T
    ys = {b: R.forward(x, backend=b) for b in coh.BACKENDS}
    for b, y in ys.items():
        np.testing.assert_allclose(y[:, rows], exact, rtol=0, atol=1e-12, err_msg=b)
        np.testing.assert_allclose(y, ys["reference"], rtol=0, atol=1e-12, err_msg=b)
        np.testing.assert_allclose(R.inverse(y, backend=b), x, rtol=0, atol=1e-12, err_msg=b)


def test_llama2_7b_ffn_width_11008():
    # 11008 = 43 * 2^8; 43 * 2^j needs a Paley factor: 172 and 86 have none (171 = 9 * 19,
    # 85 = 5 * 17 are not prime powers), but q = 343 = 7^3 = 3 (mod 4) gives Paley I of
    # order 344 = 43 * 8 over GF(7^3), and 11008 = 344 * 32.
    n = 11008
    assert coh.is_supported(n) and coh.construction(n) == "paley1(q=343) (x) sylvester(32)"
    assert coh.constructions._decompose(n)[:2] == (344, 32) and _factor(n) == 344
    H = _base_matrix(344)
    np.testing.assert_array_equal(H, coh.paley1(343))
    assert H.dtype == np.int64 and set(np.unique(H)) == {-1, 1}
    np.testing.assert_array_equal(H @ H.T, 344 * np.eye(344, dtype=np.int64))   # exact
    # Every tier, float64, on sampled columns (H e_j) and rows (H^T e_i), against the exact
    # entries of the definition (the dense 11008^2 float64 matrix would take 0.9 GiB).
    cols = _sampled_indices(n, 24, 1)
    rows = _sampled_indices(n, 12, 2)
    Ec, Er = np.zeros((cols.size, n)), np.zeros((rows.size, n))
    Ec[np.arange(cols.size), cols] = 1.0
    Er[np.arange(rows.size), rows] = 1.0
    exact_cols = _exact_hadamard_entries(n, np.arange(n), cols).T
    exact_rows = _exact_hadamard_entries(n, rows, np.arange(n))
    for b in coh.BACKENDS:
        np.testing.assert_allclose(coh.hadamard_transform(Ec, backend=b), exact_cols,
                                   rtol=0, atol=1e-12, err_msg=b)
        np.testing.assert_allclose(coh.hadamard_transform(Er, backend=b, transpose=True),
                                   exact_rows, rtol=0, atol=1e-12, err_msg=b)
    # RandomizedHadamard(11008) is orthogonal: norms and inner products of random vectors
    # are kept (1e-12 relative, float64) on every tier, and the tiers agree.
    R = coh.RandomizedHadamard(n, 0)
    x = np.random.default_rng(11008).standard_normal((6, n))
    ys = {b: R.forward(x, backend=b) for b in coh.BACKENDS}
    for b, y in ys.items():
        np.testing.assert_allclose(np.linalg.norm(y, axis=1), np.linalg.norm(x, axis=1),
                                   rtol=1e-12, err_msg=b)
        assert np.abs(y @ y.T - x @ x.T).max() < 1e-12 * n, b
        np.testing.assert_allclose(y, ys["reference"], rtol=0, atol=1e-12, err_msg=b)
        np.testing.assert_allclose(R.inverse(y, backend=b), x, rtol=0, atol=1e-12, err_msg=b)
    d = json.loads(json.dumps(R.to_dict()))
    assert d["construction"] == "paley1(q=343) (x) sylvester(32)"
    np.testing.assert_array_equal(coh.rotation_from_dict(d).signs, R.signs)


# ---------------------------------------------------------------- unsupported sizes

@pytest.mark.parametrize("n", [3, 6, 172, 3776])
def test_unsupported_size_raises_clear_error_naming_the_fallback(n):
    for build in (coh.hadamard, lambda m: coh.RandomizedHadamard(m, 0),
                  lambda m: coh.hadamard_transform(np.zeros(m)),
                  lambda m: coh.make_rotation(m, 0)):
        with pytest.raises(ValueError) as err:
            build(n)
        msg = str(err.value)
        assert f"n={n}" in msg and "k in [1, 12, 20" in msg and "..., 1020]" in msg
        assert "(93 Sylvester and Paley I/II factors up to 1024" in msg
        assert f"({coh.construction_table([n])[0][2]})" in msg      # the reason
        assert "fallback='orthogonal'" in msg and "RandomOrthogonal" in msg


ORDER_CHECKS = ((coh.hadamard, "Hadamard order"),
                (lambda m: coh.RandomizedHadamard(m, 0), "Hadamard order"),
                (coh.construction, "Hadamard order"),
                (lambda m: coh.RandomOrthogonal(m, 0), "n"),
                (lambda m: coh.random_orthogonal(m, 0), "n"),
                (lambda m: coh.make_rotation(m, 0, fallback="orthogonal"), "n"))


@pytest.mark.parametrize("n", [0, -4])
def test_non_positive_order_is_rejected(n):
    for build, name in ORDER_CHECKS:
        with pytest.raises(ValueError, match=f"^{name} must be a positive integer, got {n}$"):
            build(n)
    assert not coh.is_supported(n)


@pytest.mark.parametrize("n", [2.0, True, np.float64(12.0), "12", None])
def test_non_integer_order_is_a_type_error(n):
    # A float, bool, string or None is the wrong type for an order: TypeError naming it.
    for build, name in ORDER_CHECKS:
        with pytest.raises(TypeError, match=f"^{name} must be an integer"):
            build(n)
    assert not coh.is_supported(n)


# ---------------------------------------------------------------- sizes: validation, limits

def test_unsupported_size_error_is_immediate_for_huge_n():
    for n in (10**9 + 1, 2**40 + 1, 10**12 + 7):        # an old linear scan took 13 s+
        start = time.perf_counter()
        with pytest.raises(ValueError, match=f"order n={n} .*unsupported size"):
            coh.hadamard(n)
        assert time.perf_counter() - start < 0.5


def test_numpy_integer_orders_are_python_ints():
    with pytest.raises(ValueError, match="order n=127 .*unsupported size"):
        coh.hadamard(np.int8(127))                      # was an OverflowError
    assert not coh.is_supported(np.int8(127)) and coh.is_supported(np.int8(124))
    np.testing.assert_array_equal(coh.hadamard(np.int16(12)), coh.hadamard(12))
    for R in (coh.RandomizedHadamard(np.int64(576), np.uint8(3)),
              coh.RandomOrthogonal(np.int32(20), np.int64(3))):
        assert type(R.n) is int and type(R.seed) is int
        json.dumps(R.to_dict())


def test_huge_orders_are_refused_before_allocating():
    with pytest.raises(ValueError, match="MAX_DENSE_ORDER = 16384.*hadamard_transform"):
        coh.hadamard(2**40)
    with pytest.raises(ValueError, match="MAX_DENSE_ORDER"):
        coh.hadamard(28672)                             # supported, but 6 GiB dense
    with pytest.raises(ValueError, match="MAX_ORDER"):
        coh.RandomizedHadamard(2**40, 0)
    with pytest.raises(ValueError, match="MAX_ORDER"):
        coh.make_rotation(2**27, 0)
    for build in (lambda: coh.RandomOrthogonal(20000, 0),
                  lambda: coh.make_rotation(20001, 0, fallback="orthogonal"),
                  lambda: coh.random_orthogonal(10**6, 0)):
        with pytest.raises(ValueError, match="dense .*MAX_DENSE_ORDER"):
            build()
    assert coh.RandomizedHadamard(28672, 0).construction == "paley2(q=13) (x) sylvester(1024)"


@pytest.mark.parametrize("n", [1, 2, 12, 40, 96, 576, 1536, 2048])
def test_dense_hadamard_is_the_kronecker_product(n):
    k = _factor(n)
    expect = np.kron(_base_matrix(k), coh.sylvester(n // k)) / math.sqrt(n)
    np.testing.assert_array_equal(coh.hadamard(n), expect)


@pytest.mark.parametrize("n", [4096, 3072])
def test_dense_hadamard_peak_memory_is_as_documented(n):
    # The docstring says: the result (n^2 doubles) built in place, peak at most 1.25x.
    import tracemalloc
    _base_matrix(12 if n == 3072 else 1)        # cached factor: not counted
    tracemalloc.start()
    try:
        H = coh.hadamard(n)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert H.nbytes == n * n * 8 and peak <= 1.26 * H.nbytes

"""Tests of pvqref.pyramid: counting, the enumeration bijection, search, bit packing.

The reference tier (Python ints) is the oracle; the Numba and torch tiers must agree with it
bit for bit. Exhaustive checks on small sizes, hypothesis property tests up to L = 256, K = 600
(with the boundary sizes as explicit examples).
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings, strategies as st

from pvqref import pyramid as P
from pvqref.pyramid import _numba as PN, _torch as PT

TIERS = P.BACKENDS
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
SETTINGS = settings(max_examples=50, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


def closed_form(L, K):
    if K == 0:
        return 1
    return sum(2**i * math.comb(L, i) * math.comb(K - 1, i - 1) for i in range(1, min(L, K) + 1))


def random_point(rng, L, K, nonzeros=None):
    """A point of P(L, K): K split into m positive parts at random positions and signs."""
    if K == 0:
        return np.zeros(L, dtype=np.int64)
    m = nonzeros or int(rng.integers(1, min(L, K) + 1))
    cuts = np.sort(rng.choice(np.arange(1, K), size=m - 1, replace=False)) if m > 1 else []
    parts = np.diff(np.concatenate([[0], cuts, [K]])).astype(np.int64)
    y = np.zeros(L, dtype=np.int64)
    y[rng.choice(L, size=m, replace=False)] = parts * rng.choice([-1, 1], size=m)
    return y


def as_input(Y, tier):
    return torch.as_tensor(Y) if tier == "torch" else Y


def as_numpy(A):
    return A.numpy() if isinstance(A, torch.Tensor) else A


# ---- counting --------------------------------------------------------------------------------

def test_count_small_values_and_known_formulas():
    assert [P.count(1, k) for k in range(4)] == [1, 2, 2, 2]
    assert [P.count(2, k) for k in range(5)] == [1, 4, 8, 12, 16]
    for K in range(1, 60):
        assert P.count(2, K) == 4 * K
        assert P.count(3, K) == 4 * K * K + 2
    for L in range(1, 40):
        assert P.count(L, 0) == 1
        assert P.count(L, 1) == 2 * L


def test_count_recurrence_table_equals_closed_form():
    T = P.count_table(40, 40)
    for L in range(1, 41):
        for K in range(41):
            assert T[L][K] == closed_form(L, K) == P.count(L, K)


@pytest.mark.parametrize("L,K", [(8, 16), (32, 50), (128, 84), (128, 187), (128, 386), (256, 600)])
def test_numba_limb_table_is_exact_beyond_64_bits(L, K):
    n = P.count(L, K)
    assert n == closed_form(L, K)
    assert P.limbs_to_ints(PN.count_limbs(L, K)[None, :]) == [n]
    assert P.bits(L, K) == math.ceil(math.log2(n))
    assert P.n_limbs(L, K) == max(1, math.ceil(P.bits(L, K) / 64))
    assert abs(P.log2_count(L, K) - math.log2(n)) < 1e-9


def test_k_for_rate():
    assert [P.k_for_rate(128, r) for r in (2, 3, 4)] == [84, 187, 386]
    assert P.k_for_rate(8, 3) == 16 and P.k_for_rate(32, 3) == 50
    assert P.bits(128, 187) == 384 and P.bits(128, 188) > 384
    for L, r in [(128, 3.25), (16, 1.5), (64, 2.75), (5, 0.3), (3, 0.0), (2, 7.0)]:
        K = P.k_for_rate(L, r)
        assert P.bits(L, K) <= math.floor(L * r + 1e-9) < P.bits(L, K + 1)
    assert P.k_for_rate(1, 1.0) == 1 and P.k_for_rate(1, 0.5) == 0   # L = 1: {+-1} for all K


# ---- enumeration: exhaustive on small sizes --------------------------------------------------

@pytest.mark.parametrize("L", range(1, 7))
@pytest.mark.parametrize("K", range(0, 7))
def test_every_point_round_trips_on_every_tier(L, K):
    n = P.count(L, K)
    Y = np.array([P.decode(i, L, K) for i in range(n)])
    assert Y.shape == (n, L)
    assert (np.abs(Y).sum(axis=1) == K).all()
    assert len({tuple(y) for y in Y}) == n                  # a bijection onto P(L, K)
    assert [P.encode(y) for y in Y] == list(range(n))
    limbs = P.ints_to_limbs(range(n), L, K)
    for tier in TIERS:
        I = P.encode_batch(as_input(Y, tier), K, backend=tier)
        assert P.limbs_to_ints(I) == list(range(n)), tier
        D = P.decode_batch(as_input(limbs.view(np.int64), tier) if tier == "torch" else limbs,
                           L, K, backend=tier)
        assert (as_numpy(D) == Y).all(), tier


def test_decode_order_is_lexicographic_in_0_plus_minus():
    # first coordinate 0 first, then +1, -1, +2, -2 ...; the same rule recursively
    key = lambda y: [2 * abs(v) - (v > 0) if v else 0 for v in y]  # 0, +1->1, -1->2, +2->3 ...
    Y = [tuple(P.decode(i, 3, 3)) for i in range(P.count(3, 3))]
    assert Y == sorted(Y, key=key)


# ---- enumeration: property tests up to L = 256, K = 600 ----------------------------------------

@st.composite
def pyramid_points(draw, max_L=256, max_K=600, n=3):
    L = draw(st.integers(1, max_L))
    K = draw(st.integers(0, max_K))
    seed = draw(st.integers(0, 2**32 - 1))
    sparse = draw(st.booleans())
    rng = np.random.default_rng(seed)
    Y = np.stack([random_point(rng, L, K, 1 if sparse and K else None) for _ in range(n)])
    return L, K, Y


def corner_points(L, K):
    """Boundary rows of P(L, K): rank 0 (0, ..., 0, K), the last rank (-K, 0, ..., 0), all
    pulses on the other ends, and K spread as evenly as possible with alternating signs."""
    Y = np.zeros((5, L), dtype=np.int64)
    Y[0, -1], Y[1, 0], Y[2, 0], Y[3, -1] = K, -K, K, -K
    Y[4] = (K // L + (np.arange(L) < K % L)) * np.where(np.arange(L) % 2, -1, 1)
    return L, K, Y


# the largest sizes, K = 0 and 1, L = 1, and indices filling exactly 1, 6 and 8 limbs
CORNERS = [(256, 600), (255, 599), (1, 600), (256, 0), (256, 1), (1, 0),
           (8, 865), (128, 187), (128, 386)]


def with_examples(cases):
    """Decorator: every one of ``cases`` as an explicit hypothesis @example (always run)."""
    def decorate(test):
        for case in cases:
            test = example(case)(test)
        return test
    return decorate


@SETTINGS
@given(pyramid_points())
@with_examples([corner_points(L, K) for L, K in CORNERS])
def test_round_trip_range_and_tiers_bit_identical(case):
    L, K, Y = case
    n = P.count(L, K)
    ref = [P.encode(y, K) for y in Y]
    for y, i in zip(Y, ref):
        assert 0 <= i < n
        assert (P.decode(i, L, K) == y).all()
    for tier in ("numba", "torch"):
        I = as_numpy(P.encode_batch(as_input(Y, tier), K, backend=tier))
        assert P.limbs_to_ints(I) == ref, tier
        D = P.decode_batch(torch.as_tensor(I.view(np.int64)) if tier == "torch" else I,
                           L, K, backend=tier)
        assert (as_numpy(D) == Y).all(), tier


@pytest.mark.parametrize("L,K", [(128, 187), (128, 386), (256, 600), (64, 1), (1, 600),
                                 (16, 53), (16, 54)])   # 62 bits: the torch int64 path; 63: not
def test_extreme_indices_on_every_tier(L, K):
    n = P.count(L, K)
    ints = [0, 1, n // 3, n - 2, n - 1] if n > 2 else list(range(n))
    Y = np.array([P.decode(i, L, K) for i in ints])
    assert [P.encode(y) for y in Y] == ints
    for tier in ("numba", "torch"):
        limbs = P.ints_to_limbs(ints, L, K)
        D = P.decode_batch(torch.as_tensor(limbs.view(np.int64)) if tier == "torch" else limbs,
                           L, K, backend=tier)
        assert (as_numpy(D) == Y).all(), tier
        assert P.limbs_to_ints(P.encode_batch(Y, K, backend=tier)) == ints, tier


@pytest.mark.parametrize("L,K", [(16, 24), (32, 60), (128, 187), (128, 300), (256, 600)])
def test_every_limb_width_kernel_agrees_with_the_reference(L, K):
    # The numba decoder runs each stretch of one limb width in a kernel compiled for it
    # (widths 2..8) and wider stretches in a run-time-width kernel; these sizes pass
    # through every one of them (checked below) on Gaussian groups.
    from pvqref.pyramid._numba import tables
    Y = P.search_batch(np.random.default_rng(L + K).standard_normal((40, L)), K, "numba")
    width = tables(L, K)[2]
    seen = set()
    for y in Y:
        k = K
        for p in range(L):
            if k:
                seen.add(int(width[L - p, k]))
            k -= abs(int(y[p]))
    assert seen == set(range(1, P.n_limbs(L, K) + 1))
    ints = [P.encode(y, K) for y in Y]
    I = P.encode_batch(Y, K, backend="numba")
    assert P.limbs_to_ints(I) == ints
    assert (P.decode_batch(I, L, K, backend="numba") == Y).all()


def test_limb_conversions_round_trip():
    L, K = 256, 600
    n = P.count(L, K)
    ints = [0, 1, 2**64 - 1, 2**64, 2**200 + 12345, n - 1]
    limbs = P.ints_to_limbs(ints, L, K)
    assert limbs.dtype == np.uint64 and limbs.shape == (len(ints), P.n_limbs(L, K))
    assert P.limbs_to_ints(limbs) == ints
    assert P.limbs_to_ints(torch.as_tensor(limbs.view(np.int64))) == ints
    assert limbs[2, 0] == np.uint64(2**64 - 1) and limbs[3, 1] == 1


# ---- search ----------------------------------------------------------------------------------

def search_input(L, kind, seed):
    """Three groups of length L: Gaussian, small integers (many exact ties), Cauchy, or
    Gaussian scaled by 10^(+-30)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((3, L))
    if kind == "integer":                     # many exact ties
        X = rng.integers(-2, 3, size=(3, L)).astype(np.float64)
    elif kind == "heavy":
        X = rng.standard_cauchy((3, L))
    elif kind == "scaled":
        X = X * 10.0 ** rng.integers(-30, 30)
    X[:, 0] += (X == 0).all(axis=1)           # no all-zero group
    return X


@st.composite
def search_cases(draw, max_L=256, max_K=600):
    L = draw(st.integers(1, max_L))
    K = draw(st.integers(0, max_K))
    seed = draw(st.integers(0, 2**32 - 1))
    kind = draw(st.sampled_from(["gauss", "integer", "heavy", "scaled"]))
    return K, search_input(L, kind, seed)


# the largest sizes, K = 0 and 1, L = 1, and both sides of the projection threshold K > L/2
SEARCH_CORNERS = [(256, 600, "gauss"), (256, 600, "integer"), (256, 600, "heavy"),
                  (256, 0, "gauss"), (256, 1, "integer"), (1, 600, "scaled"),
                  (256, 128, "integer"), (256, 129, "gauss")]


@SETTINGS
@given(search_cases())
@with_examples([(K, search_input(L, kind, 0)) for L, K, kind in SEARCH_CORNERS])
def test_search_norm_signs_and_tiers_bit_identical(case):
    K, X = case
    ref = np.array([P.search(x, K) for x in X])
    assert (np.abs(ref).sum(axis=1) == K).all()
    assert (ref * X >= 0).all()                          # signs follow x
    for tier in TIERS:
        Y = as_numpy(P.search_batch(as_input(X, tier), K, backend=tier))
        assert Y.dtype == np.int64 and (Y == ref).all(), tier
    assert (as_numpy(PT.search_batch(torch.as_tensor(X), K, force_scan=True)) == ref).all()
    assert (P.search_batch(X * 4.0, K, backend="numba") == ref).all()   # scale-free


def test_search_of_a_pyramid_point_returns_it():
    rng = np.random.default_rng(0)
    for L, K in [(8, 16), (32, 50), (128, 187)]:
        Y = np.stack([random_point(rng, L, K) for _ in range(20)])
        assert (P.search_batch(Y.astype(float), K, backend="numba") == Y).all()


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.integers(1, 8), st.integers(1, 2), st.integers(0, 2**32 - 1))
def test_search_is_exhaustive_optimal_for_K_at_most_2(L, K, seed):
    # The chapter's claim: with K <= 2 pulses greedy always finds the best direction.
    x = np.random.default_rng(seed).standard_normal(L)
    g, e = P.search(x, K), P.exhaustive_search(x, K)
    cos = lambda y: (y @ x) / np.linalg.norm(y)
    assert cos(g) >= cos(e) - 1e-12


def test_greedy_is_not_always_optimal():
    # ... and for larger K it sometimes is not (the chapter measures how often).
    rng = np.random.default_rng(0)
    misses = 0
    for _ in range(200):
        x = rng.standard_normal(2)
        g, e = P.search(x, 5), P.exhaustive_search(x, 5)
        misses += (g @ x) / np.linalg.norm(g) < (e @ x) / np.linalg.norm(e) - 1e-12
    assert 0 < misses < 40


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("tier", TIERS)
def test_torch_in_torch_out_on_the_input_device(device, tier):
    X = torch.randn(5, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = np.array([P.search(x, 20) for x in X.numpy()])
    X = X.to(device)
    Y = P.search_batch(X, 20, backend=tier)
    assert isinstance(Y, torch.Tensor) and Y.device == X.device and Y.dtype == torch.int64
    assert (Y.cpu().numpy() == ref).all()
    I = P.encode_batch(Y, 20, backend=tier)
    assert isinstance(I, torch.Tensor) and I.device == X.device and I.dtype == torch.int64
    assert P.limbs_to_ints(I) == [P.encode(y) for y in ref]
    D = P.decode_batch(I, 16, 20, backend=tier)
    assert isinstance(D, torch.Tensor) and D.device == X.device
    assert (D.cpu().numpy() == ref).all()
    Yn = P.search_batch(X.cpu().numpy(), 20, backend=tier)      # NumPy in, NumPy out
    assert isinstance(Yn, np.ndarray) and (Yn == ref).all()


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_search_takes_low_precision_tensors_on_every_tier(tier, dtype):
    X = torch.randn(4, 32, generator=torch.Generator().manual_seed(1)).to(dtype)
    ref = np.array([P.search(x, 40) for x in X.to(torch.float64).numpy()])  # exact widening
    Y = P.search_batch(X, 40, backend=tier)
    assert isinstance(Y, torch.Tensor) and Y.dtype == torch.int64
    assert (Y.numpy() == ref).all()


# ---- packing ---------------------------------------------------------------------------------

@pytest.mark.parametrize("L,K", [(1, 0), (1, 1), (3, 2), (8, 16), (32, 50), (128, 187), (256, 600)])
def test_pack_length_bits_and_round_trip(L, K):
    rng = np.random.default_rng(L + K)
    n, b = P.count(L, K), P.bits(L, K)
    for G in (0, 1, 3, 8, 13):
        ints = [int(rng.integers(0, 2**62)) * (n - 1) // (2**62) for _ in range(G)]
        ints = [min(i, n - 1) for i in ints]
        data = P.pack_indices(ints, L, K)
        assert len(data) == math.ceil(G * b / 8)             # exactly b bits per group
        # the stream is the indices' bits concatenated, least significant first
        assert int.from_bytes(data, "little") == sum(i << (g * b) for g, i in enumerate(ints))
        limbs = P.unpack_indices(data, G, L, K)
        assert limbs.shape == (G, P.n_limbs(L, K)) and P.limbs_to_ints(limbs) == ints
        assert P.pack_indices(limbs, L, K) == data


def test_pack_rejects_bad_input():
    L, K = 3, 2                                  # N = 18: 5 bits, so 18..31 are invalid
    with pytest.raises(ValueError, match="out of range"):
        P.pack_indices([3, 18], L, K)
    with pytest.raises(ValueError, match="out of range"):
        P.unpack_indices((31).to_bytes(1, "little"), 1, L, K)
    with pytest.raises(ValueError, match="bytes"):
        P.unpack_indices(b"\x00\x00", 1, L, K)
    with pytest.raises(ValueError, match="padding"):
        P.unpack_indices(b"\xe0", 1, L, K)
    with pytest.raises(ValueError, match="limbs"):
        P.pack_indices(np.zeros((2, 3), dtype=np.uint64), L, K)


# ---- errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize("tier", TIERS)
def test_batched_errors(tier):
    f = lambda A: as_input(np.asarray(A), tier)
    with pytest.raises(ValueError, match="NaN or Inf"):
        P.search_batch(f([[1.0, np.nan]]), 2, backend=tier)
    with pytest.raises(ValueError, match="NaN or Inf"):
        P.search_batch(f([[1.0, np.inf]]), 2, backend=tier)
    with pytest.raises(ValueError, match="all zeros"):
        P.search_batch(f([[1.0, 2.0], [0.0, 0.0]]), 2, backend=tier)
    with pytest.raises(ValueError, match="pulses K"):
        P.search_batch(f([[1.0, 2.0]]), -1, backend=tier)
    with pytest.raises(ValueError, match="shape"):
        P.search_batch(f([1.0, 2.0]), 2, backend=tier)
    with pytest.raises(ValueError, match="L1 norm"):
        P.encode_batch(f([[1, 1], [2, 1]]), backend=tier)
    with pytest.raises(ValueError, match="L1 norm"):
        P.encode_batch(f([[1, 1]]), 3, backend=tier)
    with pytest.raises(TypeError, match="integer"):
        P.encode_batch(f([[1.0, 1.0]]), backend=tier)
    limbs = P.ints_to_limbs([P.count(3, 2) - 1], 3, 2) + np.uint64(1)
    with pytest.raises(ValueError, match="out of range"):
        P.decode_batch(as_input(limbs.view(np.int64), tier) if tier == "torch" else limbs,
                       3, 2, backend=tier)
    with pytest.raises(ValueError, match="group size L"):
        P.decode_batch([0], 0, 2, backend=tier)


@pytest.mark.parametrize("Y, K", [([1, 1], None), ([[1, 1], [2, 1]], None),
                                  ([[1, 3]], 2)])
def test_bad_points_get_the_same_message_from_every_tier(Y, K):
    messages = set()
    for tier in ("numba", "torch"):
        with pytest.raises(ValueError) as err:
            P.encode_batch(as_input(np.array(Y, dtype=np.int64), tier), K, backend=tier)
        messages.add(str(err.value))
    assert len(messages) == 1, messages


def test_scalar_errors():
    with pytest.raises(TypeError, match="integer dtype"):
        P.encode(np.array([1.5, 0.5]))
    with pytest.raises(ValueError, match="L1 norm 3, expected K=2"):
        P.encode([1, -2], K=2)
    with pytest.raises(ValueError, match="out of range"):
        P.decode(P.count(4, 3), 4, 3)
    with pytest.raises(ValueError, match="out of range"):
        P.decode(-1, 4, 3)
    with pytest.raises(ValueError, match="pulses K"):
        P.count(3, -1)
    with pytest.raises(ValueError, match="group size L"):
        P.count(0, 3)
    with pytest.raises(ValueError, match="all zeros"):
        P.search(np.zeros(4), 3)
    with pytest.raises(ValueError, match="NaN"):
        P.search(np.array([1.0, np.nan]), 3)
    with pytest.raises(ValueError, match="backend"):
        P.search_batch(np.ones((1, 2)), 1, backend="cuda")
    with pytest.raises(ValueError, match="bits_per_weight"):
        P.k_for_rate(8, -1)
    with pytest.raises(TypeError):
        P.count(2.5, 1)


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("to", [np.asarray, torch.as_tensor], ids=["numpy", "torch"])
def test_encode_batch_refuses_entries_beyond_K(tier, to):
    # Once silent wrong answers: the int64 cast and int64 norm wrapped around.
    cases = [
        (np.array([[2**64 - 1, 2**64 - 1]], dtype=np.uint64), 2, r"\|y\| = 18446744073709551615"),
        (np.array([[2**62] * 4 + [3]], dtype=np.uint64), 3, r"\|y\| = 4611686018427387904"),
        (np.array([[2**62] * 4 + [3]]), 3, r"\|y\| = 4611686018427387904 > K=3"),
        (np.array([[-2**63, 2**63 - 1, 1, 0]]), 1, r"\|y\| = 9223372036854775808 > K=1"),
        (np.array([[-2**63, 2**63 - 1, 1, 0]]), None, "beyond the count table's limits"),
        (np.array([[2, 0], [-2**63, 2]]), None, r"row 1 of Y has \|y\| = 9223372036854775808"),
        (np.array([[3, 0], [-2, -2]]), None, r"row 1 of Y has L1 norm 4, expected K=3"),
    ]
    for Y, K, msg in cases:
        with pytest.raises(ValueError, match=msg):
            P.encode_batch(to(Y), K, backend=tier)
    # narrow and unsigned dtypes are exact: same ranks as int64
    Y = np.array([[3, 0, 1, 0], [0, 0, 0, 4], [1, 1, 1, 1]])
    ref = [P.encode(y) for y in Y]
    for dtype in (np.int8, np.uint8, np.int16, np.uint16, np.uint32, np.uint64):
        I = P.encode_batch(to(Y.astype(dtype)), 4, backend=tier)
        assert P.limbs_to_ints(I) == ref, dtype
    assert P.limbs_to_ints(P.encode_batch(to(-Y.astype(np.int8)), None, backend=tier)) == \
        [P.encode(-y) for y in Y]


@pytest.mark.parametrize("tier", TIERS)
def test_table_limits(tier):
    Lmax, Kmax = P.MAX_TABLE_L, P.MAX_TABLE_K
    # inside: the book's largest configurations, the limits themselves (small tables)
    for L, r in [(128, 4), (384, 5.25), (384, 6)]:
        P.check_table(L, P.k_for_rate(L, r))
    Y = np.zeros((1, Lmax), dtype=np.int64)
    Y[0, -1] = 1
    assert P.limbs_to_ints(P.encode_batch(as_input(Y, tier), backend=tier)) == [0]
    last = P.count(2, Kmax) - 1                                   # = (-Kmax, 0)
    assert (as_numpy(P.decode_batch([last], 2, Kmax, backend=tier)) == [[-Kmax, 0]]).all()
    # beyond: refused up front with a ValueError naming the limits
    beyond = [(Lmax + 1, 1), (2, Kmax + 1), (Lmax, Kmax)]      # the last only by table size
    for L, K in beyond:
        with pytest.raises(ValueError, match=f"L={L}, K={K}.*beyond the count table's limits"):
            P.decode_batch([0], L, K, backend=tier)
        Y = np.zeros((1, L), dtype=np.int64)
        Y[0, 0] = K
        with pytest.raises(ValueError, match="beyond the count table's limits"):
            P.encode_batch(as_input(Y, tier), K, backend=tier)
        with pytest.raises(ValueError, match="beyond the count table's limits"):
            P.encode_batch(as_input(Y, tier), backend=tier)


def test_scalar_table_limits():
    with pytest.raises(ValueError, match=r"K=18446744073709551616\).*table's limits"):
        P.encode(np.array([2**64 - 1, 1], dtype=np.uint64))       # was a raw OverflowError
    with pytest.raises(ValueError, match="table's limits"):
        P.encode(np.array([10**7, 0]))
    with pytest.raises(ValueError, match="table's limits"):
        P.decode(0, 2, P.MAX_TABLE_K + 1)
    with pytest.raises(ValueError, match="table's limits"):
        P.count_table(P.MAX_TABLE_L + 1, 2)
    assert len(P.count_table(1, P.MAX_TABLE_K)[1]) == P.MAX_TABLE_K + 1
    assert P.encode(np.array([-P.MAX_TABLE_K])) == 1
    assert P.count(2, 10**7) == 4 * 10**7                          # no table: no limit


def test_argument_types():
    with pytest.raises(TypeError, match="K must be an integer, got float"):
        P.encode(np.array([1, 1]), K=2.0)
    for bad in ("3", True, None):
        with pytest.raises(TypeError, match="bits_per_weight must be a real number"):
            P.k_for_rate(8, bad)
    assert P.k_for_rate(8, np.float32(3)) == P.k_for_rate(8, 3) == 16
    data = P.pack_indices([1, 17], 3, 2)                          # 2 groups of 5 bits: 2 bytes
    for bad in (2.0, True, "2"):
        with pytest.raises(TypeError, match="n_groups must be an integer"):
            P.unpack_indices(data, bad, 3, 2)
    with pytest.raises(TypeError, match="data must be bytes-like"):
        P.unpack_indices("ab", 2, 3, 2)
    assert P.limbs_to_ints(P.unpack_indices(bytearray(data), np.int64(2), 3, 2)) == [1, 17]


@pytest.mark.parametrize("tier", TIERS)
def test_tensor_and_array_dtypes(tier):
    limbs = P.ints_to_limbs([0, 7, 17], 3, 2)
    ref = P.decode_batch(limbs, 3, 2)
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.int32):
        with pytest.raises(TypeError, match="index limbs must be uint64"):
            P.decode_batch(torch.as_tensor(limbs.astype(np.int64)).to(dtype), 3, 2, backend=tier)
    with pytest.raises(TypeError, match="index limbs must be uint64"):
        P.decode_batch(torch.zeros((1, 1), dtype=torch.float64), 3, 2, backend=tier)  # was [0 0 2]
    for I in (torch.as_tensor(limbs), torch.as_tensor(limbs.view(np.int64)), limbs):
        assert (as_numpy(P.decode_batch(I, 3, 2, backend=tier)) == ref).all()
    for dtype in (torch.bfloat16, torch.float16, torch.float64):
        with pytest.raises(TypeError, match=f"Y must have an integer dtype, got {dtype}"):
            P.encode_batch(torch.ones(2, 3, dtype=dtype), 3, backend=tier)
    strings = np.array([["a", "b"]])
    with pytest.raises(TypeError, match="X must be real"):
        P.search_batch(strings, 2, backend=tier)
    with pytest.raises(TypeError, match="Y must have an integer dtype"):
        P.encode_batch(strings, 2, backend=tier)
    with pytest.raises(TypeError, match="Y must have an integer dtype"):
        P.encode_batch(np.array([[2**70, 1]]), backend=tier)      # object array
    with pytest.raises(TypeError, match="X must be real"):
        P.search_batch(np.ones((2, 3), dtype=bool), 2, backend=tier)


@pytest.mark.parametrize("tier", TIERS)
def test_empty_batches(tier):
    X = as_input(np.zeros((0, 16)), tier)
    Y = P.search_batch(X, 20, backend=tier)
    I = P.encode_batch(Y, 20, backend=tier)
    D = P.decode_batch(I, 16, 20, backend=tier)
    assert tuple(Y.shape) == (0, 16) and tuple(I.shape) == (0, 1) and tuple(D.shape) == (0, 16)


# ---- tier independence -----------------------------------------------------------------------

def _run_without(blocked, code):
    """Run ``code`` in a fresh interpreter where importing any of ``blocked`` fails."""
    import subprocess
    import sys
    prelude = "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in blocked)
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True,
                          text=True, timeout=120)


def test_reference_tier_needs_neither_numba_nor_torch():
    code = ("from pvqref.pyramid import reference as R\n"
            "y = R.search([0.3, -1.0, 0.2], 5)\n"
            "assert R.decode(R.encode(y), 3, 5).tolist() == y.tolist()\n"
            "assert R.exhaustive_search([0.3, -1.0, 0.2], 5).tolist() == y.tolist()\n"
            "print('ok')")
    out = _run_without(["numba", "torch"], code)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_torch_tier_needs_no_numba():
    code = ("import torch\n"
            "from pvqref import pyramid as P\n"
            "X = torch.randn(5, 16, dtype=torch.float64)\n"
            "Y = P.search_batch(X, 12)\n"
            "I = P.encode_batch(Y, 12)\n"
            "assert (P.decode_batch(I, 16, 12) == Y).all()\n"
            "assert P.limbs_to_ints(I) == [P.encode(y.numpy()) for y in Y]\n"
            "print('ok')")
    out = _run_without(["numba"], code)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@pytest.mark.parametrize("L, K", [(1, 0), (1, 3), (2, 4), (3, 3), (4, 5), (6, 2)])
def test_points_lists_the_pyramid_in_rank_order(L, K):
    Y = P.points(L, K)
    assert Y.shape == (P.count(L, K), L)
    assert (np.abs(Y).sum(axis=1) == K).all()
    assert len({tuple(y) for y in Y}) == len(Y)
    assert all((P.decode(i, L, K) == y).all() for i, y in enumerate(Y))

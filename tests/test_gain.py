"""Tests of pvqref.gain: the Beta laws, the gain codebooks, the complete PVQ quantizer."""

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from scipy import integrate, special, stats

from pvqref import gain, pyramid

SETTINGS = settings(max_examples=25, deadline=None)


# ---------------------------------------------------------------------------- the laws

@pytest.mark.parametrize("L,n", [(8, 64), (32, 576), (128, 1536)])
def test_share_law_matches_gaussian_rows(L, n):
    rng = np.random.default_rng(L + n)
    W = rng.standard_normal((4000, n))
    share = np.sum(W[:, :L] ** 2, axis=1) / np.sum(W ** 2, axis=1)
    assert stats.kstest(share, gain.share_law(L, n).cdf).statistic < 0.03
    # ... and it is not the law of a neighbouring group size
    assert stats.kstest(share, gain.share_law(2 * L, n).cdf).statistic > 0.3


def test_coordinate_law_is_share_law_of_one_coordinate():
    rng = np.random.default_rng(1)
    V = rng.standard_normal((4000, 16))
    v2 = (V[:, 0] / np.linalg.norm(V, axis=1)) ** 2
    assert stats.kstest(v2, gain.coordinate_law(16).cdf).statistic < 0.03
    x = np.linspace(0.01, 0.99, 7)
    np.testing.assert_allclose(gain.coordinate_law(16).cdf(x), gain.share_law(1, 16).cdf(x))


@pytest.mark.parametrize("L,n", [(0, 4), (4, 4), (5, 4), (2.0, 4)])
def test_share_law_rejects_bad_sizes(L, n):
    with pytest.raises(ValueError):
        gain.share_law(L, n)


# ----------------------------------------------------------------------- the codebooks

@pytest.mark.parametrize("L,n,bits", [(8, 64, 1), (32, 576, 3), (144, 576, 4), (128, 1536, 6)])
def test_quantile_levels_are_the_analytic_beta_quantiles(L, n, bits):
    levels = gain.quantile_levels(L, n, bits)
    p = (np.arange(2 ** bits) + 0.5) / 2 ** bits
    # independent route: the inverse regularised incomplete beta function
    np.testing.assert_allclose(levels ** 2, special.betaincinv(L / 2, (n - L) / 2, p),
                               rtol=1e-10)
    # and the law of T = sqrt(S) puts probability (i + 1/2) / 2^b below level i
    np.testing.assert_allclose(special.betainc(L / 2, (n - L) / 2, levels ** 2), p,
                               rtol=1e-10)


def test_uniform_law_case_all_codebooks_coincide():
    # L = 1, n = 3: S ~ Beta(1/2, 1), F_T(t) = I_{t^2}(1/2, 1) = t: T is uniform on [0, 1],
    # so quantile, Lloyd-Max and uniform levels are all (i + 1/2) / 2^b.
    for bits in (0, 1, 3, 5):
        expected = (np.arange(2 ** bits) + 0.5) / 2 ** bits
        for kind in gain.GAIN_KINDS:
            np.testing.assert_allclose(gain.gain_codebook(1, 3, bits, kind).levels, expected,
                                       atol=1e-12)
        assert gain.gain_codebook(1, 3, bits).mse() == pytest.approx(1 / 12 / 4 ** bits,
                                                                    rel=1e-9)


def _density_t(L, n):
    law = gain.share_law(L, n)
    return lambda t: 2 * t * law.pdf(t * t)


@pytest.mark.parametrize("L,n,bits", [(8, 64, 2), (32, 576, 3), (144, 576, 4), (2, 4, 3)])
def test_lloyd_max_is_a_stationary_point(L, n, bits):
    cb = gain.gain_codebook(L, n, bits, "lloyd_max")
    lv, th = cb.levels, cb.thresholds
    np.testing.assert_allclose(th, (lv[1:] + lv[:-1]) / 2)            # thresholds = midpoints
    f = _density_t(L, n)
    edges = np.concatenate([[0.0], th, [1.0]])
    sd = gain._sd_of_t(L, n)
    for i in range(lv.size):                                            # levels = cell means,
        a, b = edges[i], edges[i + 1]                                   # by numerical quadrature
        mass = integrate.quad(f, a, b, epsabs=0, epsrel=1e-12, limit=200)[0]
        first = integrate.quad(lambda t: t * f(t), a, b, epsabs=0, epsrel=1e-12, limit=200)[0]
        assert abs(first / mass - lv[i]) < 1e-7 * sd
    assert np.all(np.diff(lv) > 0)


@pytest.mark.parametrize("L,n,bits", [(8, 64, 2), (32, 576, 3), (144, 576, 5)])
def test_lloyd_max_is_a_local_minimum_and_beats_the_others(L, n, bits):
    best = gain.gain_codebook(L, n, bits, "lloyd_max")
    rng = np.random.default_rng(bits)
    step = 1e-3 * np.ptp(best.levels) if bits else 1e-3
    for _ in range(20):
        moved = np.sort(best.levels + step * rng.standard_normal(best.levels.size))
        other = gain.GainCodebook("moved", L, n, bits, moved)
        assert other.mse() > best.mse()
    for kind in ("quantile", "uniform"):
        assert gain.gain_codebook(L, n, bits, kind).mse() > best.mse()
    assert gain.gain_codebook(L, n, bits + 1, "lloyd_max").mse() < best.mse()


@pytest.mark.parametrize("kind", gain.GAIN_KINDS)
def test_codebook_mse_matches_monte_carlo(kind):
    L, n, bits = 16, 256, 3
    cb = gain.gain_codebook(L, n, bits, kind)
    t = np.sqrt(gain.share_law(L, n).rvs(200_000, random_state=np.random.default_rng(3)))
    mc = np.mean((t - cb.decode(cb.encode(t))) ** 2)
    assert mc == pytest.approx(cb.mse(), rel=0.03)


@SETTINGS
@given(st.lists(st.floats(0, 1), min_size=1, max_size=50), st.integers(0, 5),
       st.sampled_from(gain.GAIN_KINDS))
def test_encode_picks_the_nearest_level(t, bits, kind):
    cb = gain.gain_codebook(8, 64, bits, kind)
    t = np.array(t)
    got = cb.levels[cb.encode(t)]
    best = np.min(np.abs(cb.levels[None, :] - t[:, None]), axis=1)
    np.testing.assert_allclose(np.abs(got - t), best, atol=1e-15)


def test_codebook_bad_input():
    cb = gain.gain_codebook(8, 64, 2)
    with pytest.raises(ValueError, match="NaN"):
        cb.encode([0.1, np.nan])
    with pytest.raises(ValueError, match="gain codes"):
        cb.decode([4])
    with pytest.raises(ValueError, match="gain bits"):
        gain.gain_codebook(8, 64, 9)
    with pytest.raises(ValueError, match="gain kind"):
        gain.gain_codebook(8, 64, 2, "median")


# ------------------------------------------------------------------- the full quantizer

def _matrix(rng, m, n, zero_rows=(), zero_groups=(), L=8):
    W = rng.standard_normal((m, n))
    for i in zero_rows:
        W[i] = 0
    for i, j in zero_groups:
        W[i, j * L:(j + 1) * L] = 0
    return W


def _quantize_all(W, cfg):
    """quantize() with every backend; torch gets a tensor."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {be: gain.quantize(torch.from_numpy(W) if be == "torch" else W, cfg, be)
                for be in gain.BACKENDS}


@SETTINGS
@given(st.integers(1, 6), st.sampled_from([(4, 16), (8, 32), (8, 48), (16, 64)]),
       st.integers(1, 40), st.integers(0, 4), st.sampled_from(gain.GAIN_KINDS),
       st.sampled_from(gain.GAIN_TARGETS), st.integers(0, 2 ** 32 - 1))
def test_tiers_agree(m, Ln, K, bits, kind, target, seed):
    L, n = Ln
    rng = np.random.default_rng(seed)
    W = _matrix(rng, m, n, zero_rows=[0] if m > 2 else [], zero_groups=[(m - 1, 0)], L=L)
    cfg = gain.PVQConfig(L, K, bits, kind, target)
    Qs = _quantize_all(W, cfg)
    ref = Qs["reference"]
    for be, Q in Qs.items():
        np.testing.assert_array_equal(Q.indices, ref.indices, err_msg=be)
        np.testing.assert_array_equal(Q.gain_codes, ref.gain_codes, err_msg=be)
        np.testing.assert_array_equal(Q.row_norms, ref.row_norms, err_msg=be)
    outs = {be: np.asarray(gain.dequantize(ref, be)) for be in gain.BACKENDS}
    for be, out in outs.items():
        np.testing.assert_allclose(out, outs["reference"], rtol=1e-13, atol=1e-13, err_msg=be)


def test_tiers_agree_on_a_real_size_matrix():
    rng = np.random.default_rng(5)
    W = rng.standard_normal((24, 576)).astype(np.float32)
    cfg = gain.PVQConfig(64, 109, 3)
    fast = {be: gain.quantize_dequantize(torch.from_numpy(W) if be == "torch" else W, cfg, be)
            for be in ("numba", "torch")}
    assert isinstance(fast["torch"], torch.Tensor) and fast["torch"].dtype == torch.float32
    assert fast["numba"].dtype == np.float32
    np.testing.assert_allclose(fast["torch"].numpy(), fast["numba"], rtol=1e-6, atol=1e-7)
    Q = gain.quantize(W[:4], cfg, "reference")
    np.testing.assert_allclose(gain.dequantize(Q, "reference"), fast["numba"][:4], rtol=1e-6)


@pytest.mark.parametrize("backend", gain.BACKENDS)
def test_dequantize_of_quantize_equals_quantize_dequantize(backend):
    rng = np.random.default_rng(6)
    W = rng.standard_normal((6, 64))
    cfg = gain.PVQConfig(16, 24, 3)
    Q = gain.quantize(W, cfg, backend)
    out = gain.dequantize(Q, backend)
    out = out.numpy() if isinstance(out, torch.Tensor) else out
    np.testing.assert_allclose(out, gain.quantize_dequantize(W, cfg, backend), rtol=1e-14)
    # and the directions are the pyramid's own search results, encoded by the pyramid
    Y = pyramid.search_batch(W.reshape(-1, 16), 24, backend="reference")
    assert pyramid.limbs_to_ints(Q.indices) == [pyramid.encode(y) for y in Y]


def test_gain_code_is_nearest_level_to_ls_gain():
    rng = np.random.default_rng(7)
    W = rng.standard_normal((5, 64))
    for target in gain.GAIN_TARGETS:
        cfg = gain.PVQConfig(16, 20, 4, "quantile", target)
        Q = gain.quantize(W, cfg, "reference")
        Y = pyramid.decode_batch(Q.indices, 16, 20).astype(float)
        U = Y / np.linalg.norm(Y, axis=1, keepdims=True)
        G = W.reshape(-1, 16)
        g = np.sum(G * U, axis=1) if target == "ls" else np.linalg.norm(G, axis=1)
        t = g / np.repeat(Q.row_norms.astype(float), 4)
        levels = cfg.codebook(64).levels
        np.testing.assert_array_equal(Q.gain_codes, np.argmin(np.abs(levels - t[:, None]), 1))


@pytest.mark.parametrize("target", gain.GAIN_TARGETS)
def test_normalised_gains_give_the_codes(target):
    rng = np.random.default_rng(17)
    W = rng.standard_normal((6, 96))
    cfg = gain.PVQConfig(32, 30, 3, "lloyd_max", target)
    t = gain.normalised_gains(W, cfg)
    assert t.shape == (6, 3)
    Q = gain.quantize(W, cfg, "reference")
    np.testing.assert_array_equal(cfg.codebook(96).encode(t).ravel(), Q.gain_codes)
    # with the LS gain, the error splits: direction part + r^2 (t - Q(t))^2 per group
    W_hat = gain.dequantize(Q)
    unq = gain.quantize_dequantize(W, gain.PVQConfig(32, 30, 8, "lloyd_max", target))
    if target == "ls":
        r2 = np.repeat(Q.row_norms.astype(float) ** 2, 3)
        t_hat = cfg.codebook(96).decode(Q.gain_codes)
        Y = pyramid.search_batch(W.reshape(-1, 32), 30).astype(float)
        G = W.reshape(-1, 32)
        direction = np.sum(G ** 2) - np.sum(np.sum(G * Y, 1) ** 2 / np.sum(Y * Y, 1))
        total = direction + np.sum(r2 * (t.ravel() - t_hat) ** 2)
        assert np.sum((W - W_hat) ** 2) == pytest.approx(total, rel=1e-9)
    assert gain.relative_mse(W, unq) < gain.relative_mse(W, W_hat)


def test_ls_gain_beats_norm_gain_without_gain_quantization_error():
    # With many gain bits, coding <w, u> leaves the error ||w||^2 - <w, u>^2 of the
    # direction only; coding ||w|| adds (||w|| - <w, u>)^2 on top.
    rng = np.random.default_rng(8)
    W = rng.standard_normal((64, 256))
    err = {t: gain.relative_mse(W, gain.quantize_dequantize(W, gain.PVQConfig(32, 8, 8,
                                                                            "lloyd_max", t)))
           for t in gain.GAIN_TARGETS}
    assert err["ls"] < err["norm"]


@pytest.mark.parametrize("L,K,bits", [(8, 5, 0), (8, 16, 3), (32, 50, 2), (64, 109, 5)])
def test_bits_accounted_equal_bits_packed(L, K, bits):
    rng = np.random.default_rng(L + K)
    m, n = 7, 192
    W = rng.standard_normal((m, n))
    cfg = gain.PVQConfig(L, K, bits)
    Q = gain.quantize(W, cfg)
    groups = m * n // L
    counts = Q.bit_counts()
    assert counts["indices"] == groups * pyramid.bits(L, K)
    assert counts["total"] == groups * (pyramid.bits(L, K) + bits) + 16 * m
    assert Q.bits_per_weight() == pytest.approx(cfg.bits_per_weight(n), rel=1e-15)
    assert cfg.bits_per_weight(n) == (pyramid.bits(L, K) + bits) / L + 16 / n
    data = Q.to_bytes()
    assert len(data) == math.ceil(counts["total"] / 8)       # one stream, padded at the end only
    R = gain.from_bytes(data, Q.shape, cfg)
    np.testing.assert_array_equal(R.indices, Q.indices)
    np.testing.assert_array_equal(R.gain_codes, Q.gain_codes)
    np.testing.assert_array_equal(R.row_norms.view(np.uint16), Q.row_norms.view(np.uint16))
    np.testing.assert_array_equal(gain.dequantize(R), gain.dequantize(Q))


def test_from_bytes_rejects_corrupt_data():
    rng = np.random.default_rng(9)
    cfg = gain.PVQConfig(8, 5, 3)                    # 3 groups * (14 + 3) bits + 16 = 67 bits
    Q = gain.quantize(rng.standard_normal((1, 24)), cfg)
    assert Q.bit_counts()["total"] == 67
    data = Q.to_bytes()
    with pytest.raises(ValueError, match="bytes"):
        gain.from_bytes(data[:-1], Q.shape, cfg)
    with pytest.raises(ValueError, match="bytes"):
        gain.from_bytes(data + b"\0", Q.shape, cfg)
    raw = bytearray(data)
    raw[-1] |= 0x80                                  # set one of the 5 padding bits
    with pytest.raises(ValueError, match="padding"):
        gain.from_bytes(bytes(raw), Q.shape, cfg)


def test_corrupt_quantized_matrix_is_rejected():
    rng = np.random.default_rng(18)
    cfg = gain.PVQConfig(8, 5, 2)
    Q = gain.quantize(rng.standard_normal((2, 32)), cfg)
    bad_code = gain.QuantizedMatrix(Q.shape, cfg, Q.row_norms, Q.indices,
                                    np.full_like(Q.gain_codes, 4))
    with pytest.raises(ValueError, match="gain codes"):
        gain.dequantize(bad_code)
    bad_norm = gain.QuantizedMatrix(Q.shape, cfg, np.array([1.0, np.inf], dtype=np.float16),
                                    Q.indices, Q.gain_codes)
    with pytest.raises(ValueError, match="row norms"):
        gain.dequantize(bad_norm)
    with pytest.raises(ValueError, match="row norms"):               # Inf norm in the bytes
        gain.from_bytes(bad_norm.to_bytes(), Q.shape, cfg)
    with pytest.raises(ValueError, match="inconsistent"):
        gain.dequantize(gain.QuantizedMatrix((3, 32), cfg, Q.row_norms, Q.indices, Q.gain_codes))


# ------------------------------------------------------------------ edge cases, errors

@pytest.mark.parametrize("backend", gain.BACKENDS)
def test_zero_rows_decode_exactly_and_zero_groups_are_documented(backend):
    rng = np.random.default_rng(10)
    W = _matrix(rng, 3, 32, zero_rows=[0], zero_groups=[(2, 1)], L=8)
    cfg = gain.PVQConfig(8, 6, 2)
    with pytest.warns(UserWarning, match="1 all-zero group"):
        Q = gain.quantize(torch.from_numpy(W) if backend == "torch" else W, cfg, backend)
    out = np.asarray(gain.dequantize(Q, backend))
    assert np.all(out[0] == 0.0)                                     # zero row: exact zeros
    r, t0 = float(Q.row_norms[2]), cfg.codebook(32).levels[0]
    np.testing.assert_allclose(out[2, 8:16], [r * t0] + [0.0] * 7)  # zero group: r t_0 e_1
    assert Q.gain_codes[2 * 4 + 1] == 0


def test_no_warning_without_zero_groups():
    W = np.random.default_rng(11).standard_normal((4, 32))
    W[1] = 0                                                         # a zero row is exact
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gain.quantize(W, gain.PVQConfig(8, 6, 2))


@pytest.mark.parametrize("backend", gain.BACKENDS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf_rejected(backend, bad):
    W = np.random.default_rng(12).standard_normal((3, 32))
    W[1, 5] = bad
    for X in (W, torch.from_numpy(W)):
        with pytest.raises(ValueError, match="NaN or Inf"):
            gain.quantize(X, gain.PVQConfig(8, 6, 2), backend)
        with pytest.raises(ValueError, match="NaN or Inf"):
            gain.quantize_dequantize(X, gain.PVQConfig(8, 6, 2), backend)


def test_shape_and_type_errors():
    cfg = gain.PVQConfig(8, 6, 2)
    rng = np.random.default_rng(13)
    with pytest.raises(ValueError, match="not divisible by the group size L=8"):
        gain.quantize(rng.standard_normal((3, 36)), cfg)
    with pytest.raises(ValueError, match="smaller than the row length"):
        gain.quantize(rng.standard_normal((3, 8)), cfg)
    with pytest.raises(ValueError, match="2-D"):
        gain.quantize(rng.standard_normal(32), cfg)
    with pytest.raises(ValueError, match="empty"):
        gain.quantize(np.zeros((0, 32)), cfg)
    with pytest.raises(TypeError):
        gain.quantize(np.ones((3, 32), dtype=np.int64), cfg)
    with pytest.raises(TypeError):
        gain.quantize(torch.ones((3, 32), dtype=torch.int64), cfg, "torch")
    with pytest.raises(ValueError, match="backend"):
        gain.quantize(rng.standard_normal((3, 32)), cfg, "cuda")
    with pytest.raises(ValueError, match="fp16"):
        gain.quantize(np.full((2, 32), 2e4), cfg)
    with pytest.raises(ValueError, match="fp16"):
        gain.quantize(np.full((2, 32), 1e-7), cfg)


@pytest.mark.parametrize("kwargs", [dict(L=0, K=3, gain_bits=2), dict(L=8, K=0, gain_bits=2),
                                    dict(L=8, K=3, gain_bits=9), dict(L=8, K=3, gain_bits=-1),
                                    dict(L=8, K=3, gain_bits=2, gain_kind="median"),
                                    dict(L=8, K=3, gain_bits=2, gain_target="rms")])
def test_bad_config(kwargs):
    with pytest.raises(ValueError):
        gain.PVQConfig(**kwargs)


# --------------------------------------------------------------------- rate and choice

@pytest.mark.parametrize("bpw", [2.25, 3.25, 4.25, 3.0])
@pytest.mark.parametrize("L,n,b", [(32, 576, 2), (64, 1536, 3), (144, 576, 4)])
def test_config_for_rate_is_the_largest_fitting_K(bpw, L, n, b):
    cfg = gain.config_for_rate(L, n, bpw, b)
    assert cfg.bits_per_weight(n) <= bpw
    bigger = gain.PVQConfig(L, cfg.K + 1, b)
    assert bigger.bits_per_weight(n) > bpw


def test_choose_config_picks_the_measured_best_within_budget():
    W = np.random.default_rng(14).standard_normal((16, 192))
    best, table = gain.choose_config(W, 3.25, group_sizes=(16, 32, 64, 96), gain_bits=(1, 3))
    assert len(table) == 8
    assert table[0]["config"] == best
    assert all(r["bpw"] <= 3.25 for r in table)
    assert [r["rel_mse"] for r in table] == sorted(r["rel_mse"] for r in table)
    assert table[0]["rel_mse"] == gain.relative_mse(W, gain.quantize_dequantize(W, best))
    with pytest.raises(ValueError, match="no configuration"):
        gain.choose_config(W, 0.05, group_sizes=(16,))


# ------------------------------------------------------------------------- baselines

def test_rtn_reproduces_a_4bit_grid_exactly():
    # the structure of SmolLM2's GGUF (Q4_1) weights: w = d q + m, q in 0..15, d and m fp16
    rng = np.random.default_rng(15)
    q = rng.integers(0, 16, size=(64, 32))
    q[:, 0], q[:, 1] = 0, 15                        # every block uses the full range
    d = rng.uniform(0.001, 0.01, (64, 1)).astype(np.float16).astype(np.float64)
    m = rng.uniform(-0.1, 0.0, (64, 1)).astype(np.float16).astype(np.float64)
    W = (q * d + m).reshape(16, 128)
    np.testing.assert_allclose(gain.rtn_quantize_dequantize(W, 4, group=32), W, atol=1e-15)
    assert gain.relative_mse(W, gain.rtn_quantize_dequantize(W, 3, group=32)) > 1e-3


def test_gaussian_controls():
    """Regression numbers on Gaussian rows (the chapter reports them in full)."""
    W = np.random.default_rng(16).standard_normal((256, 576))
    rtn = gain.relative_mse(W, gain.rtn_quantize_dequantize(W, 3, 128))
    assert 3.8 < rtn / gain.gaussian_bound(gain.rtn_bits_per_weight(3)) < 4.6
    cfg = gain.config_for_rate(144, 576, 3.25, 2)
    pvq = gain.relative_mse(W, gain.quantize_dequantize(W, cfg))
    assert 1.5 < pvq / gain.gaussian_bound(cfg.bits_per_weight(576)) < 1.75
    assert rtn / pvq > 2.3
    with pytest.raises(ValueError, match="groups of 128"):
        gain.rtn_quantize_dequantize(np.ones((3, 5)), 3)
    assert gain.gaussian_bound(3.25) == 2 ** -6.5
    with pytest.raises(ValueError, match="shapes differ"):
        gain.relative_mse(np.ones((2, 3)), np.ones(3))
    with pytest.raises(ValueError, match="non-zero"):
        gain.relative_mse(np.zeros((2, 3)), np.zeros((2, 3)))
    np.testing.assert_array_equal(gain.gaussian_bound(np.array([1.0, 2.0])), [0.25, 0.0625])

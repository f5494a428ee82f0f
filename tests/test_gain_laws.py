"""Tests of pvqref.gain.laws: the Beta laws and the gain codebooks."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy import integrate, special, stats

from pvqref import gain
from pvqref.gain import laws

SETTINGS = settings(max_examples=25, deadline=None)


# ----------------------------------------------------------------------------- the laws

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


@pytest.mark.parametrize("L,n,error", [(0, 4, ValueError), (4, 4, ValueError),
                                       (5, 4, ValueError), (2.0, 4, TypeError)])
def test_share_law_rejects_bad_sizes(L, n, error):
    with pytest.raises(error, match="L"):
        gain.share_law(L, n)


# ------------------------------------------------------------------------ the codebooks

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
    sd = laws._sd_of_t(L, n)
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

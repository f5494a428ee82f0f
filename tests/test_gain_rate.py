"""Tests of pvqref.gain.rate: the largest K for a rate, and the measured choice."""

import numpy as np
import pytest

from pvqref import gain


# ---------------------------------------------------------------------- rate and choice

@pytest.mark.parametrize("norm_bits", [16, 6])
@pytest.mark.parametrize("bpw", [2.25, 3.25, 4.25, 3.0])
@pytest.mark.parametrize("L,m,n,b", [(32, 192, 576, 2), (64, 576, 1536, 3), (144, 5, 576, 4)])
def test_config_for_rate_is_the_largest_fitting_K(bpw, L, m, n, b, norm_bits):
    cfg = gain.config_for_rate(L, (m, n), bpw, b, norm_bits=norm_bits)
    assert cfg.norm_bits == norm_bits
    assert cfg.bits_per_weight((m, n)) <= bpw
    assert cfg.bits_per_weight((10 * m, n)) <= bpw                 # more rows: fewer bits
    bigger = gain.PVQConfig(L, cfg.K + 1, b, norm_bits=norm_bits)
    assert bigger.bits_per_weight((m, n)) > bpw


def test_fewer_norm_bits_free_bits_for_pulses():
    fp16 = gain.config_for_rate(288, (576, 576), 3.25, 2, norm_bits=16)
    log6 = gain.config_for_rate(288, (576, 576), 3.25, 2, norm_bits=6)
    assert log6.K > fp16.K and log6.index_bits > fp16.index_bits
    with pytest.raises(TypeError, match="shape"):         # a number, not a pair (m, n)
        gain.config_for_rate(288, 576, 3.25, 2)
    with pytest.raises(TypeError, match="shape"):
        fp16.bits_per_weight(576)


def test_choose_config_picks_the_measured_best_within_budget():
    W = np.random.default_rng(14).standard_normal((16, 192))
    best, table = gain.choose_config(W, 3.25, group_sizes=(16, 32, 64, 96), gain_bits=(1, 3))
    assert len(table) == 8
    assert table[0]["config"] == best
    assert all(r["bpw"] <= 3.25 for r in table)
    assert all(r["bpw"] == r["config"].bits_per_weight(W.shape) for r in table)
    assert [r["rel_mse"] for r in table] == sorted(r["rel_mse"] for r in table)
    assert table[0]["rel_mse"] == gain.relative_mse(W, gain.quantize_dequantize(W, best))
    with pytest.raises(ValueError, match="no configuration"):
        gain.choose_config(W, 0.05, group_sizes=(16,))
    # the per-matrix bits are counted for `rows` rows; norm_bits reaches the configs
    _, few = gain.choose_config(W, 3.25, group_sizes=(96,), gain_bits=(1,), rows=1,
                                norm_bits=16)
    assert few[0]["config"].norm_bits == 16
    assert few[0]["bpw"] == few[0]["config"].bits_per_weight((1, 192)) <= 3.25


@pytest.mark.parametrize("bpw,error", [(float("nan"), ValueError), (float("inf"), ValueError),
                                       (-1.0, ValueError), (0.0, ValueError),
                                       (True, TypeError), ("3", TypeError)])
def test_config_for_rate_rejects_bad_rates(bpw, error):
    with pytest.raises(error, match="bpw"):
        gain.config_for_rate(32, (4, 128), bpw, 2)


def test_config_for_rate_and_shapes_reject_what_quantize_would():
    with pytest.raises(ValueError, match="divide"):
        gain.config_for_rate(48, (4, 128), 3.0, 2)
    with pytest.raises(ValueError, match="divide"):
        gain.config_for_rate(128, (4, 128), 3.0, 2)
    with pytest.raises(TypeError, match="shape"):         # float sizes: a type error
        gain.config_for_rate(32, (4.7, 128), 3.0, 2)
    with pytest.raises(TypeError, match="shape"):
        gain.PVQConfig(8, 5, 2).bits_per_weight((2, 32.0))
    with pytest.raises(ValueError, match="divisible"):
        gain.PVQConfig(8, 5, 2).bits((2, 36))


def test_an_exact_fit_is_within_budget():
    # (bits(96, K) + 1) * 2 + 16 + 40 bits for one row of 192: exactly 3.25 * 192 = 624 bits
    cfg = gain.config_for_rate(96, (1, 192), 3.25, 1, norm_bits=16)
    assert cfg.bits((1, 192)) == 624 and cfg.bits_per_weight((1, 192)) == 3.25

"""Tests of pvqref.coherence's statistics: incoherence, excess kurtosis and the
Kolmogorov-Smirnov distance of group directions to the Beta law."""

import math

import numpy as np
import pytest
import torch

from pvqref import coherence as coh


# ---------------------------------------------------------------- statistics

def test_incoherence_extremes_and_rotation_reduces_a_spike():
    assert coh.incoherence(np.ones((4, 6))) == pytest.approx(1.0)
    spike = np.zeros((12, 36))
    spike[3, 5] = 2.0
    assert coh.incoherence(spike) == pytest.approx(math.sqrt(12 * 36))
    rotated = coh.rotate_weight(spike, coh.RandomizedHadamard(36, 0), coh.RandomizedHadamard(12, 0))
    assert coh.incoherence(rotated) == pytest.approx(1.0)     # a spike becomes flat
    with pytest.raises(ValueError):
        coh.incoherence(np.zeros((3, 3)))


def test_kurtosis_and_beta_law_distance_separate_gaussian_from_spiky():
    rng = np.random.default_rng(0)
    gauss = rng.standard_normal((256, 512))
    spiky = gauss * (rng.random((256, 512)) < 0.02)
    assert abs(coh.excess_kurtosis(gauss)) < 0.05
    assert coh.excess_kurtosis(spiky) > 20
    assert coh.beta_law_ks(gauss, 128) < 0.01
    assert coh.beta_law_ks(spiky, 128) > 0.5
    v2 = coh.sphere_coordinates(gauss, 128)
    np.testing.assert_allclose(v2.reshape(-1, 128).sum(axis=1), 1.0)
    assert coh.sphere_coordinates(gauss[:, :64], 128).size == 256 * 64   # groups span rows
    with pytest.raises(ValueError, match="multiple"):
        coh.sphere_coordinates(gauss[:3, :100], 128)


def test_statistics_refuse_nan_constant_and_zero_input_clearly():
    bad = np.ones((4, 128))
    bad[1, 2] = np.nan
    for stat in (coh.incoherence, coh.excess_kurtosis, coh.beta_law_ks,
                 coh.sphere_coordinates):
        with pytest.raises(ValueError, match="NaN or Inf"):
            stat(bad)
        with pytest.raises(ValueError, match="non-empty"):
            stat(np.zeros((0, 128)))
        for complex_input in (np.ones((2, 128), dtype=complex),
                              torch.ones(2, 128, dtype=torch.complex64)):
            with pytest.raises(TypeError, match="real"):
                stat(complex_input)
    with pytest.raises(ValueError, match="constant"):
        coh.excess_kurtosis(np.full((3, 3), 2.5))
    with pytest.raises(ValueError, match="every group of W is zero"):
        coh.beta_law_ks(np.zeros((2, 128)))
    for group, stat, err in ((0, coh.beta_law_ks, ValueError), (1, coh.beta_law_ks, ValueError),
                             (True, coh.beta_law_ks, TypeError),      # wrong type: TypeError
                             (2.0, coh.beta_law_ks, TypeError),
                             (0, coh.sphere_coordinates, ValueError)):
        with pytest.raises(err, match="group must be"):
            stat(np.ones((2, 128)), group)


def test_statistics_accept_bfloat16_and_extreme_scales():
    rng = np.random.default_rng(0)
    W = rng.standard_normal((64, 128))
    Wb = torch.from_numpy(W).to(torch.bfloat16)
    assert coh.incoherence(Wb) == pytest.approx(coh.incoherence(Wb.double()), rel=1e-12)
    for scale in (1e-200, 1e200):       # statistics are scale-free; no over/underflow
        assert coh.incoherence(W * scale) == pytest.approx(coh.incoherence(W), rel=1e-12)
        assert coh.excess_kurtosis(W * scale) == pytest.approx(coh.excess_kurtosis(W),
                                                               rel=1e-9)
        assert coh.beta_law_ks(W * scale) == pytest.approx(coh.beta_law_ks(W), rel=1e-9)


def test_statistics_of_a_parameter_that_requires_grad():
    # As the chapter does with a layer's weight, outside torch.no_grad().
    W = torch.nn.Parameter(torch.randn(8, 128, dtype=torch.float64))
    assert coh.incoherence(W) == coh.incoherence(W.detach().numpy())

"""The gain chapter's helpers (pvqref.chapters.gain): the names they build, the statistic
they compute and how they pool errors over matrices."""

import numpy as np

from pvqref import data
from pvqref.chapters import gain as chapter


def test_weight_names_round_trip_on_a_llama_state_dict(small_llama):
    model, _ = small_llama(layers=2)
    sd = model.state_dict()
    names = data.linear_weight_names(sd)
    assert len(names) == 2 * len(data.LINEAR_KINDS)
    for name in names:
        assert chapter.weight_name(chapter.layer_of(name), chapter.kind_of(name)) == name


def test_shares_are_the_energy_of_consecutive_groups():
    W = np.zeros((2, 6))
    W[0, :2] = 1.0                 # row 0: all its energy in the first group of 2
    W[1] = [0, 0, 1, 1, 1, 1]      # row 1: nothing, half, half
    np.testing.assert_allclose(chapter.shares(W, 2), [1, 0, 0, 0, 0.5, 0.5])
    S = chapter.shares(np.random.default_rng(0).standard_normal((5, 12)), 4)
    np.testing.assert_allclose(S.reshape(5, 3).sum(axis=1), 1.0)


def test_rate_distortion_pools_energy_weighted():
    # Two matrices, energies 1 and 99, relative errors 0.5 and 0.01: pooled, the error is
    # (0.5 + 0.99) / 100, not the mean of the two ratios.
    small, large = np.full((1, 1), 1.0), np.full((1, 1), np.sqrt(99.0))
    sets = {"s": {"a": small, "b": large}}
    err, rd = chapter.rate_distortion(
        sets, [1.0], lambda W, R: {"Q": 0.5 if W[0, 0] == 1.0 else 0.99})
    assert err["Q", "s", 1.0, "a"] == 0.5 and err["Q", "s", 1.0, "b"] == 0.99
    assert np.isclose(rd["Q", "s", 1.0], 1.49 / 100)

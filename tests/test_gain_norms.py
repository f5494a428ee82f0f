"""Tests of pvqref.gain.norms: the row-norm codes (fp16 or log grid), on every tier."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from pvqref import _tiers, gain
from pvqref import format as fmt

SETTINGS = settings(max_examples=25, deadline=None)


# ------------------------------------------------------------------- the row-norm codes

def test_norm_levels_are_a_monotone_log_grid():
    for bits in (2, 3, 6, 12):
        lv = gain.norm_levels(0.5, 4.0, bits)
        assert lv.size == 2 ** bits and lv[0] == 0
        assert lv[1] == np.float64(0.5) and lv[-1] == 4.0                 # the ends exactly
        assert np.all(np.diff(lv) > 0)
        np.testing.assert_allclose(np.diff(np.log(lv[1:])), math.log(8) / (2 ** bits - 2),
                                   rtol=1e-9)                             # equal log steps
    np.testing.assert_array_equal(gain.norm_levels(2.0, 2.0, 4)[1:], 2.0)  # all norms equal
    np.testing.assert_array_equal(gain.norm_levels(0.0, 0.0, 4), 0.0)     # all rows zero
    for bad, error in ((1, ValueError), (17, ValueError), (2.0, TypeError), (True, TypeError)):
        with pytest.raises(error, match="norm_bits"):
            gain.norm_levels(0.5, 4.0, bad)
    with pytest.raises(ValueError, match="fp16"):
        gain.norm_levels(0.5, 4.0, 16)


@SETTINGS
@given(st.integers(1, 40), st.integers(2, 12), st.floats(-3, 3), st.floats(0, 3),
       st.integers(0, 2 ** 32 - 1))
def test_norm_codes_round_trip_within_the_log_bound(m, bits, log_scale, log_spread, seed):
    rng = np.random.default_rng(seed)
    r = np.exp(log_scale + log_spread * rng.random(m))
    r[rng.random(m) < 0.2] = 0.0                                     # some zero rows
    out = {be: _tiers.load("pvqref.gain", be).row_norms(r, bits) for be in ("reference", "numba")}
    t = _tiers.load("pvqref.gain", "torch").row_norms(torch.from_numpy(r), bits)
    out["torch"] = (t[0].numpy().astype(np.uint16), t[1], t[2].numpy())
    codes, rng_, r_hat = out["reference"]
    for be, (c, g, h) in out.items():                                # the tiers agree exactly
        np.testing.assert_array_equal(c, codes, err_msg=be)
        np.testing.assert_array_equal(g, rng_, err_msg=be)
        np.testing.assert_array_equal(h, r_hat, err_msg=be)
    np.testing.assert_array_equal(gain.decode_row_norms(codes, rng_, bits), r_hat)
    assert np.all((codes == 0) == (r == 0)) and np.all(r_hat[r == 0] == 0)
    nz = r > 0
    if nz.any():
        lo, hi = float(rng_[0]), float(rng_[1])
        assert lo == np.float32(r[nz].min()) and hi == np.float32(r[nz].max())
        half_step = math.log(hi / lo) / (2 * (2 ** bits - 2))
        fp32 = 2 * 2.0 ** -24                                        # lo, hi rounded to fp32
        assert np.all(np.abs(np.log(r_hat[nz] / r[nz])) <= half_step + fp32)
        levels = gain.norm_levels(lo, hi, bits)                      # and it is the nearest
        dist = np.abs(np.log(levels[1:][None, :] / r[nz][:, None]))  # level in log distance
        np.testing.assert_allclose(np.abs(np.log(r_hat[nz] / r[nz])), dist.min(axis=1),
                                   atol=1e-12)


@pytest.mark.parametrize("backend", gain.BACKENDS)
def test_all_equal_norms_and_all_zero_matrix(backend):
    W = np.zeros((4, 32))
    W[:, 3] = [2.0, -2.0, 0.0, 2.0]                                  # equal norms, a zero row
    cfg = gain.PVQConfig(8, 6, 2, norm_bits=5)
    X = torch.from_numpy(W) if backend == "torch" else W
    with pytest.warns(UserWarning, match="all-zero group"):
        Q = gain.quantize(X, cfg, backend)
    assert Q.norm_range.tolist() == [2.0, 2.0]
    np.testing.assert_array_equal(Q.decoded_row_norms(), [2.0, 2.0, 0.0, 2.0])
    R = gain.from_bytes(Q.to_bytes(), Q.shape, cfg)
    np.testing.assert_array_equal(np.asarray(gain.dequantize(R, backend)),
                                  np.asarray(gain.dequantize(Q, backend)))
    assert np.all(np.asarray(gain.dequantize(Q, backend))[2] == 0)
    Z = np.zeros((3, 32))                                            # a matrix of zeros
    Q = gain.quantize(torch.from_numpy(Z) if backend == "torch" else Z, cfg, backend)
    assert Q.norm_range.tolist() == [0.0, 0.0] and not Q.row_norms.any()
    R = gain.from_bytes(Q.to_bytes(), Q.shape, cfg)
    assert np.all(np.asarray(gain.dequantize(R, backend)) == 0)


def test_log_norms_reach_beyond_fp16_and_fp32_limits_are_errors():
    W = np.random.default_rng(22).standard_normal((6, 32))
    cfg = gain.PVQConfig(8, 6, 2, norm_bits=8)
    small = gain.relative_mse(W, gain.quantize_dequantize(W, cfg))
    big = 4e4 * W                                    # row norms ~2e5: beyond fp16, fine here
    assert gain.relative_mse(big, gain.quantize_dequantize(big, cfg)) == pytest.approx(small,
                                                                                       rel=1e-4)
    for value in (1e38, 1e-40):                      # row norms 5.7e38 and 5.7e-40
        for backend in gain.BACKENDS:
            X = np.full((2, 32), value)
            with pytest.raises(ValueError, match="fp32"):
                gain.quantize(torch.from_numpy(X) if backend == "torch" else X, cfg, backend)


def test_coarse_norms_are_absorbed_by_the_gain_codes():
    # The gain code is taken after r_hat is fixed (t = g / r_hat), so an r_hat off by a few
    # per cent costs far less than the squared norm error would: check on Gaussian rows.
    W = np.random.default_rng(20).standard_normal((64, 576)) \
        * np.exp(np.random.default_rng(21).uniform(0, 1.5, (64, 1)))
    fine = gain.relative_mse(W, gain.quantize_dequantize(W, gain.PVQConfig(144, 240, 3,
                                                                            norm_bits=16)))
    coarse_cfg = gain.PVQConfig(144, 240, 3, norm_bits=4)
    r = np.linalg.norm(W, axis=1)
    norm_err = np.mean((gain.coded_row_norms(W, coarse_cfg) / r - 1) ** 2)
    coarse = gain.relative_mse(W, gain.quantize_dequantize(W, coarse_cfg))
    assert norm_err > 1e-4                                           # the norms are coarse,
    assert coarse - fine < 0.5 * norm_err                            # the damage is not


def _with_range(Q, lo, hi):
    return gain.QuantizedMatrix(Q.shape, Q.config, Q.row_norms, Q.indices, Q.gain_codes,
                                np.array([lo, hi], dtype=np.float32))


def test_corrupt_log_norms_are_rejected():
    rng = np.random.default_rng(19)
    cfg = gain.PVQConfig(8, 5, 2, norm_bits=4)
    Q = gain.quantize(rng.standard_normal((3, 32)), cfg)
    gain.dequantize(Q)                                               # the good one decodes
    for lo, hi in ((2.0, 1.0), (np.nan, 1.0), (0.5, np.inf), (-1.0, 1.0), (0.0, 1.0)):
        with pytest.raises(ValueError, match="norm range"):
            gain.dequantize(_with_range(Q, lo, hi))
        with pytest.raises(ValueError, match="norm range"):          # and through the bytes
            gain.from_bytes(_raw_bytes_with_range(Q, lo, hi), Q.shape, cfg)
        with pytest.raises(ValueError, match="norm range"):          # not written either
            _with_range(Q, lo, hi).to_bytes()
    with pytest.raises(ValueError, match="non-zero row-norm codes"):  # zeros range, codes > 0
        gain.dequantize(_with_range(Q, 0.0, 0.0))
    with pytest.raises(ValueError, match="norm_bits=4 needs"):
        gain.dequantize(gain.QuantizedMatrix(Q.shape, cfg, Q.row_norms, Q.indices, Q.gain_codes))
    with pytest.raises(ValueError, match="row-norm codes"):
        gain.decode_row_norms(np.array([16], dtype=np.uint16), Q.norm_range, 4)
    with pytest.raises(ValueError, match="norm range"):
        gain.decode_row_norms(Q.row_norms, np.zeros(3, dtype=np.float32), 4)


def _raw_bytes_with_range(Q, lo, hi):
    """Q's bytes with the fp32 norm range (bits 8..71 of the stream) overwritten and the
    checksum redone (so the decoder's own checks are what is tested)."""
    payload = Q.to_bytes()[:-4]
    stream = np.unpackbits(np.frombuffer(payload, dtype=np.uint8), bitorder="little")
    stream[8:72] = np.unpackbits(np.array([lo, hi], dtype=np.float32).view(np.uint8),
                                 bitorder="little")
    return fmt.seal(np.packbits(stream, bitorder="little").tobytes(), Q.shape, Q.config)

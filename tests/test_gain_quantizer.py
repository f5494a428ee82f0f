"""Tests of pvqref.gain's complete quantizer: the tiers agree, the gain codes, edge cases."""

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from pvqref import gain, pyramid

SETTINGS = settings(max_examples=25, deadline=None)


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
       st.sampled_from(gain.GAIN_TARGETS), st.sampled_from([2, 5, 8, 16]),
       st.integers(0, 2 ** 32 - 1))
def test_tiers_agree(m, Ln, K, bits, kind, target, norm_bits, seed):
    L, n = Ln
    rng = np.random.default_rng(seed)
    W = _matrix(rng, m, n, zero_rows=[0] if m > 2 else [], zero_groups=[(m - 1, 0)], L=L)
    cfg = gain.PVQConfig(L, K, bits, kind, target, norm_bits)
    Qs = _quantize_all(W, cfg)
    ref = Qs["reference"]
    for be, Q in Qs.items():
        np.testing.assert_array_equal(Q.indices, ref.indices, err_msg=be)
        np.testing.assert_array_equal(Q.gain_codes, ref.gain_codes, err_msg=be)
        np.testing.assert_array_equal(Q.row_norms, ref.row_norms, err_msg=be)
        np.testing.assert_array_equal(Q.norm_range, ref.norm_range, err_msg=be)
        assert Q.row_norms.dtype == (np.float16 if norm_bits == 16 else np.uint16)
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
    # (log-grid norms depend on the whole matrix: compare the same 4 rows on both tiers)
    np.testing.assert_allclose(gain.dequantize(Q, "reference"),
                               gain.quantize_dequantize(W[:4], cfg, "numba"), rtol=1e-6)


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
        t = g / np.repeat(Q.decoded_row_norms(), 4)
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
        r2 = np.repeat(Q.decoded_row_norms() ** 2, 3)
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


@pytest.mark.parametrize("backend", gain.BACKENDS)
def test_bf16_and_grad_tensors_are_accepted(backend):
    W = torch.from_numpy(np.random.default_rng(23).standard_normal((4, 64))).to(torch.bfloat16)
    cfg = gain.PVQConfig(16, 20, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                      # no torch warning either
        out = gain.quantize_dequantize(W.clone().requires_grad_(True), cfg, backend)
        Q = gain.quantize(W, cfg, backend)
    assert out.dtype == torch.bfloat16 and out.shape == W.shape
    ref = gain.quantize_dequantize(W.to(torch.float32), cfg, backend).to(torch.bfloat16)
    assert torch.equal(out.detach(), ref)
    np.testing.assert_array_equal(Q.indices, gain.quantize(W.to(torch.float32), cfg,
                                                           backend).indices)
    assert gain.relative_mse(W, out.detach()) < 0.2


# ------------------------------------------------------------------- edge cases, errors

@pytest.mark.parametrize("backend", gain.BACKENDS)
def test_zero_rows_decode_exactly_and_zero_groups_are_documented(backend):
    rng = np.random.default_rng(10)
    W = _matrix(rng, 3, 32, zero_rows=[0], zero_groups=[(2, 1)], L=8)
    cfg = gain.PVQConfig(8, 6, 2)
    with pytest.warns(UserWarning, match="1 all-zero group"):
        Q = gain.quantize(torch.from_numpy(W) if backend == "torch" else W, cfg, backend)
    out = np.asarray(gain.dequantize(Q, backend))
    assert np.all(out[0] == 0.0)                                     # zero row: exact zeros
    r, t0 = Q.decoded_row_norms()[2], cfg.codebook(32).levels[0]
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
    fp16 = gain.PVQConfig(8, 6, 2, norm_bits=16)
    for backend in gain.BACKENDS:
        for value in (2e4, 1e-7):
            X = np.full((2, 32), value)
            with pytest.raises(ValueError, match="fp16"):
                gain.quantize(torch.from_numpy(X) if backend == "torch" else X, fp16, backend)


@pytest.mark.parametrize("kwargs", [dict(L=0, K=3, gain_bits=2), dict(L=8, K=0, gain_bits=2),
                                    dict(L=8, K=3, gain_bits=9), dict(L=8, K=3, gain_bits=-1),
                                    dict(L=8, K=3, gain_bits=2, gain_kind="median"),
                                    dict(L=8, K=3, gain_bits=2, gain_target="rms"),
                                    dict(L=8, K=3, gain_bits=2, norm_bits=1),
                                    dict(L=8, K=3, gain_bits=2, norm_bits=17)])
def test_bad_config(kwargs):
    with pytest.raises(ValueError):
        gain.PVQConfig(**kwargs)


@pytest.mark.parametrize("name,value", [("L", 2.0), ("K", 3.5), ("gain_bits", True),
                                        ("gain_bits", "3"), ("norm_bits", 8.0)])
def test_non_integer_config_fields_are_type_errors(name, value):
    kwargs = dict(L=8, K=3, gain_bits=2, norm_bits=5)
    kwargs[name] = value
    with pytest.raises(TypeError, match=name.replace("_", ".?")):
        gain.PVQConfig(**kwargs)

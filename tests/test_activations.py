"""Tests of pvqref.activations: the bits stated are the bits stored, the tiers agree,
switched off the model is the weight-only model exactly, bad activations are errors."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from pvqref import activations as A
from pvqref import gain, packed, pipeline

torch.set_num_threads(1)


def tokens(count=24, n=64, seed=0, outliers=True):
    """Token vectors with a few large channels, as LLM activations have."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((count, n))
    if outliers:
        X[:, [3, 17]] *= 30
    return X


def pvq_config(n=64, bits=4, L=16, gain_bits=3, seed=5):
    return A.ActivationConfig("pvq", bits, True, seed, groups=(A.group_for_bits(n, L, bits,
                                                                                gain_bits),))


@pytest.mark.parametrize("bits,L,gain_bits", [(4, 16, 3), (6, 32, 4), (2.5, 16, 2)])
def test_stored_bits_are_the_stated_bits_and_within_the_budget(bits, L, gain_bits):
    X = tokens()
    cfg = pvq_config(bits=bits, L=L, gain_bits=gain_bits)
    Q = A.encode(X, cfg)
    c = Q.bit_counts()
    per_token = (c["indices"] + c["gain_codes"] + c["row_norms"]) / len(X)
    assert per_token == pytest.approx(cfg.bits_per_activation(64) * 64, abs=1e-9)
    assert cfg.bits_per_activation(64) <= bits + A.TOKEN_BITS / 64 + 1e-12
    # the largest K: one more pulse would not fit the budget
    n, L, K, b = cfg.groups[0]
    assert gain.PVQConfig(L, K + 1, b).index_bits + b > np.floor(L * bits)
    np.testing.assert_allclose(A.decode(Q, cfg), A.quantize_dequantize(X, cfg), rtol=0,
                               atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(L=st.sampled_from([8, 16]), groups=st.integers(3, 6),
       bits=st.floats(1.5, 9.0), gain_bits=st.integers(0, 8), seed=st.integers(0, 99))
def test_any_budget_stores_what_it_states_and_the_tiers_agree(L, groups, bits, gain_bits,
                                                              seed):
    n = L * groups
    g = A.group_for_bits(n, L, bits, gain_bits)
    if g is None:                      # not even one pulse fits beside the gain code
        assert np.floor(L * bits + 1e-9) - gain_bits < gain.PVQConfig(L, 1, 0).index_bits
        return
    cfg = A.ActivationConfig("pvq", bits, True, seed, groups=(g,))
    X = tokens(count=3, n=n, seed=seed)
    c = A.encode(X, cfg).bit_counts()
    assert (c["indices"] + c["gain_codes"] + c["row_norms"]) / X.size == pytest.approx(
        cfg.bits_per_activation(n), abs=1e-12)
    assert cfg.bits_per_activation(n) <= bits + A.TOKEN_BITS / n + 1e-12
    ref = A.quantize_dequantize(X, cfg, backend="reference")
    np.testing.assert_allclose(A.quantize_dequantize(X, cfg, backend="numba"), ref, rtol=0,
                               atol=1e-9 * np.abs(X).max())


def test_rtn_codes_are_integers_of_the_stated_bits():
    X = tokens(outliers=False)
    for bits in (2, 4, 8):
        Xq = A.rtn(X, bits)
        scale = (np.abs(X).max(1, keepdims=True) / (2 ** (bits - 1) - 1)).astype(np.float16)
        q = Xq / scale.astype(np.float64)
        np.testing.assert_allclose(q, np.round(q), atol=1e-9)
        assert np.abs(np.round(q)).max() == 2 ** (bits - 1) - 1
        np.testing.assert_allclose(A.rtn(torch.tensor(X), bits).numpy(), Xq, atol=1e-12)
    assert A.ActivationConfig("rtn", 6).bits_per_activation(576) == 6 + 16 / 576


@pytest.mark.parametrize("method", ["pvq", "rtn"])
def test_tiers_agree(method):
    X = tokens(count=12)
    cfg = pvq_config() if method == "pvq" else A.ActivationConfig("rtn", 4, True, 5)
    ref = A.quantize_dequantize(X, cfg, backend="reference")
    for tier in ("numba", "torch"):
        out = A.quantize_dequantize(torch.tensor(X), cfg, backend=tier).numpy()
        np.testing.assert_allclose(out, ref, rtol=0, atol=1e-9 * np.abs(X).max())
    assert not np.allclose(ref, X)                              # it did quantize


def test_error_falls_with_bits_and_rotation_removes_the_outliers_rtn_suffers():
    X = tokens(count=64)

    def err(cfg):
        return ((A.quantize_dequantize(X, cfg) - X) ** 2).sum() / (X ** 2).sum()
    pvq4, pvq6 = err(pvq_config(bits=4)), err(pvq_config(bits=6))
    rtn4, raw4 = err(A.ActivationConfig("rtn", 4, True, 5)), err(A.ActivationConfig("rtn", 4,
                                                                                   False))
    assert pvq6 < pvq4 / 4 and pvq4 < raw4 / 2 and rtn4 < raw4 / 4


def test_shape_dtype_and_type_are_kept():
    x = torch.tensor(tokens(count=6), dtype=torch.float32).reshape(2, 3, 64)
    out = A.quantize_dequantize(x, pvq_config())
    assert out.shape == x.shape and out.dtype == torch.float32 and isinstance(out, torch.Tensor)
    assert A.quantize_dequantize(x.numpy(), pvq_config()).dtype == np.float32


def test_bad_input_gets_clear_errors():
    X = tokens()
    X[2, 5] = np.nan
    with pytest.raises(ValueError, match="1 NaN/Inf"):
        A.quantize_dequantize(X, pvq_config())
    with pytest.raises(ValueError, match="no group for width 128"):
        A.quantize_dequantize(tokens(n=128), pvq_config())
    with pytest.raises(TypeError):
        A.quantize_dequantize(np.ones((2, 64), dtype=np.int64), pvq_config())
    with pytest.raises(TypeError, match="integer"):
        A.ActivationConfig("rtn", 4.5)
    with pytest.raises(ValueError, match="more than the budget"):
        A.ActivationConfig("pvq", 2, groups=((64, 16, 40, 3),))
    with pytest.raises(ValueError, match="activation method"):
        A.ActivationConfig("fp8", 8)
    with pytest.raises(ValueError, match="clip"):
        A.ActivationConfig("rtn", 4, clip=1.5)
    with pytest.raises(ValueError, match="exceeds fp16"):
        A.rtn(np.full((1, 8), 1e9), 4)
    assert A.group_for_bits(64, 16, 0.1, 2) is None


def test_config_round_trips_through_json():
    cfg = pvq_config()
    assert A.ActivationConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="version 1"):
        A.ActivationConfig.from_dict({"method": "pvq"})


def test_choose_keeps_the_least_error_within_the_budget():
    samples = {64: tokens(count=32), 128: tokens(count=16, n=128, seed=1)}
    cfg, table = A.choose(samples, 4, group_sizes=(16, 32), gain_bits=(2, 4))
    for n in samples:
        rows = [r for r in table if r["n"] == n]
        assert len(rows) == 4 and rows == sorted(rows, key=lambda r: r["rel_mse"])
        assert cfg.pvq_config(n).L == rows[0]["L"] and all(r["bits"] <= 4 + 16 / n
                                                              for r in rows)


def _logits(model, ids):
    with torch.no_grad():
        return model(ids, use_cache=False).logits


def test_hooks_quantize_each_input_once_and_removing_them_restores_the_model(small_llama):
    model, ids = small_llama(layers=2)
    before = _logits(model, ids)
    seen = {}

    def capture(name):
        def hook(module, args):
            seen.setdefault(name, []).append(args[0].detach().clone())
        return hook

    cfg = A.calibrate(model, ids, 4, group_sizes=(16,), gain_bits=(3,))
    with A.enable(model, cfg) as handle:
        hooks = [m.register_forward_pre_hook(capture(n))        # run after the quantizer
                 for n, m in A.decoder_linears(model).items()]
        quantized = _logits(model, ids)
        for h in hooks:
            h.remove()
        assert handle.calls == 4 * 2 and handle.reads == 7 * 2   # q/k/v and gate/up share
    assert not hasattr(model, "pvqref_activations")
    assert torch.equal(_logits(model, ids), before)              # off: weight-only exactly
    assert not torch.allclose(quantized, before)
    # what a layer received is the quantized form of its unquantized input
    plain = {}
    hooks = [m.register_forward_pre_hook(lambda mod, a, n=n: plain.setdefault(n, a[0].clone()))
             for n, m in A.decoder_linears(model).items()]
    _logits(model, ids)
    for h in hooks:
        h.remove()
    name = "model.layers.0.self_attn.k_proj"
    torch.testing.assert_close(seen[name][0], A.quantize_dequantize(plain[name], cfg),
                               rtol=0, atol=0)


def test_nan_activation_names_the_layer(small_llama):
    model, ids = small_llama()
    with torch.no_grad():
        model.model.embed_tokens.weight[ids[0, 0]] = float("nan")
    A.enable(model, A.ActivationConfig("rtn", 8))
    with pytest.raises(ValueError, match="input of model.layers.0.self_attn.q_proj"):
        _logits(model, ids)


def test_packed_model_records_and_restores_its_activation_quantization(small_llama,
                                                                       tmp_path):
    model, ids = small_llama()
    qmodel, reports = pipeline.quantize_model(
        model, "pvq-h", 4.25, ids, keep_codes=True, L=16,
        activations={"bits": 6, "group_sizes": (16,), "gain_bits": (3,)})
    cfg = qmodel.pvqref_activations.config
    assert cfg.method == "pvq" and cfg.bits == 6
    packed.save(qmodel, reports, tmp_path / "m", dtype=torch.float32)   # same tensors
    loaded = packed.load(tmp_path / "m")
    assert loaded.pvqref_activations.config == cfg
    torch.testing.assert_close(_logits(loaded, ids), _logits(qmodel, ids), rtol=1e-5,
                               atol=1e-5)
    weight_only = packed.load(tmp_path / "m", activations=False)
    A.disable(qmodel)
    torch.testing.assert_close(_logits(weight_only, ids), _logits(qmodel, ids), rtol=1e-5,
                               atol=1e-5)
    from transformers import AutoModelForCausalLM
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert hf.pvqref_activations.config == cfg
    torch.testing.assert_close(_logits(hf, ids), _logits(loaded, ids), rtol=0, atol=0)
    packed.set_activations(tmp_path / "m", None)
    assert not hasattr(packed.load(tmp_path / "m"), "pvqref_activations")
    packed.set_activations(tmp_path / "m", cfg)
    text = (tmp_path / "m" / "config.json").read_text()
    (tmp_path / "m" / "config.json").write_text(text.replace('"clip": 1.0', '"clip": 7.0'))
    with pytest.raises(packed.PackedModelError, match="activation quantization config"):
        packed.load(tmp_path / "m")

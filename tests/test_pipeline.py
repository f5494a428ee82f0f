"""Tests of the calibration hooks, the perplexity protocol and the whole-model quantizer,
on a tiny random LLaMA (2 blocks, hidden 64) so that they run in seconds."""

import math

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from pvqref import data, evaluate, hessian, pipeline
from pvqref.hessian import calibration

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=16, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def windows():
    return torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(1))


def test_second_moment_is_the_mean_outer_product():
    x = torch.randn(3, 7, 5, dtype=torch.float32)
    moment = calibration.SecondMoment(5)
    moment.add(x[:2])
    moment.add(x[2:])
    flat = x.reshape(-1, 5).double()
    torch.testing.assert_close(moment.mean(), flat.T @ flat / 21, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="no calibration vectors"):
        calibration.SecondMoment(5).mean()


def test_block_inputs_and_hessians(tiny, windows):
    inputs = calibration.first_block_inputs(tiny, windows)
    assert len(inputs.hidden) == 4 and inputs.hidden[0].shape == (1, 32, 64)
    out = calibration.run_block(tiny.model.layers[0], inputs)
    with torch.no_grad():
        states = tiny.model(windows, output_hidden_states=True, use_cache=False).hidden_states
    torch.testing.assert_close(torch.cat(out.hidden), states[1], rtol=1e-5, atol=1e-5)
    layer = tiny.model.layers[0]
    H_q = calibration.input_second_moment(layer, inputs, "self_attn.q_proj")
    H_k = calibration.input_second_moment(layer, inputs, "self_attn.k_proj")
    torch.testing.assert_close(H_q, H_k, rtol=0, atol=0)          # one shared input
    x = layer.input_layernorm(torch.cat(inputs.hidden)).reshape(-1, 64).double()
    torch.testing.assert_close(H_q, x.T @ x / len(x), rtol=1e-6, atol=1e-9)
    H_down = calibration.input_second_moment(layer, inputs, "mlp.down_proj")
    assert H_down.shape == (128, 128) and H_down.dtype == torch.float64


def test_calibration_windows_are_seeded():
    class Tok:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(c) for c in text]}
    text = "".join(chr(65 + i % 26) for i in range(1000))
    a = calibration.calibration_windows(Tok(), text, 5, 64, seed=3)
    assert a.shape == (5, 64)
    assert torch.equal(a, calibration.calibration_windows(Tok(), text, 5, 64, seed=3))
    with pytest.raises(ValueError, match="fewer than"):
        calibration.calibration_windows(Tok(), text, 50, 64)


def test_perplexity_protocol(tiny):
    ids = torch.randint(0, 256, (100,), generator=torch.Generator().manual_seed(2))
    nll, count = 0.0, 0
    for w in ids[:96].reshape(3, 32):              # 3 full windows; the last 4 tokens dropped
        with torch.no_grad():
            logits = tiny(w[None]).logits[0, :-1].double()
        nll += float(torch.nn.functional.cross_entropy(logits, w[1:], reduction="sum"))
        count += 31
    assert evaluate.perplexity(tiny, ids, window=32) == pytest.approx(math.exp(nll / count),
                                                                      rel=1e-9)
    first = evaluate.perplexity(tiny, ids, window=32, max_windows=1)
    assert first == pytest.approx(evaluate.perplexity(tiny, ids[:32], window=32), rel=1e-12)
    with pytest.raises(ValueError, match="tokenizer"):
        evaluate.perplexity(tiny, "some text")
    with pytest.raises(ValueError, match="do not fill one window"):
        evaluate.perplexity(tiny, ids[:10], window=32)


@pytest.mark.parametrize("method", pipeline.METHODS)
def test_quantize_model_reports_every_layer(tiny, windows, method):
    q, report = pipeline.quantize_model(tiny, method, 4.25, windows, group=32, L=16)
    names = data.linear_weight_names(q.state_dict())
    assert [r.name + ".weight" for r in report] == names
    for r in report:
        assert r.method == method and r.proxy_loss >= 0 and r.seconds >= 0
        assert r.bits_per_weight <= 4.25 + 1e-12
    changed = [not torch.equal(q.state_dict()[n], tiny.state_dict()[n]) for n in names]
    assert all(changed)
    assert pipeline.mean_bits_per_weight(report) <= 4.25


def test_original_model_is_untouched_and_runs_repeat(tiny, windows):
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    a, ra = pipeline.quantize_model(tiny, "pvq-h", 3.25, windows, group=32, L=16,
                                    rotation="input", seed=5)
    b, rb = pipeline.quantize_model(tiny, "pvq-h", 3.25, windows, group=32, L=16,
                                    rotation="input", seed=5)
    for k, v in tiny.state_dict().items():
        assert torch.equal(v, before[k])
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    assert [r.proxy_loss for r in ra] == [r.proxy_loss for r in rb]


def test_feedback_methods_lower_the_proxy_loss(tiny, windows):
    totals = {m: sum(r.proxy_loss for r in pipeline.quantize_model(
        tiny, m, 3.25, windows, group=32, L=16)[1]) for m in ("rtn", "gptq", "pvq", "pvq-h")}
    assert totals["gptq"] < totals["rtn"]
    assert totals["pvq-h"] < totals["pvq"]


def test_layer_plan_bits_and_errors():
    plan = pipeline.layer_plan("gptq", 3.25, (576, 576))
    assert plan.bits == 3 and plan.bits_per_weight((576, 576)) == pytest.approx(
        hessian.gptq_bits_per_weight(3, 128, 576))
    assert hessian.gptq_bits_per_weight(3, 128, 1536) == 3.25
    pvq = pipeline.layer_plan("pvq-h", 3.25, (576, 1536))
    assert pvq.pvq.L == pipeline.DEFAULT_L and pvq.bits_per_weight((576, 1536)) <= 3.25
    with pytest.raises(ValueError, match="method must be one of"):
        pipeline.layer_plan("awq", 3.25, (64, 64))
    with pytest.raises(ValueError, match="no PVQ configuration"):
        pipeline.layer_plan("pvq", 0.1, (64, 64), L=16)
    assert np.isfinite(plan.bits_per_weight((64, 64)))

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
    diagonal = calibration.SecondMoment(5, diagonal_only=True)
    diagonal.add(x)
    torch.testing.assert_close(diagonal.mean(), torch.diagonal(moment.mean()),
                               rtol=1e-12, atol=0)


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


def test_compare_gives_both_perplexities_and_the_agreement_in_one_pass(tiny):
    ids = torch.randint(0, 256, (100,), generator=torch.Generator().manual_seed(3))
    other = LlamaForCausalLM(tiny.config).eval()            # a second, different model
    out = evaluate.compare(other, tiny, ids, window=32)
    assert out["perplexity"] == pytest.approx(evaluate.perplexity(other, ids, 32), rel=1e-12)
    assert out["reference_perplexity"] == pytest.approx(evaluate.perplexity(tiny, ids, 32),
                                                        rel=1e-12)
    top1, kl, count = 0, 0.0, 0                             # the definitions, spelled out
    for w in ids[:96].reshape(3, 32):
        with torch.no_grad():
            p = torch.log_softmax(other(w[None]).logits[0, :-1].double(), -1)
            q = torch.log_softmax(tiny(w[None]).logits[0, :-1].double(), -1)
        top1 += int((p.argmax(-1) == q.argmax(-1)).sum())
        kl += float((q.exp() * (q - p)).sum())
        count += 31
    assert 0 < out["top1"] < 1 and out["top1"] == top1 / count
    assert out["kl"] > 0 and out["kl"] == pytest.approx(kl / count, rel=1e-12)
    assert evaluate.agreement(other, tiny, ids, 32) == {"top1": out["top1"], "kl": out["kl"]}
    alone = evaluate.compare(tiny, tiny, ids, window=32)  # one forward pass per window
    assert alone["top1"] == 1 and alone["kl"] == 0
    assert alone["perplexity"] == alone["reference_perplexity"] == out["reference_perplexity"]


@pytest.mark.parametrize("method", [m for m in pipeline.METHODS if m != "vq"])  # vq: rows
def test_quantize_model_reports_every_layer(tiny, windows, method):
    q, report = pipeline.quantize_model(tiny, method, 4.25, windows, group=32, L=16,
                                        measure_loss=True)
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


def test_residual_rotation_is_exact_before_quantization_and_seeded(tiny, windows):
    from pvqref import coherence
    import copy
    rotated = coherence.rotate_llama_model(copy.deepcopy(tiny), coherence.RandomizedHadamard(
        64, 7 + pipeline.RESIDUAL_SEED))
    with torch.no_grad():
        diff = (rotated(windows).logits - tiny(windows).logits).abs().max()
    assert diff < 1e-4
    a, ra = pipeline.quantize_model(tiny, "pvq-h", 4.25, windows, L=16, rotation="residual",
                                    seed=7)
    b, _ = pipeline.quantize_model(tiny, "pvq-h", 4.25, windows, L=16, rotation="residual",
                                   seed=7)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    assert torch.equal(a.model.embed_tokens.weight, rotated.model.embed_tokens.weight)
    assert len(ra) == 14 and all(r.bits_per_weight <= 4.25 for r in ra)
    with pytest.raises(ValueError, match="rotation must be one of"):
        pipeline.quantize_model(tiny, "rtn", 4.25, windows, rotation="output")


@pytest.mark.parametrize("method", ["rtn", "pvq"])
def test_data_free_methods_need_no_calibration(tiny, windows, method):
    free, report = pipeline.quantize_model(tiny, method, 4.25, None, group=32, L=16)
    measured, _ = pipeline.quantize_model(tiny, method, 4.25, windows, group=32, L=16,
                                          measure_loss=True)
    assert all(r.proxy_loss is None for r in report)
    for k, v in free.state_dict().items():          # the same weights either way
        assert torch.equal(v, measured.state_dict()[k]), k
    with pytest.raises(ValueError, match="needs calibration windows"):
        pipeline.quantize_model(tiny, "gptq", 4.25, None)


@pytest.mark.parametrize("rotation", ["input", "residual"])
def test_unfolded_rotations_compute_the_same_model_rotating_each_input_once(tiny, windows,
                                                                           rotation):
    from pvqref import quantized
    folded, _ = pipeline.quantize_model(tiny, "pvq-h", 3.25, windows, L=16, rotation=rotation)
    online, _ = pipeline.quantize_model(tiny, "pvq-h", 3.25, windows, L=16, rotation=rotation,
                                        fold_rotations=False)
    attn = online.model.layers[0].self_attn
    assert isinstance(attn.o_proj, quantized.QuantizedLinear)
    shared = {id(m): m for m in online.modules() if isinstance(m, quantized.SharedInputRotation)}
    per_block = 4 if rotation == "input" else 2       # residual: only o's and down's inputs
    assert len(shared) == per_block * len(online.model.layers)
    before = {k: m.calls for k, m in shared.items()}
    with torch.no_grad():
        a, b = folded(windows).logits, online(windows).logits
    assert (a - b).abs().max() < 1e-4
    # one batched forward pass: each shared input is rotated once, not once per reader
    assert all(m.calls - before[k] == 1 for k, m in shared.items())
    torch.testing.assert_close(attn.o_proj.dense_weight(),
                               folded.model.layers[0].self_attn.o_proj.weight)
    if rotation == "input":                           # q, k, v share one rotation object
        assert attn.q_proj.input_rotation is attn.k_proj.input_rotation is \
            attn.v_proj.input_rotation


def test_feedback_methods_lower_the_proxy_loss(tiny, windows):
    totals = {m: sum(r.proxy_loss for r in pipeline.quantize_model(
        tiny, m, 3.25, windows, group=32, L=16, measure_loss=True)[1])
        for m in ("rtn", "gptq", "pvq", "pvq-h")}
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


def test_block_hessians_and_channel_energy_match_the_sequential_collection(tiny, windows):
    H = calibration.block_hessians(tiny, windows, 1)
    inputs = calibration.run_block(tiny.model.layers[0],
                                   calibration.first_block_inputs(tiny, windows))
    for name, path, _ in calibration.LLAMA_INPUTS:
        expected = calibration.input_second_moment(tiny.model.layers[1], inputs, path)
        torch.testing.assert_close(H[name], expected, rtol=1e-6, atol=1e-9)
    energy = calibration.channel_energy(tiny, windows, "mlp.down_proj")
    assert energy.shape == (2, 128)
    np.testing.assert_allclose(energy[1], torch.diagonal(H["mlp_hidden"]).numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="block"):
        calibration.block_hessians(tiny, windows, 2)

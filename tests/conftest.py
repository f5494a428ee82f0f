"""Shared fixtures: a tiny random LLaMA and calibration windows for it; the check that a
packed model reloads bit for bit."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM


@pytest.fixture
def small_llama():
    """make(hidden, intermediate, layers, windows, tie) -> (model in eval mode, token
    windows of shape ``windows``), seeded: vocabulary 64, two heads of hidden / 2, one
    key-value head."""
    def make(hidden=64, intermediate=128, layers=1, windows=(4, 16), tie=False):
        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=64, hidden_size=hidden, intermediate_size=intermediate,
                          num_hidden_layers=layers, num_attention_heads=2,
                          num_key_value_heads=1, head_dim=hidden // 2,
                          tie_word_embeddings=tie)
        ids = torch.randint(0, 64, windows, generator=torch.Generator().manual_seed(1))
        return LlamaForCausalLM(cfg).eval(), ids
    return make


def save_and_reload_exactly(q, reports, folder, ids):
    """Pack the quantized model ``q`` (its ``reports`` kept their codes) into ``folder``,
    check that ``packed.load`` restores every quantized weight bit for bit and that
    transformers' ``from_pretrained`` gives the same logits on ``ids[:1]``; returns the
    folder's path."""
    from transformers import AutoModelForCausalLM

    from pvqref import packed
    path = packed.save(q, reports, folder, dtype=torch.float32)
    loaded = packed.load(path)
    for r in reports:
        assert torch.equal(loaded.get_submodule(r.name).weight, q.get_submodule(r.name).weight)
    hf = AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():
        assert torch.equal(hf(ids[:1]).logits, loaded(ids[:1]).logits)
    return path

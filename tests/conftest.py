"""Shared fixtures: a tiny random LLaMA and calibration windows for it."""

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

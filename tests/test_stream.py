"""Tests of the block-by-block quantizer that reads a sharded checkpoint: it must store
exactly what the in-memory quantizer stores."""

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from pvqref import packed, pipeline, stream

torch.set_num_threads(1)
WINDOWS = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=32, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    folder = tmp_path_factory.mktemp("ckpt")
    model.save_pretrained(folder, max_shard_size="400KB")
    assert len(json.loads((folder / stream.INDEX).read_text())["weight_map"]) > 10
    assert len(list(folder.glob("model-*.safetensors"))) >= 2
    return model, folder


@pytest.mark.parametrize("method", ["pvq-h", "rtn"])
def test_streamed_and_in_memory_write_the_same_bytes(checkpoint, tmp_path, method):
    model, folder = checkpoint
    q, reports = pipeline.quantize_model(model, method, 3.25, WINDOWS, keep_codes=True)
    a = packed.save(q, reports, tmp_path / "memory", dtype=torch.float32)
    b = packed.write(*stream.quantize_checkpoint(folder, method, 3.25, WINDOWS),
                     tmp_path / "streamed")
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert json.loads((a / "config.json").read_text())["quantization_config"] == \
        json.loads((b / "config.json").read_text())["quantization_config"]


def test_streaming_refuses_what_it_cannot_do(checkpoint, tmp_path):
    _, folder = checkpoint
    with pytest.raises(ValueError, match="whole model"):
        stream.quantize_checkpoint(folder, "rtn", 3.25, rotation="residual")
    with pytest.raises(ValueError, match="calibration windows"):
        stream.quantize_checkpoint(folder, "gptq", 3.25)
    with pytest.raises(FileNotFoundError, match="neither"):
        stream.Checkpoint(tmp_path)
    index = json.loads((folder / stream.INDEX).read_text())
    shard = sorted(set(index["weight_map"].values()))[-1]
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in folder.iterdir():
        if f.name != shard:
            (broken / f.name).write_bytes(f.read_bytes())
    with pytest.raises(FileNotFoundError, match=f"shard {shard}"):
        stream.quantize_checkpoint(broken, "rtn", 3.25)

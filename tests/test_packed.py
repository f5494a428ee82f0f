"""Tests of the layer codes, the packed model folder and its reload (ours and
transformers' from_pretrained), on a tiny random LLaMA so that they run in seconds."""

import json
import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

import pvqref
from pvqref import codes, format as fmt, gain, hessian, packed, pipeline, placement
from pvqref.quantized import QuantizedLinear

torch.set_num_threads(1)
METHODS = ("pvq-h", "gptq", "rtn", "pvq")


def tiny_model(seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=32, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


WINDOWS = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(1))
TOKENS = torch.randint(0, 256, (1, 24), generator=torch.Generator().manual_seed(2))


def quantize(method, rotation="input", seed=0):
    return pipeline.quantize_model(tiny_model(), method, 3.25, WINDOWS, seed=seed,
                                   rotation=rotation, inplace=True, keep_codes=True)


@pytest.fixture(scope="module", params=METHODS)
def saved(request, tmp_path_factory):
    model, reports = quantize(request.param)
    path = packed.save(model, reports, tmp_path_factory.mktemp(request.param) / "packed")
    return model, reports, path


def logits(model):
    with torch.no_grad():
        return model(TOKENS).logits


# -- codes ----------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(st.integers(1, 16), st.lists(st.integers(0, 2 ** 16 - 1), max_size=40))
def test_pack_uints_round_trip(b, values):
    values = [v % 2 ** b for v in values]
    data = fmt.pack_uints(values, b)
    assert len(data) == -(-len(values) * b // 8)
    assert fmt.unpack_uints(data, len(values), b).tolist() == values


def test_unpack_uints_refuses_bad_length_and_padding():
    with pytest.raises(ValueError, match="need 1 bytes"):
        fmt.unpack_uints(b"\x00\x00", 2, 3)
    with pytest.raises(ValueError, match="padding"):
        fmt.unpack_uints(b"\xff", 2, 3)


def test_scalar_codes_recover_gptq_exactly():
    rng = np.random.default_rng(0)
    W = torch.from_numpy(rng.standard_normal((16, 200)))
    X = torch.from_numpy(rng.standard_normal((400, 200)))
    Q, scale, zero = hessian.gptq_quantize(W, X.T @ X / 400, 3, 64, return_grid=True)
    c = codes.scalar_codes(Q, scale, zero, 3, 64, "row")
    assert c.scale.shape == (16, 4)                     # 200 = 3 x 64 + a short group of 8
    assert torch.equal(codes.dequantize(c), Q)
    assert c.bit_counts()["total"] == 16 * 200 * 3 + 2 * 16 * 16 * 4
    with pytest.raises(RuntimeError, match="not on the given grid"):
        codes.scalar_codes(Q + 1e-3, scale, zero, 3, 64, "row")


def test_pvq_codes_decode_to_the_quantizers_reconstruction():
    rng = np.random.default_rng(1)
    W = torch.from_numpy(rng.standard_normal((8, 256)))
    X = torch.from_numpy(rng.standard_normal((512, 256)))
    cfg = gain.config_for_rate(64, (8, 256), 3.25, 3)
    result = hessian.pvq_quantize(W, X.T @ X / 512, cfg, search="hessian")
    c = codes.pvq_codes(result)
    Q = codes.dequantize(c)
    assert torch.equal(Q, gain.dequantize(c, backend="torch"))
    torch.testing.assert_close(Q, result.Q, rtol=1e-12, atol=1e-12)
    with pytest.raises(TypeError, match="QuantizedMatrix or ScalarCodes"):
        codes.dequantize(np.zeros(3))


# -- save and reload ------------------------------------------------------------------------

def test_reload_gives_the_quantizers_weights_bit_for_bit(saved):
    model, reports, path = saved
    ours = pvqref.load_quantized(path)
    for r in reports:
        assert torch.equal(ours.get_submodule(r.name).weight, model.get_submodule(r.name).weight)
    embed = model.model.embed_tokens.weight.to(torch.float16).to(torch.float32)
    assert torch.equal(ours.model.embed_tokens.weight, embed)
    assert ours.lm_head.weight is ours.model.embed_tokens.weight     # tied again


def test_from_pretrained_and_load_quantized_give_identical_logits(saved):
    _, _, path = saved
    hf = AutoModelForCausalLM.from_pretrained(path)
    assert hf.dtype == torch.float32
    assert torch.equal(logits(hf), logits(pvqref.load_quantized(path)))


def test_fp32_unquantized_tensors_reload_to_the_same_logits(tmp_path):
    model, reports = quantize("pvq-h")
    path = packed.save(model, reports, tmp_path / "p", dtype=torch.float32)
    assert torch.equal(logits(packed.load(path)), logits(model))


def test_online_rotations_compute_the_same_function(saved):
    _, reports, path = saved
    online = packed.load(path, fold_rotations=False)
    layer = online.get_submodule(reports[0].name)
    assert isinstance(layer, QuantizedLinear) and layer.input_rotation is not None
    q, k = (online.get_submodule(f"model.layers.0.self_attn.{p}") for p in ("q_proj", "k_proj"))
    assert q.input_rotation is k.input_rotation                        # one per input
    torch.testing.assert_close(logits(online), logits(packed.load(path)), rtol=1e-4, atol=1e-4)


def test_residual_rotation_packs_as_a_plain_llama(tmp_path):
    model, reports = quantize("pvq-h", rotation="residual")
    path = packed.save(model, reports, tmp_path / "p", dtype=torch.float32)
    assert torch.equal(logits(packed.load(path)), logits(model))


def test_two_runs_with_one_seed_write_identical_bytes(tmp_path):
    from transformers import AutoTokenizer
    from pvqref import data
    tok = AutoTokenizer.from_pretrained(data.ensure_model_cache() / "tokenizer")
    paths = [packed.save(*quantize("pvq-h"), tmp_path / f"run{i}", tok) for i in range(2)]
    assert "tokenizer.json" in os.listdir(paths[0])
    for name in sorted(os.listdir(paths[0])):
        assert (paths[0] / name).read_bytes() == (paths[1] / name).read_bytes(), name
    other = packed.save(*quantize("pvq-h", seed=1), tmp_path / "seed1")
    assert (other / "model.safetensors").read_bytes() != \
        (paths[0] / "model.safetensors").read_bytes()


def test_bytes_on_disk_match_the_claimed_rate(saved):
    _, reports, path = saved
    info = packed.inspect(path)
    assert sum(info["bytes_by_kind"].values()) == info["quantized_bytes"]
    # each layer's tensors round its bit fields up to whole bytes; a PVQ stream's
    # version byte and checksum (40 bits per matrix) live in the file header instead
    slack = 8 * 8 * len(reports) / info["quantized_weights"]
    assert abs(info["bits_per_weight_on_disk"] - info["bits_per_weight_claimed"]) < slack
    assert info["folder_bytes"] < info["fp16_model_bytes"]


def test_save_needs_codes_and_refuses_to_replace(tmp_path, saved):
    model, reports, path = saved
    plain, no_codes = pipeline.quantize_model(tiny_model(), "rtn", 3.25, None, inplace=True)
    with pytest.raises(ValueError, match="keep_codes=True"):
        packed.save(plain, no_codes, tmp_path / "x")
    with pytest.raises(FileExistsError, match="overwrite"):
        packed.save(model, reports, path)


def test_an_interrupted_write_leaves_no_folder(tmp_path, monkeypatch):
    model, reports = quantize("rtn")
    packed.save(model, reports, tmp_path / "keep")
    before = (tmp_path / "keep" / "model.safetensors").read_bytes()

    def fail(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-write")
    monkeypatch.setattr("pathlib.Path.write_text", fail)
    for target, overwrite in ((tmp_path / "new", False), (tmp_path / "keep", True)):
        with pytest.raises(KeyboardInterrupt):
            packed.save(model, reports, target, overwrite=overwrite)
    assert sorted(os.listdir(tmp_path)) == ["keep"]                  # no partial folders
    assert (tmp_path / "keep" / "model.safetensors").read_bytes() == before


# -- corrupt folders: a clear error naming the problem --------------------------------------

@pytest.fixture()
def copy(saved, tmp_path):
    import shutil
    return shutil.copytree(saved[2], tmp_path / "copy")


def header_size(path):
    return 8 + int.from_bytes((path / "model.safetensors").read_bytes()[:8], "little")


def both_loaders_raise(path, match):
    with pytest.raises(packed.PackedModelError, match=match):
        packed.load(path)
    with pytest.raises(packed.PackedModelError, match=match):
        AutoModelForCausalLM.from_pretrained(path)


def test_a_flipped_bit_names_the_tensor(copy):
    file = copy / "model.safetensors"
    data = bytearray(file.read_bytes())
    header = json.loads(data[8:header_size(copy)])
    key = sorted(k for k in header if k.endswith((".indices", ".codes")))[0]
    data[header_size(copy) + header[key]["data_offsets"][0] + 3] ^= 0x10
    file.write_bytes(bytes(data))
    both_loaders_raise(copy, f"tensor '{key}' fails its checksum")


@pytest.mark.parametrize("change", ["truncate", "append", "header"])
def test_truncated_appended_or_corrupt_header(copy, change):
    file = copy / "model.safetensors"
    data = file.read_bytes()
    if change == "truncate":
        data, match = data[:-5], "truncated"
    elif change == "append":
        data, match = data + b"\0" * 7, "7 bytes after its last tensor"
    else:
        data, match = data[:20] + b"}" + data[21:], "header is corrupt"
    file.write_bytes(data)
    with pytest.raises(packed.PackedModelError, match=match):
        packed.load(copy)


def test_a_wrong_config_fails_the_checksum_of_its_layer(copy):
    config = json.loads((copy / "config.json").read_text())
    layers = config["quantization_config"]["layers"]
    name = sorted(layers)[0]
    spec = layers[name]
    if "L" in spec:
        spec["gain_kind"] = "quantile" if spec["gain_kind"] != "quantile" else "uniform"
    else:
        spec["layout"] = "flat" if spec["layout"] == "row" else "row"
        spec["group"] = 256 if spec["layout"] == "flat" else 128
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(packed.PackedModelError, match=f"'{name}.*' fails its checksum"):
        packed.load(copy)


def test_a_missing_tensor_is_named(copy):
    file = copy / "model.safetensors"
    tensors = load_file(str(file))
    with open(file, "rb") as fh:
        header = json.loads(fh.read(header_size(copy))[8:])
    info = json.loads(header["__metadata__"]["pvqref"])
    key = sorted(k for k in tensors if k.endswith("gain_codes") or k.endswith("scales"))[0]
    del tensors[key], info["checksums"][key]
    save_file(tensors, str(file), metadata={"format": "pt", "pvqref": json.dumps(info)})
    with pytest.raises(packed.PackedModelError, match=f"tensor '{key}' is missing"):
        packed.load(copy)


@pytest.mark.parametrize("field,value,match", [
    ("quant_method", "gptq", "not a pvqref packed model"),
    ("format_version", 99, "version 99 is not supported")])
def test_a_foreign_config_is_refused(copy, field, value, match):
    config = json.loads((copy / "config.json").read_text())
    config["quantization_config"][field] = value
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(packed.PackedModelError, match=match):
        packed.load(copy)


def test_missing_folder_and_files(tmp_path, copy):
    with pytest.raises(packed.PackedModelError, match="is not a folder"):
        packed.load(tmp_path / "nothing")
    (copy / "model.safetensors").unlink()
    with pytest.raises(packed.PackedModelError, match="model.safetensors is missing"):
        packed.load(copy)


def test_import_pvqref_registers_pvq_with_transformers_lazily():
    import subprocess
    import sys
    script = ("import sys, pvqref; assert 'transformers' not in sys.modules; "
              "from transformers.quantizers.auto import AUTO_QUANTIZER_MAPPING as M, "
              "AUTO_QUANTIZATION_CONFIG_MAPPING as C; print('pvq' in M and 'pvq' in C)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "True", out.stderr


# -- placement over devices (accelerate's device_map) ----------------------------------------

def block_map(split_device="cpu"):
    """Every top-level part and decoder block placed explicitly (the shape of a multi-GPU
    map); block 1 on ``split_device``."""
    return {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
            "model.layers.1": split_device, "model.norm": "cpu", "lm_head": "cpu"}


@pytest.mark.parametrize("device_map", ["auto", "balanced", "sequential", block_map()])
def test_a_device_map_loads_the_same_model(saved, device_map):
    _, _, path = saved
    placed = pvqref.load_quantized(path, device_map=device_map, max_memory={"cpu": "2GiB"})
    assert torch.equal(logits(placed), logits(pvqref.load_quantized(path)))


def test_each_layer_is_decoded_on_the_device_its_block_is_mapped_to(saved, monkeypatch):
    """Without a second device, the routing is what can be checked: every quantized layer
    and stored tensor goes to its block's device (recorded; decoded on the CPU), and the
    model is dispatched with the whole map."""
    _, reports, path = saved
    seen, dispatched = {}, {}
    decode = packed.quantized_module

    def record(name, spec, tensors, shape, device, *args):
        seen[name] = str(device)
        return decode(name, spec, tensors, shape, torch.device("cpu"), *args)

    def dispatch(model, device_map):
        dispatched.update(device_map)
        return model
    monkeypatch.setattr(packed, "quantized_module", record)
    monkeypatch.setattr(placement, "dispatch", dispatch)
    monkeypatch.setattr(torch.Tensor, "to", lambda t, *a, **k: t if a and str(a[0]) == "cuda:1"
                        else _tensor_to(t, *a, **k))
    packed.load(path, device_map=block_map(1))
    assert {n: d for n, d in seen.items()} == {
        r.name: "cuda:1" if r.name.startswith("model.layers.1.") else "cpu" for r in reports}
    assert dispatched == block_map(1)


_tensor_to = torch.Tensor.to


def test_from_pretrained_with_a_device_map(saved):
    _, _, path = saved
    hf = AutoModelForCausalLM.from_pretrained(path, device_map="auto")
    assert torch.equal(logits(hf), logits(pvqref.load_quantized(path)))


def test_bad_device_maps_are_refused(saved):
    _, _, path = saved
    with pytest.raises(ValueError, match="not both"):
        pvqref.load_quantized(path, device="cpu", device_map="auto")
    with pytest.raises(ValueError, match="one of"):
        pvqref.load_quantized(path, device_map="everywhere")
    partial = {k: v for k, v in block_map().items() if k != "model.norm"}
    with pytest.raises(ValueError, match="model.norm.weight"):
        pvqref.load_quantized(path, device_map=partial)
    with pytest.raises(ValueError, match="offloading is not supported"):
        pvqref.load_quantized(path, device_map=block_map("disk"))

"""Tests of the command line on a tiny random LLaMA checkpoint saved in two shards, with
the embedded SmolLM2 tokenizer (so the embedded texts can calibrate and evaluate it)."""

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from pvqref import cli, data, packed

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt") / "tiny-llama"
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=128, intermediate_size=256,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=32, tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(folder, max_shard_size="10MB")
    AutoTokenizer.from_pretrained(data.ensure_model_cache() / "tokenizer").save_pretrained(folder)
    assert len(list(folder.glob("model-*.safetensors"))) == 2          # two shards
    return folder


@pytest.fixture(scope="module")
def quantized(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "tiny-gptq"
    assert cli.main(["quantize", "--model", str(checkpoint), "--method", "gptq", "--bpw",
                     "4.25", "--calibration", "2", "--calibration-tokens", "64", "--out",
                     str(out), "--quiet"]) == 0
    return out


def test_quantize_writes_a_packed_folder(quantized, capsys):
    _, qc = packed.read_config(quantized)
    assert qc["method"] == "gptq" and qc["calibration"] == [2, 64]
    assert len(qc["layers"]) == 14
    assert (quantized / "tokenizer.json").exists()
    assert cli.main(["inspect", str(quantized), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert abs(info["bits_per_weight_on_disk"] - 4.25) < 0.01


def test_eval_and_generate(quantized, capsys):
    assert cli.main(["eval", str(quantized), "--windows", "1", "--context", "128",
                     "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows["perplexity_128"] > 1 and 0 <= rows["top1"] <= 1 and rows["kl"] >= 0
    assert cli.main(["generate", str(quantized), "--prompt", "Hello", "--max-new-tokens",
                     "3"]) == 0
    assert capsys.readouterr().out.strip()


def test_eval_and_generate_over_a_device_map_match_one_device(quantized, capsys):
    run = ["eval", str(quantized), "--windows", "1", "--context", "128", "--json"]
    assert cli.main(run) == 0
    one = json.loads(capsys.readouterr().out)
    assert cli.main(run + ["--device-map", "auto"]) == 0
    assert json.loads(capsys.readouterr().out) == one
    gen = ["generate", str(quantized), "--prompt", "Hello", "--max-new-tokens", "3"]
    assert cli.main(gen) == 0
    first = capsys.readouterr().out
    assert cli.main(gen + ["--device-map", "sequential"]) == 0
    assert capsys.readouterr().out == first


def test_quantize_with_rsavq_writes_row_groups_within_the_rate(checkpoint, tmp_path, capsys):
    out = tmp_path / "tiny-rsavq"
    assert cli.main(["quantize", "--model", str(checkpoint), "--method", "pvq-h+rsavq",
                     "--bpw", "3.25", "--calibration", "2", "--calibration-tokens", "64",
                     "--out", str(out), "--quiet"]) == 0
    _, qc = packed.read_config(out)
    assert qc["method"] == "pvq-h+rsavq" and qc["rsavq"]["lam"] == 0.05
    assert all(len(s["row_groups"]) == 4 for s in qc["layers"].values())
    capsys.readouterr()
    assert cli.main(["inspect", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["bits_per_weight_claimed"] <= 3.25
    assert info["bits_per_weight_on_disk"] <= 3.25 + 0.01       # whole bytes per tensor
    assert cli.main(["quantize", "--model", str(checkpoint), "--method", "pvq-h+rsavq",
                     "--rotation", "residual", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    capsys.readouterr()
    # the faithful RSAVQ cuts columns into vectors of 6: this model's 128 rows cannot be
    assert cli.main(["quantize", "--model", str(checkpoint), "--method", "rsavq", "--bpw",
                     "4.25", "--calibration", "2", "--calibration-tokens", "64",
                     "--out", str(tmp_path / "f"), "--quiet"]) == 2
    assert "multiple of 6" in capsys.readouterr().err


def test_activation_quantization_is_recorded_and_evaluated(checkpoint, quantized, tmp_path,
                                                          capsys):
    out = tmp_path / "tiny-a6"
    assert cli.main(["quantize", "--model", str(checkpoint), "--method", "rtn", "--bpw",
                     "4.25", "--act-bits", "6", "--out", str(out), "--quiet"]) == 0
    assert "pvq at 6 bits" in capsys.readouterr().out
    _, qc = packed.read_config(out)
    assert qc["activations"]["method"] == "pvq" and qc["activations"]["bits"] == 6
    run = ["eval", str(out), "--windows", "1", "--context", "128", "--json"]
    assert cli.main(run) == 0
    with_act = json.loads(capsys.readouterr().out)
    assert with_act["activations"] == qc["activations"]
    assert cli.main(run + ["--weights-only"]) == 0
    weight_only = json.loads(capsys.readouterr().out)
    assert weight_only["activations"] is None
    assert weight_only["perplexity_128"] != with_act["perplexity_128"]
    assert cli.main(["eval", str(quantized), "--windows", "1", "--context", "128",
                     "--act-method", "rtn", "--act-bits", "8"]) == 0
    assert ("rtn at 8 bits; stored per activation with the fp16 norm or scale: 8.125 at "
            "width 128, 8.062 at width 256") in capsys.readouterr().out
    assert cli.main(["eval", str(quantized), "--act-method", "rtn", "--act-bits", "4.5"]) == 2
    assert "whole number" in capsys.readouterr().err


def test_inspect_prints_the_breakdown(quantized, capsys):
    assert cli.main(["inspect", str(quantized)]) == 0
    out = capsys.readouterr().out
    assert "bits per weight on disk" in out and "side data" in out


def test_user_mistakes_are_one_line_without_traceback(tmp_path, checkpoint, quantized,
                                                      capsys):
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text('{"model_type": "gpt2"}')
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in quantized.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    raw = bytearray((bad / "model.safetensors").read_bytes())
    raw[-3] ^= 1
    (bad / "model.safetensors").write_bytes(bytes(raw))
    cases = [(("quantize", "--model", str(tmp_path / "none"), "--out", str(tmp_path / "o")),
              "does not exist"),
             (("quantize", "--model", str(tmp_path / "gpt2"), "--out", str(tmp_path / "o")),
              "not a LLaMA"),
             (("quantize", "--model", str(checkpoint), "--method", "pvq", "--L", "48",
               "--out", str(tmp_path / "o")), "L=48"),
             (("eval", str(bad)), "fails its checksum"),
             (("inspect", str(tmp_path)), "no config.json"),
             (("quantize", "--model", str(checkpoint), "--out", str(quantized)), "exists")]
    for args, message in cases:
        assert cli.main(list(args)) == 2, args
        err = capsys.readouterr().err          # progress bars, then one line of error
        last = err.strip().splitlines()[-1]
        assert last.startswith("error: ") and message in last and "Traceback" not in err
    assert not (tmp_path / "o").exists()
    # the same through the installed entry point, in a fresh process
    result = subprocess.run([sys.executable, "-m", "pvqref", "eval", str(bad)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 2 and "fails its checksum" in result.stderr
    assert "Traceback" not in result.stderr

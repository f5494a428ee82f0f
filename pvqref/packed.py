"""A packed model: a quantized LLaMA as a folder transformers users recognise.

Layout of the folder :func:`save` writes (and :func:`load`, and transformers'
``from_pretrained`` after ``import pvqref``, read)::

    config.json          the model's config, plus "quantization_config": quant_method "pvq",
                         the format version, the method, the rate, and one spec per
                         quantized layer (its method, shape, format and rotation seed);
                         optionally "activations", the activation quantization that
                         :func:`load` switches on (:mod:`pvqref.activations`)
    model.safetensors    every quantized layer as integer tensors, bit-packed exactly:
                           PVQ:    <layer>.indices     U8   the pyramid indices, bits(L, K) each
                                   <layer>.gain_codes  U8   gain_bits each
                                   <layer>.norm_codes  U8   norm_bits each (16: fp16 values)
                                   <layer>.norm_range  I32  lo, hi as fp32 bits (log norms)
                           scalar: <layer>.codes       U8   bits each
                                   <layer>.scales      I16  fp16 bits, one per group
                                   <layer>.zeros       I16  fp16 bits, one per group
                           row groups (RSAVQ's WCSG): <layer>.row_group U8 (each row's
                                   group) and each group's PVQ tensors, <layer>.g<i>_indices, ...
                                   (:mod:`pvqref.packed_layer`)
                         and the unquantized tensors (embeddings, norms) in fp16; the file
                         header's metadata holds a CRC-32 per tensor
    tokenizer files      as ``tokenizer.save_pretrained`` writes them

All integers are little-endian and packed least significant bit first (:mod:`pvqref.format`),
so a layer's tensors hold exactly the bits its format accounts, rounded up to whole bytes.
Side data are stored as integer views (I16 for fp16, I32 for fp32) so that no loader ever
casts them to the model's dtype.

Checks. Each tensor's CRC-32 covers its name, its layer's spec from config.json and its
bytes: a flipped bit, or a config that says another format than the writer's, fails with
the name of the tensor. The file's length is checked against its header (truncated, or
bytes appended), every tensor the model needs must be there and nothing else, and shapes
and dtypes must be the ones the spec implies. Every failure is a
:class:`~pvqref.packed_layer.PackedModelError`
(a ValueError) naming what is wrong.

Writes are atomic: the folder is written under a temporary name beside the target and
renamed into place, so an interrupted write leaves no half folder. The same model and
reports write byte-identical files.

Chapter: Quantizing a real LLaMA model (book/llama.ipynb).
"""

from __future__ import annotations

import json
import mmap
import os
import re
import zlib
from pathlib import Path

import numpy as np
import torch

from . import __version__, codes as _codes, format as _format
from .data import _atomic_write_bytes     # temp file, then rename: one writer for the project
from .packed_layer import (PVQ_FIELDS, PVQ_TENSORS, SCALAR_TENSORS,  # noqa: F401 (API)
                           PackedLayer, PackedModelError, expected_tensors, format_fields,
                           layer_codes, layer_spec, layer_tensors, pack_layer)

QUANT_METHOD = "pvq"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def _checksum(key: str, spec: dict | None, data) -> str:
    schema = json.dumps({"tensor": key, "layer": spec}, sort_keys=True).encode()
    return f"{zlib.crc32(data, zlib.crc32(schema)):08x}"


# -- writing --------------------------------------------------------------------------------

def _unquantized_state(model, quantized: set, dtype) -> dict:
    """Every tensor of the model's state except the quantized layers' weights, floats as
    ``dtype``; a tensor sharing storage with an earlier one (tied embeddings) is left out
    (the config's tie_word_embeddings restores it)."""
    out, seen = {}, set()
    for key, value in model.state_dict().items():
        layer, _, leaf = key.rpartition(".")
        if layer in quantized and leaf == "weight":
            continue
        ptr = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape))
        if ptr in seen:
            continue
        seen.add(ptr)
        value = value.detach().cpu()
        out[key] = (value.to(dtype) if value.is_floating_point() else value).contiguous()
    return out


def save(model, reports, path, tokenizer=None, dtype=torch.float16, overwrite: bool = False,
         info: dict | None = None, activations=None) -> Path:
    """Write the packed model folder ``path`` (see the module docstring) for a model and
    the reports of ``pipeline.quantize_model(..., keep_codes=True)``: the quantized layers
    from their codes, every other tensor of ``model`` as ``dtype``, the tokenizer if
    given, and ``info`` (JSON) into the quantization config. ``activations``: an
    :class:`pvqref.activations.ActivationConfig` to record (default: the one switched on
    in ``model``, if any). Atomic; refuses to replace an existing folder unless
    ``overwrite``. Returns the path."""
    reports = list(reports)
    if activations is None and getattr(model, "pvqref_activations", None) is not None:
        activations = model.pvqref_activations.config
    config = model.config.to_dict()
    config["dtype"] = str(model.dtype).removeprefix("torch.")      # the compute dtype
    state = _unquantized_state(model, {r.name for r in reports}, dtype)
    return write(config, reports, state, path, tokenizer, overwrite, info, activations)


def write(config: dict, reports, state: dict, path, tokenizer=None, overwrite: bool = False,
          info: dict | None = None, activations=None) -> Path:
    """:func:`save` from its parts: the model's config (a dict, its "dtype" the compute
    dtype), the reports with codes, and the unquantized tensors ``state`` ({name: tensor},
    written as they are). Used by :func:`save` and :func:`pvqref.stream.quantize_checkpoint`,
    which never holds a whole model."""
    from . import pipeline
    reports = list(reports)
    if not reports or any(r.codes is None or r.plan is None for r in reports):
        raise ValueError("save needs the reports of quantize_model(..., keep_codes=True): "
                         "some layers carry no codes")
    specs = {r.name: layer_spec(r) for r in reports}
    tensors = {f"{r.name}.{s}": t for r in reports for s, t in layer_tensors(r.codes).items()}
    tensors.update(state)
    data = {k: _format.tensor_bytes(t) for k, t in tensors.items()}
    sums = {k: _checksum(k, specs.get(k.rpartition(".")[0]), b) for k, b in data.items()}
    config = dict(config)
    config.pop("quantization_config", None)
    dtypes = {str(t.dtype).removeprefix("torch.") for t in state.values()
              if t.is_floating_point()}
    config["quantization_config"] = {
        "quant_method": QUANT_METHOD, "format_version": FORMAT_VERSION,
        "pvqref_version": __version__, "method": reports[0].plan.method,
        "bits_per_weight": pipeline.mean_bits_per_weight(reports),
        "unquantized_dtype": "/".join(sorted(dtypes)), "layers": specs, **(info or {})}
    if activations is not None:
        config["quantization_config"]["activations"] = activations.to_dict()
    metadata = {"format": "pt", "pvqref": json.dumps(
        {"format_version": FORMAT_VERSION, "checksums": sums}, sort_keys=True)}

    def write_into(tmp: Path):
        _format.write_safetensors(tmp / WEIGHTS, tensors, data, metadata)
        (tmp / CONFIG).write_text(_config_text(config))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
    return _format.atomic_folder(Path(path), overwrite, write_into)


# -- reading --------------------------------------------------------------------------------

def read_config(path) -> tuple[dict, dict]:
    """(model config, quantization config) of a packed folder, checked: PackedModelError
    for a missing folder or config, a config that is not pvqref's, or a format version
    this reader does not know."""
    path = Path(path)
    if not path.is_dir():
        raise PackedModelError(f"{path} is not a folder (a packed model is a folder with "
                               f"{CONFIG} and {WEIGHTS})")
    try:
        config = json.loads((path / CONFIG).read_text())
    except FileNotFoundError:
        raise PackedModelError(f"{path} has no {CONFIG}") from None
    except json.JSONDecodeError as err:
        raise PackedModelError(f"{path / CONFIG} is not valid JSON: {err}") from None
    qc = config.get("quantization_config")
    if not isinstance(qc, dict) or qc.get("quant_method") != QUANT_METHOD:
        raise PackedModelError(f"{path / CONFIG} has no quantization_config with quant_method "
                               f"{QUANT_METHOD!r}: not a pvqref packed model")
    if qc.get("format_version") != FORMAT_VERSION:
        raise PackedModelError(f"packed format version {qc.get('format_version')!r} is not "
                               f"supported (this reader reads version {FORMAT_VERSION})")
    if not isinstance(qc.get("layers"), dict) or not qc["layers"]:
        raise PackedModelError(f"{path / CONFIG}: quantization_config has no layers")
    if "activations" in qc:
        activation_config(qc, path / CONFIG)
    return config, qc


def activation_config(qc: dict, where="the quantization config"):
    """The :class:`pvqref.activations.ActivationConfig` recorded in ``qc``, or None;
    PackedModelError if it is malformed."""
    from .activations import ActivationConfig
    if qc.get("activations") is None:
        return None
    try:
        return ActivationConfig.from_dict(qc["activations"])
    except (KeyError, TypeError, ValueError) as err:
        raise PackedModelError(f"{where}: the activation quantization config is invalid "
                               f"({err})") from None


def set_activations(path, activations) -> None:
    """Record ``activations`` (an ActivationConfig, or None to remove it) in the packed
    folder's config.json, atomically (a temporary file renamed over it)."""
    path = Path(path)
    config, qc = read_config(path)
    if activations is None:
        qc.pop("activations", None)
    else:
        qc["activations"] = activations.to_dict()
    _atomic_write_bytes(path / CONFIG, _config_text(config).encode())


def _config_text(config: dict) -> str:
    """config.json as written: sorted keys, two-space indent, a final newline."""
    return json.dumps(config, indent=2, sort_keys=True) + "\n"


def _header(file: Path, mm) -> tuple[dict, dict, int]:
    """(tensor entries, metadata, data start) of a safetensors file, its length checked."""
    size = len(mm)
    n = int.from_bytes(mm[:8], "little") if size >= 8 else -1
    if n < 0 or 8 + n > size:
        raise PackedModelError(f"{file} is truncated: its header does not fit in {size} bytes")
    try:
        header = json.loads(bytes(mm[8:8 + n]))
        meta = header.pop("__metadata__", {}) or {}
        end = max((h["data_offsets"][1] for h in header.values()), default=0)
    except (ValueError, KeyError, TypeError, IndexError) as err:
        raise PackedModelError(f"{file}: the header is corrupt ({err})") from None
    if 8 + n + end < size:
        raise PackedModelError(f"{file} has {size - 8 - n - end} bytes after its last tensor "
                               f"(appended to, or corrupt)")
    if 8 + n + end > size:
        raise PackedModelError(f"{file} is truncated: {8 + n + end - size} bytes of tensor "
                               f"data are missing")
    return header, meta, 8 + n


def verify_file(file, layers: dict) -> tuple[dict, int]:
    """Check a packed model's safetensors file: its length, and every tensor's CRC-32
    against the checksums in its header (covering the tensor's layer spec in ``layers``).
    Returns (the header's tensor entries, the offset where the tensor data starts);
    PackedModelError naming the first bad tensor."""
    file = Path(file)
    if not file.is_file():
        raise PackedModelError(f"{file} is missing")
    with open(file, "rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            raise PackedModelError(f"{file} is empty")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            header, meta, start = _header(file, mm)
            try:
                info = json.loads(meta["pvqref"])
                sums = info["checksums"]
            except (KeyError, ValueError, TypeError):
                raise PackedModelError(f"{file} carries no pvqref checksums in its header: "
                                       f"not written by pvqref.packed") from None
            if set(sums) != set(header):
                odd = sorted(set(sums) ^ set(header))[:3]
                raise PackedModelError(f"{file}: the checksums and the tensors do not match "
                                       f"(e.g. {odd}): corrupt header")
            for key, h in header.items():
                b, e = h["data_offsets"]
                got = _checksum(key, layers.get(key.rpartition(".")[0]), mm[start + b:start + e])
                if got != sums[key]:
                    raise PackedModelError(
                        f"tensor {key!r} fails its checksum: its bytes are corrupt, or "
                        f"config.json describes its layer differently from the writer")
    return header, start


def read(path) -> tuple[dict, dict, dict]:
    """(model config, quantization config, tensors) of a packed folder, every check of
    the module docstring done (except the match with a model's architecture: :func:`load`)."""
    from safetensors.torch import load_file
    config, qc = read_config(path)
    verify_file(Path(path) / WEIGHTS, qc["layers"])
    return config, qc, load_file(str(Path(path) / WEIGHTS))


def _llama_config(config: dict):
    from transformers import LlamaConfig
    if config.get("model_type") != "llama":
        raise PackedModelError(f"the packed model is a {config.get('model_type')!r}, not a "
                               f"LLaMA (model_type 'llama')")
    config = {k: v for k, v in config.items() if k != "quantization_config"}
    return LlamaConfig.from_dict(config)


def quantized_module(name: str, spec: dict, tensors: dict, shape, device, dtype,
                     fold_rotations: bool, shared: dict):
    """The module that replaces the (empty) linear layer ``name`` of ``shape`` (out, in)
    in the architecture: an nn.Linear with
    the decoded weight (the rotation folded back), or with ``fold_rotations=False`` a
    :class:`pvqref.quantized.QuantizedLinear` sharing one online rotation per input seed
    (``shared``: {(seed, n, device): SharedInputRotation}). ``tensors``: {suffix: tensor}."""
    from . import coherence, pipeline, quantized
    out_features, n = shape
    if list(spec["shape"]) != [out_features, n]:
        raise PackedModelError(f"layer {name}: the config says shape {spec['shape']}, the "
                               f"architecture has {[out_features, n]}")
    Q_rot = _codes.dequantize(layer_codes(name, spec, tensors), device)
    seed = spec["rotation_seed"]
    R = None if seed is None else coherence.RandomizedHadamard(n, seed)
    bias = tensors.get("bias")
    bias = None if bias is None else bias.to(device=device, dtype=dtype)
    if fold_rotations or R is None:
        new = torch.nn.Linear(n, out_features, bias=bias is not None, device="meta")
        new.weight = torch.nn.Parameter(pipeline.fold_rotation(Q_rot, R).to(dtype),
                                        requires_grad=False)
        if bias is not None:
            new.bias = torch.nn.Parameter(bias, requires_grad=False)
        return new
    rotation = shared.setdefault((seed, n, str(device)), quantized.SharedInputRotation(R))
    return quantized.QuantizedLinear(Q_rot.to(dtype), bias, rotation)


def _dtype(name) -> torch.dtype:
    dtype = getattr(torch, str(name).removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise PackedModelError(f"{name!r} is not a floating torch dtype")
    return dtype


def load(path, device=None, fold_rotations: bool = True, dtype=None, device_map=None,
         max_memory=None, activations: bool = True):
    """A LlamaForCausalLM from the packed folder ``path``, on ``device`` (default the CPU):
    every check of the module docstring, then each quantized layer decoded by
    :func:`pvqref.codes.dequantize` (indices with the Numba tier on the CPU, the torch tier
    on a GPU) and either folded back into a dense nn.Linear (``fold_rotations``, the
    default) or kept as a :class:`pvqref.quantized.QuantizedLinear` with online input
    rotations. ``dtype``: the compute dtype (default the config's). ``device_map``
    instead of ``device``: whole decoder blocks over several devices, a strategy ("auto",
    "balanced", ...; within ``max_memory``) or a {module: device} dict, as transformers'
    ``from_pretrained``; each layer is decoded on its own device (:mod:`pvqref.placement`).
    A recorded activation quantization is switched on unless ``activations=False``
    (:func:`pvqref.activations.enable`). In eval mode."""
    from accelerate import init_empty_weights
    from transformers import LlamaForCausalLM

    from . import placement
    if device is not None and device_map is not None:
        raise ValueError("give device or device_map, not both")
    config, qc, tensors = read(path)
    llama = _llama_config(config)
    dtype = _dtype(dtype or config.get("dtype") or "float32")
    with init_empty_weights(include_buffers=False):
        model = LlamaForCausalLM(llama)
    if device_map is None:
        device_map = {"": torch.device(device or "cpu")}
    else:
        model.tie_weights()
        device_map = placement.plan(model, device_map, max_memory, dtype)
    shared: dict = {}
    by_layer: dict = {}                      # {layer: {suffix: tensor}} of the quantized layers
    for key in [k for k in tensors if k.rpartition(".")[0] in qc["layers"]]:
        layer, _, suffix = key.rpartition(".")
        by_layer.setdefault(layer, {})[suffix] = tensors.pop(key)
    for name, spec in qc["layers"].items():
        try:
            linear = model.get_submodule(name)
        except AttributeError:
            linear = None
        if not isinstance(linear, torch.nn.Linear):
            raise PackedModelError(f"layer {name} of the quantization config is not a linear "
                                   f"layer of this LLaMA")
        new = quantized_module(name, spec, by_layer.get(name, {}),
                               (linear.out_features, linear.in_features),
                               placement.device_of(device_map, name), dtype, fold_rotations,
                               shared)
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent), leaf, new)
    needed = {k for k, v in model.state_dict().items() if v.device.type == "meta"}
    if llama.tie_word_embeddings:
        needed.discard("lm_head.weight")
    missing, unexpected = sorted(needed - set(tensors)), sorted(set(tensors) - needed)
    if missing or unexpected:
        raise PackedModelError(f"{Path(path) / WEIGHTS}: " + "; ".join(
            p for p in (missing and f"tensor(s) missing: {missing[:4]}",
                        unexpected and f"unexpected tensor(s): {unexpected[:4]}") if p))
    state = {k: (v.to(dtype) if v.is_floating_point() else v).to(
        placement.device_of(device_map, k)) for k, v in tensors.items()}
    model.load_state_dict(state, strict=False, assign=True)
    if llama.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model = placement.dispatch(model, device_map)
    model.config.quantization_config = qc
    act = activation_config(qc)
    if act is not None and activations:
        from . import activations as _activations
        _activations.enable(model, act)
    return model.eval()


def inspect(path) -> dict:
    """Where a packed model's bytes go: per kind of data (indices, gain codes, row norms,
    side data of scalar methods, unquantized tensors, the file header), bytes on disk and
    bits per quantized weight, next to the rate the format claims; the folder's size
    against the same model in fp16. Verifies the file first."""
    config, qc = read_config(path)
    file = Path(path) / WEIGHTS
    header, start = verify_file(file, qc["layers"])
    kinds = {"indices": "indices", "gain_codes": "gain codes", "norm_codes": "row norms",
             "norm_range": "side data", "codes": "indices", "scales": "side data",
             "zeros": "side data", "row_group": "side data",
             "codebook": "side data"}
    by_kind = {k: 0 for k in ("indices", "gain codes", "row norms", "side data")}
    unquantized = unquantized_params = 0
    for key, h in header.items():
        layer, _, suffix = key.rpartition(".")
        size = h["data_offsets"][1] - h["data_offsets"][0]
        if layer in qc["layers"]:
            by_kind[kinds[re.sub(r"^[gs]\d+_", "", suffix)]] += size  # groups, stages
        else:
            unquantized += size
            unquantized_params += int(np.prod(h["shape"]))
    weights = sum(s["shape"][0] * s["shape"][1] for s in qc["layers"].values())
    folder = sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file())
    quantized_bytes = sum(by_kind.values())
    return {"quantized_weights": weights,
            "bits_per_weight_claimed": qc["bits_per_weight"],
            "bits_per_weight_on_disk": 8 * quantized_bytes / weights,
            "bytes_by_kind": by_kind,
            "bits_per_weight_by_kind": {k: 8 * v / weights for k, v in by_kind.items()},
            "quantized_bytes": quantized_bytes, "unquantized_bytes": unquantized,
            "header_bytes": start, "folder_bytes": folder,
            "fp16_model_bytes": 2 * (weights + unquantized_params)}

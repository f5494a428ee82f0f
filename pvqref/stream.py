"""Quantize a LLaMA checkpoint block by block, straight from its (sharded) safetensors.

:func:`pvqref.pipeline.quantize_model` takes a model in memory. For a checkpoint larger
than memory, :func:`quantize_checkpoint` never builds the whole model: it makes the
architecture with empty (meta) weights, reads the embedding, and then, for each decoder
block in order, reads that block's tensors from the checkpoint files (through their
index, ``model.safetensors.index.json``, when the checkpoint is sharded), quantizes it
with the same block step as the in-memory quantizer (:func:`pvqref.pipeline.quantize_block`),
runs the calibration activations through it, keeps its codes and its small unquantized
tensors (norms), and empties it again. Peak memory is the embedding, one decoder block in
fp32, the calibration activations and the codes so far, not the model.

The result is written with :func:`pvqref.packed.write` into the same packed folder as an
in-memory quantization gives: for the same checkpoint, method and seed, the two paths
store the same codes (tested).

Limits: ``rotation="residual"`` rotates the embedding, every block and the head together,
so it needs the whole model (use ``quantize_model``); tensors are read in fp32.

Chapter: Quantizing a real LLaMA model (book/llama.ipynb).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from . import _checks, packed, pipeline
from .hessian import calibration

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


class Checkpoint:
    """The tensors of a checkpoint folder, read one at a time from its safetensors files
    (sharded with an index, or a single file). ``names``: every tensor name."""

    def __init__(self, folder):
        from safetensors import safe_open
        self.folder = Path(folder)
        if (self.folder / INDEX).is_file():
            weight_map = json.loads((self.folder / INDEX).read_text())["weight_map"]
        elif (self.folder / SINGLE).is_file():
            with safe_open(self.folder / SINGLE, "pt") as f:
                weight_map = {k: SINGLE for k in f.keys()}
        else:
            raise FileNotFoundError(f"{self.folder} has neither {INDEX} nor {SINGLE}")
        self.weight_map = weight_map
        self.names = sorted(weight_map)

    def get(self, name: str) -> torch.Tensor:
        """One tensor, as stored. Its file is opened for this read only, so that the
        memory map of a shard never stays resident beyond the tensor itself."""
        from safetensors import safe_open
        if name not in self.weight_map:
            raise KeyError(f"the checkpoint has no tensor {name!r}")
        path = self.folder / self.weight_map[name]
        if not path.is_file():
            raise FileNotFoundError(f"shard {path.name} named by {INDEX} is missing")
        with safe_open(path, "pt") as f:
            return f.get_tensor(name).clone()


def _materialize(module, prefix: str, ckpt: Checkpoint, device, dtype) -> dict:
    """Load every parameter of ``module`` (named ``prefix`` + its own name) from the
    checkpoint, in place; returns {full name: tensor}."""
    loaded = {}
    for name, _ in list(module.named_parameters()):
        full = prefix + name
        value = ckpt.get(full).to(device=device, dtype=dtype)
        owner, _, leaf = name.rpartition(".")
        target = module.get_submodule(owner) if owner else module
        setattr(target, leaf, torch.nn.Parameter(value, requires_grad=False))
        loaded[full] = value
    return loaded


def _fixed_mmap_threshold(threshold: int = 128 * 1024) -> None:
    """Ask glibc to serve every allocation above ``threshold`` bytes by its own mmap, and
    so return it to the system when freed. By default glibc raises that threshold to the
    size of the largest block freed so far, after which a block's float64 copies come
    from the heap and its freed memory stays in the process: measured on a 135M LLaMA,
    the resident memory of the streamed quantizer grew by 28 MB per block (1.46 GB at the
    end) with the default and by 3.6 MB per block, its codes, with the threshold fixed
    (0.64 GB). A no-op where the C library is not glibc."""
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, threshold)                # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def quantize_checkpoint(folder, method: str, bpw: float, calibration_windows=None,
                        seed: int = 0, group: int = 128, L: int = pipeline.DEFAULT_L,
                        gain_bits: int = pipeline.DEFAULT_GAIN_BITS, rotation="input",
                        device="cpu", progress=None):
    """Quantize the LLaMA checkpoint ``folder`` block by block (see the module docstring)
    with the arguments of :func:`pvqref.pipeline.quantize_model`. Returns ``(config,
    reports, state)``: the model's config as a dict, one LayerReport per layer with its
    codes already packed (a :class:`pvqref.packed_layer.PackedLayer`), and the unquantized
    tensors (embedding, norms, an untied head) in fp32 on the
    CPU, ready for :func:`pvqref.packed.write`."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, LlamaForCausalLM
    _checks.choice(method, "method", pipeline.METHODS)
    if rotation == "residual":
        raise ValueError("rotation='residual' rotates the whole model at once: use "
                         "pipeline.quantize_model on a model in memory")
    if rotation is not None:
        _checks.choice(rotation, "rotation", ("input",))
    needs_h = method in pipeline.HESSIAN_METHODS
    if needs_h and calibration_windows is None:
        raise ValueError(f"method {method!r} needs calibration windows")
    config = AutoConfig.from_pretrained(folder)
    if config.model_type != "llama":
        raise ValueError(f"{folder} holds a {config.model_type!r} model, not a LLaMA")
    ckpt = Checkpoint(folder)
    _fixed_mmap_threshold()
    with init_empty_weights(include_buffers=False):
        model = LlamaForCausalLM(config)
    model.eval()
    fp32 = torch.float32
    state = {}
    state.update(_materialize(model.model.embed_tokens, "model.embed_tokens.", ckpt, device,
                              fp32))
    settings = pipeline.BlockSettings(method, bpw, seed, group, L, gain_bits, rotation,
                                      True, True)
    reports: list = []
    inputs = calibration.first_block_inputs(model, calibration_windows) if needs_h else None
    for b, layer in enumerate(model.model.layers):
        prefix = f"model.layers.{b}."
        _materialize(layer, prefix, ckpt, device, fp32)
        done = len(reports)
        inputs = pipeline.quantize_block(layer, b, inputs, settings, reports)
        reports[done:] = [dataclasses.replace(r, codes=packed.pack_layer(r.codes))
                          for r in reports[done:]]          # keep bpw / 8 bytes per weight
        quantized = {r.name for r in reports}
        for name, value in layer.named_parameters():
            if (prefix + name).rpartition(".")[0] not in quantized:
                state[prefix + name] = value.detach().cpu().clone()
        layer.to_empty(device="meta")       # give the block's memory back
        if progress is not None:
            progress(b, reports)
    state.update(_materialize(model.model.norm, "model.norm.", ckpt, "cpu", fp32))
    if not config.tie_word_embeddings:
        state.update(_materialize(model.lm_head, "lm_head.", ckpt, "cpu", fp32))
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    out = config.to_dict()
    out["dtype"] = "float32"
    return out, reports, state

"""Placing a packed model's blocks over several devices with accelerate's ``device_map``.

A model too large for one GPU (a 70B LLaMA in fp16 is about 140 GB even after its weights
were decoded from 3.25 bits) is split by whole decoder blocks over the devices, the
convention transformers itself uses (``from_pretrained(..., device_map="auto")``): a
device map {module prefix: device} says where each block lives, and accelerate's
``dispatch_model`` adds the hooks that move the hidden states from one device to the next.
pvqref builds no scheduler of its own; this module only

- plans the map on the empty (meta) model *before* anything is decoded, with the layers
  still dense nn.Linear in the compute dtype, so that the plan counts the memory the decoded
  model will really take (:func:`plan`);
- tells the loader on which device to decode each quantized layer and put each stored
  tensor (:func:`device_of`), so that no block ever passes through another device;
- dispatches the loaded model (:func:`dispatch`).

Only whole decoder blocks are placed (``LlamaDecoderLayer`` is never split). Without a GPU
every plan is the CPU; the multi-device path is tested here with explicit maps onto the
CPU (what runs is the same accelerate code, without the transfers).

Chapter: Quantizing a real LLaMA model (book/llama.ipynb).
"""

from __future__ import annotations

import torch

STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
NO_SPLIT = ["LlamaDecoderLayer"]


def plan(model, device_map, max_memory=None, dtype=None) -> dict:
    """The device map {module prefix: device} for the empty model ``model``: ``device_map``
    a strategy name (``STRATEGIES``, as transformers') planned by accelerate over
    ``max_memory`` (default: what accelerate finds free on each device), or a dict given by
    the caller, which is checked to place every parameter and buffer of the model.
    Chapter: Quantizing a real LLaMA model (book/llama.ipynb)."""
    from accelerate.utils import get_balanced_memory, infer_auto_device_map
    if isinstance(device_map, str):
        if device_map not in STRATEGIES:
            raise ValueError(f"device_map must be a dict or one of {STRATEGIES}, got "
                             f"{device_map!r}")
        if device_map != "sequential":
            max_memory = get_balanced_memory(model, max_memory=max_memory, dtype=dtype,
                                             no_split_module_classes=NO_SPLIT,
                                             low_zero=device_map == "balanced_low_0")
        return dict(infer_auto_device_map(model, max_memory=max_memory, dtype=dtype,
                                          no_split_module_classes=NO_SPLIT))
    if not isinstance(device_map, dict) or not device_map:
        raise TypeError(f"device_map must be a non-empty dict or a strategy name, got "
                        f"{type(device_map).__name__}")
    names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    unplaced = [n for n in names if device_of(device_map, n) is None]
    if unplaced:
        raise ValueError(f"device_map places no module holding {unplaced[0]} "
                         f"({len(unplaced)} tensor(s) unplaced)")
    return dict(device_map)


def device_of(device_map: dict, name: str):
    """The device of the module or tensor ``name`` under ``device_map``: the entry of its
    longest prefix ("" places everything), as a torch.device; None if no entry covers it.
    "disk" (accelerate's offload) is refused: a packed model is decoded in memory."""
    best = None
    for prefix in device_map:
        if prefix == "" or name == prefix or name.startswith(prefix + "."):
            if best is None or len(prefix) > len(best):
                best = prefix
    if best is None:
        return None
    device = device_map[best]
    if device == "disk":
        raise ValueError(f"device_map puts {best or 'the model'} on 'disk': offloading is "
                         f"not supported for packed models (decode needs the memory)")
    return torch.device(f"cuda:{device}" if isinstance(device, int) else device)


def dispatch(model, device_map: dict):
    """``model`` with accelerate's hooks moving activations between the devices of
    ``device_map`` (on one device: just moved there)."""
    from accelerate import dispatch_model
    devices = {str(device_of(device_map, k)) for k in device_map}
    if len(devices) == 1:
        return model.to(devices.pop())
    return dispatch_model(model, device_map=device_map)

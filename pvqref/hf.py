"""transformers integration: ``AutoModelForCausalLM.from_pretrained(folder)`` for a packed model.

transformers (5.x) lets a library register a quantization method by name:
``register_quantization_config("pvq")`` maps the ``quantization_config`` of a checkpoint's
config.json to ``PVQQuantizationConfig``, and ``register_quantizer("pvq")`` maps it to
``PVQHfQuantizer``, which ``from_pretrained`` then drives:

1. before the weights load, it verifies the checkpoint files (length, per-tensor CRC-32:
   :func:`pvqref.packed.verify_file`) and replaces every quantized nn.Linear of the empty
   model by a ``PackedLinear``, whose buffers have the names, dtypes and shapes of
   the layer's stored integer tensors, so that transformers' own loader fills them;
2. after loading, each PackedLinear is decoded by the same function as
   :func:`pvqref.packed.load` (:func:`pvqref.packed.quantized_module`) into a dense
   nn.Linear: both ways give the same weights and the same logits.

``import pvqref`` does not import transformers (it takes seconds); it installs an import
hook (:func:`install`) that registers pvq when ``transformers.quantizers.auto`` is
imported, so that ``import pvqref`` then ``from_pretrained`` works in either order.

Chapter: Quantizing a real LLaMA model (book/llama.ipynb).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import warnings

AUTO_MODULE = "transformers.quantizers.auto"
_registered = False


def register() -> None:
    """Register the "pvq" quantization config and quantizer with transformers (once)."""
    global _registered
    if _registered:
        return
    from transformers.quantizers.auto import (AUTO_QUANTIZATION_CONFIG_MAPPING,
                                              AUTO_QUANTIZER_MAPPING, register_quantization_config,
                                              register_quantizer)
    from . import packed
    config_cls, quantizer_cls = _classes()
    if packed.QUANT_METHOD not in AUTO_QUANTIZATION_CONFIG_MAPPING:
        register_quantization_config(packed.QUANT_METHOD)(config_cls)
    if packed.QUANT_METHOD not in AUTO_QUANTIZER_MAPPING:
        register_quantizer(packed.QUANT_METHOD)(quantizer_cls)
    _registered = True


def _classes():
    """The config and quantizer classes (defined on first use: they import transformers)."""
    import torch
    from transformers.quantizers.base import HfQuantizer
    from transformers.utils.quantization_config import QuantizationConfigMixin

    from . import packed

    class PVQQuantizationConfig(QuantizationConfigMixin):
        """The ``quantization_config`` of a packed model (every field of config.json kept)."""

        def __init__(self, **fields):
            self.__dict__.update(fields)
            self.quant_method = packed.QUANT_METHOD
            if fields.get("format_version") != packed.FORMAT_VERSION:
                raise packed.PackedModelError(
                    f"packed format version {fields.get('format_version')!r} is not supported "
                    f"(this reader reads version {packed.FORMAT_VERSION})")

        def to_dict(self):
            return dict(self.__dict__)

    class PVQHfQuantizer(HfQuantizer):
        """Loads a pvqref packed model in ``from_pretrained`` (see the module docstring)."""
        requires_calibration = True

        def _process_model_before_weight_loading(self, model, checkpoint_files=None,
                                                 **kwargs):
            layers = self.quantization_config.layers
            for file in checkpoint_files or ():
                packed.verify_file(file, layers)
            for name, spec in layers.items():
                parent, _, leaf = name.rpartition(".")
                with torch.device("meta"):
                    setattr(model.get_submodule(parent), leaf, PackedLinear(name, spec))
            return model

        def _process_model_after_weight_loading(self, model, **kwargs):
            dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
            for name, spec in self.quantization_config.layers.items():
                module = model.get_submodule(name)
                tensors = dict(module.named_buffers())
                if any(t.device.type == "meta" for t in tensors.values()):
                    raise packed.PackedModelError(f"layer {name}: a stored tensor was not "
                                                  f"loaded (missing from the checkpoint)")
                device = next(iter(tensors.values())).device
                new = packed.quantized_module(name, spec, tensors, module.shape, device,
                                              dtype, True, {})
                parent, _, leaf = name.rpartition(".")
                setattr(model.get_submodule(parent), leaf, new)
            act = packed.activation_config(self.quantization_config.to_dict())
            if act is not None:
                from . import activations
                activations.enable(model, act)
            return model

        def is_serializable(self):
            return False            # write packed models with pvqref.packed.save

        @property
        def is_trainable(self):
            return False

    class PackedLinear(torch.nn.Module):
        """Placeholder of a quantized layer while transformers loads its integer tensors
        into the buffers (then decoded: it never runs)."""

        def __init__(self, name, spec):
            super().__init__()
            dtypes = {"U8": torch.uint8, "I16": torch.int16, "I32": torch.int32}
            for suffix, (dtype, shape) in packed.expected_tensors(spec).items():
                self.register_buffer(suffix, torch.empty(shape, dtype=dtypes[dtype]))
            self.shape = tuple(spec["shape"])          # (out, in)
            self.name = name

        def forward(self, x):
            raise RuntimeError(f"layer {self.name} was not decoded after loading")

    return PVQQuantizationConfig, PVQHfQuantizer


class _RegisterOnImport(importlib.abc.MetaPathFinder):
    """Finds ``transformers.quantizers.auto`` through the other finders and registers pvq
    right after that module has executed."""

    def find_spec(self, fullname, path, target=None):
        if fullname != AUTO_MODULE:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_register(module):
            exec_module(module)
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            try:
                register()
            except Exception as err:        # never break importing transformers itself
                warnings.warn(f"pvqref could not register its 'pvq' quantizer with "
                              f"transformers ({type(err).__name__}: {err}); "
                              f"pvqref.load_quantized still works", stacklevel=2)
        spec.loader.exec_module = exec_and_register
        return spec


def install() -> None:
    """Register pvq now if transformers' quantizer registry is loaded, else when it is."""
    if AUTO_MODULE in sys.modules:
        register()
    elif not any(isinstance(f, _RegisterOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterOnImport())

"""pvqref: Pyramid Vector Quantization (PVQ) of LLM weights, and RSAVQ's refinements.

Design, in a dozen lines
------------------------
Modules in reading order, one idea and one chapter each (data flows one way: model ->
calibration -> rotation -> quantize -> pack -> reload -> evaluate):

- ``pvqref.data``       the real model (SmolLM2-135M-Instruct) and text, offline
- ``pvqref.coherence``  randomized Hadamard rotations (spherical coherence processing)
- ``pvqref.pyramid``    the pyramid lattice: count, encode/decode, search, bit packing
- ``pvqref.gain``       Beta-law gain quantization and the complete PVQ group quantizer
- ``pvqref.baselines``  what the book compares against: RTN, Lloyd-Max, the Gaussian bound
- ``pvqref.format``     byte formats: versioned, checksummed, exact bit accounting
- ``pvqref.bench``      benchmark measurements and their recorded runs (rendered by chapters)

Tiers: an algorithm with several tiers is a package holding ``reference.py`` (the oracle,
NumPy only), ``_numba.py`` and ``_torch.py`` with the same function names; its
``__init__`` checks inputs once and dispatches with ``pvqref._tiers.resolve(backend)``
(``"auto"``: torch for tensors, numba for arrays). Input checks come from
``pvqref._checks`` (wrong type: TypeError; bad value: ValueError). A new module takes
the next place in the list above, copies this shape, and its chapter imports it.

Modules are imported on demand (``from pvqref import pyramid``), so ``import pvqref``
stays cheap and does not load torch or transformers.
"""

__version__ = "0.1.0"


def load_quantized(path, device=None, fold_rotations: bool = True, dtype=None,
                   device_map=None, max_memory=None):
    """A LlamaForCausalLM from a packed model folder: :func:`pvqref.packed.load`."""
    from . import packed
    return packed.load(path, device, fold_rotations, dtype, device_map, max_memory)


def _install_transformers_hook():
    from . import hf
    hf.install()


_install_transformers_hook()

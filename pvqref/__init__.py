"""pvqref: Pyramid Vector Quantization (PVQ) of LLM weights, and RSAVQ's refinements.

One module per idea, in reading order (each backs one chapter of the book):

- ``pvqref.data``       the real model (SmolLM2-135M-Instruct) and text, offline
- ``pvqref.coherence``  randomized Hadamard rotations (spherical coherence processing)
- ``pvqref.pyramid``    the pyramid lattice: count, encode/decode, search, bit packing
- ``pvqref.gain``       Beta-law gain quantization and the complete PVQ group quantizer

Modules are imported on demand (``from pvqref import pyramid``), so ``import pvqref``
stays cheap and does not load torch or transformers.
"""

__version__ = "0.1.0"

"""Spherical coherence processing: seeded randomized Hadamard rotations of LLM weights.

PVQ codes a weight group as a gain times a point of the pyramid, and its codebook is
best when group directions are spread evenly over the sphere. A random orthogonal
rotation of a layer's input and output spaces does that (and removes outliers) while
leaving the network's function unchanged, provided the activations are rotated to
match. Following QuIP# and QuaRot we use the randomized Hadamard transform
``x -> H S x`` (S: random signs, H: orthonormal Hadamard matrix): in practice it
scrambles as well as a dense random rotation, costs O(n log n) instead of O(n^2), and
is reproduced exactly from ``(n, seed)``. Chapter: Spherical coherence processing
(book/coherence.ipynb).

Contents, in reading order, and the file that holds each part:

- ``constructions.py``: Hadamard matrices of order ``n = k * 2^m`` (Sylvester for 2^m;
  Paley I and II over GF(p^e) for the small factor k): :func:`hadamard` (dense,
  n <= MAX_DENSE_ORDER), :func:`construction`, :func:`construction_table`,
  :func:`is_supported`, :func:`supported_sizes`, :func:`base_orders`. NumPy only.
- ``transform.py``: the fast transform ``x -> H x`` along any axis,
  :func:`hadamard_transform`, with its input and result checks and the dispatch to
  three tiers with the same function names, ``backend="auto"|"reference"|"numba"|"torch"``
  (see ``pvqref._tiers``):
  ``reference.py`` (the textbook algorithm in NumPy; imports neither Numba nor torch),
  ``_numba.py`` (jitted, CPU), ``_torch.py`` (tensors on any device; no Numba).
- ``rotations.py``: :class:`RandomizedHadamard` and the explicit fallback
  :class:`RandomOrthogonal` (:func:`random_orthogonal`), chosen by the caller through
  :func:`make_rotation`; both serialize to a small JSON-able dict
  (:func:`rotation_from_dict`).
- ``layers.py``: rotating linear layers: :func:`rotate_weight`, :func:`unrotate_weight`,
  :func:`rotate_linear`, :class:`RotatedLinear`; a whole LLaMA decoder block with its
  RMSNorm weights folded (QuaRot-style): :func:`rotate_llama_block`,
  :class:`RotatedResidualBlock`; a whole model's residual stream:
  :func:`rotate_llama_model`.
- ``stats.py``: statistics for the chapter: :func:`incoherence`,
  :func:`excess_kurtosis`, :func:`sphere_coordinates`, :func:`beta_law_ks`.
"""

from __future__ import annotations

from .._tiers import BACKENDS
from ._torch import TORCH_RADIX
from .constructions import (MAX_BASE_ORDER, MAX_DENSE_ORDER, MAX_ORDER, base_orders,
                            construction, construction_table, hadamard, is_supported,
                            paley1, paley2, quadratic_character, supported_sizes, sylvester)
from .layers import (OnlineRotation, RotatedLinear, RotatedResidualBlock, rotate_linear,
                     rotate_llama_block, rotate_llama_model, rotate_weight,
                     unrotate_weight)
from .rotations import (RandomizedHadamard, RandomOrthogonal, make_rotation,
                        random_orthogonal, random_signs, rotation_from_dict)
from .stats import beta_law_ks, excess_kurtosis, incoherence, sphere_coordinates
from .transform import hadamard_transform

__all__ = [
    "BACKENDS", "MAX_BASE_ORDER", "MAX_DENSE_ORDER", "MAX_ORDER", "TORCH_RADIX",
    "quadratic_character", "paley1", "paley2", "sylvester", "base_orders", "is_supported",
    "supported_sizes", "construction", "construction_table", "hadamard",
    "hadamard_transform",
    "random_signs", "RandomizedHadamard", "RandomOrthogonal", "random_orthogonal",
    "make_rotation", "rotation_from_dict",
    "rotate_weight", "unrotate_weight", "rotate_linear", "OnlineRotation", "RotatedLinear",
    "rotate_llama_block", "rotate_llama_model", "RotatedResidualBlock",
    "incoherence", "excess_kurtosis", "sphere_coordinates", "beta_law_ks",
]

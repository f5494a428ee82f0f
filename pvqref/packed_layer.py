"""One quantized layer in a packed model: its spec in config.json, its integer tensors,
and its codes back from them (the layer-level half of :mod:`pvqref.packed`).

A layer's spec is its method, shape, rotation seed and format fields; its tensors are
named ``<layer>.<suffix>``::

    PVQ:        indices, gain_codes, norm_codes (U8, bit-packed), norm_range (I32)
    scalar:     codes (U8, bit-packed), scales, zeros (I16: fp16 bits)
    row groups: row_group (U8, bit-packed: each row's group, ceil(log2 G) bits; a group
                holds its rows in increasing order) and each group's
                PVQ tensors as g<i>_indices, g<i>_gain_codes, ... (RSAVQ's WCSG: each
                group of output channels is a PVQ matrix of its own rate; the spec's
                "row_groups" lists each group's row count and format fields)

so a layer's tensors hold exactly the bits its format accounts, rounded up to whole bytes
per tensor. Every check names the tensor that fails it (:class:`PackedModelError`).

Chapter: Quantizing a real LLaMA model (book/llama.ipynb).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import codes as _codes, format as _format

PVQ_TENSORS = ("indices", "gain_codes", "norm_codes", "norm_range")
SCALAR_TENSORS = ("codes", "scales", "zeros")
PVQ_FIELDS = ("L", "K", "gain_bits", "gain_kind", "gain_target", "norm_bits")
DTYPES = {"U8": torch.uint8, "I16": torch.int16, "I32": torch.int32}


class PackedModelError(ValueError):
    """A packed model folder that cannot be read as written: what is wrong, and where."""


@dataclass(frozen=True)
class PackedLayer:
    """A layer's codes already turned into its stored tensors (``fields``: the format part
    of its spec), which hold bpw / 8 bytes per weight instead of the unpacked codes: what
    the streamed quantizer keeps of each block. Chapter: Quantizing a real LLaMA model
    (book/llama.ipynb)."""
    fields: dict
    tensors: dict


def format_fields(c) -> dict:
    """The format part of a layer's spec, from its codes (or a PackedLayer)."""
    if isinstance(c, PackedLayer):
        return c.fields
    if isinstance(c, _codes.RowGroupCodes):
        return {"row_groups": [{"rows": len(r), **format_fields(p)}
                               for r, p in zip(c.rows, c.parts)]}
    if isinstance(c, _codes.ScalarCodes):
        return {"bits": c.bits, "group": c.group, "layout": c.layout}
    if _is_vq_codes(c):
        return {"v": c.v, "index_bits": list(c.index_bits)}
    return {f: getattr(c.config, f) for f in PVQ_FIELDS}


def pack_layer(c) -> PackedLayer:
    """The PackedLayer of a layer's codes (a QuantizedMatrix or a ScalarCodes)."""
    return PackedLayer(format_fields(c), layer_tensors(c))


def layer_spec(report) -> dict:
    """The JSON spec of one quantized layer (a :class:`pvqref.pipeline.LayerReport` with
    its plan and codes): method, shape, rotation seed and format fields."""
    return {"method": report.plan.method, "shape": [int(v) for v in report.shape],
            "rotation_seed": report.plan.rotation_seed, **format_fields(report.codes)}


def _is_pvq(spec: dict) -> bool:
    return "L" in spec


def _pvq_config(spec: dict):
    from . import gain
    return gain.PVQConfig(*(spec[f] for f in PVQ_FIELDS))


def _group_specs(spec: dict) -> list:
    """The spec of each row group of a row-group layer (shape [rows, n])."""
    n = spec["shape"][1]
    return [{"shape": [g["rows"], n], **{k: v for k, v in g.items() if k != "rows"}}
            for g in spec["row_groups"]]


def expected_tensors(spec: dict) -> dict:
    """{suffix: (safetensors dtype, shape)} of the tensors a layer of ``spec`` stores."""
    m, n = spec["shape"]
    if "row_groups" in spec:
        out = {"row_group": ("U8", [-(-m * label_bits(len(spec["row_groups"])) // 8)])}
        for i, sub in enumerate(_group_specs(spec)):
            out.update({f"g{i}_{k}": v for k, v in expected_tensors(sub).items()})
        return out
    if "index_bits" in spec:
        out = {}
        for i, k in enumerate(spec["index_bits"]):
            out[f"s{i}_codebook"] = ("I16", [2 ** k, spec["v"]])
            out[f"s{i}_indices"] = ("U8", [-(-n * (m // spec["v"]) * k // 8)])
        return out
    if _is_pvq(spec):
        cfg = _pvq_config(spec)
        G = m * n // cfg.L
        out = {"indices": ("U8", [-(-G * cfg.index_bits // 8)]),
               "gain_codes": ("U8", [-(-G * cfg.gain_bits // 8)]),
               "norm_codes": ("U8", [-(-m * cfg.norm_bits // 8)])}
        if cfg.norm_bits < _format.FP16_NORMS:
            out["norm_range"] = ("I32", [2])
        return out
    grid = _codes.scalar_grid_shape((m, n), spec["group"], spec["layout"])
    return {"codes": ("U8", [-(-m * n * spec["bits"] // 8)]), "scales": ("I16", list(grid)),
            "zeros": ("I16", list(grid))}


def _u8(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else \
        torch.zeros(0, dtype=torch.uint8)


def layer_tensors(c) -> dict:
    """{suffix: integer tensor} of one layer's codes (see the module docstring)."""
    from . import pyramid
    if isinstance(c, PackedLayer):
        return c.tensors
    if isinstance(c, _codes.RowGroupCodes):
        labels = np.zeros(c.shape[0], np.int64)
        for i, rows in enumerate(c.rows):
            labels[rows] = i
        out = {"row_group": _u8(_format.pack_uints(labels, label_bits(len(c.rows))))}
        for i, part in enumerate(c.parts):
            out.update({f"g{i}_{k}": v for k, v in layer_tensors(part).items()})
        return out
    if _is_vq_codes(c):
        out = {}
        for i, (book, idx) in enumerate(zip(c.codebooks, c.indices)):
            out[f"s{i}_codebook"] = torch.from_numpy(book.astype(np.float16).view(np.int16).copy())
            out[f"s{i}_indices"] = _u8(_format.pack_uints(idx.reshape(-1), c.index_bits[i]))
        return out
    if isinstance(c, _codes.ScalarCodes):
        return {"codes": _u8(_format.pack_uints(c.codes.reshape(-1), c.bits)),
                "scales": torch.from_numpy(c.scale.view(np.int16).copy()),
                "zeros": torch.from_numpy(c.zero.view(np.int16).copy())}
    cfg = c.config
    norms = c.row_norms.view(np.uint16) if cfg.norm_bits == _format.FP16_NORMS else c.row_norms
    out = {"indices": _u8(pyramid.pack_indices(c.indices, cfg.L, cfg.K)),
           "gain_codes": _u8(_format.pack_uints(c.gain_codes, cfg.gain_bits)),
           "norm_codes": _u8(_format.pack_uints(norms, cfg.norm_bits))}
    if cfg.norm_bits < _format.FP16_NORMS:
        out["norm_range"] = torch.from_numpy(c.norm_range.astype(np.float32).view(np.int32))
    return out


def layer_codes(name: str, spec: dict, tensors: dict):
    """The codes of layer ``name`` from its tensors ({suffix: tensor}), checked against
    ``spec``: PackedModelError naming the tensor for a missing one, a wrong dtype or
    shape, or values the format cannot hold."""
    from . import gain, pyramid
    want = expected_tensors(spec)
    dtypes = DTYPES
    for suffix, (dtype, shape) in want.items():
        key = f"{name}.{suffix}"
        if suffix not in tensors:
            raise PackedModelError(f"tensor {key!r} is missing (layer {name} stores "
                                   f"{', '.join(want)})")
        t = tensors[suffix]
        if t.dtype != dtypes[dtype] or list(t.shape) != shape:
            raise PackedModelError(f"tensor {key!r} is {t.dtype} {list(t.shape)}, but its "
                                   f"layer's spec needs {dtype} {shape}")
    if "row_groups" in spec:
        return _row_group_codes(name, spec, tensors)
    raw = {s: tensors[s].contiguous().cpu().numpy() for s in want}
    m, n = spec["shape"]
    try:
        if "index_bits" in spec:
            from .vq import VQCodes
            v = spec["v"]
            books = tuple(raw[f"s{i}_codebook"].view(np.float16)
                          for i in range(len(spec["index_bits"])))
            idx = tuple(_format.unpack_uints(raw[f"s{i}_indices"].tobytes(), n * (m // v), k)
                        .astype(np.int64).reshape(n, m // v)
                        for i, k in enumerate(spec["index_bits"]))
            c = VQCodes((m, n), v, books, idx)
        elif not _is_pvq(spec):
            grid = want["scales"][1]
            q = _format.unpack_uints(raw["codes"].tobytes(), m * n, spec["bits"])
            c = _codes.ScalarCodes((m, n), spec["bits"], spec["group"], spec["layout"],
                                   q.astype(np.uint8).reshape(m, n),
                                   raw["scales"].view(np.float16).reshape(grid),
                                   raw["zeros"].view(np.float16).reshape(grid))
        else:
            cfg = _pvq_config(spec)
            G = m * n // cfg.L
            limbs = pyramid.unpack_indices(raw["indices"].tobytes(), G, cfg.L, cfg.K)
            g = _format.unpack_uints(raw["gain_codes"].tobytes(), G, cfg.gain_bits)
            r = _format.unpack_uints(raw["norm_codes"].tobytes(), m, cfg.norm_bits)
            r = r.astype(np.uint16)
            fp16 = cfg.norm_bits == _format.FP16_NORMS
            c = gain.QuantizedMatrix(
                (m, n), cfg, r.view(np.float16) if fp16 else r, limbs, g.astype(np.uint16),
                np.zeros(0, np.float32) if fp16 else raw["norm_range"].view(np.float32))
        c.validate()
    except ValueError as err:
        raise PackedModelError(f"layer {name}: {err}") from None
    return c




def label_bits(groups: int) -> int:
    """Bits of one row's group label: ceil(log2 groups) (0 for one group)."""
    return int(groups - 1).bit_length()


def _is_vq_codes(c) -> bool:
    from .vq import VQCodes
    return isinstance(c, VQCodes)


def _row_group_codes(name: str, spec: dict, tensors: dict):
    """The RowGroupCodes of a row-group layer (its tensors already checked for shape)."""
    m, G = spec["shape"][0], len(spec["row_groups"])
    try:
        labels = _format.unpack_uints(tensors["row_group"].cpu().numpy().tobytes(), m,
                                      label_bits(G))
    except ValueError as err:
        raise PackedModelError(f"tensor {name}.row_group: {err}") from None
    rows = tuple(np.flatnonzero(labels == i) for i in range(G))
    if [len(r) for r in rows] != [g["rows"] for g in spec["row_groups"]]:
        raise PackedModelError(f"tensor {name}.row_group: its group sizes "
                               f"{[len(r) for r in rows]} are not the spec's "
                               f"{[g['rows'] for g in spec['row_groups']]}")
    parts = []
    for i, sub in enumerate(_group_specs(spec)):
        prefix = f"g{i}_"
        parts.append(layer_codes(f"{name}.{prefix[:-1]}", sub,
                                 {k[len(prefix):]: v for k, v in tensors.items()
                                  if k.startswith(prefix)}))
    c = _codes.RowGroupCodes(tuple(spec["shape"]), rows, tuple(parts))
    try:
        c.validate()
    except ValueError as err:
        raise PackedModelError(f"layer {name}: {err} (tensor {name}.row_group)") from None
    return c

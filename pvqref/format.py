"""The byte format of a PVQ-quantized matrix: what a file stores, bit for bit.

One matrix of shape (m, n), quantized with a :class:`pvqref.gain.PVQConfig` (group size L,
pulses K, gain bits, norm bits), is one little-endian bit stream, zero-padded to a whole
byte and sealed with a checksum::

    field           bits                     what
    version         8                        FORMAT_VERSION (version 1 had no header)
    norm range      64 (log-grid norms only) lo, hi as fp32: the row-norm grid's ends
    indices         G * bits(L, K)           the pyramid index of every group, row-major
    gain codes      G * gain_bits            the nearest gain level of every group
    row norms       m * norm_bits            fp16 values (norm_bits = 16) or log-grid codes
    padding         0..7                     zeros, to a whole byte
    checksum        32                       CRC-32 of the schema, then of all the above

with G = m n / L groups. Every field is written least significant bit first. The schema
(format name, version, shape and every field of the config, as canonical JSON text) is not
stored: like a file's schema it is known to the reader, and covering it with the checksum
makes a reader with the wrong config or shape fail instead of decoding garbage. So the
length is ceil(bits / 8) bytes, ``bits = config.bits(shape)``: the bits the quantizer
accounts are exactly the bits written.

:func:`to_bytes` writes a :class:`pvqref.gain.QuantizedMatrix` (``Q.to_bytes()`` is the
same), :func:`from_bytes` reads one back (``pvqref.gain.from_bytes`` is the same).

Chapter: Gain quantization (book/gain.ipynb), section "The complete quantizer and its
bits". For a whole model, :mod:`pvqref.packed` stores every field as its own bit-packed
tensor (:func:`pack_uints`) in a safetensors file written here
(:func:`write_safetensors`, deterministic) inside a folder written atomically
(:func:`atomic_folder`); chapter: Quantizing a real LLaMA model (book/llama.ipynb).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zlib
from pathlib import Path

import numpy as np

from . import _checks, pyramid

FORMAT_VERSION = 2               # first byte of every stream; version 1 had no header
VERSION_BITS = 8
CHECKSUM_BITS = 32               # CRC-32 of the schema and the stream, the last 4 bytes
NORM_RANGE_BITS = 64             # lo and hi, fp32 each (log-grid norms only)
FP16_NORMS = 16                  # the norm_bits value meaning "fp16 row norms"


def matrix_bits(norm_bits: int) -> int:
    """Bits stored once per matrix: the version byte, the checksum, and the norm range for
    log-grid norms (``norm_bits`` < 16).

    Chapter: Gain quantization (book/gain.ipynb), "The complete quantizer and its bits"."""
    return VERSION_BITS + CHECKSUM_BITS + (0 if norm_bits == FP16_NORMS else NORM_RANGE_BITS)


def check_shape(shape) -> tuple[int, int]:
    """``shape`` as (m, n), both positive integers (TypeError for 4.7 or a lone number).

    Chapter: Gain quantization (book/gain.ipynb)."""
    try:
        m, n = shape
    except (TypeError, ValueError):
        raise TypeError(f"shape must be a pair (rows m, row length n), got {shape!r}") from None
    return (_checks.integer(m, "shape[0] (rows m)", 1),
            _checks.integer(n, "shape[1] (row length n)", 1))


def schema(shape, config) -> bytes:
    """The format a stream is read with, as canonical text (covered by its checksum).

    Chapter: Gain quantization (book/gain.ipynb), "The complete quantizer and its bits"."""
    return json.dumps({"format": "pvqref.gain", "version": FORMAT_VERSION,
                       "shape": [int(v) for v in shape], "L": int(config.L), "K": int(config.K),
                       "gain_bits": int(config.gain_bits), "gain_kind": config.gain_kind,
                       "gain_target": config.gain_target, "norm_bits": int(config.norm_bits)},
                      sort_keys=True).encode()


def seal(payload: bytes, shape, config) -> bytes:
    """payload + CRC-32(schema + payload), 4 bytes little-endian.

    Chapter: Gain quantization (book/gain.ipynb), "The complete quantizer and its bits"."""
    crc = zlib.crc32(payload, zlib.crc32(schema(shape, config)))
    return payload + crc.to_bytes(CHECKSUM_BITS // 8, "little")


def _uint_bits(values, b: int) -> np.ndarray:
    """The b low bits of each value, least significant first, concatenated (uint8 0/1)."""
    v = np.asarray(values, dtype=np.uint64)
    return ((v[:, None] >> np.arange(b, dtype=np.uint64)) & np.uint64(1)).astype(np.uint8).ravel()


def _bits_uint(bits: np.ndarray, b: int) -> np.ndarray:
    """Inverse of :func:`_uint_bits`: (count,) uint64."""
    if b == 0:
        return np.zeros(0, dtype=np.uint64)
    w = bits.reshape(-1, b).astype(np.uint64) << np.arange(b, dtype=np.uint64)
    return w.sum(axis=1, dtype=np.uint64)


def pack_uints(values, b: int) -> bytes:
    """The b low bits of each value, least significant bit first, concatenated and
    zero-padded to a whole byte: ceil(len(values) b / 8) bytes. Chapter: Quantizing a real
    LLaMA model (book/llama.ipynb)."""
    if b == 0:
        return b""
    return np.packbits(_uint_bits(values, b), bitorder="little").tobytes()


def unpack_uints(data, count: int, b: int) -> np.ndarray:
    """Inverse of :func:`pack_uints`: ``count`` values (uint64). ValueError for a wrong
    length or non-zero padding. Chapter: Quantizing a real LLaMA model
    (book/llama.ipynb)."""
    data = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
    if len(data) != -(-count * b // 8):
        raise ValueError(f"{count} values of {b} bits need {-(-count * b // 8)} bytes, got "
                         f"{len(data)}")
    bits = np.unpackbits(data, bitorder="little")
    if bits[count * b:].any():
        raise ValueError("padding bits after the last value are not zero")
    return _bits_uint(bits[:count * b], b) if b else np.zeros(count, dtype=np.uint64)


def to_bytes(Q) -> bytes:
    """The stream of a :class:`pvqref.gain.QuantizedMatrix` (checked first): the version
    byte, the norm range (two fp32, log norms only), all indices (bits(L, K) each), all
    gain codes (gain_bits each), all row norms (norm_bits each), zero-padded to a whole
    byte, then the CRC-32 of the schema and all that (4 bytes); so
    len = ceil(Q.bit_counts()['total'] / 8).

    Chapter: Gain quantization (book/gain.ipynb)."""
    Q.validate()
    cfg = Q.config
    idx = np.unpackbits(np.frombuffer(pyramid.pack_indices(Q.indices, cfg.L, cfg.K),
                                      dtype=np.uint8), bitorder="little")
    norms = Q.row_norms.view(np.uint16) if cfg.norm_bits == FP16_NORMS else Q.row_norms
    parts = [_uint_bits([FORMAT_VERSION], VERSION_BITS),
             _uint_bits(Q.norm_range.astype(np.float32).view(np.uint32), 32),
             idx[:Q.n_groups * cfg.index_bits],
             _uint_bits(Q.gain_codes, cfg.gain_bits),
             _uint_bits(norms, cfg.norm_bits)]
    return seal(np.packbits(np.concatenate(parts), bitorder="little").tobytes(), Q.shape, cfg)


def _field_sizes(shape, config) -> list[int]:
    """Bits of the version, norm range, indices, gain codes and row norms, in stream order."""
    m, n = shape
    if n % config.L:
        raise ValueError(f"shape {shape} does not fit group size L={config.L}")
    G = m * n // config.L
    return [VERSION_BITS, 0 if config.norm_bits == FP16_NORMS else NORM_RANGE_BITS,
            G * config.index_bits, G * config.gain_bits, config.norm_bits * m]


def _payload(data, shape, config, total: int) -> bytes:
    """The stream without its checksum, after checking the length, version and checksum."""
    n_bytes = -(-total // 8) + CHECKSUM_BITS // 8
    data = bytes(data)
    if len(data) != n_bytes:
        raise ValueError(f"shape {shape} with {config} needs {n_bytes} bytes, got {len(data)}")
    if data[0] != FORMAT_VERSION:
        raise ValueError(f"format version {data[0]} is not supported (this reader reads "
                         f"version {FORMAT_VERSION})")
    payload = data[:-(CHECKSUM_BITS // 8)]
    if seal(payload, shape, config) != data:
        raise ValueError(f"checksum mismatch: the bytes are corrupt, or were written with "
                         f"another config or shape than {config} and {shape}")
    return payload


def from_bytes(data: bytes, shape, config):
    """Inverse of :func:`to_bytes`: the :class:`pvqref.gain.QuantizedMatrix` of a stream
    (the shape and config are the schema). ValueError for a wrong length, another format
    version, a checksum that does not match (corrupt bytes, or another config or shape
    than the writer's), non-zero padding or values the format cannot hold (Inf/NaN norms,
    an inverted norm range, codes out of range).

    Chapter: Gain quantization (book/gain.ipynb)."""
    # pvqref.gain writes through this module (QuantizedMatrix.to_bytes), so the class it
    # reads into is imported here, when a stream is read, not when this module loads.
    from .gain.quantizer import QuantizedMatrix
    m, n = check_shape(shape)
    sizes = _field_sizes((m, n), config)
    total = sum(sizes)                                # without the checksum
    payload = _payload(data, (m, n), config, total)
    stream = np.unpackbits(np.frombuffer(payload, dtype=np.uint8), bitorder="little")
    if stream[total:].any():
        raise ValueError("padding bits after the last row norm are not zero")
    _, range_bits, idx_bits, gain_bits, norm_bits = np.split(stream[:total],
                                                             np.cumsum(sizes)[:-1])
    G = m * n // config.L
    idx = np.packbits(idx_bits, bitorder="little").tobytes()
    indices = pyramid.unpack_indices(idx, G, config.L, config.K)
    codes = np.zeros(G, dtype=np.uint16) if config.gain_bits == 0 else \
        _bits_uint(gain_bits, config.gain_bits).astype(np.uint16)
    norms = _bits_uint(norm_bits, config.norm_bits).astype(np.uint16)
    log_norms = config.norm_bits != FP16_NORMS
    if not log_norms:
        norms = norms.view(np.float16)
    norm_range = _bits_uint(range_bits, 32).astype(np.uint32).view(np.float32) if log_norms \
        else np.zeros(0, dtype=np.float32)
    Q = QuantizedMatrix((m, n), config, norms, indices, codes, norm_range)
    Q.validate()
    return Q


# -- files of a packed model (pvqref.packed) ---------------------------------------------

SAFETENSORS_DTYPES = {"uint8": "U8", "int8": "I8", "int16": "I16", "int32": "I32",
                      "int64": "I64", "float16": "F16", "bfloat16": "BF16", "float32": "F32",
                      "float64": "F64"}        # torch dtype name -> safetensors dtype


def tensor_bytes(t) -> bytes:
    """The bytes of a CPU tensor as a safetensors file stores them (row-major, the
    machine's little-endian layout). Chapter: Quantizing a real LLaMA model
    (book/llama.ipynb)."""
    import torch
    return t.contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b""


def write_safetensors(file: Path, tensors: dict, data: dict, metadata: dict) -> None:
    """A safetensors file of ``tensors`` ({name: tensor}, their bytes ``data[name]`` from
    :func:`tensor_bytes`, computed once by the caller, which checksums them) in sorted
    name order with a header with sorted keys, so the same tensors give the same bytes
    (safetensors' own writer orders its header differently from run to run).
    Chapter: Quantizing a real LLaMA model (book/llama.ipynb)."""
    header, offset, blobs = {"__metadata__": metadata}, 0, []
    for key in sorted(tensors):
        t, blob = tensors[key], data[key]
        dtype = SAFETENSORS_DTYPES[str(t.dtype).removeprefix("torch.")]
        header[key] = {"dtype": dtype, "shape": list(t.shape),
                       "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(file, "wb") as fh:
        fh.write(len(text).to_bytes(8, "little"))
        fh.write(text)
        for blob in blobs:
            fh.write(blob)


def atomic_folder(path: Path, overwrite: bool, write) -> Path:
    """Run ``write(tmp)`` into a temporary folder beside ``path``, then rename it there
    (an existing ``path`` is replaced only with ``overwrite``; on any failure, including
    an interrupt, the temporary folder is removed and ``path`` is as it was). Chapter:
    Quantizing a real LLaMA model (book/llama.ipynb)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists (pass overwrite=True, or --overwrite, to "
                              f"replace it)")
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        write(tmp)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o755)
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old)
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path

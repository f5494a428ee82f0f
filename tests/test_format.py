"""Tests of pvqref.format: bits accounted = bits written, corruption and wrong schemas are
caught, and the bytes are those of the format before the split (pinned digests)."""

import hashlib
import math
import warnings

import numpy as np
import pytest

from pvqref import gain, pyramid
from pvqref import format as fmt


# ---------------------------------------------------------------------- the byte stream

@pytest.mark.parametrize("norm_bits", [16, 8, 3])
@pytest.mark.parametrize("L,K,bits", [(8, 5, 0), (8, 16, 3), (32, 50, 2), (64, 109, 5)])
def test_bits_accounted_equal_bits_packed(L, K, bits, norm_bits):
    rng = np.random.default_rng(L + K)
    m, n = 7, 192
    W = rng.standard_normal((m, n))
    cfg = gain.PVQConfig(L, K, bits, norm_bits=norm_bits)
    Q = gain.quantize(W, cfg)
    groups = m * n // L
    counts = Q.bit_counts()
    per_matrix = 8 + 32 + (0 if norm_bits == 16 else 64)    # version, CRC-32 (+ fp32 lo, hi)
    assert counts["matrix"] == per_matrix
    assert counts["indices"] == groups * pyramid.bits(L, K)
    assert counts["row_norms"] == norm_bits * m
    assert counts["total"] == groups * (pyramid.bits(L, K) + bits) + norm_bits * m + per_matrix
    assert Q.bits_per_weight() == pytest.approx(cfg.bits_per_weight((m, n)), rel=1e-15)
    assert cfg.bits_per_weight((m, n)) == pytest.approx(
        (pyramid.bits(L, K) + bits) / L + norm_bits / n + per_matrix / (m * n), rel=1e-15)
    data = Q.to_bytes()
    assert len(data) == math.ceil(counts["total"] / 8)       # one stream, padded at the end only
    assert data[0] == fmt.FORMAT_VERSION
    R = gain.from_bytes(data, Q.shape, cfg)
    np.testing.assert_array_equal(R.indices, Q.indices)
    np.testing.assert_array_equal(R.gain_codes, Q.gain_codes)
    np.testing.assert_array_equal(R.row_norms.view(np.uint16), Q.row_norms.view(np.uint16))
    np.testing.assert_array_equal(R.norm_range.view(np.uint32), Q.norm_range.view(np.uint32))
    np.testing.assert_array_equal(gain.dequantize(R), gain.dequantize(Q))
    np.testing.assert_array_equal(gain.dequantize(R), gain.quantize_dequantize(W, cfg))


@pytest.mark.parametrize("norm_bits", [16, 6])
def test_from_bytes_rejects_corrupt_data(norm_bits):
    rng = np.random.default_rng(9)
    cfg = gain.PVQConfig(8, 5, 3, norm_bits=norm_bits)
    Q = gain.quantize(rng.standard_normal((1, 24)), cfg)
    # 3 groups * (14 + 3) bits + one row norm + version byte + CRC (+ 64 bits of norm range)
    total = {16: 51 + 16 + 40, 6: 51 + 6 + 104}[norm_bits]
    assert Q.bit_counts()["total"] == total and total % 8            # some padding bits
    data = Q.to_bytes()
    with pytest.raises(ValueError, match="bytes"):
        gain.from_bytes(data[:-1], Q.shape, cfg)
    with pytest.raises(ValueError, match="bytes"):
        gain.from_bytes(data + b"\0", Q.shape, cfg)
    payload = bytearray(data[:-4])
    payload[-1] |= 0x80                              # the last padding bit, checksum redone:
    with pytest.raises(ValueError, match="padding"):  # what a buggy writer could produce
        gain.from_bytes(fmt.seal(bytes(payload), Q.shape, cfg), Q.shape, cfg)
    with pytest.raises(ValueError, match="checksum"):  # the same bit flipped in transit
        gain.from_bytes(bytes(payload) + data[-4:], Q.shape, cfg)
    for version in (0, 1, 3, 255):                   # version 1 had no header byte
        raw = bytearray(data)
        raw[0] = version
        with pytest.raises(ValueError, match="format version"):
            gain.from_bytes(bytes(raw), Q.shape, cfg)
    with pytest.raises(ValueError, match="bytes"):   # the other norm format has another size
        gain.from_bytes(data, Q.shape, gain.PVQConfig(8, 5, 3, norm_bits=22 - norm_bits))


@pytest.mark.parametrize("norm_bits", [16, 6])
def test_checksum_catches_corruption_and_a_wrong_schema(norm_bits):
    rng = np.random.default_rng(10)
    cfg = gain.PVQConfig(8, 12, 3, norm_bits=norm_bits)
    Q = gain.quantize(rng.standard_normal((4, 48)), cfg)
    data = Q.to_bytes()
    assert gain.from_bytes(data, Q.shape, cfg).indices.tolist() == Q.indices.tolist()
    for bit in range(8, 8 * len(data)):              # every single-bit error after the version
        raw = bytearray(data)
        raw[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(ValueError, match="checksum"):
            gain.from_bytes(bytes(raw), Q.shape, cfg)
    # Same byte length, another schema: every field of the config is covered.
    for other in (gain.PVQConfig(8, 12, 3, "quantile", norm_bits=norm_bits),
                  gain.PVQConfig(8, 12, 3, gain_target="norm", norm_bits=norm_bits),
                  gain.PVQConfig(8, 13, 3, norm_bits=norm_bits)):      # bits(8,12) == bits(8,13)
        assert len(gain.QuantizedMatrix(Q.shape, other, Q.row_norms, Q.indices,
                                        Q.gain_codes, Q.norm_range).to_bytes()) == len(data)
        with pytest.raises(ValueError, match="checksum"):
            gain.from_bytes(data, Q.shape, other)
    # Every other shape with the same number of groups: the length or the checksum differs.
    shapes = [(m, 192 // m) for m in range(1, 25) if 192 % m == 0 and (192 // m) % 8 == 0
              and 192 // m > 8 and m != 4]
    reached_checksum = False
    for shape in shapes:
        other = gain.QuantizedMatrix(shape, cfg, np.resize(Q.row_norms, shape[0]), Q.indices,
                                     Q.gain_codes, Q.norm_range)
        same_length = len(other.to_bytes()) == len(data)
        reached_checksum |= same_length
        with pytest.raises(ValueError, match="checksum" if same_length else "bytes"):
            gain.from_bytes(data, shape, cfg)
    assert reached_checksum == (norm_bits != 16)     # fp16 norms: m changes the length


def test_corrupt_quantized_matrix_is_rejected():
    rng = np.random.default_rng(18)
    cfg = gain.PVQConfig(8, 5, 2, norm_bits=16)
    Q = gain.quantize(rng.standard_normal((2, 32)), cfg)
    bad_code = gain.QuantizedMatrix(Q.shape, cfg, Q.row_norms, Q.indices,
                                    np.full_like(Q.gain_codes, 4))
    with pytest.raises(ValueError, match="gain codes"):
        gain.dequantize(bad_code)
    bad_norm = gain.QuantizedMatrix(Q.shape, cfg, np.array([1.0, np.inf], dtype=np.float16),
                                    Q.indices, Q.gain_codes)
    with pytest.raises(ValueError, match="row norms"):
        gain.dequantize(bad_norm)
    payload = Q.to_bytes()[:-4]                      # an Inf norm in the bytes
    stream = np.unpackbits(np.frombuffer(payload, dtype=np.uint8), bitorder="little")
    start = Q.bit_counts()["total"] - 32 - 16        # the last row norm's 16 bits
    stream[start:start + 16] = np.unpackbits(
        np.array([np.inf], dtype=np.float16).view(np.uint8), bitorder="little")
    bad = np.packbits(stream, bitorder="little").tobytes()
    with pytest.raises(ValueError, match="row norms"):
        gain.from_bytes(fmt.seal(bad, Q.shape, cfg), Q.shape, cfg)
    with pytest.raises(ValueError, match="inconsistent"):
        gain.dequantize(gain.QuantizedMatrix((3, 32), cfg, Q.row_norms, Q.indices, Q.gain_codes))
    with pytest.raises(ValueError, match="norm_bits=16 needs"):     # codes where fp16 belongs
        gain.dequantize(gain.QuantizedMatrix(Q.shape, cfg, Q.row_norms.view(np.uint16),
                                             Q.indices, Q.gain_codes))


# ------------------------------------------------------------- the bytes did not change

# sha256 of Q.to_bytes() for fixed seeded matrices, computed with pvqref/gain.py as it was
# before the split into pvqref.gain / pvqref.format (commit 1d65258): the format is the
# same bit for bit, on both NumPy tiers.
PINNED = [((6, 64), dict(L=16, K=24, gain_bits=3), 164,
           "2a6b868e8cde7536e34944110db2ae92d43a25a5b89a28fafe386b42ad6c5f2a"),
          ((6, 64), dict(L=16, K=24, gain_bits=3, norm_bits=16), 164,
           "8f0a77a09a558754ad7b8b85e27a24114862c21cb71ecacb09e8daa0094ba27c"),
          ((4, 48), dict(L=8, K=12, gain_bits=0, gain_kind="quantile", norm_bits=6), 82,
           "685bc9b8a5a6836b71459c514b0730cea704b1b1a89ff783f128d951f77a86c5"),
          ((5, 192), dict(L=64, K=109, gain_bits=5, gain_target="norm", norm_bits=8), 408,
           "52ce9374f98d1ff7f9adf91853cfc5f810c7e1644e5939b017c088b43ba77037"),
          ((3, 576), dict(L=144, K=240, gain_bits=2, gain_kind="uniform", norm_bits=3), 705,
           "f551965d08db7de272ec3a692f618e5ba295e1df990655545c3465802119512e")]


@pytest.mark.parametrize("backend", ["reference", "numba"])
@pytest.mark.parametrize("case", range(len(PINNED)))
def test_bytes_are_those_of_the_format_before_the_split(case, backend):
    shape, kw, n_bytes, digest = PINNED[case]
    W = np.random.default_rng(100 + case).standard_normal(shape)
    W[0, :kw["L"]] = 0                                   # a zero group
    cfg = gain.PVQConfig(**kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Q = gain.quantize(W, cfg, backend)
    data = Q.to_bytes()
    assert len(data) == n_bytes and hashlib.sha256(data).hexdigest() == digest
    assert fmt.to_bytes(Q) == data                       # the method is the module's
    R, S = fmt.from_bytes(data, shape, cfg), gain.from_bytes(data, shape, cfg)
    for field in ("indices", "gain_codes", "row_norms", "norm_range"):
        np.testing.assert_array_equal(getattr(R, field), getattr(Q, field))
        np.testing.assert_array_equal(getattr(S, field), getattr(Q, field))
    np.testing.assert_array_equal(gain.dequantize(R, backend), gain.dequantize(Q, backend))


def test_matrix_bits_and_shape_checks():
    assert fmt.matrix_bits(16) == 40 and fmt.matrix_bits(5) == 104
    assert fmt.check_shape((3, 64)) == (3, 64)
    assert fmt.check_shape(np.array([3, 64])) == (3, 64)
    with pytest.raises(ValueError, match="rows m"):
        fmt.check_shape((0, 64))
    with pytest.raises(TypeError, match="shape"):
        fmt.check_shape((3, 64, 1))

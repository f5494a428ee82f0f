"""Tests of pvqref.coherence: Hadamard constructions, the three transform tiers, seeded
rotations and their storage, rotated linear layers and a rotated LLaMA block."""

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pvqref import coherence as coh

SMOLLM2_SIZES = (64, 192, 576, 1536)
LLAMA_SIZES = {2048: True, 4096: True, 5632: True, 8192: True, 11008: False,
               13824: True, 14336: True, 28672: True}


# ---------------------------------------------------------------- constructions

@pytest.mark.parametrize("k", coh.base_orders())
def test_every_constructed_factor_is_an_integer_hadamard_matrix(k):
    H = coh._base_matrix(k)
    assert H.shape == (k, k) and set(np.unique(H)) <= {-1, 1}
    np.testing.assert_array_equal(H @ H.T, k * np.eye(k, dtype=np.int64))


@pytest.mark.parametrize("q", [3, 7, 11, 19, 27, 243])
def test_paley1_over_prime_and_prime_power_fields(q):
    H = coh.paley1(q)
    np.testing.assert_array_equal(H @ H.T, (q + 1) * np.eye(q + 1, dtype=np.int64))


@pytest.mark.parametrize("q", [5, 9, 13, 17, 25, 49, 81, 121, 125])
def test_paley2_over_prime_and_prime_power_fields(q):
    H = coh.paley2(q)
    n = 2 * (q + 1)
    np.testing.assert_array_equal(H @ H.T, n * np.eye(n, dtype=np.int64))


def test_quadratic_character_of_gf9_has_four_squares_and_is_symmetric():
    chi = coh.quadratic_character(9)
    assert (chi[1:, 0] == 1).sum() == 4 and (np.diag(chi) == 0).all()
    np.testing.assert_array_equal(chi, chi.T)            # -1 is a square in GF(9)


@pytest.mark.parametrize("bad, fn", [(15, coh.paley1), (5, coh.paley1), (7, coh.paley2),
                                     (21, coh.paley2), (12, coh.sylvester)])
def test_constructions_reject_wrong_parameters(bad, fn):
    with pytest.raises(ValueError):
        fn(bad)


def test_required_sizes_are_supported_and_llama_coverage_is_as_documented():
    for n in SMOLLM2_SIZES + (12, 36, 20, 28, 44, 52, 60):
        assert coh.is_supported(n), n
    assert coh.construction(576) == "paley2(q=17) (x) sylvester(16)"
    assert coh.construction(1536) == "paley1(q=11) (x) sylvester(128)"
    assert coh.construction(12) == "paley1(q=11)" and coh.construction(8) == "sylvester(8)"
    for n, covered in LLAMA_SIZES.items():
        assert coh.is_supported(n) == covered, n
    sizes = coh.supported_sizes(16384)
    assert sizes == [n for n in range(1, 16385) if coh.is_supported(n)][: len(sizes)]
    assert sizes[-1] == 16384 and 172 not in sizes and 11008 not in coh.supported_sizes(11008)


@pytest.mark.parametrize("n", coh.supported_sizes(2048))
def test_dense_hadamard_is_orthonormal_for_every_supported_n_up_to_2048(n):
    H = coh.hadamard(n)
    assert np.abs(H @ H.T - np.eye(n)).max() < 1e-6
    np.testing.assert_allclose(np.abs(H), 1 / math.sqrt(n), rtol=1e-12)


@pytest.mark.parametrize("n", [n for n in coh.supported_sizes(16384) if n > 2048])
def test_fast_transform_is_orthonormal_for_every_supported_n_up_to_16384(n):
    # Columns H e_j for 48 sampled j: entries +-1/sqrt(n) and an identity Gram matrix
    # (the dense H H^T would need n^3 flops), plus norm preservation of random vectors.
    rng = np.random.default_rng(n)
    cols = rng.choice(n, size=48, replace=False)
    E = np.zeros((48, n))
    E[np.arange(48), cols] = 1.0
    Hcols = coh.hadamard_transform(E)
    np.testing.assert_allclose(np.abs(Hcols), 1 / math.sqrt(n), rtol=1e-9)
    assert np.abs(Hcols @ Hcols.T - np.eye(48)).max() < 1e-6
    x = rng.standard_normal((4, n))
    np.testing.assert_allclose(np.linalg.norm(coh.hadamard_transform(x), axis=1),
                               np.linalg.norm(x, axis=1), rtol=1e-9)


# ---------------------------------------------------------------- unsupported sizes

@pytest.mark.parametrize("n", [3, 172, 11008, 1000])
def test_unsupported_size_raises_clear_error_naming_the_fallback(n):
    for build in (coh.hadamard, lambda m: coh.RandomizedHadamard(m, 0),
                  lambda m: coh.hadamard_transform(np.zeros(m)),
                  lambda m: coh.make_rotation(m, 0)):
        with pytest.raises(ValueError) as err:
            build(n)
        msg = str(err.value)
        assert f"n={n}" in msg and "k in [1, 12, 20" in msg
        assert "fallback='orthogonal'" in msg and "RandomOrthogonal" in msg


@pytest.mark.parametrize("n", [0, -4, 2.0, True])
def test_non_integer_or_non_positive_order_is_rejected(n):
    with pytest.raises(ValueError):
        coh.hadamard(n)


def test_fallback_is_chosen_only_explicitly():
    R = coh.make_rotation(172, 3, fallback="orthogonal")
    assert isinstance(R, coh.RandomOrthogonal)
    assert isinstance(coh.make_rotation(576, 3, fallback="orthogonal"), coh.RandomizedHadamard)
    Q = R.matrix()
    assert np.abs(Q @ Q.T - np.eye(172)).max() < 1e-12
    with pytest.raises(ValueError, match="fallback"):
        coh.make_rotation(172, 3, fallback="identity")


# ---------------------------------------------------------------- tiers

TIER_SIZES = (1, 2, 4, 12, 20, 28, 36, 52, 100, 192, 244, 576, 1536)


@pytest.mark.parametrize("n", TIER_SIZES)
@pytest.mark.parametrize("transpose", [False, True])
def test_tiers_agree_with_the_dense_oracle_float64(n, transpose):
    H = coh.hadamard(n)
    x = np.random.default_rng(n).standard_normal((5, n))
    expect = x @ (H if transpose else H.T)
    for backend in coh.BACKENDS:
        y = coh.hadamard_transform(x, backend=backend, transpose=transpose)
        np.testing.assert_allclose(y, expect, atol=1e-12, err_msg=backend)


@pytest.mark.parametrize("n", [576, 1536, 4096, 5632])
def test_tiers_agree_float32(n):
    x = np.random.default_rng(1).standard_normal((7, n)).astype(np.float32)
    R = coh.RandomizedHadamard(n, 11)
    ys = {b: R.forward(x, backend=b) for b in coh.BACKENDS}
    exact = R.forward(x.astype(np.float64), backend="reference")
    for b, y in ys.items():
        assert y.dtype == np.float32
        np.testing.assert_allclose(y, exact, atol=2e-5, err_msg=b)
    yt = R.forward(torch.from_numpy(x), backend="torch")
    np.testing.assert_allclose(yt.numpy(), exact, atol=2e-5)


def test_output_keeps_container_dtype_shape_and_device():
    R = coh.RandomizedHadamard(36, 0)
    for backend in coh.BACKENDS:
        xt = torch.randn(2, 3, 36, dtype=torch.float32)
        yt = R.forward(xt, backend=backend)
        assert isinstance(yt, torch.Tensor) and yt.dtype == torch.float32
        assert yt.shape == xt.shape and yt.device == xt.device
        xn = np.ones((36, 4), dtype=np.float32)
        yn = R.forward(xn, axis=0, backend=backend)
        assert isinstance(yn, np.ndarray) and yn.dtype == np.float32 and yn.shape == (36, 4)
    assert coh.hadamard_transform(np.arange(12)).dtype == np.float64     # ints promoted


@settings(max_examples=40, deadline=None)
@given(n=st.sampled_from([2, 12, 24, 36, 52, 64, 192, 576]),
       lead=st.lists(st.integers(1, 3), min_size=0, max_size=2),
       axis_pos=st.integers(0, 2), seed=st.integers(0, 2**32 - 1),
       backend=st.sampled_from(coh.BACKENDS), as_torch=st.booleans())
def test_forward_matches_matrix_and_inverse_is_identity(n, lead, axis_pos, seed, backend,
                                                        as_torch):
    rng = np.random.default_rng(seed)
    shape = list(lead)
    axis = min(axis_pos, len(shape))
    shape.insert(axis, n)
    x = rng.standard_normal(shape)
    R = coh.RandomizedHadamard(n, seed)
    expect = np.moveaxis(np.moveaxis(x, axis, -1) @ R.matrix().T, -1, axis)
    xin = torch.from_numpy(x) if as_torch else x
    y = R.forward(xin, axis=axis, backend=backend)
    back = R.inverse(y, axis=axis, backend=backend)
    y, back = (np.asarray(y), np.asarray(back))
    np.testing.assert_allclose(y, expect, atol=1e-12)
    np.testing.assert_allclose(back, x, atol=1e-12)


@pytest.mark.parametrize("bad, err, match", [
    (np.full(12, np.nan), ValueError, "NaN"),
    (np.r_[np.ones(11), np.inf], ValueError, "NaN or Inf"),
    (torch.tensor([1.0] * 11 + [-np.inf]), ValueError, "NaN or Inf"),
    (np.full(12, 3e38, dtype=np.float32), ValueError, "overflow"),   # H x overflows
    (np.ones(13), ValueError, "length 13"),
    (np.ones(12, dtype=complex), TypeError, "complex|dtype"),
    (torch.ones(12, dtype=torch.int32), TypeError, "floating"),
    (np.float64(1.0), ValueError, "scalar|dimension"),
])
@pytest.mark.parametrize("backend", coh.BACKENDS)
def test_bad_input_is_rejected(bad, err, match, backend):
    R = coh.RandomizedHadamard(12, 0)
    with pytest.raises(err, match=match):
        R.forward(bad, backend=backend)


def test_bad_backend_and_axis_are_rejected():
    with pytest.raises(ValueError, match="backend"):
        coh.hadamard_transform(np.ones(12), backend="cuda")
    with pytest.raises(ValueError, match="axis"):
        coh.hadamard_transform(np.ones(12), axis=1)
    with pytest.raises(ValueError, match="seed"):
        coh.RandomizedHadamard(12, -1)


# ---------------------------------------------------------------- storage

def test_signs_are_reproducible_and_depend_on_the_seed():
    a, b = coh.RandomizedHadamard(576, 7), coh.RandomizedHadamard(576, 7)
    np.testing.assert_array_equal(a.signs, b.signs)
    assert set(np.unique(a.signs)) == {-1.0, 1.0}
    assert (a.signs != coh.RandomizedHadamard(576, 8).signs).any()


@pytest.mark.parametrize("rot", [coh.RandomizedHadamard(1536, 5), coh.RandomOrthogonal(40, 5)])
def test_rotation_roundtrips_through_json(rot):
    d = json.loads(json.dumps(rot.to_dict()))
    again = coh.rotation_from_dict(d)
    assert type(again) is type(rot) and again.n == rot.n and again.seed == rot.seed
    np.testing.assert_array_equal(again.matrix(), rot.matrix())
    assert len(json.dumps(d)) < 400
    tampered = dict(d, seed=d["seed"] + 1)
    with pytest.raises(ValueError, match="checksum"):
        coh.rotation_from_dict(tampered)
    with pytest.raises(ValueError):
        coh.rotation_from_dict(dict(d, kind="mystery"))


def test_stored_construction_must_match():
    d = coh.RandomizedHadamard(576, 1).to_dict()
    with pytest.raises(ValueError, match="construction"):
        coh.RandomizedHadamard.from_dict(dict(d, construction="paley1(q=35)"))


def test_random_orthogonal_tiers_and_inverse():
    R = coh.RandomOrthogonal(30, 2)
    x = np.random.default_rng(0).standard_normal((3, 30))
    for backend in coh.BACKENDS:
        np.testing.assert_allclose(R.inverse(R.forward(x, backend=backend)), x, atol=1e-12)
    xt = torch.from_numpy(x)
    np.testing.assert_allclose(R.forward(xt).numpy(), R.forward(x), atol=1e-12)


# ---------------------------------------------------------------- linear layers

def test_rotate_weight_is_R_out_W_R_in_transpose_and_unrotate_inverts():
    rng = np.random.default_rng(0)
    W = rng.standard_normal((192, 576))
    R_in, R_out = coh.RandomizedHadamard(576, 1), coh.RandomizedHadamard(192, 2)
    for backend in coh.BACKENDS:
        Wr = coh.rotate_weight(W, R_in, R_out, backend=backend)
        np.testing.assert_allclose(Wr, R_out.matrix() @ W @ R_in.matrix().T, atol=1e-12)
        np.testing.assert_allclose(coh.unrotate_weight(Wr, R_in, R_out, backend=backend), W,
                                   atol=1e-12)
    np.testing.assert_allclose(coh.rotate_weight(W, R_in=R_in), W @ R_in.matrix().T, atol=1e-12)
    with pytest.raises(ValueError, match="input rotation has n=192"):
        coh.rotate_weight(W, R_in=R_out)
    with pytest.raises(ValueError, match="2-D"):
        coh.rotate_weight(W[0], R_in=R_in)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("bias", [False, True])
def test_rotated_linear_gives_the_same_outputs(dtype, tol, bias):
    torch.manual_seed(0)
    lin = torch.nn.Linear(576, 1536, bias=bias).to(dtype)
    R_in, R_out = coh.RandomizedHadamard(576, 3), coh.RandomizedHadamard(1536, 4)
    x = torch.randn(2, 5, 576, dtype=dtype)
    rotated = coh.RotatedLinear(lin, R_in, R_out)
    with torch.no_grad():
        assert (rotated(x) - lin(x)).abs().max() < tol
        # in rotated coordinates the inner layer maps R_in x to R_out y
        inner = rotated.inner(R_in.forward(x))
        assert (inner - R_out.forward(lin(x))).abs().max() < tol
    assert not torch.allclose(rotated.inner.weight, lin.weight)
    again = coh.RotatedLinear(lin, *map(coh.rotation_from_dict,
                                        rotated.rotations_dict().values()))
    assert torch.equal(again.inner.weight, rotated.inner.weight)


def test_fallback_rotation_also_rotates_a_linear_exactly():
    torch.manual_seed(1)
    lin = torch.nn.Linear(172, 20).double()
    rotated = coh.RotatedLinear(lin, coh.RandomOrthogonal(172, 0), coh.RandomizedHadamard(20, 0))
    x = torch.randn(3, 172, dtype=torch.float64)
    with torch.no_grad():
        assert (rotated(x) - lin(x)).abs().max() < 1e-12


# ---------------------------------------------------------------- a LLaMA block

def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=48, intermediate_size=96,
                         num_hidden_layers=2, num_attention_heads=3, num_key_value_heads=1,
                         head_dim=16, max_position_embeddings=64, tie_word_embeddings=True)
    model = LlamaForCausalLM(config).double().eval()
    with torch.no_grad():        # non-trivial norm weights, so the fold is exercised
        for layer in model.model.layers:
            layer.input_layernorm.weight.uniform_(0.5, 2.0)
            layer.post_attention_layernorm.weight.uniform_(0.5, 2.0)
    return model


@pytest.mark.parametrize("with_head, with_ffn, backend", [(False, False, "torch"),
                                                          (True, True, "torch"),
                                                          (True, True, "numba")])
def test_rotated_llama_blocks_leave_the_model_output_unchanged(with_head, with_ffn, backend):
    model = _tiny_llama()
    ids = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(ids).logits
        for i, layer in enumerate(model.model.layers):
            R_res = coh.RandomizedHadamard(48, 10 + i)
            R_head = coh.RandomizedHadamard(16, 20 + i) if with_head else None
            R_ffn = coh.RandomizedHadamard(96, 30 + i) if with_ffn else None
            new = coh.rotate_llama_block(layer, R_res, R_head, R_ffn, backend=backend)
            assert (new.input_layernorm.weight == 1).all()
            model.model.layers[i] = coh.RotatedResidualBlock(new, R_res)
        after = model(ids).logits
    # transformers' LlamaRMSNorm computes in float32 even for a float64 model, so the
    # rotated and plain paths differ by float32 rounding (~1e-7), not 1e-15.
    assert (after - before).abs().max() < 1e-6


def test_rotated_block_without_the_norm_fold_would_differ():
    # The fold is necessary: rotating readers and writers while keeping the RMSNorm
    # weights g in place changes the output, because diag(g) does not commute with R.
    import copy
    model = _tiny_llama()
    layer = model.model.layers[0]
    R = coh.RandomizedHadamard(48, 1)
    new = copy.deepcopy(layer)
    attn, mlp = new.self_attn, new.mlp
    with torch.no_grad():
        for lin in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj):
            lin.weight.copy_(coh.rotate_weight(lin.weight, R_in=R))
        for lin in (attn.o_proj, mlp.down_proj):
            lin.weight.copy_(coh.rotate_weight(lin.weight, R_out=R))
    ids = torch.randint(0, 50, (1, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(ids).logits
        model.model.layers[0] = coh.RotatedResidualBlock(new, R)
        unfolded = model(ids).logits
        model.model.layers[0] = coh.RotatedResidualBlock(coh.rotate_llama_block(layer, R), R)
        folded = model(ids).logits
    assert (unfolded - before).abs().max() > 1e-3
    assert (folded - before).abs().max() < 1e-6


# ---------------------------------------------------------------- statistics

def test_incoherence_extremes_and_rotation_reduces_a_spike():
    assert coh.incoherence(np.ones((4, 6))) == pytest.approx(1.0)
    spike = np.zeros((12, 36))
    spike[3, 5] = 2.0
    assert coh.incoherence(spike) == pytest.approx(math.sqrt(12 * 36))
    rotated = coh.rotate_weight(spike, coh.RandomizedHadamard(36, 0), coh.RandomizedHadamard(12, 0))
    assert coh.incoherence(rotated) == pytest.approx(1.0)     # a spike becomes flat
    with pytest.raises(ValueError):
        coh.incoherence(np.zeros((3, 3)))


def test_kurtosis_and_beta_law_distance_separate_gaussian_from_spiky():
    rng = np.random.default_rng(0)
    gauss = rng.standard_normal((256, 512))
    spiky = gauss * (rng.random((256, 512)) < 0.02)
    assert abs(coh.excess_kurtosis(gauss)) < 0.05
    assert coh.excess_kurtosis(spiky) > 20
    assert coh.beta_law_ks(gauss, 128) < 0.01
    assert coh.beta_law_ks(spiky, 128) > 0.5
    v2 = coh.sphere_coordinates(gauss, 128)
    np.testing.assert_allclose(v2.reshape(-1, 128).sum(axis=1), 1.0)
    assert coh.sphere_coordinates(gauss[:, :64], 128).size == 256 * 64   # groups span rows
    with pytest.raises(ValueError, match="multiple"):
        coh.sphere_coordinates(gauss[:3, :100], 128)

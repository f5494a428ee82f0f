"""Tests of pvqref.coherence: Hadamard constructions, the three transform tiers, seeded
rotations and their storage, rotated linear layers and a rotated LLaMA block."""

import json
import math
import re

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


def _exact_hadamard_entries(n, rows, cols):
    """H_n[rows][:, cols] straight from the definition H_n = (H_k (x) H_M) / sqrt(n), without
    the n x n matrix: H[a M + b, a' M + b'] = H_k[a, a'] (-1)^popcount(b & b') / sqrt(n)
    (Sylvester in natural order), k the smallest constructed factor with n / k = M = 2^m."""
    k = min(k for k in coh.base_orders() if n % k == 0 and (n // k) & (n // k - 1) == 0)
    M = n // k
    a, b = np.divmod(np.asarray(rows), M)
    a2, b2 = np.divmod(np.asarray(cols), M)
    sylvester = 1 - 2 * (np.bitwise_count(b[:, None] & b2[None, :]).astype(np.int64) % 2)
    return coh._base_matrix(k)[a[:, None], a2[None, :]] * sylvester / math.sqrt(n)


def _sampled_indices(n, count, seed):
    """``count`` random indices plus the block boundaries of every factorisation."""
    k = min(k for k in coh.base_orders() if n % k == 0 and (n // k) & (n // k - 1) == 0)
    M = n // k
    fixed = [i for i in (0, 1, M - 1, M, n - M, n - 1, n // 2) if i < n]
    rng = np.random.default_rng(seed)
    return np.unique(np.r_[fixed, rng.choice(n, size=count, replace=False)])


def test_exact_entry_formula_is_the_dense_matrix():
    for n in (1, 2, 12, 40, 96, 576, 1536):
        idx = np.arange(n)
        np.testing.assert_array_equal(_exact_hadamard_entries(n, idx, idx), coh.hadamard(n))


LLAMA_SUPPORTED = [n for n, covered in LLAMA_SIZES.items() if covered]


@pytest.mark.parametrize("n", [n for n in coh.supported_sizes(32768) if n > 2048])
def test_fast_transform_is_orthonormal_for_every_supported_n_up_to_32768(n):
    """What is checked, in float64:

    - every supported n <= 2048 exhaustively: the dense H_n H_n^T = I to 1e-6 (test above;
      also, to 1e-12, the tiers against that dense matrix);
    - every supported n in (2048, 32768], which includes the LLaMA sizes 4096, 5632, 8192,
      13824, 14336 and 28672 (2048 is in the exhaustive set), by sampled columns and rows:
      the fast transform of e_j (column j) for ~47 sampled j and the transposed transform
      of e_i (row i) for ~23 sampled i, always including the factor blocks' boundaries,
      equal the exact entries H_k[a, a'] (-1)^popcount(b & b') / sqrt(n) of the definition
      to 1e-12, and the sampled columns' Gram matrix is I to 1e-12;
    - that the definition is orthonormal for every n follows from H_k H_k^T = k I (exact
      integers, tested for every constructed k) and H_M H_M^T = M I, since the Kronecker
      product of orthonormal matrices is orthonormal. Tier agreement at the LLaMA sizes:
      test_tiers_agree_at_llama_sizes.
    """
    cols = _sampled_indices(n, 40, n)
    E = np.zeros((cols.size, n))
    E[np.arange(cols.size), cols] = 1.0
    Hcols = coh.hadamard_transform(E)                  # row t = H e_{cols[t]} = column
    np.testing.assert_allclose(Hcols.T, _exact_hadamard_entries(n, np.arange(n), cols),
                               rtol=0, atol=1e-12)
    assert np.abs(Hcols @ Hcols.T - np.eye(cols.size)).max() < 1e-12
    rows = _sampled_indices(n, 16, n + 1)
    E = np.zeros((rows.size, n))
    E[np.arange(rows.size), rows] = 1.0
    Hrows = coh.hadamard_transform(E, transpose=True)  # H^T e_i = row i of H
    np.testing.assert_allclose(Hrows, _exact_hadamard_entries(n, rows, np.arange(n)),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("n", LLAMA_SUPPORTED)
def test_tiers_agree_at_llama_sizes(n):
    # All three tiers, float64, against each other (1e-12), against the exact definition
    # on sampled output coordinates, and forward then inverse is the identity.
    R = coh.RandomizedHadamard(n, 5)
    x = np.random.default_rng(n).standard_normal((3, n))
    rows = _sampled_indices(n, 24, n + 2)
    exact = (x * R.signs) @ _exact_hadamard_entries(n, rows, np.arange(n)).T
    ys = {b: R.forward(x, backend=b) for b in coh.BACKENDS}
    for b, y in ys.items():
        np.testing.assert_allclose(y[:, rows], exact, rtol=0, atol=1e-12, err_msg=b)
        np.testing.assert_allclose(y, ys["reference"], rtol=0, atol=1e-12, err_msg=b)
        np.testing.assert_allclose(R.inverse(y, backend=b), x, rtol=0, atol=1e-12, err_msg=b)


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


@pytest.mark.parametrize("n", [0, -4, 2.0, True, np.float64(12.0), "12", None])
def test_non_integer_or_non_positive_order_is_rejected(n):
    for build in (coh.hadamard, lambda m: coh.RandomizedHadamard(m, 0), coh.construction,
                  lambda m: coh.RandomOrthogonal(m, 0), lambda m: coh.random_orthogonal(m, 0),
                  lambda m: coh.make_rotation(m, 0, fallback="orthogonal")):
        with pytest.raises(ValueError, match=r"must be a positive integer, got " +
                           re.escape(repr(n))):
            build(n)
    assert not coh.is_supported(n)


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


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", coh.BACKENDS)
def test_output_keeps_container_dtype_shape_device_and_values(device, backend):
    x = np.random.default_rng(0).standard_normal((2, 3, 36))
    for R in (coh.RandomizedHadamard(36, 0), coh.RandomOrthogonal(36, 0)):
        expect = x @ R.matrix().T
        for dtype, tol in ((torch.float32, 1e-5), (torch.float64, 1e-12)):
            xt = torch.tensor(x, dtype=dtype, device=device)
            yt = R.forward(xt, backend=backend)
            assert isinstance(yt, torch.Tensor) and yt.dtype == dtype
            assert yt.shape == xt.shape and yt.device == torch.device(device)
            np.testing.assert_allclose(yt.cpu().double().numpy(), expect, atol=tol)
        xn = np.ascontiguousarray(np.moveaxis(x[0], -1, 0)).astype(np.float32)   # (36, 3)
        yn = R.forward(xn, axis=0, backend=backend)
        assert isinstance(yn, np.ndarray) and yn.dtype == np.float32 and yn.shape == (36, 3)
        np.testing.assert_allclose(yn, R.matrix() @ xn, atol=1e-5)
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


# ---------------------------------------------------------------- sizes: validation, limits

def _nearest_from_the_list(n):
    """Independent oracle: bisect the enumerated supported sizes (above n is at most 2n)."""
    import bisect
    sizes = coh.supported_sizes(2 * n)
    i = bisect.bisect_left(sizes, n)
    below = sizes[i - 1] if i > 0 else None
    above = next(s for s in sizes[i:] if s > n)
    return below, above


def _nearest_in_message(n):
    with pytest.raises(ValueError) as err:
        coh.hadamard(n)
    found = re.search(r"nearest supported sizes: (\d+|None) and (\d+)", str(err.value))
    return None if found[1] == "None" else int(found[1]), int(found[2])


def test_nearest_supported_sizes_in_the_error_are_right_and_fast():
    for n in range(2, 3000):
        if not coh.is_supported(n):
            assert _nearest_in_message(n) == _nearest_from_the_list(n), n
    import time
    for n in (10**9 + 1, 2**40 + 1, 10**12 + 7):        # the old linear scan took 13 s+
        start = time.perf_counter()
        got = _nearest_in_message(n)
        assert time.perf_counter() - start < 0.5
        assert got == _nearest_from_the_list(n), n
    assert _nearest_in_message(2**40 + 1) == (2**40, 132 * 2**33)


def test_numpy_integer_orders_are_python_ints():
    msg = "no Hadamard matrix of order n=127 .* nearest supported sizes: 124 and 128"
    with pytest.raises(ValueError, match=msg):
        coh.hadamard(np.int8(127))                      # was an OverflowError
    assert not coh.is_supported(np.int8(127)) and coh.is_supported(np.int8(124))
    np.testing.assert_array_equal(coh.hadamard(np.int16(12)), coh.hadamard(12))
    for R in (coh.RandomizedHadamard(np.int64(576), np.uint8(3)),
              coh.RandomOrthogonal(np.int32(20), np.int64(3))):
        assert type(R.n) is int and type(R.seed) is int
        json.dumps(R.to_dict())


def test_huge_orders_are_refused_before_allocating():
    with pytest.raises(ValueError, match="MAX_DENSE_ORDER = 16384.*hadamard_transform"):
        coh.hadamard(2**40)
    with pytest.raises(ValueError, match="MAX_DENSE_ORDER"):
        coh.hadamard(28672)                             # supported, but 6 GiB dense
    with pytest.raises(ValueError, match="MAX_ORDER"):
        coh.RandomizedHadamard(2**40, 0)
    with pytest.raises(ValueError, match="MAX_ORDER"):
        coh.make_rotation(2**27, 0)
    for build in (lambda: coh.RandomOrthogonal(20000, 0),
                  lambda: coh.make_rotation(20001, 0, fallback="orthogonal"),
                  lambda: coh.random_orthogonal(10**6, 0)):
        with pytest.raises(ValueError, match="dense .*MAX_DENSE_ORDER"):
            build()
    assert coh.RandomizedHadamard(28672, 0).construction == "paley2(q=13) (x) sylvester(1024)"


@pytest.mark.parametrize("n", [1, 2, 12, 40, 96, 576, 1536, 2048])
def test_dense_hadamard_is_the_kronecker_product(n):
    k = min(k for k in coh.base_orders() if n % k == 0 and (n // k) & (n // k - 1) == 0)
    expect = np.kron(coh._base_matrix(k), coh.sylvester(n // k)) / math.sqrt(n)
    np.testing.assert_array_equal(coh.hadamard(n), expect)


@pytest.mark.parametrize("n", [4096, 3072])
def test_dense_hadamard_peak_memory_is_as_documented(n):
    # The docstring says: the result (n^2 doubles) built in place, peak at most 1.25x.
    import tracemalloc
    coh._base_matrix(12 if n == 3072 else 1)        # cached factor: not counted
    tracemalloc.start()
    try:
        H = coh.hadamard(n)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert H.nbytes == n * n * 8 and peak <= 1.26 * H.nbytes


# ---------------------------------------------------------------- the dense fallback

@pytest.mark.parametrize("bad", [2.5, True, "5", 0, -3, None])
def test_random_orthogonal_validates_n(bad):
    for build in (lambda: coh.RandomOrthogonal(bad, 0),
                  lambda: coh.make_rotation(bad, 0, fallback="orthogonal")):
        with pytest.raises(ValueError, match="positive integer"):
            build()


@pytest.mark.parametrize("backend", [None, *coh.BACKENDS])
def test_random_orthogonal_rejects_overflow_and_nan_like_the_hadamard(backend):
    R = coh.RandomOrthogonal(12, 0)
    for bad, match in ((np.full(12, 3e38, dtype=np.float32), "overflow"),
                       (torch.full((12,), 3e38), "overflow"),
                       (np.r_[np.ones(11), np.nan], "NaN or Inf"),
                       (torch.tensor([1.0] * 11 + [np.inf]), "NaN or Inf")):
        with pytest.raises(ValueError, match=match):
            R.forward(bad, backend=backend)
    with pytest.raises(ValueError, match="backend"):
        R.forward(np.ones(12), backend="cuda")


def test_random_orthogonal_backend_does_not_change_the_computation():
    # As its docstring says: numpy's product for arrays, torch's for tensors (which keep
    # their gradients on every backend).
    R = coh.RandomOrthogonal(30, 2)
    x = np.random.default_rng(0).standard_normal((3, 30))
    ys = [R.forward(x, backend=b) for b in (None, *coh.BACKENDS)]
    assert all(isinstance(y, np.ndarray) and np.array_equal(y, ys[0]) for y in ys)
    for b in (None, *coh.BACKENDS):
        xt = torch.tensor(x, requires_grad=True)
        y = R.forward(xt, backend=b)
        y.sum().backward()
        np.testing.assert_allclose(xt.grad.numpy(), np.broadcast_to(R.matrix().sum(0), x.shape),
                                   atol=1e-12)


def test_random_orthogonal_checksum_is_of_the_seeded_gaussian_not_of_lapack_output(
        monkeypatch):
    import hashlib
    R = coh.RandomOrthogonal(40, 9)
    d = R.to_dict()
    G = np.random.default_rng(9).standard_normal((40, 40))
    assert d["version"] == 2 and d["construction"] == "qr(gaussian)"
    assert d["gaussian_sha256"] == hashlib.sha256(G.astype("<f8").tobytes()).hexdigest()
    # Another LAPACK gives the same Q up to rounding. Model that by moving the entry of Q
    # nearest to a 6-decimal rounding boundary just across it (here by < 1e-8; at
    # n = 11008, with 1.2e8 entries, some entry lies within ~1e-14 of a boundary, so real
    # rounding differences do this): the old hash of round(Q, 6) changes, the G hash not.
    Q = R.matrix()
    scaled = Q * 1e6
    i, j = np.unravel_index(np.argmin(np.abs(scaled - np.floor(scaled) - 0.5)), Q.shape)
    boundary = (np.floor(scaled[i, j]) + 0.5) / 1e6
    nudged = Q.copy()
    nudged[i, j] = np.nextafter(boundary, -np.inf if Q[i, j] > boundary else np.inf)
    assert 0 < abs(nudged[i, j] - Q[i, j]) < 1e-8

    def old_hash(A):
        return hashlib.sha256(np.round(A, 6).tobytes()).hexdigest()
    assert old_hash(nudged) != old_hash(Q)
    real_qr = np.linalg.qr

    def other_lapack_qr(A):                          # returns nudged after the sign fix
        Q_raw, R_raw = real_qr(A)
        return nudged * np.where(np.diag(R_raw) < 0, -1.0, 1.0)[None, :], R_raw
    monkeypatch.setattr(np.linalg, "qr", other_lapack_qr)
    again = coh.rotation_from_dict(json.loads(json.dumps(d)))   # no false mismatch
    assert again.matrix()[i, j] == nudged[i, j]
    monkeypatch.undo()
    with pytest.raises(ValueError, match="checksum"):
        coh.rotation_from_dict(dict(d, gaussian_sha256="0" * 64))


def test_version_1_random_orthogonal_dicts_are_still_read():
    import hashlib
    R = coh.RandomOrthogonal(30, 4)
    legacy = {"kind": "random_orthogonal", "version": 1, "n": 30, "seed": 4,
              "construction": "qr(gaussian)",
              "matrix_sha256": hashlib.sha256(np.round(R.matrix(), 6).tobytes()).hexdigest()}
    np.testing.assert_array_equal(coh.rotation_from_dict(legacy).matrix(), R.matrix())
    with pytest.raises(ValueError, match="version-1 checksum"):
        coh.rotation_from_dict(dict(legacy, matrix_sha256="a" * 64))


# ---------------------------------------------------------------- stored dicts

STORED = {"randomized_hadamard": coh.RandomizedHadamard(576, 1).to_dict(),
          "random_orthogonal": coh.RandomOrthogonal(20, 1).to_dict()}


@pytest.mark.parametrize("kind, key", [("randomized_hadamard", k) for k in
                                       ("n", "seed", "construction", "signs_sha256")] +
                         [("random_orthogonal", k) for k in
                          ("n", "seed", "construction", "gaussian_sha256")])
def test_stored_dict_missing_a_key_names_it(kind, key):
    d = dict(STORED[kind])
    del d[key]
    with pytest.raises(ValueError, match=f"lacks the key '{key}'"):
        coh.rotation_from_dict(d)


@pytest.mark.parametrize("kind, change, match", [
    ("randomized_hadamard", {"version": True}, "version True"),
    ("randomized_hadamard", {"version": 1.0}, "version 1.0"),
    ("randomized_hadamard", {"version": "1"}, "version '1'"),
    ("randomized_hadamard", {"version": 2}, "version 2"),
    ("random_orthogonal", {"version": 3}, "version 3"),
    ("randomized_hadamard", {"n": "576"}, "'n' must be a positive integer"),
    ("randomized_hadamard", {"n": 576.0}, "'n' must be a positive integer"),
    ("random_orthogonal", {"n": 20.9}, "'n' must be a positive integer"),
    ("random_orthogonal", {"n": "20"}, "'n' must be a positive integer"),
    ("random_orthogonal", {"n": True}, "'n' must be a positive integer"),
    ("random_orthogonal", {"seed": -1}, "'seed' must be a non-negative integer"),
    ("randomized_hadamard", {"seed": None}, "'seed' must be a non-negative integer"),
    ("randomized_hadamard", {"construction": 5}, "'construction' must be a string"),
    ("random_orthogonal", {"construction": "paley1(q=19)"}, "construction 'paley1"),
    ("randomized_hadamard", {"signs_sha256": 0}, "'signs_sha256' must be 64"),
    ("random_orthogonal", {"gaussian_sha256": "xyz"}, "'gaussian_sha256' must be 64"),
])
def test_stored_dict_with_a_wrong_field_is_refused_clearly(kind, change, match):
    with pytest.raises(ValueError, match=match):
        coh.rotation_from_dict(dict(STORED[kind], **change))


def test_relabelled_or_non_dict_stored_rotations_are_refused_clearly():
    relabelled = dict(STORED["randomized_hadamard"], kind="random_orthogonal")
    with pytest.raises(ValueError, match="lacks the key 'matrix_sha256'"):
        coh.rotation_from_dict(relabelled)
    with pytest.raises(ValueError, match="not a 'randomized_hadamard' rotation dict"):
        coh.RandomizedHadamard.from_dict(STORED["random_orthogonal"])
    with pytest.raises(ValueError, match="must be a dict"):
        coh.RandomOrthogonal.from_dict([("kind", "random_orthogonal")])
    assert coh.rotation_from_dict(None) is None


# ---------------------------------------------------------------- torch dtypes, grads, sync

LOW_PRECISION = [(torch.float16, 2.0**-10), (torch.bfloat16, 2.0**-7)]


@pytest.mark.parametrize("dtype, eps", LOW_PRECISION)
@pytest.mark.parametrize("backend", coh.BACKENDS)
def test_half_precision_tensors_work_on_every_tier(dtype, eps, backend):
    R = coh.RandomizedHadamard(1536, 3)
    x = torch.randn(4, 1536, dtype=torch.float64).to(dtype)
    exact = R.forward(x.double(), backend="reference").numpy()   # of the rounded input
    y = R.forward(x, backend=backend)
    back = R.inverse(y, backend=backend)
    assert y.dtype == dtype and back.dtype == dtype and y.shape == x.shape
    if backend == "torch":          # computed in the dtype itself: a few roundings
        np.testing.assert_allclose(y.double().numpy(), exact, rtol=0,
                                   atol=4 * eps * np.abs(exact).max())
    else:                           # float32, then one rounding to the dtype
        np.testing.assert_allclose(y.double().numpy(), exact, rtol=eps, atol=2.0**-24)
    np.testing.assert_allclose(back.double().numpy(), x.double().numpy(), rtol=0,
                               atol=8 * eps * np.abs(exact).max())


@pytest.mark.parametrize("backend", coh.BACKENDS)
def test_half_precision_overflow_is_reported(backend):
    R = coh.RandomizedHadamard(12, 0)
    x = torch.tensor(60000.0 * R.signs, dtype=torch.float16)   # H (s x) = 60000 sqrt(12) e_0
    with pytest.raises(ValueError, match="overflow"):
        R.forward(x, backend=backend)


@pytest.mark.parametrize("backend", ["reference", "numba"])
def test_numpy_tiers_refuse_tensors_that_need_gradients(backend):
    R = coh.RandomizedHadamard(36, 0)
    x = torch.randn(2, 36, requires_grad=True)
    with pytest.raises(ValueError, match="cannot carry gradients.*backend='torch'"):
        R.forward(x, backend=backend)
    with torch.no_grad():                            # as rotate_llama_block does
        y = R.forward(x, backend=backend)
    np.testing.assert_allclose(y.numpy(), R.forward(x.detach().numpy()), atol=1e-6)
    assert not y.requires_grad


def test_torch_tier_carries_gradients():
    R = coh.RandomizedHadamard(576, 0)
    x = torch.randn(3, 576, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 576, dtype=torch.float64)
    (R.forward(x) * g).sum().backward()             # d/dx <g, R x> = R^T g
    np.testing.assert_allclose(x.grad.numpy(), R.inverse(g.numpy()), atol=1e-12)


def test_torch_tier_reads_back_one_value_per_call_and_runs_on_meta(monkeypatch):
    reads = []
    for name in ("__float__", "__bool__", "__int__", "item", "tolist"):
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _original=original, _name=name, **kwargs):
            reads.append(_name)
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, counting)
    x = torch.randn(4, 576)
    for R in (coh.RandomizedHadamard(576, 0), coh.RandomOrthogonal(576, 0)):
        reads.clear()
        R.forward(x, backend="torch")
        assert len(reads) <= 1, reads
        y = R.forward(torch.empty(4, 576, device="meta"))      # no values, no read-back
        assert y.device.type == "meta" and y.shape == (4, 576)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="meta"):
        coh.RandomizedHadamard(576, 0).forward(torch.empty(2, 576, device="meta"),
                                               backend="numba")


def test_rotate_llama_block_on_a_bfloat16_model_with_numba():
    import copy
    layer = _tiny_llama().model.layers[0]
    R_res, R_head, R_ffn = (coh.RandomizedHadamard(48, 1), coh.RandomizedHadamard(16, 2),
                            coh.RandomizedHadamard(96, 3))
    exact = coh.rotate_llama_block(layer, R_res, R_head, R_ffn)         # float64
    bf16 = copy.deepcopy(layer).to(torch.bfloat16)
    for backend in ("numba", "torch"):
        new = coh.rotate_llama_block(bf16, R_res, R_head, R_ffn, backend=backend)
        for name in ("self_attn.q_proj", "self_attn.o_proj", "self_attn.v_proj",
                     "mlp.up_proj", "mlp.down_proj.1"):
            got, want = (new.get_submodule(name).weight,
                         exact.get_submodule(name).weight)
            assert got.dtype == torch.bfloat16
            assert (got.double() - want).abs().max() < 2.0**-6 * want.abs().max(), name


# ---------------------------------------------------------------- axis and statistics

@pytest.mark.parametrize("axis", [True, 1.0, np.float64(0), "1", None])
def test_axis_must_be_an_integer(axis):
    x = np.ones((12, 12))
    for apply in (lambda: coh.hadamard_transform(x, axis=axis),
                  lambda: coh.RandomizedHadamard(12, 0).forward(x, axis=axis),
                  lambda: coh.RandomOrthogonal(12, 0).forward(torch.ones(12, 12), axis=axis)):
        with pytest.raises(TypeError, match="axis must be an integer"):
            apply()
    R = coh.RandomizedHadamard(12, 0)
    np.testing.assert_array_equal(R.forward(x, axis=np.int64(0)), R.forward(x, axis=0))


def test_statistics_refuse_nan_constant_and_zero_input_clearly():
    bad = np.ones((4, 128))
    bad[1, 2] = np.nan
    for stat in (coh.incoherence, coh.excess_kurtosis, coh.beta_law_ks,
                 coh.sphere_coordinates):
        with pytest.raises(ValueError, match="NaN or Inf"):
            stat(bad)
        with pytest.raises(ValueError, match="non-empty"):
            stat(np.zeros((0, 128)))
        for complex_input in (np.ones((2, 128), dtype=complex),
                              torch.ones(2, 128, dtype=torch.complex64)):
            with pytest.raises(TypeError, match="real"):
                stat(complex_input)
    with pytest.raises(ValueError, match="constant"):
        coh.excess_kurtosis(np.full((3, 3), 2.5))
    with pytest.raises(ValueError, match="every group of W is zero"):
        coh.beta_law_ks(np.zeros((2, 128)))
    for group, stat in ((0, coh.beta_law_ks), (1, coh.beta_law_ks), (True, coh.beta_law_ks),
                        (2.0, coh.beta_law_ks), (0, coh.sphere_coordinates)):
        with pytest.raises(ValueError, match="group must be"):
            stat(np.ones((2, 128)), group)


def test_statistics_accept_bfloat16_and_extreme_scales():
    rng = np.random.default_rng(0)
    W = rng.standard_normal((64, 128))
    Wb = torch.from_numpy(W).to(torch.bfloat16)
    assert coh.incoherence(Wb) == pytest.approx(coh.incoherence(Wb.double()), rel=1e-12)
    for scale in (1e-200, 1e200):       # statistics are scale-free; no over/underflow
        assert coh.incoherence(W * scale) == pytest.approx(coh.incoherence(W), rel=1e-12)
        assert coh.excess_kurtosis(W * scale) == pytest.approx(coh.excess_kurtosis(W),
                                                               rel=1e-9)
        assert coh.beta_law_ks(W * scale) == pytest.approx(coh.beta_law_ks(W), rel=1e-9)

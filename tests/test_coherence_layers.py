"""Tests of pvqref.coherence's rotated layers: rotated weights and linear layers, and
rotated LLaMA decoder blocks that leave a tiny model's output unchanged."""

import numpy as np
import pytest
import torch

from pvqref import coherence as coh


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


def test_rotated_residual_stream_leaves_the_model_output_unchanged():
    import copy
    model = _tiny_llama()
    with torch.no_grad():
        model.model.norm.weight.uniform_(0.5, 2.0)       # the head's fold is exercised too
    ids = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(1))
    rotated = coh.rotate_llama_model(copy.deepcopy(model), coh.RandomizedHadamard(48, 4))
    with torch.no_grad():
        before, after = model(ids).logits, rotated(ids).logits
    assert (after - before).abs().max() < 1e-6            # float32 RMSNorm, as above
    assert not rotated.config.tie_word_embeddings
    assert rotated.lm_head.weight.data_ptr() != rotated.model.embed_tokens.weight.data_ptr()
    assert (rotated.model.norm.weight == 1).all()
    # the embedding really is rotated: row e becomes R e
    R = coh.RandomizedHadamard(48, 4)
    torch.testing.assert_close(rotated.model.embed_tokens.weight,
                               R.forward(model.model.embed_tokens.weight, axis=1,
                                         backend="torch"))
    with pytest.raises(ValueError, match="hidden size is 48"):
        coh.rotate_llama_model(copy.deepcopy(model), coh.RandomizedHadamard(64, 4))


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

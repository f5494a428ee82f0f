"""Tests of pvqref.vq: the three tiers' nearest-entry search, k-means, the stage plan
and its bit count, and the VQ quantizer with GPTQ's feedback."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from conftest import save_and_reload_exactly
from pvqref import hessian, vq
from pvqref.vq import quantizer

torch.set_num_threads(1)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10 ** 6), st.integers(1, 300), st.integers(1, 64), st.integers(1, 8))
def test_the_three_tiers_pick_the_same_entries(seed, N, k, v):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, v))
    C = rng.standard_normal((k, v))
    C[k // 2] = C[0]                                          # an exact tie: lowest index
    ref = vq.assign(X, C, "reference")
    assert np.array_equal(vq.assign(X, C, "numba"), ref)
    assert np.array_equal(vq.assign(torch.from_numpy(X), torch.from_numpy(C), "torch").numpy(),
                          ref)
    d = ((X[:, None, :] - C[None]) ** 2).sum(-1)
    np.testing.assert_allclose(d[np.arange(N), ref], d.min(axis=1), rtol=1e-12)
    if k > 1:
        assert not np.any(ref == k // 2) or k // 2 == 0


def test_kmeans_tiers_agree_and_lower_the_distortion():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((2000, 6))
    w = rng.uniform(0.5, 2, 2000)
    books = {b: np.asarray(vq.kmeans(X if b != "torch" else torch.from_numpy(X), 64, w, 8,
                                     seed=3, backend=b)) for b in ("reference", "numba", "torch")}
    np.testing.assert_allclose(books["numba"], books["reference"], rtol=1e-12)
    np.testing.assert_allclose(books["torch"], books["reference"], rtol=1e-10, atol=1e-12)

    def distortion(C):
        return float(np.sum(w * np.sum((X - C[vq.assign(X, C)]) ** 2, axis=1)))
    start = vq.kmeans(X, 64, w, 0, seed=3)
    assert distortion(books["reference"]) < 0.8 * distortion(start)
    with pytest.raises(ValueError, match="cannot train"):
        vq.kmeans(X[:10], 64)


def test_plan_stages_fits_the_budget_codebooks_included():
    for shape, bpw in (((576, 576), 3.25), ((1536, 576), 2.25), ((576, 1536), 4.25)):
        ks = vq.plan_stages(shape, bpw)
        assert vq.stage_bits(shape, ks) <= bpw * shape[0] * shape[1]
        assert list(ks) == sorted(ks, reverse=True) and max(ks) <= vq.MAX_INDEX_BITS
    # a 576 x 576 layer: a 12-bit codebook costs 4096 * 6 * 16 bits = 1.19 bpw by itself
    assert vq.stage_bits((576, 576), (12,)) == 12 * 576 * 96 + 4096 * 96
    with pytest.raises(ValueError, match="no codebook fits"):
        vq.plan_stages((6, 8), 0.5)


def test_vq_quantize_codes_its_reconstruction_and_feedback_lowers_the_proxy_loss():
    rng = np.random.default_rng(2)
    W = rng.standard_normal((48, 96))
    A = rng.standard_normal((96, 96))
    X = rng.standard_normal((400, 96)) @ (np.eye(96) + 0.3 * A)
    H = X.T @ X / 400
    Q, codes = quantizer.vq_quantize(W, H, 3.0, iters=4)
    assert np.array_equal(Q, codes.dequantize())
    assert codes.bit_counts()["total"] <= 3.0 * W.size
    Q0, _ = quantizer.vq_quantize(W, H, 3.0, iters=4, feedback=False)
    assert hessian.proxy_loss(W, Q, H) < hessian.proxy_loss(W, Q0, H)
    with pytest.raises(ValueError, match="47 output rows, not a multiple"):
        quantizer.vq_quantize(W[:47], H, 3.0)


def test_vq_in_the_pipeline_packs_and_reloads_bit_for_bit(tmp_path, small_llama):
    from pvqref import packed, pipeline
    model, windows = small_llama(hidden=96, intermediate=192, windows=(8, 32))
    q, reports = pipeline.quantize_model(model, "vq", 3.25, windows, keep_codes=True,
                                         rotation=None)
    assert all(r.bits_per_weight <= 3.25 for r in reports)
    path = save_and_reload_exactly(q, reports, tmp_path / "p", windows)
    info = packed.inspect(path)
    assert info["bits_per_weight_on_disk"] <= info["bits_per_weight_claimed"] + 0.01


def test_wcsg_row_groups_of_vq_matrices_fit_and_reload(tmp_path, small_llama):
    from pvqref import codes, packed, pipeline
    from pvqref.rsavq import fisher
    model, windows = small_llama(hidden=96, intermediate=192, windows=(8, 32))
    I = {n: f.fisher.sensitivity(f.gradient)
         for n, f in fisher.layer_fishers(model, windows).items()}
    q, reports = pipeline.quantize_model(model, "vq", 4.25, windows, keep_codes=True,
                                         rotation=None, sensitivities=I, wcsg_groups=2)
    for r in reports:
        assert isinstance(r.codes, codes.RowGroupCodes) and r.bits_per_weight <= 4.25
        assert all(len(rows) % 6 == 0 for rows in r.codes.rows)
    path = packed.save(q, reports, tmp_path / "p", dtype=torch.float32)
    loaded = packed.load(path)
    for r in reports:
        assert torch.equal(loaded.get_submodule(r.name).weight, q.get_submodule(r.name).weight)


def test_the_torch_tier_runs_the_whole_quantizer_and_agrees_with_numpy():
    rng = np.random.default_rng(4)
    W = rng.standard_normal((36, 64))
    X = rng.standard_normal((300, 64))
    H = X.T @ X / 300
    Q, codes = quantizer.vq_quantize(W, H, 3.0, iters=4)
    Qt, codes_t = quantizer.vq_quantize(torch.from_numpy(W), torch.from_numpy(H), 3.0,
                                        iters=4, backend="torch")
    assert isinstance(Qt, torch.Tensor) and codes_t.index_bits == codes.index_bits
    assert np.array_equal(Qt.numpy(), codes_t.dequantize())
    for a, b in zip(codes.indices, codes_t.indices):      # the same floats, the same picks
        assert np.array_equal(a, b)
    assert np.array_equal(Qt.numpy(), Q)

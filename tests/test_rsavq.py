"""Tests of pvqref.rsavq: the Kronecker and diagonal Fisher against their dense matrices,
the natural gradient as a solve, the tiers against each other, EDSG's target, WCSG's
allocation rules, and the Fisher collected from a tiny random LLaMA."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from conftest import save_and_reload_exactly
from pvqref import rsavq
from pvqref.rsavq import allocation, fisher as rfisher

torch.set_num_threads(1)


def gradients(seed, n=7, out=5, inp=4):
    return np.random.default_rng(seed).standard_normal((n, out, inp))


def accumulated(G, kind="kronecker"):
    acc = rsavq.FisherAccumulator(G.shape[1:], kind)
    for g in G:
        acc.add(torch.from_numpy(g))
    return acc


def empirical_fisher(G):
    """E[vec G vec G^T] with row-major vec: the matrix the Kronecker form approximates."""
    V = G.reshape(len(G), -1)
    return V.T @ V / len(G)


def test_kronecker_fisher_is_exact_for_one_rank_one_gradient():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(5), rng.standard_normal(4)
    G = np.stack([np.outer(a, b)] * 3)
    F = accumulated(G).fisher(damp=0.0)
    np.testing.assert_allclose(F.dense(), empirical_fisher(G), rtol=1e-12, atol=1e-12)


def test_kronecker_fisher_keeps_the_trace_and_the_mean_gradient():
    G = gradients(1)
    acc = accumulated(G)
    F = acc.fisher(damp=0.0)
    assert np.trace(F.dense()) == pytest.approx(np.trace(empirical_fisher(G)), rel=1e-12)
    np.testing.assert_allclose(acc.mean_gradient(), G.mean(axis=0), rtol=1e-12)
    D = accumulated(G, "diagonal").fisher(damp=0.0)
    np.testing.assert_allclose(D.dense(), np.diag(np.diag(empirical_fisher(G))), rtol=1e-12)


@pytest.mark.parametrize("kind", ["kronecker", "diagonal"])
@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_natural_gradient_solves_f_x_equals_g(kind, backend):
    G = gradients(2)
    F = accumulated(G, kind).fisher(damp=0.01)
    g = G.mean(axis=0)
    x = F.natural_gradient(torch.from_numpy(g) if backend == "torch" else g, backend)
    x = np.asarray(x)
    np.testing.assert_allclose(F.dense() @ x.ravel(), g.ravel(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.asarray(F.apply(x, backend)), g, rtol=1e-9, atol=1e-12)
    assert F.norm2(x, backend) == pytest.approx(x.ravel() @ F.dense() @ x.ravel(), rel=1e-10)


@pytest.mark.parametrize("kind", ["kronecker", "diagonal"])
def test_sensitivity_is_the_quadratic_form_of_each_channels_block(kind):
    G = gradients(3)
    F = accumulated(G, kind).fisher()
    g = G.mean(axis=0)
    dense, n = F.dense(), g.shape[1]
    expect = [0.5 * g[c] @ np.linalg.solve(dense[c * n:(c + 1) * n, c * n:(c + 1) * n], g[c])
              + 1 for c in range(g.shape[0])]
    np.testing.assert_allclose(F.sensitivity(g), expect, rtol=1e-10)
    assert F.sensitivity(g).min() >= 1


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10 ** 6), st.sampled_from(["kronecker", "diagonal"]))
def test_the_tiers_agree(seed, kind):
    G = gradients(seed, n=4, out=6, inp=3)
    F = accumulated(G, kind).fisher()
    g = G.mean(axis=0)
    gt = torch.from_numpy(g)
    np.testing.assert_allclose(F.natural_gradient(gt, "torch").numpy(),
                               F.natural_gradient(g, "reference"), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(F.sensitivity(gt, "torch"), F.sensitivity(g, "reference"),
                               rtol=1e-9)
    assert F.norm2(gt, "torch") == pytest.approx(F.norm2(g, "reference"), rel=1e-10)


def test_edsg_target_steers_the_error_downhill_and_lambda_zero_is_the_base():
    G = gradients(4)
    F = accumulated(G).fisher()
    g = G.mean(axis=0)
    W = np.random.default_rng(5).standard_normal(g.shape)
    assert rsavq.edsg_target(W, F, g, 0.0) is W
    for lam in (0.01, 0.05):
        E = rsavq.edsg_target(W, F, g, lam) - W          # the error if T were hit exactly
        assert np.sum(g * E) < 0                          # first-order loss change
        assert np.sum(g * (rsavq.edsg_target(W, F, g, -lam) - W)) > 0
    Wt = torch.from_numpy(W).float()
    T = rsavq.edsg_target(Wt, F, torch.from_numpy(g), 0.05)
    assert T.dtype == torch.float32
    np.testing.assert_allclose(T.numpy(), rsavq.edsg_target(W, F, g, 0.05), rtol=1e-6,
                               atol=1e-6)
    relative = rsavq.edsg_target(W, F, g, 0.05) - W
    assert np.linalg.norm(relative) == pytest.approx(0.05 * np.linalg.norm(W), rel=1e-12)
    raw = rsavq.edsg_target(W, F, g, 0.05, step="raw") - W
    np.testing.assert_allclose(raw, -0.05 * F.natural_gradient(g), rtol=1e-12)
    np.testing.assert_allclose(raw / np.linalg.norm(raw), relative / np.linalg.norm(relative),
                               rtol=1e-9)


def test_edsg_shifts_feed_the_pipeline_and_lambda_zero_is_the_base(small_llama):
    from pvqref import pipeline
    model, windows = small_llama()
    fishers = rfisher.layer_fishers(model, windows)
    weights = {n: model.get_submodule(n).weight.detach() for n in fishers}
    assert rsavq.edsg_shifts(fishers, weights, 0.0) == {}
    shifts = rsavq.edsg_shifts(fishers, weights, 0.05)
    base, _ = pipeline.quantize_model(model, "pvq-h", 3.25, windows, L=16)
    again, _ = pipeline.quantize_model(model, "pvq-h", 3.25, windows, L=16, shifts={})
    steered, rep = pipeline.quantize_model(model, "pvq-h", 3.25, windows, L=16, shifts=shifts)
    name = "model.layers.0.mlp.down_proj"
    W0, Wb = (m.get_submodule(name).weight.detach() for m in (model, base))
    assert torch.equal(again.get_submodule(name).weight, Wb)
    assert not torch.equal(steered.get_submodule(name).weight, Wb)
    g = torch.from_numpy(fishers[name].gradient).float()
    E_base = Wb - W0
    E_steered = steered.get_submodule(name).weight.detach() - W0
    assert float((g * E_steered).sum()) < float((g * E_base).sum())     # more downhill


def test_bad_input_gets_clear_errors():
    acc = rsavq.FisherAccumulator((2, 3))
    with pytest.raises(ValueError, match="not finite"):
        acc.add(torch.tensor([[1.0, float("nan"), 0], [0, 0, 0]]))
    with pytest.raises(ValueError, match="shape"):
        acc.add(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="no gradients"):
        acc.fisher()
    acc.add(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="singular|zero"):
        acc.fisher()
    with pytest.raises(ValueError, match="singular"):
        rsavq.DiagonalFisher.from_diagonal(np.zeros((2, 3)))
    F = accumulated(gradients(6)).fisher()
    with pytest.raises(ValueError, match="shape"):
        F.natural_gradient(np.zeros((4, 5)))
    with pytest.raises(ValueError, match="finite|NaN"):
        F.natural_gradient(np.full((5, 4), np.inf))


# -- allocation -----------------------------------------------------------------------------

sensitivities = st.lists(st.floats(1.0, 1e6), min_size=4, max_size=40)


@settings(max_examples=60, deadline=None)
@given(sensitivities, st.floats(0.5, 6.0))
def test_both_rules_spend_the_budget_and_lagrange_is_never_worse(I, bpw):
    I = np.array(I)
    lag = allocation.lagrange_rule(I, bpw)
    assert lag.min() >= 0 and lag.sum() == pytest.approx(I.size * bpw, rel=1e-9)
    if np.log2(I).sum() > 1e-9:
        paper = allocation.paper_rule(I, bpw)
        assert paper.sum() == pytest.approx(I.size * bpw, rel=1e-9)
        assert (allocation.model_distortion(I, lag)
                <= allocation.model_distortion(I, paper) * (1 + 1e-9))


@settings(max_examples=60, deadline=None)
@given(sensitivities, st.floats(0.5, 6.0))
def test_lagrange_equalises_the_marginal_distortion(I, bpw):
    I = np.array(I)
    b = allocation.lagrange_rule(I, bpw)
    marginal = I * 2.0 ** (-2 * b)
    active = b > 1e-9
    np.testing.assert_allclose(marginal[active], marginal[active].max(), rtol=1e-6)
    assert np.all(I[~active] <= marginal[active].max() * (1 + 1e-6))


@settings(max_examples=60, deadline=None)
@given(sensitivities, st.integers(0, 400), st.sampled_from([None, 40]))
def test_rounding_meets_the_budget_exactly(I, units, maximum):
    b = allocation.lagrange_rule(np.array(I), 3.0)
    if maximum is not None and units > maximum * len(I):
        with pytest.raises(ValueError, match="cannot be met"):
            allocation.round_to_budget(b, units, maximum)
        return
    n = allocation.round_to_budget(b, units, maximum)
    assert n.sum() == units and n.min() >= 0
    assert maximum is None or n.max() <= maximum


def test_groups_partition_the_channels_by_sensitivity_and_keep_the_total():
    I = np.random.default_rng(7).lognormal(2, 1, 30) + 1
    groups = allocation.sensitivity_groups(I, 4)
    assert sorted(np.concatenate(groups).tolist()) == list(range(30))
    assert [len(g) for g in groups] == [8, 8, 7, 7]
    assert all(I[a].min() >= I[b].max() for a, b in zip(groups, groups[1:]))
    n = allocation.round_to_budget(allocation.lagrange_rule(I, 3.0), 90)
    bits = allocation.group_bits(n, groups)
    assert bits.sum() == 90 and bits[0] >= bits[-1]


def test_allocation_refuses_bad_input():
    with pytest.raises(ValueError, match=">= 1"):
        allocation.lagrange_rule([0.5, 2.0], 3)
    with pytest.raises(ValueError, match="not finite"):
        allocation.paper_rule([np.nan, 2.0], 3)
    with pytest.raises(ValueError, match="undefined"):
        allocation.paper_rule([1.0, 1.0], 3)
    with pytest.raises(ValueError, match="groups"):
        allocation.sensitivity_groups([2.0, 3.0], 4)
    with pytest.raises(ValueError, match="rule"):
        allocation.allocate([2.0, 3.0], 3, "greedy")


# -- from a model ---------------------------------------------------------------------------

def test_layer_fishers_accumulate_the_per_sequence_gradients(small_llama):
    model, windows = small_llama(hidden=32, intermediate=64, layers=2, windows=(3, 12))
    names = rfisher.linear_layers(model, [1])
    assert len(names) == 7 and all(n.startswith("model.layers.1.") for n in names)
    stats = rfisher.layer_fishers(model, windows, names, damp=0.0)
    name = "model.layers.1.mlp.down_proj"
    w = model.get_submodule(name).weight
    G = []
    for row in windows:
        model.zero_grad()
        model(row[None], labels=row[None]).loss.backward()
        G.append(w.grad.double().numpy().copy())
    G = np.stack(G)
    np.testing.assert_allclose(stats[name].gradient, G.mean(axis=0), rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(stats[name].fisher.A, np.einsum("sij,skj->ik", G, G) / 3,
                               rtol=1e-6, atol=1e-14)
    assert stats[name].sequences == 3
    with pytest.raises(ValueError, match="block 5"):
        rfisher.linear_layers(model, [5])


# -- WCSG on PVQ ----------------------------------------------------------------------------

def test_row_groups_fit_the_budget_and_one_group_is_plain_pvq():
    from pvqref import gain
    from pvqref.rsavq import wcsg
    I = np.random.default_rng(8).lognormal(2, 1, 96) + 1
    for bpw in (2.25, 3.25, 4.25):
        plan = wcsg.plan_row_groups((96, 256), bpw, I, 64, 3)
        assert plan.budget_bits == int(bpw * 96 * 256)
        assert 0 <= plan.unused_bits and plan.used_bits == 96 * 2 + sum(
            c.bits((len(r), 256)) for r, c in zip(plan.rows, plan.configs))
        assert [c.K for c in plan.configs] == sorted((c.K for c in plan.configs), reverse=True)
        one = wcsg.plan_row_groups((96, 256), bpw, I, 64, 3, groups=1)
        assert one.configs == (gain.config_for_rate(64, (96, 256), bpw, 3),)
    with pytest.raises(ValueError, match="too few for its smallest format"):
        wcsg.plan_row_groups((8, 256), 0.06, np.full(8, 2.0), 64, 3, groups=4)
    with pytest.raises(ValueError, match="one sensitivity per output channel"):
        wcsg.plan_row_groups((8, 256), 3.25, np.full(7, 2.0), 64, 3)


def test_the_pipeline_codes_each_row_group_as_its_own_pvq_matrix(small_llama):
    from pvqref import codes, hessian, pipeline
    model, windows = small_llama()
    fishers = rfisher.layer_fishers(model, windows)
    I = {n: f.fisher.sensitivity(f.gradient) for n, f in fishers.items()}
    q, reports = pipeline.quantize_model(model, "pvq-h", 3.25, windows, L=16,
                                         sensitivities=I, keep_codes=True, rotation=None)
    for r in reports:
        assert isinstance(r.codes, codes.RowGroupCodes) and len(r.codes.parts) == 4
        assert r.bits_per_weight <= 3.25
        assert r.bits_per_weight * r.shape[0] * r.shape[1] == r.plan.pvq.used_bits
    name = "model.layers.0.self_attn.q_proj"        # the first input: H as collected here
    r = next(r for r in reports if r.name == name)
    rows, cfg0 = r.plan.pvq.rows[0], r.plan.pvq.configs[0]
    # the most sensitive group decodes to the PVQ-H of its rows alone (the same H)
    from pvqref.hessian import calibration
    inputs = calibration.first_block_inputs(model, windows)
    H = calibration.input_second_moment(model.model.layers[0], inputs, "self_attn.q_proj")
    W = model.get_submodule(name).weight.detach().double()
    alone = hessian.pvq_quantize(W[torch.as_tensor(rows)], H, cfg0, search="hessian")
    torch.testing.assert_close(q.get_submodule(name).weight.double()[torch.as_tensor(rows)],
                               alone.Q.float().double(), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="need a PVQ method"):
        pipeline.quantize_model(model, "gptq", 3.25, windows, sensitivities=I)


def test_row_groups_pack_and_reload_bit_for_bit(tmp_path, small_llama):
    from pvqref import packed, pipeline
    model, windows = small_llama(tie=True)
    fishers = rfisher.layer_fishers(model, windows)
    I = {n: f.fisher.sensitivity(f.gradient) for n, f in fishers.items()}
    q, reports = pipeline.quantize_model(model, "pvq-h", 3.25, windows, L=16,
                                         sensitivities=I, keep_codes=True)
    path = save_and_reload_exactly(q, reports, tmp_path / "p", windows)
    info = packed.inspect(path)
    weights = sum(r.shape[0] * r.shape[1] for r in reports)
    tensors_per_layer = 1 + 4 * 4                # labels, and 4 tensors per row group
    slack = 8 * tensors_per_layer * len(reports) / weights      # whole bytes per tensor
    assert info["bits_per_weight_on_disk"] <= info["bits_per_weight_claimed"] + slack
    assert info["bits_per_weight_claimed"] <= 3.25
    spec = packed.read_config(path)[1]["layers"][reports[0].name]
    assert [g["rows"] for g in spec["row_groups"]] == [len(r) for r in reports[0].codes.rows]
    # labels that do not match the spec's group sizes are refused, naming the tensor
    tensors = {s: t.clone() for s, t in packed.layer_tensors(reports[0].codes).items()}
    tensors["row_group"][0] ^= 1
    with pytest.raises(packed.PackedModelError, match="row_group"):
        packed.layer_codes(reports[0].name, spec, tensors)


def test_rsavq_switched_off_or_at_lambda_zero_is_the_base_bit_for_bit(small_llama):
    from pvqref import pipeline
    from pvqref.rsavq import quantize as rq
    model, windows = small_llama()
    base, _ = pipeline.quantize_model(model, "pvq-h", 3.25, windows, L=16)
    for off in (rq.RSAVQ(edsg=False, wcsg=False), rq.RSAVQ(lam=0.0, wcsg=False)):
        same, _ = rq.quantize_model(model, "pvq-h", 3.25, windows, off, L=16)
        for (k, a), b in zip(base.state_dict().items(), same.state_dict().values()):
            assert torch.equal(a, b), k
    both, reports = rq.quantize_model(model, "pvq-h", 3.25, windows, rq.RSAVQ(), L=16)
    assert all(r.bits_per_weight <= 3.25 for r in reports)
    with pytest.raises(ValueError, match="calibration windows"):
        rq.quantize_model(model, "pvq-h", 3.25, None)
    with pytest.raises(ValueError, match="rule"):
        rq.RSAVQ(rule="greedy")

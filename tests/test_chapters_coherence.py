"""The coherence chapter's helpers that hold logic: the float64 comparison's context
(it must patch RMSNorm and put the model back, also on an error) and the speed ratios."""

import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from pvqref.bench.coherence import SIZES
from pvqref.chapters import coherence as chapter


def _rms_norm_in_float64(norm, h):
    return norm.weight * h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)


def _assert_restored(model, own, blocks):
    assert model.model.layers is own
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(p.dtype == torch.float32 for b in blocks for p in b.parameters())
    assert LlamaRMSNorm.forward is not chapter.rms_norm_in_input_dtype
    assert torch.is_grad_enabled()


def test_float64_model_computes_in_float64_and_puts_the_model_back(small_llama):
    model, ids = small_llama(layers=2)
    own, blocks = model.model.layers, [b for b in model.model.layers]
    h = torch.randn(3, 64, dtype=torch.float64)
    with chapter.float64_model(model, blocks[:1]):
        assert len(model.model.layers) == 1 and not torch.is_grad_enabled()
        assert model(ids).logits.dtype == torch.float64
        norm = model.model.norm
        assert torch.equal(norm(h), _rms_norm_in_float64(norm, h))   # no float32 cast
    _assert_restored(model, own, blocks)
    # transformers' own RMSNorm (restored) rounds through float32: the check above can fail
    norm = model.model.norm.double()
    assert not torch.equal(norm(h), _rms_norm_in_float64(norm, h))


def test_float64_model_puts_the_model_back_after_an_error(small_llama):
    model, _ = small_llama()
    own, blocks = model.model.layers, list(model.model.layers)
    with pytest.raises(RuntimeError, match="inside"):
        with chapter.float64_model(model, blocks):
            raise RuntimeError("inside")
    _assert_restored(model, own, blocks)


def test_speed_ratio_table_divides_by_the_faster_dense_product():
    rows = []
    for n in SIZES:
        rates = {"numba": 400.0, "dense x @ R^T (numpy)": 100.0,
                 "dense x @ R^T (torch)": 200.0, f"linear {n}->{n} (torch)": 300.0}
        rows += [{"n": n, "method": m, "vectors_per_s": v} for m, v in rates.items()]
    lines = str(chapter.speed_ratio_table(rows)).splitlines()
    assert lines[2:] == [f"| {n} | 2.0 | 75% |" for n in SIZES]

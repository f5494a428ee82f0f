"""Tests of pvqref.coherence's fast transform: the three tiers against the dense matrix and
each other, containers, dtypes, devices, gradients, read-backs, bad input, and which tier
imports what."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pvqref import coherence as coh


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


# ---------------------------------------------------------------- axis

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


# ---------------------------------------------------------------- tiers: choice and imports

def test_auto_and_none_pick_numba_for_arrays_and_torch_for_tensors():
    R = coh.RandomizedHadamard(576, 0)
    x = np.random.default_rng(0).standard_normal((3, 576)).astype(np.float32)
    for backend in ("auto", None):
        np.testing.assert_array_equal(R.forward(x, backend=backend),
                                      R.forward(x, backend="numba"))
        xt = torch.from_numpy(x)
        assert torch.equal(R.forward(xt, backend=backend), R.forward(xt, backend="torch"))
    assert coh.BACKENDS == ("reference", "numba", "torch")


def _run_isolated(code: str) -> None:
    """Run ``code`` in a fresh interpreter; fail with its stderr if it fails."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr


def test_reference_tier_and_constructions_import_neither_numba_nor_torch():
    # The package's __init__ loads torch (for the layers), so the two files are imported
    # under a bare stand-in for the package: what they import themselves is all that runs.
    _run_isolated("""if True:
        import pathlib, sys, types
        import numpy as np
        sys.modules["numba"] = None                  # any import of them now fails
        sys.modules["torch"] = None
        import pvqref
        package = types.ModuleType("pvqref.coherence")
        package.__path__ = [str(pathlib.Path(pvqref.__file__).parent / "coherence")]
        sys.modules["pvqref.coherence"] = package
        from pvqref.coherence import constructions, reference
        n = 576
        k, M, _ = constructions._require(n)
        x = np.random.default_rng(0).standard_normal((2, n))
        y = reference.transform(x, constructions._base_matrix(k), M)
        assert np.abs(y - x @ constructions.hadamard(n).T).max() < 1e-12
    """)


def test_torch_tier_and_the_package_import_without_numba():
    _run_isolated("""if True:
        import sys
        sys.modules["numba"] = None                  # any import of numba now fails
        import torch
        from pvqref import coherence as coh
        from pvqref.coherence import _torch
        x = torch.randn(2, 576, dtype=torch.float64)
        R = coh.RandomizedHadamard(576, 0)
        y = R.forward(x)                             # auto: the torch tier for a tensor
        assert (R.inverse(y) - x).abs().max() < 1e-12
        assert (R.forward(x, backend="reference") - y).abs().max() < 1e-12
    """)

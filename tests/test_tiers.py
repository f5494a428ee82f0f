"""The shared tier resolver and input checks (pvqref._tiers, pvqref._checks)."""

import numpy as np
import pytest
import torch

from pvqref import _checks, _tiers


def test_auto_picks_torch_for_tensors_and_numba_for_arrays():
    assert _tiers.resolve("auto", np.ones(3)) == "numba"
    assert _tiers.resolve(None, np.ones(3)) == "numba"
    assert _tiers.resolve("auto", np.ones(3), torch.ones(3)) == "torch"
    for name in _tiers.BACKENDS:
        assert _tiers.resolve(name, torch.ones(3)) == name
    for bad in ("cuda", "", 3, "Numba"):
        with pytest.raises(ValueError, match="backend"):
            _tiers.resolve(bad, np.ones(3))


def test_output_follows_input():
    t = torch.arange(3.0)
    out = _tiers.like(np.array([1.0, 2.0]), t)
    assert isinstance(out, torch.Tensor) and out.device == t.device
    assert isinstance(_tiers.like(torch.ones(2), np.ones(2)), np.ndarray)
    assert _tiers.to_numpy(torch.ones(2, dtype=torch.bfloat16)).dtype == np.float64
    with pytest.raises(ValueError, match="gradients"):
        _tiers.to_numpy(torch.ones(2, requires_grad=True))
    with pytest.raises(ValueError, match="meta"):
        _tiers.to_numpy(torch.ones(2, device="meta"))


@pytest.mark.parametrize("value", [2.0, 2.5, True, np.bool_(True), "2", None, 1j])
def test_integer_refuses_non_integers_with_type_error(value):
    with pytest.raises(TypeError, match="group size L must be an integer"):
        _checks.integer(value, "group size L")


def test_integer_range_and_real():
    assert _checks.integer(np.int64(5), "n", minimum=1) == 5
    with pytest.raises(ValueError, match="n must be a positive integer"):
        _checks.integer(0, "n", minimum=1)
    with pytest.raises(ValueError, match="n must be at most 3"):
        _checks.integer(4, "n", maximum=3)
    assert _checks.real(np.float32(0.5), "bpw") == 0.5
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="bpw must be finite"):
            _checks.real(bad, "bpw")
    with pytest.raises(TypeError, match="bpw must be a real number"):
        _checks.real("3", "bpw")
    with pytest.raises(ValueError, match="bpw must be positive"):
        _checks.real(0, "bpw", positive=True)


def test_dtype_checks():
    _checks.real_dtype(np.ones(2, np.int8), "x")
    _checks.real_dtype(torch.ones(2, dtype=torch.bfloat16), "x")
    for bad in (np.ones(2, bool), np.ones(2, complex), np.array(["a"]),
                torch.ones(2, dtype=torch.complex64), torch.ones(2, dtype=torch.bool)):
        with pytest.raises(TypeError, match="x must be real"):
            _checks.real_dtype(bad, "x")
    with pytest.raises(TypeError, match="floating-point"):
        _checks.real_dtype(np.ones(2, np.int64), "W", integers=False)
    with pytest.raises(TypeError, match="integer dtype"):
        _checks.integer_dtype(torch.ones(2), "Y")
    with pytest.raises(ValueError, match="W contains NaN or Inf"):
        _checks.finite(torch.tensor([1.0, float("nan")]), "W")

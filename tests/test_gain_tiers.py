"""The tiers of pvqref.gain stand alone: the reference imports neither Numba nor torch,
the torch tier imports no Numba, and every tier defines the same functions. (That the
tiers agree is tested in test_gain_quantizer.py and test_gain_norms.py.)"""

import subprocess
import sys

import pytest

from pvqref import _tiers

TIER_FUNCTIONS = ("matrix", "row_norms", "groups", "reconstruct")


# A finder first on sys.meta_path makes the blocked packages unimportable. (Setting
# sys.modules["torch"] = None blocks them too, but SciPy reads sys.modules["torch"] as a
# module whenever the key is present and fails on None.)
_BLOCK = """
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)")
        return None
sys.meta_path.insert(0, _Block())
"""


def _run_without(blocked, code):
    """Run ``code`` in a fresh interpreter where importing any of ``blocked`` fails."""
    prelude = _BLOCK.format(blocked=tuple(blocked))
    result = subprocess.run([sys.executable, "-c", prelude + code], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_reference_tier_runs_without_numba_and_torch():
    out = _run_without(("numba", "torch"), """
import numpy as np
from pvqref import gain
from pvqref.gain import reference
W = np.random.default_rng(0).standard_normal((3, 32))
cfg = gain.PVQConfig(8, 6, 2)
Q = gain.quantize(W, cfg, "reference")
R = gain.from_bytes(Q.to_bytes(), Q.shape, cfg)
out = gain.dequantize(R, "reference")
assert np.array_equal(out, gain.quantize_dequantize(W, cfg, "reference"))
assert "numba" not in sys.modules and "torch" not in sys.modules
try:
    import torch
except ModuleNotFoundError:
    pass
else:
    raise AssertionError("torch was importable")
print(gain.relative_mse(W, out) < 0.5)
""")
    assert out.strip() == "True"


def test_torch_tier_runs_without_numba():
    out = _run_without(("numba",), """
import numpy as np
import torch
from pvqref import gain
from pvqref.gain import _torch
W = torch.from_numpy(np.random.default_rng(0).standard_normal((3, 32)))
cfg = gain.PVQConfig(8, 6, 2)
out = gain.quantize_dequantize(W, cfg)              # auto: the torch tier for a tensor
Q = gain.quantize(W, cfg, "torch")
assert torch.equal(gain.dequantize(Q, "torch"), out)
assert "numba" not in sys.modules
print(type(out).__name__, gain.relative_mse(W, out) < 0.5)
""")
    assert out.strip() == "Tensor True"


@pytest.mark.parametrize("tier", _tiers.BACKENDS)
def test_every_tier_defines_the_same_functions(tier):
    module = _tiers.load("pvqref.gain", tier)
    assert all(callable(getattr(module, name, None)) for name in TIER_FUNCTIONS)


def test_backend_names():
    from pvqref import gain
    assert gain.BACKENDS == _tiers.BACKENDS == ("reference", "numba", "torch")
    with pytest.raises(ValueError, match="backend"):
        gain.coded_row_norms([[1.0]], gain.PVQConfig(1, 1, 0), "cuda")

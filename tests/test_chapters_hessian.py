"""The Hessian chapter's helpers that hold logic: the check of the live runs against the
recorded ones, the look-up and order of the recorded rows, the share of moved groups,
the spectra and the configuration of output-oriented groups."""

import numpy as np
import pytest
import torch

from pvqref import gain
from pvqref.bench.hessian import METHODS
from pvqref.chapters import hessian as chapter


def test_within_is_relative_and_needs_every_value_close():
    assert chapter.within([100.9, 0.0995], [100.0, 0.1], tol=0.01)
    assert not chapter.within([100.0, 0.102], [100.0, 0.1], tol=0.01)   # 2% off
    assert not chapter.within([98.9], [100.0], tol=0.01)
    with pytest.raises(ValueError):
        chapter.within([1.0, 1.0], [1.0], tol=0.01)                     # no silent zip


def _grid():
    rows = [{"method": m, "bpw_asked": b, "rotation": "input", "bpw": b - 0.01,
             "perplexity": 10.0 + i, "seconds": 60.0, "peak_rss_gb": 1.0}
            for i, (b, m) in enumerate(sorted((b, m) for m in METHODS
                                             for b in (4.25, 2.25)))]
    rows.append({**rows[0], "rotation": None, "perplexity": 99.0})
    return {"rows": rows[::-1]}                               # recorded in another order


def test_recorded_finds_the_one_row_and_tells_none_from_input():
    grid = _grid()
    assert chapter.recorded(grid, "gptq", 2.25)["perplexity"] == 10.0
    assert chapter.recorded(grid, "gptq", 2.25, None)["perplexity"] == 99.0
    with pytest.raises(KeyError):
        chapter.recorded(grid, "gptq", 3.25)


def test_model_table_orders_by_rate_then_method_and_divides_by_the_reference():
    lines = str(chapter.model_table(_grid(), unquantized=2.0)).splitlines()[2:]
    methods = [line.split(" | ")[0].strip("| ") for line in lines]
    assert methods == list(METHODS) * 2
    assert lines[0] == "| rtn | 2.240 | 14.00 | 7.000 |"                # input only


def test_moved_share_counts_groups_not_weights():
    class Result:
        def __init__(self, points):
            self.points = torch.as_tensor(points)
    before = np.zeros((2, 8), dtype=np.int64)
    after = before.copy()
    after[0, 0] = after[0, 1] = 1          # two changes in the first group of row 0
    after[1, 7] = 1                        # one in the last group of row 1
    assert chapter.moved_share(Result(after), Result(before), L=4) == 0.5
    assert chapter.moved_share(Result(after), Result(before), L=2) == 0.25


def test_spectrum_is_sorted_clamped_and_relative_to_the_mean():
    # a negative eigenvalue (rounding errors, here exaggerated) counts as 0
    H = torch.diag(torch.tensor([1.0, 4.0, -0.4, 3.0], dtype=torch.float64))
    assert np.allclose(chapter.spectrum(H), [2.0, 1.5, 0.5, 0.0])


def test_pvq_configures_output_groups_for_the_transposed_shape():
    rng = np.random.default_rng(0)
    W = torch.from_numpy(rng.standard_normal((128, 192)))
    X = torch.from_numpy(rng.standard_normal((512, 192)))
    H = X.T @ X / len(X)
    for orientation, shape in (("input", (128, 192)), ("output", (192, 128))):
        result = chapter.pvq(W, H, orientation=orientation, feedback=False)
        assert result.config == gain.config_for_rate(64, shape, 3.25, 3)
        assert result.orientation == orientation

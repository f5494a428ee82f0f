"""The RSAVQ chapter's reading of its recorded runs: which rows make the paper's ordering,
and when the ordering holds (pvqref.bench.rsavq)."""

from pvqref.bench import rsavq as runs


def _row(ppl, **kw):
    return {"perplexity": ppl, "bpw": 3.2, "top1": 0.8, "kl": 0.1, **kw}


def _records(ppls):
    """A sweep, an ablation and the ORDERING_RUNS files, with the given perplexities of
    (base, +edsg, +edsg +wcsg) per base and rate, in ``orderings``' order."""
    (b, e, w), *rest = ppls
    sweep = {"rows": [_row(99.0, **{"lambda": 0.05}), _row(b, **{"lambda": 0.0}),
                      _row(e, **{"lambda": 0.01})]}
    ablation = {"settings": {"lambda": 0.01},
                "rows": [_row(1.0, label="step only"), _row(w, label="+edsg +wcsg")]}
    files = {name: {"rows": [_row(p, label=s) for s, p in zip(runs.STEPS, trio)]}
             for (_, _, name), trio in zip(runs.ORDERING_RUNS, rest)}
    return sweep, ablation, files


def test_orderings_take_the_sweep_rows_of_lambda_0_and_the_ablations_lambda():
    sweep, ablation, files = _records([(20, 18, 17), (30, 29, 28), (25, 24, 23),
                                       (40, 39, 38)])
    rows = runs.orderings(sweep, ablation, files)
    assert [(m, r) for m, r, _ in rows] == [("pvq-h", 3.25)] + [
        (m, r) for m, r, _ in runs.ORDERING_RUNS]
    assert [s["perplexity"] for s in rows[0][2].values()] == [20, 18, 17]
    assert [s["perplexity"] for s in rows[3][2].values()] == [40, 39, 38]


def test_the_ordering_holds_only_when_each_step_lowers_the_excess():
    fp = {"perplexity": 10.0}
    sweep, ablation, files = _records([(20, 18, 16), (30, 29, 31), (25, 26, 24),
                                       (40, 40, 39)])
    lines = runs.ordering_verdicts(runs.orderings(sweep, ablation, files), fp).splitlines()
    assert [line.rsplit(": ", 1)[1] for line in lines] == ["holds", "fails", "fails", "fails"]
    assert "-20% with EDSG" in lines[0] and "then -25% with WCSG" in lines[0]

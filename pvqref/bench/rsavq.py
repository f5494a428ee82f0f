"""RSAVQ's EDSG on the whole model: the lambda sweep of the RSAVQ chapter (the
command-line script is ``benchmarks/bench_rsavq.py``).

One process: SmolLM2 and its calibration windows as in the final chapter
(:mod:`pvqref.bench.llama`: 32 x 512 tokens, seed 0, input rotations), the Kronecker
Fisher and mean gradient of every decoder-block linear layer from one backward pass per
calibration window (:func:`pvqref.rsavq.fisher.layer_fishers`), then for each lambda of
the grid PVQ-H at 3.25 bpw coding every layer's EDSG target W - lambda N (N = F^{-1} g
scaled to ||W||, ``step="relative"``; negative lambda: the opposite sign), evaluated
under the final chapter's protocol (:func:`pvqref.bench.llama.evaluate_model`). lambda = 0
is plain PVQ-H, the recorded row of ``llama.json``.

Chapter: RSAVQ's natural-gradient error projection (book/rsavq.ipynb).
"""

from __future__ import annotations

import copy
import os
import time

from . import command_line, peak_rss_gb, save
from .llama import CALIBRATION, evaluate_model

LAMBDAS = (0.0, 0.01, 0.05, -0.05, 0.1)
METHOD, BPW = "pvq-h", 3.25
# The ablation: (label, RSAVQ settings as keyword arguments), each on PVQ-H at each rate.
ABLATION = (("step only", {"wcsg": False}),     # control: unquantized W - lam N, no quantizer
            ("base", {"edsg": False, "wcsg": False}),   # PVQ-H, or vq with --method vq
            ("+edsg", {"wcsg": False}),
            ("+wcsg (lagrange)", {"edsg": False}),
            ("+wcsg (paper)", {"edsg": False, "rule": "paper"}),
            ("+edsg +wcsg", {}))
RATES = (3.25, 2.25)


def main(argv=None) -> None:
    """The command line of ``benchmarks/bench_rsavq.py``."""
    args, load = command_line("rsavq", __doc__, argv,
                              lambdas=(str, ",".join(map(str, LAMBDAS)), "lambda grid"),
                              ablation=(float, None, "run the ablation at this lambda "
                                        "instead of the sweep (results/rsavq_ablation.json)"),
                              rates=(str, ",".join(map(str, RATES)), "ablation rates"),
                              labels=(str, None, "only these ablation rows (comma-separated "
                                      "labels; the sweep's lambda = 0 and lambda rows are "
                                      "PVQ-H and +EDSG bit for bit)"),
                              method=(str, METHOD, "the base quantizer of the ablation: "
                                      "pvq-h, or vq for the faithful RSAVQ (k-means VQ)",
                                      ("pvq-h", "vq")),
                              out=(str, "rsavq_ablation", "the ablation's results file "
                                    "(benchmarks/results/OUT.json)"))
    import torch
    torch.set_num_threads(int(os.environ.get("PVQREF_THREADS", "1")))
    from .. import data, rsavq
    from ..hessian import calibration
    from ..rsavq import fisher
    reference, tok = data.load_model()
    texts = data.load_texts()
    windows = calibration.calibration_windows(tok, texts.joined("calibration"), *CALIBRATION,
                                              seed=0)
    ids = torch.tensor(tok(texts.joined("evaluation"), add_special_tokens=False)["input_ids"])
    start = time.perf_counter()
    fishers = fisher.layer_fishers(reference, windows)
    fisher_seconds = time.perf_counter() - start
    weights = {n: reference.get_submodule(n).weight.detach() for n in fishers}
    settings = {"calibration": list(CALIBRATION), "method": METHOD, "bpw": BPW,
                "fisher": "kronecker", "damp": rsavq.DEFAULT_DAMP, "step": "relative",
                "fisher_seconds": fisher_seconds, "seed": 0, "rotation": "input",
                "threads": torch.get_num_threads()}
    if args.ablation is not None:
        return _ablation(args, load, reference, windows, ids, fishers, weights, settings)
    rows = []
    for lam in (float(x) for x in args.lambdas.split(",")):
        shifts = rsavq.edsg_shifts(fishers, weights, lam)
        model, row = _quantized(reference, BPW, windows, shifts=shifts)
        row = {"lambda": lam, "method": METHOD, **row}
        row.update(evaluate_model(model, reference, ids))
        row["peak_rss_gb"] = peak_rss_gb()
        rows.append(row)
        print(f"lambda {lam:+.3f}: ppl {row['perplexity']:.3f} (2048: "
              f"{row['perplexity_2048']:.3f}), top-1 {row['top1']:.4f}, KL {row['kl']:.4f}, "
              f"proxy {row['proxy_loss']:.4g}, {row['seconds'] / 60:.1f} min", flush=True)
        if args.save:
            save("rsavq", rows, settings, load)
        del model


def _quantized(reference, bpw, windows, method=METHOD, **options):
    """(``method`` model at ``bpw``, its row: bits per weight, seconds, summed proxy loss)."""
    from .. import pipeline
    start = time.perf_counter()
    model, reports = pipeline.quantize_model(copy.deepcopy(reference), method, bpw, windows,
                                             inplace=True, **options)
    return model, {"bpw": pipeline.mean_bits_per_weight(reports),
                   "seconds": time.perf_counter() - start,
                   "proxy_loss": sum(r.proxy_loss for r in reports)}


def _ablation(args, load, reference, windows, ids, fishers, weights, settings) -> None:
    """Base (PVQ-H or vq) -> +EDSG -> +WCSG at each rate, one Fisher for all (``ABLATION``;
    the row "base" is the base quantizer alone)."""
    from .. import rsavq
    from ..rsavq.quantize import RSAVQ
    settings = {k: v for k, v in settings.items() if k != "bpw"}    # the rows carry theirs
    settings.update({"lambda": args.ablation, "method": args.method,
                     "rates": [float(x) for x in args.rates.split(",")]})
    sens = {n: f.fisher.sensitivity(f.gradient) for n, f in fishers.items()}
    shifts = rsavq.edsg_shifts(fishers, weights, args.ablation)
    rows = []
    for bpw in (float(x) for x in args.rates.split(",")):
        for label, kw in ABLATION:
            if args.labels and label not in args.labels.split(","):
                continue
            s = RSAVQ(lam=args.ablation, **kw)
            if label == "step only":
                model = _stepped(reference, shifts)
                row = {"label": label, "rsavq": s.to_dict(), "bpw": 16.0}
            else:
                model, row = _quantized(reference, bpw, windows, args.method,
                                        shifts=shifts if s.edsg else None,
                                        sensitivities=sens if s.wcsg else None,
                                        wcsg_rule=s.rule, wcsg_groups=s.groups)
                row = {"label": label, "rsavq": s.to_dict(), "bpw_asked": bpw, **row}
            row.update(evaluate_model(model, reference, ids))
            rows.append(row)
            print(f"{bpw} {label}: bpw {row['bpw']:.4f}, ppl {row['perplexity']:.3f} "
                  f"(2048: {row['perplexity_2048']:.3f}), top-1 {row['top1']:.4f}, KL "
                  f"{row['kl']:.4f}, proxy {row.get('proxy_loss', 0):.4g}", flush=True)
            if args.save:
                save(args.out, rows, settings, load)
            del model


def _stepped(reference, shifts):
    """The unquantized model with every layer moved by its EDSG step (the control that
    separates what the step does from what quantizing it does)."""
    import torch
    model = copy.deepcopy(reference)
    with torch.no_grad():
        for name, d in shifts.items():
            w = model.get_submodule(name).weight
            w.add_(torch.as_tensor(d, dtype=w.dtype))
    return model


def ablation_table(rows: list[tuple[str, dict]], fp: dict):
    """(label, row) pairs of ablation runs as the chapter's table: bits per weight,
    perplexity, excess over the unquantized row ``fp`` (ppl / ppl_fp - 1), top-1, KL."""
    from .. import book
    return book.table(["method", "bits per weight", "perplexity", "excess", "top-1", "KL (nats)"],
                      [(label, r["bpw"], r["perplexity"], r["perplexity"] / fp["perplexity"] - 1,
                        r["top1"], r["kl"]) for label, r in rows],
                      [None, ".3f", ".3f", ".3f", ".4f", ".4f"])


# ---- the paper's ordering: base -> +EDSG -> +EDSG +WCSG, on both bases and both rates ------

STEPS = ("base", "+edsg", "+edsg +wcsg")
# (base quantizer, rate, recorded run) of the cumulative ablations beside the 3.25-bit PVQ-H
# one (whose base and +EDSG rows are the sweep's lambda = 0 and 0.01 rows).
ORDERING_RUNS = (("pvq-h", 2.25, "rsavq_ablation_225"), ("vq", 3.25, "rsavq_ablation_vq"),
                 ("vq", 2.25, "rsavq_ablation_vq_225"))


def orderings(sweep: dict, ablation: dict, runs: dict) -> list[tuple[str, float, dict]]:
    """(base quantizer, rate, {step: row}) for every cumulative ablation recorded: PVQ-H at
    3.25 bits from the sweep (``rsavq.json``: lambda 0 and the ablation's lambda) and
    ``ablation`` (``rsavq_ablation.json``), then ``runs`` (name -> record, the files of
    ``ORDERING_RUNS``)."""
    lam = ablation["settings"]["lambda"]
    first = {"base": next(r for r in sweep["rows"] if r["lambda"] == 0.0),
             "+edsg": next(r for r in sweep["rows"] if r["lambda"] == lam),
             "+edsg +wcsg": next(r for r in ablation["rows"] if r["label"] == "+edsg +wcsg")}
    out = [("pvq-h", 3.25, first)]
    for method, rate, name in ORDERING_RUNS:
        by_label = {r["label"]: r for r in runs[name]["rows"]}
        out.append((method, rate, {step: by_label[step] for step in STEPS}))
    return out


def ordering_table(rows: list[tuple[str, float, dict]], fp: dict):
    """``orderings`` as the chapter's table: one line per base, rate and step."""
    from .. import book
    body = [(method, rate, step, r["bpw"], r["perplexity"], r["perplexity"] / fp["perplexity"] - 1,
             r["top1"], r["kl"])
            for method, rate, steps in rows for step, r in steps.items()]
    return book.table(["base", "rate", "step", "bits per weight", "perplexity", "excess",
                       "top-1", "KL (nats)"], body,
                      [None, ".2f", None, ".3f", ".3f", ".3f", ".4f", ".4f"])


def ordering_verdicts(rows: list[tuple[str, float, dict]], fp: dict) -> str:
    """One line per base and rate: how each step changes the perplexity excess (ppl / ppl_fp
    - 1), and whether the paper's ordering (each step better) holds or fails there."""
    lines = []
    for method, rate, s in rows:
        ex = {k: r["perplexity"] / fp["perplexity"] - 1 for k, r in s.items()}
        edsg, wcsg = ex["+edsg"] / ex["base"] - 1, ex["+edsg +wcsg"] / ex["+edsg"] - 1
        holds = ex["base"] > ex["+edsg"] > ex["+edsg +wcsg"]
        both = ex["+edsg +wcsg"] / ex["base"] - 1
        lines.append(f"{method}, {rate} bits: excess {100 * edsg:+.0f}% with EDSG, "
                     f"then {100 * wcsg:+.0f}% with WCSG ({100 * both:+.0f}% in all): "
                     f"{'holds' if holds else 'fails'}")
    return "\n".join(lines)

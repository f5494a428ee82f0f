"""PVQ for activations on the whole model: perplexity against bits per activation, and
what the search costs per token (the command-line script is
``benchmarks/bench_activations.py``).

``--part grid --weights fp|pvq-h``: SmolLM2 with its weights unquantized, or PVQ-H at
4.25 bpw (the final chapter's whole-model quantizer: 32 x 512 calibration tokens, seed 0,
input rotations), then for each activation bit width of ``--bits`` the inputs of every
decoder linear layer quantized by PVQ (groups chosen on two calibration windows,
:func:`pvqref.activations.calibrate`), by rotated per-token RTN and by unrotated RTN;
perplexity under the final chapter's protocol (the first 20 windows of 512 tokens of the
evaluation split), the weight-only model in the same run
(``results/activations_fp.json``, ``results/activations_pvqh.json``).

``--part agreement --bits 8``: for the weights unquantized, the top-1 agreement and mean
KL divergence of each activation method's next-token distributions to the weight-only
model's on the same 20 windows (:func:`pvqref.evaluate.agreement`), a finer measure than
perplexity where both are close to the weight-only model
(``results/activations_agreement.json``).

``--part cost``: for each input width of SmolLM2 (576: q, k, v, o, gate, up; 1536: down)
and each bit width, the seconds per token of :func:`pvqref.activations.quantize_dequantize`
(rotation, search, gain and their inverses) on a window of 512 captured tokens, for each
tier, against the fp32 matmuls of the layers that read that input
(``results/activations_cost.json``).

Chapter: PVQ for activations (book/activations.ipynb).
"""

from __future__ import annotations

import copy
import os
import time

from . import best_time, command_line, peak_rss_gb, save
from .llama import CALIBRATION, EVALUATION

BITS = (4, 6, 8)
WEIGHTS = {"fp": None, "pvq-h": ("pvq-h", 4.25)}
METHODS = (("pvq", {"method": "pvq"}), ("rtn", {"method": "rtn"}),
           ("rtn unrotated", {"method": "rtn", "rotate": False}))
# Which layers read each input of a block, and their output widths (SmolLM2-135M).
READERS = {576: {"q, k, v": (576, 192, 192), "o": (576,), "gate, up": (1536, 1536)},
           1536: {"down": (576,)}}
TIER_TOKENS = {"reference": 4, "numba": 512, "torch": 128}


def main(argv=None) -> None:
    """The command line of ``benchmarks/bench_activations.py``."""
    args, load = command_line("activations", __doc__, argv,
                              part=(str, "grid", "grid, agreement or cost",
                                    ("grid", "agreement", "cost")),
                              weights=(str, "fp", "weights of the grid", tuple(WEIGHTS)),
                              bits=(str, ",".join(map(str, BITS)), "activation bit widths"))
    import torch
    torch.set_num_threads(int(os.environ.get("PVQREF_THREADS", "1")))
    bits = [int(b) for b in args.bits.split(",")]
    if args.part == "cost":
        return _cost(args, load, bits)
    if args.part == "agreement":
        return _agreement(args, load, bits)
    _grid(args, load, bits)


def _agreement(args, load, bits) -> None:
    from .. import activations, evaluate
    model, windows, ids = _setup()
    weight_only = copy.deepcopy(model)          # before any hook: it stays unquantized
    rows = []
    for b in bits:
        for label, kw in METHODS[:2]:
            cfg = activations.calibrate(model, windows, b, seed=0, **kw)
            with activations.enable(model, cfg):
                row = {"method": label, "bits": b, "config": cfg.to_dict(),
                       **evaluate.agreement(model, weight_only, ids, EVALUATION[1],
                                            EVALUATION[0])}
            rows.append(row)
            print(f"  {label:<5} {b} bits: top-1 {row['top1']:.4f}, KL {row['kl']:.5f}",
                  flush=True)
            if args.save:
                save("activations_agreement", rows, {"weights": "fp", "threads": _threads(),
                                                     "evaluation": list(EVALUATION)}, load)


def _setup():
    import torch

    from .. import data
    from ..hessian import calibration
    reference, tok = data.load_model()
    texts = data.load_texts()
    windows = calibration.calibration_windows(tok, texts.joined("calibration"), *CALIBRATION,
                                              seed=0)
    ids = torch.tensor(tok(texts.joined("evaluation"), add_special_tokens=False)["input_ids"])
    return reference, windows, ids


def _grid(args, load, bits) -> None:
    from .. import activations, evaluate, pipeline
    reference, windows, ids = _setup()
    model, settings = reference, {"weights": args.weights, "evaluation": list(EVALUATION),
                                  "calibration": list(CALIBRATION), "seed": 0}
    if WEIGHTS[args.weights] is not None:
        method, bpw = WEIGHTS[args.weights]
        start = time.perf_counter()
        model, reports = pipeline.quantize_model(copy.deepcopy(reference), method, bpw, windows)
        settings.update(bpw=pipeline.mean_bits_per_weight(reports),
                        weight_seconds=time.perf_counter() - start)
    name = "activations_" + args.weights.replace("-", "")

    def ppl():
        return evaluate.perplexity(model, ids, EVALUATION[1], EVALUATION[0])
    rows = [{"method": "none", "bits": None, "perplexity": ppl()}]
    print(f"{args.weights} weights, activations unquantized: {rows[0]['perplexity']:.3f}",
          flush=True)
    for b in bits:
        for label, kw in METHODS:
            start = time.perf_counter()
            cfg = activations.calibrate(model, windows, b, seed=0, **kw)
            with activations.enable(model, cfg) as handle:
                row = {"method": label, "bits": b, "config": cfg.to_dict(),
                       "bits_per_activation": {n: cfg.bits_per_activation(n) for n in READERS},
                       "perplexity": ppl(), "calls": handle.calls,
                       "seconds": time.perf_counter() - start}
            rows.append(row)
            print(f"  {label:<14} {b} bits: {row['perplexity']:.3f} "
                  f"({row['seconds']:.0f} s)", flush=True)
            if args.save:
                save(name, rows, {**settings, "threads": _threads()}, load)
    settings["peak_rss_gb"] = peak_rss_gb()
    if args.save:
        save(name, rows, {**settings, "threads": _threads()}, load)


def _threads() -> int:
    import torch
    return torch.get_num_threads()


def _cost(args, load, bits) -> None:
    import torch

    from .. import activations
    reference, windows, ids = _setup()
    samples = activations.capture(reference, windows[:1], tokens=512)
    rows = []
    for b in bits:
        cfg, _ = activations.choose({n: X[:2048] for n, X in samples.items()}, b)
        for n, X in sorted(samples.items()):
            x = torch.tensor(X[:512], dtype=torch.float32)
            matmul = 0.0
            for outs in READERS[n].values():
                for m in outs:
                    W = torch.randn(m, n)
                    matmul += best_time(lambda: torch.nn.functional.linear(x, W), 5) / len(x)
            row = {"bits": b, "n": n, "group": list(next(g for g in cfg.groups if g[0] == n)),
                   "matmul_us_per_token": 1e6 * matmul, "readers": list(READERS[n])}
            for tier, count in TIER_TOKENS.items():
                xs = x[:count]
                seconds = best_time(lambda: activations.quantize_dequantize(xs, cfg, tier),
                                    1 if tier == "reference" else 3)
                row[f"{tier}_us_per_token"] = 1e6 * seconds / count
            for tier in ("numba", "torch"):
                row[f"{tier}_over_matmul"] = row[f"{tier}_us_per_token"] / row[
                    "matmul_us_per_token"]
            rows.append(row)
            print(f"{b} bits, n={n}: " + ", ".join(
                f"{t} {row[f'{t}_us_per_token']:.1f} us" for t in TIER_TOKENS) +
                f"; matmuls {row['matmul_us_per_token']:.1f} us per token", flush=True)
    if args.save:
        save("activations_cost", rows, {"tokens": TIER_TOKENS, "threads": _threads()}, load)


# -- what the chapter renders from the recorded runs ---------------------------------------

LABELS = {"fp": "weights unquantized", "pvqh": "PVQ-H weights, 4.25 bpw"}


def _weight_only(record) -> float:
    return next(r["perplexity"] for r in record["rows"] if r["method"] == "none")


def check_live(record, live: dict, tolerance: float = 0.01) -> None:
    """Check the live 6-bit runs ({method: {"perplexity", "config"}}) against the recorded
    rows of ``record``: the same activation config, and a perplexity within
    ``tolerance`` (float kernels differ between CPUs); print the outcome, raise if not."""
    for method, run in live.items():
        row = next(r for r in record["rows"] if r["method"] == method and r["bits"] == 6)
        if run["config"].to_dict() != row["config"]:
            raise AssertionError(f"live {method} config {run['config'].to_dict()} is not the "
                                 f"recorded {row['config']}")
        ppl = run["perplexity"]
        if abs(ppl / row["perplexity"] - 1) > tolerance:
            raise AssertionError(f"live {method} perplexity {ppl:.3f} is more than "
                                 f"{tolerance:.0%} from the recorded {row['perplexity']:.3f}")
        print(f"live {method} at 6 bits: the recorded config, and its perplexity within "
              f"{tolerance:.0%} of the recorded row")


def grid_table(grids: dict):
    """(header, rows, formats) of perplexity against activation bits for each grid."""
    rows = []
    for key, record in grids.items():
        base = _weight_only(record)
        rows.append((LABELS[key], "none", "16", base, 0.0))
        for r in record["rows"]:
            if r["method"] != "none":
                rows.append((LABELS[key], r["method"], str(r["bits"]), r["perplexity"],
                             r["perplexity"] / base - 1))
    return (["weights", "activations", "b", "perplexity", "over weight-only"], rows,
            [None, None, None, ".3f", "+.2%"])


def plot_grid(grids: dict, axes) -> None:
    """Perplexity excess over the weight-only model against activation bits, one panel
    per grid, log scale (so that 0.1% and 10,000% both read)."""
    for ax, (key, record) in zip(axes, grids.items()):
        base = _weight_only(record)
        for method, style in (("pvq", "o-"), ("rtn", "s--"), ("rtn unrotated", "^:")):
            pts = [(r["bits"], 100 * (r["perplexity"] / base - 1)) for r in record["rows"]
                   if r["method"] == method]
            ax.plot(*zip(*pts), style, label=method)
        ax.set(yscale="log", xlabel="bits per activation b",
               ylabel="perplexity over weight-only (%)", title=LABELS[key],
               xticks=sorted({r["bits"] for r in record["rows"] if r["bits"]}))
        ax.legend()


def summary(grids: dict) -> str:
    """The sentences the chapter states from the grids."""
    lines = []
    for key, record in grids.items():
        base = _weight_only(record)
        by = {(r["method"], r["bits"]): r["perplexity"] for r in record["rows"]}
        bits = sorted({b for _, b in by if b})
        wins = [b for b in bits if by[("pvq", b)] < by[("rtn", b)]]
        lines.append(f"{LABELS[key]}: weight-only {base:.3f}; PVQ at 6 bits "
                     f"{by[('pvq', 6)]:.3f} ({by[('pvq', 6)] / base - 1:+.2%}); PVQ below "
                     f"rotated RTN at {len(wins)} of {len(bits)} bit widths "
                     f"({', '.join(map(str, wins)) or 'none'})")
    return "\n".join(lines)


def cost_table(record):
    """(header, rows, formats) of microseconds per token for each tier and the matmuls."""
    rows = [(r["bits"], r["n"], ", ".join(r["readers"]), r["reference_us_per_token"],
             r["numba_us_per_token"], r["torch_us_per_token"], r["matmul_us_per_token"],
             r["numba_over_matmul"]) for r in record["rows"]]
    return (["b", "n", "readers", "reference (us)", "Numba (us)", "torch (us)",
             "matmuls (us)", "Numba / matmuls"], rows,
            [None, None, None, ",.0f", ".1f", ".1f", ".1f", ".2f"])


def agreement_table(record):
    """(header, rows, formats) of top-1 agreement and KL to the weight-only model."""
    rows = [(r["bits"], r["method"], r["top1"], r["kl"]) for r in record["rows"]]
    return (["b", "activations", "top-1 agreement", "KL (nats)"], rows,
            [None, None, ".4f", ".5f"])

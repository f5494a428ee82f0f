"""Cost and quality of the Hessian-aware quantizers: one layer per method and tier, and
whole models (the command-line script is ``benchmarks/bench_hessian.py``).

Layer mode: one 1536 x 576 layer (SmolLM2's gate/up shape) of Gaussian weights against
the second moment of correlated Gaussian inputs, at 3.25 bits per weight: RTN on GPTQ's
grid, GPTQ (3-bit, group 128, act-order), PVQ without feedback, PVQ with block feedback,
PVQ-H (feedback + metric search), L = 64. Tiers: "torch" (the pipeline's path) and
"numba" (the NumPy tier with the Numba pyramid search) on all 1536 rows; "reference"
(the pure oracle) on 64 rows (seconds as measured, not scaled: the column loop and the
factorisation cost the same for any number of rows).

Model mode: all of SmolLM2-135M-Instruct through :func:`pvqref.pipeline.quantize_model`
(32 x 512 calibration tokens, seed 0), then its perplexity under
:mod:`pvqref.evaluate`'s protocol on the first 20 windows of 512 tokens of the evaluation
split. Every case (layer or model) runs single-threaded in a fresh process, so that its
peak resident memory (ru_maxrss) is its own; ``jobs`` cases run side by side.

Chapter: Hessian-aware PVQ (book/hessian.ipynb).
"""

from __future__ import annotations

import os
import time

import numpy as np

from . import best_time, command_line, in_fresh_processes, peak_rss_gb, save

METHODS = ("rtn", "gptq", "pvq", "pvq-fb", "pvq-h")
ROWS = {"torch": 1536, "numba": 1536, "reference": 64}
SHAPE, BPW, L = (1536, 576), 3.25, 64
CALIBRATION = (32, 512)           # windows x tokens
EVALUATION = (20, 512)            # first windows x tokens of the evaluation split
# The rotation question first (3.25 bpw), then every method at every rate (input rotation).
GRID = [(m, 3.25, r) for m in ("pvq-h", "gptq") for r in ("input", "residual", None)] + \
       [(m, b, "input") for m in ("gptq", "pvq-h", "rtn", "pvq") for b in (2.25, 4.25)] + \
       [(m, 3.25, "input") for m in ("rtn", "pvq")]


def _one_thread():
    import torch
    torch.set_num_threads(1)


def layer_case(method: str, backend: str, repeats: int) -> dict:
    """Best seconds and peak RSS of one (method, tier) on the benchmark layer."""
    import torch
    _one_thread()
    from .. import gain, hessian
    rng = np.random.default_rng(0)
    m, n = ROWS[backend], SHAPE[1]
    A = np.eye(n) + 1.5 * rng.standard_normal((n, n)) / np.sqrt(n)
    X = rng.standard_normal((4 * n, n)) @ A
    H, W = X.T @ X / len(X), rng.standard_normal((m, n))
    if backend == "torch":
        W, H = torch.from_numpy(W), torch.from_numpy(H)
    cfg = gain.config_for_rate(L, SHAPE, BPW, 3)
    run = {"rtn": lambda: hessian.gptq_quantize(W, H, 3, 128, feedback=False, backend=backend),
           "gptq": lambda: hessian.gptq_quantize(W, H, 3, 128, backend=backend),
           "pvq": lambda: hessian.pvq_quantize(W, H, cfg, feedback=False, backend=backend),
           "pvq-fb": lambda: hessian.pvq_quantize(W, H, cfg, backend=backend),
           "pvq-h": lambda: hessian.pvq_quantize(W, H, cfg, search="hessian",
                                                 backend=backend)}[method]
    return {"method": method, "backend": backend, "rows": m,
            "seconds": best_time(run, repeats), "peak_rss_mb": 1024 * peak_rss_gb()}


def model_case(method: str, bpw: float, rotation) -> dict:
    """Quantize SmolLM2 with ``method`` at ``bpw``: bits as stored, seconds, peak RSS and
    perplexity (see the module docstring for the protocol)."""
    import torch
    _one_thread()
    from .. import data, evaluate, pipeline
    from ..hessian import calibration
    model, tok = data.load_model()
    texts = data.load_texts()
    windows = calibration.calibration_windows(tok, texts.joined("calibration"), *CALIBRATION,
                                              seed=0)
    start = time.perf_counter()
    quantized, report = pipeline.quantize_model(model, method, bpw, windows, rotation=rotation,
                                                inplace=True)
    seconds = time.perf_counter() - start
    ids = torch.tensor(tok(texts.joined("evaluation"), add_special_tokens=False)["input_ids"])
    ppl = evaluate.perplexity(quantized, ids, EVALUATION[1], EVALUATION[0])
    return {"method": method, "bpw_asked": bpw, "rotation": rotation,
            "bpw": pipeline.mean_bits_per_weight(report), "perplexity": ppl,
            "seconds": seconds, "peak_rss_gb": peak_rss_gb()}




def run_cases(kind: str, cases: list, jobs: int = 1, on_row=None) -> list[dict]:
    """Run every case in its own fresh process, ``jobs`` at a time, in order; ``on_row``
    sees the rows so far after each one (to record a long run as it goes)."""
    rows = []
    for row in in_fresh_processes(layer_case if kind == "layer" else model_case, cases, jobs):
        rows.append(row)
        if on_row is not None:
            on_row(rows)
    return rows


def layer_table(rows: list[dict]) -> str:
    """Markdown table of a layer run."""
    lines = ["| method | tier | rows (of 1536 x 576) | seconds | peak RSS (MB) |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['backend']} | {r['rows']} | {r['seconds']:.2f} | "
                     f"{r['peak_rss_mb']:.0f} |")
    return "\n".join(lines)


def model_table(rows: list[dict], unquantized: float | None = None) -> str:
    """Markdown table of a model run (perplexity relative to ``unquantized`` if given)."""
    head = "| method | rotation | bits per weight | perplexity |" + \
        (" / unquantized |" if unquantized else "") + " minutes | peak RSS (GB) |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        ratio = f" {r['perplexity'] / unquantized:.3f} |" if unquantized else ""
        lines.append(f"| {r['method']} | {r['rotation'] or 'none'} | {r['bpw']:.3f} | "
                     f"{r['perplexity']:.2f} |{ratio} {r['seconds'] / 60:.1f} | "
                     f"{r['peak_rss_gb']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    """The command line of ``benchmarks/bench_hessian.py``."""
    args, load = command_line(
        "hessian", __doc__, argv,
        mode=(str, "layer", "layer (one layer per method and tier) or model (the grid)"),
        repeats=(int, 2, "timed runs per layer case (best kept)"),
        jobs=(int, 1, "cases run side by side (each single-threaded)"))
    settings = {"mode": args.mode, "threads_per_case": 1, "jobs": args.jobs}
    print(f"single thread per case, {args.jobs} at a time; load average {load:.2f} on "
          f"{os.cpu_count()} cores\n")
    if args.mode == "layer":
        cases = [(m, b, args.repeats) for m in METHODS for b in ROWS]
        rows = run_cases("layer", cases, args.jobs)
        print(layer_table(rows))
        if args.save:
            print("saved", save("hessian", rows, {**settings, "repeats": args.repeats}, load))
        return
    settings.update(calibration=list(CALIBRATION), evaluation=list(EVALUATION), seed=0)

    def record(rows):
        print(model_table(rows[-1:]).splitlines()[-1], flush=True)
        if args.save:
            save("hessian_models", rows, settings, load)
    run_cases("model", GRID, args.jobs, record)

"""Seconds and peak memory of the Hessian-aware quantizers, per method and tier.

    .venv/bin/python benchmarks/bench_hessian.py [--repeats 2] [--save]
    .venv/bin/python benchmarks/bench_hessian.py --model pvq-h [--bpw 3.25]

Layer mode (default): one 1536 x 576 layer (SmolLM2's gate/up shape) of Gaussian weights
against the second moment of correlated Gaussian inputs, at 3.25 bits per weight: RTN on
GPTQ's grid, GPTQ (3-bit, group 128, act-order), PVQ without feedback, PVQ with block
feedback, PVQ-H (feedback + metric search), L = 64. Tiers: "torch" (the pipeline's
path) and "numba" (the NumPy tier with the Numba pyramid search) on all 1536 rows;
"reference" (the pure oracle) on 64 rows (seconds as measured, not scaled: the column loop
and the factorisation cost the same for any number of rows). Every case runs in
a fresh process so that its peak resident memory (ru_maxrss) is its own.

Model mode (``--model METHOD``): quantize all of SmolLM2-135M-Instruct with
:func:`pvqref.pipeline.quantize_model` (32 x 512 calibration tokens), print the seconds
and the peak resident memory. Single thread in both modes.
``--save`` records the layer run in ``benchmarks/results/hessian.json`` (see ``pvqref.bench``).
"""

import argparse
import os

if __name__ == "__main__":     # one thread, set before numpy/torch load (not when imported)
    for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")

import multiprocessing  # noqa: E402
import resource  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

METHODS = ("rtn", "gptq", "pvq", "pvq-fb", "pvq-h")
ROWS = {"torch": 1536, "numba": 1536, "reference": 64}
SHAPE, BPW, L = (1536, 576), 3.25, 64


def _case(method: str, backend: str, repeats: int, queue) -> None:
    """One (method, tier) in this (fresh) process: best seconds and peak RSS."""
    import torch
    torch.set_num_threads(1)
    from pvqref import gain, hessian
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
    run()                                       # warm-up (Numba compilation)
    best = min(_seconds(run) for _ in range(repeats))
    queue.put({"method": method, "backend": backend, "rows": m,
               "seconds": best,
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(repeats: int = 2) -> list[dict]:
    ctx = multiprocessing.get_context("spawn")
    rows = []
    for method in METHODS:
        for backend in ROWS:
            queue = ctx.Queue()
            proc = ctx.Process(target=_case, args=(method, backend, repeats, queue))
            proc.start()
            rows.append(queue.get())
            proc.join()
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| method | tier | rows (of 1536 x 576) | seconds | peak RSS (MB) |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['backend']} | {r['rows']} | {r['seconds']:.2f} | "
                     f"{r['peak_rss_mb']:.0f} |")
    return "\n".join(lines)


def whole_model(method: str, bpw: float) -> dict:
    import torch
    torch.set_num_threads(1)
    from pvqref import data, pipeline
    from pvqref.hessian import calibration
    model, tok = data.load_model()
    windows = calibration.calibration_windows(
        tok, data.load_texts().joined("calibration"), 32, 512, seed=0)
    start = time.perf_counter()
    _, report = pipeline.quantize_model(model, method, bpw, windows, inplace=True)
    return {"method": method, "bpw": pipeline.mean_bits_per_weight(report),
            "seconds": time.perf_counter() - start,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--model", choices=METHODS, help="time the whole model instead")
    parser.add_argument("--bpw", type=float, default=BPW)
    parser.add_argument("--save", action="store_true",
                        help="record the layer run in benchmarks/results/hessian.json")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    print(f"single thread; load average {load:.2f} on {os.cpu_count()} cores\n")
    if args.model:
        print(whole_model(args.model, args.bpw))
    else:
        rows = measure(args.repeats)
        print(table(rows))
        if args.save:
            from pvqref import bench
            print("saved", bench.save("hessian", rows, {"repeats": args.repeats,
                                                        "threads": 1}, load))

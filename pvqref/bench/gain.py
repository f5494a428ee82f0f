"""Benchmark: throughput of the complete PVQ quantizer per tier, single thread.

    .venv/bin/python benchmarks/bench_gain.py [--repeats 3] [--save]

Chapter: Gain quantization (book/gain.ipynb), section on speed.

For a few (n, L) at 3.25 bits per weight (K from ``gain.config_for_rate`` for the
smallest batch, 2 Lloyd-Max gain bits, the default log-grid row norms) it times, on
Gaussian rows:

- ``quantize_dequantize`` (search + gain codes + reconstruction, no enumeration),
- ``quantize`` (search + gain codes + pyramid indices) and ``dequantize`` (decode +
  reconstruction),
- the pyramid direction search alone (``pyramid.search_batch``), to show how much of the
  time is the gain part.

Each tier gets a batch sized to its speed (reference: 8 rows, torch: 64, numba: 512).
Prints a markdown table: best of ``repeats`` runs, in thousands of weights per second.
``--save`` records the run in ``benchmarks/results/gain.json`` (see ``pvqref.bench``).
"""

import os

import numpy as np
import torch

from pvqref import bench, gain, pyramid
from pvqref.bench import best_time

CASES = ((576, 144), (576, 288), (1536, 96), (1536, 192))
ROWS = {"reference": 8, "torch": 64, "numba": 512}


def measure(repeats: int = 3, seed: int = 0) -> list[dict]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rng = np.random.default_rng(seed)
        results = []
        for n, L in CASES:
            cfg = gain.config_for_rate(L, (min(ROWS.values()), n), 3.25, 2)
            for backend, rows in ROWS.items():
                W = rng.standard_normal((rows, n))
                X = torch.from_numpy(W) if backend == "torch" else W
                G = X.reshape(-1, L)
                Q = gain.quantize(X, cfg, backend)
                runs = {"quantize_dequantize": lambda: gain.quantize_dequantize(X, cfg, backend),
                        "quantize": lambda: gain.quantize(X, cfg, backend),
                        "dequantize": lambda: gain.dequantize(Q, backend),
                        "search only": lambda: pyramid.search_batch(G, cfg.K, backend=backend)}
                t = {name: best_time(fn, repeats) for name, fn in runs.items()}
                results.append({"n": n, "L": L, "K": cfg.K, "backend": backend,
                                **{k: W.size / v for k, v in t.items()}})
        return results
    finally:
        torch.set_num_threads(threads)


def table(results: list[dict]) -> str:
    cols = ["quantize_dequantize", "quantize", "dequantize", "search only"]
    lines = ["| n | L | K | tier | " + " | ".join(f"{c} (k weights/s)" for c in cols) + " |",
             "|---|---|---|---|" + "---|" * len(cols)]
    for r in results:
        lines.append(f"| {r['n']} | {r['L']} | {r['K']} | {r['backend']} | "
                     + " | ".join(f"{r[c] / 1e3:.0f}" for c in cols) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    args, load = bench.command_line("gain", __doc__, argv,
                                    repeats=(int, 3, "best of this many runs"))
    print(f"single thread, best of {args.repeats}; load average {load:.2f} on "
          f"{os.cpu_count()} cores\n")
    rows = measure(args.repeats)
    print(table(rows))
    if args.save:
        print("saved", bench.save("gain", rows, {"repeats": args.repeats, "threads": 1}, load))

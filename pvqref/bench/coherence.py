"""Benchmark: throughput of the randomized Hadamard transform per tier, single thread.

    .venv/bin/python benchmarks/bench_coherence.py [--rows 8192] [--repeats 5] [--save]

Chapter: Spherical coherence processing (book/coherence.ipynb), section on speed.

For n in {576, 1536, 4096} it rotates a batch of float32 rows x -> H (s * x) with each
tier of ``RandomizedHadamard.forward`` (input checks included), and, as baselines on
the same data, the dense product x @ R^T with the explicit n x n rotation matrix
(numpy BLAS and torch) and the product with a linear layer of that input size
(the matmul the online transform sits next to). Prints a markdown table: best of
``repeats`` runs, in vectors/s and in GB/s of float32 input. ``--save`` records the run
in ``benchmarks/results/coherence.json`` (see ``pvqref.bench``), which the chapter renders.
"""

import os

import numpy as np
import torch

from pvqref import bench
from pvqref import coherence as coh
from pvqref.bench import best_time

SIZES = (576, 1536, 4096)
# (out, in) of the linear layer whose input has size n, for the cost comparison:
# SmolLM2 q_proj (576 -> 576) and down_proj (1536 -> 576), Llama-2-7B q_proj (4096 -> 4096).
LINEAR_SHAPES = {576: (576, 576), 1536: (576, 1536), 4096: (4096, 4096)}


def measure(rows: int = 8192, repeats: int = 5, sizes=SIZES, seed: int = 0) -> list[dict]:
    """One dict per (n, method): seconds for the batch, vectors/s, GB/s of input."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = []
        rng = np.random.default_rng(seed)
        for n in sizes:
            x = rng.standard_normal((rows, n)).astype(np.float32)
            xt = torch.from_numpy(x)
            R = coh.RandomizedHadamard(n, seed)
            Rm = R.matrix().astype(np.float32)
            Rt = torch.from_numpy(Rm)
            W = torch.from_numpy(rng.standard_normal(LINEAR_SHAPES[n]).astype(np.float32))
            methods = {
                "reference": lambda: R.forward(x, backend="reference"),
                "numba": lambda: R.forward(x, backend="numba"),
                "torch": lambda: R.forward(xt, backend="torch"),
                "dense x @ R^T (numpy)": lambda: x @ Rm.T,
                "dense x @ R^T (torch)": lambda: xt @ Rt.T,
                f"linear {LINEAR_SHAPES[n][1]}->{LINEAR_SHAPES[n][0]} (torch)": lambda: xt @ W.T,
            }
            for name, fn in methods.items():
                t = best_time(fn, repeats)
                results.append({"n": n, "method": name, "seconds": t, "vectors_per_s": rows / t,
                                "GB_per_s": rows * n * 4 / t / 1e9})
        return results
    finally:
        torch.set_num_threads(threads)


def markdown(results: list[dict]) -> str:
    lines = ["| n | method | vectors/s | GB/s (fp32 in) |", "|---:|:---|---:|---:|"]
    for r in results:
        lines.append(f"| {r['n']} | {r['method']} | {r['vectors_per_s']:,.0f} | "
                     f"{r['GB_per_s']:.2f} |")
    return "\n".join(lines)


def table(results: list[dict]):
    """The same table as :func:`markdown` (same columns and precision) as a
    :func:`pvqref.book.table`, which renders as HTML in the chapter."""
    from pvqref import book
    return book.table(["n", "method", "vectors/s", "GB/s (fp32 in)"],
                      [[r["n"], r["method"], r["vectors_per_s"], r["GB_per_s"]] for r in results],
                      [None, None, ",.0f", ".2f"])


def main(argv=None) -> None:
    args, load = bench.command_line("coherence", __doc__, argv,
                                    rows=(int, 8192, "rows per batch"),
                                    repeats=(int, 5, "best of this many runs"))
    print(f"rows={args.rows}, float32, single thread, best of {args.repeats}; "
          f"load average {load:.2f} on {os.cpu_count()} cores\n")
    rows = measure(args.rows, args.repeats)
    print(markdown(rows))
    if args.save:
        settings = {"rows": args.rows, "repeats": args.repeats, "threads": 1}
        print("saved", bench.save("coherence", rows, settings, load))


"""Throughput of pvqref.pyramid per tier: search+encode and decode, in weights per second.

    .venv/bin/python benchmarks/bench_pyramid.py [--scale 1.0] [--save]

One thread when run as a script (NUMBA_NUM_THREADS=1, torch.set_num_threads(1)). Gaussian
groups, L in {8, 32, 128}, K = k_for_rate(L, r) for r in {2, 3, 4} bits per weight. Each
cell is the best of 3 runs over a fixed batch; the reference tier gets a smaller batch (it
is ~100x slower).
Rates are weights per CPU-second of this process (best of 3), with wall-clock rates beside
them: on a shared machine the two differ. Prints a markdown table and the targets at
L = 128, 3 bpw. ``--save`` records the run in ``benchmarks/results/pyramid.json`` (see
``record.py``), which the pyramid chapter renders.
"""

import argparse
import os

if __name__ == "__main__":     # one thread, set before numba/torch load (not when imported)
    for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")

import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import record  # noqa: E402
from pvqref import pyramid as P  # noqa: E402

WEIGHTS = {"reference": 1 << 13, "numba": 1 << 19, "torch": 1 << 16}   # weights per batch


def best_time(f, repeats=3):
    """Best wall-clock and best CPU (process) time of `repeats` runs. On a shared machine
    the CPU time is the fairer one-thread figure: it excludes waiting for a free core."""
    wall = cpu = float("inf")
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        f()
        wall = min(wall, time.perf_counter() - t)
        cpu = min(cpu, time.process_time() - c)
    return wall, cpu


def measure(tier, L, K, scale):
    G = max(2, int(WEIGHTS[tier] * scale) // L)
    X = np.random.default_rng(L * 1000 + K).standard_normal((G, L))
    if tier == "torch":
        X = torch.as_tensor(X)
    small = X[:2]                                   # warm-up: jit compile, tables
    P.decode_batch(P.encode_batch(P.search_batch(small, K, tier), K, tier), L, K, tier)
    box = {}

    def search_encode():
        box["Y"] = P.search_batch(X, K, backend=tier)
        box["I"] = P.encode_batch(box["Y"], K, backend=tier)

    t_se = best_time(search_encode)
    t_de = best_time(lambda: P.decode_batch(box["I"], L, K, backend=tier))
    Y = box["Y"]
    assert (np.asarray(P.decode_batch(box["I"], L, K, backend=tier)) == np.asarray(Y)).all()
    n = G * L
    return n / t_se[1], n / t_de[1], n / t_se[0], n / t_de[0]   # CPU rates, then wall rates


CASES = [(L, r) for L in (8, 32, 128) for r in (2, 3, 4)]


def measure_all(scale: float = 1.0, progress=None) -> list[dict]:
    """One row per (L, rate, tier): rates in weights per CPU-second and per wall second."""
    rows = []
    for L, r in CASES:
        K = P.k_for_rate(L, r)
        for tier in P.BACKENDS:
            se, de, wse, wde = measure(tier, L, K, scale)
            rows.append({"L": L, "bpw": r, "K": K, "index_bits": P.bits(L, K), "tier": tier,
                         "search_encode": se, "decode": de,
                         "wall_search_encode": wse, "wall_decode": wde})
            if progress:
                progress(rows[-1])
    return rows


def table_header() -> str:
    return ("| L | bpw | K | index bits | tier | search+encode (M w/s) | decode (M w/s) "
            "| wall: search+encode | wall: decode |\n"
            "|---:|---:|---:|---:|:---|---:|---:|---:|---:|")


def table_row(r: dict) -> str:
    return (f"| {r['L']} | {r['bpw']} | {r['K']} | {r['index_bits']} | {r['tier']} "
            f"| {r['search_encode'] / 1e6:.3g} | {r['decode'] / 1e6:.3g} "
            f"| {r['wall_search_encode'] / 1e6:.3g} | {r['wall_decode'] / 1e6:.3g} |")


def markdown(rows: list[dict]) -> str:
    return "\n".join([table_header()] + [table_row(r) for r in rows])


def targets(rows: list[dict]) -> str:
    """The issue's targets at L = 128, 3 bpw, one thread (CPU-time rates)."""
    at = {r["tier"]: r for r in rows if r["L"] == 128 and r["bpw"] == 3}
    se, de = at["numba"]["search_encode"], at["numba"]["decode"]
    rse, rde = at["reference"]["search_encode"], at["reference"]["decode"]
    return "\n".join([
        "Targets at L = 128, 3 bpw, one thread (M w/s from CPU time):",
        f"- numba search+encode {se / 1e6:.2f} M w/s (target >= 5): "
        f"{'met' if se >= 5e6 else 'MISSED'}",
        f"- numba decode {de / 1e6:.2f} M w/s (target >= 20): {'met' if de >= 20e6 else 'MISSED'}",
        f"- numba / reference: search+encode {se / rse:.0f}x, decode {de / rde:.0f}x "
        f"(target >= 50x): {'met' if min(se / rse, de / rde) >= 50 else 'MISSED'}"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="batch size multiplier")
    parser.add_argument("--save", action="store_true",
                        help="record the run in benchmarks/results/pyramid.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load = os.getloadavg()[0]
    print(f"load average at start: {load:.2f} on {os.cpu_count()} cores\n")
    print(table_header())
    rows = measure_all(args.scale, progress=lambda r: print(table_row(r), flush=True))
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")
    print(targets(rows))
    if args.save:
        print("saved", record.save("pyramid", rows, {"scale": args.scale, "threads": 1}, load))


if __name__ == "__main__":
    main()

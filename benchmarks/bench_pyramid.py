"""Throughput of pvqref.pyramid per tier: search+encode and decode, in weights per second.

    .venv/bin/python benchmarks/bench_pyramid.py [--scale 1.0]

One thread (NUMBA_NUM_THREADS=1, torch.set_num_threads(1)). Gaussian groups, L in {8, 32,
128}, K = k_for_rate(L, r) for r in {2, 3, 4} bits per weight. Each cell is the best of
3 runs over a fixed batch; the reference tier gets a smaller batch (it is ~100x slower).
Rates are weights per CPU-second of this process (best of 3), with wall-clock rates beside
them: on a shared machine the two differ. Prints a markdown table and the targets at
L = 128, 3 bpw.
"""

import argparse
import os

os.environ["NUMBA_NUM_THREADS"] = "1"

import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pvqref import pyramid as P  # noqa: E402

torch.set_num_threads(1)

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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="batch size multiplier")
    args = parser.parse_args()
    rows = {}
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print()
    print("| L | bpw | K | index bits | tier | search+encode (M w/s) | decode (M w/s) "
          "| wall: search+encode | wall: decode |")
    print("|---:|---:|---:|---:|:---|---:|---:|---:|---:|")
    for L in (8, 32, 128):
        for r in (2, 3, 4):
            K = P.k_for_rate(L, r)
            for tier in P.BACKENDS:
                se, de, wse, wde = measure(tier, L, K, args.scale)
                rows[L, r, tier] = (se, de)
                print(f"| {L} | {r} | {K} | {P.bits(L, K)} | {tier} | {se / 1e6:.3g} | {de / 1e6:.3g} "
                      f"| {wse / 1e6:.3g} | {wde / 1e6:.3g} |", flush=True)
    se, de = rows[128, 3, "numba"]
    rse, rde = rows[128, 3, "reference"]
    print()
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    print("Targets at L = 128, 3 bpw, one thread (M w/s from CPU time):")
    print(f"- numba search+encode {se / 1e6:.2f} M w/s (target >= 5): {'met' if se >= 5e6 else 'MISSED'}")
    print(f"- numba decode {de / 1e6:.2f} M w/s (target >= 20): {'met' if de >= 20e6 else 'MISSED'}")
    print(f"- numba / reference: search+encode {se / rse:.0f}x, decode {de / rde:.0f}x "
          f"(target >= 50x): {'met' if min(se / rse, de / rde) >= 50 else 'MISSED'}")


if __name__ == "__main__":
    main()

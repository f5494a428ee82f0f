"""Benchmark: throughput of pvqref.pyramid per tier (search+encode, decode; weights/s).

    .venv/bin/python benchmarks/bench_pyramid.py [--scale 1.0] [--save]

Chapter: The pyramid lattice (book/pyramid.ipynb), section on throughput.

One thread when run as the script (NUMBA_NUM_THREADS=1, torch.set_num_threads(1)).

Two tables. The throughput table: Gaussian
groups, L in {8, 32, 128}, K = k_for_rate(L, r) for r in {2, 3, 4} bits per weight. Each
cell is the best of 3 runs over a fixed batch; the reference tier gets a smaller batch (it
is ~100x slower).
Rates are weights per CPU-second of this process (best of 3), with wall-clock rates beside
them: on a shared machine the two differ. Prints a markdown table and the targets at
L = 128, 3 bpw. ``--save`` records the run in ``benchmarks/results/pyramid.json`` (see
``pvqref.bench``), which the pyramid chapter renders.
"""

import os
import resource
import time

import numpy as np
import torch

from pvqref import bench
from pvqref import pyramid as P

WEIGHTS = {"reference": 1 << 13, "numba": 1 << 19, "torch": 1 << 19}   # weights per batch


def best_times(f, repeats=3):
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

    t_se = best_times(search_encode)
    t_de = best_times(lambda: P.decode_batch(box["I"], L, K, backend=tier))
    Y = box["Y"]
    assert (np.asarray(P.decode_batch(box["I"], L, K, backend=tier)) == np.asarray(Y)).all()
    n = G * L
    return n / t_se[1], n / t_de[1], n / t_se[0], n / t_de[0]   # CPU rates, then wall rates


CASES = [(L, r) for L in (8, 32, 128) for r in (2, 3, 4)]


def measure_all(scale: float = 1.0, progress=None) -> list[dict]:
    """One row per (L, rate, tier): rates in weights per CPU-second and per wall second."""
    def one(case, tier):
        L, r = case
        K = P.k_for_rate(L, r)
        se, de, wse, wde = measure(tier, L, K, scale)
        return {"L": L, "bpw": r, "K": K, "index_bits": P.bits(L, K), "tier": tier,
                "search_encode": se, "decode": de, "wall_search_encode": wse, "wall_decode": wde}
    return collect(CASES, P.BACKENDS, one, progress)


def collect(cases, tiers, one, progress=None) -> list[dict]:
    """The rows one(case, tier) for every case and tier, each passed to progress as made."""
    rows = []
    for case in cases:
        for tier in tiers:
            rows.append(one(case, tier))
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


def markdown(rows: list[dict], header=table_header, row=table_row) -> str:
    """A recorded run's rows as a markdown table (the Opus-settings one: pass ``opus_header``,
    ``opus_row``)."""
    return "\n".join([header()] + [row(r) for r in rows])


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


def table(rows: list[dict]):
    """The recorded rows as a table for the chapter (pvqref.book.table)."""
    from pvqref import book
    head = ["L", "bpw", "K", "index bits", "tier", "search+encode (M w/s)", "decode (M w/s)",
            "wall: search+encode", "wall: decode"]
    keys = ["search_encode", "decode", "wall_search_encode", "wall_decode"]
    return book.table(head, [[r["L"], r["bpw"], r["K"], r["index_bits"], r["tier"]]
                             + [r[k] / 1e6 for k in keys] for r in rows],
                      [None] * 5 + [".3g"] * 4)


def summary(rows: list[dict]) -> str:
    """What the recorded run says at L = 128, 3 bpw, one thread (CPU-time rates), for the
    chapter: the Numba tier's rates and how many times the reference tier's they are."""
    at = {r["tier"]: r for r in rows if r["L"] == 128 and r["bpw"] == 3}
    se, de = at["numba"]["search_encode"], at["numba"]["decode"]
    rse, rde = at["reference"]["search_encode"], at["reference"]["decode"]
    return (f"At L = 128, 3 bpw, one thread: numba search+encode {se / 1e6:.2f} M weights/s, "
            f"decode {de / 1e6:.1f} M weights/s; {se / rse:.0f}x and {de / rde:.0f}x the "
            f"reference tier.")


# ---- the Opus-settings table ----------------------------------------------------------------

OPUS_SETTINGS = [(8, 36), (16, 12), (32, 7), (128, 187)]
# Opus/CELT's C code, one pinned core, M weights/s, as recorded in issue 15 on the Intel Xeon
# (plain C search, SSE2 search, encode, decode); None where not measured.
OPUS_ISSUE = {(8, 36): (70, 133, 263, 101), (16, 12): (46, 109, 319, 134),
              (32, 7): (58, 168, 503, 252), (128, 187): (8.2, 50, None, None)}


def opus_figures() -> tuple[dict, str]:
    """({(L, K): (C search, SSE2 search, encode, decode) in M weights/s}, where from): the
    run of ``benchmarks/peer_opus.py`` recorded in results/opus_peer.json (libopus timed on
    the machine named there), else issue 15's figures."""
    try:
        run = bench.load("opus_peer")
    except FileNotFoundError:
        return OPUS_ISSUE, "issue 15's figures (Intel Xeon)"
    m = lambda v: None if v is None else v / 1e6
    figs = {(r["L"], r["K"]): (m(r["search_c"]), m(r["search_sse2"]), m(r.get("encode")),
                               m(r.get("decode"))) for r in run["rows"]}
    return figs, f"{run['settings']['opus']} on {run['machine']['cpu']}, {run['date']}"


OPUS_WEIGHTS = {"numba": 1 << 19, "torch": 1 << 19}


OPUS_ROUNDS = 11


def _op_calls(tier, L, K, scale):
    """(weights per call, {op: call}, check) for search, encode and decode of one tier at
    (L, K), each call writing into a preallocated ``out=`` buffer (no allocation in the
    timed call); check() asserts that the buffers hold the right points."""
    G = max(2, int(OPUS_WEIGHTS[tier] * scale) // L)
    X = np.random.default_rng(L * 1000 + K).standard_normal((G, L))
    if tier == "torch":
        X = torch.as_tensor(X)
    Y = P.search_batch(X, K, backend=tier)
    I = P.encode_batch(Y, K, backend=tier)
    P.decode_batch(I[:2], L, K, backend=tier)                      # warm-up (jit, tables)
    like = torch.empty_like if tier == "torch" else np.empty_like
    oY, oI, oD = like(Y), like(I), like(Y)
    calls = {"search": lambda: P.search_batch(X, K, backend=tier, out=oY),
             "encode": lambda: P.encode_batch(Y, K, backend=tier, out=oI),
             "decode": lambda: P.decode_batch(I, L, K, backend=tier, out=oD)}

    def check():
        assert (np.asarray(oD) == np.asarray(Y)).all() and (np.asarray(oY) == np.asarray(Y)).all()
    return G * L, calls, check


def measure_opus_case(L, K, scale, rounds=OPUS_ROUNDS, tiers=("numba", "torch")) -> list[dict]:
    """Rows of CPU-time rates (weights/s) of search, encode and decode per tier at (L, K):
    the best of ``rounds`` rounds, each round timing every call of every tier once, so that
    a slow spell of a shared machine touches all of them alike (the torch / numba ratios
    compare calls made side by side)."""
    setups = {tier: _op_calls(tier, L, K, scale) for tier in tiers}
    best = {(tier, op): float("inf") for tier in tiers for op in setups[tier][1]}
    faults = dict.fromkeys(best, 0)
    for _ in range(rounds):
        for tier, (_, calls, _) in setups.items():
            for op, call in calls.items():
                f, c = _page_faults(), time.process_time()
                call()
                best[tier, op] = min(best[tier, op], time.process_time() - c)
                faults[tier, op] += _page_faults() - f
    rows = []
    for tier, (n, calls, check) in setups.items():
        check()
        rows.append({"L": L, "K": K, "index_bits": P.bits(L, K), "tier": tier,
                     **{op: n / best[tier, op] for op in calls},
                     **{f"{op}_page_faults": faults[tier, op] / rounds for op in calls}})
    return rows


def _page_faults() -> int:
    """This process's minor page faults so far (first touches of fresh memory)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def measure_opus_settings(scale: float = 1.0, progress=None) -> list[dict]:
    """One row per (L, K, tier) of ``OPUS_SETTINGS``: search, encode, decode in weights per
    CPU-second (``measure_opus_case``), after a first pass over every setting that is not
    recorded. The torch tier allocates its work arrays per call, and a fresh page costs a
    fault on first touch (about 4 us on the virtual machines measured here); until the
    process's heap has grown to hold them, whichever setting runs first paid thousands of
    faults per call, up to half of its time. The recorded pass is the steady state."""
    for L, K in OPUS_SETTINGS:
        measure_opus_case(L, K, scale, rounds=1)
    rows = []
    for L, K in OPUS_SETTINGS:
        for row in measure_opus_case(L, K, scale):
            rows.append(row)
            if progress:
                progress(row)
    return rows


def opus_header() -> str:
    return ("| (L, K) | index bits | tier | search (M w/s) | encode (M w/s) | decode (M w/s) "
            "| Opus C / SSE2 search | Opus encode | Opus decode |\n"
            "|:---|---:|:---|---:|---:|---:|---:|---:|---:|")


def opus_row(r: dict) -> str:
    c, sse, enc, dec = opus_figures()[0][(r["L"], r["K"])]
    f = lambda v: "-" if v is None else f"{v:.3g}"
    return (f"| ({r['L']}, {r['K']}) | {r['index_bits']} | {r['tier']} | {r['search'] / 1e6:.3g} "
            f"| {r['encode'] / 1e6:.3g} | {r['decode'] / 1e6:.3g} | {f(c)} / {f(sse)} "
            f"| {f(enc)} | {f(dec)} |")


def opus_table(rows: list[dict]):
    """The Opus-settings rows beside libopus's rates (``opus_figures``), for the chapter."""
    from pvqref import book
    figs = opus_figures()[0]
    head = ["(L, K)", "index bits", "tier", "search", "encode", "decode", "Opus C search",
            "Opus SSE2 search", "Opus encode", "Opus decode"]
    body = [[f"({r['L']}, {r['K']})", r["index_bits"], r["tier"], r["search"] / 1e6,
             r["encode"] / 1e6, r["decode"] / 1e6]
            + ["-" if v is None else v for v in figs[(r["L"], r["K"])]] for r in rows]
    return book.table(head, body, [None] * 3 + [".3g"] * 7)


def opus_summary(rows: list[dict]) -> str:
    """The Numba tier against libopus, as ratios, one line per setting (for the chapter)."""
    figs, where = opus_figures()
    lines = [f"Opus: {where}. Numba tier / Opus, one thread:"]
    for r in rows:
        if r["tier"] != "numba":
            continue
        c, sse, enc, dec = figs[(r["L"], r["K"])]
        s = (f"({r['L']}, {r['K']}): search {r['search'] / 1e6 / c:.2f}x Opus C, "
             f"{r['search'] / 1e6 / sse:.2f}x Opus SSE2")
        if enc is not None:
            s += f"; encode {r['encode'] / 1e6 / enc:.2f}x, decode {r['decode'] / 1e6 / dec:.2f}x"
        lines.append(s)
    return "\n".join(lines)


def torch_ratios(rows: list[dict]) -> str:
    """The torch tier's rates over the Numba tier's, per (L, K) of an Opus-settings run (one
    CPU thread), one line per setting, for the chapter."""
    at = {(r["L"], r["K"], r["tier"]): r for r in rows}
    lines = ["torch tier / numba tier, one CPU thread:"]
    for L, K in OPUS_SETTINGS:
        tc, nb = at[(L, K, "torch")], at[(L, K, "numba")]
        lines.append(f"({L}, {K}): " + ", ".join(f"{op} {tc[op] / nb[op]:.2f}x"
                                                 for op in ("search", "encode", "decode")))
    return "\n".join(lines)


def page_faults(rows: list[dict]) -> str:
    """Minor page faults per call of each tier (mean over the recorded rounds), one line per
    setting, for the chapter: the torch tier's rates move with them."""
    lines = ["page faults per call (search / encode / decode):"]
    for L, K in OPUS_SETTINGS:
        per = [f"{r['tier']} " + " / ".join(f"{r.get(op + '_page_faults', float('nan')):,.0f}"
                                         for op in ("search", "encode", "decode"))
               for r in rows if (r["L"], r["K"]) == (L, K)]
        lines.append(f"({L}, {K}): " + "; ".join(per))
    return "\n".join(lines)


def opus_agreement() -> str:
    """Where libopus's searches return another point than pvqref's on the same unit vectors,
    and how often pvqref's is the closer one in angle (results/opus_peer.json)."""
    run = bench.load("opus_peer")
    parts = [f"({r['L']}, {r['K']}): C {r['differ_c']} of {r['groups']} (ours closer in "
             f"{r['ours_closer_c']}), SSE2 {r['differ_sse2']} (ours closer in "
             f"{r['ours_closer_sse2']})" for r in run["rows"]]
    return "groups where Opus's point differs from ours: " + "; ".join(parts)


def opus_targets(rows: list[dict]) -> str:
    """Issue 15's targets (CPU-time rates, one thread), each met or MISSED with numbers:
    against the issue's Opus figures (Intel Xeon) and, when recorded, against libopus timed
    on this record's machine (``benchmarks/peer_opus.py``)."""
    at = {(r["L"], r["K"], r["tier"]): r for r in rows}
    out = ["Targets of issue 15 (M w/s, CPU time, one thread):"]

    def check(what, v, target):
        out.append(f"- {what}: {v / 1e6:.1f} (target >= {target:.3g}): "
                   f"{'met' if v >= target * 1e6 else 'MISSED'}")

    figures = [(OPUS_ISSUE, "issue's Opus")]
    here, where = opus_figures()
    if here is not OPUS_ISSUE:
        figures.append((here, "Opus here"))
    for L, K in OPUS_SETTINGS:
        nb = at[(L, K, "numba")]
        for figs, name in figures:
            c = figs[(L, K)]
            if L < 128:
                check(f"({L},{K}) numba search, within 1.5x of {name} C {c[0]:.3g}",
                      nb["search"], c[0] / 1.5)
                check(f"({L},{K}) numba encode, within 2x of {name} {c[2]:.3g}",
                      nb["encode"], c[2] / 2)
                check(f"({L},{K}) numba decode, within 2x of {name} {c[3]:.3g}",
                      nb["decode"], c[3] / 2)
            else:
                check(f"({L},{K}) numba search, within 2x of {name} SSE2 {c[1]:.3g}",
                      nb["search"], c[1] / 2)
        if L == 128:
            check(f"({L},{K}) numba encode", nb["encode"], 60)
            check(f"({L},{K}) numba decode", nb["decode"], 50)
        tc = at[(L, K, "torch")]
        for op in ("search", "encode", "decode"):
            check(f"({L},{K}) torch CPU {op}, within 3x of numba", tc[op], nb[op] / 3e6)
    if len(figures) > 1:
        out.append(f"(Opus here: {where})")
    return "\n".join(out)


# ---- the search corpus: the fast tiers against the oracle on 10^6 random groups --------------

CORPUS_GROUPS = 250_000                      # per (L, K) of OPUS_SETTINGS: 10^6 groups in all


def search_corpus(groups: int = CORPUS_GROUPS, seed: int = 0, progress=None) -> list[dict]:
    """For each (L, K) of ``OPUS_SETTINGS``, ``groups`` Gaussian groups searched by the
    reference tier (the oracle: Python floats, Opus's greedy scan) and by the numba and
    torch tiers (float32 filter, float64 near-ties): the number of groups where a tier's
    point differs from the oracle's, and the oracle's CPU seconds."""
    rows = []
    for L, K in OPUS_SETTINGS:
        X = np.random.default_rng([seed, L, K]).standard_normal((groups, L))
        start = time.process_time()
        ref = P.search_batch(X, K, backend="reference")
        seconds = time.process_time() - start
        row = {"L": L, "K": K, "groups": groups, "reference_seconds": seconds}
        for tier, inp in (("numba", X), ("torch", torch.as_tensor(X))):
            got = np.asarray(P.search_batch(inp, K, backend=tier))
            row[f"differ_{tier}"] = int((got != ref).any(axis=1).sum())
        rows.append(row)
        if progress:
            progress(row)
    return rows


def corpus_summary(rows: list[dict]) -> str:
    """The corpus run in one sentence per tier (for the chapter and the benchmark)."""
    total = sum(r["groups"] for r in rows)
    settings = ", ".join(f"({r['L']}, {r['K']})" for r in rows)
    return "\n".join(f"{tier}: {sum(r['differ_' + tier] for r in rows):,} of {total:,} "
                      f"Gaussian groups differ from the reference tier's point "
                      f"(settings {settings})" for tier in ("numba", "torch"))


def main(argv=None):
    args, load = bench.command_line(
        "pyramid", __doc__, argv,
        scale=(float, 1.0, "batch size multiplier"),
        table=(str, "both", "which table to measure (pyramid.json, "
               "pyramid_opus_settings.json or both), or the search corpus "
               "(pyramid_search_corpus.json: 10^6 groups against the reference tier, "
               "about 15 minutes)", ("throughput", "opus", "both", "corpus")))
    torch.set_num_threads(1)
    if args.table in ("throughput", "both"):
        run_table(args, load, "pyramid", table_header, table_row, measure_all, targets)
    if args.table in ("opus", "both"):
        run_table(args, os.getloadavg()[0], "pyramid_opus_settings", opus_header, opus_row,
                  measure_opus_settings, opus_targets)
    if args.table == "corpus":
        rows = search_corpus(progress=print)
        print(corpus_summary(rows))
        if args.save:
            print("saved", bench.save("pyramid_search_corpus", rows,
                                      {"groups": CORPUS_GROUPS, "seed": 0, "threads": 1},
                                      load))


def run_table(args, load, name, header, row, measure_rows, check):
    """Measure one table (printing rows as they come), its targets, and record it with --save
    (``load``: the load average at its start)."""
    print(f"\nload average at start: {load:.2f} on {os.cpu_count()} cores\n")
    print(header())
    rows = measure_rows(args.scale, progress=lambda r: print(row(r), flush=True))
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")
    print(check(rows))
    if args.save:
        print("saved", bench.save(name, rows, {"scale": args.scale, "threads": 1}, load))

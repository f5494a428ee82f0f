"""Benchmarks: their measurements, recorded runs (``benchmarks/results/<name>.json``,
written atomically) and the tables the chapters render from them.

``pvqref.bench.<chapter>`` holds each chapter's measurements (``measure``) and table;
``benchmarks/bench_<chapter>.py`` are the thin command-line scripts that run them by hand
(``make bench``, ``make bench-record``). Speed targets live here, never in timed asserts.

A benchmark script run with ``--save`` records its rows here together with what they
were measured on (CPU, cores, load average, library versions, date, command line). The
book's chapters render their speed tables from these files, so a table in the book is
always the output of a recorded run, and re-recording shows up in ``git diff`` and, until
the notebooks are re-executed, as an nbval mismatch.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

from ..data import _atomic_write_bytes     # temp file, then rename: one writer for the project

# Recorded runs live in the source checkout (benchmarks/results), or where $PVQREF_RESULTS says.
RESULTS = Path(os.environ.get("PVQREF_RESULTS",
                              Path(__file__).resolve().parents[2] / "benchmarks" / "results"))
FORMAT = "pvqref-benchmark"
VERSION = 1


def best_time(fn, repeats: int) -> float:
    """Best wall-clock seconds of ``repeats`` runs of fn, after one warm-up run."""
    fn()                                     # warm-up (and Numba compilation)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def peak_rss_gb() -> float:
    """This process's peak resident memory so far (ru_maxrss), in GiB."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def _call(fn_and_args):
    fn, args = fn_and_args
    return fn(*args)


def in_fresh_processes(fn, cases, jobs: int = 1):
    """``fn(*case)`` for every case, each in a fresh spawned process (so that its peak
    memory is its own), ``jobs`` at a time; the results are yielded in order as they come.
    ``fn`` must be a module-level function."""
    import multiprocessing
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(jobs, maxtasksperchild=1) as pool:
        yield from pool.imap(_call, [(fn, tuple(c)) for c in cases])


def machine() -> dict:
    """What the numbers were measured on."""
    import numba
    import numpy
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "load_average_1min": os.getloadavg()[0],
            "python": platform.python_version(), "numpy": numpy.__version__,
            "numba": numba.__version__, "torch": torch.__version__}


def save(name: str, rows: list[dict], settings: dict, load_at_start: float) -> Path:
    """Write ``results/<name>.json`` atomically (temp file, then rename)."""
    record = {"format": FORMAT, "version": VERSION, "benchmark": name,
              "date": datetime.date.today().isoformat(),
              "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
              "settings": settings,
              "machine": {**machine(), "load_average_at_start": load_at_start},
              "rows": rows}
    path = RESULTS / f"{name}.json"
    _atomic_write_bytes(path, (json.dumps(record, indent=1) + "\n").encode())
    return path


def load(name: str) -> dict:
    """The recorded run ``results/<name>.json``; a clear error if it is missing or foreign."""
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: record it with "
                                f"`.venv/bin/python benchmarks/bench_{name}.py --save`; "
                                f"set $PVQREF_RESULTS if the results live elsewhere")
    record = json.loads(path.read_text())
    if record.get("format") != FORMAT or record.get("version") != VERSION:
        raise ValueError(f"{path} is not a {FORMAT} v{VERSION} record")
    return record


def describe(record: dict) -> str:
    """One line saying where and when a record was measured."""
    m = record["machine"]
    return (f"recorded {record['date']} with `{record['command']}` on {m['cpu']} "
            f"({m['cores']} cores, load average {m['load_average_at_start']:.2f} at start), "
            f"torch {m['torch']}, numba {m['numba']}")



def command_line(name: str, doc: str, argv=None, **options) -> tuple[argparse.Namespace, float]:
    """Parse the command line every benchmark script shares: its own ``options``
    (``flag=(type, default, help)`` or ``(type, default, help, choices)``) and ``--save``;
    return the arguments and the load average at the start, printed with the results and
    recorded with them."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    for flag, (kind, default, help_, *choices) in options.items():
        parser.add_argument(f"--{flag}", type=kind, default=default, help=help_,
                            choices=choices[0] if choices else None)
    parser.add_argument("--save", action="store_true",
                        help=f"record the run in benchmarks/results/{name}.json")
    return parser.parse_args(argv), os.getloadavg()[0]

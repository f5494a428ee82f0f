"""Recorded benchmark results (``benchmarks/results/<name>.json``, written atomically), and
the timing helper the benchmark scripts share.

A benchmark script run with ``--save`` records its rows here together with what they
were measured on (CPU, cores, load average, library versions, date, command line). The
book's chapters render their speed tables from these files, so a table in the book is
always the output of a recorded run, and re-recording shows up in ``git diff`` and, until
the notebooks are re-executed, as an nbval mismatch.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
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
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    fd, tmp = tempfile.mkstemp(dir=RESULTS, prefix=f"{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load(name: str) -> dict:
    """The recorded run ``results/<name>.json``; a clear error if it is missing or foreign."""
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: record it with "
                                f"`.venv/bin/python benchmarks/bench_{name}.py --save`")
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

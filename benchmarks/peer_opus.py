"""Opus/CELT's PVQ functions timed on this machine: the speed reference of issue 15.

    apt-get install libopus-dev            # the static libopus.a (Debian: 1.3.1)
    .venv/bin/python benchmarks/peer_opus.py [--save]

Builds ``benchmarks/opus_pvq.c`` (a timing harness that calls libopus's own
``op_pvq_search_c``, ``op_pvq_search_sse2``, ``encode_pulses`` and ``decode_pulses``;
no Opus source in this project) against the system's ``libopus.a`` with ``gcc -O2``, and
times them at the (L, K) of ``pvqref.bench.pyramid.OPUS_SETTINGS`` on the Gaussian groups
of ``bench_pyramid.py --table opus`` (same seeds), each normalised to a unit float32
vector as Opus expects; one thread, weights per CPU-second, best of 5. It also counts the
groups where Opus's points differ from pvqref's search on the same vectors (Opus searches
in float32, pvqref in float64). ``--save`` writes ``benchmarks/results/opus_peer.json``,
which ``bench_pyramid.py`` and the pyramid chapter set beside pvqref's rates.
"""

import os

os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import json  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from pvqref import bench  # noqa: E402
from pvqref import pyramid as P  # noqa: E402
from pvqref.bench.pyramid import OPUS_SETTINGS, OPUS_WEIGHTS  # noqa: E402

HARNESS = Path(__file__).with_name("opus_pvq.c")
LIBOPUS = Path("/usr/lib/x86_64-linux-gnu/libopus.a")
FLAGS = ["-O2"]


def opus_version() -> str:
    out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "libopus-dev"],
                         capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def build(folder: Path) -> Path:
    if not LIBOPUS.exists():
        raise SystemExit(f"{LIBOPUS} not found: apt-get install libopus-dev")
    exe = folder / "opus_pvq"
    subprocess.run(["gcc", *FLAGS, "-o", str(exe), str(HARNESS), str(LIBOPUS), "-lm"],
                   check=True)
    return exe


def measure(exe: Path, folder: Path, L: int, K: int) -> dict:
    G = OPUS_WEIGHTS["numba"] // L
    X = np.random.default_rng(L * 1000 + K).standard_normal((G, L))
    X = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    X.tofile(folder / "groups.f32")
    code = int(P.bits(L, K) <= 32)            # Opus's enumeration is 32-bit
    out = subprocess.run([str(exe), str(folder / "groups.f32"), str(L), str(K), str(code),
                          str(folder / "c.i32"), str(folder / "sse2.i32")],
                         capture_output=True, text=True, check=True)
    row = json.loads(out.stdout)
    A = np.abs(X.astype(np.float64))
    ours = np.abs(P.search_batch(X.astype(np.float64), K, backend="numba"))
    for name, key in (("c.i32", "c"), ("sse2.i32", "sse2")):
        theirs = np.abs(np.fromfile(folder / name, dtype=np.int32).reshape(G, L))
        differ = (theirs != ours).any(axis=1)
        row[f"differ_{key}"] = int(differ.sum())
        # where they differ, which point is closer in angle to the group (cosine, float64)?
        cos = lambda Y: (A[differ] * Y[differ]).sum(1) / np.linalg.norm(Y[differ], axis=1)
        row[f"ours_closer_{key}"] = int((cos(ours) > cos(theirs)).sum())
    return row


def main(argv=None):
    args, load = bench.command_line("opus_peer", __doc__, argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        exe = build(folder)
        rows = []
        for L, K in OPUS_SETTINGS:
            rows.append(measure(exe, folder, L, K))
            print(json.dumps(rows[-1]), flush=True)
    cc = subprocess.run(["gcc", "--version"], capture_output=True, text=True).stdout
    settings = {"opus": f"libopus-dev {opus_version()} (static libopus.a)",
                "harness": f"gcc {' '.join(FLAGS)} ({cc.splitlines()[0]})", "threads": 1}
    if args.save:
        print("saved", bench.save("opus_peer", rows, settings, load))


if __name__ == "__main__":
    main()

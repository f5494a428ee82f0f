"""Throughput of the complete PVQ quantizer per tier (see ``pvqref/bench/gain.py``).

    .venv/bin/python benchmarks/bench_gain.py [--repeats 3] [--save]
"""

import os

for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")          # one thread, before numpy/numba/torch load

from pvqref.bench.gain import main  # noqa: E402

if __name__ == "__main__":
    main()

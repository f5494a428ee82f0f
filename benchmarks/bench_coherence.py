"""Throughput of the randomized Hadamard transform per tier (see ``pvqref/bench/coherence.py``).

    .venv/bin/python benchmarks/bench_coherence.py [--rows 8192] [--repeats 5] [--save]
"""

import os

for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")          # one thread, before numpy/numba/torch load

from pvqref.bench.coherence import main  # noqa: E402

if __name__ == "__main__":
    main()

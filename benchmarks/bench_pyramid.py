"""Throughput of pvqref.pyramid per tier (see ``pvqref/bench/pyramid.py``).

    .venv/bin/python benchmarks/bench_pyramid.py [--scale 1.0] [--table both] [--save]

Two tables: the per-tier throughput table (``pyramid.json``, rendered by the pyramid
chapter) and search / encode / decode at the (L, K) of Opus's C code measured in issue 15
(``pyramid_opus_settings.json``).
"""

import os

for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")          # one thread, before numpy/numba/torch load

from pvqref.bench.pyramid import main  # noqa: E402

if __name__ == "__main__":
    main()

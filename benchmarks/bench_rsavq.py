"""RSAVQ's EDSG lambda sweep on the whole model (see ``pvqref/bench/rsavq.py``).

    .venv/bin/python benchmarks/bench_rsavq.py [--lambdas 0,0.05] [--save]

One process, one thread unless PVQREF_THREADS says otherwise: the Fisher of every layer
once (about 3 minutes on 2 threads), then one PVQ-H quantization and evaluation per lambda
(``results/rsavq.json``, written after every case).
"""

import os

for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, os.environ.get("PVQREF_THREADS", "1"))

from pvqref.bench.rsavq import main  # noqa: E402

if __name__ == "__main__":
    main()

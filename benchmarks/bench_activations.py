"""PVQ for activations on the whole model (see ``pvqref/bench/activations.py``).

    .venv/bin/python benchmarks/bench_activations.py --part grid --weights fp [--save]
    .venv/bin/python benchmarks/bench_activations.py --part grid --weights pvq-h [--save]
    .venv/bin/python benchmarks/bench_activations.py --part cost [--save]

One process, one thread unless PVQREF_THREADS says otherwise (the two grids can run side
by side on two cores); results in ``results/activations_{fp,pvqh,cost}.json``, written
after every case.
"""

import os

for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, os.environ.get("PVQREF_THREADS", "1"))

from pvqref.bench.activations import main  # noqa: E402

if __name__ == "__main__":
    main()

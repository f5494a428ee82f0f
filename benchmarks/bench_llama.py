"""Quantize SmolLM2 end to end, pack, reload and evaluate (see ``pvqref/bench/llama.py``).

    .venv/bin/python benchmarks/bench_llama.py [--save]

One fresh process per case, one thread unless PVQREF_THREADS says otherwise; about ten
minutes per Hessian case on one core (``results/llama.json``, written after every case).
"""

import os

for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, os.environ.get("PVQREF_THREADS", "1"))

from pvqref.bench.llama import main  # noqa: E402

if __name__ == "__main__":
    main()

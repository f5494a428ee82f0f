"""Seconds, peak memory and perplexity of the Hessian-aware quantizers (see
``pvqref/bench/hessian.py``).

    .venv/bin/python benchmarks/bench_hessian.py [--repeats 2] [--jobs 1] [--save]
    .venv/bin/python benchmarks/bench_hessian.py --mode model [--jobs 2] [--save]

``--mode layer`` (default): one 1536 x 576 layer per method and tier
(``results/hessian.json``). ``--mode model``: the whole-model grid of the chapter, about
ten minutes per Hessian case on one core (``results/hessian_models.json``, written after
every case).
"""

import os

for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")          # one thread, before numpy/numba/torch load

from pvqref.bench.hessian import main  # noqa: E402

if __name__ == "__main__":
    main()

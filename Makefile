# Every target creates .venv when missing. torch is pinned to the CPU wheel first: an unpinned torch
# would pull a multi-GB CUDA build.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export OMP_NUM_THREADS ?= 2
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo test lint bench venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/workbench demo --out out/demo --overwrite

# Two one-thread workers (pytest-xdist) give ~1.4x the throughput of one two-thread process on 2 cores; tests
# that share an expensive fixture carry one xdist_group so they run on one worker.
WORKERS ?= 2
test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q tests --nbmake notebooks -n $(WORKERS) --dist loadgroup

# ruff, then the import rule (README "Layout"; contracts in pyproject.toml)
lint: $(STAMP)
	$(BIN)/ruff check workbench tracing editors tests benchmarks
	$(BIN)/lint-imports

bench: $(STAMP)
	for f in benchmarks/*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) out

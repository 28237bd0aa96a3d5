# Two entry points for a fresh machine: `make demo` and `make test`. Each builds .venv itself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The torch / torchvision pair that this project's CPU machines carry as wheels; on other
# machines any matching pair works (override with `make test TORCH_PINS=`).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
WORKDIR ?= runs/demo

.PHONY: demo test install install-test clean

# Bytecode is written on first import, not at install: pip's byte-compilation of all ~25,000 modules (torch,
# TensorFlow, transformers...) took about 63 s of a fresh install, while a test run imports about 9,700 of
# them (the first import of torch, TensorFlow, JAX and the rest compiles 6,300 in about 13 s). These machines
# set PYTHONDONTWRITEBYTECODE=1; with it and --no-compile, every test process recompiled its imports from
# source (a fresh `make test`: 17:34 against about 12), so make's recipes run without it.
unexport PYTHONDONTWRITEBYTECODE
NEW_VENV = [ -x $(PY) ] || ($(PYTHON) -m venv $(VENV) && $(VENV)/bin/pip install -q --upgrade pip)

$(VENV)/.core: setup.py
	$(NEW_VENV)
	$(VENV)/bin/pip install -q --no-compile -e .
	touch $@

# One pip run for the package and its test extras (one resolve, one editable build): on a fresh machine
# about 25 s less than installing the package first. It serves `make demo` too.
$(VENV)/.test: setup.py
	$(NEW_VENV)
	$(VENV)/bin/pip install -q --no-compile -e ".[test]" $(TORCH_PINS)
	touch $(VENV)/.core $@

install: $(VENV)/.core
install-test: $(VENV)/.test

# Demo world v4, seed 0: the CLIP base on single objects, then TripletCLIP and its compute-matched CLIP
# baseline fine-tuned from it, side by side, next to the seed spread of the v3 floor study
# (docs/results/v3/results.json; the v4 study's results will take its place).
demo: $(VENV)/.core
	$(PY) launch/reproduce.py --output_dir $(WORKDIR) --arms clip,tripletclip --seeds 0 \
	    --reference docs/results/v3/results.json

# Formatting and lint first (ruff.toml; `.venv/bin/ruff format .` fixes the formatting), then the tests,
# a module to a worker at a time (module fixtures such as the storage server are built once), the slowest
# modules first (tests/conftest.py). Three workers on two cores: the bucket and pod tests spend much of
# their time waiting on the storage server's retries and on their own subprocesses, and a third worker
# fills those waits (a whole run: 560 s against 592 s with two on a 2-vCPU Xeon; within the run-to-run
# noise on a 2-vCPU AMD EPYC, benchmarks/RESULTS.md).
test: $(VENV)/.test
	$(VENV)/bin/ruff format --check --quiet . || (echo "Unformatted files: run .venv/bin/ruff format ." && exit 1)
	$(VENV)/bin/ruff check --quiet .
	$(PY) -m pytest -q -n 3 --dist loadfile --no-loadscope-reorder tests

clean:
	rm -rf $(VENV) runs

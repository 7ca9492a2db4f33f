# The README's two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Every install takes the exact versions of constraints.txt (pyproject.toml only
# states the ranges epochal works with).
PIP := $(BIN)/python -m pip install -q -c constraints.txt

.PHONY: demo test bench gpu-wheels gpu-check clean

# torch is installed on its own first so that pip takes the pinned CPU wheel
# instead of resolving a newer CUDA build.
$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e .
	touch $@

$(BIN)/.dev-installed: $(BIN)/.installed
	$(PIP) -e '.[dev,plots]'
	touch $@

$(BIN)/.bench-installed: $(BIN)/.dev-installed
	$(PIP) -e '.[bench]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/epochal run walks --id demo --overwrite

test: $(BIN)/.dev-installed
	$(BIN)/python -m pytest

bench: $(BIN)/.bench-installed
	$(BIN)/python benchmarks/loop_overhead.py

# The GPU check: the *_gpu.py tests, then benchmarks/gpu_speed.py's table, in at most about five
# minutes on one GPU. It makes no venv: a GPU machine often has no package index, so it runs from
# src/ on that machine's own Python and torch (2.11 or later), and installs from .whl/ the
# pure-Python packages epochal needs that such a machine lacks (`make gpu-wheels` fetches them,
# on a machine that reaches PyPI). PYTHON=python3 make gpu-check
GPU_SITE := /tmp/epochal-gpu-site
GPU_ENV := PYTHONPATH=$(CURDIR)/src:$(GPU_SITE) PYTHONUNBUFFERED=1

gpu-wheels:
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: -d .whl $$(grep -i '^tomli.w==' constraints.txt)

gpu-check:
	@if ls .whl/*.whl >/dev/null 2>&1; then \
		$(PYTHON) -m pip install -q --no-index --no-deps --no-compile --upgrade --target $(GPU_SITE) .whl/*.whl; fi
	-$(GPU_ENV) $(PYTHON) -m pytest -q -p no:cacheprovider -o addopts="--timeout=120" -rfE tests/*_gpu.py \
		| tee gpu-tests.log
	$(GPU_ENV) $(PYTHON) benchmarks/gpu_speed.py --budget $${GPU_SPEED_BUDGET:-170} --concurrent --json gpu_speed.json \
		--tests "$$(tail -n 1 gpu-tests.log)"

clean:
	rm -rf $(VENV) results build dist gpu-tests.log gpu_speed.json

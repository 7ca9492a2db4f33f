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
# The plots extra too: the demo's run ends with its loss and metric plots and a report to open.
$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e '.[plots]'
	touch $@

$(BIN)/.dev-installed: $(BIN)/.installed
	$(PIP) -e '.[dev,plots]'
	touch $@

$(BIN)/.bench-installed: $(BIN)/.dev-installed
	$(PIP) -e '.[bench]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/epochal run walks --id demo --overwrite
	$(BIN)/epochal report results/demo

test: $(BIN)/.dev-installed
	$(BIN)/lint-imports
	$(BIN)/python -m pytest

bench: $(BIN)/.bench-installed
	$(BIN)/python benchmarks/loop_overhead.py

# The GPU check (benchmarks/gpu_check.sh says what it runs): PYTHON=python3 make gpu-check on a GPU
# machine, with no venv. `make gpu-wheels` fetches into .whl/ what such a machine may lack.
gpu-wheels:
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: -d .whl $$(grep -i '^tomli.w==' constraints.txt)

gpu-check:
	PYTHON=$(PYTHON) bash benchmarks/gpu_check.sh

clean:
	rm -rf $(VENV) results build dist gpu-tests.log gpu_speed.json

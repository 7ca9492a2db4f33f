# The README's two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test bench clean

# torch is installed on its own first so that pip takes the pinned CPU wheel
# instead of resolving a newer CUDA build.
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e .
	touch $@

$(BIN)/.dev-installed: $(BIN)/.installed
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

$(BIN)/.bench-installed: $(BIN)/.dev-installed
	$(BIN)/python -m pip install -q -e '.[bench]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/epochal run walks --id demo --overwrite

test: $(BIN)/.dev-installed
	$(BIN)/python -m pytest

bench: $(BIN)/.bench-installed
	$(BIN)/python benchmarks/loop_overhead.py

clean:
	rm -rf $(VENV) results

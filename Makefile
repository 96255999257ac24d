# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: demo test lint bench clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first: on machines without CUDA take the CPU build (a local wheel where present),
	# otherwise pip would resolve a multi-GB CUDA build as a dependency.
	if command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/pip install -q "torch>=2.4"; \
	else $(BIN)/pip install -q torch==2.13.0; fi
	$(BIN)/pip install -q -e ".[dev,embed]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/sftlab demo --out runs/demo

test: $(STAMP)
	$(BIN)/ruff check sftlab tests benchmarks
	$(BIN)/python -m pytest -n 2 tests

bench: $(STAMP)
	$(BIN)/pip install -q -e ".[dev,bench]"
	PY=$(BIN)/python benchmarks/run_all.sh  # QUICK=1 make bench: small sizes, a few minutes

clean-venv:
	rm -rf $(VENV)

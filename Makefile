# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# They install exactly what was tested: requirements/lock.txt (every package pinned with hashes, compiled for
# Python 3.11 on Linux x86_64 against the CPU build of torch named in requirements/torch-cpu.txt).
# pyproject.toml keeps honest ranges for people who `pip install sftlab` as a library.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
LOCK := requirements/lock.txt
TORCH := $(shell sed -n 's/^torch==\([0-9.]*\).*/\1/p' requirements/torch-cpu.txt)
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml $(LOCK) requirements/torch-cpu.txt | sha1sum | cut -c1-12)

.PHONY: venv demo test test-latest bench lock clean-venv

$(STAMP): pyproject.toml $(LOCK) requirements/torch-cpu.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first and alone: on machines without CUDA the CPU build (a local wheel where present), otherwise
	# pip would resolve a multi-GB CUDA build; where nvidia-smi answers, PyPI's CUDA build of the same release.
	if command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/pip install -q torch==$(TORCH); \
	else $(BIN)/pip install -q --no-deps torch==$(TORCH); fi
	# everything else exactly as locked (hashes checked), then sftlab itself without resolving anything
	$(BIN)/pip install -q --no-deps --require-hashes -r $(LOCK)
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/python tools/lockfile.py check $(LOCK)
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

venv: $(STAMP)  # `make venv VENV=DIR`: the locked environment anywhere

demo: $(STAMP)
	$(BIN)/sftlab demo --out runs/demo

test: $(STAMP)
	$(BIN)/ruff check sftlab tests benchmarks tools
	$(BIN)/lint-imports  # the package layering: [tool.importlinter] in pyproject.toml
	$(BIN)/python -m pytest -n 2 tests

# The newest releases of the libraries whose internals sftlab hooks, without the lock, in .venv-latest:
# reports "newer X breaks Y" and exits 0 (CI runs it after `make test`; it never fails a landing).
test-latest: $(STAMP)
	$(BIN)/python tools/lockfile.py latest $(LOCK) --venv .venv-latest

bench: $(STAMP)
	PY=$(BIN)/python benchmarks/run_all.sh  # QUICK=1 make bench: small sizes, a few minutes

# Re-resolve the lock from pyproject.toml (newest releases within its ranges); commit the result with the
# test run that passed on it.
lock: $(STAMP)
	$(BIN)/uv pip compile pyproject.toml --extra dev --extra embed --extra bench --extra qwen --extra benchmarks \
	  --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	  $(if $(wildcard /opt/wheels),--find-links /opt/wheels,--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match) \
	  -c requirements/torch-cpu.txt --no-emit-package torch -o $(LOCK)

clean-venv:
	rm -rf $(VENV) .venv-latest

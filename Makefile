# Each target creates or reuses .venv and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.embench-installed

.PHONY: demo test test-all bench lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch is installed exactly as pinned (pip only: the wheels lie on this disk).
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/embench run --encoder p_vae --task lunarlander --preset quick

test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m ""

bench: $(STAMP)
	$(PY) benchmarks/run_all.py $(BENCH_ARGS)

# ruff, then the import contracts of pyproject.toml (layers, forbidden imports, no cycles)
lint: $(STAMP)
	$(VENV)/bin/ruff check embench encoders tasks tests benchmarks .ci/lint_imports.py
	$(PY) .ci/lint_imports.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache

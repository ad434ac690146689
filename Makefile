# The two commands a newcomer needs: `make dev` (install and run everything) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat setup.cfg pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: dev test test-isolated lint typecheck unit bench clean browsers

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

## Install, then run migrations, the API, a worker and the sweeper (embedded servers if needed).
dev: $(STAMP)
	$(BIN)/taskexec dev $(ARGS)

## Install, then lint, type-check and run every test suite (unit, api, integration, reliability),
## then the tests that depend on their surroundings again, in a network namespace with no services.
test: $(STAMP) browsers lint typecheck
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	$(BIN)/python tests/isolated.py $(PYTEST_ARGS)

## Only the run in a network namespace with no services (root; otherwise it says why it skips).
test-isolated: $(STAMP)
	$(BIN)/python tests/isolated.py $(PYTEST_ARGS)

## Debian's headless Chromium and its driver for tests/browser, installed when missing (as root;
## elsewhere it says what to install, and the browser tests skip, except in CI where they fail).
browsers:
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	  else echo "browser tests need: apt-get install chromium chromium-driver"; fi; }

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

## Only the fast unit tests.
unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit -q

## The benchmark suite (several minutes; see docs/benchmarks.md).
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[dev,bench]"
	$(BIN)/python -m bench $(ARGS)

clean:
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache *.egg-info

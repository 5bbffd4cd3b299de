# make demo: install into .venv and run the main job.  make test: install and run every check.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PY_DIRS := toolservers envs rollout trainer benchmarks tests

.PHONY: install demo test lint typecheck unit docker-engine clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]' 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -c "import toolservers, torch, faiss, sentence_transformers, mcp, fastapi"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/toolgym demo run --workdir .demo

lint: install
	$(BIN)/ruff check $(PY_DIRS)
	$(BIN)/ruff format --check $(PY_DIRS)

typecheck: install
	$(BIN)/mypy $(PY_DIRS)

unit: install
	$(BIN)/pytest -q

# Docker tests need an engine; this installs and starts one where possible (root, apt).
docker-engine:
	-bash docker/ensure-engine.sh

test: install lint typecheck docker-engine unit

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache

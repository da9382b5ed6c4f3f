# lifeboat: `make backup` (a real backup; a demo database when DATABASE_URL is
# unset) and `make test` (the whole suite). See README.md.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
DEMO_DIR := $(CURDIR)/.demo

# Debian packages the tests use, as package:probe pairs.
TEST_SYSTEM_DEPS := postgresql-15:/usr/lib/postgresql/*/bin/initdb postgresql-client:pg_dump \
	logrotate:logrotate cron:cron faketime:faketime age:age zstd:zstd pgbackrest:pgbackrest \
	jq:jq

.PHONY: help setup setup-test backup test test-unit test-integration lint bench clean demo-stop \
	molecule molecule-setup collection

help:
	@echo "make setup     create .venv with pinned dependencies and the lifeboat CLI"
	@echo "make backup    back up \$$DATABASE_URL (or an embedded demo database) with playbooks/backup.yml"
	@echo "make test      lint + unit + integration tests against real servers"
	@echo "make bench     benchmarks (about 1 GB of generated data; several minutes)"
	@echo "make lint      ruff + ansible-lint (production profile) + ansible-test validate-modules"
	@echo "make collection build/lifeboat-postgresql-<version>.tar.gz, for ansible-galaxy collection install"
	@echo "make molecule  provision two podman containers from the built collection, run the playbooks, verify with testinfra"

$(VENV)/.runtime: requirements/runtime.txt requirements/host.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements/runtime.txt
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps -e .
	@touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements/dev.txt
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements/dev.txt
	@touch $@

setup: $(VENV)/.runtime

setup-test: $(VENV)/.dev
	@tools/system-deps.sh $(TEST_SYSTEM_DEPS)

backup: setup
	@if [[ -z "$${DATABASE_URL:-}" ]]; then \
		echo "DATABASE_URL is not set: using the demo database in .demo/ (make demo-stop stops it)"; \
		tools/system-deps.sh postgresql-15:/usr/lib/postgresql/*/bin/initdb; \
		export DATABASE_URL="$$($(BIN)/python tools/pgcluster.py demo-url $(DEMO_DIR))"; \
	fi; \
	ansible-playbook playbooks/backup.yml $(ARGS)

demo-stop:
	@$(BIN)/python tools/pgcluster.py demo-stop $(DEMO_DIR)

lint: setup-test
	ruff check .
	ruff format --check module_utils library doc_fragments tests bench tools molecule roles
	$(MAKE) collection
	# The built tree: molecule's converge.yml imports lifeboat.postgresql.provision.
	ANSIBLE_COLLECTIONS_PATH=$(CURDIR)/build/collection ansible-lint --profile production
	python tools/collection_sanity.py

# The lifeboat.postgresql collection, assembled from this layout into build/
# (tools/build_collection.py); ansible-test checks it in `make lint`.
collection: setup
	python tools/build_collection.py

test-unit: setup-test
	pytest -q tests/unit

test-integration: setup-test
	pytest -q tests/integration

# -rs lists every skip; tests/conftest.py turns a skip into a failure unless
# it is on its allow-list (every tool a test needs is installed above).
# tools/test.sh runs pytest and `make molecule` side by side (about 15 minutes
# together on 2 cores, instead of about 25 one after the other).
test: setup-test lint molecule-setup
	tools/test.sh

# Molecule + testinfra in their own venv (the full `ansible` bundle, for
# containers.podman), so the control node's runtime stays on ansible-core.
MVENV := .venv-molecule
$(MVENV)/.installed: requirements/molecule.txt
	@test -x $(MVENV)/bin/python || $(PYTHON) -m venv $(MVENV)
	$(MVENV)/bin/python -m pip install -q --disable-pip-version-check -r requirements/molecule.txt
	@touch $@

molecule-setup: setup-test $(MVENV)/.installed
	@tools/molecule.sh --deps

# tools/molecule.sh installs podman/runc/debootstrap when missing, builds the
# base image once, and removes every container and server it starts.
molecule: molecule-setup
	tools/molecule.sh $(SCENARIO)

bench: setup-test
	python bench/run.py

clean: demo-stop
	rm -rf $(VENV) $(MVENV) $(DEMO_DIR) .pytest_cache .ruff_cache

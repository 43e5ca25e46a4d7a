# Floatbridge developer entry points. `make test` is what CI runs (via .ci/run).
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
PIP_FLAGS ?= -q --disable-pip-version-check --root-user-action=ignore
INFRA := bash deploy/local/infra.sh
SERVICES := kafka postgres prometheus
TEST_DIRS := $(wildcard tests/unit tests/integration tests/e2e)
PYTEST_ARGS ?=
# make itself exits 2 on any failure; the exact pytest status is kept here for .ci/run.
PYTEST_RC_FILE ?= .local/logs/pytest.rc

.PHONY: help install constraints infra-up infra-down infra-status test unit lint demo bench soak

help:
	@echo "make install      pip install -e '.[dev]' pinned by constraints.txt"
	@echo "make infra-up     start Kafka :19092, PostgreSQL :55432, Prometheus :19090 (deploy/local/infra.sh)"
	@echo "make infra-down   stop them"
	@echo "make test         install, infra up, pytest $(TEST_DIRS), infra down (only if this run started it)"
	@echo "make unit         unit tests only, no servers"
	@echo "make lint         ruff + mypy"
	@echo "make demo|bench|soak  floatbridge demo|bench|soak"
	@echo "make constraints  regenerate constraints.txt from the installed versions"

install:
	$(PYTHON) -m pip install $(PIP_FLAGS) -c constraints.txt -e '.[dev]'

constraints:
	$(PYTHON) deploy/local/freeze_constraints.py constraints.txt

infra-up:
	$(INFRA) up

infra-down:
	$(INFRA) down

infra-status:
	$(INFRA) status

# Services started by this target are stopped afterwards; services that were already running (shared by
# other developers) are left running. Exit status is pytest's (also written to PYTEST_RC_FILE).
test: install
	@mkdir -p .local/logs; rm -f $(PYTEST_RC_FILE); started=""; \
	for s in $(SERVICES); do bash deploy/local/$$s.sh status >/dev/null 2>&1 || started="$$started $$s"; done; \
	stop_started() { for s in $$started; do bash deploy/local/$$s.sh stop >/dev/null 2>&1 || true; done; }; \
	if ! $(INFRA) up >.local/logs/infra-up.log 2>&1; then cat .local/logs/infra-up.log; \
	  echo "make test: infrastructure failed to start (logs in .local/logs/)"; stop_started; exit 1; fi; \
	eval "$$($(INFRA) env)"; \
	$(PYTHON) -m pytest $(TEST_DIRS) $(PYTEST_ARGS); rc=$$?; echo $$rc >$(PYTEST_RC_FILE); \
	stop_started; [[ -n "$$started" ]] && echo "make test: stopped$$started"; \
	exit $$rc

unit:
	$(PYTHON) -m pytest tests/unit $(PYTEST_ARGS)

lint:
	ruff check .
	mypy

demo: install
	$(PYTHON) -m floatbridge.cli demo

bench: install
	$(PYTHON) -m floatbridge.cli bench

SOAK_ARGS ?= --minutes 10 --rate 500 --workers 2 --merchants 50
soak: install
	eval "$$($(INFRA) env)"; $(PYTHON) -m floatbridge.cli soak $(SOAK_ARGS)
	eval "$$($(INFRA) env)"; $(PYTHON) -m pytest -m soak tests/e2e $(PYTEST_ARGS)

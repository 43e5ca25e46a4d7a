# Floatbridge developer entry points. `make test` is what CI runs (via .ci/run).
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
PIP_FLAGS ?= -q --disable-pip-version-check --root-user-action=ignore
INFRA := bash deploy/local/infra.sh
TEST_DIRS := $(wildcard tests/unit tests/integration tests/e2e)
PYTEST_ARGS ?=

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

# Infra started by this target is stopped afterwards; infra that was already running (shared by other
# developers) is left running. Exit status is pytest's.
test: install
	@mkdir -p .local/logs; already_up=0; $(INFRA) status >/dev/null 2>&1 && already_up=1; \
	if ! $(INFRA) up >.local/logs/infra-up.log 2>&1; then cat .local/logs/infra-up.log; rm -f .local/logs/infra-up.log; \
	  echo "make test: infrastructure failed to start (logs in .local/logs/)"; \
	  [[ $$already_up == 1 ]] || $(INFRA) down >/dev/null 2>&1; exit 1; fi; \
	rm -f .local/logs/infra-up.log; \
	eval "$$($(INFRA) env)"; \
	$(PYTHON) -m pytest $(TEST_DIRS) $(PYTEST_ARGS); rc=$$?; \
	if [[ $$already_up == 1 ]]; then echo "make test: infrastructure was already running; left it up"; \
	else $(INFRA) down >/dev/null 2>&1 || true; fi; \
	exit $$rc

unit:
	$(PYTHON) -m pytest tests/unit $(PYTEST_ARGS)

lint:
	ruff check .
	mypy

demo:
	floatbridge demo

bench:
	floatbridge bench

soak:
	floatbridge soak --minutes 10 --rate 500
	eval "$$($(INFRA) env)"; $(PYTHON) -m pytest -m soak tests/e2e $(PYTEST_ARGS)

# gatewayha: the project's interface. `make up` and `make test` do all set-up on Debian 12 as root.
SHELL := /bin/bash
.DEFAULT_GOAL := help

help:
	@echo "make up      start the local stack (Postgres, 2 API instances, 2 job workers, HAProxy) on :8000"
	@echo "make down    stop everything make up started"
	@echo "make status  show the local stack's processes"
	@echo "make test    lint + unit + integration + e2e (real dask-gateway client)"
	@echo "make lint    ruff"

bootstrap:
	@scripts/bootstrap.sh

up: bootstrap
	@scripts/stack.sh up

down:
	@scripts/stack.sh down

status:
	@scripts/stack.sh status

lint: bootstrap
	@.venv/bin/ruff check app tests scripts
	@.venv/bin/ruff format --check app tests scripts

test: bootstrap
	@scripts/test.sh

.PHONY: help bootstrap up down status lint test

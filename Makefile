# gatewayha: the project's interface. `make up` and `make test` do all set-up on Debian 12 as root.
SHELL := /bin/bash
.DEFAULT_GOAL := help

help:
	@echo "make up      start the local stack (Postgres, 2 API instances, 2 job runners, HAProxy) on 127.0.0.1:8000"
	@echo "             TLS=1: HTTPS with a CA made under .state/tls; BIND=0.0.0.0: reachable from other machines"
	@echo "             WSGI=gunicorn: the API instances under gunicorn instead of granian"
	@echo "             BACKEND=slurm: Dask as jobs of a local Slurm (slurmctld, two slurmd, munge) started beside it"
	@echo "make down    stop everything make up started"
	@echo "make status  show the local stack's processes"
	@echo "make test    lint + unit + integration + e2e (real dask-gateway client) + molecule (the appliance in Docker)"
	@echo "make lint    ruff, ansible-lint (production profile), yamllint"
	@echo "make molecule  the appliance in Docker (installs/starts dockerd, builds the image)"
	@echo "make test-ha the fault-injection tests (tests/ha) against the converged appliance"

bootstrap:
	@scripts/bootstrap.sh

# make up TLS=1: HTTPS with a CA of the stack's own; make up BIND=0.0.0.0: not only loopback;
# make up WSGI=gunicorn: the API instances under gunicorn (granian by default);
# make up BACKEND=slurm: schedulers and workers as jobs of a local Slurm (scripts/slurm.sh).
up: bootstrap
	@GATEWAYHA_TLS=$(TLS) GATEWAYHA_BIND=$(BIND) GATEWAYHA_WSGI=$(WSGI) GATEWAYHA_BACKEND=$(BACKEND) scripts/stack.sh up

down:
	@scripts/stack.sh down

status:
	@scripts/stack.sh status

bootstrap-browser:
	@scripts/bootstrap-browser.sh

bootstrap-ops:
	@scripts/bootstrap-ops.sh

wheelhouse: bootstrap
	@scripts/wheelhouse.sh

lint: bootstrap bootstrap-ops
	@.venv/bin/ruff check app tests scripts molecule contrib
	@.venv/bin/ruff format --check app tests scripts molecule contrib
	@.venv-ops/bin/yamllint -s .
	@PATH=$(CURDIR)/.venv-ops/bin:$$PATH ansible-lint --profile production site.yml playbooks roles

molecule: bootstrap bootstrap-ops wheelhouse
	@scripts/docker-setup.sh
	@scripts/build-base-image.sh
	@scripts/molecule.sh

test-ha: bootstrap bootstrap-ops wheelhouse
	@scripts/docker-setup.sh
	@scripts/build-base-image.sh
	@scripts/test-ha.sh

test: bootstrap bootstrap-ops
	@scripts/test.sh

bench: bootstrap
	@bench/run.sh

.PHONY: help bootstrap bootstrap-browser bootstrap-ops wheelhouse up down status lint molecule test test-ha bench

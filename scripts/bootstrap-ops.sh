#!/usr/bin/env bash
# The operations toolchain in .venv-ops: ansible (with community.docker, community.postgresql),
# molecule + the docker driver, testinfra, ansible-lint, yamllint. Fast when already there.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=.venv-ops/.gatewayha-installed
req="ansible>=11 molecule>=25 molecule-plugins[docker] pytest-testinfra ansible-lint yamllint docker requests"
if [ ! -x .venv-ops/bin/python ] || [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$req" ]; then
    echo "bootstrap-ops: building .venv-ops"
    python3 -m venv .venv-ops
    # shellcheck disable=SC2086
    { .venv-ops/bin/pip install --upgrade pip && .venv-ops/bin/pip install $req; } > .venv-ops/pip.log 2>&1 \
        || { tail -30 .venv-ops/pip.log; echo "bootstrap-ops: pip install failed (.venv-ops/pip.log)" >&2; exit 1; }
    echo "$req" > "$stamp"
fi

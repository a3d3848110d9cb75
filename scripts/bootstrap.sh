#!/usr/bin/env bash
# Install what the project needs on a fresh Debian 12 machine (as root) and
# build the venv. Fast and silent when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for pair in postgresql:/usr/lib/postgresql/15/bin/initdb haproxy:/usr/sbin/haproxy \
            python3-venv:/usr/lib/python3.11/ensurepip/__init__.py runuser:/usr/sbin/runuser \
            procps:/usr/bin/pgrep iproute2:/usr/bin/ss curl:/usr/bin/curl; do
    pkg=${pair%%:*}; path=${pair#*:}
    [ -e "$path" ] || need+=("$pkg")
done
# runuser lives in util-linux, which every Debian has; do not try to install it by that name.
need=("${need[@]/runuser/}")
need=($(printf '%s\n' "${need[@]}" | grep -v '^$' || true))
if [ ${#need[@]} -gt 0 ]; then
    echo "bootstrap: apt-get install ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Debian starts a packaged postgresql/haproxy service where systemd runs; we use our own instances.
# The venv is built on Debian's /usr/bin/python3 (python3-venv): Dask processes run from it under
# uids of their own (tenant isolation), so its interpreter must not live in a private home
# (a pyenv under /root is unreachable for them).
base_python=/usr/bin/python3
[ -x "$base_python" ] || base_python=$(command -v python3)
stamp=.venv/.gatewayha-installed
if [ ! -x .venv/bin/python ] || [ ! -f "$stamp" ] || [ app/pyproject.toml -nt "$stamp" ] \
   || ! grep -qx "home = $(dirname "$base_python")" .venv/pyvenv.cfg 2>/dev/null; then
    echo "bootstrap: building .venv on $base_python"
    rm -rf .venv
    "$base_python" -m venv .venv
    { .venv/bin/pip install --upgrade pip && .venv/bin/pip install -e 'app[test]'; } > .venv/pip.log 2>&1 \
        || { tail -30 .venv/pip.log; echo "bootstrap: pip install failed (log: .venv/pip.log)" >&2; exit 1; }
    .venv/bin/python -c 'import gatewayha, gatewayha_preload, dask_gateway, distributed, falcon'
    touch "$stamp"
fi

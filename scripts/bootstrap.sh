#!/usr/bin/env bash
# Install what the project needs on a fresh Debian 12 machine (as root) and
# build the venv. Fast and silent when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for pair in postgresql:/usr/lib/postgresql/15/bin/initdb haproxy:/usr/sbin/haproxy \
            python3-venv:/usr/lib/python3/dist-packages/ensurepip runuser:/usr/sbin/runuser \
            procps:/usr/bin/pgrep iproute2:/usr/bin/ss curl:/usr/bin/curl; do
    pkg=${pair%%:*}; path=${pair#*:}
    [ -e "$path" ] || need+=("$pkg")
done
# runuser lives in util-linux, which every Debian has; do not try to install it by that name.
need=("${need[@]/runuser/}")
need=($(printf '%s\n' "${need[@]}" | grep -v '^$' || true))
# A python3 with a working venv module is enough (pyenv or Debian's).
if [ ${#need[@]} -gt 0 ] && [[ " ${need[*]} " == *" python3-venv "* ]] && python3 -m venv --help >/dev/null 2>&1; then
    need=($(printf '%s\n' "${need[@]}" | grep -vx python3-venv || true))
fi
if [ ${#need[@]} -gt 0 ]; then
    echo "bootstrap: apt-get install ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Debian starts a packaged postgresql/haproxy service where systemd runs; we use our own instances.
stamp=.venv/.gatewayha-installed
if [ ! -x .venv/bin/python ] || [ ! -f "$stamp" ] || [ app/pyproject.toml -nt "$stamp" ]; then
    echo "bootstrap: building .venv"
    python3 -m venv .venv
    { .venv/bin/pip install --upgrade pip && .venv/bin/pip install -e 'app[test]'; } > .venv/pip.log 2>&1 \
        || { tail -30 .venv/pip.log; echo "bootstrap: pip install failed (log: .venv/pip.log)" >&2; exit 1; }
    .venv/bin/python -c 'import gatewayha, dask_gateway, distributed, falcon' 
    touch "$stamp"
fi

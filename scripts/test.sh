#!/usr/bin/env bash
# make test: every stage, each timed; fails if any stage fails (all stages still run).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
failed=()
summary=()
stage() {
    local name=$1; shift
    local t0=$SECONDS
    echo "=== stage: $name"
    if "$@"; then summary+=("$(printf '%-12s ok     %4ds' "$name" $((SECONDS - t0)))")
    else failed+=("$name"); summary+=("$(printf '%-12s FAILED %4ds' "$name" $((SECONDS - t0)))"); fi
}
stage lint        bash -c '.venv/bin/ruff check app tests scripts && .venv/bin/ruff format --check app tests scripts'
stage unit        $PY -m pytest -q -p no:cacheprovider tests/unit
stage integration $PY -m pytest -q -p no:cacheprovider tests/integration
stage e2e         $PY -m pytest -q -p no:cacheprovider tests/e2e
echo "=== summary"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then echo "failed stages: ${failed[*]}"; exit 1; fi

#!/usr/bin/env bash
# Run every molecule scenario (make molecule). Needs dockerd (scripts/docker-setup.sh),
# the image (scripts/build-base-image.sh) and the wheelhouse (scripts/wheelhouse.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PWD/.venv-ops/bin:$PATH
export ANSIBLE_FORCE_COLOR=0 ANSIBLE_NOCOLOR=1 PY_COLORS=0 NO_COLOR=1
scenarios=${MOLECULE_SCENARIOS:-default}
for s in $scenarios; do
    t0=$SECONDS
    echo "=== molecule scenario: $s"
    molecule test -s "$s"
    echo "=== molecule scenario $s: $((SECONDS - t0))s"
done

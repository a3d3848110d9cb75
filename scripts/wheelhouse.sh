#!/usr/bin/env bash
# Build .state/wheelhouse: the gatewayha wheel (always rebuilt) and every dependency (cached),
# so appliance nodes install without reaching PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
wh=.state/wheelhouse
mkdir -p "$wh"
rm -f "$wh"/gatewayha-*.whl
# setuptools keeps app/build/lib between builds: a file removed or renamed in the tree (a
# migration) would still ship in the wheel.
rm -rf app/build
.venv/bin/pip wheel --quiet --wheel-dir "$wh" ./app 2>&1 | grep -v '^WARNING: Location' || true
ls "$wh"/gatewayha-*.whl >/dev/null
echo "wheelhouse: $(ls "$wh" | wc -l) wheels in $wh"

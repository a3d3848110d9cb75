#!/usr/bin/env bash
# make test-ha: the fault-injection tests (tests/ha) against the molecule appliance (gw1, gw2,
# db1 in Docker with systemd). Creates and converges the default scenario when needed and
# leaves it running for the next run (`make molecule` ends by destroying it). make test runs
# the same tests as a verify stage of make molecule, on its single converge.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PWD/.venv-ops/bin:$PATH
export ANSIBLE_FORCE_COLOR=0 ANSIBLE_NOCOLOR=1 PY_COLORS=0 NO_COLOR=1
t0=$SECONDS
molecule create -s default
molecule converge -s default
echo "=== test-ha: appliance converged in $((SECONDS - t0))s"
t1=$SECONDS
rc=0
python -m pytest -v -s -p no:cacheprovider -c tests/ha/pytest.ini tests/ha "$@" 2>&1 | tee .state/test-ha.log || rc=$?
echo
grep -aoE 'MEASURED .*' .state/test-ha.log || true
echo "=== test-ha: tests in $((SECONDS - t1))s (rc $rc)"
exit $rc

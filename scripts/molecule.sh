#!/usr/bin/env bash
# Run every molecule scenario (make molecule). Needs dockerd (scripts/docker-setup.sh),
# the image (scripts/build-base-image.sh) and the wheelhouse (scripts/wheelhouse.sh).
#
# Scenarios: every molecule/*/molecule.yml, "default" first (MOLECULE_SCENARIOS="a b" to
# choose). "default" converges once and then runs three verify stages: the appliance
# (molecule/default/tests), the rolling upgrade (molecule/upgrade/tests) and failover
# (molecule/failover/tests); see molecule/default/molecule.yml. Each scenario's time and the
# measured numbers (the verifiers' MEASURED lines) are printed at the end; the full
# output is kept in .state/molecule-<scenario>.log.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PWD/.venv-ops/bin:$PATH
export ANSIBLE_FORCE_COLOR=0 ANSIBLE_NOCOLOR=1 PY_COLORS=0 NO_COLOR=1

if [[ -n "${MOLECULE_SCENARIOS:-}" ]]; then
    scenarios=$MOLECULE_SCENARIOS
else
    scenarios=default
    for f in molecule/*/molecule.yml; do
        s=$(basename "$(dirname "$f")")
        [[ $s == default ]] || scenarios+=" $s"
    done
fi

mkdir -p .state
t_all=$SECONDS
summary=()
rc=0
for s in $scenarios; do
    t0=$SECONDS
    log=.state/molecule-$s.log
    echo "=== molecule scenario: $s (log: $log)"
    if molecule test -s "$s" 2>&1 | tee "$log"; then
        result=ok
    else
        result=FAILED
        rc=1
    fi
    line="=== molecule scenario $s: $result in $((SECONDS - t0))s"
    echo "$line"
    summary+=("$line")
    while IFS= read -r m; do summary+=("    $m"); done < <(grep -aoE 'MEASURED .*' "$log" || true)
    [[ $rc == 0 ]] || break
done
echo
printf '%s\n' "${summary[@]}"
echo "=== molecule: all scenarios in $((SECONDS - t_all))s"
exit $rc

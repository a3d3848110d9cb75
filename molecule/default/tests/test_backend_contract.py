"""The backend contract suite (tests/integration/test_backend_contract.py) against the real
systemd: its `local-systemd` harness (skipped on the machine that runs `make test`, where systemd
is not PID 1) and the process ones, with the appliance's own gatewayha install (gw1's venv), as
root like the job runner.

It runs on db1, not on a gateway node: a gateway node's job runner stops every gatewayha unit no
active cluster of its node owns, the suite's among them (molecule/shared/contract_suite.py says
more; the same function runs a manual check against a container of one's own).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))
import contract_suite  # noqa: E402
import gwtest  # noqa: E402


def test_the_backend_contract_holds_on_the_real_systemd():
    result = contract_suite.check("db1", venv_from="gw1")
    gwtest.log(result.output[-1500:])
    assert not result.problems, "\n".join(["the backend contract suite failed:", *result.problems, result.output])
    assert result.passed["local-systemd"] > 0, result.passed

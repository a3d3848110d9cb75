"""The backend contract suite (tests/integration/test_backend_contract.py) run inside a container
whose PID 1 is systemd: the `local-systemd` harness against the real systemd (it skips where
systemd is not PID 1, as on the machine that runs `make test`), the process ones beside it.

One function, ``check``, does it all; the molecule verifier
(molecule/default/tests/test_backend_contract.py) and a manual check against a container of
one's own (``python molecule/shared/contract_suite.py CONTAINER``) both call it:

1. the gatewayha install to test is /opt/gatewayha/venv (where roles/gatewayha installs it);
   taken from ``venv_from`` (a converged gateway node) when that is another container, copied to
   the same path (its scripts' shebangs name it) and removed again afterwards;
2. the suite and what it imports from tests/ (``SUITE``), and pytest with its dependencies as
   installed in the app venv (.venv: pure Python, the containers' Python is 3.11 as here), go
   into a scratch directory of the container; nothing is installed into the venv;
3. pytest runs there as root (as the job runner: its unit has User=root, so that it may start
   units under other uids), with the venv's python;
4. every harness must have passed every contract test (none skipped: a `local-systemd` that
   skipped would prove nothing; a harness that cannot run here, as Slurm's, is deselected in
   ``run_suite``: ``DESELECTED``), and no cluster unit may be left on the container.

Why not on a gateway node itself: a gateway node's own job runner stops every gatewayha unit
that no active cluster of that node owns (gatewayha.jobs.handlers.reap_orphans, every
haproxy.resync_interval), so it would stop the suite's processes under its feet. The molecule
verifier therefore runs the suite on db1 (systemd as PID 1, no job runner), with gw1's install.
"""

from __future__ import annotations

import io
import re
import shlex
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
APP_PYTHON = REPO / ".venv" / "bin" / "python"
INSTALL = "/opt/gatewayha"  # roles/gatewayha: gatewayha_install_dir
VENV = f"{INSTALL}/venv"
SCRATCH = "/var/tmp/gatewayha-contract"  # the suite, pytest and the tests' tmp_path (state dirs, logs)
# The suite and what it imports from tests/ (helpers: wait_until; unbound_backend: a harness;
# slurm_local: the Slurm harness's, which is deselected here: no Slurm on an appliance node).
SUITE = ("integration/test_backend_contract.py", "helpers.py", "unbound_backend.py", "slurm_local.py")
DESELECTED = "not slurm"
SUITE_FILE = "tests/integration/test_backend_contract.py"
HARNESSES = ("local-process", "local-systemd", "unbound-process")
PYTEST_DISTS = ("pytest", "pytest-timeout")
TEST_TIMEOUT_S = 120  # one contract test (pytest-timeout); each takes a few seconds
RUN_TIMEOUT_S = 300  # the whole run

# Run with the app venv: the files of the installed distributions pytest needs and their
# requirements (markers evaluated here: the containers' Python is this one's minor version),
# except those the target already has (argv[1]): the appliance's own stay in use.
_PACK = r"""
import importlib.metadata as md, io, sys, tarfile
from packaging.requirements import Requirement
have, todo, seen = set(sys.argv[1].split()), list(sys.argv[2:]), set()
out = tarfile.open(fileobj=sys.stdout.buffer, mode="w|")
while todo:
    dist = md.distribution(todo.pop())
    name = dist.metadata["Name"].lower().replace("_", "-")
    if name in seen or name in have:
        continue
    seen.add(name)
    for req in map(Requirement, dist.requires or []):
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            todo.append(req.name)
    for f in dist.files or []:
        if f.parts[0] != ".." and "__pycache__" not in f.parts:
            out.add(str(f.locate()), arcname="site/" + f.as_posix())
out.close()
print(" ".join(sorted(seen)), file=sys.stderr)
"""


@dataclass
class Result:
    rc: int
    output: str
    passed: dict[str, int]  # harness -> contract tests passed
    problems: list[str]  # why the run does not count as a pass; empty when it does


def docker(*args: str, input: bytes | None = None, timeout: float = 120, check: bool = True):
    proc = subprocess.run(["docker", *args], input=input, capture_output=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args[:3])} ... failed: {proc.stderr.decode(errors='replace')}")
    return proc


def sh(container: str, script: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    return docker("exec", container, "bash", "-c", script, timeout=timeout, check=check)


# Run with the target's python: the distributions it has.
_INSTALLED = (
    "import importlib.metadata as m; print(*{d.metadata['Name'].lower().replace('_', '-') for d in m.distributions()})"
)


def payload(have: str = "") -> bytes:
    """A tar of the suite (tests/...) and pytest (site/...: what ``have`` does not name)."""
    proc = subprocess.run(
        [str(APP_PYTHON), "-c", _PACK, have, *PYTEST_DISTS], capture_output=True, timeout=60, check=False
    )
    if proc.returncode != 0:
        raise AssertionError(f"packing pytest from {APP_PYTHON} failed: {proc.stderr.decode(errors='replace')}")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        with tarfile.open(fileobj=io.BytesIO(proc.stdout), mode="r") as site:
            for member in site.getmembers():
                tar.addfile(member, site.extractfile(member))
        for rel in SUITE:
            tar.add(str(REPO / "tests" / rel), arcname=f"tests/{rel}")
        # Its own rootdir and options: not the repository's pytest.ini (testpaths, markers).
        ini = b"[pytest]\naddopts = -p no:cacheprovider\n"
        info = tarfile.TarInfo("pytest.ini")
        info.size = len(ini)
        tar.addfile(info, io.BytesIO(ini))
    return buf.getvalue()


COPIED = f"{INSTALL}/.copied-by-contract-suite"  # what a run cut short left: replaced


def ship_venv(source: str, target: str) -> bool:
    """Copy ``source``'s VENV to the same path on ``target`` (which must have no INSTALL but one
    an earlier copy left: it is removed again afterwards); False when they are the same container
    (nothing to copy)."""
    if source == target:
        return False
    if sh(target, f"test -e {COPIED} && rm -rf {INSTALL}; test -e {INSTALL}", check=False).returncode == 0:
        raise AssertionError(f"{target} already has {INSTALL}: not overwriting it")
    packed = docker("exec", source, "tar", "-C", INSTALL, "-cf", "-", "venv", timeout=120)
    sh(target, f"mkdir -p {INSTALL} && touch {COPIED}")
    docker("exec", "-i", target, "tar", "-C", INSTALL, "-xf", "-", input=packed.stdout, timeout=120)
    return True


def cluster_units(container: str) -> set[str]:
    """The container's units of clusters (<32 hex>-scheduler, -worker-*), loaded or running."""
    out = sh(container, "systemctl list-units --all --plain --no-legend --full 'gatewayha-*.service'").stdout
    names = [line.split()[0] for line in out.decode().splitlines() if line.split()]
    return {n for n in names if re.fullmatch(r"gatewayha-[0-9a-f]{32}-.+\.service", n)}


def run_suite(container: str, python: str = f"{VENV}/bin/python") -> Result:
    """Ship the suite and pytest into ``container``, run it as root, read the outcome; units
    the suite left behind are a failure, and stopped."""
    before = cluster_units(container)
    sh(container, f"rm -rf {SCRATCH} && mkdir -p {SCRATCH}")
    have = docker("exec", container, python, "-c", _INSTALLED).stdout.decode()
    docker("exec", "-i", container, "tar", "-C", SCRATCH, "-xf", "-", input=payload(have))
    cmd = (
        f"cd {SCRATCH} && exec env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8"
        f" PYTHONPATH={SCRATCH}/site:{SCRATCH}/tests PYTHONDONTWRITEBYTECODE=1"
        f" {shlex.quote(python)} -m pytest -q -rA --timeout={TEST_TIMEOUT_S} --timeout-method=thread"
        f" --basetemp={SCRATCH}/tmp -k {shlex.quote(DESELECTED)} {SUITE_FILE} 2>&1"
    )
    t0 = time.monotonic()
    proc = sh(container, cmd, timeout=RUN_TIMEOUT_S, check=False)
    output = proc.stdout.decode(errors="replace") + f"\n(pytest in {container}: {time.monotonic() - t0:.1f} s)"
    left = sorted(cluster_units(container) - before)
    if left:
        sh(container, "systemctl stop -- " + " ".join(left), check=False)
    return judge(proc.returncode, output, left)


def judge(rc: int, output: str, leftovers: list[str]) -> Result:
    """Whether a run of the suite counts as a pass: pytest's exit status, every harness passing
    the same contract tests (the `-rA` summary lines), nothing skipped, no unit left."""
    passed: dict[str, set[str]] = {h: set() for h in HARNESSES}
    for test, harness in re.findall(rf"^PASSED {re.escape(SUITE_FILE)}::(\w+)\[([\w-]+)\]", output, re.M):
        passed.setdefault(harness, set()).add(test)
    problems = []
    if rc != 0:
        problems.append(f"pytest exited {rc}")
    tests = set().union(*passed.values())
    if not tests:
        problems.append("no contract test passed")
    for harness, done in passed.items():
        if done != tests:
            problems.append(f"{harness}: not passed: {sorted(tests - done) or 'any'}")
    if re.search(r"^(SKIPPED|XFAIL|XPASS|FAILED|ERROR)\b", output, re.M):
        problems.append("skipped, failed or errored tests (see the summary)")
    if leftovers:
        problems.append(f"units left behind: {leftovers}")
    return Result(rc, output, {h: len(t) for h, t in passed.items()}, problems)


def check(container: str, venv_from: str | None = None) -> Result:
    """The whole check on ``container`` (systemd as PID 1), with the gatewayha install of
    ``venv_from`` (default: the container's own); cleans up after itself."""
    source = venv_from or container
    if sh(container, "cat /proc/1/comm").stdout.decode().strip() != "systemd":
        raise AssertionError(f"{container}: PID 1 is not systemd")
    copied = ship_venv(source, container)
    try:
        return run_suite(container)
    finally:
        sh(container, f"rm -rf {SCRATCH}" + (f" {INSTALL}" if copied else ""), check=False)


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        print(f"usage: {sys.argv[0]} CONTAINER [VENV_FROM_CONTAINER]", file=sys.stderr)
        return 2
    result = check(*argv)
    print(result.output)
    print(f"passed per harness: {result.passed}")
    print("problems: " + ("; ".join(result.problems) if result.problems else "none"))
    return 1 if result.problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

#!/usr/bin/env python3
"""A stand-in for the part of systemd the systemd launcher uses, where systemd is not PID 1 (a
developer's machine, CI): ``systemd-run`` and ``systemctl`` (symlinks to this file) start, list,
check and stop real processes, one per unit, recorded under ``$FAKE_SYSTEMD_DIR``.

What it honours of ``systemd-run``: --unit, --working-directory, EnvironmentFile= (parsed as
systemd parses ``KEY="value"`` lines: nothing else reaches the process), Type=exec (a command
that cannot be executed fails the call), --collect (a unit that ended is gone). Cgroups, the
sandbox and --uid/--gid are not emulated: the contract suite checks the backend's behaviour, the
appliance's molecule checks run the real systemd.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

STATE = Path(os.environ["FAKE_SYSTEMD_DIR"])


def _env_file(path: str) -> dict[str, str]:
    env = {}
    for line in Path(path).read_text().splitlines():
        key, _, value = line.partition("=")
        value = value[1:-1] if value.startswith('"') and value.endswith('"') else value
        out, i = [], 0
        while i < len(value):
            if value[i] == "\\" and i + 1 < len(value):
                i += 1
            out.append(value[i])
            i += 1
        env[key] = "".join(out)
    return env


def _pid(service: str) -> int:
    """The unit's live main pid, or 0 (and its record dropped: --collect)."""
    record = STATE / service
    try:
        pid, start = record.read_text().split()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        record.unlink(missing_ok=True)
        return 0
    fields = stat[stat.rfind(")") + 2 :].split()
    if fields[0] in "ZX" or fields[19] != start:
        record.unlink(missing_ok=True)
        return 0
    return int(pid)


def systemd_run(args: list[str]) -> int:
    sep = args.index("--")
    opts, argv = args[:sep], args[sep + 1 :]
    unit = next(o.split("=", 1)[1] for o in opts if o.startswith("--unit="))
    cwd = next(o.split("=", 1)[1] for o in opts if o.startswith("--working-directory="))
    env_file = next(o.split("=", 2)[2] for o in opts if o.startswith("--property=EnvironmentFile="))
    if _pid(unit):
        print(f"Unit {unit} was already loaded", file=sys.stderr)
        return 1
    log = open(Path(cwd) / "logs" / f"{unit}.journal", "ab") if (Path(cwd) / "logs").is_dir() else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(
            argv, env=_env_file(env_file), cwd=cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    except OSError as exc:
        print(f"Failed to start transient service unit: {exc}", file=sys.stderr)
        return 1
    stat = Path(f"/proc/{proc.pid}/stat").read_text()
    STATE.mkdir(parents=True, exist_ok=True)
    (STATE / unit).write_text(f"{proc.pid} {stat[stat.rfind(')') + 2 :].split()[19]}")
    return 0


def systemctl(args: list[str]) -> int:
    verb = args[0]
    services = [a for a in args[1:] if not a.startswith("-")]
    if verb == "is-active":
        states = ["active" if _pid(s) else "inactive" for s in services]
        if "--quiet" not in args:
            print("\n".join(states))
        return 0 if all(s == "active" for s in states) else 3
    if verb == "stop":
        pids = {s: _pid(s) for s in services}
        for pid in filter(None, pids.values()):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while any(_pid(s) for s in services) and time.monotonic() < deadline:
            time.sleep(0.05)
        for s in services:
            if _pid(s):
                os.killpg(_pid(s), signal.SIGKILL)
        return 0
    if verb == "list-units":
        for record in sorted(STATE.glob("gatewayha-*.service")) if STATE.is_dir() else []:
            if _pid(record.name):
                print(f"{record.name} loaded active running {record.name}")
        return 0
    if verb == "show":  # show -p MainPID --value UNIT
        print(_pid(services[-1]) if services else 0)
        return 0
    print(f"fake systemctl: {verb} is not emulated", file=sys.stderr)
    return 1


if __name__ == "__main__":
    tool = Path(sys.argv[0]).name
    sys.exit(systemd_run(sys.argv[1:]) if tool == "systemd-run" else systemctl(sys.argv[1:]))

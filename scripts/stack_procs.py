"""Find and stop the local stack's processes (scripts/stack.sh down); stdlib only.

  stack_procs.py stop --marker K=V [--marker K=V ...] PIDFILE...
      Stop the session (or process group) each pidfile names: every live process whose session
      or process group is that pid AND whose environment holds one of the markers. Works when
      the leader is already dead (its granian worker, say, lives on in the same session); the
      marker keeps a recycled pid's unrelated session safe.
  stack_procs.py stop --unit PIDFILE...
      The same for units of the process launcher (``<pid> <starttime>`` pidfiles named
      ``<unit>.pid``): the marker is ``GATEWAYHA_UNIT=<unit>``.
  stack_procs.py sweep --marker K=V [--unit-home DIR/]
      Last resort: stop every live process whose environment holds the marker (set only for
      the processes stack.sh starts), or, with --unit-home, a launcher unit
      (``GATEWAYHA_UNIT=…``) whose HOME lies under DIR. Never this process or its ancestors.

Each stop sends SIGTERM, waits up to --timeout seconds (new members found meanwhile get
SIGTERM too), then SIGKILLs what is left and waits for it to go. Prints what it stopped and
exits 1 if anything survived.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

Predicate = Callable[[int, tuple[str, int, int], frozenset[bytes]], bool]


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, process group, session) of a process, or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2 :].split()  # the command name may hold spaces and ")"
    try:
        return fields[0], int(fields[2]), int(fields[3])
    except (IndexError, ValueError):
        return None


def _environ(pid: int) -> frozenset[bytes]:
    try:
        return frozenset(Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"))
    except OSError:
        return frozenset()


def _ancestors() -> set[int]:
    out, pid = set(), os.getpid()
    while pid > 1:
        out.add(pid)
        try:
            raw = Path(f"/proc/{pid}/stat").read_text()
            pid = int(raw[raw.rfind(")") + 2 :].split()[1])
        except (OSError, IndexError, ValueError):
            break
    return out


def _matching(pred: Predicate, spare: set[int]) -> Iterator[int]:
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in spare:
            continue
        pid = int(entry.name)
        st = _stat(pid)
        if st is None or st[0] in ("Z", "X"):  # a zombie is gone, only not yet reaped
            continue
        if pred(pid, st, _environ(pid)):
            yield pid


def _describe(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        cmd = "?"
    return f"{pid} ({cmd.strip()[:100]})"


def _signal(pids: set[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def stop(pred: Predicate, timeout: float, verbose: bool) -> bool:
    """TERM every matching process, wait, KILL the rest; True when none is left."""
    spare = _ancestors()
    found = set(_matching(pred, spare))
    if verbose:
        for pid in sorted(found):
            print(f"stack_procs: stopping {_describe(pid)}", file=sys.stderr)
    termed: set[int] = set()
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        deadline = time.monotonic() + wait
        step = 0.02
        while True:
            live = set(_matching(pred, spare))
            if not live:
                return True
            new = live - termed if sig == signal.SIGTERM else live
            _signal(new, sig)
            termed |= new
            if time.monotonic() >= deadline:
                break
            time.sleep(step)
            step = min(step * 1.5, 0.25)
        if sig == signal.SIGTERM:
            print(f"stack_procs: outlived SIGTERM by {timeout:g} s, SIGKILL: {sorted(live)}", file=sys.stderr)
    left = sorted(_matching(pred, spare))
    print(f"stack_procs: still alive after SIGKILL: {[_describe(p) for p in left]}", file=sys.stderr)
    return not left


def _pidfile_pid(path: str) -> int | None:
    try:
        first = Path(path).read_text().split()
    except OSError:
        return None
    return int(first[0]) if first and first[0].isdigit() and int(first[0]) > 1 else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("verb", choices=("stop", "sweep"))
    p.add_argument("pidfiles", nargs="*")
    p.add_argument("--marker", action="append", default=[], help="an environment entry K=V")
    p.add_argument("--unit", action="store_true", help="the pidfiles are launcher units' (<unit>.pid)")
    p.add_argument("--unit-home", help="sweep: also launcher units whose HOME is under this directory")
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_intermixed_args(argv)
    markers = frozenset(m.encode() for m in args.marker)

    if args.verb == "stop":
        wanted: dict[int, frozenset[bytes]] = {}  # session/group id -> markers that identify its members
        for f in args.pidfiles:
            pid = _pidfile_pid(f)
            if pid is None:
                continue
            if args.unit:
                wanted[pid] = frozenset({f"GATEWAYHA_UNIT={Path(f).name.removesuffix('.pid')}".encode()})
            else:
                wanted[pid] = markers
        if not wanted:
            return 0

        def pred(pid, st, env):
            for sid in {st[1], st[2]}:
                if sid in wanted and env & wanted[sid]:
                    return True
            return False

    else:
        if not markers and not args.unit_home:
            p.error("sweep needs --marker or --unit-home")
        home = f"HOME={args.unit_home}".encode() if args.unit_home else None

        def pred(pid, st, env):
            if env & markers:
                return True
            return (
                home is not None
                and any(e.startswith(b"GATEWAYHA_UNIT=") for e in env)
                and any(e.startswith(home) for e in env)
            )

    return 0 if stop(pred, args.timeout, not args.quiet) else 1


if __name__ == "__main__":
    sys.exit(main())

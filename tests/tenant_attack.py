"""What a tenant's code tries against the gateway node it runs on: one function, shipped to a
cluster's worker and scheduler by the e2e tests (local stack) and by molecule (the appliance).

``attack(targets)`` returns, for each probe, the exception's class name when the attempt
failed, or "OK: ..." when it succeeded; ``check_refused`` says which probes did not fail as
they must.
"""

from __future__ import annotations

import sys

import cloudpickle

# Shipped by value (the tenant's processes cannot import this file): callers wrap it in a
# lambda, which plain pickle refuses, so that cloudpickle takes over.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

# probe -> the exceptions that count as "refused for the right reason".
REFUSED = {
    "config": ("PermissionError",),
    "secret": ("PermissionError", "FileNotFoundError"),
    "local_env": ("PermissionError", "FileNotFoundError"),
    "victim_key": ("PermissionError",),
    "victim_token": ("PermissionError",),
    "victim_listing": ("PermissionError",),
    "clusters_listing": ("PermissionError",),
    "haproxy_admin": ("PermissionError", "FileNotFoundError"),
    "pg_socket_dir": ("PermissionError", "FileNotFoundError"),
    "pg_no_password": ("AuthRefused",),
    "pg_guessed_password": ("AuthRefused",),
    "venv_write": ("PermissionError", "OSError"),
    "app_write": ("PermissionError", "OSError"),
    "setuid_root": ("PermissionError",),
    "renice_up": ("PermissionError",),
    "raise_nproc": ("ValueError", "PermissionError"),
}


def check_refused(got: dict, victim_pids: list[int]) -> list[str]:
    """The probes of ``got`` that did not fail as they must, and own work that did not work."""
    bad = [f"{k}: {got.get(k)}" for k, allowed in REFUSED.items() if got.get(k) not in allowed]
    bad += [f"kill_{p}: {got.get(f'kill_{p}')}" for p in victim_pids
            if got.get(f"kill_{p}") not in ("ProcessLookupError", "PermissionError")]  # fmt: skip
    for key in ("sees_victim", "sees_root_processes"):
        if got.get(key) is not False:
            bad.append(f"{key}: {got.get(key)}")
    if not str(got.get("own_token", "")).startswith("OK"):
        bad.append(f"own_token: {got.get('own_token')}")
    if got.get("own_work_write") != "OK: b'mine'":
        bad.append(f"own_work_write: {got.get('own_work_write')}")
    if not got.get("uid") or got.get("uid") != got.get("euid"):
        bad.append(f"uid: {got.get('uid')}/{got.get('euid')}")
    return bad


def attack(targets: dict) -> dict:
    """Runs as the tenant (on a worker or on the scheduler): each probe returns the exception's
    class name when the attempt failed, or "OK: ..." when it succeeded."""
    import os
    import resource
    import signal
    import socket

    out = {}

    def probe(name, fn):
        try:
            out[name] = "OK: " + repr(fn())[:200]
        except Exception as exc:  # noqa: BLE001 - the failure is the result
            out[name] = type(exc).__name__

    def read(path):
        with open(path, "rb") as f:
            return f.read(64)

    out["uid"] = os.getuid()
    out["euid"] = os.geteuid()
    probe("config", lambda: read(targets["config"]))
    probe("secret", lambda: read(targets["secret"]))
    probe("local_env", lambda: read(targets["local_env"]))
    probe("victim_key", lambda: read(targets["victim_dir"] + "/tls.key"))
    probe("victim_token", lambda: read(targets["victim_dir"] + "/api-token"))
    probe("victim_listing", lambda: os.listdir(targets["victim_dir"]))
    probe("clusters_listing", lambda: os.listdir(targets["clusters_dir"]))
    probe("own_token", lambda: len(read(targets["own_dir"] + "/api-token")))

    def admin_socket():
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(targets["haproxy_sock"])
            s.sendall(b"show info\n")
            return s.recv(100)

    probe("haproxy_admin", admin_socket)
    probe("pg_socket_dir", lambda: os.listdir(targets["pg_dir"]))

    class AuthRefused(Exception):
        """Postgres refused the login itself (not a refused or timed-out connection)."""

    def pg(dsn):
        import psycopg

        try:
            with psycopg.connect(dsn, connect_timeout=5) as conn:
                return conn.execute("SELECT current_user").fetchone()
        except psycopg.OperationalError as exc:
            # Postgres itself refused the login: a missing or wrong password, or no pg_hba.conf
            # entry admitting that user from here.
            if any(w in str(exc) for w in ("password", "authentication", "pg_hba.conf")):
                raise AuthRefused(str(exc)[:200]) from None
            raise

    host = targets.get("pg_host", "127.0.0.1")
    port = targets["pg_port"]
    probe("pg_no_password", lambda: pg(f"postgresql://postgres@{host}:{port}/postgres"))
    probe("pg_guessed_password", lambda: pg(f"postgresql://gatewayha:gatewayha@{host}:{port}/gatewayha"))

    def write_venv():
        with open(targets["site_packages"] + "/gatewayha_backdoor.pth", "w") as f:
            f.write("import os\n")

    probe("venv_write", write_venv)

    def write_app():
        with open(targets["app_file"], "a") as f:
            f.write("# backdoor\n")

    probe("app_write", write_app)

    def own_work():
        p = os.path.join(os.environ["HOME"], "scratch")
        with open(p, "w") as f:
            f.write("mine")
        return read(p)

    probe("own_work_write", own_work)
    # Other tenants' processes: absent from this tenant's /proc, and out of signal's reach.
    visible = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                visible.append(read(f"/proc/{pid}/cmdline").decode(errors="replace"))
            except OSError:
                pass
    out["sees_victim"] = any(targets["victim_name"] in c for c in visible)
    out["sees_root_processes"] = any(
        "gatewayha-jobs" in c or "gatewayha-worker" in c or "haproxy" in c for c in visible
    )
    for pid in targets["victim_pids"]:
        probe(f"kill_{pid}", lambda pid=pid: os.kill(pid, signal.SIGKILL))
    probe("setuid_root", lambda: os.setuid(0))
    probe("renice_up", lambda: os.setpriority(os.PRIO_PROCESS, 0, 0))
    soft, hard = resource.getrlimit(resource.RLIMIT_NPROC)
    out["nproc_hard"] = hard
    probe("raise_nproc", lambda: resource.setrlimit(resource.RLIMIT_NPROC, (hard + 1, hard + 1)))
    return out

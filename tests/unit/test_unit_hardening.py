"""systemd-analyze security of every unit gatewayha runs, offline (from the unit files and the
sandbox the launcher gives a tenant's unit): the exposure must stay where docs/security.md says."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import jinja2
import pytest

from gatewayha.backends.launcher import SANDBOX

ROOT = Path(__file__).resolve().parents[2]
needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed"
)


def exposure(unit_file: Path) -> float:
    res = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit_file)],
        capture_output=True, text=True, check=False, cwd=unit_file.parent,
    )  # fmt: skip
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d)", res.stdout)
    assert m, res.stdout + res.stderr
    return float(m.group(1))


def tenant_unit(tmp_path: Path, sandbox: tuple[str, ...]) -> Path:
    """A unit file with the properties SystemdLauncher gives a scheduler's transient unit."""
    lines = ["[Service]", "Type=exec", "User=1895825500", "Group=1895825500", "Slice=gatewayha.slice",
             "ExecStart=/opt/gatewayha/venv/bin/dask scheduler", "MemoryMax=1073741824", "CPUQuota=100%",
             *sandbox]  # fmt: skip
    if sandbox:
        lines += ["InaccessiblePaths=-/etc/gatewayha -/run/haproxy", "ReadWritePaths=/var/lib/gatewayha/x/work"]
    else:
        lines[2:4] = ["User=root"]
    path = tmp_path / ("gatewayha-tenant.service" if sandbox else "gatewayha-root.service")
    path.write_text("\n".join(lines) + "\n")
    return path


def api_unit(tmp_path: Path, wsgi: str) -> Path:
    """The API instances' unit as the gatewayha role renders it for ``wsgi`` (its template)."""
    template = ROOT / "roles" / "gatewayha" / "templates" / "gatewayha-api@.service.j2"
    text = jinja2.Template(template.read_text(), keep_trailing_newline=True, undefined=jinja2.StrictUndefined).render(
        ansible_managed="Ansible managed", gatewayha_wsgi_server=wsgi
    )
    path = tmp_path / wsgi / "gatewayha-api@.service"
    path.parent.mkdir()
    path.write_text(text)
    return path


def test_the_api_unit_has_systemd_s_watchdog_under_granian_only(tmp_path):
    granian, gunicorn = (api_unit(tmp_path, wsgi).read_text() for wsgi in ("granian", "gunicorn"))
    assert "\nWatchdogSec=30\n" in granian and "\nNotifyAccess=all\n" in granian
    assert "WatchdogSec=" not in gunicorn and "NotifyAccess=" not in gunicorn
    assert "gatewayha-api --bind ${GATEWAYHA_API_HOST}:%i --wsgi granian\n" in granian
    assert "gatewayha-api --bind ${GATEWAYHA_API_HOST}:%i --wsgi gunicorn\n" in gunicorn


@needs_systemd_analyze
def test_every_unit_is_hardened(tmp_path):
    assert exposure(ROOT / "systemd" / "gatewayha-worker.service") <= 3.0  # 8.8 before the sandboxing
    for wsgi in ("granian", "gunicorn"):
        assert exposure(api_unit(tmp_path, wsgi)) <= 2.0  # 7.3 before
    assert exposure(tenant_unit(tmp_path, SANDBOX)) <= 2.0
    # The measure can fail: the same unit without the sandbox, as root, is "UNSAFE".
    assert exposure(tenant_unit(tmp_path, ())) >= 9.0

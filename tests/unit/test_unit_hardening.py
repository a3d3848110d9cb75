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


# The gatewayha role's defaults the unit templates read (roles/gatewayha/defaults/main.yml).
ROLE_DEFAULTS = {
    "ansible_managed": "Ansible managed",
    "gatewayha_install_dir": "/opt/gatewayha",
    "gatewayha_config_dir": "/etc/gatewayha",
    "gatewayha_state_dir": "/var/lib/gatewayha",
    "gatewayha_user": "gatewayha",
    "gatewayha_haproxy_admin_socket": "/run/haproxy/admin.sock",
    "gatewayha_haproxy_map_dir": "/var/lib/gatewayha/maps",
    "gatewayha_backend": "local",
    "gatewayha_slurm_staging_dir": "/var/lib/gatewayha/slurm",
}


def role_unit(tmp_path: Path, name: str, **variables: str) -> Path:
    """A unit file as the gatewayha role renders it from its template (the role's defaults, then
    ``variables``)."""
    template = ROOT / "roles" / "gatewayha" / "templates" / f"{name}.j2"
    env = jinja2.Environment(keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    env.filters["dirname"] = lambda p: p.rsplit("/", 1)[0]
    text = env.from_string(template.read_text()).render({**ROLE_DEFAULTS, **variables})
    path = tmp_path / f"render-{len(list(tmp_path.iterdir()))}" / name  # a directory per rendering
    path.parent.mkdir()
    path.write_text(text)
    return path


def api_unit(tmp_path: Path, wsgi: str) -> Path:
    """The API instances' unit as the gatewayha role renders it for ``wsgi``."""
    return role_unit(tmp_path, "gatewayha-api@.service", gatewayha_wsgi_server=wsgi)


def test_the_units_are_rendered_from_the_role_s_install_dir_config_dir_state_dir_and_user(tmp_path):
    elsewhere = {
        "gatewayha_install_dir": "/srv/gw",
        "gatewayha_config_dir": "/srv/gw-etc",
        "gatewayha_state_dir": "/srv/gw-state",
        "gatewayha_user": "gwapi",
        "gatewayha_haproxy_admin_socket": "/srv/hap/admin.sock",
        "gatewayha_haproxy_map_dir": "/srv/gw-state/maps",
    }
    api = role_unit(tmp_path, "gatewayha-api@.service", gatewayha_wsgi_server="granian", **elsewhere).read_text()
    jobs = role_unit(tmp_path, "gatewayha-jobs.service", **elsewhere).read_text()
    for text in (api, jobs):
        assert "/opt/gatewayha" not in text and "/etc/gatewayha" not in text and "/var/lib/gatewayha" not in text
        assert "EnvironmentFile=-/srv/gw-etc/environment\n" in text
        assert "GATEWAYHA_CONFIG=/srv/gw-etc/gatewayha.toml" in text
        assert "Documentation=file:///srv/gw/README.md file:///srv/gw/docs/ha.md\n" in text
    assert "\nUser=gwapi\nGroup=gwapi\n" in api and "ExecStart=/srv/gw/venv/bin/gatewayha-api " in api
    assert "\nReadWritePaths=/srv/gw-state\n" in api
    assert "\nExecStart=/srv/gw/venv/bin/gatewayha-jobs\n" in jobs
    assert "\nReadWritePaths=/srv/gw-state /srv/gw-state/maps /srv/hap\n" in jobs
    target = role_unit(tmp_path, "gatewayha.target").read_text()
    assert "\nWants=gatewayha-jobs.service\n" in target


def test_the_job_runner_may_write_the_slurm_staging_directory(tmp_path):
    """ProtectSystem=strict: with the Slurm backend the staging directory (the site's shared file
    system, anywhere) is among the job runner's ReadWritePaths, or no Slurm cluster starts."""
    slurm = role_unit(
        tmp_path, "gatewayha-jobs.service", gatewayha_backend="slurm", gatewayha_slurm_staging_dir="/shared/gatewayha"
    ).read_text()
    assert "\nReadWritePaths=/var/lib/gatewayha /var/lib/gatewayha/maps /run/haproxy /shared/gatewayha\n" in slurm
    local = role_unit(tmp_path, "gatewayha-jobs.service", gatewayha_slurm_staging_dir="/shared/gatewayha").read_text()
    assert "\nReadWritePaths=/var/lib/gatewayha /var/lib/gatewayha/maps /run/haproxy\n" in local


def test_the_api_unit_has_systemd_s_watchdog_under_granian_only(tmp_path):
    granian, gunicorn = (api_unit(tmp_path, wsgi).read_text() for wsgi in ("granian", "gunicorn"))
    assert "\nWatchdogSec=30\n" in granian and "\nNotifyAccess=all\n" in granian
    assert "WatchdogSec=" not in gunicorn and "NotifyAccess=" not in gunicorn
    assert "gatewayha-api --bind ${GATEWAYHA_API_HOST}:%i --wsgi granian\n" in granian
    assert "gatewayha-api --bind ${GATEWAYHA_API_HOST}:%i --wsgi gunicorn\n" in gunicorn


@needs_systemd_analyze
def test_every_unit_is_hardened(tmp_path):
    assert exposure(role_unit(tmp_path, "gatewayha-jobs.service")) <= 3.0  # 8.8 before the sandboxing
    for wsgi in ("granian", "gunicorn"):
        assert exposure(api_unit(tmp_path, wsgi)) <= 2.0  # 7.3 before
    assert exposure(tenant_unit(tmp_path, SANDBOX)) <= 2.0
    # The measure can fail: the same unit without the sandbox, as root, is "UNSAFE".
    assert exposure(tenant_unit(tmp_path, ())) >= 9.0

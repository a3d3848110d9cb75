"""Software environments on the local backend (gatewayha.environments): a cluster's scheduler and
workers run from the prefix it picked, a missing one refuses the start, and a client whose Dask
differs from the environment's is told so by Dask itself.

The environments are real venvs made here (helpers.make_environment): their own prefix and
interpreter, with the project's packages (Dask, dask-gateway, gatewayha_preload) reached through a
``.pth`` file that adds the project venv's site dir after their own.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
import warnings
from pathlib import Path

import pytest
from test_local_backend import Recorder, config, heartbeat_of, keypair, recorder, unit_pids  # noqa: F401 (fixtures)

from gatewayha.backends import get_backend
from gatewayha.backends.base import SchedulerSpec, WorkerSpec
from gatewayha.backends.local import LocalBackend
from gatewayha.config import EnvironmentSettings, NodeSettings, Settings
from gatewayha.errors import BackendRefused
from gatewayha.options import ClusterConfig
from helpers import make_environment

OLDER_DASK = "2026.8.0"  # for the mismatch: a release before the project's (see pyproject.toml)


@pytest.fixture(scope="module")
def alt_prefix(tmp_path_factory) -> Path:
    prefix = tmp_path_factory.mktemp("envs") / "alt"
    make_environment(prefix)
    return prefix


def backend_with(tmp_path: Path, **envs: Path) -> LocalBackend:
    node = NodeSettings(state_dir=str(tmp_path / "node"), host="127.0.0.1", launcher="process")
    settings = Settings(node=node, environments={n: EnvironmentSettings(prefix=str(p)) for n, p in envs.items()})
    settings.cluster.default_environment = next(iter(envs))
    return get_backend(settings)


@pytest.fixture
def stop_after():
    started = []
    yield started
    for backend, name in started:
        backend.stop_cluster(name)


def start_with_worker(backend, recorder, keypair, cfg: ClusterConfig, stop_after) -> tuple[str, dict]:  # noqa: F811
    """Start a cluster and one worker; (its name, the first heartbeat with the worker)."""
    from gatewayha import control

    cert, key = keypair
    name, token = uuid.uuid4().hex, uuid.uuid4().hex
    stop_after.append((backend, name))
    backend.start_scheduler(SchedulerSpec(name, token, recorder.api_url, cert, key, cfg))
    hb = recorder.wait_for(heartbeat_of(name, token))["json"]
    control.post_comm(hb["api_address"], cert, token, {"op": "scale", "count": 1})
    recorder.wait_for(lambda r: heartbeat_of(name, token)(r) and r["json"]["count"] == 1)
    worker = f"{name}-w1"
    backend.start_worker(WorkerSpec(name, worker, hb["scheduler_address"], token, cert, key, cfg))
    recorder.wait_for(lambda r: heartbeat_of(name, token)(r) and worker in r["json"]["active_workers"])
    return name, hb


def security_for(backend, name):
    from distributed.security import Security

    d = backend.cluster_dir(name)
    return Security(
        tls_ca_file=str(d / "tls.crt"),
        tls_client_cert=str(d / "tls.crt"),
        tls_client_key=str(d / "tls.key"),
        require_encryption=True,
    )


def bin_dir_of(pid: int) -> Path:
    """The bin dir of the interpreter a process was started with (argv[0], not /proc/<pid>/exe:
    a venv's bin/python is a link to the base interpreter)."""
    return Path(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()).parent


def test_the_scheduler_and_the_workers_run_from_the_picked_environment(
    tmp_path,
    alt_prefix,
    recorder,  # noqa: F811
    keypair,  # noqa: F811
    stop_after,
):
    from distributed import Client

    backend = backend_with(tmp_path, alt=alt_prefix)
    name, hb = start_with_worker(backend, recorder, keypair, config(software_environment="alt"), stop_after)
    # Every Dask process of the cluster (scheduler, nanny, worker) was started from the prefix's python.
    dask_pids = [p for p in unit_pids(name) if os.stat(f"/proc/{p}").st_uid != 0]
    assert len(dask_pids) >= 3
    assert {bin_dir_of(p) for p in dask_pids} == {alt_prefix / "bin"}
    with Client(hb["scheduler_address"], security=security_for(backend, name), timeout=30) as client:
        assert client.run_on_scheduler(lambda: sys.prefix) == str(alt_prefix)
        assert set(client.run(lambda: sys.prefix).values()) == {str(alt_prefix)}
        # As in an activated venv: user code that runs `python` or `pip` gets the environment's.
        path = client.run(lambda: os.environ["PATH"].split(os.pathsep)[0])
        assert set(path.values()) == {str(alt_prefix / "bin")}
        assert client.submit(sum, [1, 2, 3]).result(timeout=30) == 6


def test_a_cluster_of_an_older_release_runs_node_python(tmp_path, alt_prefix, recorder, keypair, stop_after):  # noqa: F811
    """A config stored before environments existed has none picked: node.python, as then."""
    backend = backend_with(tmp_path, alt=alt_prefix)
    old = {k: v for k, v in config().to_json().items() if k != "software_environment"}
    cert, key = keypair
    name, token = uuid.uuid4().hex, uuid.uuid4().hex
    stop_after.append((backend, name))
    backend.start_scheduler(SchedulerSpec(name, token, recorder.api_url, cert, key, ClusterConfig.from_json(old)))
    recorder.wait_for(heartbeat_of(name, token))
    (pid,) = [p for p in unit_pids(name) if os.stat(f"/proc/{p}").st_uid != 0]
    assert bin_dir_of(pid) == Path(backend.python).parent != alt_prefix / "bin"


def test_an_environment_missing_on_the_node_refuses_the_start_naming_it(tmp_path, recorder, keypair):  # noqa: F811
    backend = backend_with(tmp_path, gone=tmp_path / "no-such-prefix")
    cert, key = keypair
    name = uuid.uuid4().hex
    spec = SchedulerSpec(name, "t" * 32, recorder.api_url, cert, key, config(software_environment="gone"))
    with pytest.raises(BackendRefused, match=r"software environment 'gone': .*no-such-prefix/bin/python is not an"):
        backend.start_scheduler(spec)
    assert not backend.scheduler_running(name) and unit_pids(name) == set()
    backend.stop_cluster(name)  # what the failed cluster's stop job does: nothing is left
    assert name not in backend.local_clusters()


def _pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _pypi_reachable(), reason="needs pypi.org to install an older distributed")
def test_a_client_of_another_dask_version_gets_dasks_mismatch_error_not_a_hang(
    tmp_path_factory,
    tmp_path,
    recorder,  # noqa: F811
    keypair,  # noqa: F811
    stop_after,
):
    """What a notebook whose Dask differs from the cluster's sees: Dask's own version check (a
    warning when the client connects; an error from get_versions(check=True))."""
    import distributed
    from distributed import Client

    prefix = tmp_path_factory.mktemp("envs") / "older"
    site = make_environment(prefix)
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site)]
    subprocess.run([*pip, f"dask=={OLDER_DASK}", f"distributed=={OLDER_DASK}"], check=True, timeout=180)
    backend = backend_with(tmp_path, older=prefix)
    name, hb = start_with_worker(backend, recorder, keypair, config(software_environment="older"), stop_after)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        client = Client(hb["scheduler_address"], security=security_for(backend, name), timeout=30)
    try:
        assert client.run_on_scheduler(lambda: __import__("distributed").__version__) == OLDER_DASK
        assert distributed.__version__ != OLDER_DASK
        mismatch = [str(w.message) for w in caught if "Mismatched versions found" in str(w.message)]
        assert mismatch and "distributed" in mismatch[0] and OLDER_DASK in mismatch[0], [str(w.message) for w in caught]
        # The check a user runs: the same table (dask and distributed differ).
        with pytest.warns(UserWarning, match="Mismatched versions found"):
            client.get_versions(check=True)
    finally:
        client.close()

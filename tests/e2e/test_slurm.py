"""The stock dask-gateway client against a local stack whose Dask runs as jobs of a real Slurm
(`make up BACKEND=slurm`: slurmctld and two slurmd, compute nodes n1 and n2, beside the stack).

One cluster goes through everything a user does (create, scale across both nodes in one
submission, compute, adapt up and down, dashboard, shutdown, nothing left in squeue); then a
gateway node's job runner is killed and the clusters carry on through the other one."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request

import pytest
from dask_gateway import BasicAuth, Gateway
from dask_gateway.client import ClusterStatus

from conftest import ROOT, _running_stack, e2e_base_port
from helpers import wait_until


@pytest.fixture(scope="module")
def slurm_stack(tmp_path_factory):
    base = e2e_base_port() + 400
    with _running_stack(tmp_path_factory, base, "slurm-stack", GATEWAYHA_BACKEND="slurm",
                        GATEWAYHA_SLURM_PORT="16827", GATEWAYHA_CLUSTER__MAX_WORKERS="10") as s:  # fmt: skip
        yield s


@pytest.fixture
def gw(slurm_stack):
    user, password = slurm_stack.credentials()
    g = Gateway(slurm_stack.address, auth=BasicAuth(user, password))
    yield g
    for report in g.list_clusters():
        g.stop_cluster(report.name)
    g.close()


def squeue(stack, *args: str) -> list[list[str]]:
    env = {**os.environ, "SLURM_CONF": str(stack.state / "slurm" / "slurm.conf")}
    out = subprocess.run(["squeue", "--noheader", "--array", *args], env=env, capture_output=True, text=True,
                         check=True, timeout=30).stdout  # fmt: skip
    return [line.split("|") for line in out.splitlines() if line.strip()]


def jobs_of(stack, cluster: str) -> list[list[str]]:
    """The cluster's live jobs: id, name, state, node, user, comment."""
    names = f"dask-scheduler-{cluster},dask-workers-{cluster}"
    return squeue(stack, f"--name={names}", "--format=%i|%j|%T|%N|%u|%k")


def n_workers(client) -> int:
    return len(client.scheduler_info(n_workers=-1)["workers"])


def test_a_cluster_on_slurm_from_create_to_an_empty_squeue(slurm_stack, gw):
    opts = gw.cluster_options()
    assert opts.partition == "dask" and opts.worker_gpus == 0
    opts.worker_cores = 4  # four 4-core workers do not fit one 16-CPU node beside the scheduler
    cluster = gw.new_cluster(opts)
    name = cluster.name
    try:
        (sched,) = jobs_of(slurm_stack, name)
        assert sched[1] == f"dask-scheduler-{name}" and sched[2] == "RUNNING"
        # Run as one of the service accounts, tagged with its owner for accounting.
        assert sched[4].startswith("gwdask-") and f"cluster={name} user=demo" in sched[5]
        # The dashboard, proxied by HAProxy to the scheduler on its compute node.
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        login = urllib.request.Request(cluster.dashboard_link, headers=gw.auth.pre_request(None)[0])
        with opener.open(login, timeout=15) as r:
            assert r.status == 200 and b"bokeh" in r.read().lower()

        client = cluster.get_client()
        cluster.scale(4)
        client.wait_for_workers(4, timeout=120)
        workers = [j for j in jobs_of(slurm_stack, name) if j[1] == f"dask-workers-{name}"]
        # One submission: the four workers are the tasks of one job array, over both nodes.
        assert len({j[0].split("_")[0] for j in workers}) == 1 and len(workers) == 4
        assert {j[3] for j in workers} == {"n1", "n2"}
        assert {w["nthreads"] for w in client.scheduler_info(n_workers=-1)["workers"].values()} == {4}
        assert client.submit(sum, range(101)).result() == 5050
        assert sum(client.gather(client.map(lambda x: x * 2, range(100)))) == 9900

        # Adaptive: down to the minimum when idle, up again under load.
        cluster.adapt(minimum=1, maximum=3)
        wait_until(lambda: n_workers(client) == 1, 120, "adaptive scale-down to 1", interval=1)
        wait_until(lambda: len([j for j in jobs_of(slurm_stack, name) if j[1].startswith("dask-workers")]) == 1,
                   60, "the retired workers' jobs ended")  # fmt: skip
        futures = client.map(lambda x: __import__("time").sleep(1) or x, range(60))
        wait_until(lambda: n_workers(client) >= 2, 120, "adaptive scale-up")
        assert sum(client.gather(futures)) == sum(range(60))
        client.close()
    finally:
        cluster.shutdown()
    wait_until(lambda: gw.get_cluster(name).status == ClusterStatus.STOPPED, 60, "STOPPED")
    assert jobs_of(slurm_stack, name) == []
    assert not (slurm_stack.state / "slurm" / "staging" / name).exists()


def slurm_sh(stack, command: str) -> None:
    env = {**stack.env, "SLURM_DIR": str(stack.state / "slurm"), "SLURM_PORT": stack.env["GATEWAYHA_SLURM_PORT"]}
    subprocess.run([str(ROOT / "scripts" / "slurm.sh"), command], env=env, check=True, timeout=120,
                   capture_output=True)  # fmt: skip


def test_gpus_and_time_limits_reach_slurm_and_a_refusal_fails_the_cluster_with_slurms_words(slurm_stack, gw):
    opts = gw.cluster_options()
    opts.worker_gpus = 1
    opts.time_limit = "30:00"
    with gw.new_cluster(opts) as cluster:
        cluster.scale(1)
        client = cluster.get_client()
        client.wait_for_workers(1, timeout=120)
        (worker,) = [j for j in squeue(slurm_stack, f"--name=dask-workers-{cluster.name}", "--format=%i|%b|%l")]
        assert worker[1:] == ["gres:gpu:1", "30:00"]
        # The worker's Dask lifetime ends before its walltime, at least slurm.lifetime_margin
        # (120 s) early, staggered by up to 2 x 60 s.
        lifetime = client.run(lambda dask_worker: dask_worker.lifetime)
        assert all(1800 - 120 - 120 <= v <= 1800 - 120 for v in lifetime.values()), lifetime
        client.close()
    # Partition "short" allows 10 minutes: Slurm refuses the worker job (EnforcePartLimits),
    # and the cluster fails at once with Slurm's reason instead of retrying forever.
    opts = gw.cluster_options()
    opts.partition = "short"
    opts.time_limit = "20:00"
    cluster = gw.new_cluster(opts)
    cluster.scale(1)
    wait_until(lambda: gw.get_cluster(cluster.name).status == ClusterStatus.FAILED, 60, "FAILED")
    with slurm_stack.db() as db:
        reason = db.execute("SELECT reason FROM clusters WHERE name = %s", (cluster.name,)).fetchone()
    assert "Slurm refused the job" in reason["reason"] and "time limit" in reason["reason"].lower()
    wait_until(lambda: jobs_of(slurm_stack, cluster.name) == [], 60, "the failed cluster's jobs ended")


def test_slurmctld_down_fails_no_running_cluster_and_creates_wait_for_it(slurm_stack, gw):
    running = gw.new_cluster()
    try:
        running.scale(1)
        client = running.get_client()
        client.wait_for_workers(1, timeout=120)
        slurm_sh(slurm_stack, "down-controller")
        name = gw.submit()
        time.sleep(8)  # several check ticks and start attempts against a dead controller
        assert gw.get_cluster(running.name).status == ClusterStatus.RUNNING
        assert gw.get_cluster(name).status == ClusterStatus.PENDING
        slurm_sh(slurm_stack, "up")
        late = gw.connect(name)  # waits for RUNNING
        late.scale(1)
        late_client = late.get_client()
        late_client.wait_for_workers(1, timeout=120)
        assert late_client.submit(lambda: 2 + 2).result() == 4
        late_client.close()
        late.shutdown()
        assert client.submit(lambda: 3).result() == 3
        client.close()
    finally:
        running.shutdown()


def test_losing_a_gateway_nodes_job_runner_fails_no_slurm_cluster(slurm_stack, gw):
    # Last in this module: the local stack's HAProxy takes its routes from job runner 1 only,
    # so clusters created after it is killed get no route (an appliance node has its own).
    cluster = gw.new_cluster()
    name = cluster.name
    try:
        client = cluster.get_client()
        cluster.scale(1)
        client.wait_for_workers(1, timeout=120)
        # kill -9 of one gateway node's job runner: no gateway node owns a Slurm cluster.
        os.kill(slurm_stack.pid("worker-1"), signal.SIGKILL)
        cluster.scale(3)
        client.wait_for_workers(3, timeout=120)
        assert client.submit(lambda: 6 * 7).result() == 42
        # Past the node timeout the lost node is swept; the cluster stays RUNNING.
        with slurm_stack.db() as db:
            wait_until(lambda: db.execute("SELECT count(*) AS n FROM nodes WHERE name = 'local-1' AND NOT draining"
                                          " AND last_seen > now() - interval '30 seconds'").fetchone()["n"] == 0,
                       60, "node local-1 timed out")  # fmt: skip
        time.sleep(5)  # a sweep tick
        assert gw.get_cluster(name).status == ClusterStatus.RUNNING
        assert client.submit(lambda: 1 + 1).result() == 2
        client.close()
    finally:
        cluster.shutdown()
    wait_until(lambda: jobs_of(slurm_stack, name) == [], 60, "the cluster's jobs ended")

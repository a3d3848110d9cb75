# dask-gateway-server 2026.3.0 configuration for the benchmark anchor (written for bench/run.sh).
# Local processes as the service's user (UnsafeLocalBackend: gatewayha's local stack also runs every
# cluster as its own user), one public port for the API and the scheduler TLS (like gatewayha),
# SimpleAuthenticator with a shared password. Settings that change timings are set equal to
# gatewayha's local stack: 1 core / 1 GiB workers, scheduler heartbeat every 2 s.
import os

c = get_config()  # noqa: F821 (injected by traitlets)

venv_bin = os.environ["BENCH_ANCHOR_BIN"]  # the bench venv's bin/, holding `dask`
c.DaskGateway.address = os.environ.get("BENCH_ANCHOR_API", "127.0.0.1:19201")  # private API
c.Proxy.address = os.environ.get("BENCH_ANCHOR_ADDRESS", "127.0.0.1:19200")  # public HTTP + TLS
c.Proxy.log_level = "warn"
c.DaskGateway.log_level = "WARN"
c.DaskGateway.backend_class = "dask_gateway_server.backends.local.UnsafeLocalBackend"
c.DaskGateway.authenticator_class = "dask_gateway_server.auth.SimpleAuthenticator"
c.SimpleAuthenticator.password = os.environ["BENCH_ANCHOR_PASSWORD"]
c.UnsafeLocalBackend.clusters_directory = os.environ["BENCH_ANCHOR_DIR"]
c.UnsafeLocalBackend.cluster_heartbeat_period = 2
# Its default timeouts are 2 × the heartbeat period (4 s) and a 60 s start; gatewayha's local stack
# allows 20 s without a heartbeat and 120 s to start. Same allowances here, or a loaded machine
# makes the anchor fail clusters that gatewayha would keep.
c.UnsafeLocalBackend.cluster_heartbeat_timeout = 20
c.UnsafeLocalBackend.cluster_start_timeout = 120
# `dask-scheduler` / `dask-worker` (the defaults) are gone from distributed >= 2026.6.
c.ClusterConfig.scheduler_cmd = [os.path.join(venv_bin, "dask"), "scheduler"]
c.ClusterConfig.worker_cmd = [os.path.join(venv_bin, "dask"), "worker"]
c.ClusterConfig.worker_cores = 1
c.ClusterConfig.worker_memory = "1 G"
c.ClusterConfig.scheduler_cores = 1
c.ClusterConfig.scheduler_memory = "1 G"
c.ClusterConfig.idle_timeout = 0

# BENCH_PHASES=slurm: the same anchor on the bench's local Slurm (dask-gateway-server's own
# jobqueue SlurmBackend), with the same worker resources and timeouts as above.
if os.environ.get("BENCH_ANCHOR_SLURM_BIN"):
    slurm_bin = os.environ["BENCH_ANCHOR_SLURM_BIN"]  # wrappers of sbatch/squeue/scancel and the launcher
    c.DaskGateway.backend_class = "dask_gateway_server.backends.jobqueue.slurm.SlurmBackend"
    c.SlurmBackend.submit_command = os.path.join(slurm_bin, "sbatch")
    c.SlurmBackend.status_command = os.path.join(slurm_bin, "squeue")
    c.SlurmBackend.cancel_command = os.path.join(slurm_bin, "scancel")
    c.SlurmBackend.dask_gateway_jobqueue_launcher = os.path.join(slurm_bin, "launcher")
    c.SlurmBackend.cluster_heartbeat_period = 2
    c.SlurmBackend.cluster_heartbeat_timeout = 20
    c.SlurmBackend.cluster_start_timeout = 120
    c.SlurmClusterConfig.partition = "dask"
    c.SlurmClusterConfig.staging_directory = os.environ["BENCH_ANCHOR_STAGING"] + "/{username}/"

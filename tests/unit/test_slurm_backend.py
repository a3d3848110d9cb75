"""The Slurm backend's own logic, without a Slurm: time limits, the job script's quoting, the
reading of squeue's lines and [slurm]'s checks (tests/integration/test_backend_contract.py and
tests/e2e/test_slurm.py run it on a real Slurm)."""

from __future__ import annotations

import subprocess

import pytest

from gatewayha.backends.slurm import WORKER_MARK, Job, SlurmBackend, SlurmRefused, time_limit_seconds
from gatewayha.config import BackendSettings, Settings, SlurmSettings
from gatewayha.errors import ConfigError, InvalidValue


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30", 1800), ("5:30", 330), ("1:00:00", 3600), ("2-0", 172800), ("1-2:03", 93780), ("1-02:03:04", 93784),
     ("", None), ("UNLIMITED", None)],
)  # fmt: skip
def test_slurm_time_limits_are_read_as_slurm_reads_them(text, seconds):
    assert time_limit_seconds(text) == seconds


@pytest.mark.parametrize("text", ["1h", "-1", "1:2:3:4", "; rm -rf /", "1-", "::"])
def test_anything_else_is_not_a_time_limit(text):
    with pytest.raises(InvalidValue):
        time_limit_seconds(text)


def backend(tmp_path, **slurm) -> SlurmBackend:
    values = dict(staging_dir=str(tmp_path), uid_count=4)
    values.update(slurm)
    return SlurmBackend(Settings(backend=BackendSettings(name="slurm"), slurm=SlurmSettings(**values)))


@pytest.mark.parametrize(
    ("slurm", "error"),
    [({"run_as": "root"}, "slurm.run_as"), ({"uid_count": 0}, "slurm.uid_min/uid_count"),
     ({"partition": "a b"}, "slurm.partition"), ({"worker_time_limit": "forever"}, "slurm.worker_time_limit"),
     ({"python": "python3"}, "slurm.python"), ({"extra_sbatch_args": "'unclosed"}, "slurm.extra_sbatch_args")],
)  # fmt: skip
def test_bad_slurm_settings_stop_the_backend_at_start(tmp_path, slurm, error):
    with pytest.raises(ConfigError, match=error):
        backend(tmp_path, **slurm)


def test_a_value_with_quotes_and_the_stand_ins_reaches_bash_as_one_word(tmp_path):
    b = backend(tmp_path)
    value = f'it\'s "$(id)" `id` ; {WORKER_MARK}/x'
    script = f"WORKER=w-1; HOST=1.2.3.4; printf '%s\\n' {b._render(value)}"
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout
    assert out == 'it\'s "$(id)" `id` ; w-1/x\n'


def test_an_ended_job_says_why_in_slurms_words():
    job = Job("12_3", "dask-workers-x", "TIMEOUT", "TimeLimit", "n1", "gatewayha")
    assert not job.alive and job.task == 3
    assert job.describe() == "Slurm job 12_3 TIMEOUT (TimeLimit)"
    assert Job("7", "n", "NODE_FAIL", "None", "", "").describe() == "Slurm job 7 NODE_FAIL"
    assert Job("8", "n", "PENDING", "Resources", "", "").alive


def test_workers_are_found_by_the_names_in_their_arrays_comment():
    cluster = "c" * 32
    jobs = [
        Job("5_0", f"dask-workers-{cluster}", "CANCELLED", "None", "n1", "gatewayha workers=aa,bb"),
        Job("5_1", f"dask-workers-{cluster}", "RUNNING", "None", "n2", "gatewayha workers=aa,bb"),
        Job("9_0", f"dask-workers-{cluster}", "RUNNING", "None", "n1", "gatewayha workers=aa"),
        Job("6_0", "dask-workers-other", "RUNNING", "None", "n1", "gatewayha workers=aa"),
    ]
    found = SlurmBackend._worker_jobs(cluster, jobs)
    # The live task of a worker wins over an ended one of the same name (a restart).
    assert {w: j.job_id for w, j in found.items()} == {f"{cluster}-aa": "9_0", f"{cluster}-bb": "5_1"}


def test_sbatchs_refusals_that_would_come_again_are_told_apart(tmp_path, monkeypatch):
    b = backend(tmp_path)

    def sbatch(stderr):
        monkeypatch.setattr(b, "_run", lambda *a, **k: subprocess.CompletedProcess(a, 1, "", stderr))
        return b._sbatch([], tmp_path / "x.sh")

    with pytest.raises(SlurmRefused, match="Invalid partition"):
        sbatch("sbatch: error: Batch job submission failed: Invalid partition name specified")
    with pytest.raises(SlurmRefused, match="AssocMaxSubmitJobLimit"):
        sbatch("sbatch: error: AssocMaxSubmitJobLimit\nsbatch: error: Batch job submission failed")
    # slurmctld down: a failure to retry, not a refusal.
    with pytest.raises(Exception) as down:
        sbatch("sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)")
    assert not isinstance(down.value, SlurmRefused)


def test_cluster_options_slurm_could_not_take_are_refused_for_good(tmp_path):
    from gatewayha.options import cluster_config

    b = backend(tmp_path)
    cfg = cluster_config(b.settings, {})
    assert b._placement(cfg, 1.5, 2**30, "30:00") == ["--cpus-per-task=2", "--mem=1024M", "--time=30:00"]
    for bad in ({"partition": "a b"}, {"account": "x;y"}, {"qos": "$(id)"}):
        with pytest.raises(SlurmRefused, match="cluster options"):
            b._placement(cluster_config(b.settings, bad), 1, 2**30, "")
    with pytest.raises(SlurmRefused, match="not a Slurm time limit"):
        b._placement(cfg, 1, 2**30, "1 hour")

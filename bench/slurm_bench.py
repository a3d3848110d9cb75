"""BENCH_PHASES=slurm: gatewayha and dask-gateway-server 2026.3.0's SlurmBackend on one local Slurm.

Run by bench/run.sh (which starts both on the same Slurm) under the bench venv, with the stock
dask-gateway 2026.3.0 client. One side at a time on the Slurm, the two alternating which goes first:

  create  sequential new_cluster() until it returns (the cluster RUNNING), then shutdown
  scale   scale(20) on a running cluster until client.wait_for_workers(20) returns, timed from the
          scale call; the sbatch submissions it made are counted in slurmctld's log
  storm   20 concurrent new_cluster() calls until all return (RUNNING), errors counted

Between measurements it waits until the Slurm has no pending or running job left (bounded), so
that one measurement's jobs never share the nodes with the next one's.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import Target, gatewayha_target, median, summary, write_json  # noqa: E402

N_CREATE = int(os.environ.get("BENCH_SLURM_N_CREATE", "5"))
N_SCALE = int(os.environ.get("BENCH_SLURM_N_SCALE", "3"))
N_STORM = int(os.environ.get("BENCH_SLURM_N_STORM", "2"))
WORKERS = int(os.environ.get("BENCH_SLURM_WORKERS", "20"))
STORM = int(os.environ.get("BENCH_SLURM_STORM", "20"))
TIMEOUT = 180.0  # any one client call
T0 = time.monotonic()
SUBMIT = re.compile(rb"_slurm_rpc_submit_batch_job: JobId=(\d+)")
# slurmctld's log lines: when it took a submission, when it gave a job (an array task: 98_3) its node
STAMPED = re.compile(
    rb"^\[([0-9T:.-]+)\] (?:_slurm_rpc_submit_batch_job:|sched: Allocate|backfill: Started) JobId=(\d+)", re.M
)


def log(msg: str) -> None:
    print(f"[bench {time.monotonic() - T0:6.1f}s] slurm: {msg}", file=sys.stderr, flush=True)


def err(exc: BaseException) -> str:
    status = getattr(exc, "status", None)
    if status is not None:
        return f"{type(exc).__name__}: HTTP {status} {getattr(exc, 'message', '')}"[:300]
    return repr(exc)[:300]


def targets() -> dict[str, Target]:
    e = os.environ
    gha = gatewayha_target(
        "gatewayha", "gatewayha", e["BENCH_GHA_STATE"], e["BENCH_GHA_PORT"], e["BENCH_GHA_API_PORTS"].split()
    )
    anchor = Target(
        key="anchor",
        label="dask-gateway-server 2026.3.0 (SlurmBackend)",
        address=f"http://127.0.0.1:{e['BENCH_ANCHOR_PORT']}",
        user=e["BENCH_ANCHOR_USER"],
        password=open(os.path.join(e["BENCH_ANCHOR_STATE"], "password")).read().strip(),
        marker=e["BENCH_ANCHOR_STATE"] + "/",
    )
    return {"gatewayha": gha, "anchor": anchor}


# ---------------------------------------------------------------- the Slurm


def squeue(*args: str) -> list[str]:
    out = subprocess.run(["squeue", "--noheader", *args], capture_output=True, text=True, timeout=30)
    return out.stdout.split("\n") if out.returncode == 0 else []


def slurm_busy() -> int:
    """Jobs (array tasks counted one by one) pending, running, configuring or completing."""
    return len([x for x in squeue("--array", "--states=PD,R,CF,CG", "-o", "%i") if x.strip()])


def wait_slurm_idle(timeout: float = 90.0) -> int:
    end = time.monotonic() + timeout
    while True:
        n = slurm_busy()
        if n == 0 or time.monotonic() > end:
            return n
        time.sleep(0.3)


def ctld_log() -> str:
    return os.path.join(os.environ["BENCH_SLURM_DIR"], "log", "slurmctld.log")


def log_size() -> int:
    return os.path.getsize(ctld_log())


def submissions_since(offset: int) -> list[str]:
    """The job ids of the sbatch submissions slurmctld logged after byte `offset` of its log."""
    with open(ctld_log(), "rb") as f:
        f.seek(offset)
        return [m.group(1).decode() for m in SUBMIT.finditer(f.read())]


def slurm_times(offset: int, job_ids: list[str], since: float) -> dict:
    """Seconds from `since` (wall clock) to slurmctld's last submission and last allocation of
    these jobs (every array task), from its log after byte `offset`."""
    with open(ctld_log(), "rb") as f:
        f.seek(offset)
        text = f.read()
    last = {"submitted_s": None, "allocated_s": None}
    for m in STAMPED.finditer(text):
        if m.group(2).decode() not in job_ids:
            continue
        at = datetime.datetime.strptime(m.group(1).decode(), "%Y-%m-%dT%H:%M:%S.%f").timestamp() - since
        key = "submitted_s" if b"submit" in m.group(0) else "allocated_s"
        last[key] = at if last[key] is None else max(last[key], at)
    return last


def jobs_of(job_ids: list[str]) -> int:
    """How many jobs (array tasks one by one) these submissions made, from squeue -t all."""
    if not job_ids:
        return 0
    return len([x for x in squeue("--array", "--states=all", f"--jobs={','.join(job_ids)}", "-o", "%i") if x.strip()])


# ---------------------------------------------------------------- measurements


async def stop_all(t: Target) -> None:
    gw = t.gateway(asynchronous=True)
    try:
        for rep in await gw.list_clusters():
            await gw.stop_cluster(rep.name)
    finally:
        await gw.close()


async def one_create(t: Target) -> float | str:
    gw = t.gateway(asynchronous=True)
    t0 = time.perf_counter()
    try:
        cluster = await asyncio.wait_for(gw.new_cluster(), TIMEOUT)
    except Exception as exc:  # noqa: BLE001
        await gw.close()
        return err(exc)
    dt = time.perf_counter() - t0
    await cluster.shutdown()
    await gw.close()
    return dt


async def one_scale(t: Target) -> dict:
    gw = t.gateway(asynchronous=True)
    try:
        cluster = await asyncio.wait_for(gw.new_cluster(), TIMEOUT)
    except Exception as exc:  # noqa: BLE001
        await gw.close()
        return {"error": "create: " + err(exc)}
    out: dict = {}
    client = None
    try:
        client = await asyncio.wait_for(cluster.get_client(set_as_default=False), TIMEOUT)
        await asyncio.sleep(1)  # the scheduler's own submission is logged before the offset
        offset = log_size()
        wall, t0 = time.time(), time.perf_counter()
        await cluster.scale(WORKERS)
        await asyncio.wait_for(client.wait_for_workers(WORKERS), TIMEOUT)
        out["seconds"] = time.perf_counter() - t0
        ids = submissions_since(offset)
        out["submissions"] = len(ids)
        out["jobs"] = jobs_of(ids)
        out.update(slurm_times(offset, ids, wall))
    except Exception as exc:  # noqa: BLE001
        out["error"] = "scale: " + err(exc)
    finally:
        if client is not None:
            try:
                await asyncio.wait_for(client.close(), 30)
            except Exception:  # noqa: BLE001
                pass
        await asyncio.gather(asyncio.wait_for(cluster.shutdown(), 60), return_exceptions=True)
        await gw.close()
    return out


async def one_storm(t: Target, n: int) -> dict:
    start = time.perf_counter()
    clusters = []

    async def one():
        gw = t.gateway(asynchronous=True)
        try:
            cluster = await asyncio.wait_for(gw.new_cluster(), TIMEOUT)
        except Exception as exc:  # noqa: BLE001
            return None, err(exc)
        finally:
            await gw.close()
        clusters.append(cluster)
        return time.perf_counter() - start, None

    outs = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
    total = time.perf_counter() - start
    created = [o[0] for o in outs if isinstance(o, tuple) and o[0] is not None]
    errors = [o[1] if isinstance(o, tuple) else err(o) for o in outs if not isinstance(o, tuple) or o[1]]
    await asyncio.gather(*(asyncio.wait_for(c.shutdown(), 60) for c in clusters), return_exceptions=True)
    return {"create": summary(created), "total_s": total, "errors": len(errors), "error_samples": errors[:3]}


def settle(t: Target) -> int:
    """Stop what a failed measurement left, then wait until the Slurm runs nothing."""
    try:
        asyncio.run(stop_all(t))
    except Exception as exc:  # noqa: BLE001
        log(f"{t.key}: stopping leftovers: {err(exc)}")
    left = wait_slurm_idle()
    if left:
        log(f"{t.key}: {left} jobs still in the Slurm after 90 s")
    return left


def order(i: int, sides: list[str]) -> list[str]:
    """Alternate which side goes first, so that drifts of the machine's load hit both alike."""
    return sides if i % 2 == 0 else sides[::-1]


def measure(tg: dict[str, Target], sides: list[str], slurm: dict) -> None:
    """Each measurement alternates the sides (one at a time on the Slurm); results into `slurm`."""
    for side in sides:
        if left := settle(tg[side]):
            slurm[side]["busy_before"] = left
    # (i) sequential create -> RUNNING, after one warm-up create per side (imports, first connections)
    times: dict = {x: [] for x in sides}
    errors: dict = {x: [] for x in sides}
    for i in range(N_CREATE + 1):
        for side in order(i, sides):
            x = asyncio.run(one_create(tg[side]))
            settle(tg[side])
            if isinstance(x, str):
                errors[side].append(x)
            elif i > 0:
                times[side].append(x)
            log(f"{side}: create {i}{' (warm-up)' if i == 0 else ''}: {x}")
    for side in sides:
        slurm[side]["create"] = {
            **summary(times[side]),
            "times": times[side],
            "errors": len(errors[side]),
            "error_samples": errors[side][:3],
        }
    # (ii) scale(20) -> 20 workers joined
    runs: dict = {x: [] for x in sides}
    for i in range(N_SCALE):
        for side in order(i, sides):
            x = asyncio.run(one_scale(tg[side]))
            settle(tg[side])
            log(f"{side}: scale({WORKERS}) {i}: {x}")
            runs[side].append(x)
    for side in sides:
        ok = [x for x in runs[side] if "seconds" in x]
        slurm[side]["scale"] = {
            **summary([x["seconds"] for x in ok]),
            "runs": runs[side],
            "errors": len(runs[side]) - len(ok),
            "submissions": median([x["submissions"] for x in ok]),
            "jobs": median([x["jobs"] for x in ok]),
            "submitted_s": median([x["submitted_s"] for x in ok if x.get("submitted_s") is not None]),
            "allocated_s": median([x["allocated_s"] for x in ok if x.get("allocated_s") is not None]),
        }
    # (iii) 20 concurrent creates -> all RUNNING
    storms: dict = {x: [] for x in sides}
    for i in range(N_STORM):
        for side in order(i, sides):
            x = asyncio.run(one_storm(tg[side], STORM))
            settle(tg[side])
            log(f"{side}: {STORM} concurrent creates {i}: all in {x['total_s']:.1f} s, errors {x['errors']}")
            storms[side].append(x)
    for side in sides:
        st = storms[side]
        slurm[side]["storm"] = {
            "total_s": median([x["total_s"] for x in st]),
            "create_median": median([x["create"]["median"] for x in st if x["create"]["median"] is not None]),
            "create_max": max((x["create"]["max"] for x in st if x["create"]["max"] is not None), default=None),
            "errors": sum(x["errors"] for x in st),
            "error_samples": [e for x in st for e in x["error_samples"]][:3],
            "runs": st,
        }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--sides", default="gatewayha,anchor")
    args = ap.parse_args()
    results = json.load(open(args.out)) if os.path.exists(args.out) else {}
    results.setdefault("timings", {})
    slurm = results.setdefault("slurm", {})
    slurm["params"] = {"n_create": N_CREATE, "n_scale": N_SCALE, "n_storm": N_STORM, "workers": WORKERS, "storm": STORM}
    tg = targets()
    sides = args.sides.split(",")
    for side in sides:
        slurm[side] = {"label": tg[side].label}
    t0 = time.monotonic()
    try:
        measure(tg, sides, slurm)
    except Exception as exc:  # noqa: BLE001
        slurm["failed"] = err(exc)
        log(f"failed: {err(exc)}")
    results["timings"]["slurm"] = time.monotonic() - t0
    write_json(args.out, results)


if __name__ == "__main__":
    main()

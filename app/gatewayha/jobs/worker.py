"""gatewayha-jobs, the job runner: claims jobs and runs them; keeps this node's HAProxy equal to Postgres.

One per node. Threads: the main loop (node heartbeat, periodic ticks, claims),
a LISTEN thread (wake-ups on NOTIFY; the poll interval is the fallback), a
lease renewer, and a bounded pool that runs jobs (bounding launch storms).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import time
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor

from gatewayha import lifecycle, liveness
from gatewayha.backends import get_backend
from gatewayha.config import Settings, load_settings
from gatewayha.db.pool import UNAVAILABLE_ERRORS, listen_forever, make_pool
from gatewayha.errors import MalformedJob
from gatewayha.jobs import handlers, queue
from gatewayha.jobs.queue import Job

log = logging.getLogger("gatewayha.jobs")


class Worker:
    def __init__(self, settings: Settings, backend=None):
        self.settings = settings
        self.node = settings.node.name
        self.owner = f"{self.node}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
        w = settings.jobs
        db = settings.database
        self.start_slots = w.starting_slots()
        db = type(db)(**{**db.__dict__, "pool_max": max(db.pool_max, w.concurrency + self.start_slots + 4)})
        self.pool = make_pool(db, f"gatewayha-jobs:{self.node}")
        self.backend = backend or get_backend(settings)
        self.queues = ["any", queue.node_queue(self.node)]
        self.start_queues = queue.start_queues(self.node)
        self.draining = False
        self.executor = ThreadPoolExecutor(w.concurrency + self.start_slots, thread_name_prefix="job")
        self.held: dict[int, Job] = {}
        self.held_lock = threading.Lock()
        self.wake = threading.Event()
        self.routes_dirty = threading.Event()
        self.stopping = threading.Event()
        self.runtime = None
        if settings.haproxy.admin_socket:
            from gatewayha.routes.runtime import HAProxyRuntime

            self.runtime = HAProxyRuntime(settings.haproxy.admin_socket)
        self.ctx = handlers.Context(settings, self.pool, self.backend, self.node, self.sync_routes, self.stopping)
        self._routes_lock = threading.Lock()

    # --- routes ---------------------------------------------------------------

    def sync_routes(self) -> dict | None:
        """Make the map files (and the live HAProxy, if we manage one) equal to Postgres."""
        if not self.settings.haproxy.admin_socket:
            return None
        from gatewayha.routes.desired import desired_routes
        from gatewayha.routes.runtime import RuntimeAPIError
        from gatewayha.routes.sync import sync_maps

        with self._routes_lock:
            self.routes_dirty.clear()
            with self.pool.connection() as conn:
                sni, dash = desired_routes(conn)
            try:
                stats = sync_maps(self.runtime, self.settings.haproxy.map_dir, sni, dash)
            except RuntimeAPIError as exc:
                # HAProxy not (yet) up or reloading: sync_maps still wrote the map files, which
                # it loads at start; the live maps are retried.
                self.routes_dirty.set()
                log.warning("HAProxy runtime API unavailable, map files written, will retry: %s", exc)
                return None
            return stats  # sync_maps logged any change

    # --- threads --------------------------------------------------------------

    def _keep_routes_synced(self) -> None:
        """Apply route changes as soon as they are notified, apart from the claim loop: a
        route no longer waits for a tick (the node heartbeat, periodic claims, job claims,
        each a round trip to Postgres that may wait on a lock) to finish first."""
        delay = 0.5
        while not self.stopping.is_set():
            if not self.routes_dirty.wait(1.0):
                continue
            try:
                stats = self.sync_routes()
            except UNAVAILABLE_ERRORS as exc:
                self.routes_dirty.set()
                log.warning("database unavailable for the route sync: %s; retrying in %.1fs", exc, delay)
            except Exception:
                self.routes_dirty.set()
                log.exception("route sync error")
            else:
                if stats is not None:  # None: HAProxy's runtime API did not answer; retry
                    delay = 0.5
                    continue
            self.stopping.wait(delay)
            delay = min(delay * 2, 10)

    def _listen(self) -> None:
        def connected(conn) -> None:
            self._rescue_own_node(conn)
            # Anything that happened while we were not listening: look now.
            self.routes_dirty.set()
            self.wake.set()

        def notified(n) -> None:
            if n.channel in lifecycle.CHANNELS:
                # For the route thread alone: waking the claim loop too cost a tick (node
                # heartbeat, periodic and job claims) per route change, 200 in a 100-cluster storm.
                self.routes_dirty.set()
            else:
                self.wake.set()

        def lost(exc) -> None:
            log.warning("LISTEN connection lost (%s); polling until it is back", exc)

        listen_forever(
            self.settings.database,
            f"gatewayha-listen:{self.node}",
            (queue.CHANNEL, *lifecycle.CHANNELS),
            self.stopping,
            notified,
            connected,
            lost,
        )

    def _rescue_own_node(self, conn) -> None:
        """Jobs leased by an earlier worker of this node (killed, restarted by systemd) are
        claimable now rather than when their lease runs out. Only the node's one worker may
        do this: it holds the node's advisory lock for the life of this session (a dead
        process's session, and with it its lock, ends with its connection)."""
        got = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s)) AS got", (f"gatewayha-node:{self.node}",))
        if not got.fetchone()["got"]:
            log.warning("another gatewayha-jobs of node %s is running: leases are left to run out", self.node)
            return
        rescued = conn.execute(
            "UPDATE jobs SET lease_until = now() WHERE split_part(lease_owner, '/', 1) = %s"
            " AND lease_owner <> %s AND lease_until > now() RETURNING id",
            (self.node, self.owner),
        ).fetchall()
        if rescued:
            log.warning("%d job(s) leased by an earlier job runner of %s are claimable again", len(rescued), self.node)

    def _renew_leases(self) -> None:
        lease = self.settings.jobs.lease_seconds
        while not self.stopping.wait(lease / 3):
            with self.held_lock:
                ids = list(self.held)
            if not ids:
                continue
            try:
                with self.pool.connection() as conn:
                    kept = queue.renew(conn, self.owner, ids, lease)
                lost = set(ids) - kept
                if lost:
                    log.warning("lost the lease on jobs %s", sorted(lost))
            except UNAVAILABLE_ERRORS as exc:
                log.warning("lease renewal failed: %s", exc)

    def _run(self, job: Job) -> None:
        w = self.settings.jobs
        try:
            try:
                handlers.handler_for(job)(self.ctx, job)
            except handlers.Defer as d:
                with self.pool.connection() as conn:
                    queue.defer(conn, job, self.owner, d.delay, d.queue)
                return
            except MalformedJob as exc:
                # Running it again would fail the same way: failed for good now, with the reason.
                log.error("job %s %s is malformed, failed without a retry: %s", job.id, job.kind, exc)
                with self.pool.connection() as conn:
                    queue.fail(conn, job, self.owner, f"malformed job: {exc}", permanent=True)
                return
            except Exception as exc:
                log.warning("job %s %s attempt %s failed: %s", job.id, job.kind, job.attempts, exc)
                with self.pool.connection() as conn:
                    outcome = queue.fail(
                        conn,
                        job,
                        self.owner,
                        f"{exc!r}\n{traceback.format_exc()[-1500:]}",
                        w.retry_base_seconds,
                        w.retry_max_seconds,
                    )
                if outcome == "dead":
                    log.error("job %s %s gave up after %s attempts", job.id, job.kind, job.attempts)
                return
            with self.pool.connection() as conn:
                if not queue.complete(conn, job, self.owner):
                    log.warning("job %s %s finished after its lease was taken over", job.id, job.kind)
        except UNAVAILABLE_ERRORS as exc:
            # The lease runs out and another claim retries the job.
            log.warning("job %s %s: database unavailable while recording its outcome: %s", job.id, job.kind, exc)
        except Exception:
            log.exception("job %s %s: unexpected error", job.id, job.kind)
        finally:
            with self.held_lock:
                self.held.pop(job.id, None)
            self.wake.set()

    # --- main loop ------------------------------------------------------------

    def _heartbeat_node(self, conn) -> None:
        draining = liveness.report_node(
            conn, self.node, self.settings.node.host, self.settings.jobs.node_heartbeat_interval
        )
        if draining != self.draining:
            log.info("node %s %s", self.node, "draining: starts no new scheduler" if draining else "no longer draining")
        self.draining = draining
        # Draining: new schedulers (the shared start queue) are left to the other nodes; the
        # workers of this node's own clusters still start (its own start queue).
        self.start_queues = [queue.node_start_queue(self.node)] if draining else queue.start_queues(self.node)

    def tick(self, now: float, state: dict) -> None:
        w = self.settings.jobs
        with self.pool.connection() as conn:
            if now >= state["next_node_heartbeat"]:
                self._heartbeat_node(conn)
                state["next_node_heartbeat"] = now + w.node_heartbeat_interval
            for name in queue.claim_periodic(conn, self.node):
                queue.enqueue(conn, name, {}, dedupe_key=f"periodic:{name}", max_attempts=1)
            with self.held_lock:
                starting = sum(1 for j in self.held.values() if j.queue in self.start_queues)
                free = w.concurrency - (len(self.held) - starting)
                free_starts = self.start_slots - starting
            jobs = queue.claim(conn, self.owner, self.queues, free, w.lease_seconds)
            jobs += queue.claim(conn, self.owner, self.start_queues, free_starts, w.lease_seconds)
        for job in jobs:
            with self.held_lock:
                self.held[job.id] = job
            self.executor.submit(self._run, job)

    def run(self) -> None:
        w = self.settings.jobs
        threading.Thread(target=self._listen, name="listen", daemon=True).start()
        threading.Thread(target=self._renew_leases, name="leases", daemon=True).start()
        if self.settings.haproxy.admin_socket:
            threading.Thread(target=self._keep_routes_synced, name="routes", daemon=True).start()
        state = {"next_node_heartbeat": 0.0, "started": False}
        delay = 0.5
        while not self.stopping.is_set():
            try:
                if not state["started"]:
                    with self.pool.connection() as conn:
                        # A new incarnation of this node first: a create no longer gets a
                        # pooled scheduler of the last one until verify_pool found it alive.
                        liveness.start_node(
                            conn, self.node, self.settings.node.host, self.settings.jobs.node_heartbeat_interval
                        )
                        queue.ensure_periodic(conn, handlers.periodic_tasks(self.settings))
                    handlers.verify_pool(self.ctx)
                    handlers.reap_orphans(self.ctx)  # node-bound backends only (it checks)
                    self.routes_dirty.set()
                    state["started"] = True
                    log.info(
                        "job runner %s ready (queues %s; backend %s, %s)",
                        self.owner,
                        self.queues,
                        self.settings.backend.name,
                        "node-bound" if self.backend.node_bound else "not node-bound: no node owns its clusters",
                    )
                self.tick(time.monotonic(), state)
                delay = 0.5
            except UNAVAILABLE_ERRORS as exc:
                log.warning("database unavailable: %s; retrying in %.1fs", exc, delay)
                self.stopping.wait(delay)
                delay = min(delay * 2, 10)
                continue
            except Exception:
                log.exception("job runner loop error")
                self.stopping.wait(1)
            self.wake.wait(min(w.poll_interval, w.node_heartbeat_interval))
            self.wake.clear()
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.pool.close()

    def stop(self, *_args) -> None:
        self.stopping.set()
        self.wake.set()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="gatewayha-jobs", description=__doc__)
    parser.add_argument("--config", help="TOML file (default: $GATEWAYHA_CONFIG)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = load_settings(args.config)
    worker = Worker(settings)
    signal.signal(signal.SIGTERM, worker.stop)
    signal.signal(signal.SIGINT, worker.stop)
    worker.run()


if __name__ == "__main__":
    main()

"""Thin resources: parse and validate, call one domain function, render."""

from __future__ import annotations

import json
import threading
import time
from contextlib import nullcontext

import falcon

from gatewayha import __version__, clusters, control, lifecycle, validate
from gatewayha.api.access import Access
from gatewayha.api.gate import KeyedGate
from gatewayha.api.throttle import WaitSlots
from gatewayha.api.watch import ClusterWatch
from gatewayha.config import Settings
from gatewayha.errors import BadRequest, Conflict, Forbidden, InvalidValue, NotFound, PayloadTooLarge, Unprocessable
from gatewayha.options import option_specs, options_spec

STATUS_NAMES = {str(s) for s in lifecycle.ClusterStatus}
DEFAULT_STATUSES = lifecycle.names(lifecycle.DEFAULT_LISTED)
MAX_INT = 2**31 - 1


def read_json(req: falcon.Request, max_bytes: int) -> dict:
    """The request body as a JSON object, bounded in size."""
    length = req.content_length
    if length is not None and length > max_bytes:
        raise PayloadTooLarge(f"Request body larger than {max_bytes} bytes")
    if length is None and req.get_header("Transfer-Encoding"):
        # A chunked body has no Content-Length, and Falcon's bounded_stream then reads
        # nothing: the body would be taken for empty (a create with default options).
        # The server decodes the chunks; read at most one byte past the limit.
        raw = req.stream.read(max_bytes + 1)
    else:
        raw = req.bounded_stream.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise PayloadTooLarge(f"Request body larger than {max_bytes} bytes")
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("Malformed JSON body") from None
    if not isinstance(data, dict):
        raise BadRequest("The JSON body must be an object")
    return data


def _int_field(data: dict, key: str, *, allow_none: bool = False, default=None) -> int | None:
    value = data.get(key, default)
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise Unprocessable(f"{key} must be an integer, got {value!r}")
    if value < 0:
        raise Unprocessable(f"{key} must be >= 0, got {value}")
    return value


class Base:
    def __init__(self, settings: Settings, pool):
        self.settings = settings
        self.pool = pool


class Health(Base):
    auth = Access.PUBLIC

    def on_get(self, req, resp):
        try:
            with self.pool.connection(timeout=2) as conn:
                conn.execute("SELECT 1")
        except Exception:
            resp.status = 503
            resp.media = {"status": "fail"}
            return
        resp.media = {"status": "pass"}


class Version(Base):
    auth = Access.PUBLIC

    def on_get(self, req, resp):
        resp.media = {"version": __version__}


class Options(Base):
    def on_get(self, req, resp):
        resp.media = {"cluster_options": options_spec(option_specs(self.settings))}


class Clusters(Base):
    def __init__(self, settings: Settings, pool):
        super().__init__(settings, pool)
        # One create per user at a time in this process (see gatewayha.api.gate). A create waits
        # for its turn up to server.create_queue_timeout (below HAProxy's 60 s server timeout).
        self.create_gate = KeyedGate(settings.server.create_queue_timeout)

    def on_get(self, req, resp):
        raw = req.get_param("status")
        statuses = DEFAULT_STATUSES
        if raw is not None:
            statuses = [s.strip().upper() for s in raw.split(",") if s.strip()]
            bad = [s for s in statuses if s not in STATUS_NAMES]
            if bad or not statuses:
                raise Unprocessable(f"Invalid cluster status {raw!r}")
        with self.pool.connection() as conn:
            rows = clusters.list_clusters(conn, req.context.user.name, statuses)
        resp.media = {r["name"]: clusters.cluster_model(r, self.settings.server.secrets, full=False) for r in rows}

    def on_post(self, req, resp):
        data = read_json(req, self.settings.server.max_body_bytes)
        options = data.get("cluster_options", {})
        key = req.get_header("Idempotency-Key")
        if key is not None and not (1 <= len(key) <= 200 and key.isprintable()):
            raise Unprocessable("Idempotency-Key must be 1-200 printable characters")
        user = req.context.user.name
        with self.create_gate.hold(user), self.pool.connection() as conn:
            name = clusters.create_cluster(conn, self.settings, user, options, key)
        resp.status = 201
        resp.media = {"name": name}


class Cluster(Base):
    auth = Access.USER_OR_SCHEDULER
    # Long-poll fallback while the watch listens: a notification ends a wait at once.
    WATCHED_POLL_S = 1.0

    def __init__(self, settings: Settings, pool, watch: ClusterWatch | None = None):
        super().__init__(settings, pool)
        self.watch = watch
        # Long polls of one user in this process, at most server.max_waits_per_user at once.
        self.waits = WaitSlots(settings.server.max_waits_per_user)

    def _poll_interval(self, started: float) -> float:
        if self.watch is not None and self.watch.listening.is_set():
            return self.WATCHED_POLL_S
        interval = self.settings.server.wait_poll_interval
        # A start that takes longer than a usual one (a storm) is polled less often, up
        # to twice a second: a hundred waiters are then 200 queries/s, not 1,000.
        if time.monotonic() - started > 2.0:
            interval = max(interval, 0.5)
        return interval

    def _own(self, conn, req, name: str) -> dict:
        row = clusters.get_cluster(conn, name, owner=req.context.user.name)
        if row is None:
            raise NotFound(f"Cluster {name} does not exist")
        return row

    def on_get(self, req, resp, name):
        if req.context.user is None:
            raise NotFound(f"Cluster {name} does not exist")
        # Beyond the user's cap, ?wait is answered at once (api.throttle.WaitSlots).
        with self.waits.slot(req.context.user.name, req.get_param("wait") is not None) as wait:
            self._report(req, resp, name, wait)

    def _report(self, req, resp, name: str, wait: bool) -> None:
        started = time.monotonic()
        deadline = started + self.settings.server.wait_timeout
        with self.watch.watching(name) if wait and self.watch else nullcontext(threading.Event()) as changed:
            while True:
                changed.clear()  # before the read: a change after it ends the wait below
                with self.pool.connection() as conn:
                    row = self._own(conn, req, name)
                left = deadline - time.monotonic()
                if not wait or row["status"] != lifecycle.ClusterStatus.PENDING or left <= 0:
                    break
                changed.wait(min(self._poll_interval(started), left))
        resp.media = clusters.cluster_model(row, self.settings.server.secrets)

    def on_delete(self, req, resp, name):
        resp.status = 204
        if not validate.is_cluster_name(name):
            return
        if req.context.user is None:
            with self.pool.connection() as conn:
                clusters.check_cluster_token(conn, self.settings, name, req.context.get("cluster_token"))
            reason = lifecycle.reasons.BY_SCHEDULER
            owner = None
        else:
            owner = req.context.user.name
            reason = lifecycle.reasons.by_owner(owner)
        with self.pool.connection() as conn:
            # Unknown names and other users' clusters look alike: 204, nothing changed.
            if clusters.get_cluster(conn, name, owner=owner) is not None:
                clusters.stop_cluster(conn, name, reason)


class _Forward(Base):
    """Scale and adapt are forwarded to the scheduler's gateway API (/api/comm, over TLS)."""

    def _running(self, req, name) -> dict:
        with self.pool.connection() as conn:
            row = clusters.get_cluster(conn, name, owner=req.context.user.name)
        if row is None:
            raise NotFound(f"Cluster {name} does not exist")
        if row["status"] != lifecycle.ClusterStatus.RUNNING or not row["api_address"]:
            raise Conflict(f"Cluster {name} is not running")
        return row

    def _allowance(self, row: dict, wanted: int) -> tuple[int, str | None]:
        with self.pool.connection() as conn:
            return clusters.worker_allowance(conn, self.settings, row, wanted)

    def _send(self, row: dict, msg: dict) -> None:
        # Over TLS to that cluster's own certificate only; never to an http:// address
        # (gatewayha.control says why, and what that means for clusters of an older release).
        token = clusters.cluster_token(self.settings.server.secrets, row)
        control.post_comm(row["api_address"], row["tls_cert"], token, msg)


class Scale(_Forward):
    def on_post(self, req, resp, name):
        data = read_json(req, self.settings.server.max_body_bytes)
        if "count" not in data:
            raise Unprocessable("count is required")
        count = _int_field(data, "count")
        row = self._running(req, name)
        allowed, msg = self._allowance(row, min(count, MAX_INT))
        self._send(row, {"op": "scale", "count": allowed})
        resp.media = {"ok": msg is None, "msg": msg}


class Adapt(_Forward):
    def on_post(self, req, resp, name):
        data = read_json(req, self.settings.server.max_body_bytes)
        minimum = _int_field(data, "minimum", allow_none=True)
        maximum = _int_field(data, "maximum", allow_none=True)
        active = data.get("active", True)
        if not isinstance(active, bool):
            raise Unprocessable(f"active must be a bool, got {active!r}")
        if minimum is not None and maximum is not None and minimum > maximum:
            raise Unprocessable(f"minimum ({minimum}) must be <= maximum ({maximum})")
        row = self._running(req, name)
        msg = None
        if active:
            cap, _ = self._allowance(row, MAX_INT)
            if maximum is None or maximum > cap:
                if maximum is not None:
                    msg = f"Maximum number of workers is limited to {cap}"
                maximum = cap
            if minimum is not None and minimum > maximum:
                msg = f"Minimum number of workers is limited to {maximum}"
                minimum = maximum
        self._send(row, {"op": "adapt", "minimum": minimum, "maximum": maximum, "active": active})
        resp.media = {"ok": msg is None, "msg": msg}


_HEARTBEAT_LISTS = ("active_workers", "closing_workers", "closed_workers")


class Heartbeat(Base):
    auth = Access.SCHEDULER

    def on_post(self, req, resp, name):
        if not validate.is_cluster_name(name):
            raise NotFound(f"Cluster {name} does not exist")
        token = req.context.get("cluster_token")
        if token is None:
            raise Forbidden("Invalid cluster token")
        data = read_json(req, self.settings.server.max_body_bytes * 16)
        msg = {}
        # These addresses end up in HAProxy maps and in outgoing requests (gatewayha.validate).
        for key, schemes in validate.ADDRESS_SCHEMES.items():
            value = data.get(key)
            try:
                validate.reported_address(key, value)
            except InvalidValue:
                like = f"'{schemes[0]}://<IPv4 address>:<port>'" + (" or ''" if key == "dashboard_address" else "")
                raise Unprocessable(f"{key} must be an address like {like}") from None
            msg[key] = value
        msg["count"] = min(_int_field(data, "count"), MAX_INT)
        for key in _HEARTBEAT_LISTS:
            value = data.get(key, [])
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise Unprocessable(f"{key} must be a list of strings")
            msg[key] = value
        with self.pool.connection() as conn:
            clusters.record_heartbeat(conn, self.settings, name, msg, token)
        resp.status = 200
        resp.media = {"ok": True}

"""One validator per kind of value that reaches a path, a unit name, a command line, an HAProxy
map or an outgoing connection: cluster names, Dask worker names, launcher unit names, the
addresses a scheduler reports, IPv4 host addresses, environment variable names.

Each kind has ``is_<kind>(value) -> bool`` and ``<kind>(value) -> value``, which raises
``InvalidValue`` (a ValueError). Every check is a full match over ASCII only: no trailing
newline, no Unicode digit or look-alike letter, no prefix or suffix gets through.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from gatewayha.errors import InvalidValue

# Cluster names are 32 lowercase hex characters (secrets.token_hex(16)); the database checks the
# same (migrations 0001, 0002). A worker is named <cluster>-<suffix> (clusters._worker_name).
_CLUSTER = r"[a-f0-9]{32}"
_WORKER_SUFFIX = r"[a-z0-9]{1,16}"
_CLUSTER_RE = re.compile(_CLUSTER)
_WORKER_RE = re.compile(rf"{_CLUSTER}-{_WORKER_SUFFIX}")
# A launcher unit: <cluster>-scheduler or <cluster>-worker-<suffix>.
_UNIT_RE = re.compile(rf"({_CLUSTER})-(?:scheduler|worker-{_WORKER_SUFFIX})")
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4_RE = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")
# scheme://IPv4:port and nothing else: no user info, path, query or fragment. A host name is
# refused too: node.host is an IPv4 address, which is what a scheduler listens on and reports,
# and HAProxy's set-dst (the routes) takes an address, never a name.
_ADDRESS_RE = re.compile(rf"([a-z]{{1,10}})://({_IPV4_RE.pattern}):([1-9][0-9]{{0,4}})")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_USER_RE = re.compile(r"[A-Za-z0-9._@-]{1,64}")  # ASCII only: names go into SQL rows, logs, cookies

# The addresses a heartbeat reports: they become HAProxy routes and the target of the API's calls.
# api_address: https, the control API over TLS with the cluster's cert; http is what a scheduler
# of an earlier release reports (one a node still on it starts during a rolling upgrade too): it
# is recorded, so the cluster runs and computes, but the API sends it nothing, no token in clear
# (gatewayha.control: a scale answers 503, shut the cluster down and create a new one).
ADDRESS_SCHEMES: dict[str, tuple[str, ...]] = {
    "scheduler_address": ("tls",),
    "dashboard_address": ("http",),
    "api_address": ("https", "http"),
}


def _full(pattern: re.Pattern[str], value: object) -> re.Match[str] | None:
    return pattern.fullmatch(value) if isinstance(value, str) else None


def is_user_name(value: object) -> bool:
    return _full(_USER_RE, value) is not None


def is_cluster_name(value: object) -> bool:
    return _full(_CLUSTER_RE, value) is not None


def cluster_name(value: object) -> str:
    """``value`` if it is a cluster name, else InvalidValue. Names end up in paths, unit names
    and command lines: nothing else gets through."""
    if not is_cluster_name(value):
        raise InvalidValue(f"invalid cluster name {value!r}")
    return value


def worker_name(value: object, cluster: object = None) -> str:
    """``value`` if it is a worker name (of ``cluster``, when given), else InvalidValue."""
    if cluster is not None:
        cluster_name(cluster)
    if _full(_WORKER_RE, value) is None or (cluster is not None and not value.startswith(f"{cluster}-")):
        of = f" for cluster {cluster!r}" if cluster is not None else ""
        raise InvalidValue(f"invalid worker name {value!r}{of}")
    return value


def is_unit_name(value: object) -> bool:
    return _full(_UNIT_RE, value) is not None


def unit_name(value: object) -> str:
    """``value`` if it is a launcher unit name (``<cluster>-scheduler``, ``<cluster>-worker-<suffix>``)."""
    if not is_unit_name(value):
        raise InvalidValue(f"invalid unit name {value!r}")
    return value


def is_ipv4(value: object) -> bool:
    return _full(_IPV4_RE, value) is not None


def ipv4(value: object, what: str = "host") -> str:
    """``value`` if it is a dotted-quad IPv4 address (no leading zeros), else InvalidValue."""
    if not is_ipv4(value):
        raise InvalidValue(f"{what}: an IPv4 address, got {value!r}")
    return value


@dataclass(frozen=True)
class Address:
    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


def address(value: object, schemes: Iterable[str], what: str = "address") -> Address:
    """``scheme://IPv4:port`` with a scheme of ``schemes`` and a port 1-65535, parsed; else
    InvalidValue."""
    schemes = tuple(schemes)
    m = _full(_ADDRESS_RE, value)
    if m is None or m[1] not in schemes or int(m[3]) > 65535:
        expected = "|".join(schemes)
        raise InvalidValue(f"invalid {what} {value!r}: expected {expected}://<IPv4 address>:<port>")
    return Address(m[1], m[2], int(m[3]))


def reported_address(key: str, value: object) -> Address | None:
    """One of the addresses a scheduler reports (``ADDRESS_SCHEMES[key]``), parsed; None for an
    empty ``dashboard_address`` (a scheduler without a dashboard)."""
    if key == "dashboard_address" and value == "":
        return None
    return address(value, ADDRESS_SCHEMES[key], key)


def is_env_name(value: object) -> bool:
    """An environment variable name a process may be given (at most 128 characters)."""
    return _full(_ENV_NAME_RE, value) is not None

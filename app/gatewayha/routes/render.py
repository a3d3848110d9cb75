"""Rendering of the HAProxy configuration and of the two route maps.

Every key and value is validated before it can reach a map file: a map line is handed to
HAProxy verbatim, and its value becomes the address HAProxy connects to.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import jinja2

from gatewayha import validate
from gatewayha.errors import InvalidValue

MapKind = Literal["sni", "dash"]

SNI_MAP_NAME = "sni.map"
DASH_MAP_NAME = "dash.map"

# A key is a cluster name (gatewayha.validate), behind the SNI prefix in sni.map.
SNI_PREFIX = "daskgateway-"


def _is_map_key(kind: MapKind, key: object) -> bool:
    if kind == "sni":
        return isinstance(key, str) and key.startswith(SNI_PREFIX) and validate.is_cluster_name(key[len(SNI_PREFIX) :])
    return validate.is_cluster_name(key)


_KEY_FORMS: dict[MapKind, str] = {"sni": f"{SNI_PREFIX}<cluster name>", "dash": "<cluster name>"}

_HOST_RE = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
_PORT_RE = re.compile(r"[1-9][0-9]{0,4}")
_SERVER_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_NO_SPACE_RE = re.compile(r"[^\s;#'\"\\]+")
_JWT_KEY_RE = re.compile(r"[0-9a-f]{64}")


def default_template_path() -> Path:
    """The repository's haproxy/haproxy.cfg.j2."""
    return Path(__file__).resolve().parents[3] / "haproxy" / "haproxy.cfg.j2"


def map_paths(map_dir: str | os.PathLike[str]) -> tuple[str, str]:
    """Absolute paths of sni.map and dash.map, spelled as the rendered config spells them.

    The runtime API names a map by the path written in the configuration, so the config
    renderer and the sync loop both go through here.
    """
    base = Path(map_dir)
    if not base.is_absolute():
        raise InvalidValue(f"map_dir must be an absolute path, got {str(map_dir)!r}")
    return str(base / SNI_MAP_NAME), str(base / DASH_MAP_NAME)


def validate_address(value: str) -> str:
    """Check a ``host:port`` address; return it unchanged or raise ValueError."""
    host, sep, port = value.rpartition(":") if isinstance(value, str) else ("", "", "")
    if not sep or not _PORT_RE.fullmatch(port) or not 1 <= int(port) <= 65535:
        raise InvalidValue(f"invalid address {value!r}: expected host:port with port 1-65535")
    if not (validate.is_ipv4(host) or _HOST_RE.fullmatch(host)):
        raise InvalidValue(f"invalid address {value!r}: host must be an IPv4 address or a hostname")
    return value


def validate_route_address(value: str) -> str:
    """Check the target of a route: ``IPv4:port``.

    HAProxy's ``set-dst`` takes an IP address and never resolves a name: with a hostname it
    leaves the destination at 0.0.0.0 and connects to this host instead. So routes, unlike
    API server addresses, must carry an IPv4 address.
    """
    validate_address(value)
    host = value.rpartition(":")[0]
    if not validate.is_ipv4(host):
        raise InvalidValue(f"invalid route target {value!r}: expected an IPv4 address, not a hostname")
    if host == "0.0.0.0":
        raise InvalidValue(f"invalid route target {value!r}: 0.0.0.0 is not a destination")
    return value


def validate_map_entries(entries: Mapping[str, str], kind: MapKind | None = None) -> None:
    """Raise ValueError unless every key fits the map kind and every value is IPv4:port.

    With ``kind=None`` a key may be either an SNI key or a dashboard key.
    """
    kinds: list[MapKind] = [kind] if kind else ["sni", "dash"]
    for key, value in entries.items():
        if not any(_is_map_key(k, key) for k in kinds):
            expected = " or ".join(_KEY_FORMS[k] for k in kinds)
            raise InvalidValue(f"invalid {kind or 'route'} map key {key!r}: expected {expected}")
        validate_route_address(value)


def render_map(entries: Mapping[str, str], kind: MapKind | None = None) -> str:
    """A map file body: one ``key value`` line per entry, sorted by key."""
    validate_map_entries(entries, kind)
    return "".join(f"{key} {entries[key]}\n" for key in sorted(entries))


def _check_params(params: dict[str, Any]) -> None:
    for name in ("abns_name", "admin_socket", "pidfile", "map_dir", "tls_crt"):
        value = params.get(name)
        if name in ("pidfile", "tls_crt") and not value:
            continue  # optional: empty means none
        if value is not None and not _NO_SPACE_RE.fullmatch(str(value)):
            raise InvalidValue(f"{name} must be a non-empty string without spaces or quotes: {value!r}")
    for key in [params.get("dashboard_jwt_key"), *(params.get("dashboard_jwt_previous_keys") or [])]:
        if key is not None and not _JWT_KEY_RE.fullmatch(str(key)):
            raise InvalidValue("dashboard JWT keys must be 64 hex characters (gatewayha.dashboards.jwt_key)")
    for name in ("limit_conn_cur", "limit_conn_rate", "limit_http_rate", "hsts_max_age"):
        value = params.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise InvalidValue(f"{name} must be a whole number >= 0, got {value!r}")
    for network in params.get("limit_exempt") or []:
        try:
            ipaddress.ip_network(str(network), strict=False)
        except ValueError:
            raise InvalidValue(f"limit_exempt: not an address or network: {network!r}") from None
    binds = params.get("bind")
    for bind in [binds] if isinstance(binds, str) else binds or []:
        if not _NO_SPACE_RE.fullmatch(str(bind)):
            raise InvalidValue(f"invalid bind address {bind!r}")
    names = set()
    for server in params.get("api_servers") or []:
        name = server["name"]
        if not _SERVER_NAME_RE.fullmatch(name) or name in names:
            raise InvalidValue(f"invalid or duplicate API server name {name!r}")
        names.add(name)
        validate_address(server["address"])


def render_haproxy_cfg(template_path: str | os.PathLike[str], **params: Any) -> str:
    """Render the HAProxy configuration template; the variables are listed at its top.

    ``map_dir`` is normalised to the absolute spelling used by :func:`map_paths`.
    """
    if "map_dir" in params:
        params["map_dir"] = str(Path(map_paths(params["map_dir"])[0]).parent)
    _check_params(params)
    path = Path(template_path)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(path.parent)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    return env.get_template(path.name).render(**params)

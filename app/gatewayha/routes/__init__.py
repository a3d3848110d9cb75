"""Routing: the HAProxy configuration, the route maps, and keeping live HAProxy equal to them.

``render`` turns parameters into ``haproxy.cfg`` and routes into map files, ``runtime`` talks
to a running HAProxy over its admin socket, ``sync`` makes files and live maps match the
desired routes. Nothing here reads the database: the caller passes the routes in.
"""

from gatewayha.routes.render import (
    default_template_path,
    map_paths,
    render_haproxy_cfg,
    render_map,
    validate_map_entries,
)
from gatewayha.routes.runtime import HAProxyRuntime, MapEntry, RuntimeAPIError, RuntimeConnectionError
from gatewayha.routes.sync import ensure_map_files, sync_maps

__all__ = [
    "HAProxyRuntime",
    "MapEntry",
    "RuntimeAPIError",
    "RuntimeConnectionError",
    "default_template_path",
    "ensure_map_files",
    "map_paths",
    "render_haproxy_cfg",
    "render_map",
    "sync_maps",
    "validate_map_entries",
]

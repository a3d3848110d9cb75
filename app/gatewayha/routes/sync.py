"""Make this node's HAProxy route maps equal to the desired routes.

The caller computes the desired routes (from Postgres); here they become two map files,
rewritten atomically so a reload or restart starts with them, and the live maps in the
running HAProxy, changed entry by entry through the runtime API so nothing is reloaded.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path

from gatewayha.files import write_atomic
from gatewayha.routes.render import MapKind, map_paths, render_map, validate_map_entries
from gatewayha.routes.runtime import HAProxyRuntime, MapEntry, RuntimeAPIError

log = logging.getLogger(__name__)

# Above this many differences one atomic replace (a few commands) is cheaper than one
# command per entry, and lookups never see a half-applied change.
BULK_REPLACE_THRESHOLD = 64

_lock = threading.Lock()


def ensure_map_files(map_dir: str | os.PathLike[str]) -> None:
    """Create empty map files where none exist, so HAProxy can start before any cluster."""
    Path(map_dir).mkdir(parents=True, exist_ok=True)
    for path in map_paths(Path(map_dir).absolute()):
        if not os.path.exists(path):
            write_atomic(path, "")


def sync_maps(
    runtime: HAProxyRuntime | None,
    map_dir: str | os.PathLike[str],
    sni: Mapping[str, str],
    dash: Mapping[str, str],
) -> dict[str, int]:
    """Write both map files and bring the live maps to the desired state.

    ``sni`` maps ``daskgateway-<name>`` to the scheduler's TLS ``ip:port``; ``dash`` maps
    ``<name>`` to the dashboard's ``ip:port``. Both are validated before anything is written
    (ValueError). With ``runtime=None`` only the files are written. Returns the counts
    ``added``, ``changed`` (including repaired duplicates), ``removed`` and ``files_changed``.

    The live maps are changed first: a client waits for those. The files are written after
    them, and also when HAProxy is down (RuntimeConnectionError) or refuses a command
    (RuntimeAPIError), so they hold the routes it loads on its next start; calling again
    once it answers finishes the live part. Written first, the files' fsyncs delayed every
    route: 2-12 ms on an idle disk, 30-100 ms while Postgres and a hundred schedulers wrote
    (bench/profile.md, finding 13).
    """
    validate_map_entries(sni, "sni")
    validate_map_entries(dash, "dash")
    sni_path, dash_path = map_paths(Path(map_dir).absolute())
    wanted: list[tuple[MapKind, str, Mapping[str, str]]] = [("sni", sni_path, sni), ("dash", dash_path, dash)]
    counts = {"added": 0, "changed": 0, "removed": 0, "files_changed": 0}
    with _lock:
        try:
            if runtime is not None:
                loaded = runtime.list_maps()
                for _kind, path, entries in wanted:
                    live_path = _loaded_name(path, loaded)
                    for name, n in _sync_live_map(runtime, live_path, entries).items():
                        counts[name] += n
        finally:
            Path(sni_path).parent.mkdir(parents=True, exist_ok=True)
            for kind, path, entries in wanted:
                if write_atomic(path, render_map(entries, kind)):
                    counts["files_changed"] += 1
    if counts["added"] or counts["changed"] or counts["removed"]:
        log.info("routes synced: %s", counts)
    return counts


def _loaded_name(path: str, loaded: list[str]) -> str:
    """The name HAProxy knows this map file by: the path spelled as in its configuration,
    which may differ from ours (a symlink, a relative map_dir resolved differently)."""
    if path in loaded:
        return path
    for name in loaded:
        try:
            if os.path.samefile(name, path):
                return name
        except OSError:
            continue
    loaded_list = ", ".join(loaded) or "none"
    raise RuntimeAPIError(f"show map ({path})", f"HAProxy has not loaded {path}; its maps: {loaded_list}")


def _sync_live_map(runtime: HAProxyRuntime, path: str, desired: Mapping[str, str]) -> dict[str, int]:
    live = runtime.map_entries(path)
    by_key: dict[str, list[MapEntry]] = {}
    for entry in live:
        by_key.setdefault(entry.key, []).append(entry)
    to_add = [key for key in desired if key not in by_key]
    to_change = [
        key for key in desired if key in by_key and (len(by_key[key]) > 1 or by_key[key][0].value != desired[key])
    ]
    to_remove = [key for key in by_key if key not in desired]
    counts = {"added": len(to_add), "changed": len(to_change), "removed": len(to_remove)}

    if len(to_add) + len(to_change) + len(to_remove) > BULK_REPLACE_THRESHOLD:
        runtime.replace_map(path, desired)
        return counts
    for key in to_remove:
        runtime.del_map(path, key)
    for key in to_change:
        # Repair entry by entry so the key never goes missing: keep the first entry, fix its
        # value, drop any duplicates ("add map" never checks whether a key exists).
        first, *extra = by_key[key]
        if first.value != desired[key]:
            runtime.set_map_entry(path, first, desired[key])
        for entry in extra:
            runtime.del_map_entry(path, entry)
    for key in to_add:
        runtime.add_map(path, key, desired[key])
    return counts

"""A small client for HAProxy's runtime API (the admin ``stats socket``).

Each command opens its own UNIX-socket connection: HAProxy answers and closes it, so there
is no session state to lose when HAProxy reloads, and the client is safe to share between
threads. A map is named by the file path written in the configuration.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from gatewayha.errors import GatewayError, InvalidValue

# What may appear in a key or value on the command line: no whitespace (it separates
# arguments, a newline ends the command), no ';' (separates commands), no '#' or '@' at the
# start (reference or version syntax), no backslash or quotes (escapes).
_TOKEN_RE = re.compile(r"[^\s;\\'\"#@][^\s;\\'\"]*")
_VERSION_RE = re.compile(r"New version created:\s*(\d+)")
_MAP_LIST_RE = re.compile(r"^\d+ \((.*?)\) ", re.MULTILINE)
# Well under the CLI's default 16 kB buffer, which also holds the command itself.
PAYLOAD_CHUNK_BYTES = 8192


class RuntimeAPIError(GatewayError):
    """HAProxy refused a runtime-API command, or answered something unexpected."""

    def __init__(self, command: str, response: str) -> None:
        self.command = command
        self.response = response
        shown = command if len(command) <= 120 else command[:120] + "..."
        super().__init__(f"HAProxy runtime API: {shown!r} failed: {response.strip() or '(no answer)'}")


class RuntimeConnectionError(RuntimeAPIError):
    """The admin socket could not be reached (HAProxy down, wrong path, permissions)."""


@dataclass(frozen=True)
class MapEntry:
    """One line of ``show map``: the entry reference, the key and the value."""

    ref: str
    key: str
    value: str


def _token(kind: str, value: str) -> str:
    if not isinstance(value, str) or not _TOKEN_RE.fullmatch(value):
        raise InvalidValue(f"unsafe map {kind} for the runtime API: {value!r}")
    return value


def _ref(ref: str) -> str:
    if not re.fullmatch(r"0x[0-9a-fA-F]+", ref):
        raise InvalidValue(f"not a map entry reference: {ref!r}")
    return ref


def _map_ref(map_path: str | os.PathLike[str]) -> str:
    ref = str(map_path)
    if not Path(ref).is_absolute():
        raise InvalidValue(f"map must be named by its absolute path, got {ref!r}")
    if not re.fullmatch(r"[^\s;\\'\"]+", ref):
        raise InvalidValue(f"unsafe map path {ref!r}")
    return ref


class HAProxyRuntime:
    """Commands to one HAProxy process over its admin socket."""

    def __init__(self, socket_path: str | os.PathLike[str], timeout: float = 2.0) -> None:
        self.socket_path = str(socket_path)
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"HAProxyRuntime({self.socket_path!r})"

    def command(self, cmd: str) -> str:
        """Send one command (or a ``<<`` payload command) and return HAProxy's raw answer."""
        cmd = cmd.rstrip("\n")
        # A payload ("<<" then lines) ends at the first empty line; a command at its newline.
        data = (cmd + ("\n\n" if "<<\n" in cmd else "\n")).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                sock.connect(self.socket_path)
                sock.sendall(data)
                chunks = []
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
        except OSError as exc:
            raise RuntimeConnectionError(cmd, f"{self.socket_path}: {exc}") from exc
        return b"".join(chunks).decode()

    def _checked(self, cmd: str) -> str:
        """Run a command that answers nothing on success; any text is an error message."""
        response = self.command(cmd)
        # Success is one empty line. No answer at all means HAProxy dropped the command,
        # e.g. a payload larger than its buffer (tune.bufsize): never mistake that for success.
        if response.strip() or not response:
            raise RuntimeAPIError(cmd, response)
        return response

    # -- maps ------------------------------------------------------------------------------

    def list_maps(self) -> list[str]:
        """The file names of the maps the running HAProxy has loaded (``show map``)."""
        response = self.command("show map")
        maps = [m.group(1) for m in _MAP_LIST_RE.finditer(response)]
        if not maps and response.strip() and not response.startswith("# id"):
            raise RuntimeAPIError("show map", response)
        return maps

    def map_entries(self, map_path: str | os.PathLike[str], version: int | None = None) -> list[MapEntry]:
        """Every entry of the map, duplicates included, in HAProxy's order."""
        ref = _map_ref(map_path)
        cmd = f"show map {ref}" if version is None else f"show map @{version} {ref}"
        response = self.command(cmd)
        entries = []
        for line in response.splitlines():
            if not line:
                continue
            parts = line.split(" ", 2)
            if len(parts) != 3 or not parts[0].startswith("0x"):
                raise RuntimeAPIError(cmd, response)
            entries.append(MapEntry(*parts))
        return entries

    def show_map(self, map_path: str | os.PathLike[str]) -> dict[str, str]:
        """The live map as a dict (for a duplicated key, the last entry listed wins)."""
        return {entry.key: entry.value for entry in self.map_entries(map_path)}

    def add_map(self, map_path: str | os.PathLike[str], key: str, value: str) -> None:
        """Add an entry. HAProxy does not check for an existing one: a key can end up twice."""
        self._checked(f"add map {_map_ref(map_path)} {_token('key', key)} {_token('value', value)}")

    def set_map(self, map_path: str | os.PathLike[str], key: str, value: str) -> None:
        """Change the value of every entry with this key; RuntimeAPIError if there is none."""
        self._checked(f"set map {_map_ref(map_path)} {_token('key', key)} {_token('value', value)}")

    def del_map(self, map_path: str | os.PathLike[str], key: str) -> None:
        """Delete every entry with this key; RuntimeAPIError if there is none."""
        self._checked(f"del map {_map_ref(map_path)} {_token('key', key)}")

    def set_map_entry(self, map_path: str | os.PathLike[str], entry: MapEntry, value: str) -> None:
        """Change the value of this one entry (by its reference), leaving duplicates alone."""
        self._checked(f"set map {_map_ref(map_path)} #{_ref(entry.ref)} {_token('value', value)}")

    def del_map_entry(self, map_path: str | os.PathLike[str], entry: MapEntry) -> None:
        """Delete this one entry (by its reference), leaving other entries of its key."""
        self._checked(f"del map {_map_ref(map_path)} #{_ref(entry.ref)}")

    def replace_map(self, map_path: str | os.PathLike[str], entries: Mapping[str, str]) -> None:
        """Atomically replace the whole map: lookups see the old map or the new, never a mix.

        ``prepare map`` allocates a version, ``add map @<ver> ... <<`` payloads fill it,
        ``commit map`` switches to it. If any step fails the version is never committed and
        the live map stays as it was.
        """
        ref = _map_ref(map_path)
        lines = [f"{_token('key', k)} {_token('value', v)}\n" for k, v in entries.items()]
        prepare = f"prepare map {ref}"
        response = self.command(prepare)
        match = _VERSION_RE.search(response)
        if not match:
            raise RuntimeAPIError(prepare, response)
        version = match.group(1)
        # The CLI reads a payload into one buffer (tune.bufsize, 16 kB by default); a larger
        # one is dropped without an answer. Send the entries in chunks that fit.
        chunk: list[str] = []
        size = 0
        for line in lines:
            if chunk and size + len(line) > PAYLOAD_CHUNK_BYTES:
                self._checked(f"add map @{version} {ref} <<\n" + "".join(chunk))
                chunk, size = [], 0
            chunk.append(line)
            size += len(line)
        if chunk:
            self._checked(f"add map @{version} {ref} <<\n" + "".join(chunk))
        self._checked(f"commit map @{version} {ref}")

    # -- process ---------------------------------------------------------------------------

    def show_info(self) -> dict[str, str]:
        """``show info`` as a dict (``Pid``, ``Uptime_sec``, ``CurrConns``, ...)."""
        response = self.command("show info")
        info = {}
        for line in response.splitlines():
            name, sep, value = line.partition(":")
            if sep:
                info[name.strip()] = value.strip()
        if "Pid" not in info:
            raise RuntimeAPIError("show info", response)
        return info

"""The one way gatewayha replaces a file: ``write_atomic``."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path


def _unchanged(target: Path, data: bytes, mode: int, gid: int | None) -> bool:
    """Whether ``target`` is a regular file (not a link) that already holds ``data``, ``mode``
    and group ``gid``."""
    try:
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:  # missing, a link, unreadable: write it
        return False
    with os.fdopen(fd, "rb") as handle:
        st = os.fstat(handle.fileno())
        if not stat.S_ISREG(st.st_mode) or stat.S_IMODE(st.st_mode) != mode or st.st_size != len(data):
            return False
        if gid is not None and st.st_gid != gid:
            return False
        return handle.read(len(data) + 1) == data


def write_atomic(
    path: str | os.PathLike[str],
    data: str | bytes,
    mode: int = 0o644,
    *,
    gid: int | None = None,
    durable: bool = True,
) -> bool:
    """Replace the file at ``path`` with ``data`` in one step; return whether it changed.

    A reader (HAProxy on reload, a launched process) sees the old file or the new one, never a
    torn or empty one, and the new one has ``mode`` (and group ``gid``, for a file a cluster's
    processes read) from its first byte on. The temporary file is a fresh name next to ``path``
    made with O_EXCL|O_NOFOLLOW, so a link or file planted there is never followed or reused;
    it is gone whatever happens. An unchanged file (same bytes, mode and group) is left alone,
    so its mtime and inode say when it last changed. ``durable``: fsync the file and the
    directory, so the new file survives a power cut (not needed for what a reboot makes
    meaningless: pidfiles, a cluster's files, rewritten before every launch).
    """
    target = Path(path)
    raw = data.encode() if isinstance(data, str) else bytes(data)
    if _unchanged(target, raw, mode, gid):
        return False
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            if gid is not None:
                os.fchown(handle.fileno(), -1, gid)
            os.fchmod(handle.fileno(), mode)
            handle.write(raw)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        # Make the rename itself durable.
        dir_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return True

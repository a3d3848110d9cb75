"""gatewayha.files.write_atomic: the one way a file is replaced."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from gatewayha import files
from gatewayha.files import write_atomic


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_the_new_file_has_its_mode_and_no_temporary_file_is_left(tmp_path: Path):
    target = tmp_path / "secret"
    assert write_atomic(target, "k1", 0o600) is True
    assert target.read_text() == "k1" and mode(target) == 0o600
    assert write_atomic(target, b"k2", 0o640) is True  # bytes too; the mode follows the call
    assert target.read_bytes() == b"k2" and mode(target) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret"]


def test_an_unchanged_file_is_left_alone_but_a_mode_change_is_not(tmp_path: Path):
    target = tmp_path / "map"
    write_atomic(target, "a 1\n")
    inode = os.stat(target).st_ino
    assert write_atomic(target, "a 1\n") is False
    assert os.stat(target).st_ino == inode
    os.chmod(target, 0o666)
    assert write_atomic(target, "a 1\n") is True
    assert mode(target) == 0o644 and os.stat(target).st_ino != inode


def test_a_link_at_the_path_is_replaced_never_followed(tmp_path: Path):
    victim = tmp_path / "victim"
    victim.write_text("a 1\n")
    os.chmod(victim, 0o644)
    link = tmp_path / "map"
    link.symlink_to(victim)
    # Same bytes and mode behind the link: still not "unchanged", the link goes.
    assert write_atomic(link, "a 1\n") is True
    assert not link.is_symlink() and link.read_text() == "a 1\n"
    write_atomic(link, "evil\n")
    assert victim.read_text() == "a 1\n"


def test_readers_never_see_a_partial_or_empty_file(tmp_path: Path):
    target = tmp_path / "big"
    bodies = [bytes([65 + i]) * 1_000_000 for i in range(4)]
    write_atomic(target, bodies[0])
    stop = threading.Event()
    seen: set[int] = set()
    torn: list[int] = []

    def read():
        while not stop.is_set():
            data = target.read_bytes()
            if data not in bodies:
                torn.append(len(data))
            seen.add(data[0])

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(40):
            write_atomic(target, bodies[i % 4], durable=False)
    finally:
        stop.set()
        reader.join()
    assert torn == []
    assert len(seen) > 1  # the reader did see the file change


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path: Path, monkeypatch):
    target = tmp_path / "cfg"
    write_atomic(target, "old\n", 0o600)

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, "new\n", 0o600)
    assert target.read_text() == "old\n" and mode(target) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg"]


def test_a_planted_temporary_name_is_not_reused(tmp_path: Path):
    target = tmp_path / "tls.key"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("untouched")
    # A link where a predictable temporary name would be: the helper never opens a fixed name.
    (tmp_path / f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp").symlink_to(elsewhere)
    write_atomic(target, "key", 0o600, durable=False)
    assert target.read_text() == "key" and elsewhere.read_text() == "untouched"


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's group to another needs root")
def test_group_and_mode_for_a_file_a_clusters_processes_read(tmp_path: Path):
    target = tmp_path / "api-token"
    write_atomic(target, "t", 0o440, gid=4242, durable=False)
    st = os.stat(target)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 4242, 0o440)
    assert write_atomic(target, "t", 0o440, gid=4242) is False  # unchanged
    assert write_atomic(target, "t", 0o440, gid=4243) is True  # another group: rewritten
    assert os.stat(target).st_gid == 4243

"""Small helpers shared by the test modules (importable as ``helpers``: tests/ is on sys.path)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition", interval: float = 0.1):
    """Poll ``predicate`` until it returns something truthy, and return that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def datagrams(sock, seconds: float) -> list[bytes]:
    """Every datagram ``sock`` (a socket with a short timeout) receives within ``seconds``."""
    got, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            got.append(sock.recv(256))
        except TimeoutError:
            pass
    return got

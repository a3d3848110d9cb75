"""The per-user gate of the API process (gatewayha.api.gate)."""

from __future__ import annotations

import threading
import time

import pytest

from gatewayha.api.gate import KeyedGate
from gatewayha.errors import Unavailable


def test_one_holder_per_key_and_keys_are_independent():
    gate = KeyedGate(timeout=5)
    inside: dict[str, int] = {"a": 0, "b": 0}
    peak: dict[str, int] = {"a": 0, "b": 0}
    lock = threading.Lock()

    def work(key):
        with gate.hold(key):
            with lock:
                inside[key] += 1
                peak[key] = max(peak[key], inside[key])
            time.sleep(0.01)
            with lock:
                inside[key] -= 1

    threads = [threading.Thread(target=work, args=(k,)) for k in "ab" * 10]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert peak == {"a": 1, "b": 1}
    assert len(gate) == 0  # no entry left behind


def test_different_keys_do_not_wait_for_each_other():
    gate = KeyedGate(timeout=0.2)
    with gate.hold("a"):
        with gate.hold("b"):
            assert len(gate) == 2


def test_a_waiter_gives_up_after_the_timeout_with_503():
    gate = KeyedGate(timeout=0.1)
    with gate.hold("a"):
        errors = []

        def wait():
            try:
                with gate.hold("a"):
                    pass
            except Unavailable as e:
                errors.append(e)

        t = threading.Thread(target=wait)
        t.start()
        t.join(5)
        assert len(errors) == 1 and errors[0].status == 503
    assert len(gate) == 0
    with gate.hold("a"):  # usable again
        pass


def test_an_exception_inside_releases_the_gate():
    gate = KeyedGate(timeout=0.1)
    with pytest.raises(RuntimeError), gate.hold("a"):
        raise RuntimeError("boom")
    with gate.hold("a"):
        assert len(gate) == 1

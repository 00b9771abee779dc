"""Fixtures for pymooncake's tests: engines on 127.0.0.1 in P2P mode, and
plain (unregistered) memory to register.

The Go extension must be built (``make build``); a missing extension fails
the tests that need it rather than skipping them.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pmtest import Mem, new_engine

import pymooncake
from pymooncake.engine import TransferEngine


@pytest.fixture(autouse=True)
def _not_strict() -> Iterator[None]:
    """Tests see the default (code-returning) mode unless they opt in."""
    previous = pymooncake.set_strict(False)
    yield
    pymooncake.set_strict(previous)


@pytest.fixture
def strict() -> Iterator[None]:
    previous = pymooncake.set_strict(True)
    yield
    pymooncake.set_strict(previous)


@pytest.fixture
def engine() -> Iterator[TransferEngine]:
    e = new_engine()
    yield e
    e.close()


@pytest.fixture
def pair() -> Iterator[tuple[TransferEngine, TransferEngine]]:
    """An initiator and a target, both in this process."""
    a, b = new_engine(), new_engine()
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def peers(pair: tuple[TransferEngine, TransferEngine]) -> Iterator[tuple[TransferEngine, Mem, TransferEngine, Mem]]:
    """Initiator and target with 1 MiB registered on each side."""
    a, b = pair
    ma, mb = Mem(1 << 20), Mem(1 << 20)
    assert a.register_memory(ma.addr, ma.size) == 0
    assert b.register_memory(mb.addr, mb.size) == 0
    yield a, ma, b, mb
    a.unregister_memory(ma.addr)
    b.unregister_memory(mb.addr)

"""Fixtures for pymooncake's tests: engines on 127.0.0.1 in P2P mode,
plain (unregistered) memory to register, and a real etcd (skipped when the
binary is missing, unless CI is set).

The Go extension must be built (``make build``); a missing extension fails
the tests that need it rather than skipping them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from pmtest import Mem, free_port, new_engine

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


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[str]:
    """A single-member etcd on 127.0.0.1; yields its "host:port"."""
    binary = shutil.which("etcd")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("etcd is not installed (Debian: apt-get install etcd-server)")
        pytest.skip("etcd is not installed (Debian: apt-get install etcd-server)")
    client, peer = free_port(), free_port()
    log = (tmp_path / "etcd.log").open("w")
    proc = subprocess.Popen(
        [
            binary, "--name", "t", "--data-dir", str(tmp_path / "data"),
            "--listen-client-urls", f"http://127.0.0.1:{client}", "--advertise-client-urls", f"http://127.0.0.1:{client}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"t=http://127.0.0.1:{peer}",
        ],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{client}/health", timeout=1) as r:
                    if b"true" in r.read():
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("etcd did not start: " + (tmp_path / "etcd.log").read_text()[-2000:])
            time.sleep(0.05)
        yield f"127.0.0.1:{client}"
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()

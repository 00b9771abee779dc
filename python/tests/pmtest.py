"""Helpers shared by pymooncake's tests (imported as ``pmtest``)."""

from __future__ import annotations

import ctypes
import multiprocessing.queues
import os
import socket
import subprocess
import sys
from pathlib import Path

from pymooncake.engine import TransferEngine

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


class Mem:
    """Zeroed memory owned by the test (not registered), with its address."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._buf = ctypes.create_string_buffer(size)
        self.addr = ctypes.addressof(self._buf)

    def write(self, offset: int, data: bytes) -> None:
        assert offset >= 0
        assert offset + len(data) <= self.size
        ctypes.memmove(self.addr + offset, data, len(data))

    def read(self, offset: int, n: int) -> bytes:
        assert offset >= 0
        assert offset + n <= self.size
        return ctypes.string_at(self.addr + offset, n)


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def stop_process(pid: int, timeout: float = 5.0) -> None:
    """SIGSTOP pid and return once the kernel shows it stopped: the signal
    alone leaves it running on another core for a moment, long enough to
    serve a request sent right after."""
    import signal
    import time

    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + timeout
    while True:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        if state in ("T", "t"):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} not stopped after {timeout} s (state {state})")
        time.sleep(0.001)


def new_engine() -> TransferEngine:
    e = TransferEngine()
    assert e.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == 0
    return e


def run_python(code: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run code in a fresh interpreter that imports this checkout."""
    full = dict(os.environ)
    full["PYTHONPATH"] = str(ROOT) + os.pathsep + full.get("PYTHONPATH", "")
    full.update(env or {})
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=timeout, cwd=ROOT, check=False)


class Peer:
    """An engine in a child process (peer_proc.py), driven over pipes: in
    P2P mode, or called ``name`` in the metadata service ``metadata``."""

    def __init__(self, size: int = 1 << 20, env: dict[str, str] | None = None, name: str | None = None, metadata: str = "P2PHANDSHAKE") -> None:
        import json

        full = dict(os.environ)
        full["PYTHONPATH"] = str(ROOT) + os.pathsep + full.get("PYTHONPATH", "")
        full.update(env or {})
        args = [str(size)] if name is None else [str(size), name, metadata]
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "peer_proc.py"), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=full,
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        hello = json.loads(self.proc.stdout.readline())
        assert hello["rc"] == 0, hello
        self.segment: str = hello["segment"]
        self.addr: int = hello["addr"]
        self.size: int = hello["size"]
        self.pid: int = hello["pid"]

    def ask(self, **cmd: object) -> dict[str, object]:
        import json

        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "peer exited"
        out: dict[str, object] = json.loads(line)
        return out

    def close(self) -> int:
        """Ask the peer to quit and reap it; idempotent. Returns its exit code."""
        assert self.proc.stdin is not None
        if not self.proc.stdin.closed:
            try:
                self.proc.stdin.write('{"op": "quit"}\n')
                self.proc.stdin.flush()
            except BrokenPipeError:
                pass  # the peer is gone (killed)
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
        try:
            return self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            if self.proc.stdout is not None:
                self.proc.stdout.close()


def spawn_child_push(segment: str, remote: int, data: bytes, out: multiprocessing.queues.Queue[object]) -> None:
    """Run in a spawned process: write data into a peer's buffer."""
    mem = Mem(len(data))
    mem.write(0, data)
    e = TransferEngine()
    try:
        rc = e.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "")
        if rc == 0:
            rc = e.register_memory(mem.addr, mem.size)
        if rc == 0:
            rc = e.transfer_sync_write(segment, mem.addr, remote, len(data))
        out.put(rc)
    finally:
        e.close()

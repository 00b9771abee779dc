"""Start peer.py subprocesses and talk to them with deadlines.

Used by capture.py and by the pytest suite in python/tests/interop. Nothing
here imports an engine: each engine runs in its own subprocess, the Mooncake
one under the Mooncake venv's interpreter (see scripts/install-mooncake.sh).
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
PEER = os.path.join(HERE, "peer.py")

__all__ = ["Peer", "PeerError", "mooncake_python", "pymooncake_python", "base_env", "REPO"]


class PeerError(RuntimeError):
    """A peer failed to start, answered an error, died or missed a deadline."""


def mooncake_python() -> str:
    """Interpreter of the Mooncake venv: $MOONCAKE_VENV or <repo>/.venv-mooncake."""
    venv = os.environ.get("MOONCAKE_VENV") or os.path.join(REPO, ".venv-mooncake")
    return os.path.join(venv, "bin", "python")


def pymooncake_python() -> str:
    """Interpreter that imports pymooncake: $PYMOONCAKE_PYTHON or this one."""
    return os.environ.get("PYMOONCAKE_PYTHON") or sys.executable


def base_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a peer: TCP only, loopback, no inherited MC_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MC_")}
    env.pop("PYTHONPATH", None)
    env["MC_FORCE_TCP"] = "1"
    env["MC_TRANSFER_TIMEOUT"] = env.get("MC_TRANSFER_TIMEOUT", "10")
    if extra:
        env.update(extra)
    return env


class Peer:
    """One running peer.py; use as a context manager so it is always reaped."""

    def __init__(self, impl: str, role: str, *, size: int = 1 << 20, buffer: str | None = None,
                 metadata: str = "P2PHANDSHAKE", hostname: str = "127.0.0.1",
                 env: dict[str, str] | None = None, python: str | None = None,
                 timeout: float = 30.0) -> None:
        if python is None:
            python = mooncake_python() if impl == "mooncake" else pymooncake_python()
        cmd = [python, PEER, "--impl", impl, "--role", role, "--size", str(size),
               "--metadata", metadata, "--hostname", hostname]
        if buffer:
            cmd += ["--buffer", buffer]
        if impl == "pymooncake":
            env = dict(env or base_env())
            env["PYTHONPATH"] = REPO  # our package from the source tree
        self.impl = impl
        self.role = role
        self.timeout = timeout
        self.stderr = tempfile.TemporaryFile(mode="w+b")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr, env=env if env is not None else base_env(),
                                     text=True, bufsize=1)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        try:
            self.hello = self._reply(timeout)
        except BaseException:
            self.close(timeout=5)
            raise
        self.name: str = self.hello["name"]
        self.buffer: int = self.hello["buffer"]
        self.size: int = self.hello["size"]

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def log_tail(self, n: int = 4000) -> str:
        """Last n characters of the peer's stderr (engine logs)."""
        self.stderr.flush()
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")[-n:]

    def _reply(self, timeout: float) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise PeerError(f"{self.impl} {self.role}: no reply in {timeout} s\n{self.log_tail()}") from None
        if line is None:
            rc = self.proc.wait(timeout=5)
            raise PeerError(f"{self.impl} {self.role}: exited with {rc}\n{self.log_tail()}")
        reply: dict[str, Any] = json.loads(line)
        if not reply.get("ok"):
            raise PeerError(f"{self.impl} {self.role}: {reply.get('error')}\n{self.log_tail()}")
        return reply

    def request(self, req: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise PeerError(f"{self.impl} {self.role}: gone\n{self.log_tail()}") from None
        return self._reply(timeout or self.timeout)

    def call(self, method: str, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """Call engine.method(*args) in the peer and return its result."""
        r = self.request({"cmd": "call", "method": method, "args": list(args), "kwargs": kwargs},
                         timeout)
        return r["result"]

    def fill(self, addr: int, length: int, seed: str) -> str:
        return str(self.request({"cmd": "fill", "addr": addr, "length": length, "seed": seed})["sha256"])

    def digest(self, addr: int, length: int) -> str:
        return str(self.request({"cmd": "digest", "addr": addr, "length": length})["sha256"])

    def peek(self, addr: int, length: int) -> bytes:
        return bytes.fromhex(self.request({"cmd": "peek", "addr": addr, "length": length})["hex"])

    def zero(self, addr: int, length: int) -> None:
        self.request({"cmd": "zero", "addr": addr, "length": length})

    def close(self, timeout: float = 15.0) -> int:
        """Ask the peer to exit; kill it if it does not. Returns its exit code."""
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(json.dumps({"cmd": "exit"}) + "\n")
                self.proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.reader.join(timeout=5)
        return self.proc.returncode

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""Transfers between engines that find each other through a metadata store.

HTTP: Mooncake's own ``mooncake_http_metadata_server`` (from the wheel's venv).
etcd: a throwaway ``etcd`` (Debian etcd-server) when the binary is on PATH.
Both engines use names without ports and ``MC_TCP_BIND_ADDRESS=127.0.0.1``;
the initiator opens the target by name only. The store's keys are checked
while the target runs and after it exits.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator

import pytest
from conftest import impl_pairs, require
from driver import Peer, PeerError, base_env, mooncake_python

Getter = Callable[[str], "bytes | None"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready in {timeout} s")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def http_store() -> Iterator[tuple[str, Getter]]:
    require("mooncake")  # the server comes from the Mooncake wheel
    server = os.path.join(os.path.dirname(mooncake_python()), "mooncake_http_metadata_server")
    assert os.access(server, os.X_OK), f"{server} missing: the wheel should install it"
    port = free_port()
    proc = subprocess.Popen([server, "--host", "127.0.0.1", "--port", str(port), "--log-level", "WARNING"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/metadata"

    def get(key: str) -> bytes | None:
        try:
            with urllib.request.urlopen(f"{url}?key={urllib.parse.quote(key, safe='')}", timeout=5) as r:
                return r.read()
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"metadata server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            get("probe")
            return True
        except OSError:
            return False

    try:
        wait_until(up, 20, "mooncake_http_metadata_server")
        yield url, get
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def etcd_store() -> Iterator[tuple[str, Getter]]:
    etcd, etcdctl = shutil.which("etcd"), shutil.which("etcdctl")
    if etcd is None or etcdctl is None:
        pytest.skip("etcd/etcdctl not on PATH (Debian: apt-get install etcd-server etcd-client)")
    cport, pport = free_port(), free_port()
    endpoint = f"127.0.0.1:{cport}"
    ctl = [etcdctl, "--endpoints", endpoint]
    with tempfile.TemporaryDirectory() as d:
        proc = subprocess.Popen(
            [etcd, "--data-dir", d, "--name", "interop",
             "--listen-client-urls", f"http://{endpoint}", "--advertise-client-urls", f"http://{endpoint}",
             "--listen-peer-urls", f"http://127.0.0.1:{pport}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{pport}",
             "--initial-cluster", f"interop=http://127.0.0.1:{pport}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def get(key: str) -> bytes | None:
            out = subprocess.run(ctl + ["get", key, "-w", "json"], capture_output=True, check=True, timeout=10)
            kvs = json.loads(out.stdout).get("kvs") or []
            return base64.b64decode(kvs[0]["value"]) if kvs else None

        try:
            wait_until(lambda: subprocess.run(ctl + ["endpoint", "health"], capture_output=True,
                                              timeout=10, check=False).returncode == 0, 30, "etcd")
            yield f"etcd://{endpoint}", get
        finally:
            proc.terminate()
            proc.wait(timeout=10)


@pytest.fixture(params=["http", "etcd"])
def store(request: pytest.FixtureRequest) -> tuple[str, str, Getter]:
    conn, get = request.getfixturevalue(f"{request.param}_store")
    return request.param, conn, get


@pytest.mark.parametrize("impls", impl_pairs())
def test_transfer_by_name(store: tuple[str, str, Getter], impls: tuple[str, str]) -> None:
    kind, conn, get = store
    target_impl, initiator_impl = impls
    require(target_impl, initiator_impl)
    env = base_env({"MC_TCP_BIND_ADDRESS": "127.0.0.1"})
    tname, iname = f"tgt-{uuid.uuid4().hex[:12]}", f"ini-{uuid.uuid4().hex[:12]}"
    with Peer(target_impl, "target", size=4 << 20, metadata=conn, hostname=tname, env=env) as t:
        assert t.name == tname
        desc_raw = get(f"mooncake/ram/{tname}")
        assert desc_raw is not None, f"{kind}: no mooncake/ram/{tname} while the target runs"
        desc = json.loads(desc_raw)
        assert desc["name"] == tname and desc["protocol"] == "tcp"
        assert desc["tcp_proto_version"] == 2
        assert any(b["addr"] <= t.buffer and t.buffer + t.size <= b["addr"] + b["length"]
                   for b in desc["buffers"]), f"registered buffer missing from {desc}"
        if kind == "etcd":
            assert desc_raw.endswith(b"\n"), "etcd values are FastWriter JSON ending in a newline"
        meta = json.loads(get(f"mooncake/rpc_meta/{tname}") or b"null")
        assert meta == {"ip_or_host_name": "127.0.0.1", "rpc_port": t.hello["rpc_port"]}

        with Peer(initiator_impl, "initiator", size=4 << 20, metadata=conn, hostname=iname, env=env) as i:
            want = i.fill(i.buffer, 3 << 20, "store-write")
            assert i.call("transfer_sync_write", tname, i.buffer, t.buffer + 11, 3 << 20) == 0, t.log_tail()
            assert t.digest(t.buffer + 11, 3 << 20) == want
            want = t.fill(t.buffer, 4096, "store-read")
            assert i.call("transfer_sync_read", tname, i.buffer, t.buffer, 4096) == 0
            assert i.digest(i.buffer, 4096) == want
            rc = i.call("transfer_sync", tname, i.buffer, t.buffer, 64, {"opcode": "Write"},
                        {"notify": ["store", kind]})
            assert rc == 0
            notes: list[dict[str, str]] = []
            deadline = time.monotonic() + 5  # the notify may trail the transfer's return
            while not notes and time.monotonic() < deadline:
                notes += t.call("get_notifies")
            assert notes == [{"name": "store", "msg": kind}]
            assert i.call("send_probe", tname) == 0
            assert i.call("transfer_sync_write", tname, i.buffer, t.buffer + t.size, 16) == -1
        assert get(f"mooncake/ram/{iname}") is None, "initiator's descriptor left after it exited"
        assert get(f"mooncake/rpc_meta/{iname}") is None, "initiator's rpc_meta left after it exited"
    assert get(f"mooncake/ram/{tname}") is None, "target's descriptor left after it exited"
    assert get(f"mooncake/rpc_meta/{tname}") is None, "target's rpc_meta left after it exited"


@pytest.mark.parametrize("impl", ["mooncake", pytest.param("pymooncake", marks=pytest.mark.needs_pymooncake)])
def test_duplicate_name_fails_over_http(http_store: tuple[str, Getter], impl: str) -> None:
    conn, get = http_store
    require(impl)
    env = base_env({"MC_TCP_BIND_ADDRESS": "127.0.0.1"})
    name = f"dup-{uuid.uuid4().hex[:12]}"
    with Peer("mooncake", "target", size=0, metadata=conn, hostname=name, env=env):
        assert get(f"mooncake/rpc_meta/{name}") is not None
        # The server answers 400 to a second PUT of a live rpc_meta key, so initialize fails.
        with pytest.raises(PeerError, match="returned -1"):
            Peer(impl, "target", size=0, metadata=conn, hostname=name, env=env).close()

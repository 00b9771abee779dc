"""A second initialize() on the same TransferEngine, Mooncake's against pymooncake's.

Mooncake's initialize builds a new C++ engine and drops the first one: the
first engine's RPC port closes, its registrations are gone with it, peers
that used its name fail, and the new engine has a new port (P2P). Each
implementation's target is initialized a second time while an initiator of
the same implementation watches.
"""

from __future__ import annotations

import socket

import pytest
from conftest import require
from driver import Peer, base_env

IMPLS = ["mooncake", pytest.param("pymooncake", marks=pytest.mark.needs_pymooncake)]


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("impl", IMPLS)
def test_second_initialize_replaces_the_engine(impl: str) -> None:
    require(impl)
    env = base_env({"MC_TRANSFER_TIMEOUT": "5"})
    with Peer(impl, "target", size=1 << 20, env=env) as t, Peer(impl, "initiator", size=1 << 20, env=env) as i:
        first, port1 = t.name, t.hello["rpc_port"]
        i.fill(i.buffer, 4096, "before")
        assert i.call("transfer_sync_write", first, i.buffer, t.buffer, 4096) == 0

        assert t.call("initialize", "127.0.0.1", "P2PHANDSHAKE", "tcp", "") == 0, t.log_tail()
        port2 = t.call("get_rpc_port")
        second = f"127.0.0.1:{port2}"
        assert listening(port2)
        if port2 != port1:  # a new random port; the same one may come back
            assert not listening(port1), f"{impl}: the first engine's RPC port is still open"
            assert i.call("send_probe", first) == -102
            assert i.call("transfer_sync_write", first, i.buffer, t.buffer, 4096) == -1
        assert i.call("send_probe", second) == 0
        assert i.call("transfer_sync_write", second, i.buffer, t.buffer, 4096) == -1, \
            f"{impl}: the registration survived the second initialize"
        assert t.call("register_memory", t.buffer, t.size) == 0
        want = i.fill(i.buffer, 4096, "after")
        assert i.call("transfer_sync_write", second, i.buffer, t.buffer, 4096) == 0
        assert t.digest(t.buffer, 4096) == want

        # a protocol both refuse before touching the running engine
        assert t.call("initialize", "127.0.0.1", "P2PHANDSHAKE", "xgmi", "") == -1
        assert t.call("get_rpc_port") == port2
        assert i.call("transfer_sync_write", second, i.buffer, t.buffer, 4096) == 0

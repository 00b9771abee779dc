"""Replay the golden captures (testdata/mooncake/<pinned version>/) against live engines.

As target: the harness sends the captured requests (addresses rebased onto
the live target's buffer) and compares the replies byte for byte, and whether
the connection was closed, with what Mooncake answered at capture time.
As initiator: the engine talks to a recording fake target and must send
exactly the captured bytes. Run with --impl mooncake this checks that the
captures still describe the pinned wheel; with pymooncake it checks our wire.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import REPO, require
from driver import Peer, base_env, mooncake_python
from recorder import FakeTarget
from wire import HEADER_SIZE, METADATA, NOTIFY, PROBE, connect, parse_header, recv_exact, recv_until_eof

IMPLS = ["mooncake", pytest.param("pymooncake", marks=pytest.mark.needs_pymooncake)]

# Top-level descriptor keys pymooncake adds on purpose (Mooncake's decoder
# ignores unknown keys): the engine's incarnation id, for restart detection.
EXTENSIONS = {"pymooncake_instance", "pymooncake_tcp_sg", "pymooncake_host", "pymooncake_hostmem"}


def mooncake_keys(desc: dict[str, Any]) -> list[str]:
    """The descriptor's keys in order, without pymooncake's extensions."""
    return [k for k in desc if k not in EXTENSIONS]


def pinned_version() -> str:
    with open(os.path.join(REPO, "scripts", "install-mooncake.sh")) as f:
        m = re.search(r'^MOONCAKE_VERSION="([^"]+)"', f.read(), re.M)
    assert m, "scripts/install-mooncake.sh has no MOONCAKE_VERSION"
    return m.group(1)


GOLDEN = os.path.join(REPO, "testdata", "mooncake", pinned_version())


def golden(rel: str) -> bytes:
    with open(os.path.join(GOLDEN, rel), "rb") as f:
        return f.read()


def manifest() -> dict[str, Any]:
    with open(os.path.join(GOLDEN, "manifest.json")) as f:
        return json.load(f)


def test_golden_captures_match_pinned_version() -> None:
    m = manifest()
    assert m["mooncake_version"] == pinned_version()
    for rel in m["files"]:
        assert os.path.exists(os.path.join(GOLDEN, rel)), f"manifest names missing file {rel}"


def test_mooncake_venv_has_pinned_version() -> None:
    require("mooncake")
    code = "from importlib.metadata import version; print(version('mooncake-transfer-engine-non-cuda'))"
    out = subprocess.run([mooncake_python(), "-c", code],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == pinned_version(), "the Mooncake venv is stale: rerun scripts/install-mooncake.sh"


# ------------------------------------------------------------------ as target

@pytest.fixture(scope="module", params=IMPLS)
def target(request: pytest.FixtureRequest) -> Iterator[Peer]:
    require(request.param)
    with Peer(request.param, "target", size=1 << 20, env=base_env()) as t:
        yield t


def rpc_roundtrip(port: int, request: bytes) -> tuple[bytes, bool]:
    with connect(port) as s:
        s.sendall(request)
        return recv_until_eof(s, 6.0)


@pytest.mark.parametrize("name", ["connection", "notify", "probe", "legacy"])
def test_rpc_reply_bytes(target: Peer, name: str) -> None:
    reply, closed = rpc_roundtrip(target.hello["rpc_port"], golden(f"server/{name}.request.bin"))
    assert reply == golden(f"server/{name}.reply.bin"), f"{name} reply differs\n{target.log_tail()}"
    assert closed, "the server must close (half-close) after its reply"
    if name == "notify":
        assert target.call("get_notifies") == [{"name": "job1", "msg": "hello"}]


def test_metadata_reply(target: Peer) -> None:
    reply, closed = rpc_roundtrip(target.hello["rpc_port"], golden("server/metadata.request.bin"))
    assert closed
    assert int.from_bytes(reply[:8], "little") == len(reply) - 8 and reply[8] == METADATA
    assert reply.endswith(b"\n"), "FastWriter JSON ends in a newline"
    keys = mooncake_keys(json.loads(reply[9:], object_pairs_hook=dict))
    gold = json.loads(golden("server/metadata.reply.bin")[9:])
    assert keys == list(gold.keys()), (
        f"descriptor keys differ from Mooncake's: missing {sorted(set(gold) - set(keys))}, "
        f"extra {sorted(set(keys) - set(gold))}, order {keys}")
    desc = json.loads(reply[9:])
    assert desc["name"] == target.name and desc["protocol"] == "tcp"
    assert desc["tcp_proto_version"] == 2 and desc["tcp_data_host"] == "127.0.0.1"
    assert desc["rdma_server_name"] == ""
    assert 15000 <= desc["tcp_data_port"] <= 17000
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}", desc["timestamp"])
    assert desc["buffers"] == [{"addr": target.buffer, "length": target.size, "name": target.name}]
    assert list(desc["buffers"][0]) == list(gold["buffers"][0]), "buffer key order differs"


def rebase(request: bytes, old: int, new: int) -> bytes:
    """Move every header's address from the capture's buffer to the live one."""
    out = bytearray(request)
    pos = 0
    while pos + HEADER_SIZE <= len(out):
        h = parse_header(bytes(out[pos:pos + HEADER_SIZE]))
        out[pos + 8:pos + 16] = (h["addr"] - old + new).to_bytes(8, "little")
        pos += HEADER_SIZE
        if h["opcode"] & 0x7F == 1:
            pos += min(h["size"], len(out) - pos)
    return bytes(out)


# Capture order matters: the writes change the buffer that later reads return.
DATA_CASES = ["data_v2_read", "data_v2_write", "data_v2_pipelined", "data_v1_read", "data_v1_write_then_read",
              "data_v2_read_rejected", "data_v2_write_rejected", "data_v2_size0_rejected",
              "data_v1_read_rejected", "data_v1_write_rejected", "data_v2_opcode_0x82",
              "data_v1_opcode_0x03", "data_v2_padding_ff"]


def test_data_replies(target: Peer) -> None:
    obs = manifest()["observations"]
    old = obs["server.registered"]["addr"]
    rpc, _ = rpc_roundtrip(target.hello["rpc_port"], golden("server/metadata.request.bin"))
    port = json.loads(rpc[9:])["tcp_data_port"]
    target.zero(target.buffer, target.size)
    target.fill(target.buffer, 64, "golden")
    for name in DATA_CASES:
        request = rebase(golden(f"server/{name}.request.bin"), old, target.buffer)
        want = golden(f"server/{name}.reply.bin")
        want_closed = obs[f"server.{name}"]["closed"]
        with connect(port) as s:
            s.sendall(request)
            if want_closed:
                got, closed = recv_until_eof(s, 5.0)
            else:
                got = recv_exact(s, len(want))
                more, closed = recv_until_eof(s, 0.3)
                got += more
        assert got == want, f"{name}: reply differs\n got {got[:48].hex()}\nwant {want[:48].hex()}"
        assert closed == want_closed, f"{name}: closed={closed}, Mooncake closed={want_closed}"
    assert target.peek(target.buffer + target.size - 32, 32) == bytes(32), "a rejected write touched memory"


# --------------------------------------------------------------- as initiator

@pytest.fixture(scope="module", params=IMPLS)
def initiator(request: pytest.FixtureRequest) -> Iterator[Peer]:
    require(request.param)
    with Peer(request.param, "initiator", size=1 << 20, env=base_env()) as i:
        i.fill(i.buffer, 64, "golden")
        yield i


def streams(ft: FakeTarget, requests: int) -> bytes:
    deadline = time.monotonic() + 5
    while sum(len(d.requests) for d in ft.data_conns) < requests and time.monotonic() < deadline:
        time.sleep(0.02)
    return b"".join(bytes(d.stream) for d in ft.data_conns)


def rpc_frames(ft: FakeTarget, msg_type: int, count: int = 1) -> list[bytes]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        got = [r.raw for r in ft.rpc_records if r.msg_type == msg_type]
        if len(got) >= count:
            return got
        time.sleep(0.02)
    return [r.raw for r in ft.rpc_records if r.msg_type == msg_type]


def test_initiator_write_read_bytes(initiator: Peer) -> None:
    i = initiator
    with FakeTarget() as ft:
        assert i.call("transfer_sync_write", ft.name, i.buffer, ft.addr, 64) == 0
        assert streams(ft, 1) == golden("client/v2/write.request.bin")
        meta = rpc_frames(ft, METADATA)
        assert len(meta) == 1, "openSegment must send exactly one Metadata request"
        mine = json.loads(meta[0][9:])
        gold = json.loads(golden("client/v2/metadata.request.bin")[9:])
        assert mooncake_keys(mine) == list(gold), (
            f"own descriptor keys differ from Mooncake's: missing {sorted(set(gold) - set(mine))}, "
            f"extra {sorted(set(mooncake_keys(mine)) - set(gold))}, order {list(mine)}")
        assert mine["name"] == i.name and mine["protocol"] == "tcp" and mine["tcp_proto_version"] == 2
    with FakeTarget() as ft:
        assert i.call("transfer_sync_read", ft.name, i.buffer + 64, ft.addr, 64) == 0
        assert streams(ft, 1) == golden("client/v2/read.request.bin")


def test_initiator_notify_and_probe_bytes(initiator: Peer) -> None:
    i = initiator
    with FakeTarget() as ft:
        rc = i.call("transfer_sync", ft.name, i.buffer, ft.addr, 64, {"opcode": "Write"},
                    {"notify": ["job1", "hello"]})
        assert rc == 0
        assert streams(ft, 1) == golden("client/v2/notify_write.request.bin")
        assert rpc_frames(ft, NOTIFY) == [golden("client/v2/notify.request.bin")]
    with FakeTarget() as ft:
        assert i.call("send_probe", ft.name) == 0
        assert rpc_frames(ft, PROBE) == [golden("client/v2/probe.request.bin")]


def test_initiator_v1_bytes(initiator: Peer) -> None:
    i = initiator
    with FakeTarget(descriptor_extra={"tcp_proto_version": None}) as ft:
        assert i.call("transfer_sync_write", ft.name, i.buffer, ft.addr, 64) == 0
        assert i.call("transfer_sync_read", ft.name, i.buffer + 128, ft.addr + 64, 64) == 0
        assert streams(ft, 2) == golden("client/v1/write_read.requests.bin")


def test_initiator_rejected_and_bad_status(initiator: Peer) -> None:
    i = initiator
    with FakeTarget() as ft:
        assert i.call("transfer_sync_write", ft.name, i.buffer, ft.addr + ft.size - 8, 16) == -1
        assert i.call("transfer_sync_write", ft.name, i.buffer, ft.addr, 16) == 0, "no recovery after REJECTED"
    with FakeTarget(ack="garbage") as ft:
        assert i.call("transfer_sync_write", ft.name, i.buffer, ft.addr, 16) == -1


def test_initiator_uses_tcp_data_host(initiator: Peer) -> None:
    i = initiator
    with FakeTarget(descriptor_extra={"tcp_data_host": "127.0.0.2"}) as ft:
        assert i.call("transfer_sync_write", ft.name, i.buffer, ft.addr, 16) == 0
        streams(ft, 1)
        assert {d.local[0] for d in ft.data_conns} == {"127.0.0.2"}

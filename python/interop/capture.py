#!/usr/bin/env python3
"""Capture golden wire bytes from the real Mooncake Transfer Engine.

    python3 python/interop/capture.py [--mooncake-python PY] [--out DIR]

Mooncake runs in subprocesses (peer.py under the Mooncake venv's python, see
scripts/install-mooncake.sh); this process never imports it. Two directions:

server/  Mooncake is the target; this harness is a raw-socket client of its
         handshake (RPC) port and TCP data port.
client/  Mooncake is the initiator; this harness is a fake target
         (recorder.FakeTarget) that records every byte Mooncake sends.
http/    Mooncake with an HTTP metadata server (recorder.HttpRecorder) that
         records each request.
etcd/    Mooncake with etcd (only when an `etcd` binary is on PATH).

Output goes to DIR (default testdata/mooncake/<version>/): one .bin file per
captured message, exactly as on the wire, and manifest.json with what each
file is, the values that vary between runs, and behaviour that has no bytes
(connection closed, return codes, connection counts). The README.md in DIR is
written by hand from these.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from typing import Any

import driver
from driver import Peer, base_env
from pattern import pattern
from recorder import FakeTarget, HttpRecorder
from wire import (
    CONNECTION,
    METADATA,
    NOTIFY,
    PROBE,
    STATUS_OK,
    STATUS_REJECTED,
    connect,
    data_header,
    fastwriter,
    frame,
    recv_exact,
    recv_until_eof,
)

EMPTY_HANDSHAKE = {"local_nic_path": "", "peer_nic_path": "", "qp_num": [], "reply_msg": ""}
SEED = "golden"  # pattern seed for every data payload, so payload bytes are reproducible


class Capture:
    def __init__(self, out: str, python: str) -> None:
        self.out = out
        self.python = python
        self.files: dict[str, str] = {}
        self.obs: dict[str, Any] = {}

    def save(self, rel: str, data: bytes, what: str) -> None:
        path = os.path.join(self.out, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        self.files[rel] = what

    def note(self, key: str, value: Any) -> None:
        self.obs[key] = value
        print(f"  {key}: {json.dumps(value)[:160]}", flush=True)

    def peer(self, role: str, size: int, env: dict[str, str] | None = None, **kw: Any) -> Peer:
        return Peer("mooncake", role, size=size, env=base_env(env), python=self.python, **kw)


# ---------------------------------------------------------------- server side

def rpc_exchange(port: int, request: bytes, wait: float = 3.0) -> tuple[bytes, bool]:
    """Send one request frame; return every byte received until EOF and whether EOF came."""
    with connect(port) as s:
        s.sendall(request)
        return recv_until_eof(s, wait)


def data_exchange(port: int, request: bytes, expect: int, closes: bool) -> tuple[bytes, bool]:
    """Send request bytes to a data port; read `expect` bytes, then check for EOF.

    When closes is False, waits 0.3 s to show that nothing more arrives and the
    connection stays open (Mooncake's server is persistent).
    """
    with connect(port) as s:
        s.sendall(request)
        if closes:
            return recv_until_eof(s, 5.0)
        got = recv_exact(s, expect)
        more, eof = recv_until_eof(s, 0.3)
        return got + more, eof


def capture_server(c: Capture) -> None:
    print("server: Mooncake target, raw client", flush=True)
    # An engine with nothing registered, then the same engine after allocate_managed_buffer.
    with c.peer("target", 0) as tg:
        port = tg.hello["rpc_port"]
        req = frame(METADATA, b"{}\n")
        reply, eof = rpc_exchange(port, req)
        c.save("server/metadata.request.bin", req, "Metadata (type 1) request we sent: payload `{}\\n`")
        c.save("server/metadata_no_buffers.reply.bin", reply,
               "Metadata reply of a P2P engine before any registration (buffers: [])")
        c.note("server.metadata.closes_after_reply", eof)
        addr = tg.call("allocate_managed_buffer", 4096)
        reply, _ = rpc_exchange(port, req)
        c.save("server/metadata_managed.reply.bin", reply,
               "Metadata reply after allocate_managed_buffer(4096): one 2 GiB pool buffer")
        desc = json.loads(reply[9:])
        c.note("server.managed.allocated_addr_minus_pool_base", addr - desc["buffers"][0]["addr"])

    with c.peer("target", 1 << 20) as tg:
        port = tg.hello["rpc_port"]
        a, n = tg.buffer, tg.size
        reply, _ = rpc_exchange(port, frame(METADATA, b"{}\n"))
        c.save("server/metadata.reply.bin", reply,
               "Metadata reply after register_memory(buf, 1 MiB) of an mmap region")
        desc = json.loads(reply[9:])
        c.note("server.descriptor", desc)
        c.note("server.descriptor.keys", sorted(desc))
        c.note("server.registered", {"addr": a, "length": n})

        exchanges = [
            ("connection", frame(CONNECTION, fastwriter(EMPTY_HANDSHAKE)),
             "Connection (type 0) with an empty HandShakeDesc"),
            ("notify", frame(NOTIFY, fastwriter({"name": "job1", "notify_msg": "hello"})),
             "Notify (type 2) {name: job1, notify_msg: hello}"),
            ("probe", frame(PROBE, b"{}\n"), "Probe (type 3) `{}\\n`"),
            ("legacy", frame(None, fastwriter(EMPTY_HANDSHAKE)),
             "legacy untyped frame (no type byte) carrying an empty HandShakeDesc"),
        ]
        for name, req, what in exchanges:
            reply, eof = rpc_exchange(port, req)
            c.save(f"server/{name}.request.bin", req, what + " (request we sent)")
            c.save(f"server/{name}.reply.bin", reply, f"Mooncake's reply to {name}")
            c.note(f"server.{name}.closes_after_reply", eof)
        c.note("server.notify.get_notifies", tg.call("get_notifies"))

        dropped = {
            "type4": frame(4, b"{}\n"),
            "zero_length": struct.pack("<Q", 0),
            "over_1MiB": struct.pack("<Q", (1 << 20) + 1) + b"\x01{}",
            "bad_json": frame(METADATA, b"{"),
            "empty_payload": frame(METADATA, b""),
            "type_only": struct.pack("<Q", 1) + b"\x03",
        }
        for name, req in dropped.items():
            reply, eof = rpc_exchange(port, req)
            c.note(f"server.rpc.{name}", {"request": req.hex(), "reply": reply.hex(), "closed": eof})
        t0 = time.monotonic()
        with connect(port) as s:
            _, eof = recv_until_eof(s, 15)
        c.note("server.rpc.idle_connection_closed_after_s", round(time.monotonic() - t0, 1) if eof else None)

        dp = desc["tcp_data_port"]
        payload = pattern(SEED, 64)
        tg.fill(a, 64, SEED)
        cases = [
            # name, request, expected reply length, closes, description
            ("data_v2_read", data_header(64, a, 0x80), 8 + 64, False,
             "v2 READ 64 B at the buffer start: OK frame then the 64 pattern bytes"),
            ("data_v2_write", data_header(64, a + 64, 0x81) + payload, 8, False,
             "v2 WRITE 64 B at buffer+64: OK frame after the body is applied"),
            ("data_v2_pipelined", data_header(64, a + 128, 0x81) + payload + data_header(64, a + 128, 0x80),
             8 + 8 + 64, False, "v2 WRITE then READ on one connection: OK, OK+data"),
            ("data_v1_read", data_header(64, a, 0x00), 64, False, "v1 READ 64 B: raw data, no frame"),
            ("data_v1_write_then_read", data_header(64, a + 192, 0x01) + payload + data_header(64, a + 192, 0x00),
             64, False, "v1 WRITE (no ack) then v1 READ of the same bytes on one connection"),
            ("data_v2_read_rejected", data_header(64, a + n, 0x80), 8, True,
             "v2 READ just past the registered region: REJECTED frame, then close"),
            ("data_v2_write_rejected", data_header(64, a + n - 32, 0x81), 8, True,
             "v2 WRITE straddling the region end (header only): REJECTED, then close, body not awaited"),
            ("data_v2_size0_rejected", data_header(0, a, 0x80), 8, True,
             "v2 READ of size 0: REJECTED, then close"),
            ("data_v1_read_rejected", data_header(64, a + n, 0x00), 0, True,
             "v1 READ past the region: closed with no byte"),
            ("data_v1_write_rejected", data_header(64, a + n, 0x01) + payload, 0, True,
             "v1 WRITE past the region: closed with no byte"),
            ("data_v2_opcode_0x82", data_header(8, a, 0x82), 8 + 8, False,
             "v2 opcode 0x82 (unknown op with the v2 bit): served as READ"),
            ("data_v1_opcode_0x03", data_header(8, a, 0x03), 8, False,
             "opcode 0x03: served as v1 READ"),
            ("data_v2_padding_ff", data_header(8, a, 0x80, b"\xff" * 7), 8 + 8, False,
             "v2 READ whose 7 padding bytes are 0xff: padding ignored"),
        ]
        for name, req, expect, closes, what in cases:
            reply, eof = data_exchange(dp, req, expect, closes)
            c.save(f"server/{name}.request.bin", req, what + " (request we sent)")
            c.save(f"server/{name}.reply.bin", reply, f"Mooncake's reply to {name}")
            c.note(f"server.{name}", {"reply_len": len(reply), "closed": eof,
                                      "status": reply[:8].hex() if reply[:8] in (STATUS_OK, STATUS_REJECTED)
                                      else None})
        c.note("server.write_applied", tg.peek(a + 64, 64) == payload and tg.peek(a + 192, 64) == payload)
        c.note("server.rejected_write_left_memory", tg.peek(a + n - 32, 32).hex() == "00" * 32)


# ---------------------------------------------------------------- client side

def conns_summary(ft: FakeTarget) -> list[dict[str, Any]]:
    return [{"local": list(d.local), "eof": d.eof,
             "requests": [{k: q[k] for k in ("size", "opcode", "padding")} | {"offset": q["addr"] - ft.addr}
                          for q in d.requests]}
            for d in ft.data_conns]


def save_rpc(c: Capture, rel: str, ft: FakeTarget, msg_type: int, what: str) -> None:
    recs = [r for r in ft.rpc_records if r.msg_type == msg_type]
    if not recs:
        c.note(f"{rel}.missing", True)
        return
    c.save(rel + ".request.bin", recs[0].raw, what)
    c.save(rel + ".reply.bin", recs[0].reply, "the fake target's reply (ours, for completeness)")


def save_data(c: Capture, rel: str, ft: FakeTarget, what: str) -> None:
    streams = [bytes(d.stream) for d in ft.data_conns if d.stream]
    c.save(rel, b"".join(streams), what)


def settle(ft: FakeTarget, requests: int, rpcs: int = 0, timeout: float = 5.0) -> None:
    """Wait until the fake target has seen `requests` data headers and `rpcs` frames."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with ft.lock:
            n = sum(len(d.requests) for d in ft.data_conns)
            r = len(ft.rpc_records)
        if n >= requests and r >= rpcs:
            return
        time.sleep(0.02)


def capture_client(c: Capture) -> None:
    print("client: Mooncake initiator, recording fake target", flush=True)
    with c.peer("initiator", 1 << 20) as it:
        b = it.buffer
        it.fill(b, 64, SEED)
        c.note("client.initiator_buffer", b)

        # v2 target, transfers one by one so each capture is one message.
        with FakeTarget() as ft:
            c.save("client/v2/descriptor_served.bin", fastwriter(ft.descriptor),
                   "the descriptor the fake target served (tcp_proto_version 2, no tcp_data_host)")
            rc = it.call("transfer_sync_write", ft.name, b, ft.addr, 64)
            settle(ft, 1, 1)
            c.note("client.v2.write.rc", rc)
            save_rpc(c, "client/v2/metadata", ft, METADATA,
                     "Metadata (type 1) request sent by openSegment: the initiator's own descriptor")
            save_data(c, "client/v2/write.request.bin", ft, "v2 WRITE 64 B: 24-byte header + body")
            c.note("client.v2.write.applied", bytes(ft.memory[:64]) == pattern(SEED, 64))
        with FakeTarget() as ft:
            ft.memory[:64] = pattern(SEED + "-read", 64)
            rc = it.call("transfer_sync_read", ft.name, b + 64, ft.addr, 64)
            settle(ft, 1, 1)
            c.note("client.v2.read.rc", rc)
            c.note("client.v2.read.data_ok", it.peek(b + 64, 64) == pattern(SEED + "-read", 64))
            save_data(c, "client/v2/read.request.bin", ft, "v2 READ 64 B: 24-byte header")
        with FakeTarget() as ft:
            rc = it.call("transfer_sync", ft.name, b, ft.addr, 64, {"opcode": "Write"}, {"notify": ["job1", "hello"]})
            settle(ft, 1, 2)
            c.note("client.v2.notify.rc", rc)
            c.note("client.v2.notify.rpc_order", [r.msg_type for r in ft.rpc_records])
            save_rpc(c, "client/v2/notify", ft, NOTIFY,
                     "Notify (type 2) sent after transfer_sync(..., Write, TransferNotify('job1','hello'))")
            save_data(c, "client/v2/notify_write.request.bin", ft, "the v2 WRITE that preceded the notify")
        with FakeTarget() as ft:
            rc = it.call("send_probe", ft.name)
            settle(ft, 0, 1)
            c.note("client.v2.probe.rc", rc)
            c.note("client.v2.probe.rpc_order", [r.msg_type for r in ft.rpc_records])
            save_rpc(c, "client/v2/probe", ft, PROBE, "Probe (type 3) sent by send_probe")
        with FakeTarget() as ft:
            rc = it.call("batch_transfer_sync_write", ft.name, [b, b + 16], [ft.addr + 256, ft.addr + 512], [16, 32])
            settle(ft, 2, 1)
            c.note("client.v2.batch_write.rc", rc)
            c.note("client.v2.batch_write.conns", conns_summary(ft))
            c.save("client/v2/batch_write.requests.bin",
                   b"".join(bytes(d.stream) for d in ft.data_conns),
                   "batch_transfer_sync_write of 16 B and 32 B: the bytes of every data connection, "
                   "concatenated in accept order (request order across lanes is not fixed)")
        with FakeTarget() as ft:
            results = {
                "zero_length_write": it.call("transfer_sync_write", ft.name, b, ft.addr, 0),
                "rejected_write": it.call("transfer_sync_write", ft.name, b, ft.addr + ft.size - 8, 16),
                "write_after_rejection": it.call("transfer_sync_write", ft.name, b, ft.addr, 16),
            }
            settle(ft, 2, 1)
            c.note("client.v2.edge.rc", results)
            c.note("client.v2.edge.conns", conns_summary(ft))
        with FakeTarget(ack="garbage") as ft:
            c.note("client.v2.status_without_magic.rc", it.call("transfer_sync_write", ft.name, b, ft.addr, 16))
        with FakeTarget(notify_reply="") as ft:
            rc = it.call("transfer_sync", ft.name, b, ft.addr, 16, {"opcode": "Write"}, {"notify": ["a", "b"]})
            settle(ft, 1, 2)
            c.note("client.v2.notify_reply_empty.rc", rc)

        # Connection reuse: 3 batches of 8 x 256 KiB in flight at once.
        with FakeTarget(size=8 << 20) as ft:
            ids = [it.call("batch_transfer_async_write", ft.name, [b] * 8,
                           [ft.addr + (k * 8 + i) * (256 << 10) for i in range(8)], [256 << 10] * 8)
                   for k in range(3)]
            c.note("client.lanes.status", it.call("get_batch_transfer_status", ids))
            settle(ft, 24, 1)
            c.note("client.lanes.default.connections", len(ft.data_conns))
            c.note("client.lanes.default.requests_per_connection", [len(d.requests) for d in ft.data_conns])

        # Where the initiator connects: tcp_data_host wins over the host in the name.
        with FakeTarget(descriptor_extra={"tcp_data_host": "127.0.0.2"}) as ft:
            rc = it.call("transfer_sync_write", ft.name, b, ft.addr, 16)
            settle(ft, 1, 1)
            c.note("client.tcp_data_host_127.0.0.2", {"rc": rc, "connected_to": [d.local[0] for d in ft.data_conns]})

        # v1 target (no tcp_proto_version).
        with FakeTarget(descriptor_extra={"tcp_proto_version": None}) as ft:
            c.save("client/v1/descriptor_served.bin", fastwriter(ft.descriptor),
                   "the descriptor the fake target served (no tcp_proto_version)")
            w = it.call("transfer_sync_write", ft.name, b, ft.addr, 64)
            ft.memory[64:128] = pattern(SEED + "-read", 64)
            r = it.call("transfer_sync_read", ft.name, b + 128, ft.addr + 64, 64)
            settle(ft, 2, 1)
            c.note("client.v1.rc", {"write": w, "read": r,
                                    "read_ok": it.peek(b + 128, 64) == pattern(SEED + "-read", 64)})
            c.note("client.v1.conns", conns_summary(ft))
            c.save("client/v1/write_read.requests.bin", b"".join(bytes(d.stream) for d in ft.data_conns),
                   "v1 WRITE 64 B (header+body) then v1 READ 64 B at offset 64 (header)")

    # MC_TCP_PROTO=1 against a v2 target; and the pool switched off.
    for label, env in (("proto1", {"MC_TCP_PROTO": "1"}), ("pool_off", {"MC_TCP_ENABLE_CONNECTION_POOL": "0"})):
        with c.peer("initiator", 1 << 20, env=env) as it, FakeTarget() as ft:
            b = it.buffer
            it.fill(b, 64, SEED)
            w = it.call("transfer_sync_write", ft.name, b, ft.addr, 64)
            r = it.call("transfer_sync_read", ft.name, b, ft.addr, 64)
            w2 = it.call("transfer_sync_write", ft.name, b, ft.addr + 64, 64)
            settle(ft, 3, 1)
            c.note(f"client.{label}.rc", [w, r, w2])
            c.note(f"client.{label}.conns", conns_summary(ft))
            if label == "proto1":
                c.save("client/proto1/write_read_write.requests.bin",
                       b"".join(bytes(d.stream) for d in ft.data_conns),
                       "MC_TCP_PROTO=1, v2 target: WRITE 64, READ 64, WRITE 64 at +64 (v1 opcodes)")


# ---------------------------------------------------------------- metadata stores

def capture_http(c: Capture) -> None:
    print("http: Mooncake with a recording HTTP metadata server", flush=True)
    env = {"MC_TCP_BIND_ADDRESS": "127.0.0.1"}
    with HttpRecorder() as hr:
        with c.peer("target", 1 << 20, env=env, metadata=hr.url, hostname="golden-target") as tg:
            with c.peer("initiator", 1 << 20, env=env, metadata=hr.url, hostname="golden-initiator") as it:
                it.fill(it.buffer, 64, SEED)
                c.note("http.write.rc", it.call("transfer_sync_write", "golden-target", it.buffer, tg.buffer, 64))
                c.note("http.write.applied", tg.peek(tg.buffer, 64) == pattern(SEED, 64))
                try:  # a second engine under the same name must fail (400 on rpc_meta)
                    with c.peer("target", 0, env=env, metadata=hr.url, hostname="golden-target"):
                        c.note("http.duplicate_name_init", "succeeded")
                except driver.PeerError as e:
                    c.note("http.duplicate_name_init", str(e).splitlines()[0])
        c.note("http.store_after_exit", sorted(hr.store))
        seq = []
        for i, r in enumerate(hr.requests):
            rel = None
            if r["body"]:
                slug = r["key"].replace("/", "_").replace(":", "_")
                rel = f"http/{i:02d}_{r['method']}_{slug}.body.bin"
                c.save(rel, r["body"], f"{r['method']} body for key {r['key']!r}")
            seq.append({"method": r["method"], "path": r["path"], "key": r["key"], "status": r["status"],
                        "content_type": r["headers"].get("content-type"), "body_file": rel,
                        "headers": sorted(r["headers"])})
        c.note("http.requests", seq)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def capture_etcd(c: Capture) -> None:
    etcd = shutil.which("etcd")
    etcdctl = shutil.which("etcdctl")
    if not etcd or not etcdctl:
        c.note("etcd.skipped", "no etcd/etcdctl on PATH")
        return
    print("etcd: Mooncake with a local etcd", flush=True)
    cport, pport = free_port(), free_port()
    endpoint = f"127.0.0.1:{cport}"
    with tempfile.TemporaryDirectory() as d:
        proc = subprocess.Popen(
            [etcd, "--data-dir", d, "--name", "golden",
             "--listen-client-urls", f"http://{endpoint}", "--advertise-client-urls", f"http://{endpoint}",
             "--listen-peer-urls", f"http://127.0.0.1:{pport}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{pport}",
             "--initial-cluster", f"golden=http://127.0.0.1:{pport}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            ctl = [etcdctl, "--endpoints", endpoint]
            deadline = time.monotonic() + 20
            while subprocess.run([*ctl, "endpoint", "health"], capture_output=True, check=False).returncode != 0:
                if time.monotonic() > deadline:
                    raise RuntimeError("etcd did not become healthy in 20 s")
                time.sleep(0.2)
            env = {"MC_TCP_BIND_ADDRESS": "127.0.0.1"}
            with c.peer("target", 1 << 20, env=env, metadata=endpoint, hostname="golden-target") as tg:
                with c.peer("initiator", 1 << 20, env=env, metadata=f"etcd://{endpoint}",
                            hostname="golden-initiator") as it:
                    it.fill(it.buffer, 64, SEED)
                    c.note("etcd.write.rc", it.call("transfer_sync_write", "golden-target", it.buffer,
                                                    tg.buffer, 64))
                    c.note("etcd.write.applied", tg.peek(tg.buffer, 64) == pattern(SEED, 64))
                    kvs = json.loads(subprocess.run(ctl + ["get", "--prefix", "mooncake/", "-w", "json"],
                                                    capture_output=True, check=True).stdout).get("kvs", [])
                    keys = []
                    for kv in kvs:
                        key = base64.b64decode(kv["key"]).decode()
                        keys.append({"key": key, "lease": kv.get("lease", 0)})
                        slug = key.replace("/", "_").replace(":", "_")
                        c.save(f"etcd/{slug}.value.bin", base64.b64decode(kv["value"]),
                               f"etcd value of key {key!r} while both engines run")
                    c.note("etcd.keys", keys)
            left = json.loads(subprocess.run(ctl + ["get", "--prefix", "mooncake/", "-w", "json", "--keys-only"],
                                             capture_output=True, check=True).stdout).get("kvs", [])
            c.note("etcd.keys_after_exit", sorted(base64.b64decode(kv["key"]).decode() for kv in left))
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mooncake-python", default=driver.mooncake_python(),
                   help="python of the Mooncake venv (default $MOONCAKE_VENV or .venv-mooncake)")
    p.add_argument("--out", help="output directory (default testdata/mooncake/<version>)")
    args = p.parse_args(argv)
    if not os.access(args.mooncake_python, os.X_OK):
        sys.exit(f"capture: no Mooncake python at {args.mooncake_python}; run scripts/install-mooncake.sh")
    version = subprocess.run(
        [args.mooncake_python, "-c",
         "from importlib.metadata import version; print(version('mooncake-transfer-engine-non-cuda'))"],
        capture_output=True, text=True, check=True).stdout.strip()
    out = args.out or os.path.join(driver.REPO, "testdata", "mooncake", version)
    for sub in ("server", "client", "http", "etcd"):
        shutil.rmtree(os.path.join(out, sub), ignore_errors=True)
    os.makedirs(out, exist_ok=True)
    c = Capture(out, args.mooncake_python)
    print(f"capturing Mooncake {version} into {out}", flush=True)
    capture_server(c)
    capture_client(c)
    capture_http(c)
    capture_etcd(c)
    manifest = {
        "mooncake_wheel": "mooncake-transfer-engine-non-cuda",
        "mooncake_version": version,
        "captured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python3 python/interop/capture.py",
        "files": dict(sorted(c.files.items())),
        "observations": c.obs,
    }
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=False, default=str)
        f.write("\n")
    print(f"wrote {len(c.files)} files and manifest.json", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

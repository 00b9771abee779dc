"""Recording fakes that a real Mooncake initiator talks to (capture.py).

FakeTarget pretends to be a Mooncake TCP segment: an RPC (handshake) listener
that answers Metadata/Notify/Probe/Connection frames as protocol.md §4.4 says,
and a data listener that serves v1 or v2 requests (§5) against an in-memory
buffer at a made-up address. Every byte received, and where it arrived, is
recorded so capture.py can store it.

HttpRecorder is an in-memory metadata server with the semantics of Mooncake's
``mooncake_http_metadata_server`` (§3.3) that records each request verbatim.

All sockets have timeouts; all threads are daemons joined by close().
"""

from __future__ import annotations

import http.server
import json
import socket
import struct
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from wire import HEADER_SIZE, METADATA, NOTIFY, PROBE, STATUS_OK, STATUS_REJECTED, fastwriter, parse_header, recv_exact

__all__ = ["FakeTarget", "RpcRecord", "DataConn", "HttpRecorder"]

FAKE_ADDR = 0x7F1200000000  # "remote" address of the fake buffer; never dereferenced


@dataclass
class RpcRecord:
    raw: bytes                  # the whole request frame as received
    msg_type: int | None        # None: legacy untyped frame
    local: tuple[str, int]      # address the client connected to
    reply: bytes = b""          # the whole reply frame we sent
    client_closed_after: float | None = None  # seconds from our reply to the client's EOF


@dataclass
class DataConn:
    local: tuple[str, int]
    stream: bytearray = field(default_factory=bytearray)  # every byte received, in order
    requests: list[dict[str, Any]] = field(default_factory=list)
    eof: bool = False


class FakeTarget:
    """A recording stand-in for a Mooncake TCP target on 127.0.0.1.

    descriptor_extra is merged into the descriptor (e.g. tcp_proto_version=2,
    tcp_data_host); keys mapped to None are removed. ack: "ok" answers v2
    requests with OK frames, "rejected" with REJECTED frames, "garbage" with
    eight bytes that lack the magic.
    """

    def __init__(self, size: int = 1 << 20, descriptor_extra: dict[str, Any] | None = None,
                 ack: str = "ok", notify_reply: str = "success") -> None:
        self.size = size
        self.addr = FAKE_ADDR
        self.memory = bytearray(size)
        self.ack = ack
        self.notify_reply = notify_reply
        self.rpc_records: list[RpcRecord] = []
        self.data_conns: list[DataConn] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.conns: list[socket.socket] = []
        self.rpc_sock = self._listen()
        self.data_sock = self._listen()
        self.rpc_port = self.rpc_sock.getsockname()[1]
        self.data_port = self.data_sock.getsockname()[1]
        self.name = f"127.0.0.1:{self.rpc_port}"
        desc: dict[str, Any] = {
            "buffers": [{"addr": self.addr, "length": size, "name": self.name}],
            "name": self.name, "protocol": "tcp", "tcp_data_port": self.data_port,
            "tcp_proto_version": 2, "timestamp": "2026-01-01 00:00:00.000000",
        }
        for k, v in (descriptor_extra or {}).items():
            if v is None:
                desc.pop(k, None)
            else:
                desc[k] = v
        self.descriptor = desc
        self.threads = [threading.Thread(target=self._accept, args=(self.rpc_sock, self._serve_rpc),
                                         daemon=True),
                        threading.Thread(target=self._accept, args=(self.data_sock, self._serve_data),
                                         daemon=True)]
        for t in self.threads:
            t.start()

    @staticmethod
    def _listen() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", 0))  # any 127.x address reaches it: shows which host a client chose
        s.listen(16)
        s.settimeout(0.2)
        return s

    def _accept(self, lsock: socket.socket, serve: Any) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            t = threading.Thread(target=serve, args=(conn,), daemon=True)
            with self.lock:
                self.conns.append(conn)
            self.threads.append(t)
            t.start()

    def _rpc_reply(self, msg_type: int | None, payload: bytes) -> bytes:
        if msg_type == METADATA:
            body = fastwriter(self.descriptor)
        elif msg_type == NOTIFY:
            body = fastwriter({"name": "", "notify_msg": self.notify_reply})
        elif msg_type == PROBE:
            body = fastwriter({"status": "success"})
        else:  # Connection or legacy: the empty HandShakeDesc a TCP-only engine sends
            body = fastwriter({"local_gid": "", "local_lid": 0, "local_nic_path": "", "payload": "",
                               "peer_nic_path": "", "qp_num": [], "reply_msg": ""})
        framed = body if msg_type is None else bytes([msg_type]) + body
        return struct.pack("<Q", len(framed)) + framed

    def _serve_rpc(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                prefix = recv_exact(conn, 8)
                (n,) = struct.unpack("<Q", prefix)
                if n == 0 or n > (1 << 20):
                    return
                body = recv_exact(conn, n)
            except (EOFError, OSError):
                return
            msg_type: int | None = body[0] if body[0] <= PROBE else None
            rec = RpcRecord(raw=prefix + body, msg_type=msg_type, local=conn.getsockname())
            rec.reply = self._rpc_reply(msg_type, body[1:] if msg_type is not None else body)
            with self.lock:
                self.rpc_records.append(rec)
            try:
                conn.sendall(rec.reply)
                sent = time.monotonic()
                conn.shutdown(socket.SHUT_WR)
                while conn.recv(4096):
                    pass
                rec.client_closed_after = round(time.monotonic() - sent, 3)
            except OSError:
                pass

    def _serve_data(self, conn: socket.socket) -> None:
        rec = DataConn(local=conn.getsockname())
        with self.lock:
            self.data_conns.append(rec)
        with conn:
            conn.settimeout(10)
            try:
                self._data_loop(conn, rec)
            except EOFError as e:
                rec.stream += e.args[0] if e.args else b""
                rec.eof = True
            except OSError:
                pass

    def _data_loop(self, conn: socket.socket, rec: DataConn) -> None:
        while not self.stopping.is_set():
            raw = recv_exact(conn, HEADER_SIZE)
            rec.stream += raw
            hdr = parse_header(raw)
            v2 = bool(hdr["opcode"] & 0x80)
            write = (hdr["opcode"] & 0x7F) == 1
            off = hdr["addr"] - self.addr
            ok = hdr["size"] > 0 and off >= 0 and off + hdr["size"] <= self.size
            hdr.update(v2=v2, write=write, accepted=ok and self.ack == "ok")
            rec.requests.append(hdr)
            if v2 and not hdr["accepted"]:
                conn.sendall(STATUS_REJECTED if self.ack != "garbage" else b"\xde\xad\xbe\xef" * 2)
                return
            if not ok:
                return  # v1: a HEAD target just closes
            if write:
                body = recv_exact(conn, hdr["size"])
                rec.stream += body
                self.memory[off:off + len(body)] = body
                if v2:
                    conn.sendall(STATUS_OK)
            else:
                conn.sendall((STATUS_OK if v2 else b"") + bytes(self.memory[off:off + hdr["size"]]))

    def close(self) -> None:
        self.stopping.set()
        self.rpc_sock.close()
        self.data_sock.close()
        with self.lock:
            for c in self.conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in recv
                except OSError:
                    pass
        for t in list(self.threads):
            t.join(timeout=12)

    def __enter__(self) -> FakeTarget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class HttpRecorder:
    """An HTTP metadata server (``/metadata?key=``) that records every request."""

    def __init__(self) -> None:
        self.store: dict[str, bytes] = {}
        self.requests: list[dict[str, Any]] = []
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                url = urllib.parse.urlsplit(self.path)
                key = urllib.parse.parse_qs(url.query).get("key", [""])[0]
                status, reply = recorder.apply(self.command, url.path, key, body)
                recorder.requests.append({
                    "method": self.command, "path": self.path, "key": key,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "body": body, "status": status})
                self.send_response(status)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            do_GET = do_PUT = do_DELETE = do_POST = _handle

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/metadata"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                                       daemon=True)
        self.thread.start()

    def apply(self, method: str, path: str, key: str, body: bytes) -> tuple[int, bytes]:
        if path != "/metadata":
            return 404, b"not found"
        if method == "GET":
            return (200, self.store[key]) if key in self.store else (404, b"metadata not found")
        if method == "PUT":
            if "rpc_meta" in key and key in self.store:
                return 400, b"Duplicate rpc_meta key not allowed"
            self.store[key] = body
            return 200, b"metadata updated"
        if method == "DELETE":
            return (200, b"metadata deleted") if self.store.pop(key, None) is not None \
                else (404, b"metadata not found")
        return 405, b"method not allowed"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def __enter__(self) -> HttpRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def describe(records: list[RpcRecord]) -> list[dict[str, Any]]:
    """JSON-friendly summary of RPC records (type, payload text, timing)."""
    out = []
    for r in records:
        payload = r.raw[9:] if r.msg_type is not None else r.raw[8:]
        try:
            parsed: Any = json.loads(payload)
        except ValueError:
            parsed = None
        out.append({"type": r.msg_type, "local": list(r.local), "payload": payload.decode(errors="replace"),
                    "json": parsed, "client_closed_after_s": r.client_closed_after})
    return out

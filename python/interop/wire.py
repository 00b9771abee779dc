"""Raw Mooncake wire helpers for the capture harness (protocol.md §4, §5).

Handshake frame: u64 length (host order, little-endian here; counts the type
byte and the payload), one type byte (absent in the legacy form), JSON payload.
Data request: 24-byte header {u64 LE size, u64 LE addr, u8 opcode, 7 padding
bytes}; v2 status frame: u64 LE whose high 32 bits are 0x4D435456 ("MCTV").
"""

from __future__ import annotations

import json
import socket
import struct
import time
from typing import Any

__all__ = [
    "CONNECTION", "METADATA", "NOTIFY", "PROBE",
    "STATUS_OK", "STATUS_REJECTED", "HEADER_SIZE",
    "frame", "fastwriter", "data_header", "parse_header",
    "recv_exact", "recv_frame", "recv_until_eof", "connect",
]

CONNECTION, METADATA, NOTIFY, PROBE = 0, 1, 2, 3
STATUS_MAGIC = 0x4D435456
STATUS_OK = struct.pack("<Q", STATUS_MAGIC << 32)
STATUS_REJECTED = struct.pack("<Q", (STATUS_MAGIC << 32) | 1)
HEADER_SIZE = 24


def fastwriter(obj: Any) -> bytes:
    """JSON as jsoncpp's FastWriter emits it for plain ASCII: compact, sorted keys, newline."""
    return (json.dumps(obj, separators=(",", ":"), sort_keys=True) + "\n").encode()


def frame(msg_type: int | None, payload: bytes) -> bytes:
    """A handshake frame; msg_type None gives the legacy untyped form."""
    body = payload if msg_type is None else bytes([msg_type]) + payload
    return struct.pack("<Q", len(body)) + body


def data_header(size: int, addr: int, opcode: int, padding: bytes = bytes(7)) -> bytes:
    if len(padding) != 7:
        raise ValueError("padding must be 7 bytes")
    return struct.pack("<QQB", size, addr, opcode) + padding


def parse_header(raw: bytes) -> dict[str, Any]:
    if len(raw) != HEADER_SIZE:
        raise ValueError(f"header is {len(raw)} bytes, want {HEADER_SIZE}")
    size, addr, opcode = struct.unpack_from("<QQB", raw)
    return {"size": size, "addr": addr, "opcode": opcode, "padding": raw[17:].hex()}


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """Read exactly n bytes; raises EOFError with what arrived if the peer closes."""
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise EOFError(bytes(buf))
        buf += chunk
    return bytes(buf)


def recv_frame(sock: socket.socket, max_len: int = 1 << 20) -> bytes:
    """Read one handshake frame and return it whole (prefix included)."""
    prefix = recv_exact(sock, 8)
    (n,) = struct.unpack("<Q", prefix)
    if n > max_len:
        raise ValueError(f"frame length {n} over {max_len}")
    return prefix + recv_exact(sock, n)


def recv_until_eof(sock: socket.socket, timeout: float) -> tuple[bytes, bool]:
    """Read until EOF or timeout; returns (bytes, saw_eof). A reset counts as EOF."""
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    buf = bytearray()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return bytes(buf), False
        sock.settimeout(left)
        try:
            chunk = sock.recv(1 << 16)
        except socket.timeout:
            return bytes(buf), False
        except ConnectionResetError:
            return bytes(buf), True
        if not chunk:
            return bytes(buf), True
        buf += chunk

"""The ``pymooncake`` command.

::

    pymooncake bench [--mode target|initiator|loopback] [flags]   # transfer_engine_bench
    pymooncake topology [--device_name NICS]                      # local topology JSON
    pymooncake metadata-server [--host H] [--port P] [--persist FILE]
    pymooncake version

The commands log at WARNING and above, so that engine INFO lines do not
break up their output; ``MC_LOG_LEVEL`` or ``--log-level`` (which wins)
sets another level. The library itself keeps Mooncake's default, INFO.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from . import _bench, _errors, _loader
from ._version import __version__

__all__ = ["main", "DEFAULT_LOG_LEVEL"]

#: The commands' log level unless MC_LOG_LEVEL or --log-level names another.
DEFAULT_LOG_LEVEL = "WARNING"

# MC_LOG_LEVEL's names (core/config ParseLogLevel) as Python logging levels.
_PY_LEVELS = {
    "trace": logging.DEBUG,
    "verbose": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.ERROR,
}


def _size(text: str) -> int:
    """Parse a byte count: a plain integer, or with a K/M/G suffix (binary)."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    mult = 1
    if t and t[-1] in units:
        mult, t = units[t[-1]], t[:-1]
    try:
        v = int(t) * mult
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a byte count: {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return v


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pymooncake", description="pymooncake transfer engine tools")
    sub = p.add_subparsers(dest="command", required=True)
    logs = argparse.ArgumentParser(add_help=False)
    logs.add_argument(
        "--log-level",
        type=str.lower,
        choices=["trace", "debug", "info", "warning", "error"],
        help=f"engine and pymooncake log level; overrides MC_LOG_LEVEL (default: MC_LOG_LEVEL, else {DEFAULT_LOG_LEVEL.lower()})",
    )

    d = _bench.Config()
    b = sub.add_parser(
        "bench",
        parents=[logs],
        help="Mooncake's transfer_engine_bench for this engine",
        description="Throughput and latency of batched transfers (Mooncake's transfer_engine_bench). "
        "loopback runs a target and an initiator in this process over TCP on 127.0.0.1.",
    )
    b.add_argument("--mode", choices=["target", "initiator", "loopback"], default=d.mode)
    b.add_argument("--metadata_server", default=d.metadata_server, help="P2PHANDSHAKE, etcd://h:p, http://h:p/metadata (default %(default)s)")
    b.add_argument("--local_server_name", default=d.local_server_name, help="this host's name or IP as peers reach it (default %(default)s)")
    b.add_argument("--segment_id", default=d.segment_id, help="initiator: the target's segment name (it prints it)")
    b.add_argument(
        "--protocol",
        default=d.protocol,
        help="tcp (default): measure TCP, same-host transports left out unless PYMOONCAKE_SAME_HOST is set; "
        "otherwise the transport is chosen as Mooncake chooses it",
    )
    b.add_argument("--device_name", default=d.device_name, help="NIC filter (ignored by TCP)")
    b.add_argument("--operation", choices=["read", "write"], default=d.operation)
    b.add_argument("--block_size", type=_size, default=d.block_size, help="bytes per request (default %(default)s)")
    b.add_argument("--batch_size", type=int, default=d.batch_size, help="requests per batch (default %(default)s)")
    b.add_argument("--threads", type=int, default=d.threads, help="submitting threads (default %(default)s)")
    b.add_argument("--duration", type=float, default=d.duration, help="seconds (default %(default)s)")
    b.add_argument("--buffer_size", type=_size, default=d.buffer_size, help="bytes registered on each side (default %(default)s)")

    t = sub.add_parser("topology", parents=[logs], help="print the local topology JSON (get_local_topology)")
    t.add_argument("--device_name", default="", help="comma-separated NIC filter")

    m = sub.add_parser(
        "metadata-server",
        parents=[logs],
        help="run the HTTP metadata server (Mooncake's mooncake_http_metadata_server)",
        description="Serve metadata over HTTP at http://HOST:PORT/metadata until SIGINT or SIGTERM.",
    )
    m.add_argument("--host", default="0.0.0.0", help="address to bind (default %(default)s)")
    m.add_argument("--port", type=int, default=8080, help="port to bind, 0 for any (default %(default)s)")
    m.add_argument(
        "--persist",
        default="",
        metavar="FILE",
        help="keep the store in FILE, a bbolt database (an older JSON FILE is migrated); each change is on disk before its reply",
    )

    sub.add_parser("version", help="print the version")
    return p


def _bench_cmd(args: argparse.Namespace) -> int:
    cfg = _bench.Config(**{k: v for k, v in vars(args).items() if k in _bench.Config.__dataclass_fields__})
    return _bench.run(cfg)


def _topology_cmd(args: argparse.Namespace) -> int:
    from .engine import TransferEngine

    topo = TransferEngine().get_local_topology(args.device_name)
    if not topo:
        return 1
    print(topo)
    return 0


def _metadata_server_cmd(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        print(f"pymooncake metadata-server: --port {args.port} is out of range", file=sys.stderr)
        return 2
    x = _loader.load()
    host = f"[{args.host}]" if ":" in args.host and not args.host.startswith("[") else args.host
    try:
        srv = x.bindings_NewMetadataServer(f"{host}:{args.port}", args.persist, json.dumps(dict(os.environ)))
    except RuntimeError as e:
        _, _, reason = _errors.parse(e)
        print(f"pymooncake metadata-server: {reason}", file=sys.stderr)
        return 1

    # The Go call that waits runs in a thread: the main thread must stay in
    # Python to receive SIGINT and SIGTERM, which call Stop.
    result: list[int] = []
    failure: list[str] = []

    def wait() -> None:
        try:
            result.append(x.bindings_MetadataServer_Wait(srv))
        except RuntimeError as e:
            failure.append(_errors.parse(e)[2])

    def stop(signum: int, frame: FrameType | None) -> None:
        x.bindings_MetadataServer_Stop(srv)

    # Handlers first, then the line that tells callers we are up: a signal
    # sent as soon as they read it must stop the server, not raise.
    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    print(f"metadata server listening on http://{x.bindings_MetadataServer_Addr(srv)}/metadata", flush=True)
    waiter = threading.Thread(target=wait, name="metadata-server")
    waiter.start()
    try:
        while waiter.is_alive():
            waiter.join(0.5)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if failure:
        print(f"pymooncake metadata-server: {failure[0]}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = _parser().parse_args(argv)
    level = getattr(args, "log_level", None) or os.environ.get("MC_LOG_LEVEL") or DEFAULT_LOG_LEVEL
    if not logging.getLogger().handlers:
        logging.basicConfig(level=_PY_LEVELS.get(level.strip().lower(), logging.WARNING), format="%(levelname)s %(name)s: %(message)s")
    # The engines read MC_LOG_LEVEL from os.environ when they start (a value
    # that is not a level fails them, naming the variable). Set for this
    # command only: main() may run inside a larger program.
    saved = os.environ.get("MC_LOG_LEVEL")
    os.environ["MC_LOG_LEVEL"] = level
    try:
        return _run(args)
    finally:
        if saved is None:
            os.environ.pop("MC_LOG_LEVEL", None)
        else:
            os.environ["MC_LOG_LEVEL"] = saved


def _run(args: argparse.Namespace) -> int:
    if args.command == "bench":
        return _bench_cmd(args)
    if args.command == "topology":
        return _topology_cmd(args)
    if args.command == "metadata-server":
        return _metadata_server_cmd(args)
    print(f"pymooncake {__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

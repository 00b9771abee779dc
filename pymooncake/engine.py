"""Mooncake's ``mooncake.engine`` API, implemented by pymooncake's Go engine.

Code written for Mooncake runs on pymooncake by changing one import::

    from pymooncake.engine import TransferEngine, TransferOpcode, TransferNotify

(or, unchanged, after ``pymooncake.compat.install()``; see
:mod:`pymooncake.compat`). Every method of Mooncake's ``TransferEngine``
exists with the same name, arguments, defaults and return codes.

Return codes
------------
Failures are reported as Mooncake reports them, by value, with the reason
logged through ``logging.getLogger("pymooncake")``: ``0`` success and ``-1``
failure for most methods; a negative ``ERR_*`` code for the memory
registration methods (``-1`` invalid argument, ``-3`` address not
registered, ``-7`` address overlapped, ...); a batch id of ``0`` for failed
asynchronous submissions. Where Mooncake crashes or misbehaves (an invalid
batch id, ``None`` arguments, an unknown segment in
``get_first_buffer_address``, the unsigned ``-1`` batch id) pymooncake
returns the documented failure value instead. Arguments of the wrong Python
type raise ``TypeError``, and integers outside their range (a negative
address or length, anything above 2**64-1) raise ``ValueError``, before
anything happens. Set ``PYMOONCAKE_STRICT=1`` (or call
:func:`pymooncake.set_strict`) to get exceptions (subclasses of
:class:`pymooncake.MooncakeError`) instead of failure codes.

Threads, processes and the GIL
------------------------------
One engine may be shared by several Python threads. The GIL is released
during every call into the engine, so other threads run while a transfer is
in flight. The engine lives in a Go runtime that does not survive
``fork()``: create engines in processes started with ``spawn`` or
``forkserver``, or fork before the first ``initialize``. In a fork child of
a process that had started the engine, ``initialize`` raises
:class:`pymooncake.EngineStateError` (a ``RuntimeError``) naming that fix,
strict mode or not, and every other call returns its failure value and logs
"used after fork: ..." (Mooncake allows engines in fork children).

Environment and timeouts
------------------------
Mooncake's variables (``MC_*``) are read from ``os.environ`` by each
``initialize``, strictly: a malformed value makes ``initialize`` return -1
and log which variable is wrong, where Mooncake would silently use 0 or a
default. Synchronous transfers fail after ``MC_TRANSFER_TIMEOUT`` seconds
(default 30, at least 5) plus 1 ns per byte moved, as in Mooncake.

Differences from Mooncake
-------------------------
- ``write_bytes_to_buffer`` and ``read_bytes_from_buffer`` only touch
  registered memory (managed buffers included); other addresses return the
  failure value instead of crashing the process.
- ``free_managed_buffer`` of an address that is not a live managed buffer of
  that size returns -1 (Mooncake corrupts its free lists).
- ``PASS_ALLOC`` (Mooncake 0.3.8) is accepted and has no effect: the managed
  buffer pool is always created on the first ``allocate_managed_buffer``, as
  in Mooncake 0.3.9 and later.
- Peer failures are recovered the way Mooncake's ``CheckSegmentStatus``
  means to: a failed submit, and also an asynchronous batch that ends
  failed, drops the target's cached handle when its connections failed (it
  is looked up again on the next call; no metadata key is ever deleted). A
  synchronous call that fails because the target restarted (connection
  refused or reset, or a new incarnation's descriptor) looks the target up
  again and retries once within its deadline, so once a peer has finished
  restarting no call fails. A stopped or unreachable peer makes calls fail
  after ``MC_TRANSFER_TIMEOUT`` (plus 1 ns per byte), never hang.
- The transport is chosen as Mooncake chooses it, not by ``protocol``:
  accl-barex with ``USE_BAREX=1``, RDMA when an HCA is present and
  ``MC_FORCE_TCP`` is unset, TCP otherwise; a peer is reached by the
  transport of the protocol its descriptor publishes. ``protocol`` selects
  nothing (as in Mooncake, where it selects the memory allocator at most).
- GPU memory is detected at registration (``cuda:<n>``) when the NVIDIA
  driver is present; TCP moves it through page-locked buffers. The
  ``*_on_cuda`` methods return a ticket for :meth:`TransferEngine.cuda_transfer_status`
  and report a failed transfer there instead of ending the process; without
  a driver they raise :class:`pymooncake.NotSupportedError`.
- Return codes are Mooncake's for the same cause (the interop suite's
  python/tests/interop/test_return_codes.py compares them), except where
  pymooncake checks more: the local memory of a transfer must be registered
  (-1; Mooncake's TCP transport reads any address); ``register_memory``
  refuses a location other than ``"*"``, ``"cpu:N"`` or ``"cuda:N"`` (-1;
  Mooncake's TCP transport accepts any); an asynchronous submit whose
  remote range lies outside the target's registered buffers fails at once
  (batch id 0; Mooncake returns an id whose status then fails); and a
  ``batch_unregister_memory`` that names an unregistered address (-3 in
  both) changes nothing, where Mooncake has already dropped the other
  regions from its transport and can neither use nor register them again.
- A second ``initialize`` replaces the engine as Mooncake's does (the first
  one stops: its port, registrations and peers' handles go). Managed buffers
  of the first engine are released too; Mooncake keeps their memory and
  hands it out again unregistered.
- Additions: :meth:`TransferEngine.close`, use as a context manager,
  :meth:`TransferEngine.get_segment_name` and
  :meth:`TransferEngine.get_metrics`.

Metrics
-------
Each engine counts what it moves (bytes, requests, failures by cause and
latencies, per transport and per peer): :meth:`TransferEngine.get_metrics`
returns the figures as a dict, and ``PYMOONCAKE_METRICS_PORT`` (off by
default; ``0`` for any free port, ``PYMOONCAKE_METRICS_HOST`` to bind one
address) serves them at ``/metrics`` in Prometheus's text format, under
names shaped like those of Mooncake's TENT engine
(``pymooncake_write_bytes_total{transport="tcp"}``); see the README. Peers
beyond ``PYMOONCAKE_METRICS_MAX_PEERS`` (default 64) take the label of a
peer whose segment was closed, or share the label ``"other"``. ``MC_TE_METRIC=1`` logs Mooncake's periodic summary line
("[Metrics] Transfer Engine Stats (over last 5s): Throughput: ... MB/s |
Latency Distribution ...") every ``MC_TE_METRIC_INTERVAL_SECONDS``
(default 5), as Mooncake does; a value Mooncake would ignore (say
``MC_TE_METRIC=maybe`` or an interval of 0) fails ``initialize`` instead,
naming the variable.
"""

from __future__ import annotations

import enum
import json
import operator
import os
import struct
import sys
import threading
import warnings
from array import array
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from types import ModuleType
from typing import Any, NoReturn

from . import _errors, _loader

__all__ = [
    "TransferEngine",
    "TransferOpcode",
    "TransferNotify",
    "InnerTransferEngine",
    "Read",
    "Write",
    "SUPPORT_CUDA",
    "SUPPORT_EFA",
    "SUPPORT_HIP",
    "SUPPORT_MNNVL",
    "SUPPORT_MUSA",
    "SUPPORT_INTRA_NVLINK",
]

#: This build moves GPU memory and runs the ``*_on_cuda`` methods where the
#: NVIDIA driver is present at run time (nothing CUDA is needed to install it).
SUPPORT_CUDA = True
#: This build has no EFA transport.
SUPPORT_EFA = False
#: This build has no HIP transport.
SUPPORT_HIP = False
#: This build has no multi-node NVLink transport.
SUPPORT_MNNVL = False
#: This build has no MUSA transport.
SUPPORT_MUSA = False
#: This build moves GPU memory between the processes of one host through CUDA
#: IPC (NVLink or PCIe peer copies), chosen per peer by itself wherever the
#: NVIDIA driver allows it (``PYMOONCAKE_CUDA_IPC=0`` turns it off); it needs no
#: protocol of its own.
SUPPORT_INTRA_NVLINK = True

_U64 = (1 << 64) - 1
_I64 = (1 << 63) - 1

# Values accepted where Mooncake takes a list of integers: sequences (list,
# tuple, array, numpy arrays...), never a mapping or a set, whose order does
# not pair addresses with lengths.
IntList = Sequence[int]

# get_notifies: the first buffer, the size it grows to while notifies keep
# filling it, and the layout bindings' Engine.Notifies writes.
_NOTIFY_BUF = 64 << 10
_NOTIFY_BUF_GROWN = 64 << 20
_NOTIFY_MOST = 1 << 20
_NOTIFY_HEAD = struct.Struct("<QQ")  # taken, left
_NOTIFY_REC = struct.Struct("<II")  # name length, msg length


class TransferOpcode(enum.IntEnum):
    """Direction of a transfer, numbered as Mooncake's."""

    Read = 0
    """Copy the peer's memory into local memory."""
    Write = 1
    """Copy local memory into the peer's memory."""


Read = TransferOpcode.Read
Write = TransferOpcode.Write


class TransferNotify:
    """A notification delivered to the target after a transfer completes.

    Parameters
    ----------
    name : str
        Free-form name; Mooncake's clients put the sender's id here.
    msg : str
        Free-form message.
    """

    __slots__ = ("msg", "name")

    def __init__(self, name: str = "", msg: str = "") -> None:
        self.name = name
        self.msg = msg

    def __repr__(self) -> str:
        return f"TransferNotify(name={self.name!r}, msg={self.msg!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TransferNotify):
            return NotImplemented
        return self.name == other.name and self.msg == other.msg

    __hash__ = None  # type: ignore[assignment]  # mutable, as Mooncake's


class InnerTransferEngine:
    """Opaque reference to an initialized engine (``get_engine()``).

    Mooncake returns its C++ engine here so that Mooncake Store can share it;
    pymooncake's is only meaningful to pymooncake. ``handle`` is the value
    ``get_engine_ptr()`` returns.
    """

    __slots__ = ("handle",)

    def __init__(self, handle: int) -> None:
        self.handle = handle

    def __repr__(self) -> str:
        return f"InnerTransferEngine(handle={self.handle})"


class _NoneArgument(Exception):
    """An argument is None where Mooncake would crash: a failure value."""


def _uint(op: str, name: str, value: Any, limit: int, none: bool = True) -> int:
    """Return ``value`` as an int in [0, limit], or raise. None is a failure
    value (_NoneArgument) where ``none`` is true, else a TypeError."""
    if type(value) is int and 0 <= value <= limit:
        return value
    if value is None and none:
        raise _NoneArgument(f"{name} is None")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{op}(): {name} must be an int, not {type(value).__name__}") from None
    if not 0 <= v <= limit:
        raise ValueError(f"{op}(): {name} = {v} is out of range [0, {limit}]")
    return v


def _text(op: str, name: str, value: Any) -> str:
    """Return ``value`` if it is a str, or raise."""
    if type(value) is str:
        return value
    if value is None:
        raise _NoneArgument(f"{name} is None")
    if isinstance(value, str):
        return str(value)
    raise TypeError(f"{op}(): {name} must be a str, not {type(value).__name__}")


def _single(op: str, target: Any, buffer: Any, peer: Any, length: Any, hint: Any) -> tuple[str, int, int, int]:
    """Check the arguments of a single transfer: the target, the local and
    remote addresses and the length, in the engine's types, or raise."""
    t = _text(op, "target_hostname", target)
    a = _uint(op, "buffer", buffer, _U64)
    p = _uint(op, "peer_buffer_address", peer, _U64)
    n = _uint(op, "length", length, _I64)
    _text(op, "transport_hint", hint)
    return t, a, p, n


def _opcode(op: str, value: Any) -> int:
    """Return a TransferOpcode (or 0/1) as an int, or raise."""
    if value is None:
        raise _NoneArgument("opcode is None")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{op}(): opcode must be a TransferOpcode, not {type(value).__name__}") from None
    if v not in (0, 1):
        raise ValueError(f"{op}(): opcode {v} is not TransferOpcode.Read (0) or TransferOpcode.Write (1)")
    return v


def _notify(op: str, value: Any) -> TransferNotify | None:
    """Check a notify argument: None or a TransferNotify with str fields."""
    if value is None:
        return None
    if not isinstance(value, TransferNotify):
        raise TypeError(f"{op}(): notify must be a TransferNotify or None, not {type(value).__name__}")
    _text(op, "notify.name", value.name)
    _text(op, "notify.msg", value.msg)
    return value


def _is_sequence(seq: Any) -> bool:
    """Whether seq is what pybind11 converts to a std::vector: ordered and
    indexable (``__len__`` and ``__getitem__``), and neither text, bytes, a
    mapping nor a set."""
    if isinstance(seq, (str, bytes, bytearray, Mapping, AbstractSet)):
        return False
    t = type(seq)
    return hasattr(t, "__len__") and hasattr(t, "__getitem__")


def _pack(op: str, name: str, seq: Any, limit: int) -> array[int]:
    """Pack a sequence of ints into an array('Q') for the Go side, checking
    every element. An array('Q') is used as it is (not copied)."""
    if seq is None:
        raise _NoneArgument(f"{name} is None")
    if isinstance(seq, array) and seq.typecode == "Q":
        packed = seq
    else:
        if not _is_sequence(seq):
            why = "; a set has no order to pair entries by" if isinstance(seq, AbstractSet) else ""
            raise TypeError(f"{op}(): {name} must be a sequence of int (list, tuple, array), not {type(seq).__name__}{why}")
        items = seq if isinstance(seq, (list, tuple, array)) else list(seq)
        try:
            packed = array("Q", items)
        except (TypeError, OverflowError) as e:
            for i, v in enumerate(items):
                _uint(op, f"{name}[{i}]", v, _U64, none=False)
            raise TypeError(f"{op}(): {name}: {e}") from None
    if limit < _U64 and packed and max(packed) > limit:
        i = next(i for i, v in enumerate(packed) if v > limit)
        raise ValueError(f"{op}(): {name}[{i}] = {packed[i]} is out of range [0, {limit}]")
    return packed


_notify_tls = threading.local()


def _notify_buffer(size: int) -> tuple[bytearray, int]:
    """A buffer of size bytes for get_notifies and its address. Each thread
    keeps its first-size buffer, so that polling an empty queue allocates
    nothing; larger ones live for one call."""
    if size == _NOTIFY_BUF:
        kept: tuple[bytearray, int] | None = getattr(_notify_tls, "buf", None)
        if kept is not None:
            return kept
    import ctypes

    buf = bytearray(size)
    pair = (buf, ctypes.addressof((ctypes.c_char * size).from_buffer(buf)))
    if size == _NOTIFY_BUF:
        _notify_tls.buf = pair
    return pair


def _decode_notifies(buf: bytearray, taken: int, out: list[TransferNotify]) -> None:
    """Append the taken notifies that bindings' Engine.Notifies wrote into
    buf to out. The engine holds valid UTF-8 (its JSON decoder replaced any
    invalid byte), so the replacement here never fires."""
    mv = memoryview(buf)
    at = _NOTIFY_HEAD.size
    rec = _NOTIFY_REC
    for _ in range(taken):
        nl, ml = rec.unpack_from(buf, at)
        at += rec.size
        name = str(mv[at : at + nl], "utf-8", "replace")
        at += nl
        msg = str(mv[at : at + ml], "utf-8", "replace")
        at += ml
        out.append(TransferNotify(name, msg))
    mv.release()


def _environ() -> str:
    """The current environment for the Go side, which otherwise sees only
    the environment as it was when the extension loaded: MC_* variables set
    in os.environ before initialize() take effect, as with Mooncake."""
    return json.dumps(dict(os.environ))


def _address_of_bytes(op: str, data: Any) -> tuple[Any, int, int]:
    """Return (keep-alive object, address, size) for bytes-like ``data``."""
    import ctypes

    if isinstance(data, str):
        data = data.encode()
    elif isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    elif not isinstance(data, bytes):
        raise TypeError(f"{op}(): src must be bytes, not {type(data).__name__}")
    addr = ctypes.cast(data, ctypes.c_void_p).value or 0
    return data, addr, len(data)


class TransferEngine:
    """A transfer engine: registers local memory and moves bytes to and from
    the registered memory of peers (pymooncake or Mooncake engines).

    Create it, then call :meth:`initialize`; nothing is started before that.
    The engine runs until :meth:`close` (or process exit).
    """

    #: Alias of :class:`TransferOpcode`, as in Mooncake.
    TransferOpcode = TransferOpcode

    def __init__(self) -> None:
        self._h: int | None = None  # gopy handle of the bindings.Engine
        self._x: Any = None  # the extension module
        self._state = "new"  # new | ready | closed | forked
        self._rpc_port = -1
        self._name = ""
        self._p2p = False  # peers found by P2P handshake, not a metadata store
        self._lock = threading.Lock()  # serialises initialize and close

    # ----------------------------------------------------------------- life

    def initialize(self, local_hostname: str, metadata_server: str, protocol: str, device_name: str | None) -> int:
        """Start the engine.

        Parameters
        ----------
        local_hostname : str
            This host's name or IP as peers reach it. With ``P2PHANDSHAKE``
            any port in it is ignored: the engine binds a random RPC port in
            [MC_MIN_RPC_PORT, MC_MAX_RPC_PORT] (default 15000-17000) and its
            segment name becomes ``"<host>:<rpc_port>"``.
        metadata_server : str
            ``"P2PHANDSHAKE"`` (no metadata service), ``"etcd://host:port"``
            (several endpoints separated by ``,``), ``"http://host:port/metadata"``,
            or a bare ``"host:port"``, meaning etcd.
        protocol : str
            Accepted for compatibility (``"tcp"``, ``"rdma"``, ...); it does
            not select the transport, which is chosen as Mooncake chooses
            it (see the module docs). ``"xgmi"`` is refused, as by Mooncake.
        device_name : str or None
            Comma-separated NIC filter: the HCAs RDMA and barex may use
            (TCP ignores it).

        Returns
        -------
        int
            0 on success; -1 on failure (bad arguments, a bad MC_* variable,
            an unreachable metadata service, no free port).

        Raises
        ------
        ImportError
            The Go extension is missing or does not load.
        EngineStateError
            This process is a ``fork()`` child of a process that had started
            pymooncake's engine: no engine can run here (the Go runtime does
            not survive fork). Raised in every mode; the message names the
            fix (the ``spawn`` or ``forkserver`` start method, or forking
            before the first ``initialize``).

        Notes
        -----
        Called again on an initialized engine, it replaces it, as
        Mooncake's does: the first engine stops as :meth:`close` stops it
        (its RPC port closes, its registrations and managed buffers go,
        and peers using its name fail), then a new one starts (in P2P mode
        on a new port, so peers need the new :meth:`get_rpc_port`). If the
        new one fails to start, the object is left uninitialized and may be
        initialized again. ``protocol="xgmi"`` is refused before the first
        engine is touched, as in Mooncake.
        """
        return self._init("initialize", local_hostname, metadata_server, protocol, device_name, "")

    def initialize_ext(
        self,
        local_hostname: str,
        metadata_server: str,
        protocol: str,
        device_name: str | None,
        metadata_type: str,
    ) -> int:
        """Start the engine with the metadata backend named separately.

        The connection string is ``metadata_type + "://" + metadata_server``
        unless ``metadata_server`` already contains ``"://"`` or is
        ``"P2PHANDSHAKE"``. Other arguments are those of :meth:`initialize`.

        Parameters
        ----------
        metadata_type : str
            ``"etcd"`` or ``"http"``.

        Returns
        -------
        int
            0 on success, -1 on failure (as :meth:`initialize`, which also
            says what a second call does and when it raises).
        """
        return self._init("initialize_ext", local_hostname, metadata_server, protocol, device_name, metadata_type)

    def _init(self, op: str, local: Any, server: Any, protocol: Any, devices: Any, mtype: str | None) -> int:
        try:
            local = _text(op, "local_hostname", local)
            server = _text(op, "metadata_server", server)
            protocol = _text(op, "protocol", protocol)
            devices = "" if devices is None else _text(op, "device_name", devices)
            if op == "initialize_ext":
                mtype = _text(op, "metadata_type", mtype)
                if not mtype:
                    raise _NoneArgument("metadata_type is empty")
        except _NoneArgument as e:
            return _errors.refuse(op, "invalid", str(e), -1)
        with self._lock:
            if self._state == "forked" or _loader.forked():
                _raise(op, "state", _loader.FORKED)  # even outside strict mode: -1 is too easy to miss
            try:
                x = _loader.load()
            except _loader.ForkedError:
                _raise(op, "state", _loader.FORKED)
            if self._state == "ready" and protocol != "xgmi":
                self._stop_for_reinit(op)
            try:
                h = x.bindings_NewEngine(local, server, mtype or "", protocol, devices, _environ())
            except RuntimeError as e:
                return _errors.failed(op, e, -1)
            self._x = x
            self._rpc_port = x.bindings_Engine_RPCPort(h)
            self._name = x.bindings_Engine_Name(h)
            self._p2p = server == "P2PHANDSHAKE"
            self._state = "ready"
            self._h = h
            _loader.on_fork(self)
        return 0

    def _stop_for_reinit(self, op: str) -> None:
        """Stop the running engine before a second initialize starts a new
        one, as Mooncake's second call destroys its first engine (the caller
        holds self._lock). A protocol Mooncake refuses ("xgmi") keeps the
        first engine, as there."""
        h, self._h = self._h, None
        self._state = "new"
        _errors.logger.info("%s: stopping engine %r (rpc port %d) to start a new one", op, self._name, self._rpc_port)
        try:
            self._x.bindings_Engine_Close(h)
        except RuntimeError as e:
            _errors.logger.warning("%s: stopping the previous engine: %s", op, _errors.parse(e)[2])

    def close(self) -> int:
        """Stop the engine: its listeners, connections and goroutines.
        Transfers still in flight fail; managed buffers are released (memory
        registered with :meth:`register_memory` is not touched). Idempotent.
        A pymooncake addition; Mooncake stops the engine when it is garbage
        collected.

        Returns
        -------
        int
            0; -1 if stopping reported an error (logged).
        """
        with self._lock:
            h = self._h
            if h is None:
                return 0
            self._h = None
            self._state = "closed"
        try:
            rc: int = self._x.bindings_Engine_Close(h)
            return rc
        except RuntimeError as e:
            return _errors.failed("close", e, -1)

    def __enter__(self) -> TransferEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Never enter Go here (it may run at interpreter exit); only warn.
        try:
            if self._h is not None:
                warnings.warn(
                    f"pymooncake TransferEngine {self._name!r} was not closed; its engine keeps running until the process exits (call close() or use `with`)",
                    ResourceWarning,
                    stacklevel=2,
                )
        except Exception:
            pass

    def _after_fork(self) -> None:
        """In a fork child: the Go runtime is unusable, refuse every call."""
        self._h = None
        self._state = "forked"
        self._lock = threading.Lock()

    def _unusable(self, op: str, rc: int) -> int:
        if self._state == "forked" or _loader.forked():
            reason = _loader.FORKED
        elif self._state == "closed":
            reason = "engine is closed"
        else:
            reason = "engine is not initialized; call initialize() first"
        return _errors.refuse(op, "state", reason, rc)

    def _ext(self) -> ModuleType:
        x: ModuleType = self._x
        return x

    # ------------------------------------------------------------ identity

    def get_rpc_port(self) -> int:
        """Return the port of this engine's RPC (handshake) listener.

        Clients build their session id as ``f"{host}:{get_rpc_port()}"``.

        Returns
        -------
        int
            The port; -1 if the engine is not initialized (or closed).
        """
        if self._h is None:
            return self._unusable("get_rpc_port", -1)
        return self._rpc_port

    def get_segment_name(self) -> str:
        """Return the segment name peers open this engine by: in P2P mode
        ``"<host>:<rpc_port>"``, otherwise ``local_hostname``. A pymooncake
        addition.

        Returns
        -------
        str
            The name; "" if the engine is not initialized (or closed).
        """
        if self._h is None:
            self._unusable("get_segment_name", -1)
            return ""
        return self._name

    def get_engine(self) -> InnerTransferEngine | None:
        """Return an opaque reference to the engine (Mooncake: the C++
        engine, for Mooncake Store). None if not initialized."""
        h = self._h
        return None if h is None else InnerTransferEngine(h)

    def get_engine_ptr(self) -> int:
        """Return an opaque non-zero integer identifying the engine
        (Mooncake: the C++ engine's address); 0 if not initialized. It is
        not a pointer and is meaningful only to pymooncake."""
        h = self._h
        return 0 if h is None else h

    def get_local_topology(self, device_name: str | None = None) -> str:
        """Return this host's NIC priority matrix as Mooncake's JSON:
        ``{"<location>": [[preferred NICs], [available NICs]], ...}`` for
        every ``cpu:<numa node>`` and ``cuda:<ordinal>``, discovered from
        sysfs and NVML, or read from the file ``MC_CUSTOM_TOPO_JSON`` names.
        Needs no initialized engine; unlike Mooncake it binds no port.

        Parameters
        ----------
        device_name : str or None
            Comma-separated NIC filter.

        Returns
        -------
        str
            The topology JSON; "" on failure (logged).
        """
        op = "get_local_topology"
        try:
            devices = "" if device_name is None else _text(op, "device_name", device_name)
        except _NoneArgument as e:  # pragma: no cover - None is allowed above
            _errors.refuse(op, "invalid", str(e), -1)
            return ""
        try:
            x = _loader.load()
        except _loader.ForkedError:
            self._unusable(op, -1)
            return ""
        try:
            topo: str = x.bindings_LocalTopology(devices, _environ())
            return topo
        except RuntimeError as e:
            _errors.failed(op, e, -1)
            return ""

    # -------------------------------------------------------------- memory

    def register_memory(self, buffer_addr: int, capacity: int, location: str = "*") -> int:
        """Register ``[buffer_addr, buffer_addr + capacity)`` so that peers
        may read and write it.

        Parameters
        ----------
        buffer_addr : int
            Start address (e.g. ``tensor.data_ptr()``).
        capacity : int
            Length in bytes, > 0.
        location : str
            ``"*"`` (detect), ``"cpu:<numa>"`` or ``"cuda:<dev>"``. GPU memory
            is detected whatever is given; RDMA and barex pick NICs by it.

        Returns
        -------
        int
            0 on success; -1 invalid argument (zero length, bad location),
            -7 overlaps a registered region, -200 the descriptor could not be
            published, or -1 if the engine is not initialized.
        """
        op = "register_memory"
        h = self._h
        if h is None:
            return self._unusable(op, -1)
        try:
            a = _uint(op, "buffer_addr", buffer_addr, _U64)
            n = _uint(op, "capacity", capacity, _I64)
            loc = _text(op, "location", location)
        except _NoneArgument as e:
            return _errors.refuse(op, "invalid", str(e), -1)
        try:
            rc: int = self._x.bindings_Engine_RegisterMemory(h, a, n, loc)
            return rc
        except RuntimeError as e:
            return _errors.failed(op, e, None)

    def unregister_memory(self, buffer_addr: int) -> int:
        """Unregister the region that starts at ``buffer_addr``.

        Returns
        -------
        int
            0 on success; -3 no region starts there, -200 the descriptor could
            not be published, -1 invalid argument or engine not initialized.
        """
        op = "unregister_memory"
        h = self._h
        if h is None:
            return self._unusable(op, -1)
        try:
            a = _uint(op, "buffer_addr", buffer_addr, _U64)
        except _NoneArgument as e:
            return _errors.refuse(op, "invalid", str(e), -1)
        try:
            rc: int = self._x.bindings_Engine_UnregisterMemory(h, a)
            return rc
        except RuntimeError as e:
            return _errors.failed(op, e, None)

    def batch_register_memory(self, buffer_addresses: IntList, capacities: IntList, location: str = "*") -> int:
        """Register several regions at once: all or none.

        Parameters
        ----------
        buffer_addresses : list of int
            Start addresses.
        capacities : list of int
            Lengths in bytes, one per address.
        location : str
            As in :meth:`register_memory`, for every region.

        Returns
        -------
        int
            0 on success; -1 invalid argument (including lists of different
            lengths), -7 a region overlaps another, -200 publish failed, -1 if
            the engine is not initialized. Nothing is registered on failure.
        """
        op = "batch_register_memory"
        h = self._h
        if h is None:
            return self._unusable(op, -1)
        try:
            a = _pack(op, "buffer_addresses", buffer_addresses, _U64)
            c = _pack(op, "capacities", capacities, _I64)
            loc = _text(op, "location", location)
        except _NoneArgument as e:
            return _errors.refuse(op, "invalid", str(e), -1)
        if len(a) != len(c):
            return _errors.refuse(op, "invalid", f"{len(a)} buffer_addresses but {len(c)} capacities", -1)
        try:
            rc: int = self._x.bindings_Engine_RegisterMemoryBatch(h, a.buffer_info()[0], c.buffer_info()[0], len(a), loc)
            return rc
        except RuntimeError as e:
            return _errors.failed(op, e, None)

    def batch_unregister_memory(self, buffer_addresses: IntList) -> int:
        """Unregister several regions by start address: all or none.

        Returns
        -------
        int
            0 on success; -3 an address starts no region, -200 publish failed,
            -1 invalid argument or engine not initialized.
        """
        op = "batch_unregister_memory"
        h = self._h
        if h is None:
            return self._unusable(op, -1)
        try:
            a = _pack(op, "buffer_addresses", buffer_addresses, _U64)
        except _NoneArgument as e:
            return _errors.refuse(op, "invalid", str(e), -1)
        try:
            rc: int = self._x.bindings_Engine_UnregisterMemoryBatch(h, a.buffer_info()[0], len(a))
            return rc
        except RuntimeError as e:
            return _errors.failed(op, e, None)

    def allocate_managed_buffer(self, length: int) -> int:
        """Allocate a registered buffer from the engine's pool (Mooncake's
        buddy allocator: 16 size classes of 8 KiB to 256 MiB carved from
        registered 2 GiB pools created on first use; larger requests get
        their own registration). ``PASS_ALLOC`` is accepted and has no
        effect: the pool is always created lazily.

        Parameters
        ----------
        length : int
            Bytes wanted. 0 gets a block of the smallest class (8 KiB), as
            in Mooncake; free it with length 0 (or any length up to 8 KiB).

        Returns
        -------
        int
            The buffer's address; 0 on failure (out of memory, engine not
            initialized).
        """
        op = "allocate_managed_buffer"
        h = self._h
        if h is None:
            return self._unusable(op, 0)
        try:
            n = _uint(op, "length", length, _I64)
        except _NoneArgument as e:
            return _errors.refuse(op, "invalid", str(e), 0)
        try:
            addr: int = self._x.bindings_Engine_AllocateManaged(h, max(n, 1))
            return addr
        except RuntimeError as e:
            return _errors.failed(op, e, 0)

    def free_managed_buffer(self, buffer_addr: int, length: int) -> int:
        """Return a buffer from :meth:`allocate_managed_buffer` to the pool.

        Parameters
        ----------
        buffer_addr : int
            The address allocate_managed_buffer returned.
        length : int
            The length it was allocated with.

        Returns
        -------
        int
            0 on success; -1 if the address is not a live managed buffer of
            that size, or the engine is not initialized.
        """
        op = "free_managed_buffer"
        h = self._h
        if h is None:
            return self._unusable(op, -1)
        try:
            a = _uint(op, "buffer_addr", buffer_addr, _U64)
            n = _uint(op, "length", length, _I64)
        except _NoneArgument as e:
            return _errors.refuse(op, "invalid", str(e), -1)
        try:
            rc: int = self._x.bindings_Engine_FreeManaged(h, a, n)
            return rc
        except RuntimeError as e:
            return _errors.failed(op, e, -1)

    def write_bytes_to_buffer(self, dest_address: int, src: bytes | bytearray | memoryview | str, length: int) -> int:
        """Copy the first ``length`` bytes of ``src`` to ``dest_address``.

        Parameters
        ----------
        dest_address : int
            Destination; ``[dest_address, dest_address + length)`` must lie in
            registered memory (a managed buffer, or a registered region).
        src : bytes
            Source bytes (``bytearray``, ``memoryview`` and ``str``, encoded
            as UTF-8, are accepted too).
        length : int
            Bytes to copy, at most ``len(src)``.

        Returns
        -------
        int
            0 on success; -1 if the destination is not registered memory,
            ``length`` exceeds ``src``, or the engine is not initialized.
        """
        op = "write_bytes_to_buffer"
        h = self._h
        if h is None:
            return self._unusable(op, -1)
        try:
            dst = _uint(op, "dest_address", dest_address, _U64)
            n = _uint(op, "length", length, _I64)
            if src is None:
                raise _NoneArgument("src is None")
            keep, addr, size = _address_of_bytes(op, src)
        except _NoneArgument as e:
            return _errors.refuse(op, "invalid", str(e), -1)
        if n > size:
            return _errors.refuse(op, "invalid", f"length {n} exceeds the {size} bytes of src", -1)
        try:
            rc: int = self._x.bindings_Engine_CopyIn(h, dst, addr, n)
            return rc
        except RuntimeError as e:
            return _errors.failed(op, e, -1)
        finally:
            del keep

    def read_bytes_from_buffer(self, address: int, length: int) -> bytes:
        """Return a copy of ``length`` bytes at ``address``.

        Parameters
        ----------
        address : int
            Source; ``[address, address + length)`` must lie in registered
            memory.
        length : int
            Bytes to read.

        Returns
        -------
        bytes
            The bytes; ``b""`` on failure (unregistered memory, engine not
            initialized), logged.
        """
        op = "read_bytes_from_buffer"
        h = self._h
        if h is None:
            self._unusable(op, -1)
            return b""
        try:
            src = _uint(op, "address", address, _U64)
            n = _uint(op, "length", length, _I64)
        except _NoneArgument as e:
            _errors.refuse(op, "invalid", str(e), -1)
            return b""
        if n == 0:
            return b""
        x = self._ext()
        try:
            x.bindings_Engine_CheckLocal(h, src, n)  # before allocating n bytes here
        except RuntimeError as e:
            _errors.failed(op, e, -1)
            return b""
        import ctypes

        buf = bytearray(n)
        dst = ctypes.addressof((ctypes.c_char * n).from_buffer(buf))
        try:
            x.bindings_Engine_CopyOut(h, dst, src, n)
        except RuntimeError as e:
            _errors.failed(op, e, -1)
            return b""
        return bytes(buf)

    # ----------------------------------------------------- sync transfers

    def transfer_sync_write(self, target_hostname: str, buffer: int, peer_buffer_address: int, length: int, transport_hint: str = "") -> int:
        """Write ``length`` bytes from local ``buffer`` to
        ``peer_buffer_address`` in segment ``target_hostname``, and wait.

        Parameters
        ----------
        target_hostname : str
            The peer's segment name (P2P: ``"<host>:<rpc_port>"``).
        buffer : int
            Local address, inside registered memory.
        peer_buffer_address : int
            Address in the peer's registered memory.
        length : int
            Bytes to move.
        transport_hint : str
            Accepted and ignored (Mooncake's TENT engine only).

        Returns
        -------
        int
            0 on success; -1 on failure or after MC_TRANSFER_TIMEOUT seconds
            plus 1 ns per byte (unknown peer, unregistered local or remote
            range, peer gone, engine not initialized).
        """
        return self._sync_one("transfer_sync_write", 1, target_hostname, buffer, peer_buffer_address, length, transport_hint, None)

    def transfer_sync_read(self, target_hostname: str, buffer: int, peer_buffer_address: int, length: int, transport_hint: str = "") -> int:
        """Read ``length`` bytes from ``peer_buffer_address`` in segment
        ``target_hostname`` into local ``buffer``, and wait.

        Arguments as :meth:`transfer_sync_write`.

        Returns
        -------
        int
            0 on success; -1 on failure or timeout.
        """
        return self._sync_one("transfer_sync_read", 0, target_hostname, buffer, peer_buffer_address, length, transport_hint, None)

    def transfer_sync(
        self,
        target_hostname: str,
        buffer: int,
        peer_buffer_address: int,
        length: int,
        opcode: int,
        notify: TransferNotify | None = None,
        transport_hint: str = "",
    ) -> int:
        """Move ``length`` bytes in direction ``opcode`` and wait; then, if
        ``notify`` is given, deliver it to the target (its
        :meth:`get_notifies` returns it).

        Returns
        -------
        int
            0 on success (transfer done and notify delivered); -1 on failure
            or timeout.
        """
        op = "transfer_sync"
        try:
            code = _opcode(op, opcode)
            n = _notify(op, notify)
        except _NoneArgument as e:
            return _errors.refuse(op, "invalid", str(e), -1)
        return self._sync_one(op, code, target_hostname, buffer, peer_buffer_address, length, transport_hint, n)

    def _sync_one(
        self,
        op: str,
        opcode: int,
        target: Any,
        buffer: Any,
        peer: Any,
        length: Any,
        hint: Any,
        notify: TransferNotify | None,
    ) -> int:
        h = self._h
        if h is None:
            return self._unusable(op, -1)
        if (
            type(target) is str
            and type(buffer) is int
            and type(peer) is int
            and type(length) is int
            and type(hint) is str
            and 0 <= buffer <= _U64
            and 0 <= peer <= _U64
            and 0 <= length <= _I64
        ):
            # Plain arguments, as every client passes them: the checks
            # below would accept them unchanged (a 4 KiB call is ~18 us,
            # of which the general checks took ~0.5).
            t, a, p, n = target, buffer, peer, length
        else:
            try:
                t, a, p, n = _single(op, target, buffer, peer, length, hint)
            except _NoneArgument as e:
                return _errors.refuse(op, "invalid", str(e), -1)
        try:
            rc: int
            if notify is None:
                rc = self._x.bindings_Engine_TransferSync(h, t, opcode, a, p, n)
            else:
                rc = self._x.bindings_Engine_TransferSyncNotify(h, t, opcode, a, p, n, notify.name, notify.msg)
            return rc
        except RuntimeError as e:
            return _errors.failed(op, e, -1)

    def batch_transfer_sync_write(
        self,
        target_hostname: str,
        buffers: IntList,
        peer_buffer_addresses: IntList,
        lengths: IntList,
        transport_hint: str = "",
    ) -> int:
        """Write several blocks to segment ``target_hostname`` as one batch,
        and wait for all of them.

        Parameters
        ----------
        target_hostname : str
            The peer's segment name.
        buffers : list of int
            Local addresses.
        peer_buffer_addresses : list of int
            Peer addresses, one per buffer.
        lengths : list of int
            Block lengths in bytes, one per buffer.
        transport_hint : str
            Accepted and ignored.

        Returns
        -------
        int
            0 when every block arrived; -1 on failure, on lists of different
            lengths, or after MC_TRANSFER_TIMEOUT seconds plus 1 ns per byte.
        """
        return self._sync_batch("batch_transfer_sync_write", 1, target_hostname, buffers, peer_buffer_addresses, lengths, transport_hint, None)

    def batch_transfer_sync_read(
        self,
        target_hostname: str,
        buffers: IntList,
        peer_buffer_addresses: IntList,
        lengths: IntList,
        transport_hint: str = "",
    ) -> int:
        """Read several blocks from segment ``target_hostname`` as one batch,
        and wait. Arguments as :meth:`batch_transfer_sync_write`.

        Returns
        -------
        int
            0 on success; -1 on failure or timeout.
        """
        return self._sync_batch("batch_transfer_sync_read", 0, target_hostname, buffers, peer_buffer_addresses, lengths, transport_hint, None)

    def batch_transfer_sync(
        self,
        target_hostname: str,
        buffers: IntList,
        peer_buffer_addresses: IntList,
        lengths: IntList,
        opcode: int,
        notify: TransferNotify | None = None,
        transport_hint: str = "",
    ) -> int:
        """Move several blocks in direction ``opcode`` as one batch and wait;
        then deliver ``notify``, if given, to the target.

        Returns
        -------
        int
            0 on success; -1 on failure or timeout.
        """
        op = "batch_transfer_sync"
        try:
            code = _opcode(op, opcode)
            n = _notify(op, notify)
        except _NoneArgument as e:
            return _errors.refuse(op, "invalid", str(e), -1)
        return self._sync_batch(op, code, target_hostname, buffers, peer_buffer_addresses, lengths, transport_hint, n)

    def _lists(self, op: str, target: Any, buffers: Any, peers: Any, lengths: Any, hint: Any) -> tuple[str, array[int], array[int], array[int]]:
        t = _text(op, "target_hostname", target)
        b = _pack(op, "buffers", buffers, _U64)
        p = _pack(op, "peer_buffer_addresses", peers, _U64)
        n = _pack(op, "lengths", lengths, _I64)
        _text(op, "transport_hint", hint)
        return t, b, p, n

    def _sync_batch(
        self,
        op: str,
        opcode: int,
        target: Any,
        buffers: Any,
        peers: Any,
        lengths: Any,
        hint: Any,
        notify: TransferNotify | None,
    ) -> int:
        h = self._h
        if h is None:
            return self._unusable(op, -1)
        if (
            type(buffers) is list
            and type(peers) is list
            and type(lengths) is list
            and len(buffers) == len(peers) == len(lengths) == 1
            and type(buffers[0]) is int
            and type(peers[0]) is int
            and type(lengths[0]) is int
        ):
            # One entry of plain ints (what KV connectors send for aux
            # data): the single transfer's path, without packing three
            # arrays. The same checks apply; anything else takes the
            # general path and its errors.
            a0, p0, n0 = buffers[0], peers[0], lengths[0]
            if notify is None and type(target) is str and type(hint) is str and 0 <= a0 <= _U64 and 0 <= p0 <= _U64 and 0 <= n0 <= _I64:
                try:  # _sync_one's fast path, one Python call shorter
                    rc0: int = self._x.bindings_Engine_TransferSync(h, target, opcode, a0, p0, n0)
                    return rc0
                except RuntimeError as e:
                    return _errors.failed(op, e, -1)
            return self._sync_one(op, opcode, target, a0, p0, n0, hint, notify)
        try:
            t, b, p, n = self._lists(op, target, buffers, peers, lengths, hint)
        except _NoneArgument as e:
            return _errors.refuse(op, "invalid", str(e), -1)
        if not len(b) == len(p) == len(n):
            return _errors.refuse(op, "invalid", f"buffers, peer_buffer_addresses and lengths have different sizes ({len(b)}, {len(p)}, {len(n)})", -1)
        try:
            rc: int
            if notify is None:
                rc = self._x.bindings_Engine_BatchTransferSync(h, t, opcode, b.buffer_info()[0], p.buffer_info()[0], n.buffer_info()[0], len(b))
            else:
                rc = self._x.bindings_Engine_BatchTransferSyncNotify(
                    h, t, opcode, b.buffer_info()[0], p.buffer_info()[0], n.buffer_info()[0], len(b), notify.name, notify.msg
                )
            return rc
        except RuntimeError as e:
            return _errors.failed(op, e, -1)

    # ---------------------------------------------------- async transfers

    def batch_transfer_async_write(
        self,
        target_hostname: str,
        buffers: IntList,
        peer_buffer_addresses: IntList,
        lengths: IntList,
        transport_hint: str = "",
    ) -> int:
        """Start writing several blocks as one batch; do not wait.

        Arguments as :meth:`batch_transfer_sync_write`.

        Returns
        -------
        int
            The batch id (> 0), to pass to :meth:`get_batch_transfer_status`
            or :meth:`transfer_check_status`; 0 on failure.
        """
        return self._async_batch("batch_transfer_async_write", 1, target_hostname, buffers, peer_buffer_addresses, lengths, transport_hint)

    def batch_transfer_async_read(
        self,
        target_hostname: str,
        buffers: IntList,
        peer_buffer_addresses: IntList,
        lengths: IntList,
        transport_hint: str = "",
    ) -> int:
        """Start reading several blocks as one batch; do not wait.

        Returns
        -------
        int
            The batch id (> 0); 0 on failure.
        """
        return self._async_batch("batch_transfer_async_read", 0, target_hostname, buffers, peer_buffer_addresses, lengths, transport_hint)

    def batch_transfer_async(
        self,
        target_hostname: str,
        buffers: IntList,
        peer_buffer_addresses: IntList,
        lengths: IntList,
        opcode: int,
        transport_hint: str = "",
    ) -> int:
        """Start moving several blocks in direction ``opcode``; do not wait.

        Returns
        -------
        int
            The batch id (> 0); 0 on failure.
        """
        op = "batch_transfer_async"
        try:
            code = _opcode(op, opcode)
        except _NoneArgument as e:
            return _errors.refuse(op, "invalid", str(e), 0)
        return self._async_batch(op, code, target_hostname, buffers, peer_buffer_addresses, lengths, transport_hint)

    def _async_batch(self, op: str, opcode: int, target: Any, buffers: Any, peers: Any, lengths: Any, hint: Any) -> int:
        h = self._h
        if h is None:
            return self._unusable(op, 0)
        try:
            t, b, p, n = self._lists(op, target, buffers, peers, lengths, hint)
        except _NoneArgument as e:
            return _errors.refuse(op, "invalid", str(e), 0)
        if not len(b) == len(p) == len(n):
            return _errors.refuse(op, "invalid", f"buffers, peer_buffer_addresses and lengths have different sizes ({len(b)}, {len(p)}, {len(n)})", 0)
        try:
            bid: int = self._x.bindings_Engine_BatchTransferAsync(h, t, opcode, b.buffer_info()[0], p.buffer_info()[0], n.buffer_info()[0], len(b))
            return bid
        except RuntimeError as e:
            return _errors.failed(op, e, 0)

    def transfer_submit_write(self, target_hostname: str, buffer: int, peer_buffer_address: int, length: int, transport_hint: str = "") -> int:
        """Start writing one block; do not wait. Poll with
        :meth:`transfer_check_status`.

        Returns
        -------
        int
            The batch id (> 0); 0 on failure (Mooncake 0.3.8 returned 2**64-1).
        """
        op = "transfer_submit_write"
        h = self._h
        if h is None:
            return self._unusable(op, 0)
        try:
            t, a, p, n = _single(op, target_hostname, buffer, peer_buffer_address, length, transport_hint)
        except _NoneArgument as e:
            return _errors.refuse(op, "invalid", str(e), 0)
        try:
            bid: int = self._x.bindings_Engine_TransferAsync(h, t, 1, a, p, n)
            return bid
        except RuntimeError as e:
            return _errors.failed(op, e, 0)

    def transfer_check_status(self, batch_id: int) -> int:
        """Poll a batch started by :meth:`transfer_submit_write` or a
        ``batch_transfer_async*`` method, without blocking.

        Returns
        -------
        int
            1 completed (the batch is freed); 0 still in flight; -2 still in
            flight past its deadline (MC_TRANSFER_TIMEOUT seconds plus 1 ns
            per byte from its start; not freed, poll again); -1 failed (the
            batch is freed), an unknown or already freed batch id, or the
            engine is not initialized.
        """
        op = "transfer_check_status"
        h = self._h
        if h is None:
            return self._unusable(op, -1)
        try:
            bid = _uint(op, "batch_id", batch_id, _U64)
        except _NoneArgument as e:
            return _errors.refuse(op, "invalid", str(e), -1)
        if bid == 0 or bid > _I64:
            return _errors.refuse(op, "unknown_batch", f"batch id {bid} was never returned by a submit", -1)
        try:
            rc: int = self._x.bindings_Engine_CheckStatus(h, bid)
            return rc
        except RuntimeError as e:
            return _errors.failed(op, e, -1)

    def get_batch_transfer_status(self, batch_ids: IntList) -> int:
        """Wait for several batches from ``batch_transfer_async*``.

        Each batch completed is freed. On the first failure, or when a batch
        runs past its deadline (MC_TRANSFER_TIMEOUT seconds plus 1 ns per
        byte from its start), every batch not yet freed is freed and -1 is
        returned.

        Parameters
        ----------
        batch_ids : list of int
            Ids returned by the async methods.

        Returns
        -------
        int
            0 if every batch completed; -1 on a failure, a timeout, an
            unknown id (nothing is waited for or freed then) or an engine
            that is not initialized.
        """
        op = "get_batch_transfer_status"
        h = self._h
        if h is None:
            return self._unusable(op, -1)
        try:
            ids = _pack(op, "batch_ids", batch_ids, _U64)
        except _NoneArgument as e:
            return _errors.refuse(op, "invalid", str(e), -1)
        for i, bid in enumerate(ids):
            if bid == 0 or bid > _I64:
                return _errors.refuse(op, "unknown_batch", f"batch_ids[{i}] = {bid} was never returned by a submit", -1)
        try:
            rc: int = self._x.bindings_Engine_WaitBatches(h, ids.buffer_info()[0], len(ids))
            return rc
        except RuntimeError as e:
            return _errors.failed(op, e, -1)

    # ------------------------------------------------------------ segments

    def get_first_buffer_address(self, segment_name: str) -> int:
        """Return the address of the first buffer segment ``segment_name``
        publishes (in P2P mode the name is ``"<host>:<rpc_port>"``).

        Returns
        -------
        int
            The address; 0 if the segment cannot be opened, has no buffer, or
            the engine is not initialized.
        """
        op = "get_first_buffer_address"
        h = self._h
        if h is None:
            return self._unusable(op, 0)
        try:
            name = _text(op, "segment_name", segment_name)
        except _NoneArgument as e:
            return _errors.refuse(op, "invalid", str(e), 0)
        try:
            addr: int = self._x.bindings_Engine_FirstBufferAddress(h, name)
            return addr
        except RuntimeError as e:
            return _errors.failed(op, e, 0)

    def warmup_efa_segment(self, segment_name: str) -> int:
        """Pre-connect to an EFA segment. This build has no EFA transport, so
        it does nothing, as Mooncake's non-EFA builds.

        Returns
        -------
        int
            0.
        """
        try:
            _text("warmup_efa_segment", "segment_name", segment_name)
        except _NoneArgument:
            pass
        return 0

    # ------------------------------------------------------ notify, probe

    def get_notifies(self) -> list[TransferNotify]:
        """Return, and remove, the notifies peers delivered to this engine.

        Returns
        -------
        list of TransferNotify
            Oldest first; empty if none (or on failure, logged).
        """
        op = "get_notifies"
        h = self._h
        if h is None:
            self._unusable(op, -1)
            return []
        # The engine moves notifies into our buffer a piece at a time, each
        # call costing what it moves; the count left after the first call
        # bounds the drain, so a peer that keeps sending cannot keep it going.
        out: list[TransferNotify] = []
        size = _NOTIFY_BUF
        buf, addr = getattr(_notify_tls, "buf", None) or _notify_buffer(size)
        most = _NOTIFY_MOST
        first = True
        while True:
            try:
                n: int = self._x.bindings_Engine_Notifies(h, addr, size, most)
            except RuntimeError as e:
                _errors.failed(op, e, -1)
                return out  # what was taken before the failure is not lost
            if n == 0:  # none queued
                return out
            if n < 0:  # the oldest notify needs a larger buffer
                size = -n
                buf, addr = _notify_buffer(size)
                continue
            taken, left = _NOTIFY_HEAD.unpack_from(buf, 0)
            if taken:
                _decode_notifies(buf, taken, out)
            if first:
                first, most = False, left
            else:
                most -= taken
            if taken == 0 or left == 0 or most <= 0:
                return out
            if size < _NOTIFY_BUF_GROWN:  # more to come: fewer, larger pieces
                size = min(size * 4, _NOTIFY_BUF_GROWN)
                buf, addr = _notify_buffer(size)

    def send_probe(self, peer_server_name: str) -> int:
        """Check that the engine called ``peer_server_name`` answers.

        Returns
        -------
        int
            0 if the peer answered; otherwise Mooncake's code for the cause:
            -101 the host does not resolve (also a name with no host, in
            P2P mode), -102 the connection failed, was closed or timed out,
            or the peer answered with a bad frame, -103 its reply is not
            JSON, -200 its metadata cannot be found (metadata store modes),
            -1 other failures or engine not initialized.
        """
        op = "send_probe"
        h = self._h
        if h is None:
            return self._unusable(op, -1)
        try:
            name = _text(op, "peer_server_name", peer_server_name)
        except _NoneArgument as e:
            return _errors.refuse(op, "invalid", str(e), -1)
        if name == "" or (name[0] == ":" and name.count(":") == 1):
            # No host: Mooncake's getaddrinfo fails (P2P), or a store has
            # no such entry.
            if self._p2p:
                return _errors.refuse(op, "dns", f"peer name {name!r} has no host", -101, -101)
            return _errors.refuse(op, "metadata", f"peer name {name!r} has no host", -200, -200)
        try:
            rc: int = self._x.bindings_Engine_SendProbe(h, name)
            return rc
        except RuntimeError as e:
            return _errors.failed(op, e, None)

    # -------------------------------------------------------------- metrics

    def get_metrics(self) -> dict[str, Any]:
        """Return this engine's metrics. A pymooncake addition.

        Counters count from ``initialize``; the other figures are the
        current ones. The same figures are served at ``/metrics`` (Prometheus
        text format) when ``PYMOONCAKE_METRICS_PORT`` is set.

        Returns
        -------
        dict
            ``{}`` if the engine is not initialized (or on failure, logged).
            Otherwise:

            - ``"transports"``: by transport name (``"tcp"``, ``"rdma"``,
              ``"barex"``), ``{"read": d, "write": d}`` where ``d`` has
              ``"bytes"`` (moved by completed requests), ``"requests"``
              (finished, completed or failed), ``"failures"`` (by cause:
              ``"rejected"``, ``"peer"``, ``"timeout"``, ``"closed"``,
              ``"other"``), and the histograms ``"latency_us"`` (completed
              requests, from submission until the engine saw their batch
              finished, in microseconds) and ``"size_bytes"``: each
              ``{"bounds": [...], "counts": [...], "count": n, "sum": s}``,
              where ``counts[i]`` observations were at most ``bounds[i]`` and
              the last count is of those above every bound.
            - ``"peers"``: by peer name (or ``"other"``), ``"read_bytes"``,
              ``"write_bytes"``, ``"read_requests"``, ``"write_requests"``,
              ``"failures"``, ``"open"`` (by transport: open peers under the
              label) and ``"connections"`` (by transport: open connections,
              for transports that count them).
            - ``"failovers"``: ``[{"from", "to", "count"}]``, peers whose
              transport changed.
            - ``"retries"`` (by reason: ``"recovered"``, ``"peer"``,
              ``"restarted"``) and ``"recoveries"`` (by action:
              ``"dropped"``, ``"restarted"``).
            - ``"batches_in_flight"``, ``"notifies_queued"``,
              ``"registered_bytes"`` (by location: ``"cpu"``, ``"cuda:N"``),
              and ``"endpoint"`` (the ``/metrics`` address, ``""`` if none).
        """
        op = "get_metrics"
        h = self._h
        if h is None:
            self._unusable(op, -1)
            return {}
        try:
            raw: str = self._x.bindings_Engine_Metrics(h)
        except RuntimeError as e:
            _errors.failed(op, e, -1)
            return {}
        out: dict[str, Any] = json.loads(raw)
        return out

    # ----------------------------------------------------------------- CUDA

    def transfer_write_on_cuda(
        self,
        target_hostname: str,
        buffer: int,
        peer_buffer_address: int,
        length: int,
        stream_ptr: int = 0,
        transport_hint: str = "",
    ) -> int:
        """Write ``length`` bytes from ``buffer`` (GPU or host memory) to
        ``peer_buffer_address`` in the order of a CUDA stream: the transfer
        starts once the work queued on the stream so far has run, and the
        work queued on it afterwards waits until the transfer is done. The
        call returns at once.

        Parameters
        ----------
        target_hostname, buffer, peer_buffer_address, length
            As in :meth:`transfer_sync_write`.
        stream_ptr : int
            The stream (``torch.cuda.current_stream().cuda_stream``); 0 is
            the legacy default stream of the current device (torch's, when
            torch is initialized; else the device of ``buffer``).
        transport_hint : str
            Accepted and ignored.

        Returns
        -------
        int
            A ticket for :meth:`cuda_transfer_status` (Mooncake returns
            None). A failure of the transfer itself is logged, reported by
            the ticket and never ends the process (Mooncake's ``_exit(1)``);
            the stream goes on either way.

        Notes
        -----
        This engine's own segment, and a peer in another process of this
        host whose GPU memory is mapped here through CUDA IPC, get the
        copies queued on the stream itself (``cuMemcpyAsync``): no hold, no
        bounce buffer, and the ticket is done once they are queued. For
        other peers the transfer holds the stream, and GPU buffers go
        through a page-locked bounce buffer, copied on the stream itself
        (before the transfer for writes, after it for reads), so that
        nothing the transfer does while it holds the stream needs the CUDA
        driver: a device-wide synchronisation meanwhile (a lazily loaded
        kernel, ``cudaFree``) waits for the held stream and would otherwise
        deadlock. At most 16 GiB of GPU buffers per call. Another engine of
        this same process with GPU memory still copies through the driver
        while the stream is held; use another process.

        Raises
        ------
        NotSupportedError
            This process has no CUDA driver or no GPU.
        MooncakeError
            The transfer could not be queued (unknown peer, unregistered
            memory, a closed engine): the subclass for the reason. Mooncake
            raises RuntimeError, of which MooncakeError is a subclass.
        """
        op = "transfer_write_on_cuda"
        return self._on_cuda(op, 1, target_hostname, *self._cuda_one(op, buffer, peer_buffer_address, length), stream_ptr, transport_hint)

    def transfer_read_on_cuda(
        self,
        target_hostname: str,
        buffer: int,
        peer_buffer_address: int,
        length: int,
        stream_ptr: int = 0,
        transport_hint: str = "",
    ) -> int:
        """Read ``length`` bytes from ``peer_buffer_address`` into ``buffer``
        in the order of a CUDA stream, as :meth:`transfer_write_on_cuda`
        writes: work queued on the stream afterwards sees the bytes.

        Returns
        -------
        int
            A ticket for :meth:`cuda_transfer_status`. After a failed read
            the GPU destination's contents are undefined.

        Raises
        ------
        NotSupportedError, MooncakeError
            As :meth:`transfer_write_on_cuda`.
        """
        op = "transfer_read_on_cuda"
        return self._on_cuda(op, 0, target_hostname, *self._cuda_one(op, buffer, peer_buffer_address, length), stream_ptr, transport_hint)

    def batch_transfer_write_on_cuda(
        self,
        target_hostname: str,
        buffers: IntList,
        peer_buffer_addresses: IntList,
        lengths: IntList,
        stream_ptr: int = 0,
        transport_hint: str = "",
    ) -> int:
        """Batch form of :meth:`transfer_write_on_cuda`: every block is
        written once the stream reaches this point, and the stream waits for
        all of them. Host and GPU buffers may be mixed.

        Returns
        -------
        int
            A ticket for :meth:`cuda_transfer_status`.

        Raises
        ------
        NotSupportedError, MooncakeError
            As :meth:`transfer_write_on_cuda`; also for lists of different
            lengths.
        """
        op = "batch_transfer_write_on_cuda"
        return self._on_cuda(op, 1, target_hostname, *self._cuda_lists(op, buffers, peer_buffer_addresses, lengths), stream_ptr, transport_hint)

    def batch_transfer_read_on_cuda(
        self,
        target_hostname: str,
        buffers: IntList,
        peer_buffer_addresses: IntList,
        lengths: IntList,
        stream_ptr: int = 0,
        transport_hint: str = "",
    ) -> int:
        """Batch form of :meth:`transfer_read_on_cuda`.

        Returns
        -------
        int
            A ticket for :meth:`cuda_transfer_status`.

        Raises
        ------
        NotSupportedError, MooncakeError
            As :meth:`batch_transfer_write_on_cuda`.
        """
        op = "batch_transfer_read_on_cuda"
        return self._on_cuda(op, 0, target_hostname, *self._cuda_lists(op, buffers, peer_buffer_addresses, lengths), stream_ptr, transport_hint)

    def cuda_transfer_status(self, ticket: int) -> int:
        """Poll a transfer queued by a ``*_on_cuda`` method, without
        blocking. A pymooncake addition.

        Returns
        -------
        int
            1 done; 0 not done yet (the stream has not reached it, or it is
            running); -1 failed (the reason is logged), an unknown ticket
            (outcomes of the last 4096 tickets are kept), or an engine that
            is not initialized.
        """
        op = "cuda_transfer_status"
        h = self._h
        if h is None:
            return self._unusable(op, -1)
        try:
            t = _uint(op, "ticket", ticket, _I64)
        except _NoneArgument as e:
            return _errors.refuse(op, "invalid", str(e), -1)
        try:
            rc: int = self._x.bindings_Engine_CudaTransferStatus(h, t)
            return rc
        except RuntimeError as e:
            return _errors.failed(op, e, -1)

    @staticmethod
    def _cuda_one(op: str, buffer: Any, peer: Any, length: Any) -> tuple[array[int], array[int], array[int]]:
        try:
            a = _uint(op, "buffer", buffer, _U64)
            p = _uint(op, "peer_buffer_address", peer, _U64)
            n = _uint(op, "length", length, _I64)
        except _NoneArgument as e:
            _raise(op, "invalid", str(e))
        return array("Q", [a]), array("Q", [p]), array("Q", [n])

    @staticmethod
    def _cuda_lists(op: str, buffers: Any, peers: Any, lengths: Any) -> tuple[array[int], array[int], array[int]]:
        try:
            b = _pack(op, "buffers", buffers, _U64)
            p = _pack(op, "peer_buffer_addresses", peers, _U64)
            n = _pack(op, "lengths", lengths, _I64)
        except _NoneArgument as e:
            _raise(op, "invalid", str(e))
        if not len(b) == len(p) == len(n):
            _raise(op, "invalid", f"{len(b)} buffers, {len(p)} peer_buffer_addresses and {len(n)} lengths")
        if not b:
            _raise(op, "invalid", "no buffers")
        return b, p, n

    def _on_cuda(self, op: str, opcode: int, target: Any, b: array[int], p: array[int], n: array[int], stream_ptr: Any, hint: Any) -> int:
        h = self._h
        if h is None:
            self._unusable_raise(op)
        try:
            t = _text(op, "target_hostname", target)
            _text(op, "transport_hint", hint)
        except _NoneArgument as e:
            _raise(op, "invalid", str(e))
        stream = getattr(stream_ptr, "cuda_stream", stream_ptr)  # a torch.cuda.Stream is accepted too
        s = _uint(op, "stream_ptr", stream, _U64, none=False)
        device = _current_cuda_device() if s == 0 else -1
        try:
            ticket: int = self._x.bindings_Engine_TransferOnCuda(h, t, opcode, b.buffer_info()[0], p.buffer_info()[0], n.buffer_info()[0], len(b), s, device)
        except RuntimeError as e:
            code, kind, reason = _errors.parse(e)
            _raise(op, kind, reason, code)
        return ticket

    def _unusable_raise(self, op: str) -> NoReturn:
        if self._state == "forked" or _loader.forked():
            reason = _loader.FORKED
        elif self._state == "closed":
            reason = "engine is closed"
        else:
            reason = "engine is not initialized; call initialize() first"
        _raise(op, "state", reason)


def _current_cuda_device() -> int:
    """torch's current device when torch has initialized CUDA, else -1 (the
    engine then takes the device of the first GPU buffer)."""
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_initialized():
            return int(torch.cuda.current_device())
    except Exception:
        pass
    return -1


def _raise(op: str, kind: str, reason: str, code: int = -1) -> NoReturn:
    """Log and raise the MooncakeError subclass for ``kind``: the
    ``*_on_cuda`` methods return no code (Mooncake raises)."""
    _errors.logger.error("%s: %s", op, reason)
    raise _errors._KINDS.get(kind, _errors.TransferFailedError)(op, code, kind, reason)

"""pymooncake: Mooncake's Transfer Engine, reimplemented in Go, for Python.

``pymooncake.engine`` mirrors Mooncake's ``mooncake.engine`` name for name,
argument for argument and return code for return code, and speaks
Mooncake's wire protocol, so pymooncake and Mooncake engines exchange data::

    from pymooncake.engine import TransferEngine

    engine = TransferEngine()
    assert engine.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == 0
    session_id = f"127.0.0.1:{engine.get_rpc_port()}"

Importing pymooncake is cheap: the Go extension is loaded by the first
``initialize``. The Go runtime does not survive ``fork()``; use the
``spawn`` or ``forkserver`` start method for processes that use engines.
Unmodified Mooncake code can run on pymooncake through
:mod:`pymooncake.compat`.
"""

from ._errors import (
    AddressNotRegisteredError,
    AddressOverlappedError,
    BatchBusyError,
    EngineStateError,
    InternalError,
    InvalidArgumentError,
    MetadataError,
    MooncakeError,
    NotSupportedError,
    SocketError,
    TooManyRequestsError,
    TransferFailedError,
    TransferTimeoutError,
    set_strict,
    strict,
)
from ._version import __version__
from .engine import (
    SUPPORT_CUDA,
    SUPPORT_EFA,
    SUPPORT_HIP,
    SUPPORT_INTRA_NVLINK,
    SUPPORT_MNNVL,
    SUPPORT_MUSA,
    InnerTransferEngine,
    TransferEngine,
    TransferNotify,
    TransferOpcode,
)

__all__ = [
    "__version__",
    "TransferEngine",
    "TransferOpcode",
    "TransferNotify",
    "InnerTransferEngine",
    "SUPPORT_CUDA",
    "SUPPORT_EFA",
    "SUPPORT_HIP",
    "SUPPORT_MNNVL",
    "SUPPORT_MUSA",
    "SUPPORT_INTRA_NVLINK",
    "MooncakeError",
    "InvalidArgumentError",
    "TooManyRequestsError",
    "AddressNotRegisteredError",
    "BatchBusyError",
    "AddressOverlappedError",
    "MetadataError",
    "SocketError",
    "TransferTimeoutError",
    "TransferFailedError",
    "EngineStateError",
    "NotSupportedError",
    "InternalError",
    "set_strict",
    "strict",
]

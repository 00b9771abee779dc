"""Failure translation: the one place that turns failures into return codes.

Mooncake's binding reports failures as return codes (0 / -1, batch id 0,
negative ``ERR_*`` codes) and logs the reason. pymooncake does the same: the
Go layer encodes the code and a kind in the text of the RuntimeError that
gopy raises (``mc:<code>:<kind>: <reason>``, written by bindings/errors.go);
:func:`failed` parses it, logs the reason through
``logging.getLogger("pymooncake")`` and returns the method's failure value.

Strict mode (environment ``PYMOONCAKE_STRICT=1``, or :func:`set_strict`)
raises a subclass of :class:`MooncakeError` instead of returning the code.
"""

from __future__ import annotations

import logging
import os
import re
from typing import NoReturn

__all__ = [
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

logger = logging.getLogger("pymooncake")


class MooncakeError(RuntimeError):
    """A failed engine call, raised only in strict mode (and by the CUDA
    methods, which this build lacks).

    Attributes
    ----------
    code : int
        Mooncake's return code for the failure (``-1``, or an ``ERR_*`` value
        such as ``-3`` for an unregistered address).
    kind : str
        The failure class, e.g. ``"not_registered"`` or ``"timeout"``.
    op : str
        The method that failed, e.g. ``"transfer_sync_write"``.
    reason : str
        What went wrong, as logged.
    """

    def __init__(self, op: str, code: int, kind: str, reason: str) -> None:
        super().__init__(f"{op}: {reason} (code {code})")
        self.op = op
        self.code = code
        self.kind = kind
        self.reason = reason


class InvalidArgumentError(MooncakeError):
    """A malformed call: bad value, unknown batch id or segment (code -1)."""


class TooManyRequestsError(MooncakeError):
    """More requests than a batch holds (code -2)."""


class AddressNotRegisteredError(MooncakeError):
    """A local or remote range outside registered memory (code -3)."""


class BatchBusyError(MooncakeError):
    """A batch freed while its transfers are in flight (code -4)."""


class AddressOverlappedError(MooncakeError):
    """A registration overlapping another (code -7)."""


class MetadataError(MooncakeError):
    """A peer's metadata could not be found, fetched or decoded (code -200)."""


class SocketError(MooncakeError):
    """A network failure talking to a peer: its host name does not resolve
    (code -101), the connection fails or the peer answers with a bad frame
    (-102), or its reply is not JSON (-103)."""


class TransferTimeoutError(MooncakeError, TimeoutError):
    """A call that ran past its deadline (MC_TRANSFER_TIMEOUT + 1 ns/byte)."""


class TransferFailedError(MooncakeError):
    """A transfer that failed for another reason (code -1)."""


class EngineStateError(MooncakeError):
    """A call on an engine that is not initialized, closed, or was
    inherited through fork()."""


class NotSupportedError(MooncakeError, NotImplementedError):
    """A feature this build lacks (code -303)."""


class InternalError(MooncakeError):
    """A bug in pymooncake (a recovered Go panic); please report it."""


_KINDS: dict[str, type[MooncakeError]] = {
    "invalid": InvalidArgumentError,
    "unknown_batch": InvalidArgumentError,
    "unknown_segment": InvalidArgumentError,
    "too_many_requests": TooManyRequestsError,
    "not_registered": AddressNotRegisteredError,
    "batch_busy": BatchBusyError,
    "overlapped": AddressOverlappedError,
    "metadata": MetadataError,
    "dns": SocketError,
    "socket": SocketError,
    "malformed": SocketError,
    "timeout": TransferTimeoutError,
    "failed": TransferFailedError,
    "closed": EngineStateError,
    "state": EngineStateError,
    "not_supported": NotSupportedError,
    "internal": InternalError,
}

_PATTERN = re.compile(r"mc:(-?[0-9]+):([a-z_]+): (.*)\Z", re.DOTALL)

_strict = os.environ.get("PYMOONCAKE_STRICT", "").strip().lower() not in ("", "0", "false", "no", "off")


def set_strict(enabled: bool) -> bool:
    """Turn strict mode on or off for the whole process.

    Parameters
    ----------
    enabled : bool
        True: failed calls raise a :class:`MooncakeError` subclass. False:
        they return Mooncake's failure codes and log the reason (the default,
        unless the environment sets ``PYMOONCAKE_STRICT=1``).

    Returns
    -------
    bool
        The previous setting.
    """
    global _strict
    previous = _strict
    _strict = bool(enabled)
    return previous


def strict() -> bool:
    """Return whether strict mode is on."""
    return _strict


def parse(exc: BaseException) -> tuple[int, str, str]:
    """Split a Go failure into (code, kind, reason).

    Text not in the bindings' format (which would be a pymooncake bug) is
    reported as code -1, kind "failed".
    """
    text = str(exc)
    m = _PATTERN.match(text)
    if m is None:
        return -1, "failed", text
    return int(m.group(1)), m.group(2), m.group(3)


def failed(op: str, exc: BaseException, rc: int | None = -1) -> int:
    """Handle a failure reported by the Go layer.

    Parameters
    ----------
    op : str
        The Python method that failed.
    exc : BaseException
        The RuntimeError raised by the extension.
    rc : int or None
        The method's failure value; None returns the Go layer's code
        (methods that return ``ERR_*`` codes, such as ``register_memory``).

    Returns
    -------
    int
        ``rc``, or the parsed code when ``rc`` is None.

    Raises
    ------
    MooncakeError
        In strict mode, the subclass for the failure's kind.
    """
    code, kind, reason = parse(exc)
    return _report(op, code, kind, reason, code if rc is None else rc)


def refuse(op: str, kind: str, reason: str, rc: int, code: int = -1) -> int:
    """Handle a failure found in Python before calling Go (None argument,
    mismatched lists, engine not initialized, use after fork).

    Returns ``rc``, or raises in strict mode as :func:`failed` does.
    """
    return _report(op, code, kind, reason, rc)


def raise_unsupported(op: str, reason: str) -> NoReturn:
    """Raise NotSupportedError for a method this build cannot run."""
    logger.error("%s: %s", op, reason)
    raise NotSupportedError(op, -303, "not_supported", reason)


def _report(op: str, code: int, kind: str, reason: str, rc: int) -> int:
    if _strict:
        raise _KINDS.get(kind, TransferFailedError)(op, code, kind, reason)
    logger.error("%s failed (returns %d): %s", op, rc, reason)
    return rc

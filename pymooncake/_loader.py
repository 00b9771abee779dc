"""Loads the Go extension once, on first use.

``import pymooncake`` loads nothing: the extension (the Go runtime plus the
engine) is imported by the first ``TransferEngine.initialize`` (or CLI
command) that needs it.

It is imported with the interpreter's dlopen flags, unchanged (RTLD_NOW
by default). The extension leaves no symbol for the dynamic loader to
resolve later: NVML is reached through trampolines bound at run time
(core/topology/nvmlgpu/internal/nvmlsym), and every other optional library
through dlopen. Earlier versions added RTLD_LAZY here because go-nvml left
NVML symbols unresolved; that is no longer needed, and not doing it
(a) loads the file the way torch's CUDAPluggableAllocator and
``LD_BIND_NOW=1`` do, so the path tested is the one used; (b) turns a
missing symbol into an ImportError at load instead of a crash at its
first call; (c) avoids ``sys.setdlopenflags``, which is process-wide and
would also apply to extensions other threads import meanwhile.

The Go runtime does not survive ``fork()``: only the forking thread exists in
the child, while the runtime still counts on its other threads, so goroutines
never run there (an engine started in such a child binds its port, then its
first transfer hangs; golang/go#15538, #53806). A child process that inherits
a loaded extension therefore never calls into it: ``initialize`` raises
:class:`pymooncake.EngineStateError` (a RuntimeError) with :data:`FORKED`,
and every other method returns its failure value and logs it. Forking before
the first use is harmless.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
import weakref
from collections.abc import Callable
from types import ModuleType

__all__ = ["load", "forked", "on_fork", "EXTENSION", "FORKED"]

EXTENSION = "pymooncake._gopy._pymooncake_go"

#: Why an engine cannot work in a fork() child, and what to do instead.
FORKED = (
    "used after fork: this process is a fork() child of a process that had started pymooncake, "
    "and the Go runtime does not survive fork(); start processes that use engines with the "
    "'spawn' or 'forkserver' method (multiprocessing.set_start_method('spawn'); vLLM: "
    "VLLM_WORKER_MULTIPROC_METHOD=spawn), or fork them before the first initialize()"
)

_lock = threading.Lock()
_ext: ModuleType | None = None
_pid: int | None = None  # the process that loaded the extension
_fork_callbacks: weakref.WeakSet[object] = weakref.WeakSet()


class ForkedError(RuntimeError):
    """The extension was loaded by a parent process before fork()."""


def load() -> ModuleType:
    """Return the extension module, importing it on the first call.

    Raises
    ------
    ImportError
        The extension is missing or does not load; the message names it and
        the cause.
    ForkedError
        This process inherited the extension through fork().
    """
    ext = _ext
    if ext is None:
        with _lock:
            if _ext is None:
                _import()
            ext = _ext
    assert ext is not None
    if _pid != os.getpid():
        raise ForkedError(f"pymooncake {FORKED}")
    return ext


def _import() -> None:
    global _ext, _pid
    try:
        mod = importlib.import_module(EXTENSION)
    except ImportError as e:
        raise ImportError(
            f"cannot load pymooncake's Go extension {EXTENSION} for Python "
            f"{sys.version_info.major}.{sys.version_info.minor}: {e}. "
            "Build it with `make build` (or reinstall with `pip install .`)."
        ) from e
    _ext, _pid = mod, os.getpid()
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_after_fork_in_child)


def loaded() -> bool:
    """Return whether this process (or its parent, before a fork) loaded
    the extension."""
    return _ext is not None


def forked() -> bool:
    """Return whether the extension was loaded by another process (this one
    is a fork() child)."""
    return _pid is not None and _pid != os.getpid()


def on_fork(obj: object) -> None:
    """Register ``obj`` so that its ``_after_fork()`` runs in a fork()
    child. Held weakly."""
    _fork_callbacks.add(obj)


def _after_fork_in_child() -> None:
    for obj in list(_fork_callbacks):
        hook: Callable[[], None] | None = getattr(obj, "_after_fork", None)
        if hook is not None:
            hook()

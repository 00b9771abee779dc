"""Run code written for Mooncake on pymooncake without changing it.

Code that does ``from mooncake.engine import TransferEngine`` gets
pymooncake's engine in either of two ways:

1. In code, before the first ``import mooncake``::

       import pymooncake.compat
       pymooncake.compat.install()

2. From the environment, with no code change at all::

       PYMOONCAKE_AS_MOONCAKE=1 python serve.py

   ``pip install`` puts a one-line start-up hook, ``pymooncake-compat.pth``,
   into site-packages; when the variable is set (to anything but ``0``) it
   calls :func:`install` as the interpreter starts. With the variable unset
   the hook only reads it.

No package called ``mooncake`` is installed: :func:`install` registers
three modules in ``sys.modules``, ``mooncake`` (an empty package),
``mooncake.engine`` (which is :mod:`pymooncake.engine`) and
``mooncake.allocator`` (which is :mod:`pymooncake.allocator`: SGLang's
``from mooncake.allocator import NVLinkAllocator``). Other Mooncake modules
(``mooncake.store``) stay missing, so code that probes for them with
``try: import ... except ImportError`` takes its fallback.
"""

from __future__ import annotations

import importlib.machinery
import os
import sys
import types

from . import allocator, engine

__all__ = ["install", "uninstall", "installed", "ENV"]

#: The environment variable that makes the start-up hook call install().
ENV = "PYMOONCAKE_AS_MOONCAKE"

_MARK = "__pymooncake_compat__"


def install(force: bool = False) -> None:
    """Make ``mooncake`` and ``mooncake.engine`` resolve to pymooncake.

    Parameters
    ----------
    force : bool
        Replace a real ``mooncake`` package that is already imported. By
        default that is refused, since objects from both would then mix.

    Raises
    ------
    RuntimeError
        A real ``mooncake`` is already imported and ``force`` is False.
    """
    current = sys.modules.get("mooncake")
    if current is not None and getattr(current, _MARK, False):
        return
    if current is not None and not force:
        raise RuntimeError(
            "pymooncake.compat.install(): the real mooncake package is already imported "
            f"({getattr(current, '__file__', None)}); call install() before importing it, or pass force=True"
        )
    pkg = types.ModuleType("mooncake", "pymooncake standing in for Mooncake (pymooncake.compat)")
    pkg.__path__ = []
    pkg.__spec__ = importlib.machinery.ModuleSpec("mooncake", None, is_package=True)
    pkg.__package__ = "mooncake"
    setattr(pkg, _MARK, True)
    pkg.__dict__["engine"] = engine
    pkg.__dict__["allocator"] = allocator
    for name in [m for m in sys.modules if m.startswith("mooncake.")]:
        del sys.modules[name]
    sys.modules["mooncake"] = pkg
    sys.modules["mooncake.engine"] = engine
    sys.modules["mooncake.allocator"] = allocator


def uninstall() -> None:
    """Undo :func:`install` (a real ``mooncake`` becomes importable again)."""
    if installed():
        del sys.modules["mooncake"]
        sys.modules.pop("mooncake.engine", None)
        sys.modules.pop("mooncake.allocator", None)


def installed() -> bool:
    """Return whether ``mooncake`` currently resolves to pymooncake."""
    return getattr(sys.modules.get("mooncake"), _MARK, False) is True


def _startup_hook() -> None:
    """Called by pymooncake-compat.pth when ``PYMOONCAKE_AS_MOONCAKE`` is set."""
    if os.environ.get(ENV, "").strip() in ("", "0"):
        return
    try:
        install()
    except Exception as e:  # never break interpreter start-up
        print(f"pymooncake: {ENV} is set but install() failed: {e}", file=sys.stderr)

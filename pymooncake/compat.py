"""Run code written for Mooncake on pymooncake without changing it.

Code that does ``from mooncake.engine import TransferEngine`` gets
pymooncake's engine in either of two ways:

1. In code, before the first ``import mooncake.engine``::

       import pymooncake.compat
       pymooncake.compat.install()

2. From the environment, with no code change at all::

       PYMOONCAKE_AS_MOONCAKE=1 python serve.py

   ``pip install`` puts a one-line start-up hook, ``pymooncake-compat.pth``,
   into site-packages; when the variable is set (to anything but ``0``) it
   calls :func:`install` as the interpreter starts. With the variable unset
   the hook only reads it.

:func:`install` replaces two modules only: ``mooncake.engine`` becomes
:mod:`pymooncake.engine` and ``mooncake.allocator`` becomes
:mod:`pymooncake.allocator` (SGLang's ``from mooncake.allocator import
NVLinkAllocator``). It does so with an import hook placed first in
``sys.meta_path``, so nothing is imported until the program asks for it:

- Where Mooncake's wheel is installed too, ``import mooncake`` and every
  other module (``mooncake.store``, ``mooncake.mooncake_connector_v1``, ...)
  come from the wheel, and the wheel's own modules that import
  ``mooncake.engine`` get pymooncake's. Mooncake Store keeps its own
  transfer engine: ``TransferEngine.get_engine()`` returns an object only
  pymooncake understands, so a store cannot share a pymooncake engine.
- Where it is not, ``mooncake`` is an empty stand-in package, and other
  Mooncake modules stay missing, so code that probes for them with
  ``try: import ... except ImportError`` takes its fallback.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import types
from collections.abc import Sequence

from . import allocator, engine

__all__ = ["install", "uninstall", "installed", "ENV"]

#: The environment variable that makes the start-up hook call install().
ENV = "PYMOONCAKE_AS_MOONCAKE"

_MARK = "__pymooncake_compat__"

#: The modules install() replaces, by their Mooncake names.
_REPLACED: dict[str, types.ModuleType] = {"mooncake.engine": engine, "mooncake.allocator": allocator}


class _Loader(importlib.abc.Loader):
    """Hands out an already imported module (or the stand-in package)."""

    def __init__(self, module: types.ModuleType | None) -> None:
        self.module = module

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        if self.module is not None:
            return self.module
        pkg = types.ModuleType("mooncake", "pymooncake standing in for Mooncake (pymooncake.compat)")
        setattr(pkg, _MARK, True)
        return pkg

    def exec_module(self, module: types.ModuleType) -> None:
        pass


class _Finder(importlib.abc.MetaPathFinder):
    """Finds pymooncake's modules under their Mooncake names, and the
    stand-in ``mooncake`` package when no real one is installed."""

    def find_spec(self, fullname: str, path: Sequence[str] | None = None, target: types.ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        module = _REPLACED.get(fullname)
        if module is not None:
            return importlib.machinery.ModuleSpec(fullname, _Loader(module))
        if fullname == "mooncake" and importlib.machinery.PathFinder.find_spec(fullname) is None:
            spec = importlib.machinery.ModuleSpec(fullname, _Loader(None), is_package=True)
            spec.submodule_search_locations = []  # nothing else is found under it
            return spec
        return None  # the real package and its other modules, if installed


_finder = _Finder()


def install(force: bool = False) -> None:
    """Make ``mooncake.engine`` and ``mooncake.allocator`` resolve to
    pymooncake's; every other ``mooncake`` module comes from Mooncake's
    wheel where it is installed. Idempotent.

    Parameters
    ----------
    force : bool
        Also replace Mooncake's ``mooncake.engine`` or ``mooncake.allocator``
        where one is already imported. By default that is refused, since
        objects from both would then mix.

    Raises
    ------
    RuntimeError
        Mooncake's ``mooncake.engine`` or ``mooncake.allocator`` is already
        imported and ``force`` is False.
    """
    loaded = {name: sys.modules[name] for name in _REPLACED if name in sys.modules}
    foreign = {name: m for name, m in loaded.items() if m is not _REPLACED[name]}
    if foreign and not force:
        name, m = next(iter(foreign.items()))
        raise RuntimeError(
            f"pymooncake.compat.install(): Mooncake's {name} is already imported ({getattr(m, '__file__', None)}); "
            "call install() before importing it, or pass force=True"
        )
    if _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)
    pkg = sys.modules.get("mooncake")
    for name, module in _REPLACED.items():
        if name in foreign:
            sys.modules[name] = module
        if pkg is not None and name in foreign:
            setattr(pkg, name.rpartition(".")[2], module)


def uninstall() -> None:
    """Undo :func:`install`: Mooncake's modules (or none) are imported
    again from then on."""
    if _finder in sys.meta_path:
        sys.meta_path.remove(_finder)
    pkg = sys.modules.get("mooncake")
    for name, module in _REPLACED.items():
        if sys.modules.get(name) is module:
            del sys.modules[name]
        attr = name.rpartition(".")[2]
        if pkg is not None and getattr(pkg, attr, None) is module:
            delattr(pkg, attr)
    if pkg is not None and getattr(pkg, _MARK, False):
        for name in [m for m in sys.modules if m == "mooncake" or m.startswith("mooncake.")]:
            del sys.modules[name]


def installed() -> bool:
    """Return whether ``mooncake.engine`` currently resolves to pymooncake."""
    return _finder in sys.meta_path


def _startup_hook() -> None:
    """Called by pymooncake-compat.pth when ``PYMOONCAKE_AS_MOONCAKE`` is set."""
    if os.environ.get(ENV, "").strip() in ("", "0"):
        return
    try:
        install()
    except Exception as e:  # never break interpreter start-up
        print(f"pymooncake: {ENV} is set but install() failed: {e}", file=sys.stderr)

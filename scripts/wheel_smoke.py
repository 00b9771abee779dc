#!/usr/bin/env python3
"""wheel_smoke.py: the first thing an installed pymooncake wheel must do.

    python -I scripts/wheel_smoke.py [--not-under DIR]...

Run with the interpreter the wheel was installed into, from a folder that
holds no pymooncake sources (``-I`` keeps the current folder, PYTHONPATH
and the user site off sys.path). It

1. imports pymooncake and checks that it and its extension come from the
   installation, not from any ``--not-under`` folder (the source tree);
2. checks the version, the typing marker and the optional pieces: the barex
   shim (present or not) and what the extension loads lazily;
3. runs a loopback transfer between two engines of this process over TCP
   on 127.0.0.1 (P2PHANDSHAKE): sync write and read, a batch write, each
   checked byte for byte;
4. prints one line per step; any failure raises and exits non-zero.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import time
from importlib import metadata
from pathlib import Path


def pattern(n: int, seed: int) -> bytes:
    return bytes((i * 131 + seed) & 0xFF for i in range(256)) * (n // 256) + bytes(n % 256)


def under(path: Path, roots: list[Path]) -> Path | None:
    for r in roots:
        if path == r or r in path.parents:
            return r
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--not-under", action="append", default=[], type=lambda p: Path(p).resolve(), help="a folder pymooncake must not come from")
    ap.add_argument("--size", type=int, default=8 << 20, help="bytes per engine buffer (default 8 MiB)")
    args = ap.parse_args()

    t0 = time.perf_counter()
    import pymooncake
    from pymooncake import _loader
    from pymooncake.engine import TransferEngine

    pkg = Path(pymooncake.__file__).resolve().parent
    bad = under(pkg, args.not_under)
    assert bad is None, f"pymooncake imported from {pkg}, inside {bad}: not the installed wheel"
    version = metadata.version("pymooncake")
    assert pymooncake.__version__ == version, f"__version__ {pymooncake.__version__} != installed metadata {version}"
    assert (pkg / "py.typed").is_file(), "py.typed is missing"
    assert not _loader.loaded(), "import pymooncake loaded the extension eagerly"
    ext = _loader.load()
    assert ext.__file__ is not None, "the extension module has no file"
    ext_path = Path(ext.__file__).resolve()
    assert under(ext_path, [pkg]) is not None, f"extension {ext_path} is outside {pkg}"
    shim = [str(p.relative_to(pkg)) for p in (pkg / "libmooncake_barex_shim.so", pkg / "_gopy" / "libmooncake_barex_shim.so") if p.exists()]
    print(f"wheel_smoke: pymooncake {version} from {pkg} (Python {sys.version.split()[0]}), extension {ext_path.name}, "
          f"barex shim: {', '.join(shim) or 'none'}, import+load {1e3 * (time.perf_counter() - t0):.0f} ms")

    # The kernel's loaded libraries: nothing optional may be mapped just by loading.
    maps = Path("/proc/self/maps").read_text() if Path("/proc/self/maps").exists() else ""
    for lib in ("libaccl_barex", "libmooncake_barex_shim", "libibverbs", "libcuda.so", "libnvidia-ml"):
        assert lib not in maps, f"{lib} is mapped after loading the extension; optional libraries must load on first use"

    size = args.size
    a, b = TransferEngine(), TransferEngine()
    bufs = [ctypes.create_string_buffer(size) for _ in range(3)]
    la, lb, lc = (ctypes.addressof(x) for x in bufs)
    try:
        assert a.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == 0, "initialize a"
        assert b.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == 0, "initialize b"
        assert a.register_memory(la, size) == 0, "register a"
        assert a.register_memory(lc, size) == 0, "register a (read-back buffer)"
        assert b.register_memory(lb, size) == 0, "register b"
        seg = b.get_segment_name()
        data = pattern(size, 7)
        ctypes.memmove(la, data, size)
        t = time.perf_counter()
        assert a.transfer_sync_write(seg, la, lb, size) == 0, "transfer_sync_write"
        dt = time.perf_counter() - t
        assert ctypes.string_at(lb, size) == data, "target bytes differ after the write"
        assert a.transfer_sync_read(seg, lc, lb, size) == 0, "transfer_sync_read"
        assert ctypes.string_at(lc, size) == data, "bytes read back differ"
        blocks = 64
        blk = size // blocks
        other = pattern(size, 99)
        ctypes.memmove(la, other, size)
        rc = a.batch_transfer_sync_write(seg, [la + i * blk for i in range(blocks)], [lb + (blocks - 1 - i) * blk for i in range(blocks)], [blk] * blocks)
        assert rc == 0, "batch_transfer_sync_write"
        got = ctypes.string_at(lb, size)
        for i in range(blocks):
            j = blocks - 1 - i
            assert got[j * blk : (j + 1) * blk] == other[i * blk : (i + 1) * blk], f"batch block {i} landed wrong"
        print(f"wheel_smoke: loopback over TCP to {seg}: write+read {size} B and a {blocks}-block batch checked byte for byte "
              f"({size / dt / 1e9:.2f} GB/s for the single write)")
    finally:
        for e in (a, b):
            e.close()
    del bufs
    print(f"wheel_smoke: ok (pid {os.getpid()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

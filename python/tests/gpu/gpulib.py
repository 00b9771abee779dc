"""Helpers of the GPU suite (imported as ``gpulib``): a peer engine in its
own process holding GPU and host memory, a fake barex library, and digests
of device memory."""

from __future__ import annotations

import ctypes
import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]

CU_POINTER_ATTRIBUTE_ALLOWED_HANDLE_TYPES = 14
CU_POINTER_ATTRIBUTE_MEMPOOL_HANDLE = 17


def digest(t: Any) -> str:
    """SHA-256 of a tensor's bytes."""
    torch = importlib.import_module("torch")
    return hashlib.sha256(t.contiguous().view(torch.uint8).cpu().numpy().tobytes()).hexdigest()


def pointer_attribute(ptr: int, attr: int) -> int:
    """cuPointerGetAttribute as an unsigned 64-bit value."""
    cu = ctypes.CDLL("libcuda.so.1")
    v = ctypes.c_uint64(0)
    rc = cu.cuPointerGetAttribute(ctypes.byref(v), ctypes.c_int(attr), ctypes.c_uint64(ptr))
    assert rc == 0, f"cuPointerGetAttribute({attr}) = {rc}"
    return v.value


def env() -> dict[str, str]:
    full = dict(os.environ)
    full["PYTHONPATH"] = str(ROOT) + os.pathsep + full.get("PYTHONPATH", "")
    return full


class GPUPeer:
    """A target engine in another process (gpu_peer.py) with ``size`` bytes
    of GPU memory (a torch tensor on device 0; cuMemCreate memory from
    NVLinkAllocator when ``vmm``) and of host memory, both registered;
    driven over pipes with one JSON line per command. ``extra_env`` is added
    to its environment (which is this process's otherwise)."""

    def __init__(self, size: int, vmm: bool = False, extra_env: dict[str, str] | None = None) -> None:
        full = env()
        full.update(extra_env or {})
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "gpu_peer.py"), str(size)] + (["--vmm"] if vmm else []),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=full,
            cwd=ROOT,
        )
        hello = self._read()
        assert hello.get("rc") == 0, hello
        self.segment: str = hello["segment"]
        self.gpu: int = hello["gpu"]
        self.host: int = hello["host"]
        self.pid: int = hello["pid"]
        self.size: int = size

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"peer exited with {self.proc.wait()}"
        out: dict[str, Any] = json.loads(line)
        return out

    def ask(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def fill(self, where: str, seed: int) -> str:
        """Fill the peer's gpu or host buffer with seeded random bytes;
        return their digest."""
        d: str = self.ask(op="fill", where=where, seed=seed)["digest"]
        return d

    def digest(self, where: str, off: int = 0, n: int | None = None) -> str:
        d: str = self.ask(op="digest", where=where, off=off, n=self.size - off if n is None else n)["digest"]
        return d

    def set(self, where: str, value: int) -> None:
        """Fill the peer's buffer with one byte value."""
        assert self.ask(op="set", where=where, value=value)["ok"]

    def check(self, where: str, value: int) -> bool:
        """Whether every byte of the peer's buffer is value."""
        ok: bool = self.ask(op="check", where=where, value=value)["ok"]
        return ok

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.ask(op="quit")
            except (AssertionError, BrokenPipeError, ValueError):
                pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


FAKE_BAREX_C = r"""
/* A FAKE libaccl_barex.so for pymooncake's GPU tests: the two allocator
   symbols BarexAllocator looks up, on the driver's stream-ordered
   cuMemAllocAsync / cuMemFreeAsync (default pool of the current context).
   It is not barex and proves nothing about barex. */
#include <dlfcn.h>
#include <stddef.h>
#include <sys/types.h>
typedef int (*alloc_fn)(unsigned long long *, size_t, void *);
typedef int (*free_fn)(unsigned long long, void *);
static alloc_fn a;
static free_fn f;
static void load(void) {
    if (a) return;
    void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL);
    a = (alloc_fn)dlsym(h, "cuMemAllocAsync");
    f = (free_fn)dlsym(h, "cuMemFreeAsync");
}
void *u2mm_alloc_wrapper_with_stream(ssize_t size, int device, void *stream) {
    (void)device;
    unsigned long long p = 0;
    load();
    return a(&p, size > 0 ? (size_t)size : 1, stream) == 0 ? (void *)p : NULL;
}
void u2mm_free_wrapper_with_stream(void *ptr, ssize_t size, int device, void *stream) {
    (void)size; (void)device;
    load();
    if (ptr) f((unsigned long long)ptr, stream);
}
"""


def build_fake_barex() -> str | None:
    """Compile the fake barex library; None without a C compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    d = tempfile.mkdtemp(prefix="fake-barex-")
    src, lib = os.path.join(d, "fake_barex.c"), os.path.join(d, "libaccl_barex.so")
    with open(src, "w") as fh:
        fh.write(FAKE_BAREX_C)
    subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", lib, src, "-ldl"], check=True)
    return lib

#!/usr/bin/env python3
"""check_wheel_selftest.py: show that scripts/check_wheel.py refuses what it
must, by breaking a good wheel one way at a time.

    scripts/check_wheel_selftest.py GOOD_WHEEL

Needs patchelf on PATH (auditwheel's) and gcc for the fake barex shims.
Each case copies the good wheel, changes one thing (a DT_NEEDED added with
patchelf, an undefined symbol renamed, a file added or dropped, a tag
changed), and expects the check to
fail with a message naming that thing; the good wheel itself must pass, and
so must one with a clean shim added.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import check_wheel

Files = dict[str, bytes]
STALE = "\0stale-record"  # a mutation's marker: keep the good wheel's RECORD


def read(whl: Path) -> Files:
    with zipfile.ZipFile(whl) as zf:
        return {n: zf.read(n) for n in zf.namelist() if not n.endswith("/")}


def write(files: Files, out: Path, fix_record: bool = True) -> None:
    record = next(n for n in files if n.endswith(".dist-info/RECORD"))
    if fix_record:
        rows = []
        for n, data in files.items():
            if n == record:
                continue
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            rows.append(f"{n},sha256={digest},{len(data)}")
        files[record] = ("\n".join([*rows, f"{record},,"]) + "\n").encode()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:  # stored: fast, and the check reads either
        for n, data in files.items():
            zf.writestr(n, data)


def ext_name(files: Files) -> str:
    return next(n for n in files if n.startswith("pymooncake/_gopy/_pymooncake_go."))


def patched(files: Files, member: str, tmp: Path, *args: str) -> Files:
    p = tmp / "elf.so"
    p.write_bytes(files[member])
    subprocess.run(["patchelf", *args, str(p)], check=True)
    return {**files, member: p.read_bytes()}


def renamed(files: Files, member: str, tmp: Path, old: str, new: str) -> Files:
    """The member with its dynamic symbol ``old`` renamed ``new`` (an
    undefined symbol stays undefined, under the new name)."""
    mapfile = tmp / "rename.map"
    mapfile.write_text(f"{old} {new}\n")
    return patched(files, member, tmp, "--rename-dynamic-symbols", str(mapfile))


def fake_shim(tmp: Path, *patch: str) -> bytes:
    src = tmp / "shim.c"
    src.write_text("int mcbx_abi_version(void) { return 1; }\n")
    so = tmp / "shim.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(so), str(src)], check=True)
    if patch:
        subprocess.run(["patchelf", *patch, str(so)], check=True)
    return so.read_bytes()


def retag(good: Path, plat: str) -> Callable[[Files, Path], tuple[Files, str]]:
    def mutate(files: Files, _tmp: Path) -> tuple[Files, str]:
        parts = good.name[: -len(".whl")].split("-")
        wheel = next(n for n in files if n.endswith(".dist-info/WHEEL"))
        text = files[wheel].decode().replace(f"-{parts[4]}\n", f"-{plat}\n")
        return {**files, wheel: text.encode()}, "-".join([*parts[:4], plat]) + ".whl"

    return mutate


def main() -> int:
    good = Path(sys.argv[1]).resolve()
    base = read(good)
    ext = ext_name(base)
    shim = "pymooncake/_gopy/" + check_wheel.SHIM

    def same(fn: Callable[[Files, Path], Files]) -> Callable[[Files, Path], tuple[Files, str]]:
        return lambda files, tmp: (fn(files, tmp), good.name)

    def stale(f: Files, _t: Path) -> Files:
        return {**f, "pymooncake/_version.py": f["pymooncake/_version.py"] + b"# changed after RECORD was written\n", STALE: b""}

    # (name, mutation, --shim, substring the failure must contain; None: must pass)
    cases: list[tuple[str, Callable[[Files, Path], tuple[Files, str]], str, str | None]] = [
        ("good wheel", same(lambda f, _t: f), "no", None),
        ("clean shim", same(lambda f, t: {**f, shim: fake_shim(t)}), "yes", None),
        ("shim that needs libaccl_barex", same(lambda f, t: {**f, shim: fake_shim(t, "--add-needed", "libaccl_barex.so")}), "any",
         "DT_NEEDED: libaccl_barex.so is forbidden"),
        ("shim built but missing", same(lambda f, _t: f), "yes", "want exactly one"),
        ("shim not built but present", same(lambda f, t: {**f, shim: fake_shim(t)}), "no", "none was built"),
        ("libaccl_barex bundled", same(lambda f, _t: {**f, "pymooncake.libs/libaccl_barex-1a2b3c4d.so.1": b"\x7fELF"}), "any",
         "libaccl_barex-1a2b3c4d.so.1 is forbidden"),
        ("extension needs libaccl_barex", same(lambda f, t: patched(f, ext, t, "--add-needed", "libaccl_barex.so")), "any",
         "DT_NEEDED: libaccl_barex.so is forbidden"),
        ("extension needs libpython", same(lambda f, t: patched(f, ext, t, "--add-needed", "libpython3.12.so.1.0")), "any", "libpython"),
        ("extension needs libibverbs", same(lambda f, t: patched(f, ext, t, "--add-needed", "libibverbs.so.1")), "any", "RDMA"),
        ("extension needs libcuda", same(lambda f, t: patched(f, ext, t, "--add-needed", "libcuda.so.1")), "any", "CUDA"),
        ("extension needs libm", same(lambda f, t: patched(f, ext, t, "--add-needed", "libm.so.6")), "any", "unexpected DT_NEEDED libm.so.6"),
        # What go-nvml's cgo calls used to leave: a symbol only a library
        # opened at run time would define (PyBool_FromLong, which the
        # interpreter provides, renamed).
        ("extension with an undefined NVML symbol", same(lambda f, t: renamed(f, ext, t, "PyBool_FromLong", "nvmlInit_v2")), "any",
         "undefined symbol(s) that neither libc.so.6 nor the Python interpreter provides (nvmlInit_v2)"),
        ("build machine RUNPATH", same(lambda f, t: patched(f, ext, t, "--set-rpath", "/opt/python/lib")), "any", "leaves the wheel"),
        ("barex SDK RUNPATH", same(lambda f, t: patched(f, ext, t, "--set-rpath", "$ORIGIN/../accl/lib")), "any", "barex SDK"),
        ("no py.typed", same(lambda f, _t: {k: v for k, v in f.items() if k != "pymooncake/py.typed"}), "any", "missing pymooncake/py.typed"),
        ("source file", same(lambda f, _t: {**f, "pymooncake/_gopy/pymooncake_go.go": b"package main\n"}), "any", "sources"),
        ("RECORD out of date", same(stale), "any", "RECORD entry for pymooncake/_version.py"),
        ("not repaired", retag(good, "linux_x86_64"), "any", "not a manylinux tag"),
        ("glibc floor claimed too low", retag(good, "manylinux_2_17_x86_64"), "any", "newer than the tag's glibc"),
    ]
    failed = 0
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for name, mutate, shim_flag, want in cases:
            files, wname = mutate(dict(base), tmp)
            out = tmp / "case" / wname
            out.parent.mkdir(exist_ok=True)
            out.unlink(missing_ok=True)
            fix = files.pop(STALE, None) is None
            write(files, out, fix_record=fix)
            r = check_wheel.check_wheel(str(out), shim_flag, False)
            if want is None:
                ok = not r.failures
                detail = "; ".join(r.failures)
            else:
                ok = any(want in f for f in r.failures)
                detail = f"wanted a failure containing {want!r}, got {r.failures}"
            print(f"check_wheel_selftest: {'ok  ' if ok else 'FAIL'} {name}" + ("" if ok else f": {detail}"))
            failed += not ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""check_wheel.py: refuse a pymooncake wheel that would not import and run
everywhere it claims to, or that drags in a host library.

    scripts/check_wheel.py WHEEL [--shim yes|no|any] [--allocator]

Checks (each failure is printed; the exit status is 1 if any failed):

- name and tags: ``pymooncake-<version>-cpXY-cpXY-manylinux_2_N_<arch>.whl``
  with only manylinux platform tags (no bare ``linux_<arch>``), the version
  equal to ``pymooncake/_version.py`` inside the wheel, the WHEEL file's tags
  equal to the file name's, ``Root-Is-Purelib: false``.
- contents: the Python package with ``py.typed``, the generated ``_gopy``
  modules, exactly one extension built for the tag's Python, the start-up
  ``.pth`` hook, the license, and nothing else native: no library grafted by
  auditwheel (``*.libs/``), no Go or C sources, no tests, and the barex shim
  only as ``--shim`` says (``yes`` when one was built, ``no`` otherwise).
- RECORD lists every file with its sha256 and size.
- metadata: name, version, summary, Requires-Python, the Apache-2.0 license
  expression and file, classifiers, project URLs, the long description, and
  the ``pymooncake`` console script; no Requires-Dist outside extras.
- ELF, for every shared object: built for the tag's architecture; DT_NEEDED
  of the extension exactly ``libc.so.6`` (everything optional is dlopen'd),
  of the shim at most the libraries every manylinux host has; never
  libaccl_barex, libpython, RDMA, CUDA or NVML libraries; no RPATH or
  RUNPATH leaving the wheel; glibc symbol versions no newer than the
  manylinux tag allows; the extension exports ``PyInit__pymooncake_go`` and,
  with ``--allocator``, the allocator's C entry points for torch.
- undefined symbols of the extension: each must be libc's (versioned
  ``GLIBC_*`` against ``libc.so.6``), Python's C API (``Py*``/``_Py*``,
  unversioned: the interpreter provides it), or weak. Anything else waits
  for a library opened at run time, so the file would not load with
  RTLD_NOW, which is how torch's CUDAPluggableAllocator, ``ctypes.CDLL``
  and ``LD_BIND_NOW=1`` load it (DESIGN rule 2; go-nvml's NVML calls once
  left 428 such symbols).
- libaccl_barex anywhere: as a file, a DT_NEEDED or DT_SONAME, a run path,
  or a requirement. It is a host-provided vendor library (reference
  clients.md section 6): a wheel must never carry or need it.
"""

from __future__ import annotations

import argparse
import base64
import csv
import email.parser
import hashlib
import io
import re
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile
from elftools.elf.gnuversions import GNUVerNeedSection, GNUVerSymSection
from elftools.elf.sections import SymbolTableSection

PACKAGE = "pymooncake"
EXT_STEM = "_pymooncake_go"
SHIM = "libmooncake_barex_shim.so"
PTH = "pymooncake-compat.pth"
LICENSE_EXPRESSION = "Apache-2.0"
SCRIPT = "pymooncake = pymooncake.cli:main"

REQUIRED_FILES = [
    f"{PACKAGE}/__init__.py",
    f"{PACKAGE}/__main__.py",
    f"{PACKAGE}/_loader.py",
    f"{PACKAGE}/_version.py",
    f"{PACKAGE}/cli.py",
    f"{PACKAGE}/compat.py",
    f"{PACKAGE}/engine.py",
    f"{PACKAGE}/py.typed",
    f"{PACKAGE}/_gopy/__init__.py",
    f"{PACKAGE}/_gopy/bindings.py",
    f"{PACKAGE}/_gopy/go.py",
    PTH,
]

# What the extension may need: glibc alone. libpthread, libdl and librt are
# part of libc.so.6 since glibc 2.34; Go's c-shared output links libc only.
EXTENSION_NEEDED = {"libc.so.6"}
# What a C++ shim may need: libraries that every manylinux host provides.
SHIM_NEEDED = {"libc.so.6", "libm.so.6", "libstdc++.so.6", "libgcc_s.so.1", "libdl.so.2", "libpthread.so.0", "librt.so.1"}
# Host-provided libraries a wheel must never need nor carry, with the reason
# given when one shows up. Mooncake's build_wheel.sh excludes these from
# auditwheel; pymooncake dlopens them instead.
FORBIDDEN = [
    (re.compile(r"^libaccl_barex\b"), "the barex SDK is host-provided and proprietary: a packaged shim must dlopen it, not link it "
     "(build the wheel with PYMOONCAKE_BAREX_SHIM=none and install the shim beside it, or name it in MC_BAREX_SHIM)"),
    (re.compile(r"^libpython"), "libpython: extensions resolve Python's symbols from the interpreter (gopy -dynamic-link)"),
    (re.compile(r"^lib(ibverbs|mlx[45]|rdmacm|efa|bnxt_re)\b"), "RDMA (host-provided): dlopen'd by core/transport/rdma"),
    (re.compile(r"^lib(cuda|cudart|nvidia-ml|nvrtc|cublas|nccl|nvshmem)\b"), "CUDA (host-provided): dlopen'd by core/gpu"),
    (re.compile(r"^lib(torch|c10|numa)\b"), "a host library Mooncake's wheels exclude"),
]
# Undefined symbols the interpreter provides to an extension (gopy's
# -dynamic-link): the C API, unversioned.
PYTHON_API = re.compile(r"^_?Py[A-Za-z_]")
# The library whose versioned symbols an extension may leave undefined.
LIBC = "libc.so.6"
# torch.cuda.memory.CUDAPluggableAllocator entry points (allocator/doc.go).
ALLOCATOR_SYMBOLS = [
    "mc_stream_alloc",
    "mc_stream_free",
    "mc_nvlink_malloc",
    "mc_nvlink_free",
    "mc_allocator_malloc",
    "mc_allocator_free",
    "mc_allocator_probe",
]
ELF_MACHINE = {"x86_64": "EM_X86_64", "aarch64": "EM_AARCH64"}
LEGACY_MANYLINUX = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}

WHEEL_NAME = re.compile(
    r"^(?P<name>[A-Za-z0-9_.]+)-(?P<version>[^-]+)(-\d[^-]*)?-(?P<py>[^-]+)-(?P<abi>[^-]+)-(?P<plat>[^-]+)\.whl$"
)


@dataclass
class Report:
    """The outcome of one check: failures and notes, in order."""

    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def fail(self, msg: str) -> None:
        self.failures.append(msg)

    def note(self, msg: str) -> None:
        self.notes.append(msg)


@dataclass
class Undefined:
    """An undefined dynamic symbol: its name, whether it is weak, and the
    library its version ties it to (None when unversioned)."""

    name: str
    weak: bool
    library: str | None


@dataclass
class ELFInfo:
    machine: str
    needed: list[str]
    soname: str | None
    runpaths: list[str]
    glibc: list[tuple[int, ...]]
    exports: set[str]
    undefined: list[Undefined]


def tag_str(tag: object, attr: str) -> str:
    """The string pyelftools resolved for a dynamic tag (it sets
    needed/rpath/runpath/soname as attributes of the tag)."""
    return str(getattr(tag, attr))


def read_elf(data: bytes) -> ELFInfo:
    elf = ELFFile(io.BytesIO(data))
    needed: list[str] = []
    runpaths: list[str] = []
    soname = None
    exports: set[str] = set()
    glibc: list[tuple[int, ...]] = []
    versions: dict[int, str] = {}  # version index -> the library that defines it
    dynsym: SymbolTableSection | None = None
    for sec in elf.iter_sections():
        if isinstance(sec, DynamicSection):
            for tag in sec.iter_tags():
                kind = tag.entry.d_tag
                if kind == "DT_NEEDED":
                    needed.append(tag_str(tag, "needed"))
                elif kind == "DT_RPATH":
                    runpaths += tag_str(tag, "rpath").split(":")
                elif kind == "DT_RUNPATH":
                    runpaths += tag_str(tag, "runpath").split(":")
                elif kind == "DT_SONAME":
                    soname = tag_str(tag, "soname")
        elif isinstance(sec, GNUVerNeedSection):
            for verneed, auxes in sec.iter_versions():
                for aux in auxes:
                    versions[aux["vna_other"]] = str(verneed.name)
                    m = re.fullmatch(r"GLIBC_(\d+(?:\.\d+)*)", aux.name)
                    if m:
                        glibc.append(tuple(int(x) for x in m.group(1).split(".")))
        elif isinstance(sec, SymbolTableSection) and sec.name == ".dynsym":
            dynsym = sec
            for sym in sec.iter_symbols():
                if sym.name and sym["st_shndx"] != "SHN_UNDEF":
                    exports.add(sym.name)
    undefined: list[Undefined] = []
    versym = elf.get_section_by_name(".gnu.version")
    if dynsym is not None:
        for i, sym in enumerate(dynsym.iter_symbols()):
            if not sym.name or sym["st_shndx"] != "SHN_UNDEF":
                continue
            library = None
            if isinstance(versym, GNUVerSymSection):
                ndx = versym.get_symbol(i)["ndx"]
                if isinstance(ndx, int):
                    library = versions.get(ndx & 0x7FFF)  # bit 15: hidden
            undefined.append(Undefined(sym.name, sym["st_info"]["bind"] == "STB_WEAK", library))
    return ELFInfo(elf["e_machine"], needed, soname, [p for p in runpaths if p], glibc, exports, undefined)


def platform_floor(plat: str, arch: str, r: Report) -> tuple[int, int] | None:
    """The glibc version a platform tag promises to run on, or None after
    recording why the tag is unacceptable."""
    m = re.fullmatch(rf"manylinux_(\d+)_(\d+)_{arch}", plat)
    if m:
        return int(m.group(1)), int(m.group(2))
    for legacy, floor in LEGACY_MANYLINUX.items():
        if plat == f"{legacy}_{arch}":
            return floor
    r.fail(f"platform tag {plat!r} is not a manylinux tag for {arch} (was the wheel repaired by auditwheel?)")
    return None


def check_forbidden(where: str, name: str, r: Report) -> None:
    base = PurePosixPath(name).name
    for pattern, why in FORBIDDEN:
        if pattern.search(base):
            r.fail(f"{where}: {name} is forbidden ({why})")


def check_elf(path: str, data: bytes, role: str, arch: str, floor: tuple[int, int] | None, require: list[str], r: Report) -> None:
    try:
        info = read_elf(data)
    except ELFError as e:
        r.fail(f"{path}: not a readable ELF file: {e}")
        return
    if info.machine != ELF_MACHINE.get(arch):
        r.fail(f"{path}: built for {info.machine}, the wheel is tagged {arch}")
    allowed = EXTENSION_NEEDED if role == "extension" else SHIM_NEEDED
    for lib in info.needed:
        check_forbidden(f"{path} DT_NEEDED", lib, r)
        if lib not in allowed:
            r.fail(f"{path}: unexpected DT_NEEDED {lib} (a {role} may need only {', '.join(sorted(allowed))}; load optional libraries with dlopen)")
    if role == "extension" and "libc.so.6" not in info.needed:
        r.fail(f"{path}: DT_NEEDED {info.needed} lacks libc.so.6 (not a Go c-shared extension?)")
    if info.soname:
        check_forbidden(f"{path} DT_SONAME", info.soname, r)
    for p in info.runpaths:
        if "accl" in p.lower() or "barex" in p.lower():
            r.fail(f"{path}: run path {p} points at the barex SDK")
        if not p.startswith("$ORIGIN"):
            r.fail(f"{path}: RPATH/RUNPATH {p} leaves the wheel (the build machine's path)")
    if floor is not None and info.glibc:
        newest = max(info.glibc)
        if newest[:2] > floor:
            r.fail(f"{path}: needs GLIBC_{'.'.join(map(str, newest))}, newer than the tag's glibc {floor[0]}.{floor[1]}")
        r.note(f"{path}: DT_NEEDED {info.needed or '(none)'}, newest glibc symbol GLIBC_{'.'.join(map(str, newest))}")
    for sym in require:
        if sym not in info.exports:
            r.fail(f"{path}: does not export {sym}")
    if role == "extension":
        check_undefined(path, info.undefined, r)


def check_undefined(path: str, undefined: list[Undefined], r: Report) -> None:
    """Refuse undefined symbols that neither libc nor the interpreter
    provides: the extension must load with RTLD_NOW."""
    bad = sorted(u.name for u in undefined if not u.weak and u.library != LIBC and not (u.library is None and PYTHON_API.match(u.name)))
    if bad:
        shown = ", ".join(bad[:8]) + (f" and {len(bad) - 8} more" if len(bad) > 8 else "")
        r.fail(f"{path}: {len(bad)} undefined symbol(s) that neither {LIBC} nor the Python interpreter provides ({shown}): "
               "it would not load with RTLD_NOW (torch's CUDAPluggableAllocator, ctypes.CDLL, LD_BIND_NOW=1); resolve optional "
               "libraries at run time (core/internal/dl; NVML through core/topology/nvmlgpu/internal/nvmlsym)")
    else:
        r.note(f"{path}: {len(undefined)} undefined symbols, all from {LIBC}, the Python C API or weak: loads with RTLD_NOW")


def check_record(zf: zipfile.ZipFile, record_name: str, r: Report) -> None:
    listed: dict[str, tuple[str, str]] = {}
    for row in csv.reader(io.StringIO(zf.read(record_name).decode())):
        if row:
            listed[row[0]] = (row[1], row[2])
    names = {n for n in zf.namelist() if not n.endswith("/")}
    for n in sorted(names - set(listed)):
        r.fail(f"RECORD does not list {n}")
    for n in sorted(set(listed) - names):
        r.fail(f"RECORD lists {n}, which the wheel lacks")
    for n in sorted(names & set(listed)):
        digest, size = listed[n]
        if n == record_name:
            continue
        data = zf.read(n)
        want = "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        if digest != want or size != str(len(data)):
            r.fail(f"RECORD entry for {n} does not match its content")


def check_metadata(zf: zipfile.ZipFile, dist_info: str, version: str, r: Report) -> None:
    meta = email.parser.Parser().parsestr(zf.read(f"{dist_info}/METADATA").decode())

    def one(key: str) -> str:
        v = meta.get(key)
        if not v:
            r.fail(f"METADATA lacks {key}")
        return v or ""

    if one("Name") != PACKAGE:
        r.fail(f"METADATA Name is {meta.get('Name')!r}")
    if one("Version") != version:
        r.fail(f"METADATA Version {meta.get('Version')!r} != pymooncake/_version.py {version!r}")
    one("Summary")
    one("Requires-Python")
    if one("License-Expression") != LICENSE_EXPRESSION:
        r.fail(f"METADATA License-Expression is {meta.get('License-Expression')!r}, want {LICENSE_EXPRESSION}")
    license_files = meta.get_all("License-File") or []
    if "LICENSE" not in license_files:
        r.fail(f"METADATA License-File {license_files} lacks LICENSE")
    for lf in license_files:
        if f"{dist_info}/licenses/{lf}" not in zf.namelist():
            r.fail(f"license file {lf} is not in {dist_info}/licenses/")
    if not meta.get_all("Classifier"):
        r.fail("METADATA has no Classifier")
    if not meta.get_all("Project-URL"):
        r.fail("METADATA has no Project-URL")
    if meta.get("Description-Content-Type", "").split(";")[0] != "text/markdown" or len(meta.get_payload() or "") < 200:
        r.fail("METADATA lacks the README as a markdown long description")
    for req in meta.get_all("Requires-Dist") or []:
        check_forbidden("Requires-Dist", req, r)
        if not re.search(r"\bextra\s*==", req):
            r.fail(f"METADATA Requires-Dist {req!r}: the wheel must install with no dependencies (extras aside)")
    eps = zf.read(f"{dist_info}/entry_points.txt").decode() if f"{dist_info}/entry_points.txt" in zf.namelist() else ""
    if not re.search(r"^\[console_scripts\]\s*$(?:\n(?!\[).*)*?\n" + re.escape(SCRIPT) + r"\s*$", eps, re.M):
        r.fail(f"entry_points.txt lacks the console script {SCRIPT!r}")


def check_wheel(path: str, shim: str, allocator: bool) -> Report:
    r = Report()
    name = PurePosixPath(path).name
    m = WHEEL_NAME.match(name)
    if not m:
        r.fail(f"{name}: not a wheel file name")
        return r
    if m["name"] != PACKAGE:
        r.fail(f"{name}: distribution {m['name']!r}, want {PACKAGE}")
    py_tag, abi_tag = m["py"], m["abi"]
    if not re.fullmatch(r"cp3\d+", py_tag) or abi_tag != py_tag:
        r.fail(f"{name}: tags {py_tag}-{abi_tag}, want cp3XY-cp3XY (one wheel per CPython version)")
    plats = m["plat"].split(".")
    am = re.fullmatch(r"(?:manylinux_\d+_\d+|manylinux\d+|musllinux_\d+_\d+|linux)_(\w+)", plats[0])
    arch = am.group(1) if am else plats[0]
    if arch not in ELF_MACHINE:
        r.fail(f"{name}: architecture {arch!r} unsupported")
    floors = [f for f in (platform_floor(p, arch, r) for p in plats) if f is not None]
    floor = min(floors) if floors else None
    ext_suffix = f".cpython-{py_tag[2:]}-{arch}-linux-gnu.so"

    with zipfile.ZipFile(path) as zf:
        names = [n for n in zf.namelist() if not n.endswith("/")]
        dist_info = f"{PACKAGE}-{m['version']}.dist-info"
        missing = [f"{dist_info}/{x}" for x in ("METADATA", "WHEEL", "RECORD") if f"{dist_info}/{x}" not in names]
        for need in missing:
            r.fail(f"missing {need}")
        if missing:
            return r

        version_src = zf.read(f"{PACKAGE}/_version.py").decode() if f"{PACKAGE}/_version.py" in names else ""
        vm = re.search(r'^__version__\s*=\s*"([^"]+)"', version_src, re.M)
        version = vm.group(1) if vm else ""
        if version != m["version"]:
            r.fail(f"{name}: version {m['version']!r} != pymooncake/_version.py {version!r}")

        wheel_meta = email.parser.Parser().parsestr(zf.read(f"{dist_info}/WHEEL").decode())
        want_tags = {f"{py_tag}-{abi_tag}-{p}" for p in plats}
        if set(wheel_meta.get_all("Tag") or []) != want_tags:
            r.fail(f"WHEEL tags {wheel_meta.get_all('Tag')} != file name tags {sorted(want_tags)}")
        if (wheel_meta.get("Root-Is-Purelib") or "").strip().lower() != "false":
            r.fail("WHEEL Root-Is-Purelib is not false (a binary wheel)")

        for f in REQUIRED_FILES:
            if f not in names:
                r.fail(f"missing {f}")
        exts = [n for n in names if re.fullmatch(rf"{PACKAGE}/_gopy/{EXT_STEM}\.[^/]+\.so", n)]
        if exts != [f"{PACKAGE}/_gopy/{EXT_STEM}{ext_suffix}"]:
            r.fail(f"extensions {exts}, want exactly {PACKAGE}/_gopy/{EXT_STEM}{ext_suffix} for the {py_tag} tag")
        shims = [n for n in names if PurePosixPath(n).name == SHIM]
        if shim == "yes" and len(shims) != 1:
            r.fail(f"barex shim: found {shims}, want exactly one (one was built)")
        if shim == "no" and shims:
            r.fail(f"barex shim {shims} in the wheel, but none was built")

        for n in names:
            check_forbidden("file", n, r)
            top = n.split("/", 1)[0]
            if top.endswith(".libs"):
                r.fail(f"{n}: auditwheel grafted a library; the wheel must need none")
            elif top not in (PACKAGE, dist_info, PTH):
                r.fail(f"{n}: outside the package, its dist-info and {PTH}")
            if re.search(r"\.(go|c|h|cpp|pyc)$|/tests?/|/__pycache__/", n):
                r.fail(f"{n}: sources, tests or bytecode do not belong in the wheel")

        require_ext = [f"PyInit_{EXT_STEM}"] + (ALLOCATOR_SYMBOLS if allocator else [])
        for n in names:
            data = zf.read(n)
            if data[:4] != b"\x7fELF":
                if n.endswith(".so"):
                    r.fail(f"{n}: named .so but not ELF")
                continue
            if n in exts:
                check_elf(n, data, "extension", arch, floor, require_ext, r)
            elif n in shims:
                check_elf(n, data, "shim", arch, floor, ["mcbx_abi_version"], r)
            else:
                r.fail(f"{n}: unexpected native file")
        check_record(zf, f"{dist_info}/RECORD", r)
        check_metadata(zf, dist_info, version, r)
    return r


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("wheel")
    ap.add_argument("--shim", choices=["yes", "no", "any"], default="any", help="whether the barex shim must be in the wheel")
    ap.add_argument("--allocator", action="store_true", help="require the allocator's C entry points in the extension")
    args = ap.parse_args(argv)
    r = check_wheel(args.wheel, args.shim, args.allocator)
    for n in r.notes:
        print(f"check_wheel: {n}")
    for f in r.failures:
        print(f"check_wheel: FAIL {f}", file=sys.stderr)
    if r.failures:
        print(f"check_wheel: {PurePosixPath(args.wheel).name}: {len(r.failures)} problem(s)", file=sys.stderr)
        return 1
    print(f"check_wheel: {PurePosixPath(args.wheel).name}: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())

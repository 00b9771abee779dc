"""Build pymooncake: gopy compiles ./bindings (and the Go engine behind it)
into pymooncake/_gopy/_pymooncake_go<EXT_SUFFIX> for the interpreter running
this build; setuptools packages it with the pure-Python modules.

``pip install .`` (or of the sdist) is all it takes; the build fetches
gopy, goimports and pybindgen itself (scripts/install-gopy.sh), so a machine
needs only Go, gcc and the Python headers, and network access to the Go
module proxy. Without Go or gcc the build stops at once and says so.
Metadata lives in pyproject.toml; the version in pymooncake/_version.py.

A barex shim (libmooncake_barex_shim.so, from ``make barex-shim`` where the
barex SDK exists) is packaged next to the package when one was built (see
find_shim); the engine dlopens it on first use of barex. Release wheels
are made by scripts/build_wheel.sh (``make wheel``), which also repairs and
checks them (docs/packaging.md).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

ROOT = os.path.dirname(os.path.abspath(__file__))
EXT = "_pymooncake_go" + str(sysconfig.get_config_var("EXT_SUFFIX"))
PTH = "pymooncake-compat.pth"
SHIM = "libmooncake_barex_shim.so"
GO_MIN = (1, 26)


class ToolchainError(RuntimeError):
    """Go or a C compiler, needed to build the extension from source, is missing."""


def check_toolchain() -> None:
    """Fail early, naming what is missing, when this machine cannot build the
    extension: a source build needs Go (with cgo) and a C compiler."""
    missing = []
    go = shutil.which("go")
    if go is None:
        missing.append(f"Go >= {GO_MIN[0]}.{GO_MIN[1]} (https://go.dev/dl/) on PATH")
    cc = os.environ.get("CC", "gcc").split()[0]
    if shutil.which(cc) is None:
        missing.append(f"a C compiler ({cc}; set CC to use another) on PATH")
    if missing:
        raise ToolchainError(
            "pymooncake builds its Go extension from source here and needs "
            + " and ".join(missing)
            + ". Install what is missing, or install a prebuilt wheel instead "
            "(pip install --only-binary=pymooncake pymooncake)."
        )
    assert go is not None
    out = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True, check=False).stdout.strip()
    parts = out.removeprefix("go").split(".")
    try:
        version = (int(parts[0]), int(parts[1]))
    except (IndexError, ValueError):
        return  # a development toolchain ("devel ..."): let the build decide
    if version < GO_MIN:
        # GOTOOLCHAIN=auto may still fetch the go.mod version; say why if it fails.
        print(
            f"pymooncake: {go} is {out}; go.mod asks for go{GO_MIN[0]}.{GO_MIN[1]} (Go downloads it unless GOTOOLCHAIN=local)",
            file=sys.stderr,
        )


def find_shim() -> str | None:
    """The barex shim to package, if one was built: PYMOONCAKE_BAREX_SHIM
    (a path; empty or "none" packages none), else pymooncake/SHIM (where
    the Makefile says to install it), else build/SHIM (make barex-shim's
    default output)."""
    env = os.environ.get("PYMOONCAKE_BAREX_SHIM")
    if env is not None:
        if env.strip().lower() in ("", "none"):
            return None
        if not os.path.isfile(env):
            raise RuntimeError(f"PYMOONCAKE_BAREX_SHIM={env}: no such file")
        return env
    for cand in (os.path.join(ROOT, "pymooncake", SHIM), os.path.join(ROOT, "build", SHIM)):
        if os.path.isfile(cand):
            return cand
    return None


def strip_runpath(path: str) -> None:
    """Drop the RUNPATH that names the build interpreter's library directory
    (gopy -dynamic-link keeps it; the extension needs no library from
    there) from the copy being packaged, when patchelf is on PATH, as it is
    under scripts/build_wheel.sh, whose check refuses a wheel that keeps
    one. A plain ``pip install .`` without patchelf keeps the harmless
    RUNPATH."""
    patchelf = shutil.which("patchelf")
    if patchelf is not None and os.path.exists(path):
        subprocess.check_call([patchelf, "--remove-rpath", path])


class BuildPy(build_py):
    """Build the Go extension before collecting the package files, and put
    the compat start-up hook at the top of the install tree."""

    def run(self) -> None:
        if os.environ.get("PYMOONCAKE_SKIP_GO_BUILD") != "1":
            check_toolchain()
            subprocess.check_call(["bash", os.path.join(ROOT, "scripts", "build_ext.sh"), sys.executable], cwd=ROOT)
        if not os.path.exists(os.path.join(ROOT, "pymooncake", "_gopy", EXT)):
            raise RuntimeError(f"pymooncake/_gopy/{EXT} is missing; run scripts/build_ext.sh {sys.executable}")
        super().run()
        strip_runpath(os.path.join(self.build_lib, "pymooncake", "_gopy", EXT))
        os.makedirs(self.build_lib, exist_ok=True)
        shutil.copyfile(os.path.join(ROOT, "pymooncake", PTH), os.path.join(self.build_lib, PTH))
        # The barex shim, next to the package, where the engine's loader looks
        # for it when barex is first used (core/transport/barex/doc.go).
        shim, dest = find_shim(), os.path.join(self.build_lib, "pymooncake", SHIM)
        if shim is not None:
            print(f"pymooncake: packaging the barex shim {shim}", file=sys.stderr)
            shutil.copyfile(shim, dest)
        elif os.path.exists(dest):
            os.remove(dest)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        extra = [os.path.join(self.build_lib, PTH)]
        if os.path.exists(os.path.join(self.build_lib, "pymooncake", SHIM)):
            extra.append(os.path.join(self.build_lib, "pymooncake", SHIM))
        return [*super().get_outputs(include_bytecode), *extra]


class BinaryDistribution(Distribution):
    """The wheel carries a compiled extension: tag it for this interpreter
    and platform (cp3XY-cp3XY-linux_<arch>), not py3-none-any."""

    def has_ext_modules(self) -> bool:
        return True


setup(
    distclass=BinaryDistribution,
    cmdclass={"build_py": BuildPy},
    packages=["pymooncake"],
    # pymooncake/_gopy is generated by the build, so it is shipped as data of
    # pymooncake (a declared package directory must exist before the build
    # starts). Only this interpreter's extension, not others built here. The
    # barex shim is copied by BuildPy, from where find_shim finds it.
    package_data={
        "pymooncake": ["py.typed", "_gopy/__init__.py", "_gopy/bindings.py", "_gopy/go.py", f"_gopy/{EXT}"],
    },
    exclude_package_data={"pymooncake": [PTH, SHIM]},
    zip_safe=False,
)

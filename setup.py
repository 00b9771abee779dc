"""Build pymooncake: gopy compiles ./bindings (and the Go engine behind it)
into pymooncake/_gopy/_pymooncake_go<EXT_SUFFIX> for the interpreter running
this build; setuptools packages it with the pure-Python modules.

``pip install .`` is all it takes; the build fetches gopy, goimports and
pybindgen itself (scripts/install-gopy.sh), so a machine needs only Go, gcc
and the Python headers. Metadata lives in pyproject.toml.
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


class BuildPy(build_py):
    """Build the Go extension before collecting the package files, and put
    the compat start-up hook at the top of the install tree."""

    def run(self) -> None:
        if os.environ.get("PYMOONCAKE_SKIP_GO_BUILD") != "1":
            subprocess.check_call(["bash", os.path.join(ROOT, "scripts", "build_ext.sh"), sys.executable], cwd=ROOT)
        if not os.path.exists(os.path.join(ROOT, "pymooncake", "_gopy", EXT)):
            raise RuntimeError(f"pymooncake/_gopy/{EXT} is missing; run scripts/build_ext.sh {sys.executable}")
        super().run()
        os.makedirs(self.build_lib, exist_ok=True)
        shutil.copyfile(os.path.join(ROOT, "pymooncake", PTH), os.path.join(self.build_lib, PTH))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), os.path.join(self.build_lib, PTH)]


class BinaryDistribution(Distribution):
    """The wheel carries a compiled extension: tag it for this interpreter
    and platform (cp3XY-cp3XY-linux_<arch>), not py3-none-any."""

    def has_ext_modules(self) -> bool:
        return True


setup(
    distclass=BinaryDistribution,
    cmdclass={"build_py": BuildPy},
    packages=["pymooncake", "pymooncake._gopy"],
    package_data={
        "pymooncake": ["py.typed"],
        # only this interpreter's extension, not others built in this tree
        "pymooncake._gopy": [EXT],
    },
    exclude_package_data={"pymooncake": [PTH]},
    zip_safe=False,
)

"""Fixtures for the interop suite: real Mooncake and pymooncake as subprocesses.

Each engine runs in its own process through python/interop/peer.py:
``--impl mooncake`` under the Mooncake venv (scripts/install-mooncake.sh,
$MOONCAKE_VENV or .venv-mooncake), ``--impl pymooncake`` under this
interpreter (or $PYMOONCAKE_PYTHON) with the repository on PYTHONPATH.

Availability rules:
- Mooncake venv missing: skip with the install command, but FAIL when $CI is set.
- pymooncake not importable: cases marked ``needs_pymooncake`` skip with the
  import error, but FAIL when $CI is set (deselect them with
  ``-m "not needs_pymooncake"`` until the package exists).
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.join(REPO, "python", "interop"))

import driver  # noqa: E402
from driver import Peer, base_env  # noqa: E402

IMPLS = ("mooncake", "pymooncake")
MiB = 1 << 20


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "needs_pymooncake: the case runs pymooncake (deselect until the package exists)")


def in_ci() -> bool:
    return bool(os.environ.get("CI"))


def unavailable(reason: str) -> None:
    """Skip locally; fail loudly under CI."""
    if in_ci():
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


@functools.cache
def mooncake_problem() -> str | None:
    py = driver.mooncake_python()
    if not os.access(py, os.X_OK):
        return f"no Mooncake venv at {os.path.dirname(os.path.dirname(py))}: run scripts/install-mooncake.sh"
    r = subprocess.run([py, "-c", "import mooncake.engine"], capture_output=True, text=True, check=False,
                       env=base_env(), timeout=60)
    if r.returncode != 0:
        return f"Mooncake venv {py} cannot import mooncake.engine: {r.stderr.strip()[-500:]}"
    return None


@functools.cache
def pymooncake_problem() -> str | None:
    env = base_env({"PYTHONPATH": REPO})
    r = subprocess.run([driver.pymooncake_python(), "-c", "import pymooncake.engine"],
                       capture_output=True, text=True, env=env, timeout=60, check=False)
    if r.returncode != 0:
        tail = r.stderr.strip().splitlines()[-1:] or ["(no output)"]
        return f"pymooncake is not importable yet: {tail[0]}"
    return None


def require(*impls: str) -> None:
    """Skip or fail (under CI) unless every named implementation can run."""
    for impl in dict.fromkeys(impls):
        problem = mooncake_problem() if impl == "mooncake" else pymooncake_problem()
        if problem:
            unavailable(problem)


def impl_pairs() -> list:
    """(target_impl, initiator_impl) over {mooncake, pymooncake}^2, pymooncake ones marked."""
    out = []
    for t in IMPLS:
        for i in IMPLS:
            marks = [pytest.mark.needs_pymooncake] if "pymooncake" in (t, i) else []
            out.append(pytest.param((t, i), id=f"tgt_{t}-ini_{i}", marks=marks))
    return out


FRAMINGS = {"default": {}, "proto1": {"MC_TCP_PROTO": "1"}}


class Pair:
    """A running target and initiator that can reach each other."""

    def __init__(self, target: Peer, initiator: Peer, framing: str) -> None:
        self.target = target
        self.initiator = initiator
        self.framing = framing

    def logs(self) -> str:
        return (f"--- target ({self.target.impl}) log tail:\n{self.target.log_tail()}\n"
                f"--- initiator ({self.initiator.impl}) log tail:\n{self.initiator.log_tail()}")


PAIR_SIZE = 64 * MiB


@pytest.fixture(scope="module", params=[
    pytest.param((impls.values[0], framing), id=f"{impls.id}-{framing}", marks=impls.marks)
    for impls in impl_pairs() for framing in FRAMINGS])
def pair(request: pytest.FixtureRequest) -> Iterator[Pair]:
    (target_impl, initiator_impl), framing = request.param
    require(target_impl, initiator_impl)
    env = base_env(FRAMINGS[framing])
    with Peer(target_impl, "target", size=PAIR_SIZE, env=env) as target, \
            Peer(initiator_impl, "initiator", size=PAIR_SIZE, env=env) as initiator:
        yield Pair(target, initiator, framing)

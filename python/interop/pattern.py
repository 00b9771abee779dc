"""Deterministic test data shared by the interop harness and peer.py.

Both sides must produce the same bytes for a (seed, length) pair without
sending the bytes through a pipe, so a transfer of 64 MiB is verified by
comparing SHA-256 digests. SHAKE-256 is used because it is in every Python
standard library, is fast (about 0.1 s for 64 MiB) and never repeats.
"""

from __future__ import annotations

import hashlib

__all__ = ["pattern", "digest"]


def pattern(seed: str, length: int) -> bytes:
    """Return ``length`` pseudo-random bytes determined by ``seed``."""
    if length < 0:
        raise ValueError(f"negative length {length}")
    return hashlib.shake_256(seed.encode()).digest(length)


def digest(data: bytes) -> str:
    """Return the hex SHA-256 of ``data``; the form every side reports."""
    return hashlib.sha256(data).hexdigest()

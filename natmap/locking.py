"""File locks that a dying process cannot leave held."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import PrivilegeError


@contextmanager
def flocked(path: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (made if missing) for the block.

    The kernel releases it when the file is closed, so also when the process
    dies: no stale lock is ever left behind.
    """
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except PermissionError as exc:
        raise PrivilegeError(f"taking the lock {path}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)

"""Network namespaces: which one a thread is in, and running code in another.

A network namespace belongs to a thread, not to a process, so natmap enters
one on the calling thread only for the length of a call and always goes back.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import NatmapError, PrivilegeError

_CLONE_NEWNET = 0x40000000
_SELF = "/proc/thread-self/ns/net"
_libc = ctypes.CDLL("libc.so.6", use_errno=True)  # find_library would run ldconfig


def current() -> tuple[int, int]:
    """The calling thread's network namespace, as (device, inode)."""
    st = os.stat(_SELF)
    return (st.st_dev, st.st_ino)


def path(name: str) -> str:
    """Where ``ip netns add NAME`` keeps the namespace."""
    return f"/run/netns/{name}"


def identity(name: str) -> tuple[int, int]:
    """The (device, inode) of the named namespace."""
    st = os.stat(path(name))
    return (st.st_dev, st.st_ino)


@contextmanager
def entered(name: str | None) -> Iterator[None]:
    """Run the block with this thread in namespace ``name`` (``None``: stay)."""
    if name is None:
        yield
        return
    try:
        target = os.open(path(name), os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise NatmapError(f"network namespace {name!r} does not exist ({exc.strerror})") from exc
    home = os.open(_SELF, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        if err == errno.EPERM:
            raise PrivilegeError("entering a network namespace (needs CAP_SYS_ADMIN too)")
        raise NatmapError(f"setns: {os.strerror(err)}")

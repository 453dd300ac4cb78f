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

from .errors import NatmapError, NotFoundError, PrivilegeError, SpecError

_CLONE_NEWNET = 0x40000000
_SELF = "/proc/thread-self/ns/net"
_SO_NETNS_COOKIE = 71  # asm-generic/socket.h
_libc = ctypes.CDLL("libc.so.6", use_errno=True)  # find_library would run ldconfig


def current() -> tuple[int, int]:
    """The calling thread's network namespace, as (device, inode)."""
    st = os.stat(_SELF)
    return (st.st_dev, st.st_ino)


def cookie() -> int | None:
    """The calling thread's network namespace's cookie: a number the kernel
    gives each namespace once per boot (SO_NETNS_COOKIE, Linux >= 5.14), where
    the nsfs inode of :func:`current` is reused for a namespace made after one
    is deleted. None on a kernel without it."""
    import _socket  # the C module: no enums to import

    try:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC)
    except OSError:
        return None
    try:
        return int.from_bytes(sock.getsockopt(_socket.SOL_SOCKET, _SO_NETNS_COOKIE, 8), "little")
    except OSError:
        return None
    finally:
        sock.close()


def validate_name(name: str) -> str:
    """Return ``name`` if it is a namespace name as ``ip netns add`` takes it:
    not empty, no ``/``, not ``.`` or ``..`` (iproute2's own rule), at most 255
    bytes. A name is never a path: pass a path as ``netns_path`` instead."""
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\0" in name \
            or len(name.encode(errors="surrogateescape")) > 255:
        raise SpecError("invalid network namespace name (a name as 'ip netns add' makes it: "
                        "no '/', not '.' or '..'; to give a path, use netns_path= or --netns-path)", str(name))
    return name


def path(name: str) -> str:
    """Where ``ip netns add NAME`` keeps the namespace."""
    return f"/run/netns/{validate_name(name)}"


def identity(name: str) -> tuple[int, int]:
    """The (device, inode) of the named namespace."""
    st = os.stat(path(name))
    return (st.st_dev, st.st_ino)


@contextmanager
def entered(name: str | None = None, *, ns_path: str | None = None) -> Iterator[None]:
    """Run the block with this thread in namespace ``name`` (as ``ip netns``
    names it), or in the one the file ``ns_path`` is (``/proc/PID/ns/net``, a
    bind mount); neither: stay where it is."""
    if name is None and ns_path is None:
        yield
        return
    where = ns_path if ns_path is not None else path(name or "")
    shown = repr(ns_path if ns_path is not None else name)
    try:
        target = os.open(where, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise NotFoundError(f"network namespace {shown} does not exist ({exc.strerror})") from exc
    home = os.open(_SELF, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target, shown)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


def _setns(fd: int, shown: str = "") -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        if err == errno.EPERM:
            raise PrivilegeError("entering a network namespace (needs CAP_SYS_ADMIN too)")
        if err == errno.EINVAL and shown:
            raise NatmapError(f"{shown} is not a network namespace")
        raise NatmapError(f"setns: {os.strerror(err)}")

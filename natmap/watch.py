"""``natmap watch``: repair natmap's table as soon as the kernel's nftables
change, woken by nftables' netlink events (``NFNLGRP_NFTABLES``), never by a
timer. Every committed nftables transaction in the namespace sends events;
natmap's own repairs do too, and the check after them finds nothing to do.
"""

from __future__ import annotations

import os
import select
import socket
import weakref

from .errors import BackendError, NatmapError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from .engine import NatMap

_NETLINK_NETFILTER = 12
_NFNLGRP_NFTABLES = 7
_SOL_NETLINK = 270
_NETLINK_ADD_MEMBERSHIP = 1
_wakers: weakref.WeakKeyDictionary[NatMap, int] = weakref.WeakKeyDictionary()


def _events() -> socket.socket:
    """A netlink socket in the calling thread's namespace, subscribed to nftables' events."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, _NETLINK_NETFILTER)
    try:
        sock.bind((0, 0))
        sock.setsockopt(_SOL_NETLINK, _NETLINK_ADD_MEMBERSHIP, _NFNLGRP_NFTABLES)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    except OSError:
        sock.close()
        raise
    return sock


def watch(nm: NatMap, ready: Callable[[], None] | None = None) -> None:
    """See :meth:`NatMap.watch`."""
    if nm.backend_name != "nft":
        raise BackendError("natmap watch needs the nft backend: legacy iptables sends no change events")
    read_end, write_end = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    _wakers[nm] = write_end
    try:
        with nm._ns():
            sock = _events()
        try:
            _repair(nm)  # whatever happened before we listened
            if ready is not None:
                ready()
            while True:
                readable, _, _ = select.select([sock.fileno(), read_end], [], [])
                if read_end in readable:
                    return
                _drain(sock)
                _repair(nm)
        finally:
            sock.close()
    finally:
        _wakers.pop(nm, None)
        os.close(read_end)
        os.close(write_end)


def stop(nm: NatMap) -> None:
    """Wake :func:`watch` and end it (from a signal handler or another thread)."""
    fd = _wakers.get(nm)
    if fd is not None:
        try:
            os.write(fd, b"x")
        except OSError:
            pass


def _drain(sock: socket.socket) -> None:
    """Read every event queued: one repair answers a burst of them."""
    while True:
        try:
            sock.recv(1 << 16, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:  # ENOBUFS: events were lost; the check reads the kernel anyway
            continue


def _repair(nm: NatMap) -> None:
    import logging

    try:
        drift = nm.repair()
    except NatmapError as exc:
        logging.getLogger("natmap").error("watch: repair failed: %s", exc)
        return
    if drift:
        logging.getLogger("natmap").info("watch: repaired: %s", "; ".join(str(drift).splitlines()))

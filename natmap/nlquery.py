"""Four narrow netlink questions, asked with the standard library's socket, for
processes that ask once and end (natmap-cni) and for the checks every publish
makes: the host sockets holding ports (sock_diag, filtered by port), an
interface's kind and addresses (rtnetlink), the namespace's ``inet`` nftables
tables and their comments (nfnetlink), whether the local ``::1`` route of a
bridge is there.

:mod:`natmap.host` asks them here, not through pyroute2 (which it keeps for
conntrack, addresses and routes): pyroute2's netlink core alone (asyncio
and its message classes) costs about 60 ms to import, the whole package
130-170 ms: three times what the rest of a CNI ADD costs, on the path of
every ``podman run``; and setting up one of its sockets costs 1-2 ms, which
made a one-port publish 9-11 ms. These functions answer what pyroute2
answers, in the same shapes (tests/kernel/test_kernel_nlquery.py holds them
to pyroute2's answers on a live namespace), and raise natmap's errors: :class:`PrivilegeError` where the
kernel says EPERM/EACCES, :class:`BackendError` for any other refusal.

The wire formats are the kernel's UAPI: ``linux/netlink.h`` (``nlmsghdr``,
attributes), ``linux/inet_diag.h``, ``linux/rtnetlink.h``, ``linux/if_link.h``,
``linux/if_addr.h``, ``linux/netfilter/nfnetlink.h`` and ``nf_tables.h``; the
table comment is libnftnl's user-data TLV (type 0, NUL-terminated).
"""

from __future__ import annotations

import _socket as socket  # the C module: the socket module's enums cost a tenth of an ADD to import
import errno
import ipaddress
import itertools
import os
import struct
from .errors import BackendError, PrivilegeError, UnknownInterfaceError
from .spec import Protocol

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    from .host import Listener

__all__ = ["listeners", "interface_facts", "nft_tables", "loopback6_present"]

# linux/netlink.h
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_F_REQUEST, _F_DUMP_INTR, _F_DUMP = 0x1, 0x10, 0x300
_DUMP_TRIES = 10
_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port id
_ATTR = struct.Struct("=HH")       # nlattr / rtattr: length, type
_NLA_TYPE_MASK = 0x3FFF            # without NLA_F_NESTED / NLA_F_NET_BYTEORDER
_NETLINK_ROUTE, _NETLINK_SOCK_DIAG, _NETLINK_NETFILTER = 0, 4, 12

# linux/sock_diag.h, linux/inet_diag.h
_SOCK_DIAG_BY_FAMILY = 20
_DIAG_REQ = struct.Struct("=BBBxI48x")          # family, protocol, ext, states, an empty inet_diag_sockid
_DIAG_MSG = struct.Struct("=BBBB2s2s16s16sI8xIIIII")  # inet_diag_msg, sockid spelled out
_INET_DIAG_SKV6ONLY = 11
_INET_DIAG_REQ_BYTECODE = 1
_BC_S_GE, _BC_S_LE, _BC_JMP = 2, 3, 1  # inet_diag_bc_op codes
_BC_OP = struct.Struct("=BBH")         # inet_diag_bc_op: code, yes, no
_BC_MAX_RANGES = 64                    # more: one unfiltered dump is as cheap (and nla_len is 16 bits)
_TCP_LISTEN = 10
_IPPROTO = {Protocol.TCP: socket.IPPROTO_TCP, Protocol.UDP: socket.IPPROTO_UDP, Protocol.SCTP: 132}

# linux/rtnetlink.h, if_link.h, if_addr.h
_RTM_GETLINK, _RTM_GETADDR, _RTM_GETROUTE = 18, 22, 26
_IFINFO = struct.Struct("=BxHiII")   # family, type, index, flags, change
_IFADDR = struct.Struct("=BBBBI")    # family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
_IFLA_IFNAME, _IFLA_LINKINFO, _IFLA_INFO_KIND = 3, 18, 1
_IFA_ADDRESS = 1
_RTA_DST, _RTA_OIF, _RTA_TABLE = 1, 4, 15
_RT_TABLE_LOCAL = 255

# linux/netfilter/nfnetlink.h, nf_tables.h
_NFT_GETTABLE = (10 << 8) | 1         # NFNL_SUBSYS_NFTABLES, NFT_MSG_GETTABLE
_NFGEN = struct.Struct("=BBH")        # family, version, res_id
_NFPROTO_INET = 1
_NFTA_TABLE_NAME, _NFTA_TABLE_USERDATA = 1, 6
_UDATA_TABLE_COMMENT = 0


def netfilter_socket() -> Any:
    """A NETLINK_NETFILTER socket to keep and pass to :func:`nft_tables`: closing
    one waits for nf_tables' pending cleanup of the last commit (its
    NETLINK_URELEASE handler flushes that work, an RCU grace period: up to
    milliseconds on a busy host), which a process that asks on every change
    should not pay each time. It belongs to the calling thread's namespace."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, _NETLINK_NETFILTER)
        sock.bind((0, 0))
    except PermissionError as exc:
        raise PrivilegeError("listing nftables tables") from exc
    except OSError as exc:
        raise BackendError(f"listing nftables tables: {exc.strerror}") from exc
    return sock


def _ask(protocol: int, what: str, kind: int, flags: int, payload: bytes,
         sock: Any = None) -> list[tuple[int, bytes]]:
    """Send one request on ``sock`` if given (see _ask_once), else on a fresh
    netlink socket of ``protocol``; return each
    answer's (type, body). A dump the kernel marks interrupted (the set changed
    while it was read: NLM_F_DUMP_INTR) is asked again, up to 10 times, then
    :class:`BackendError` (an incomplete answer could miss a socket holding a
    port). A kernel error is raised as natmap's (``what`` names the question),
    except that an ENOENT or ENODEV answer is raised as the OSError it is, for
    the caller to read."""
    for _ in range(_DUMP_TRIES):
        answers, interrupted = _ask_once(protocol, what, kind, flags, payload, sock)
        if not interrupted:
            return answers
    raise BackendError(f"{what}: the kernel's answer was interrupted {_DUMP_TRIES} times "
                       "(what it lists kept changing); try again")


def _ask_once(protocol: int, what: str, kind: int, flags: int,
              payload: bytes, kept: Any = None) -> tuple[list[tuple[int, bytes]], bool]:
    """One request; on ``kept`` (a socket of the caller's, left open, which
    must be dropped if this raises: answers may be left in it), else on a
    socket of its own."""
    sock = kept
    if sock is None:
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol)
        except PermissionError as exc:
            raise PrivilegeError(what) from exc
        except OSError as exc:
            raise BackendError(f"{what}: {exc.strerror}") from exc
    answers: list[tuple[int, bytes]] = []
    interrupted = False
    try:
        if kept is None:
            sock.bind((0, 0))
        sock.sendall(_HEADER.pack(_HEADER.size + len(payload), kind, _F_REQUEST | flags, 1, 0) + payload)
        while True:
            data = sock.recv(1 << 17)  # more than the kernel puts in one datagram of a dump
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, msg_type, msg_flags, _, _ = _HEADER.unpack_from(data, offset)
                if length < _HEADER.size:
                    raise BackendError(f"{what}: a malformed netlink answer")
                body = data[offset + _HEADER.size:offset + length]
                offset += (length + 3) & ~3
                interrupted |= bool(msg_flags & _F_DUMP_INTR)
                if msg_type == _NLMSG_DONE:
                    return answers, interrupted
                if msg_type == _NLMSG_ERROR:
                    code = -struct.unpack_from("=i", body)[0]
                    if code == 0:  # the ACK of a request that is not a dump
                        return answers, interrupted
                    if code in (errno.EPERM, errno.EACCES):
                        raise PrivilegeError(what)
                    if code in (errno.ENOENT, errno.ENODEV):
                        raise OSError(code, os.strerror(code))
                    raise BackendError(f"{what}: {os.strerror(code)}")
                answers.append((msg_type, body))
                if not flags & _F_DUMP:
                    return answers, interrupted
    finally:
        if kept is None:
            sock.close()


def _attrs(data: bytes, offset: int = 0) -> dict[int, bytes]:
    """The attributes from ``offset`` on: type -> payload (the first of each type)."""
    found: dict[int, bytes] = {}
    while offset + _ATTR.size <= len(data):
        length, kind = _ATTR.unpack_from(data, offset)
        if length < _ATTR.size:
            break
        found.setdefault(kind & _NLA_TYPE_MASK, data[offset + _ATTR.size:offset + length])
        offset += (length + 3) & ~3
    return found


def _attr(kind: int, value: bytes) -> bytes:
    """One attribute, padded to 4 bytes."""
    raw = _ATTR.pack(_ATTR.size + len(value), kind) + value
    return raw + b"\0" * (-len(raw) % 4)


def _address(family: int, raw: bytes) -> Any:
    return ipaddress.IPv4Address(raw[:4]) if family == socket.AF_INET else ipaddress.IPv6Address(raw[:16])


def listeners(proto: Protocol, ports: Sequence[tuple[int, int]] | None = None) -> list[Listener]:
    """The host sockets holding a port of ``proto``, as pyroute2's sock_diag reads them
    gives them: listening TCP/SCTP sockets, every UDP one (one sock_diag dump a family).

    ``ports``: only those on a port of these (first, last) ranges; the kernel
    is asked for them alone (a sock_diag bytecode filter), so a publish of one
    port does not decode every UDP socket of a busy host. What the kernel
    does not filter (sctp_diag runs no bytecode; more ranges than one filter
    holds) is filtered here."""
    from .host import Listener

    states = (1 << _TCP_LISTEN) if proto is not Protocol.UDP else 0xFFFFFFFF
    found: list[Listener] = []
    if ports is not None and not ports:
        return found
    merged = _merged(ports) if ports is not None else []
    program = _port_filter(merged) if ports is not None else b""
    for family in (socket.AF_INET, socket.AF_INET6):
        request = _DIAG_REQ.pack(family, _IPPROTO[proto], 0, states) + program
        try:
            for _, body in _ask(_NETLINK_SOCK_DIAG, "listing sockets", _SOCK_DIAG_BY_FAMILY, _F_DUMP, request):
                msg_family, _, _, _, sport, _, src, _, _, _, _, _, _, inode = _DIAG_MSG.unpack_from(body)
                v6only = _attrs(body, _DIAG_MSG.size).get(_INET_DIAG_SKV6ONLY, b"\0")[:1] != b"\0"
                found.append(Listener(proto, _address(msg_family, src), int.from_bytes(sport, "big"),
                                      v6only, inode))
        except OSError as exc:
            if isinstance(exc, BackendError):
                raise
            continue  # no diag support for this protocol (sctp_diag not loaded)
    if ports is not None:
        import bisect  # here: natmap-cni imports this module on every ADD

        starts = [first for first, _ in merged]
        found = [s for s in found if (at := bisect.bisect_right(starts, s.port) - 1) >= 0 and s.port <= merged[at][1]]
    return found


def _merged(ports: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """The (first, last) ranges sorted, overlapping and adjacent ones joined."""
    ordered = sorted(ports)
    if not ordered:
        return []
    # A range joins the one before unless it starts past the furthest end so
    # far, plus one (comprehensions, not a loop of tuples: a publish asks 10,000).
    ends = list(itertools.accumulate((last for _, last in ordered), max))
    cuts = [i for i, (first, _) in enumerate(ordered) if i and first > ends[i - 1] + 1]
    return [(ordered[a][0], ends[b - 1]) for a, b in zip([0, *cuts], [*cuts, len(ordered)])]


def _port_filter(merged: list[tuple[int, int]]) -> bytes:
    """A sock_diag bytecode attribute that accepts a socket whose local port is
    in one of the ``merged`` ranges (b"": none, for more ranges than one
    filter should hold).

    The kernel runs the ops in order: a true test moves on by ``yes`` bytes, a
    false one by ``no``; the program accepts by ending exactly at its end and
    rejects by jumping 4 bytes past it (inet_diag_bc_run). Its audit walks the
    ``yes`` chain op by op (inet_diag_bc_audit), so every ``yes`` is the op's
    own length and the way out of a match is a JMP (which always takes
    ``no``), as ss(8) compiles ``sport = a or sport = b``. One range:
    ``S_GE first; S_LE last; JMP end``, 20 bytes; a failed test goes to the
    next range (or, after the last one, to the rejection)."""
    if len(merged) > _BC_MAX_RANGES:
        return b""
    size = 20 * len(merged)
    code = b""
    for i, (first, last) in enumerate(merged):
        at = 20 * i
        left = size - at  # bytes from this block's first op to the end
        code += (_BC_OP.pack(_BC_S_GE, 8, 20 if i + 1 < len(merged) else left + 4) + _BC_OP.pack(0, 0, first)
                 + _BC_OP.pack(_BC_S_LE, 8, 12 if i + 1 < len(merged) else left - 8 + 4) + _BC_OP.pack(0, 0, last)
                 + _BC_OP.pack(_BC_JMP, 4, left - 16))
    return _attr(_INET_DIAG_REQ_BYTECODE, code)


def _index(name: str) -> int | None:
    """The interface's index in the calling thread's namespace, or None."""
    try:
        return socket.if_nametoindex(name)
    except (OSError, ValueError):  # no such interface, or a name no interface can have
        return None


def interface_facts(name: str) -> tuple[str | None, tuple[Any, ...]]:
    """The kind of interface ``name`` (``bridge``, ``veth``, None for a plain
    one) and its addresses as interfaces (``172.30.0.1/24``);
    :class:`UnknownInterfaceError` if it is not there."""
    what = f"reading interface {name}"
    missing = UnknownInterfaceError(f"no interface named {name!r} in this network namespace")
    if not name or len(name.encode()) > 15 or "\0" in name:
        raise missing
    request = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _attr(_IFLA_IFNAME, name.encode() + b"\0")
    try:
        answers = _ask(_NETLINK_ROUTE, what, _RTM_GETLINK, 0, request)
    except OSError as exc:
        if isinstance(exc, BackendError):
            raise
        raise missing from None
    if not answers:
        raise missing
    body = answers[0][1]
    index = _IFINFO.unpack_from(body)[2]
    info = _attrs(body, _IFINFO.size).get(_IFLA_LINKINFO)
    kind_raw = _attrs(info).get(_IFLA_INFO_KIND) if info is not None else None
    kind = kind_raw.rstrip(b"\0").decode() if kind_raw else None
    addresses = []
    for _, body in _ask(_NETLINK_ROUTE, what, _RTM_GETADDR, _F_DUMP, _IFADDR.pack(socket.AF_UNSPEC, 0, 0, 0, 0)):
        family, prefixlen, _, _, at = _IFADDR.unpack_from(body)
        address = _attrs(body, _IFADDR.size).get(_IFA_ADDRESS)
        if at == index and address:
            addresses.append(ipaddress.ip_interface((_address(family, address), prefixlen)))
    return kind, tuple(addresses)


def nft_tables(sock: Any = None) -> dict[str, str | None]:
    """The ``inet`` nftables tables and their comments, in one dump (no
    table's content is read); asked on ``sock`` (:func:`netfilter_socket`,
    to be dropped if this raises) if given."""
    found: dict[str, str | None] = {}
    request = _NFGEN.pack(_NFPROTO_INET, 0, 0)
    for _, body in _ask(_NETLINK_NETFILTER, "listing nftables tables", _NFT_GETTABLE, _F_DUMP, request, sock):
        attrs = _attrs(body, _NFGEN.size)
        name = attrs.get(_NFTA_TABLE_NAME, b"").rstrip(b"\0").decode(errors="replace")
        found[name] = _comment(attrs.get(_NFTA_TABLE_USERDATA))
    return found


def _comment(udata: bytes | None) -> str | None:
    """The comment in an nftables object's user data (libnftnl's TLVs: type, length, value)."""
    offset = 0
    while udata and offset + 2 <= len(udata):
        kind, length = udata[offset], udata[offset + 1]
        value = udata[offset + 2:offset + 2 + length]
        if kind == _UDATA_TABLE_COMMENT:
            return value.rstrip(b"\0").decode(errors="replace")
        offset += 2 + length
    return None


def loopback6_present(bridge_name: str) -> bool:
    """Whether the local route of ``::1`` on ``bridge_name`` (in table
    ``local``) is there."""
    index = _index(bridge_name)
    if index is None:
        return False
    loopback = ipaddress.IPv6Address("::1").packed
    request = _RTMSG.pack(socket.AF_INET6, 0, 0, 0, 0, 0, 0, 0, 0)
    for _, body in _ask(_NETLINK_ROUTE, f"reading the ::1 route on {bridge_name}", _RTM_GETROUTE, _F_DUMP, request):
        _, dst_len, _, _, table, _, _, _, _ = _RTMSG.unpack_from(body)
        attrs = _attrs(body, _RTMSG.size)
        table = struct.unpack("=I", attrs[_RTA_TABLE])[0] if _RTA_TABLE in attrs else table
        oif = struct.unpack("=I", attrs[_RTA_OIF])[0] if _RTA_OIF in attrs else None
        if dst_len == 128 and table == _RT_TABLE_LOCAL and oif == index and attrs.get(_RTA_DST) == loopback:
            return True
    return False

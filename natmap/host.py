"""The host seam: everything natmap asks of the host besides the packet filter.

:class:`Host` declares what the engine needs: the facts (a bridge and its
subnets; the port pool: ``ip_local_port_range``, ``ip_local_reserved_ports``,
listening sockets; whether br_netfilter hooks bridged IPv6), the settings it
makes (``route_localnet`` and the ``::1`` route on a bridge, the bridge hooks
sysctls) and conntrack cleanup. :class:`Session` is the real host, through
pyroute2 and ``/proc/sys``; :class:`FakeHost` holds one in memory, for tests
of the engine that need no root.

Every function acts in the calling thread's network namespace. pyroute2 is
imported on first use, so ``import natmap`` stays light; its errors become
natmap's in one place, :func:`_netlink`.
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from .errors import BackendError, PrivilegeError, UnknownInterfaceError
from .links import Link
from .model import ROUTED_CT_MARK, Binding, Bridge, RoutedBinding, Table
from .spec import PortRange, Protocol

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (2 ms of a `natmap` command)
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any, Protocol as _Protocol

    class Host(_Protocol):
        """What the engine asks of the host it runs on (``NatMap(host=...)``).

        Declared for type checkers only: importing ``typing`` at run time
        would cost every ``natmap`` command. Every call acts in the calling
        thread's network namespace. Errors are natmap's:
        :class:`~natmap.UnknownInterfaceError`, :class:`~natmap.BackendError`,
        :class:`~natmap.PrivilegeError`.
        """

        def bridge(self, name: str) -> Bridge:
            """The interface ``name`` and the subnets of its addresses."""
            ...

        def port_range(self) -> PortRange:
            """Where assigned ports come from (``ip_local_port_range``)."""
            ...

        def reserved_ports(self) -> frozenset[int]:
            """Ports never assigned (``ip_local_reserved_ports``)."""
            ...

        def listening_ports(self, proto: Protocol) -> frozenset[int]:
            """Local ports with a listening (or bound UDP) socket."""
            ...

        def interface_facts(self, name: str) -> tuple[str | None, tuple[Any, ...]]:
            """The kind of interface ``name`` (``bridge``, None for a plain one)
            and its addresses as ``ipaddress`` interfaces (``172.30.0.1/24``)."""
            ...

        def listeners(self, proto: Protocol, ports: Sequence[tuple[int, int]] | None = None) -> list[Listener]:
            """The host sockets holding a port of ``proto``; with ``ports``,
            (first, last) ranges, only those on these ports."""
            ...

        def socket_owner(self, inode: int) -> str | None:
            """``pid 812 (sshd)``: a process holding the socket ``inode``, if known."""
            ...

        def local_addresses(self) -> frozenset[Any]:
            """Every address of every interface, as ``ipaddress`` interfaces."""
            ...

        def nonlocal_bind(self, version: int) -> bool:
            """Whether ``net.ipv{version}.ip_nonlocal_bind`` lets sockets bind any address."""
            ...

        def natmap_tables(self, exclude: tuple[str, str]) -> list[tuple[str, Table]]:
            """The natmap tables of the namespace on either backend, found by
            their markers and read, as (label, table), but ``exclude``
            (backend name, table name)."""
            ...

        def natmap_table_names(self) -> list[tuple[str, str]]:
            """(backend name, table name) of the natmap tables of the
            namespace on either backend, found by their markers; none is read."""
            ...

        def enable_route_localnet(self, bridge_name: str) -> None:
            """Let 127.0.0.0/8 traffic be routed to the bridge (after the guard is in place)."""
            ...

        def enable_loopback6(self, bridge_name: str) -> None:
            """Add the local ``::1`` route on the bridge that replies to [::1] need."""
            ...

        def check_bridge_hooks(self) -> None:
            """Raise unless br_netfilter can pass bridged traffic through the IP hooks."""
            ...

        def hook_bridged_traffic(self) -> None:
            """Pass bridged IPv4 and IPv6 through the IP hooks (``bridge-nf-call-*``)."""
            ...

        def bridged_ipv6_hooked(self) -> bool:
            """Whether bridged IPv6 passes the IP hooks (``bridge-nf-call-ip6tables``)."""
            ...

        # The settings read back (natmap.hoststate keeps them as state).
        def interface_exists(self, name: str) -> bool:
            """Whether an interface of that name is in the namespace."""
            ...

        def route_localnet_enabled(self, bridge_name: str) -> bool:
            """Whether ``net.ipv4.conf.BRIDGE.route_localnet`` is 1."""
            ...

        def bridge_hooks_enabled(self) -> bool:
            """Whether bridged IPv4 and IPv6 both pass the IP hooks; OSError without br_netfilter."""
            ...

        def loopback6_present(self, bridge_name: str) -> bool:
            """Whether the local ``::1`` route on the bridge is there."""
            ...

        def sysctl_writable(self, path: str) -> None:
            """Raise PrivilegeError/BackendError unless ``/proc/sys/PATH`` can be written."""
            ...

        def forget_flows(self, removed: Iterable[Binding] = (), links: Iterable[Link] = (),
                         added: Iterable[Binding] = (), isolated: Iterable[Isolated] = (),
                         routed: Iterable[RoutedBinding] = (),
                         direct: Iterable[DirectCut] = ()) -> int:
            """Delete the conntrack entries a change makes stale; return how many."""
            ...

        def close(self) -> None:
            """Close what the host keeps open (sockets)."""
            ...

    # What isolating a bridge cuts: its subnets, and the (source, target, proto,
    # port) flows links keep open there.
    Isolated = tuple[tuple[Any, ...], frozenset[tuple[Any, Any, Protocol, int]]]
    # What a change that forbids direct flows cuts (natmap.routedcut.closed_direct):
    # the IP version, the bridge's subnets of it, every subnet of the table's bridges.
    DirectCut = tuple[int, tuple[Any, ...], tuple[Any, ...]]

_FALLBACK_RANGE = PortRange(49153, 65535)
# IANA protocol numbers, as socket.IPPROTO_*: importing socket here would be
# a tenth of the time `natmap port` spends importing natmap.
_IPPROTO = {Protocol.TCP: 6, Protocol.UDP: 17, Protocol.SCTP: 132}
_PROTOCOL = {number: proto for proto, number in _IPPROTO.items()}
_FAMILY = {4: 2, 6: 10}  # IP version -> AF_INET, AF_INET6 (socket's, without importing it)
_PORT_DUMPS = 8  # conntrack dumps filtered by port, at most, before one of every port is cheaper


@contextmanager
def _netlink(what: str) -> Iterator[None]:
    """Translate pyroute2's errors into natmap's at this boundary."""
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        yield
    except NetlinkError as exc:
        if exc.code in (errno.EPERM, errno.EACCES):
            raise PrivilegeError(what) from exc
        raise BackendError(f"{what}: {exc}") from exc
    except PermissionError as exc:  # pyroute2 cannot even open the socket
        raise PrivilegeError(what) from exc


def bridge(name: str) -> Bridge:
    """The interface ``name`` and the subnets of its addresses."""
    _, addresses = interface_facts(name)
    subnets = tuple(a.network for a in addresses if not a.ip.is_link_local)
    return Bridge(name, tuple(sorted(set(subnets), key=lambda n: (n.version, n))))


def port_range() -> PortRange:
    """The namespace's ``ip_local_port_range``, where assigned ports come from."""
    try:
        low, high = _sysctl("net/ipv4/ip_local_port_range").split()
        return PortRange(int(low), int(high))
    except (OSError, ValueError):
        return _FALLBACK_RANGE


def reserved_ports() -> frozenset[int]:
    """``ip_local_reserved_ports``: ``8080,9000-9010`` as a set of ports."""
    try:
        text = _sysctl("net/ipv4/ip_local_reserved_ports")
    except OSError:
        return frozenset()
    ports: set[int] = set()
    for item in filter(None, text.strip().split(",")):
        low, _, high = item.partition("-")
        ports.update(range(int(low), int(high or low) + 1))
    return frozenset(ports)


class Listener:
    """A host socket holding a port: a listening TCP/SCTP socket or a bound UDP one.

    ``address`` is what it is bound to (``0.0.0.0`` / ``::`` for every
    address); ``v6only`` whether a ``::`` socket leaves IPv4 alone;
    ``inode`` the socket's inode, which :func:`socket_owner` maps to a process.
    An IPv6 socket bound to an IPv4-mapped address (``::ffff:127.0.0.1``,
    ``::ffff:0.0.0.0``) holds that IPv4 address's port, so it is read as the
    IPv4 address (``127.0.0.1``, ``0.0.0.0``), as the kernel's bind treats it.
    """

    __slots__ = ("proto", "address", "port", "v6only", "inode")

    def __init__(self, proto: Protocol, address: Any, port: int, v6only: bool, inode: int) -> None:
        if address.version == 6 and address.ipv4_mapped is not None:
            address, v6only = address.ipv4_mapped, False
        self.proto, self.address, self.port, self.v6only, self.inode = proto, address, port, v6only, inode

    def __str__(self) -> str:
        from .spec import format_ip

        return f"{format_ip(self.address)}:{self.port}/{self.proto.value}"


def socket_owner(inode: int) -> str | None:
    """``pid 812 (sshd)``: a process holding the socket ``inode``, if /proc tells."""
    import os

    target = f"socket:[{inode}]"
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") == target for fd in fds):
                with open(f"/proc/{pid}/comm") as f:
                    return f"pid {pid} ({f.read().strip()})"
        except OSError:
            continue  # gone meanwhile, or not ours to read
    return None


def local_addresses() -> frozenset[Any]:
    """Every address of every interface of the namespace, with its prefix
    (``ipaddress.ip_interface``: ``10.0.0.1/24``)."""
    from pyroute2 import IPRoute

    with _netlink("reading addresses"), IPRoute() as ipr:
        return frozenset(ipaddress.ip_interface(f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}")
                         for msg in ipr.get_addr() if msg.get_attr("IFA_ADDRESS"))


def nonlocal_bind(version: int) -> bool:
    """Whether ``net.ipv4.ip_nonlocal_bind`` (or ipv6) lets sockets bind any address."""
    try:
        return _sysctl(f"net/ipv{version}/ip_nonlocal_bind").strip() == "1"
    except OSError:
        return False


def interface_facts(name: str) -> tuple[str | None, tuple[Any, ...]]:
    """The kind of interface ``name`` (``bridge``, ``veth``, None for a plain
    one) and its addresses as interfaces (``172.30.0.1/24``), asked on the
    standard library's netlink socket (:mod:`natmap.nlquery`);
    :class:`UnknownInterfaceError` if it is not there."""
    from .nlquery import interface_facts as asked

    return asked(name)


def nft_tables() -> dict[str, str | None]:
    """The ``inet`` nftables tables of the namespace and their comments, in one
    netlink dump (no elements are read, whatever the tables hold)."""
    from .nlquery import nft_tables as asked

    return asked()


def natmap_table_names(listing: Callable[[], dict[str, str | None]] | None = None) -> list[tuple[str, str]]:
    """(backend name, table name) of the natmap tables of the namespace, both
    backends, found by their markers (nft: the table's comment; iptables: the
    marker rule); nothing in them is read. ``listing`` lists the nft tables
    (default :func:`nft_tables`)."""
    from .backends import iptables_in_use
    from .guest import owner_of

    found = [("nft", name) for name, comment in (listing or nft_tables)().items() if owner_of(comment) == name]
    if iptables_in_use():  # else importing the backend to find no tables would cost more than the rest
        from .backends.iptables import natmap_tables as iptables_tables

        found += [("iptables", name) for name in iptables_tables()]
    return found


def natmap_tables(exclude: tuple[str, str], *,
                  listing: Callable[[], dict[str, str | None]] | None = None) -> list[tuple[str, Table]]:
    """The natmap tables of the namespace, both backends, found by their
    markers (nft: the table's comment; iptables: the marker rule) and read,
    as (label, table); but ``exclude``, (backend name, table name).
    ``listing`` lists the nft tables (default :func:`nft_tables`)."""
    from .backends import make_backend
    from .errors import ConflictError

    others = []
    for backend, name in natmap_table_names(listing):
        label = f"table inet {name} (nft)" if backend == "nft" else f"table {name} (iptables)"
        if (backend, name) != exclude:
            reader = make_backend(backend, name)
            try:
                table = reader.read()
            except ConflictError:
                continue  # a half-marked table: not natmap's to count
            finally:
                reader.close()
            others.append((label, Table() if table is None else table))  # one of bridges alone is falsy
    return others


def enable_route_localnet(bridge_name: str) -> None:
    """Let 127.0.0.0/8 traffic be routed to ``bridge_name`` (localhost bindings)."""
    path = f"net/ipv4/conf/{bridge_name}/route_localnet"
    if _sysctl(path).strip() != "1":
        _write_sysctl(path, "1")


def enable_loopback6(bridge_name: str) -> None:
    """Let replies to connections from ``[::1]`` come back from ``bridge_name``.

    IPv6 has no ``route_localnet``: a reply de-NATed to ``::1`` that arrives on
    the bridge is routed with a strict interface match, so it needs a local
    route for ``::1`` on the bridge itself. Packets that arrive addressed to
    ``::1`` are still dropped by the kernel before routing (and by natmap's
    localhost guard).
    """
    from socket import AF_INET6

    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with _netlink(f"adding the ::1 route on {bridge_name}"), IPRoute() as ipr:
        index = ipr.link_lookup(ifname=bridge_name)
        if not index:
            raise UnknownInterfaceError(f"no interface named {bridge_name!r} in this network namespace")
        try:
            ipr.route("add", dst="::1/128", family=AF_INET6, type="local", table=255,
                      oif=index[0], priority=1024)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise


def check_bridge_hooks() -> None:
    """Raise unless br_netfilter can pass bridged traffic through the IP hooks."""
    try:
        _sysctl("net/bridge/bridge-nf-call-iptables")
    except OSError as exc:
        raise BackendError("isolating a bridge needs br_netfilter "
                           "(net.bridge.bridge-nf-call-iptables is missing)") from exc


def hook_bridged_traffic() -> None:
    """Pass bridged IPv4 and IPv6 through the IP hooks, as Docker does for --icc=false."""
    for path in ("net/bridge/bridge-nf-call-iptables", "net/bridge/bridge-nf-call-ip6tables"):
        if _sysctl(path).strip() != "1":
            _write_sysctl(path, "1")


def bridged_ipv6_hooked() -> bool:
    """Whether br_netfilter runs bridged IPv6 through the IP hooks
    (``net.bridge.bridge-nf-call-ip6tables``). Then replies to ``::1`` are
    de-NATed before the kernel's loopback check, which drops them."""
    try:
        return _sysctl("net/bridge/bridge-nf-call-ip6tables").strip() == "1"
    except OSError:
        return False


class Session:
    """The real :class:`Host`: the functions of this module, and a conntrack
    socket kept open for the cleanup natmap does on every change (opening a
    pyroute2 socket costs more than using one). The socket belongs to the
    namespace it was opened in, so a session must only be used in one
    namespace (NatMap sees to that)."""

    def __init__(self) -> None:
        self._conntrack: dict[int, Any] = {}  # by family: see _socket
        self._netfilter: Any = None  # the socket nft tables are listed on: see _nft_tables
        self._lock = threading.Lock()

    # The facts and settings: this module's functions (see each one).
    def bridge(self, name: str) -> Bridge:
        return bridge(name)

    def port_range(self) -> PortRange:
        return port_range()

    def reserved_ports(self) -> frozenset[int]:
        return reserved_ports()

    # The guest checks' questions run on every publish: asked through
    # natmap.nlquery's stdlib sockets, a tenth of a millisecond each, where
    # pyroute2's sockets took 1-2 ms to set up (9-11 ms a one-port publish).
    def listening_ports(self, proto: Protocol) -> frozenset[int]:
        return frozenset(s.port for s in self.listeners(proto))

    def interface_facts(self, name: str) -> tuple[str | None, tuple[Any, ...]]:
        return interface_facts(name)

    def listeners(self, proto: Protocol, ports: Sequence[tuple[int, int]] | None = None) -> list[Listener]:
        from .nlquery import listeners as asked

        return asked(proto, ports)

    def socket_owner(self, inode: int) -> str | None:
        return socket_owner(inode)

    def local_addresses(self) -> frozenset[Any]:
        return local_addresses()

    def nonlocal_bind(self, version: int) -> bool:
        return nonlocal_bind(version)

    def natmap_tables(self, exclude: tuple[str, str]) -> list[tuple[str, Table]]:
        return natmap_tables(exclude, listing=self._nft_tables)

    def natmap_table_names(self) -> list[tuple[str, str]]:
        return natmap_table_names(self._nft_tables)

    def _nft_tables(self) -> dict[str, str | None]:
        """nlquery.nft_tables on a socket kept open (see nlquery.netfilter_socket);
        a socket a failed question may have left answers in is dropped."""
        from . import nlquery

        with self._lock:
            if self._netfilter is None:
                self._netfilter = nlquery.netfilter_socket()
            try:
                return nlquery.nft_tables(self._netfilter)
            except BaseException:
                self._netfilter.close()
                self._netfilter = None
                raise

    def enable_route_localnet(self, bridge_name: str) -> None:
        enable_route_localnet(bridge_name)

    def enable_loopback6(self, bridge_name: str) -> None:
        enable_loopback6(bridge_name)

    def check_bridge_hooks(self) -> None:
        check_bridge_hooks()

    def hook_bridged_traffic(self) -> None:
        hook_bridged_traffic()

    def bridged_ipv6_hooked(self) -> bool:
        return bridged_ipv6_hooked()

    def interface_exists(self, name: str) -> bool:
        return interface_exists(name)

    def route_localnet_enabled(self, bridge_name: str) -> bool:
        return route_localnet_enabled(bridge_name)

    def bridge_hooks_enabled(self) -> bool:
        return bridge_hooks_enabled()

    def loopback6_present(self, bridge_name: str) -> bool:
        return loopback6_present(bridge_name)

    def sysctl_writable(self, path: str) -> None:
        sysctl_writable(path)

    def forget_flows(self, removed: Iterable[Binding] = (), links: Iterable[Link] = (),
                     added: Iterable[Binding] = (), isolated: Iterable[Isolated] = (),
                     routed: Iterable[RoutedBinding] = (), direct: Iterable[DirectCut] = ()) -> int:
        """Delete the conntrack entries that would keep steering traffic the old way.

        Only flows natmap changes qualify: a binding's are those whose ORIGINAL
        destination is its host address (any of the namespace's own addresses
        for 0.0.0.0 / ::), what the DNAT catches; flows the host forwards are
        never touched.

        - a ``removed`` binding's: flows to its host address, port and protocol
          that were translated to its container;
        - a removed ``link``'s: flows from its source to its target's ports;
        - an ``added`` binding's stale ones: unanswered flows to its host port
          that go elsewhere (an unanswered UDP flow to the host keeps bypassing
          a new binding until its entry expires). Only for UDP and SCTP: a TCP
          flow without an answer is refused at once;
        - an ``isolated`` bridge's: flows between two addresses of its subnets
          that no link opens (isolation drops their next packets);
        - a closed ``routed`` binding's (its container port no longer open
          to routed traffic): flows to its container address, protocol and
          port(s) that carry natmap's conntrack mark (``ROUTED_CT_MARK``,
          set by the routed accept rule on the flows it lets in). Conntrack
          does not record where a flow came from: the mark is what tells a
          flow natmap let in from the container's own, a trusted
          interface's or a forwarded one, none of which is touched;
        - a ``direct`` cut's (a bridge's family closed to direct flows: it left
          ``nat-unprotected``, or an interface is trusted no more): flows not
          DNATed whose original destination is a container address of the
          bridge's subnets of that family and whose source is neither the
          host's own nor in a subnet of the table's bridges. Conntrack cannot
          tell which interface a flow came in on: a flow still allowed (from
          an interface still trusted, to a routed binding's port) is cut too,
          and its next packet, a new flow under ``nf_conntrack_tcp_loose``
          (the default), meets the rules now in place and is let in again.

        Both families: a dump and a delete each name one (pyroute2's socket
        carries it), so IPv4 and IPv6 entries are asked for and deleted
        through a socket of their own family.

        The kernel walks its whole hash table for a dump, about 10 ms here
        whatever the number of bindings, and hands back only the entries of
        the family and protocol (for removed bindings: one dump of the
        translated entries of every family, as pyroute2 takes about 1 ms to
        decode an entry). Each entry is then tested only against the
        bindings and link flows of its own family, protocol and destination
        port. It runs under the table's lock, before the change is marked
        done in the store: after the lock is released another process could
        publish the same binding again, and its new flows would be cut; and
        a process that died after releasing it would leave the flows uncut
        with nothing pending to tell the next one (inside, the next holder
        finishes a pending change, flows included). Under the lock it costs
        one dump a group (tens of ms) plus a netlink call per flow deleted.
        """
        from pyroute2.netlink.exceptions import NetlinkError

        removed, links, isolated, direct = list(removed), list(links), list(isolated), list(direct)
        routed = list(routed)
        tcp = Protocol.TCP  # looked up once: an enum member's lookup costs more than the test, 10,000 times
        stale = [b for b in added if b.proto is not tcp]
        if not (removed or stale or links or isolated or direct or routed):
            return 0  # nothing to cut (a TCP publish): no tests to build
        local = _LazyLocal()
        # (family, proto, original destination port, test): each test matches flows to
        # one port (None: to any port, as a same-port range's or an isolated bridge's).
        matchers: list[tuple[int, Protocol, int | None, Any]] = [
            (_FAMILY[s.version], proto, port, functools.partial(_link_flow, (s, t, port)))
            for link in links for s, t, proto, port in link.flows()]
        matchers += [(_FAMILY[version], proto, None, functools.partial(_isolated_flow, cut, local))
                     for cut in isolated for version in {net.version for net in cut[0]} for proto in Protocol]
        matchers += [(_FAMILY[cut[0]], proto, None, functools.partial(_direct_flow, cut, local))
                     for cut in direct for proto in Protocol]
        # The bindings' tests are made only once the kernel has handed back
        # entries to test (10,000 of them cost more than the dump of none).
        # A group's keys: (family, protocol, destination port or None for any).
        # (nat only, conntrack mark, keys, tests)
        groups: tuple[tuple[bool, int | None, set[tuple[int, Protocol, int | None]], Any], ...] = (
            (True, None, {(_FAMILY[v], proto, None) for v, proto in {(b.key[0], b.proto) for b in removed}},
             lambda: [_matcher(_translated_for, b, local) for b in removed]),
            (False, None, {(family, proto, None) for family, proto, _, _ in matchers}
             | {(_FAMILY[b.version], b.proto, b.host_port if b.count == 1 else None) for b in stale},
             lambda: matchers + [_matcher(_stale_for, b, local) for b in stale]),
            (False, ROUTED_CT_MARK, {_routed_key(b) for b in routed},
             lambda: [(*_routed_key(b), functools.partial(_routed_flow, b)) for b in routed]))
        deleted = 0
        if not (removed or stale or matchers or routed):
            return deleted
        with self._lock, _netlink("cleaning conntrack"):
            for nat_only, mark, keys, tests_for in groups:
                entries = self._entries(keys, nat_only, mark) if keys else []
                by_key = _tests_by_port(tests_for()) if entries else {}
                for entry in entries:
                    proto = _PROTOCOL.get(entry.tuple_orig.proto)  # a kernel without dump filters hands back all
                    tests_of = by_key.get((entry.tuple_orig.family, proto), {}) if proto else {}
                    tests = [*tests_of.get(entry.tuple_orig.dport, ()), *tests_of.get(None, ())]
                    if mark is not None and (entry.mark or 0) & mark != mark:
                        continue  # not a flow natmap marked (an old kernel may not filter by mark)
                    if not any(test(entry.tuple_orig, entry.tuple_reply, entry.status) for test in tests):
                        continue
                    try:
                        self._socket(entry.tuple_orig.family).delete(entry)
                        deleted += 1
                    except NetlinkError as exc:
                        if exc.code != errno.ENOENT:  # ENOENT: it timed out meanwhile
                            raise
        return deleted

    def _socket(self, family: int) -> Any:
        """The conntrack socket of ``family`` (AF_UNSPEC: a dump of every
        family), opened on first use and kept."""
        from pyroute2 import Conntrack

        if family not in self._conntrack:
            self._conntrack[family] = Conntrack(nfgen_family=family)
        return self._conntrack[family]

    def _entries(self, keys: Iterable[tuple[int, Protocol, int | None]], nat_only: bool,
                 mark: int | None = None) -> list[Any]:
        """The conntrack entries of ``keys`` (family, protocol, original
        destination port or None for any), with ``mark``: only those whose
        conntrack mark has those bits set, read in full before any is deleted
        (pyroute2 cannot delete while a dump runs). With ``nat_only``: those
        whose destination was translated, of every family in one dump (the
        kernel filters by status, Linux 5.15+, but not by status and protocol
        at once, nor by a tuple without a family); otherwise one dump a
        family and protocol, or (a few ports: a new UDP binding's stale flows)
        one a port, filtered by the kernel (Linux 5.8+; an older one hands
        back more, which the caller's tests leave alone)."""
        from pyroute2.conntrack import ConntrackEntry
        from pyroute2.netlink.nfnetlink.nfctsocket import IPS_DST_NAT, NFCTAttrTuple

        if nat_only:
            numbers = {_IPPROTO[proto] for _, proto, _ in keys}
            return [ConntrackEntry(msg["nfgen_family"], *map(msg.get_attr, _ENTRY_ATTRS))
                    for msg in self._socket(0).dump(status=IPS_DST_NAT, status_mask=IPS_DST_NAT)
                    if msg.get_attr("CTA_TUPLE_ORIG").get_attr("CTA_TUPLE_PROTO").get_attr("CTA_PROTO_NUM")
                    in numbers]
        ports: dict[tuple[int, Protocol], set[int | None]] = {}
        for family, proto, port in keys:
            ports.setdefault((family, proto), set()).add(port)
        entries = []
        for (family, proto), wanted in ports.items():
            # Any port asked, or more ports than dumps are worth: one dump of them all.
            for port in (None,) if None in wanted or len(wanted) > _PORT_DUMPS else wanted:
                entries += self._socket(family).dump_entries(
                    tuple_orig=NFCTAttrTuple(family=family, proto=_IPPROTO[proto], dport=port),
                    **({} if mark is None else {"mark": mark, "mark_mask": mark}))
        return entries

    def close(self) -> None:
        with self._lock:
            for ct in self._conntrack.values():
                ct.close()
            self._conntrack.clear()
            if self._netfilter is not None:
                self._netfilter.close()
                self._netfilter = None


class FakeHost:
    """A :class:`Host` held in memory, for tests of the engine that need no root.

    Its facts are what the test gives: ``bridges``; the port pool (``ports``,
    ``reserved``, ``listening`` ports by protocol); whether br_netfilter is
    there (``br_netfilter``) and bridged IPv6 passes the IP hooks
    (``bridged_ipv6``). The guest facts (natmap.guest): ``sockets``, host
    sockets as :class:`Listener` values (a ``listening`` port is also a
    socket on every address, of no known process); ``interfaces``, more
    interfaces by name as (kind, addresses) beside the bridges (kind
    ``bridge``, no address); ``addresses``, every local address as an
    ``ipaddress`` interface; ``nonlocal_bind``; ``others``, the namespace's
    other natmap tables as (label, Table). What natmap sets is recorded:
    ``route_localnet`` and ``loopback6`` (bridge names),
    ``bridged_ipv4``/``bridged_ipv6`` (turned on by
    :meth:`hook_bridged_traffic`), ``forgotten`` (the removed, links and added
    arguments of each :meth:`forget_flows`), ``cut`` (its isolated ones),
    ``routed_cut`` (its routed ones) and ``direct_cut`` (its direct ones).
    ``events`` names every call, in order (share one list with a
    ``FakeBackend`` to see the order of both).
    """

    def __init__(self, bridges: Iterable[Bridge] = (), *, ports: PortRange = _FALLBACK_RANGE,
                 reserved: Iterable[int] = (), listening: Mapping[Protocol, Iterable[int]] | None = None,
                 br_netfilter: bool = True, bridged_ipv6: bool = False,
                 sockets: Iterable[Listener] = (),
                 interfaces: Mapping[str, tuple[str | None, tuple[Any, ...]]] | None = None,
                 addresses: Iterable[Any] = (), nonlocal_bind: bool = False,
                 others: Iterable[tuple[str, Table]] = (),
                 events: list[str] | None = None) -> None:
        self.bridges = {b.name: b for b in bridges}
        self.ports = ports
        self.reserved = frozenset(reserved)
        self.listening = {proto: frozenset(p) for proto, p in (listening or {}).items()}
        self.sockets = list(sockets)
        self.interfaces = dict(interfaces or {})
        self.addresses = frozenset(addresses)
        self.nonlocal_ok = nonlocal_bind
        self.others = list(others)
        self.cut: list[list[Isolated]] = []
        self.routed_cut: list[list[RoutedBinding]] = []
        self.direct_cut: list[list[DirectCut]] = []
        self.br_netfilter = br_netfilter
        self.bridged_ipv4 = False
        self.bridged_ipv6 = bridged_ipv6
        self.route_localnet: set[str] = set()
        self.loopback6: set[str] = set()
        self.forgotten: list[tuple[list[Binding], list[Link], list[Binding]]] = []
        self.closed = False
        self.events = [] if events is None else events

    def bridge(self, name: str) -> Bridge:
        self.events.append("host.bridge")
        if name not in self.bridges:
            raise UnknownInterfaceError(f"no interface named {name!r} in this network namespace")
        return self.bridges[name]

    def port_range(self) -> PortRange:
        self.events.append("host.port_range")
        return self.ports

    def reserved_ports(self) -> frozenset[int]:
        self.events.append("host.reserved_ports")
        return self.reserved

    def listening_ports(self, proto: Protocol) -> frozenset[int]:
        self.events.append("host.listening_ports")
        return self.listening.get(proto, frozenset())

    def interface_facts(self, name: str) -> tuple[str | None, tuple[Any, ...]]:
        self.events.append("host.interface_facts")
        if name in self.interfaces:
            return self.interfaces[name]
        self.bridge(name)  # UnknownInterfaceError if there is none
        return "bridge", ()

    def listeners(self, proto: Protocol, ports: Sequence[tuple[int, int]] | None = None) -> list[Listener]:
        self.events.append("host.listeners")
        wildcard = ipaddress.IPv4Address(0)
        found = ([s for s in self.sockets if s.proto is proto]
                 + [Listener(proto, wildcard, port, False, 0) for port in sorted(self.listening.get(proto, ()))])
        return found if ports is None else [s for s in found if any(a <= s.port <= b for a, b in ports)]

    def socket_owner(self, inode: int) -> str | None:
        return None

    def local_addresses(self) -> frozenset[Any]:
        self.events.append("host.local_addresses")
        return self.addresses

    def nonlocal_bind(self, version: int) -> bool:
        return self.nonlocal_ok

    def natmap_tables(self, exclude: tuple[str, str]) -> list[tuple[str, Table]]:
        self.events.append("host.natmap_tables")
        return list(self.others)

    def natmap_table_names(self) -> list[tuple[str, str]]:
        """Those of ``others``, by their labels (``table inet NAME (nft)``, ``table NAME (iptables)``)."""
        self.events.append("host.natmap_table_names")
        return [(label.rsplit("(", 1)[1].rstrip(")"), label.split()[-2]) for label, _ in self.others]

    def enable_route_localnet(self, bridge_name: str) -> None:
        self.events.append("host.enable_route_localnet")
        self.route_localnet.add(self.bridge(bridge_name).name)

    def enable_loopback6(self, bridge_name: str) -> None:
        self.events.append("host.enable_loopback6")
        self.loopback6.add(self.bridge(bridge_name).name)

    def check_bridge_hooks(self) -> None:
        self.events.append("host.check_bridge_hooks")
        if not self.br_netfilter:
            raise BackendError("isolating a bridge needs br_netfilter "
                               "(net.bridge.bridge-nf-call-iptables is missing)")

    def hook_bridged_traffic(self) -> None:
        self.events.append("host.hook_bridged_traffic")
        self.check_bridge_hooks()
        self.bridged_ipv4 = self.bridged_ipv6 = True

    def bridged_ipv6_hooked(self) -> bool:
        self.events.append("host.bridged_ipv6_hooked")
        return self.bridged_ipv6

    def forget_flows(self, removed: Iterable[Binding] = (), links: Iterable[Link] = (),
                     added: Iterable[Binding] = (), isolated: Iterable[Isolated] = (),
                     routed: Iterable[RoutedBinding] = (), direct: Iterable[DirectCut] = ()) -> int:
        self.events.append("host.forget_flows")
        self.forgotten.append((list(removed), list(links), list(added)))
        self.cut.append(list(isolated))
        self.routed_cut.append(list(routed))
        self.direct_cut.append(list(direct))
        return 0

    # The host settings read back (natmap.hoststate): what natmap set here.
    def interface_exists(self, name: str) -> bool:
        return name in self.bridges or name in self.interfaces

    def route_localnet_enabled(self, bridge_name: str) -> bool:
        return bridge_name in self.route_localnet

    def bridge_hooks_enabled(self) -> bool:
        if not self.br_netfilter:
            raise OSError("br_netfilter is not loaded")
        return self.bridged_ipv4 and self.bridged_ipv6

    def loopback6_present(self, bridge_name: str) -> bool:
        return bridge_name in self.loopback6

    def sysctl_writable(self, path: str) -> None:
        pass  # a fake host's settings can always be written

    def close(self) -> None:
        self.closed = True


def _tests_by_port(matchers: Iterable[tuple[int, Protocol, int | None, Any]],
                   ) -> dict[tuple[int, Protocol], dict[int | None, list[Any]]]:
    """The tests by family, protocol and destination port: each conntrack
    entry is then tested only against the few that can match it
    (O(entries + bindings), not O(entries x bindings): 10,000 bindings and
    2,000 entries took 43 s)."""
    by_port: dict[tuple[int, Protocol], dict[int | None, list[Any]]] = {}
    for family, proto, port, test in matchers:
        by_port.setdefault((family, proto), {}).setdefault(port, []).append(test)
    return by_port


def _matcher(test: Any, binding: Binding, local: Any) -> tuple[int, Protocol, int | None, Any]:
    """A binding's test (guest's predicate: which flows qualify) keyed for the
    indexed loop (how fast): on its port, or on None for a same-port range."""
    family = _FAMILY[binding.version]
    if binding.count == 1:
        return family, binding.proto, binding.host_port, functools.partial(test, binding, local)
    return family, binding.proto, None, functools.partial(_in_range, test, binding, local)


def _in_range(test: Any, binding: Binding, local: Any, orig: Any, reply: Any, status: int = 0) -> bool:
    """``test`` for the one port of a same-port range that a flow goes to."""
    port = orig.dport
    return binding.host_port <= port <= binding.last_port and bool(test(binding.at(port), local, orig, reply, status))


# What pyroute2's ConntrackEntry is made from, in its order.
_ENTRY_ATTRS = ("CTA_TUPLE_ORIG", "CTA_TUPLE_REPLY", "CTA_STATUS", "CTA_TIMEOUT", "CTA_PROTOINFO",
                "CTA_MARK", "CTA_ID", "CTA_USE", "CTA_ZONE")


class _LazyLocal:
    """The namespace's own addresses, read on the first question (the
    conntrack cleanup runs in the namespace, and most changes ask nothing)."""

    def __init__(self) -> None:
        self._addresses: frozenset[Any] | None = None

    def __contains__(self, address: Any) -> bool:
        if self._addresses is None:
            self._addresses = frozenset(i.ip for i in local_addresses())
        return address.is_loopback or address in self._addresses


_SEEN_REPLY = 1 << 1  # IPS_SEEN_REPLY: the flow has been answered


def _to_host_port(binding: Binding, local: Any, orig: Any) -> bool:
    """Whether a flow's original direction goes to the binding's host side: the
    DNAT would catch it (a wildcard binding catches only the host's own addresses)."""
    address = _ip(orig.daddr)
    if orig.dport != binding.host_port or address is None or address.version != binding.version:
        return False
    return address == binding.host_ip or (binding.host_ip.is_unspecified and address in local)


def _translated_for(binding: Binding, local: Any, orig: Any, reply: Any, status: int = 0) -> bool:
    return (_to_host_port(binding, local, orig)
            and _ip(reply.saddr) == binding.container_ip and reply.sport == binding.container_port)


def _stale_for(binding: Binding, local: Any, orig: Any, reply: Any, status: int = 0) -> bool:
    return (not status & _SEEN_REPLY and _to_host_port(binding, local, orig)
            and not _translated_for(binding, local, orig, reply))


def _routed_key(binding: RoutedBinding) -> tuple[int, Protocol, int | None]:
    """A routed binding's flows keyed as :func:`_tests_by_port` keys them: on
    the container port they go to (None: any port, for a same-port range)."""
    return _FAMILY[binding.version], binding.proto, binding.container_port if binding.count == 1 else None


def _routed_flow(binding: RoutedBinding, orig: Any, reply: Any, status: int = 0) -> bool:
    """A flow whose original destination is the routed binding's container
    address and one of its container ports (the caller tests natmap's mark)."""
    return (_ip(orig.daddr) == binding.container_ip
            and binding.container_port <= (orig.dport or 0) < binding.container_port + binding.count)


def _link_flow(flow: tuple[Any, Any, int], orig: Any, reply: Any, status: int = 0) -> bool:
    source, target, port = flow
    return bool(_ip(orig.saddr) == source and _ip(orig.daddr) == target and orig.dport == port)


def _isolated_flow(cut: Isolated, local: Any, orig: Any, reply: Any, status: int = 0) -> bool:
    """A flow between two containers of an isolated bridge that no link opens."""
    subnets, allowed = cut
    source, target = _ip(orig.saddr), _ip(orig.daddr)
    if source is None or target is None or source in local or target in local:
        return False  # to or from the host itself: isolation does not forbid it
    if not any(source in net for net in subnets) or not any(target in net for net in subnets):
        return False
    return (source, target, _PROTOCOL.get(orig.proto), orig.dport) not in allowed


_DST_NAT = 1 << 5  # IPS_DST_NAT: the flow's destination was translated (a binding's)


def _direct_flow(cut: DirectCut, local: Any, orig: Any, reply: Any, status: int = 0) -> bool:
    """A flow routed straight to a container of the bridge a direct cut names:
    not DNATed, to an address of its subnets, from outside the table's bridges
    and not from the host itself (which a bridge's protection never sees)."""
    _, subnets, bridges = cut
    if status & _DST_NAT:
        return False
    source, target = _ip(orig.saddr), _ip(orig.daddr)
    if source is None or target is None or source in local or target in local:
        return False
    return any(target in net for net in subnets) and not any(source in net for net in bridges)


def _ip(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    return ipaddress.ip_address(text) if text else None


def _sysctl(path: str) -> str:
    """The whole value of ``/proc/sys/PATH``, as text.

    Read whole in one read from offset 0: the kernel formats some values
    (proc_do_large_bitmap's: ``ip_local_reserved_ports``) only for a read at
    offset 0 and answers a read further on with end of file, so reading on
    in chunks cut a long list at 4096 characters. A value that fills the
    buffer may be cut: it is read again from offset 0 with one 8 times as
    large (a buffer of 512 KiB for every read cost 40 us each; the longest
    list of ports, pairs such as ``1-2,4-5``, is 254,736 bytes: a third read
    at most). os.pread, not a file object: that makes six more system calls
    (fstat, ioctl, lseeks), and a change reads several sysctls."""
    fd = os.open(f"/proc/sys/{path}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = 4096
        while len(data := os.pread(fd, size, 0)) == size:
            size *= 8
        return data.decode()
    finally:
        os.close(fd)


def _write_sysctl(path: str, value: str) -> None:
    try:
        with open(f"/proc/sys/{path}", "w") as f:
            f.write(value)
    except PermissionError as exc:
        raise PrivilegeError(f"setting {path.replace('/', '.')}") from exc
    except OSError as exc:
        raise BackendError(f"cannot set {path.replace('/', '.')}={value}: {exc.strerror}") from exc


# --- the host settings natmap needs, read back (natmap.hoststate keeps them as state) ---


def interface_exists(name: str) -> bool:
    return os.path.exists(f"/proc/sys/net/ipv4/conf/{name}")  # /proc/sys/net is the calling thread's namespace; /sys is not


def route_localnet_enabled(bridge_name: str) -> bool:
    return _sysctl(f"net/ipv4/conf/{bridge_name}/route_localnet").strip() == "1"


def bridge_hooks_enabled() -> bool:
    return all(_sysctl(f"net/bridge/bridge-nf-call-{tool}").strip() == "1" for tool in ("iptables", "ip6tables"))


def loopback6_present(bridge_name: str) -> bool:
    """Whether the local ``::1`` route on ``bridge_name`` (see enable_loopback6) is there."""
    from .nlquery import loopback6_present as asked

    return asked(bridge_name)


def sysctl_writable(path: str) -> None:
    """Raise (as _write_sysctl would) unless ``path`` under /proc/sys can be
    written; nothing is written. Asked before a kernel change that needs it."""
    try:
        os.close(os.open(f"/proc/sys/{path}", os.O_WRONLY))
    except PermissionError as exc:
        raise PrivilegeError(f"setting {path.replace('/', '.')}") from exc
    except OSError as exc:
        raise BackendError(f"cannot set {path.replace('/', '.')}: {exc.strerror}") from exc

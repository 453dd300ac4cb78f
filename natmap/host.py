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
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from .errors import BackendError, PrivilegeError, UnknownInterfaceError
from .links import Link
from .model import Binding, Bridge
from .spec import PortRange, Protocol

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (2 ms of a `natmap` command)
if TYPE_CHECKING:
    from collections.abc import Mapping
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

        def forget_flows(self, removed: Iterable[Binding] = (), links: Iterable[Link] = (),
                         added: Iterable[Binding] = ()) -> int:
            """Delete the conntrack entries a change makes stale; return how many."""
            ...

        def close(self) -> None:
            """Close what the host keeps open (sockets)."""
            ...

_FALLBACK_RANGE = PortRange(49153, 65535)
_TCP_LISTEN = 10
# IANA protocol numbers, as socket.IPPROTO_*: importing socket here would be
# a tenth of the time `natmap port` spends importing natmap.
_IPPROTO = {Protocol.TCP: 6, Protocol.UDP: 17, Protocol.SCTP: 132}


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
    from pyroute2 import IPRoute

    with _netlink(f"reading interface {name}"), IPRoute() as ipr:
        index = ipr.link_lookup(ifname=name)
        if not index:
            raise UnknownInterfaceError(f"no interface named {name!r} in this network namespace")
        subnets = tuple(
            ipaddress.ip_network(f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}", strict=False)
            for msg in ipr.get_addr(index=index[0])
            if msg.get_attr("IFA_ADDRESS") and not ipaddress.ip_address(msg.get_attr("IFA_ADDRESS")).is_link_local
        )
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


def listening_ports(proto: Protocol) -> frozenset[int]:
    """Local ports with a listening TCP/SCTP socket or a bound UDP socket."""
    from socket import AF_INET, AF_INET6

    from pyroute2 import DiagSocket

    states = (1 << _TCP_LISTEN) if proto is not Protocol.UDP else 0xFFFFFFFF
    ports: set[int] = set()
    with _netlink("listing sockets"), DiagSocket() as diag:
        diag.bind()
        for family in (AF_INET, AF_INET6):
            try:
                answers = diag.get_sock_stats(family=family, states=states, protocol=_IPPROTO[proto])
            except OSError:
                continue  # no diag support for this protocol (sctp_diag not loaded)
            ports.update(msg["idiag_sport"] for msg in answers)
    return frozenset(ports)


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
        self._conntrack: Any = None
        self._lock = threading.Lock()

    # The facts and settings: this module's functions (see each one).
    def bridge(self, name: str) -> Bridge:
        return bridge(name)

    def port_range(self) -> PortRange:
        return port_range()

    def reserved_ports(self) -> frozenset[int]:
        return reserved_ports()

    def listening_ports(self, proto: Protocol) -> frozenset[int]:
        return listening_ports(proto)

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

    def forget_flows(self, removed: Iterable[Binding] = (), links: Iterable[Link] = (),
                     added: Iterable[Binding] = ()) -> int:
        """Delete the conntrack entries that would keep steering traffic the old way.

        - a ``removed`` binding's: flows to its HOST address (any local one for
          0.0.0.0 / ::), port and protocol that were translated to its container;
        - a removed ``link``'s: flows from its source to its target's ports;
        - an ``added`` binding's stale ones: flows to its host port that go
          elsewhere (an unanswered UDP flow to the host keeps bypassing a new
          binding until its entry expires). Only for UDP and SCTP: a TCP flow
          without an answer is refused at once.

        The kernel filters the dump by protocol; it still walks its whole hash
        table, about 10 ms here whatever the number of bindings.
        """
        from pyroute2 import Conntrack
        from pyroute2.netlink.exceptions import NetlinkError
        from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

        matchers = [(b.proto, functools.partial(_translated_for, b)) for b in removed]
        matchers += [(proto, functools.partial(_link_flow, (s, t, port)))
                     for link in links for s, t, proto, port in link.flows()]
        matchers += [(b.proto, functools.partial(_stale_for, b)) for b in added if b.proto is not Protocol.TCP]
        deleted = 0
        if not matchers:
            return deleted
        with self._lock, _netlink("cleaning conntrack"):
            if self._conntrack is None:
                self._conntrack = Conntrack()
            ct = self._conntrack
            for proto in {proto for proto, _ in matchers}:
                tests = [test for p, test in matchers if p is proto]
                # Read them all first: pyroute2 cannot delete while a dump runs.
                entries = list(ct.dump_entries(tuple_orig=NFCTAttrTuple(proto=_IPPROTO[proto])))
                for entry in entries:
                    if any(test(entry.tuple_orig, entry.tuple_reply) for test in tests):
                        try:
                            ct.delete(entry)
                            deleted += 1
                        except NetlinkError as exc:
                            if exc.code != errno.ENOENT:  # ENOENT: it timed out meanwhile
                                raise
        return deleted

    def close(self) -> None:
        with self._lock:
            if self._conntrack is not None:
                self._conntrack.close()
            self._conntrack = None


class FakeHost:
    """A :class:`Host` held in memory, for tests of the engine that need no root.

    Its facts are what the test gives: ``bridges``; the port pool (``ports``,
    ``reserved``, ``listening`` ports by protocol); whether br_netfilter is
    there (``br_netfilter``) and bridged IPv6 passes the IP hooks
    (``bridged_ipv6``). What natmap sets is recorded: ``route_localnet`` and
    ``loopback6`` (bridge names), ``bridged_ipv4``/``bridged_ipv6`` (turned on
    by :meth:`hook_bridged_traffic`), ``forgotten`` (the arguments of each
    :meth:`forget_flows`). ``events`` names every call, in order (share one
    list with a ``FakeBackend`` to see the order of both).
    """

    def __init__(self, bridges: Iterable[Bridge] = (), *, ports: PortRange = _FALLBACK_RANGE,
                 reserved: Iterable[int] = (), listening: Mapping[Protocol, Iterable[int]] | None = None,
                 br_netfilter: bool = True, bridged_ipv6: bool = False,
                 events: list[str] | None = None) -> None:
        self.bridges = {b.name: b for b in bridges}
        self.ports = ports
        self.reserved = frozenset(reserved)
        self.listening = {proto: frozenset(p) for proto, p in (listening or {}).items()}
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
                     added: Iterable[Binding] = ()) -> int:
        self.events.append("host.forget_flows")
        self.forgotten.append((list(removed), list(links), list(added)))
        return 0

    def close(self) -> None:
        self.closed = True


def _to_host_port(binding: Binding, orig: Any) -> bool:
    """Whether a flow's original direction goes to the binding's host side."""
    address = _ip(orig.daddr)
    if orig.dport != binding.host_port or address is None or address.version != binding.version:
        return False
    return binding.host_ip.is_unspecified or address == binding.host_ip


def _translated_for(binding: Binding, orig: Any, reply: Any) -> bool:
    return (_to_host_port(binding, orig)
            and _ip(reply.saddr) == binding.container_ip and reply.sport == binding.container_port)


def _stale_for(binding: Binding, orig: Any, reply: Any) -> bool:
    return _to_host_port(binding, orig) and not _translated_for(binding, orig, reply)


def _link_flow(flow: tuple[Any, Any, int], orig: Any, reply: Any) -> bool:
    source, target, port = flow
    return bool(_ip(orig.saddr) == source and _ip(orig.daddr) == target and orig.dport == port)


def _ip(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    return ipaddress.ip_address(text) if text else None


def _sysctl(path: str) -> str:
    with open(f"/proc/sys/{path}") as f:
        return f.read()


def _write_sysctl(path: str, value: str) -> None:
    try:
        with open(f"/proc/sys/{path}", "w") as f:
            f.write(value)
    except PermissionError as exc:
        raise PrivilegeError(f"setting {path.replace('/', '.')}") from exc
    except OSError as exc:
        raise BackendError(f"cannot set {path.replace('/', '.')}={value}: {exc.strerror}") from exc

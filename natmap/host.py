"""Everything natmap asks the kernel besides the packet filter, through pyroute2:
interfaces and addresses, listening sockets, sysctls, conntrack, and the
nftables generation counter.

Every function acts in the calling thread's network namespace. pyroute2 is
imported on first use, so ``import natmap`` stays light.
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
    from typing import Any

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
    """Netlink sockets kept open for the calls natmap makes on every change:
    the nftables generation and conntrack. Opening a pyroute2 socket costs more
    than using one. Each socket belongs to the namespace it was opened in, so
    a session must only be used in one namespace (NatMap sees to that)."""

    def __init__(self) -> None:
        self._nft: Any = None
        self._conntrack: Any = None
        self._lock = threading.Lock()

    def generation(self) -> int:
        """The nftables ruleset generation: it grows by one with every committed
        transaction, whoever commits it."""
        from pyroute2.netlink import NLM_F_REQUEST
        from pyroute2.netlink.nfnetlink.nftsocket import NFT_MSG_GETGEN, NFTSocket, nft_gen_msg

        with self._lock, _netlink("reading the nftables generation"):
            if self._nft is None:
                self._nft = NFTSocket()
            answer = self._nft.request_get(nft_gen_msg(), NFT_MSG_GETGEN, NLM_F_REQUEST)
        return answer[0].get_attr("NFTA_GEN_ID")

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

        The kernel walks its whole hash table for a dump, about 10 ms here
        whatever the number of bindings, and hands back only the entries of
        the protocol (for removed bindings: only the translated ones, as
        pyroute2 takes about 1 ms to decode an entry). Each entry is then
        tested only against the bindings and link flows of its own
        destination port. It runs under the table's lock: after the lock is
        released another process could publish the same binding again, and
        its new flows would be cut.
        """
        from pyroute2 import Conntrack
        from pyroute2.netlink.exceptions import NetlinkError

        # (proto, original destination port, test): each test matches flows to one port
        # (None: to a port of a same-port range).
        translated = [_matcher(_translated_for, b) for b in removed]
        matchers = [(proto, port, functools.partial(_link_flow, (s, t, port)))
                    for link in links for s, t, proto, port in link.flows()]
        matchers += [_matcher(_stale_for, b) for b in added if b.proto is not Protocol.TCP]
        deleted = 0
        if not (matchers or translated):
            return deleted
        with self._lock, _netlink("cleaning conntrack"):
            if self._conntrack is None:
                self._conntrack = Conntrack()
            ct = self._conntrack
            for nat_only, group in ((True, translated), (False, matchers)):
                for proto, tests_of in _tests_by_port(group).items():
                    for entry in _entries(ct, proto, nat_only):
                        tests = [*tests_of.get(entry.tuple_orig.dport, ()), *tests_of.get(None, ())]
                        if not tests or not any(test(entry.tuple_orig, entry.tuple_reply) for test in tests):
                            continue
                        try:
                            ct.delete(entry)
                            deleted += 1
                        except NetlinkError as exc:
                            if exc.code != errno.ENOENT:  # ENOENT: it timed out meanwhile
                                raise
        return deleted

    def close(self) -> None:
        with self._lock:
            for sock in (self._nft, self._conntrack):
                if sock is not None:
                    sock.close()
            self._nft = self._conntrack = None


def nft_generation() -> int:
    """The generation, read once on a socket of its own."""
    session = Session()
    try:
        return session.generation()
    finally:
        session.close()


def _tests_by_port(matchers: Iterable[tuple[Protocol, int | None, Any]]) -> dict[Protocol, dict[int | None, list[Any]]]:
    """The tests by protocol and destination port: each conntrack entry is then
    tested only against the few that can match it (O(entries + bindings), not
    O(entries x bindings): 10,000 bindings and 2,000 entries took 43 s)."""
    by_port: dict[Protocol, dict[int | None, list[Any]]] = {}
    for proto, port, test in matchers:
        by_port.setdefault(proto, {}).setdefault(port, []).append(test)
    return by_port


def _matcher(test: Any, binding: Binding) -> tuple[Protocol, int | None, Any]:
    if binding.count == 1:
        return binding.proto, binding.host_port, functools.partial(test, binding)
    return binding.proto, None, functools.partial(_in_range, test, binding)


def _in_range(test: Any, binding: Binding, orig: Any, reply: Any) -> bool:
    """``test`` for the one port of a same-port range that a flow goes to."""
    port = orig.dport
    return binding.host_port <= port <= binding.last_port and test(binding.at(port), orig, reply)


def _entries(ct: Any, proto: Protocol, nat_only: bool) -> list[Any]:
    """The IPv4 conntrack entries of ``proto`` (with ``nat_only``, only those
    whose destination was translated), read in full before any is deleted:
    pyroute2 cannot delete while a dump runs."""
    from pyroute2.conntrack import ConntrackEntry
    from pyroute2.netlink.nfnetlink.nfctsocket import IPS_DST_NAT, NFCTAttrTuple

    if not nat_only:
        return list(ct.dump_entries(tuple_orig=NFCTAttrTuple(proto=_IPPROTO[proto])))
    # The kernel filters by status (Linux 5.15+), not by status and protocol at once.
    number = _IPPROTO[proto]
    return [ConntrackEntry(msg["nfgen_family"], *map(msg.get_attr, _ENTRY_ATTRS))
            for msg in ct.dump(status=IPS_DST_NAT, status_mask=IPS_DST_NAT)
            if msg.get_attr("CTA_TUPLE_ORIG").get_attr("CTA_TUPLE_PROTO").get_attr("CTA_PROTO_NUM") == number]


# What pyroute2's ConntrackEntry is made from, in its order.
_ENTRY_ATTRS = ("CTA_TUPLE_ORIG", "CTA_TUPLE_REPLY", "CTA_STATUS", "CTA_TIMEOUT", "CTA_PROTOINFO",
                "CTA_MARK", "CTA_ID", "CTA_USE", "CTA_ZONE")


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
    return _ip(orig.saddr) == source and _ip(orig.daddr) == target and orig.dport == port


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

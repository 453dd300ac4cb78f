"""natmap as a guest on a shared host (DESIGN.md §7): host ports belong to the
namespace, not to a table; natmap owns only what carries its marker; the
addresses a spec names are checked as Docker checks them.

The checks here are pure functions of facts the caller passes in (listening
sockets, other tables, interface addresses), so the engine decides when the
kernel is asked, and tests can pass facts of their own.
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
import operator
from collections.abc import Callable, Iterable, Iterator, Sequence

from .errors import ConflictError, SpecError
from .model import Binding, Endpoint, Gateway, Table
from .spec import PortSpec, Protocol

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (2 ms of a `natmap` command)
if TYPE_CHECKING:
    from typing import Any

    from .host import Listener

__all__ = ["marker", "owner_of", "host_port_ranges", "check_listeners", "shadowed", "check_other_tables",
           "mapped_ports", "check_gateway", "gateway_disagreements", "check_addresses"]

_MARKER = "natmap v1 table="


def marker(table: str) -> str:
    """The text natmap writes on every table (nft comment) or chain set (iptables
    rule comment) it makes for ``table``: the proof that it is natmap's."""
    return _MARKER + table


def owner_of(comment: str | None) -> str | None:
    """The natmap table a marker names, or None if ``comment`` is no marker."""
    return comment[len(_MARKER):] if comment and comment.startswith(_MARKER) else None


# --- host sockets -----------------------------------------------------------------


def overlaps(binding: Binding, listener: Listener) -> bool:
    """Whether ``listener`` holds the port ``binding`` would catch packets for:
    the same protocol and port, and the same address or a wildcard on either
    side (a ``::`` socket without IPV6_V6ONLY also holds the IPv4 port, so
    Docker's bind of ``0.0.0.0`` would fail on it too)."""
    if listener.proto is not binding.proto or not binding.host_port <= listener.port <= binding.last_port:
        return False
    address = listener.address
    if address.version != binding.version:
        return address.version == 6 and address.is_unspecified and not listener.v6only
    return address.is_unspecified or binding.host_ip.is_unspecified or address == binding.host_ip


_PROTO, _HOST_PORT, _COUNT = (operator.attrgetter(name) for name in ("proto", "host_port", "count"))


def host_port_ranges(bindings: Sequence[Binding]) -> dict[Protocol, list[tuple[int, int]]]:
    """The host ports ``bindings`` take, by protocol, as (first, last) ranges
    that cover exactly those ports: the single ports' joined into ascending
    runs of consecutive ports, then each same-port range as it is. What the
    kernel is asked for the host sockets on (``nlquery.listeners`` merges them).

    Looped in C, port by port: a big publish adds 10,000 bindings, which come
    in runs of one protocol and (one spec's) ascending ports, so they are
    grouped without a sort and a run of them is one range."""
    groups: dict[Protocol, list[Binding]] = {}
    for proto, run in itertools.groupby(bindings, _PROTO):
        groups.setdefault(proto, []).extend(run)
    return {proto: _port_runs(group) for proto, group in groups.items()}


def _port_runs(bindings: list[Binding]) -> list[tuple[int, int]]:
    """:func:`host_port_ranges` of bindings of one protocol."""
    if sum(map(_COUNT, bindings)) == len(bindings):  # no same-port range (most changes): counts are >= 1
        ports, spans = set(map(_HOST_PORT, bindings)), []
    else:
        ports = {b.host_port for b in bindings if b.count == 1}
        spans = [(b.host_port, b.last_port) for b in bindings if b.count != 1]
    if not ports:
        return spans
    first, last = min(ports), max(ports)
    if last - first + 1 == len(ports):  # one run of consecutive ports (a publish's, often): no sort
        return [(first, last), *spans]
    ordered = sorted(ports)
    # A run ends before each port that is not one more than the port before it.
    cuts = list(itertools.compress(range(1, len(ordered)), map(operator.ne, itertools.islice(ordered, 1, None),
                                                                  map((1).__add__, ordered))))
    return [(ordered[a], ordered[b - 1]) for a, b in zip([0, *cuts], [*cuts, len(ordered)])] + spans


def check_listeners(bindings: Iterable[Binding], listeners: Callable[[Protocol], Sequence[Listener]],
                    owner: Callable[[int], str | None], *, protocols: Iterable[Protocol] | None = None) -> None:
    """Raise :class:`ConflictError` at the first binding whose host port a host
    socket holds, naming the socket and (where /proc tells) its process, as
    Docker's "address already in use". ``listeners(proto)`` lists the sockets;
    ``owner(inode)`` names a socket's process; ``protocols``: the bindings'
    protocols, if the caller has them already (the keys of :func:`host_port_ranges`)."""
    by_port = _by_port(listeners)
    bindings = list(bindings)
    if not any(by_port(proto) for proto in (set(map(_PROTO, bindings)) if protocols is None else protocols)):
        return  # no socket on any of their ports (the commonest answer): none to look for, binding by binding
    for held in bindings:
        ports = by_port(held.proto)
        if held.count == 1 and held.host_port not in ports:
            continue  # most ports: no socket there (a big publish checks thousands)
        listener = next((s for s in _near(ports, held) if overlaps(held, s)), None)
        if listener is not None:
            binding = held if held.count == 1 else held.at(listener.port)  # a range: the port it takes
            who = owner(listener.inode)
            raise ConflictError(
                f"{binding}/{binding.proto.value} for endpoint {binding.endpoint!r}: a host socket "
                f"listens on {listener}{f' ({who})' if who else ''}; publishing would take its "
                "traffic (force=True / --force takes it knowingly)")


def shadowed(bindings: Iterable[Binding], listeners: Callable[[Protocol], Sequence[Listener]],
             owner: Callable[[int], str | None]) -> list[str]:
    """One line per binding that catches the packets of a host socket (which
    may have appeared after the binding was made)."""
    lines = []
    by_port = _by_port(listeners)
    for held in bindings:
        for listener in _near(by_port(held.proto), held):
            if overlaps(held, listener):
                binding = held if held.count == 1 else held.at(listener.port)
                who = owner(listener.inode)
                lines.append(f"port {binding.endpoint} {binding.port_line()} shadows the host socket "
                             f"on {listener}{f' ({who})' if who else ''}")
    return lines


def _near(by_port: dict[int, list[Listener]], binding: Binding) -> Iterator[Listener]:
    """The sockets on the binding's host port, or (a same-port range) on any of its ports."""
    if binding.count == 1:
        yield from by_port.get(binding.host_port, ())
        return
    for port, sockets in by_port.items():
        if binding.host_port <= port <= binding.last_port:
            yield from sockets


def _by_port(listeners: Callable[[Protocol], Sequence[Listener]]) -> Callable[[Protocol], dict[int, list[Listener]]]:
    """The sockets of a protocol by port, grouped once: a big change checks thousands of bindings."""
    @functools.cache
    def grouped(proto: Protocol) -> dict[int, list[Listener]]:
        ports: dict[int, list[Listener]] = {}
        for listener in listeners(proto):
            ports.setdefault(listener.port, []).append(listener)
        return ports
    return grouped


# --- other natmap tables ------------------------------------------------------------


def check_other_tables(bindings: Iterable[Binding], others: Sequence[tuple[str, Table]]) -> None:
    """Raise :class:`ConflictError` at the first binding that would catch packets
    a binding of another natmap table of the namespace catches, naming that
    table and endpoint."""
    if not others:
        return  # no other table (the commonest answer): none to look bindings up in, one by one
    for binding in bindings:
        for label, table in others:
            existing = table.clash(binding)
            if existing is not None:
                raise ConflictError(
                    f"{binding}/{binding.proto.value} for endpoint {binding.endpoint!r} conflicts with "
                    f"{existing}/{existing.proto.value} of endpoint {existing.endpoint!r} in {label}")


def mapped_ports(others: Sequence[tuple[str, Table]], proto: Protocol) -> frozenset[int]:
    """The host ports of ``proto`` other natmap tables map, on any address:
    an assigned port is never one of them."""
    return frozenset(port for _, table in others for b in table.held_bindings() if b.proto is proto
                     for port in range(b.host_port, b.last_port + 1))  # held: bindings() sorts


# --- bridges' gateway settings -------------------------------------------------------
#
# A bridge's gateway setting is the namespace's, as its host ports are: every
# natmap table that holds the bridge acts on its traffic (one masquerades what
# another routes, one drops what another lets in), so they must agree.


def _setting(table: Table, bridge: str) -> Gateway:
    return table.gateways.get(bridge) or Gateway(bridge)  # the default nat is kept as no item


def _text(gateway: Gateway) -> str:
    trusted = f", trusted {', '.join(gateway.trusted)}" if gateway.trusted else ""
    return f"{gateway.modes_text}{trusted}"


def check_gateway(gateway: Gateway, current: Gateway | None, others: Sequence[tuple[str, Table]]) -> None:
    """Raise :class:`ConflictError` if another natmap table of the namespace
    holds ``gateway.bridge`` with a setting other than ``gateway``, naming
    that table and its setting. ``current``: this table's setting of the
    bridge, None if it does not hold it; a table that agreed with it is no
    conflict (one table moves first, the other follows: ``check()`` reports
    the disagreement meanwhile; refusing both would leave them stuck)."""
    for label, table in others:
        if gateway.bridge not in table.bridges:
            continue
        theirs = _setting(table, gateway.bridge)
        if theirs != gateway and theirs != current:
            raise ConflictError(
                f"gateway of bridge {gateway.bridge} ({_text(gateway)}) conflicts with {label}, which holds "
                f"it in {_text(theirs)}: a bridge's gateway setting is the namespace's, one for every natmap "
                f"table on it (set it the same in both)")


def gateway_disagreements(table: Table, others: Sequence[tuple[str, Table]]) -> list[str]:
    """One line per bridge of ``table`` another natmap table holds with another setting."""
    return [f"bridge {bridge}: gateway {_text(_setting(table, bridge))} here, {_text(_setting(other, bridge))} "
            f"in {label} (a bridge's gateway setting is the namespace's: set it the same in both)"
            for bridge in sorted(table.bridges) for label, other in others
            if bridge in other.bridges and _setting(other, bridge) != _setting(table, bridge)]


# --- addresses -----------------------------------------------------------------------


def check_addresses(endpoint: Endpoint, specs: Sequence[PortSpec], *, bridge_kind: str | None,
                    bridge_addresses: Sequence[Any], local: Callable[[], frozenset[Any]],
                    nonlocal_bind: Callable[[int], bool]) -> None:
    """Raise :class:`SpecError` for what Docker refuses or fails to bind:
    ``bridge=`` that is no bridge; an endpoint address that is the bridge's
    own address, its network or its broadcast address; a host IP that is
    multicast, broadcast, or not local (unless ``ip_nonlocal_bind`` allows).
    ``local()`` gives the namespace's addresses as interfaces (``10.0.0.1/24``)."""
    if bridge_kind != "bridge":
        raise SpecError(f"interface {endpoint.bridge} is not a bridge "
                        f"({bridge_kind or 'a plain interface'})", endpoint.bridge)
    for address in filter(None, (endpoint.ip, endpoint.ipv6)):
        for interface in bridge_addresses:
            net = interface.network
            if net.version != address.version:  # (compared, not hashed: a big transaction checks 250 endpoints)
                continue
            what = ("address" if address == interface.ip else
                    "network address" if address == net.network_address else
                    "broadcast address" if net.version == 4 and net.prefixlen < 31 and address == net.broadcast_address
                    else None)
            if what is not None:
                raise SpecError(f"{address} of endpoint {endpoint.name!r} is the {what} of bridge "
                                f"{endpoint.bridge} ({interface})", str(address))
    for spec in specs:
        ip = spec.host_ip
        if ip is None or ip.is_unspecified:
            continue
        if ip.is_multicast or ip == ipaddress.IPv4Address("255.255.255.255"):
            raise SpecError(f"host IP {ip} is a multicast or broadcast address", str(spec))
        interfaces = local()
        if ip.is_loopback or any(ip == i.ip for i in interfaces):
            continue
        if any(ip == i.network.broadcast_address for i in interfaces if i.version == 4 and i.network.prefixlen < 31):
            raise SpecError(f"host IP {ip} is a broadcast address", str(spec))
        if not nonlocal_bind(ip.version):
            raise SpecError(f"host IP {ip} is not an address of this host (network namespace); "
                            f"net.ipv{ip.version}.ip_nonlocal_bind=1 would allow it", str(spec))

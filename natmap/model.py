"""What is, or is to be, published: endpoints, bindings, and the table model.

:class:`Table` is natmap's picture of one kernel table: its bindings, and the
bridges whose traffic it masquerades. ``publish`` and ``unpublish`` change the
picture and journal each step, so a backend can render exactly the change,
and a failure can be rolled back in memory. Everything here is pure: no
kernel, no I/O, no pyroute2, iptc or nftables.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import itertools
import operator
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from .errors import ConflictError, NotFoundError, SpecError
from .links import Link, Port, exposed_ports
from .spec import IPAddress, PortRange, PortSpec, Protocol, format_ip, validate_name

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (2 ms of a `natmap` command)
if TYPE_CHECKING:
    from typing import TypeVar, assert_never as assert_never  # re-exported: the backends match on items too

    from _typeshed import SupportsAllComparisons

    T = TypeVar("T")
    A = TypeVar("A", ipaddress.IPv4Address, ipaddress.IPv6Address)
else:
    def assert_never(value: object) -> None:
        """typing.assert_never at run time, without importing typing: after a
        ``match`` on every kind of :data:`Item`, where mypy names a forgotten one."""
        raise AssertionError(f"unhandled kind of item: {type(value).__name__}")

__all__ = ["Binding", "Bindings", "Bridge", "Change", "Drift", "Endpoint", "Gateway", "Isolation", "PortPool",
           "RoutedBinding", "Table"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Linux interface names: at most 15 bytes, no '/', ':' or white space.
_IFNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")
_ANY: dict[int, IPAddress] = {4: ipaddress.IPv4Address("0.0.0.0"), 6: ipaddress.IPv6Address("::")}
_ADDRESS_TYPES = (ipaddress.IPv4Address, ipaddress.IPv6Address)


def validate_ifname(name: str) -> str:
    """Return ``name`` if it can be a Linux interface name, else raise SpecError."""
    if not isinstance(name, str) or not _IFNAME.fullmatch(name):
        raise SpecError("invalid interface name (1-15 of [A-Za-z0-9_.-], a letter or digit first)", str(name), None)
    return name


@dataclass(frozen=True, slots=True, init=False)
class Endpoint:
    """A container (or VM, or sandbox) whose ports are published.

    ``ip`` is its IPv4 address on ``bridge``; ``ipv6`` its IPv6 address there,
    if it has one (an IPv6-only endpoint has ``ip`` None: one of the two at
    least); ``expose`` the ports ``publish_all`` publishes (``"5000"``,
    ``"53/udp"`` or parsed :class:`PortSpec` values). As with :mod:`ipaddress`,
    the constructor takes text or values and the attributes hold values:
    ``Endpoint("web01", "172.30.0.2", "natmap0").ip`` is an ``IPv4Address``.
    Raises :class:`SpecError` for a bad name, bridge, address or port.
    """

    name: str
    ip: ipaddress.IPv4Address | None
    bridge: str
    ipv6: ipaddress.IPv6Address | None
    expose: tuple[PortSpec, ...]

    def __init__(self, name: str, ip: str | ipaddress.IPv4Address | None, bridge: str,
                 ipv6: str | ipaddress.IPv6Address | None = None,
                 expose: Iterable[str | PortSpec] = ()) -> None:
        set_ = object.__setattr__  # frozen: the fields are set once, here
        set_(self, "name", validate_name(name, "endpoint name"))
        set_(self, "bridge", validate_ifname(bridge))
        set_(self, "ip", None if ip is None else _host_address(ip, ipaddress.IPv4Address, "ip"))
        set_(self, "ipv6", None if ipv6 is None else _host_address(ipv6, ipaddress.IPv6Address, "ipv6"))
        if ip is None and ipv6 is None:
            raise SpecError("an endpoint needs an address: ip (IPv4), ipv6 or both", name, None)
        if isinstance(expose, str):  # one spec, not its characters
            expose = (expose,)
        set_(self, "expose", tuple(p if isinstance(p, PortSpec) else PortSpec.parse_exposed(p)
                                   for p in expose))

    def address(self, version: int) -> IPAddress | None:
        """The endpoint's address of IP version 4 or 6, if it has one."""
        return self.ip if version == 4 else self.ipv6


def _host_address(value: object, kind: type[A], what: str) -> A:
    """An endpoint address: a unicast address of the given IP version."""
    try:
        ip = ipaddress.ip_address(value)  # type: ignore[arg-type]
    except ValueError:
        raise SpecError(f"invalid {what} address", str(value), None) from None
    if not isinstance(ip, kind) or ip.is_unspecified or ip.is_loopback or ip.is_multicast:
        raise SpecError(f"{what} must be a unicast IPv{kind(0).version} address", str(value), None)
    return ip


@dataclass(frozen=True, slots=True)
class Binding:
    """One published port: ``host_ip:host_port`` -> ``container_ip:container_port``.

    ``str()`` is the host side as ``docker port`` prints it: ``0.0.0.0:32768``
    or ``[::]:9876``. :meth:`port_line` and :meth:`ps_entry` give Docker's
    other two forms. ``0.0.0.0`` and ``::`` mean every address of the family.

    ``count`` > 1 makes it a same-port range (``-p 10000-20000:10000-20000``):
    the ``count`` ports from ``host_port`` on, each to the same port of the
    container (``host_port == container_port``). The kernel holds it as ONE
    interval element or rule; :meth:`expand` gives its single ports, as
    ``docker port`` lists them. Then ``str()`` shows ``0.0.0.0:10000-20000``.
    """

    endpoint: str
    proto: Protocol
    host_ip: IPAddress
    host_port: int
    container_ip: IPAddress
    container_port: int
    count: int = 1
    # Derived once: tables look bindings up by it and hash it a great deal,
    # and hashing an ipaddress object is slow (it formats the address as hex).
    key: tuple[int, int, str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Written out, not looped: a big publish makes tens of thousands.
        if not isinstance(self.host_ip, _ADDRESS_TYPES):
            object.__setattr__(self, "host_ip", ipaddress.ip_address(self.host_ip))
        if not isinstance(self.container_ip, _ADDRESS_TYPES):
            object.__setattr__(self, "container_ip", ipaddress.ip_address(self.container_ip))
        if type(self.proto) is not Protocol:
            object.__setattr__(self, "proto", Protocol(self.proto))
        if self.count != 1 and not (type(self.count) is int and self.count > 1
                                    and self.host_port == self.container_port
                                    and self.host_port + self.count - 1 <= 65535):
            raise SpecError("a binding of many ports maps each port to the same port (host port = "
                            "container port), all in 1-65535", f"{self.host_port}+{self.count!r}")
        # What the kernel looks a packet up by: host address, protocol, port;
        # only ints and a str, so the garbage collector soon stops tracking it.
        object.__setattr__(self, "key", (self.host_ip.version, int(self.host_ip), self.proto._value_,
                                         self.host_port))

    def __hash__(self) -> int:
        return hash(self.key)  # equal bindings have equal keys; a table holds one binding a key

    def _on_ports(self, pairs: Iterable[tuple[int, int]]) -> list[Binding]:
        """This binding on each ``(host_port, container_port)``: equal to
        ``Binding(...)`` with those ports, made in a fifth of the time, since the
        fields they share were checked once, here (a range spec makes thousands)."""
        return _bindings_on(type(self), self.endpoint, self.proto, self.host_ip,  # a RoutedBinding's are routed
                            self.container_ip, self.key[:3], pairs)

    @property
    def last_port(self) -> int:
        """The last host (and container) port: ``host_port`` unless it is a range."""
        return self.host_port + self.count - 1

    def expand(self) -> list[Binding]:
        """Its single ports: ``[self]``, or one binding per port of a range."""
        if self.count == 1:
            return [self]
        return self._on_ports((port, port) for port in range(self.host_port, self.host_port + self.count))

    def at(self, port: int) -> Binding:
        """The single binding of one port of a range."""
        return self._on_ports([(port, port)])[0]

    def _ports_text(self, first: int) -> str:
        return str(first) if self.count == 1 else f"{first}-{first + self.count - 1}"

    def __str__(self) -> str:
        return f"{format_ip(self.host_ip)}:{self._ports_text(self.host_port)}"

    @property
    def version(self) -> int:
        return self.host_ip.version

    @property
    def container_port_text(self) -> str:
        """The container side as Docker keys it: ``5000/tcp``."""
        return f"{self._ports_text(self.container_port)}/{self.proto.value}"

    def port_line(self) -> str:
        """``docker port NAME``'s line: ``5000/tcp -> 0.0.0.0:32768``."""
        return f"{self.container_port_text} -> {self}"

    def ps_entry(self) -> str:
        """One entry of ``docker ps``'s PORTS column: ``0.0.0.0:32768->5000/tcp``."""
        return f"{self}->{self.container_port_text}"

    def sort_key(self) -> SupportsAllComparisons:
        """The order ``docker port`` prints in: a natural sort of :meth:`port_line`.

        Equal to ``natural_key(self.port_line())``, built from parts: the
        middle (``/tcp -> 0.0.0.0:``) is keyed once per protocol and address,
        since formatting addresses is most of the cost with thousands."""
        version, address, proto, port = self.key
        middle = _MIDDLE_KEYS.get((version, address, proto))
        if middle is None:
            middle = _MIDDLE_KEYS[(version, address, proto)] = natural_key(
                f"/{proto} -> {format_ip(self.host_ip)}:")
        return (("0", self.container_port, str(self.container_port)), *middle,
                ("0", port, str(port)))


class _Unfrozen:
    """Binding's slots, in its layout, without its frozen ``__setattr__``:
    a binding of checked fields is made as one of these, its fields set by
    plain attribute stores (which the interpreter does in line for slots),
    then turned into a Binding by setting ``__class__`` (which Python allows
    between classes of one layout): a third of the cost of the slots' setters
    called one by one, the most of a big publish's model time (10,000
    bindings). Equal to ``Binding(...)`` in every field (the property tests of
    tests/test_model.py compare them)."""

    __slots__ = Binding.__slots__
    endpoint: str  # (for mypy: the slots' types are Binding's)
    proto: Protocol
    host_ip: IPAddress
    host_port: int
    container_ip: IPAddress
    container_port: int
    count: int
    key: tuple[int, int, str, int]


def _bindings_on(kind: type[Binding], endpoint: str, proto: Protocol, host_ip: IPAddress, container_ip: IPAddress,
                 key: tuple[int, int, str], pairs: Iterable[tuple[int, int]]) -> list[Binding]:
    """``kind(endpoint, proto, host_ip, host_port, container_ip, container_port)``
    for each ``(host_port, container_port)`` of ``pairs``, of fields checked
    already (``key``: the first three items of their :attr:`Binding.key`)."""
    new = object.__new__
    version, address, proto_text = key
    made = []
    for host_port, container_port in pairs:
        b = new(_Unfrozen)
        b.endpoint = endpoint
        b.proto = proto
        b.host_ip = host_ip
        b.host_port = host_port
        b.container_ip = container_ip
        b.container_port = container_port
        b.count = 1
        b.key = (version, address, proto_text, host_port)
        b.__class__ = kind  # type: ignore[assignment]  # see _Unfrozen
        made.append(b)
    return made  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class RoutedBinding(Binding):
    """A binding of an endpoint on a bridge in Docker's ``routed`` gateway
    mode: no DNAT from the host port (Docker ignores it, as the host address),
    only the container port opened to routed traffic. It is kept, and listed
    by ``port``/``ps``, with the host side it was published with, so putting
    the bridge back in a ``nat`` mode maps that port again. Never equal to the
    :class:`Binding` of the same fields: a mode change is a change of item."""

    __hash__ = Binding.__hash__

    @classmethod
    def of(cls, binding: Binding) -> RoutedBinding:
        return cls(binding.endpoint, binding.proto, binding.host_ip, binding.host_port, binding.container_ip,
                   binding.container_port, binding.count)

    def mapped(self) -> Binding:
        """The same binding as a ``nat`` mode bridge holds it."""
        return Binding(self.endpoint, self.proto, self.host_ip, self.host_port, self.container_ip,
                       self.container_port, self.count)


# The conntrack mark bit natmap sets on the flows a routed binding lets in
# (docs/kernel.md), set and tested under this mask alone: other programs' bits
# stay theirs. Unpublishing the binding cuts the flows that carry it.
ROUTED_CT_MARK = 0x04000000


def held_routed(binding: Binding, routed: bool) -> bool:
    """Whether a bridge in ``routed`` mode (or not) holds ``binding`` as a
    :class:`RoutedBinding`. A loopback host address asked for access from this
    host only: Docker 28 opens the container port to routed traffic for it too
    (it takes 0.0.0.0 for any host address when NAT is disabled); natmap opens
    no door not asked for and keeps such a binding mapped (docs/kernel.md)."""
    return routed and not binding.host_ip.is_loopback


@dataclass(frozen=True, slots=True)
class Bridge:
    """A bridge natmap masquerades for: its name and its subnets."""

    name: str
    subnets: tuple[IPNetwork, ...]

    def contains(self, ip: IPAddress) -> bool:
        for net in self.subnets:  # (no generator: each publish asks, a big transaction 250 times)
            if ip in net:
                return True
        return False


@dataclass(frozen=True, slots=True)
class PortPool:
    """Where assigned host ports come from, and which ports to skip.

    ``listening(proto)`` gives the ports with a listening (or bound UDP)
    socket; it is called only when a port has to be assigned.
    """

    ports: PortRange = PortRange(49153, 65535)
    reserved: frozenset[int] = frozenset()
    listening: Callable[[Protocol], frozenset[int]] = lambda proto: frozenset()


class Verb(enum.Enum):
    ADD = "add"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class Isolation:
    """Inter-container traffic on ``bridge`` is closed (Docker's ``--icc=false``):
    only links open flows there."""

    bridge: str


if TYPE_CHECKING:  # Docker 28's gateway modes, for mypy (set_gateway(..., "rooted") is an error)
    from typing import Literal

    GatewayMode = Literal["nat", "nat-unprotected", "routed"]
else:
    GatewayMode = str  # at run time: no typing import (the constructor checks the value)
GATEWAY_MODES: tuple[GatewayMode, ...] = ("nat", "nat-unprotected", "routed")


@dataclass(frozen=True, slots=True, init=False)
class Gateway:
    """How traffic routed from outside reaches the containers of ``bridge``,
    per IP family, as Docker 28's ``com.docker.network.bridge.gateway_mode_ipv4``
    and ``_ipv6``: ``mode_ipv4`` rules the bridge's IPv4 traffic and bindings,
    ``mode_ipv6`` its IPv6 ones, each mode touching nothing of the other family.

    ``nat`` (the default, never stored): new flows from any interface but a
    bridge of the table are dropped unless published (DNATed), or they come
    from one of the ``trusted_interfaces`` (host interfaces; ``trusted``: the same, read-only). ``nat-unprotected``: they
    all pass (natmap before Docker 28). ``routed``: no NAT for the bridge's
    containers in that family (no masquerade, no DNAT from host ports: its
    bindings of that family become :class:`RoutedBinding`), and routed flows
    reach only the published container ports, ICMP, and anything from a
    ``trusted`` interface (trusted for both families, as Docker's
    ``trusted_host_interfaces``).

    ``Gateway("br0", "routed")`` puts both families in one mode;
    ``Gateway("br0", mode_ipv6="routed")`` sets one, the other taking ``mode``
    (``nat`` if not given): a value states the bridge's whole setting, as
    Docker's network options do. Raises SpecError for an unknown mode or name.
    """

    bridge: str
    mode_ipv4: GatewayMode
    mode_ipv6: GatewayMode
    trusted_interfaces: tuple[str, ...]  # the name set_gateway, JSON and TOML use

    def __init__(self, bridge: str, mode: GatewayMode | None = None, trusted_interfaces: Iterable[str] = (), *,
                 mode_ipv4: GatewayMode | None = None, mode_ipv6: GatewayMode | None = None,
                 trusted: Iterable[str] | None = None) -> None:
        validate_ifname(bridge)
        trusted = trusted_interfaces if trusted is None else trusted  # trusted=: the earlier keyword
        if isinstance(trusted, str):
            raise SpecError("trusted interfaces are a list of names", trusted)
        modes = [m if m is not None else mode if mode is not None else "nat" for m in (mode_ipv4, mode_ipv6)]
        for given in (mode, *modes):
            if given is not None and given not in GATEWAY_MODES:
                raise SpecError(f"unknown gateway mode (choose {', '.join(GATEWAY_MODES)})", str(given))
        set_ = object.__setattr__
        set_(self, "bridge", bridge)
        set_(self, "mode_ipv4", modes[0])
        set_(self, "mode_ipv6", modes[1])
        set_(self, "trusted_interfaces", tuple(sorted(set(map(validate_ifname, trusted)))))

    @property
    def trusted(self) -> tuple[str, ...]:
        """``trusted_interfaces``, by its earlier name."""
        return self.trusted_interfaces

    def mode_of(self, version: int) -> GatewayMode:
        """The mode of IP family ``version`` (4 or 6)."""
        return self.mode_ipv4 if version == 4 else self.mode_ipv6

    @property
    def mode(self) -> GatewayMode | None:
        """The one mode of both families; None when they differ."""
        return self.mode_ipv4 if self.mode_ipv4 == self.mode_ipv6 else None

    @property
    def modes_text(self) -> str:
        """``routed``, or ``ipv4 nat ipv6 routed`` when the families differ."""
        return self.mode or f"ipv4 {self.mode_ipv4} ipv6 {self.mode_ipv6}"

    @property
    def default(self) -> bool:
        return self.mode == "nat" and not self.trusted


# What a table holds, each one or more kernel elements.
Item = Binding | Bridge | Link | Isolation | Gateway

# What an assigned port is remembered by: host IP (0.0.0.0 for every address), protocol, container port.
Slot = tuple[IPAddress, Protocol, int]

# Table._mark: journal runs, steps of the last run, port cursor, endpoint, its addresses registered,
# its bridge, placed, placed before.
_Mark = tuple[int, int, dict[Protocol, int], str, int, str | None, bool, str | None]


def preferred(bindings: Iterable[Binding]) -> dict[Slot, list[int]]:
    """The host ports ``bindings`` have, by slot, lowest first: what
    :meth:`Table.publish` should assign again to publish them the same way."""
    ports: dict[Slot, list[int]] = {}
    for b in bindings:
        # A same-port range may be assigned ports merged (see Table._merge_runs): each port its slot.
        for port in range(b.host_port, b.host_port + b.count):
            ports.setdefault((b.host_ip, b.proto, b.container_port + port - b.host_port), []).append(port)
    return {slot: sorted(set(p)) for slot, p in ports.items()}


def describe(item: Item) -> str:
    """One item as a person reads it: ``port web01 5000/tcp -> 0.0.0.0:8080``."""
    match item:
        case RoutedBinding():
            return f"port {item.endpoint} {item.port_line()} (routed: host port not mapped)"
        case Binding():
            return f"port {item.endpoint} {item.port_line()}"
        case Bridge():
            return f"bridge {item.name} {' '.join(map(str, item.subnets))}"
        case Link():
            return f"link {item}"
        case Isolation():
            return f"isolate {item.bridge}"
        case Gateway():
            return f"gateway {item.bridge} {item.modes_text}" + "".join(f" trusted {i}" for i in item.trusted)
        case _:
            assert_never(item)


@dataclass(frozen=True, slots=True)
class Drift:
    """How the kernel (and the host) differ from natmap's store of what should exist.

    ``missing``: what the store holds and the kernel does not; ``unexpected``:
    what the kernel holds in natmap's form and the store does not;
    ``table_missing``: the whole table is gone; ``structure``: natmap's own
    chains, rules, sets and maps missing or changed, and objects in its table
    it did not make; ``foreign``: set elements or rules natmap did not write;
    ``host``: host settings natmap needs and finds unset (route_localnet,
    the ``::1`` route, br_netfilter's hooks); ``interrupted``: a natmap
    process died in the middle of a change; ``remembered``: whether there is
    a store at all (without one, run ``natmap adopt``); ``in_kernel``:
    whether the kernel holds the table (told only without a store: with
    neither, natmap was not used here and there is nothing to check or
    adopt); ``shadowing``:
    bindings that catch a host socket's traffic (natmap.guest); ``conflicts``:
    bridges another natmap table of the namespace holds in another gateway
    setting (natmap.guest: the setting is the namespace's); ``notes``:
    what works other than one would expect, though nothing drifted (it does
    not make the drift true).
    """

    missing: tuple[Item, ...] = ()
    unexpected: tuple[Item, ...] = ()
    table_missing: bool = False
    structure: tuple[str, ...] = ()
    remembered: bool = True
    in_kernel: bool = True
    foreign: tuple[str, ...] = ()
    host: tuple[str, ...] = ()
    interrupted: bool = False
    notes: tuple[str, ...] = ()
    shadowing: tuple[str, ...] = ()  # bindings that take a host socket's traffic (natmap.guest)
    conflicts: tuple[str, ...] = ()  # bridges other natmap tables hold in another gateway setting

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.table_missing or self.structure
                    or self.foreign or self.host or self.interrupted or self.shadowing or self.conflicts)

    def __str__(self) -> str:
        lines = []
        if not self.remembered and not self.in_kernel:
            lines.append("nothing stored and no natmap table in the kernel: nothing to check "
                         "(nothing was published with this table here)")
        elif not self.remembered:
            lines.append("nothing stored (no natmap store for this table): only the table's structure "
                         "was checked; `natmap adopt` makes the store from the kernel")
        if self.interrupted:
            lines.append("a natmap process died in the middle of a change (repair finishes it)")
        if self.table_missing:
            lines.append("the table is gone from the kernel")
        lines += [f"structure: {problem}" for problem in self.structure]
        lines += [f"shadowing: {problem}" for problem in self.shadowing]
        lines += [f"conflict: {problem}" for problem in self.conflicts]
        lines += [f"missing: {describe(item)}" for item in self.missing]
        lines += [f"unexpected: {describe(item)}" for item in self.unexpected]
        lines += [f"foreign: {what}" for what in self.foreign]
        lines += [f"host: {what}" for what in self.host]
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines) or "no drift"


@dataclass(frozen=True, slots=True)
class Change:
    """The net difference a transaction makes: what a backend renders."""

    add: tuple[Item, ...] = ()
    delete: tuple[Item, ...] = ()
    # Each side sorted by kind once: a big change has 10,000 items, asked for by kind often.
    _added: dict[type, list[Item]] = field(init=False, repr=False, compare=False)
    _deleted: dict[type, list[Item]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_added", _by_kind(self.add))
        object.__setattr__(self, "_deleted", _by_kind(self.delete))

    def __bool__(self) -> bool:
        return bool(self.add or self.delete)

    def added(self, kind: type[T]) -> list[T]:
        return list(self._added.get(kind, ()))  # type: ignore[arg-type]

    def deleted(self, kind: type[T]) -> list[T]:
        return list(self._deleted.get(kind, ()))  # type: ignore[arg-type]


def misheld(items: Iterable[Item], bridges_of: Mapping[str, str] = MappingProxyType({})) -> list[str]:
    """Each binding of ``items`` held in a form (routed or mapped, see
    :func:`held_routed`) its bridge's gateway mode does not want, in words.
    A binding's bridge is its endpoint's in ``bridges_of`` (the store's
    record), else the one whose subnets hold its container address."""
    items = list(items)
    bridges = [i for i in items if isinstance(i, Bridge)]
    gateways = {i.bridge: i for i in items if isinstance(i, Gateway)}
    problems = []
    for b in items:
        if not isinstance(b, Binding):
            continue
        recorded = [bridge.name for bridge in bridges if bridge.name == bridges_of.get(b.endpoint)]
        on = recorded or [bridge.name for bridge in bridges if bridge.contains(b.container_ip)]
        gateway = gateways.get(on[0], Gateway(on[0])) if len(on) == 1 else None
        mode = gateway and gateway.mode_of(b.version)
        if gateway and isinstance(b, RoutedBinding) != held_routed(b, mode == "routed"):
            problems.append(f"{describe(b)} is held {'routed' if isinstance(b, RoutedBinding) else 'mapped'} "
                            f"on bridge {on[0]} in IPv{b.version} gateway mode {mode} (`natmap gateway {on[0]} "
                            f"{_gateway_options(gateway)}` holds it as the mode wants)")
    return sorted(problems)


def _gateway_options(gateway: Gateway) -> str:
    """The ``natmap gateway`` options that set ``gateway``'s modes."""
    if gateway.mode is not None:
        return f"--mode {gateway.mode}"
    return f"--mode-ipv4 {gateway.mode_ipv4} --mode-ipv6 {gateway.mode_ipv6}"


def _by_kind(items: tuple[Item, ...]) -> dict[type, list[Item]]:
    kinds: dict[type, list[Item]] = {}
    for kind, run in itertools.groupby(items, type):  # a change's items come in runs of a kind: looped in C
        kinds.setdefault(kind, []).extend(run)
    return kinds


class Table:
    """natmap's model of one kernel table.

    Lookups by key, by (version, proto, port) and by endpoint make every
    publish cost the same whatever the number of bindings already there.
    """

    def __init__(self, items: Iterable[Item] = (), bridges_of: Mapping[str, str] = MappingProxyType({})) -> None:
        # Binding.key: (version, int(host address), proto, port)
        self._by_key: dict[tuple[int, int, str, int], Binding] = {}
        self._specific: dict[tuple[int, str, int], int] = {}  # (version, proto, port): bindings on a specific address
        # Same-port ranges (count > 1), by (version, proto); they are few. And
        # the single ports, by (version, proto), counted: what a range is checked against.
        self._ranges: dict[tuple[int, str], dict[tuple[int, int, str, int], Binding]] = {}
        self._ports: dict[tuple[int, str], dict[int, int]] = {}
        self._by_endpoint: dict[str, dict[tuple[int, int, str, int], Binding]] = {}
        self._by_container: dict[tuple[int, int], str] = {}  # (version, int(address)) -> endpoint
        self.bridges: dict[str, Bridge] = {}
        self._links: dict[tuple[str, str], Link] = {}
        self.isolated: set[str] = set()
        self.gateways: dict[str, Gateway] = {}  # only bridges not in the default mode
        # Runs of one verb (a big publish is one run): the steps since the last commit.
        self._journal: list[tuple[Verb, list[Item]]] = []
        self._next_port: dict[Protocol, int] = {}
        self._committed_next_port: dict[Protocol, int] = {}  # what rollback() restores
        self._links_of: dict[str, set[tuple[str, str]]] = {}  # endpoint -> keys of its links
        self._addresses_of: dict[str, list[tuple[int, int]]] = {}  # endpoint -> its _by_container keys
        # endpoint -> the bridge it was published on (see bridge_of), as the store records it
        self._bridge_of: dict[str, str] = dict(bridges_of)
        self._placed: dict[str, str | None] = {}  # endpoint -> its bridge at the last commit, if changed since
        self._requests: dict[str, tuple[object, frozenset[Binding]]] = {}  # see remember()
        for item in items:
            self._apply(Verb.ADD, item)

    # --- reading ---------------------------------------------------------------

    def bindings(self) -> list[Binding] | Bindings:
        """Every binding, one a port (ranges expanded), in ``docker port`` order."""
        return docker_order(self._by_key.values())

    def of(self, endpoint: str) -> list[Binding] | Bindings:
        """The bindings of one endpoint, one a port, in ``docker port`` order."""
        return docker_order(self._by_endpoint.get(endpoint, {}).values())

    def on(self, endpoint: str, port: int, proto: Protocol) -> list[Binding]:
        """The bindings of one endpoint's container port (``docker port NAME 5000``),
        in ``docker port`` order; a range's one port without expanding the rest."""
        found = [b if b.count == 1 else b.at(port) for b in self._by_endpoint.get(endpoint, {}).values()
                 if b.proto == proto and b.container_port <= port < b.container_port + b.count]
        return sorted(found, key=Binding.sort_key)

    def held_bindings(self) -> list[Binding]:
        """Every binding, in no particular order, same-port ranges as they are
        held (one each): what to check or clean per kernel element."""
        return list(self._by_key.values())

    def bindings_of(self, endpoint: str) -> list[Binding]:
        """The bindings of one endpoint, in no particular order, same-port ranges as
        they are held (:meth:`of` expands and sorts them)."""
        return list(self._by_endpoint.get(endpoint, {}).values())

    def endpoints(self) -> list[str]:
        return sorted(self._by_endpoint)

    def links(self) -> list[Link]:
        """Every link, by source, then target."""
        return [self._links[key] for key in sorted(self._links)]

    def items(self) -> set[Item]:
        """Everything the table holds: bindings, bridges, links, isolated bridges."""
        return {*self._by_key.values(), *self.bridges.values(), *self._links.values(),
                *(Isolation(bridge) for bridge in self.isolated), *self.gateways.values()}

    def clash(self, binding: Binding) -> Binding | None:
        """An existing binding that would catch some of the same packets, if any."""
        version, address, proto, first = binding.key
        if binding.count == 1 and (version, proto) not in self._ranges:  # most: no range to walk
            return self._single_at(binding.key)
        found = self._range_over(version, address, proto, first, binding.last_port)
        if found is not None or binding.count == 1:
            return found or self._single_at(binding.key)
        # A range against the single ports: whichever is fewer is walked.
        ports = self._ports.get((version, proto), {})
        last = binding.last_port
        candidates = ((p for p in ports if first <= p <= last) if len(ports) < binding.count
                      else (p for p in range(first, last + 1) if p in ports))
        return next(filter(None, (self._single_at((version, address, proto, p)) for p in candidates)), None)

    def _single_at(self, key: tuple[int, int, str, int]) -> Binding | None:
        """The binding (not a range) that catches packets to ``key``'s address (0: any) and port."""
        if not self._taken_single(*key):
            return None
        version, _, proto, port = key
        # The same address, else 0.0.0.0 or ::, else (for 0.0.0.0 or ::, rarely) a specific one.
        return (self._by_key.get(key) or self._by_key.get((version, 0, proto, port))
                or next(b for b in self._by_key.values() if b.key[0] == version and b.key[2:] == (proto, port)))

    def _range_over(self, version: int, address: int, proto: str, first: int, last: int) -> Binding | None:
        """A same-port range that catches packets to this address (0: any) on a port in first-last."""
        for r in self._ranges.get((version, proto), {}).values():
            if r.host_port <= last and first <= r.last_port and (not address or not r.key[1] or r.key[1] == address):
                return r
        return None

    def _taken(self, version: int, address: int, proto: str, port: int) -> bool:
        """Whether a binding already catches packets to this address (0: any), protocol and port."""
        return (self._taken_single(version, address, proto, port)
                or (version, proto) in self._ranges and self._range_over(version, address, proto, port, port) is not None)

    def _taken_single(self, version: int, address: int, proto: str, port: int) -> bool:
        if address == 0:
            return (version, 0, proto, port) in self._by_key or (version, proto, port) in self._specific
        return (version, address, proto, port) in self._by_key or (version, 0, proto, port) in self._by_key

    def __len__(self) -> int:
        return len(self._by_key)

    # --- changing --------------------------------------------------------------

    def publish(self, endpoint: Endpoint, specs: Sequence[PortSpec], *,
                publish_all: bool = False, pool: PortPool = PortPool(),
                bridge: Bridge | None = None,
                prefer: Mapping[Slot, Sequence[int]] = MappingProxyType({})) -> list[Binding]:
        """Add the bindings ``specs`` (and ``-P``) ask for; return them, ports assigned.

        An assigned port is the first free one of ``prefer[(host_ip, proto,
        container_port)]`` (``host_ip`` 0.0.0.0 for a spec without one), so
        re-applying a configuration keeps its ports (see :func:`preferred`). Raises
        :class:`ConflictError` when a binding would catch packets an existing
        one catches, or when the name belongs to another address; then the
        call changed nothing (what its earlier specs made is taken back), as
        ``docker run`` publishes none of its ports when one fails. A binding
        already there, the same in every field, is returned again.
        """
        mark = self._mark(endpoint.name)
        try:
            return self._publish(endpoint, specs, publish_all, pool, bridge, prefer)
        except BaseException:
            self._back_to(mark)
            raise

    def _mark(self, endpoint: str) -> _Mark:
        """Where the journal, the port cursor and ``endpoint``'s placement are:
        what :meth:`_back_to` takes a failed call back to."""
        steps = len(self._journal[-1][1]) if self._journal else 0
        return (len(self._journal), steps, dict(self._next_port), endpoint, len(self._addresses_of.get(endpoint, ())),
                self._bridge_of.get(endpoint), endpoint in self._placed, self._placed.get(endpoint))

    def _back_to(self, mark: _Mark) -> None:
        """Undo every step journaled since ``mark``, newest first, and the port
        cursor's and the endpoint's placement's moves (rollback() of one call)."""
        runs, steps, next_port, endpoint, addresses, bridge, placed, placed_before = mark
        while len(self._journal) > runs:
            verb, items = self._journal.pop()
            self._undo(verb, items)
        if runs:
            verb, items = self._journal[runs - 1]
            self._undo(verb, items[steps:])
            del items[steps:]
        # An address the call registered for an endpoint that keeps bindings
        # (its IPv6 one, first published now) is its no more: _remove lets an
        # endpoint's addresses go only with its last binding.
        for container in self._addresses_of.get(endpoint, [])[addresses:]:
            del self._by_container[container]
        if addresses:
            del self._addresses_of[endpoint][addresses:]
        self._next_port = next_port
        if bridge is None:
            self._bridge_of.pop(endpoint, None)
        else:
            self._bridge_of[endpoint] = bridge
        if placed:
            self._placed[endpoint] = placed_before
        else:
            self._placed.pop(endpoint, None)

    def _undo(self, verb: Verb, items: list[Item]) -> None:
        for item in reversed(items):
            self._apply(Verb.DELETE if verb is Verb.ADD else Verb.ADD, item)

    def _publish(self, endpoint: Endpoint, specs: Sequence[PortSpec], publish_all: bool, pool: PortPool,
                 bridge: Bridge | None, prefer: Mapping[Slot, Sequence[int]]) -> list[Binding]:
        self._check_identity(endpoint)
        if bridge is not None:
            self._ensure_bridge(endpoint, bridge)
            self._place(endpoint.name, bridge.name)
        specs = tuple(specs)  # read twice below: an iterator would be empty the second time
        # The one-to-one loop knows only the default gateway mode's bindings: a
        # bridge in another mode (a gateway item) takes the general way.
        if not publish_all and endpoint.bridge not in self.gateways:
            ones = self._publish_ones(endpoint, specs)
            if ones is not None:
                return ones
        made: list[Binding] = []
        for spec in specs:
            made += self._publish_spec(endpoint, spec, pool, prefer)
        if publish_all:
            made += self._publish_exposed(endpoint, pool, prefer)
        made = self._merge_runs(made, specs)
        return made if all(b.count == 1 for b in made) else Bindings(made)  # type: ignore[return-value]

    def _merge_runs(self, made: list[Binding], specs: Sequence[PortSpec]) -> list[Binding]:
        """Assigned ports (``-P``, ``-p 80``) that happen to equal their
        container ports, two or more in a row (``-P`` of ``EXPOSE 40000-40099``
        given 40000-40099), as one same-port range each, as an explicit ``-p
        40000-40099:40000-40099`` would be: one kernel element. Only bindings
        this call added (the table holds that very object) and whose host port
        no spec names are merged (``-p 5000:5000`` published again must find
        itself); ``made`` is returned with them replaced."""
        same = [b for b in made if b.host_port == b.container_port and b.count == 1]
        if len(same) < 2:  # most publishes
            return made
        named = {(spec.proto, port) for spec in specs
                 if spec.host_ports is not None and len(spec.host_ports) == len(spec.container_ports)
                 for port in spec.host_ports}
        # By kind too: a bridge in routed mode makes RoutedBindings, whose range is one as well.
        runs: dict[tuple[str, Protocol, IPAddress, IPAddress, type[Binding]], list[Binding]] = {}
        for b in same:
            if (b.proto, b.host_port) not in named and self._by_key.get(b.key) is b:
                runs.setdefault((b.endpoint, b.proto, b.host_ip, b.container_ip, type(b)), []).append(b)
        merged: set[int] = set()
        ranges: list[Binding] = []
        for (name, proto, host_ip, container_ip, kind), singles in runs.items():
            singles.sort(key=lambda b: b.host_port)
            for run in _consecutive(singles):
                if len(run) < 2:
                    continue
                for b in run:
                    self._remove(b)
                    merged.add(id(b))
                first = run[0].host_port
                ranges.append(kind(name, proto, host_ip, first, container_ip, first, len(run)))
                self._insert(ranges[-1])
        if not ranges:
            return made
        # This call journaled them last: its bindings and at most a bridge, at the end of the run.
        steps = self._steps(Verb.ADD)
        tail = min(len(steps), len(made) + 1)
        steps[len(steps) - tail:] = [*(item for item in steps[len(steps) - tail:] if id(item) not in merged), *ranges]
        return [b for b in made if id(b) not in merged] + ranges

    def unpublish(self, endpoint: str) -> list[Binding]:
        """Remove every binding and every link of ``endpoint``; return the
        bindings (none if unknown), in no particular order, same-port ranges as
        they are held (:func:`docker_order` lists them as ``docker port`` does)."""
        removed = self.bindings_of(endpoint)
        steps = self._steps(Verb.DELETE) if removed else []
        for binding in removed:
            self._remove(binding)  # what _do does, without its dispatch: a big unpublish has thousands
            steps.append(binding)
        for key in sorted(self._links_of.get(endpoint, ())):
            self._do(Verb.DELETE, self._links[key])
        self._place(endpoint, None)  # gone: published again, it may be on another bridge
        return removed

    def _place(self, endpoint: str, bridge: str | None) -> None:
        """Record that ``endpoint`` is on ``bridge`` (None: on none now)."""
        before = self._bridge_of.get(endpoint)
        if before != bridge:
            self._placed.setdefault(endpoint, before)
            if bridge is None:
                del self._bridge_of[endpoint]
            else:
                self._bridge_of[endpoint] = bridge

    def placed(self) -> dict[str, str | None]:
        """Which endpoint is on which bridge, where that changed since the last
        :meth:`commit` (None: forgotten): what the store is to record, so a
        gateway mode set in another process finds the bindings published on
        the bridge whatever its subnets have become."""
        return {name: self._bridge_of.get(name) for name, before in self._placed.items()
                if self._bridge_of.get(name) != before}

    def remember(self, endpoint: str, request: object, made: Iterable[Binding]) -> None:
        """Note that publishing ``request`` (any value: Config uses the
        endpoint, its specs and -P) gave ``endpoint`` the bindings ``made``."""
        held = made.held if isinstance(made, Bindings) else made  # ranges as the table holds them
        self._requests[endpoint] = (request, frozenset(held))

    def holds(self, endpoint: str, request: object) -> bool:
        """Whether ``endpoint`` holds exactly what publishing ``request`` gave it:
        publishing it again would give the same (its ports are its own). Only
        what :meth:`remember` noted in this process counts."""
        noted = self._requests.get(endpoint)
        return (noted is not None and noted[0] == request
                and noted[1] == frozenset(self._by_endpoint.get(endpoint, {}).values()))

    def knows(self, endpoint: str) -> bool:
        """Whether ``endpoint`` has a binding or a link here."""
        return endpoint in self._by_endpoint or endpoint in self._links_of

    def link(self, source: Endpoint | str, target: Endpoint | str, alias: str | None = None,
             target_env: Sequence[str] = ()) -> Link:
        """Open the flows of a link from ``source`` to ``target``'s exposed ports;
        one link per source and target. An endpoint given by name is taken from
        its bindings: its addresses, and its published container ports as exposed."""
        source_name, source_ips, _ = self._linkable(source)
        target_name, target_ips, ports = self._linkable(target)
        link = Link(source_name, target_name, alias or target_name, source_ips, target_ips,
                    ports, tuple(target_env))
        if not link.ports:
            raise SpecError(f"{target_name!r} exposes no ports: a link to it would open nothing (and "
                            "the kernel would keep nothing of it); expose or publish a port of it first",
                            target_name)
        existing = self._links.get((link.source, link.target))
        if existing == link:
            return link
        if existing is not None:
            raise ConflictError(f"{link.source!r} is already linked to {link.target!r} as "
                                f"{existing.alias!r}; unlink it first")
        self._do(Verb.ADD, link)
        return link

    def _linkable(self, endpoint: Endpoint | str) -> tuple[str, tuple[IPAddress, ...], tuple[Port, ...]]:
        """Name, addresses and exposed ports of a link's end."""
        if isinstance(endpoint, Endpoint):
            self._check_identity(endpoint)
            return (endpoint.name, tuple(ip for ip in (endpoint.ip, endpoint.ipv6) if ip),
                    exposed_ports(endpoint.expose))
        bindings = self.of(validate_name(endpoint))
        if not bindings:
            raise NotFoundError(f"endpoint {endpoint!r} has no bindings to learn its addresses "
                                "from: publish it first (or, from Python, pass a natmap.Endpoint)")
        return (endpoint, tuple(sorted({b.container_ip for b in bindings}, key=lambda ip: ip.version)),
                exposed_ports(f"{b.container_port}/{b.proto.value}" for b in bindings))

    def unlink(self, source: str, target: str) -> Link | None:
        """Close the flows of the link from ``source`` to ``target``; return it."""
        link = self._links.get((source, target))
        if link is not None:
            self._do(Verb.DELETE, link)
        return link

    def isolate(self, bridge: str, closed: bool = True) -> None:
        """Close (or open again) inter-container traffic on ``bridge``."""
        if (bridge in self.isolated) != closed:
            self._do(Verb.ADD if closed else Verb.DELETE, Isolation(bridge))

    def set_gateway(self, gateway: Gateway, bridge: Bridge | None = None) -> None:
        """Put ``gateway.bridge`` in ``gateway``'s mode (the default one is kept as no item).
        Into or out of ``routed`` (per IP family), the bindings of that family of the
        endpoints published on the bridge (:meth:`bridge_of`; ``bridge``, as the host has it, only for an
        endpoint the table knows no bridge of) change form."""
        existing = self.gateways.get(gateway.bridge)
        if existing != gateway and not (existing is None and gateway.default):
            if existing is not None:
                self._do(Verb.DELETE, existing)
            if not gateway.default:
                self._do(Verb.ADD, gateway)
        # Also with the mode unchanged: what check() reports held in the wrong form is held right again.
        self._reroute(gateway, bridge)

    def bridge_of(self, endpoint: str) -> str | None:
        """The bridge ``endpoint`` was published on: as this table (and the
        store, :meth:`placed`) recorded it, else the one bridge of the table whose subnets (as they were when it
        was added, not the host's now) hold the endpoint's address; None if
        none does (or, in a table from before overlaps were refused, several)."""
        recorded = self._bridge_of.get(endpoint)
        if recorded is not None:
            return recorded
        addresses = [ipaddress.ip_address(a[1]) if a[0] == 4 else ipaddress.IPv6Address(a[1])
                     for a in self._addresses_of.get(endpoint, ())]
        found = [name for name, bridge in self.bridges.items() if any(map(bridge.contains, addresses))]
        return found[0] if len(found) == 1 else None

    def _reroute(self, gateway: Gateway, where: Bridge | None = None) -> None:
        """Hold the bindings of the endpoints published on ``gateway.bridge`` as
        the mode of each one's IP family wants them (see :func:`held_routed`),
        host sides kept. An endpoint this table knows no bridge of counts as
        on it if ``where`` (the bridge as the host has it) holds its address."""
        name, bridge_of = gateway.bridge, functools.cache(self.bridge_of)
        routed = {4: gateway.mode_ipv4 == "routed", 6: gateway.mode_ipv6 == "routed"}
        for b in [b for b in self._by_key.values() if isinstance(b, RoutedBinding) != held_routed(b, routed[b.version])
                  and (bridge_of(b.endpoint) == name or (bridge_of(b.endpoint) is None and where is not None
                                                         and where.contains(b.container_ip)))]:
            self._do(Verb.DELETE, b)
            self._do(Verb.ADD, b.mapped() if isinstance(b, RoutedBinding) else RoutedBinding.of(b))

    def change(self) -> Change:
        """The net change journaled since the last :meth:`commit` or :meth:`rollback`."""
        if len(self._journal) == 1:  # already net: nothing is added (or deleted) twice in a row
            verb, items = self._journal[0]
            return Change(add=tuple(items)) if verb is Verb.ADD else Change(delete=tuple(items))
        net: dict[Item, Verb] = {}
        for verb, items in self._journal:
            for item in items:
                if net.get(item, verb) is not verb:
                    del net[item]  # added then deleted (or the reverse): no change
                else:
                    net[item] = verb
        return Change(add=tuple(i for i, v in net.items() if v is Verb.ADD),
                      delete=tuple(i for i, v in net.items() if v is Verb.DELETE))

    def commit(self) -> None:
        """The journaled change is now in the kernel: forget the journal."""
        self._journal.clear()
        self._committed_next_port = dict(self._next_port)
        self._placed.clear()

    def rollback(self) -> None:
        """Undo every journaled step, newest first, and the port cursor's moves:
        a dry run (``NatMap.plan``, ``preview``) leaves nothing a later call sees."""
        for verb, items in reversed(self._journal):
            self._undo(verb, items)
        self._journal.clear()
        self._next_port = dict(self._committed_next_port)
        self._requests.clear()
        for name, before in self._placed.items():
            self._bridge_of.pop(name, None)
            if before is not None:
                self._bridge_of[name] = before
        self._placed.clear()

    def _do(self, verb: Verb, item: Item) -> None:
        self._apply(verb, item)
        self._steps(verb).append(item)

    def _steps(self, verb: Verb) -> list[Item]:
        """The journal's last run, to append steps of ``verb`` to."""
        if not self._journal or self._journal[-1][0] is not verb:
            self._journal.append((verb, []))
        return self._journal[-1][1]

    def _apply(self, verb: Verb, item: Item) -> None:
        """Change the indexes, and nothing else."""
        add = verb is Verb.ADD
        match item:
            case Binding():
                (self._insert if add else self._remove)(item)
            case Bridge():
                if add:
                    self.bridges[item.name] = item
                else:
                    del self.bridges[item.name]
            case Link():
                key = (item.source, item.target)
                if add:
                    self._links[key] = item
                    for name in key:
                        self._links_of.setdefault(name, set()).add(key)
                else:
                    del self._links[key]
                    for name in key:
                        self._links_of[name].discard(key)
                        if not self._links_of[name]:
                            del self._links_of[name]
            case Isolation():
                (self.isolated.add if add else self.isolated.discard)(item.bridge)
            case Gateway():
                if add:
                    self.gateways[item.bridge] = item
                else:
                    del self.gateways[item.bridge]
            case _:
                assert_never(item)

    # --- the steps -------------------------------------------------------------

    def _check_identity(self, endpoint: Endpoint) -> None:
        existing = next(iter(self._by_endpoint.get(endpoint.name, {}).values()), None)
        if existing is not None and existing.container_ip != endpoint.address(existing.version):
            raise ConflictError(
                f"endpoint name {endpoint.name!r} is already published with address "
                f"{existing.container_ip}, not {endpoint.address(existing.version)}")
        for address in (endpoint.ip, endpoint.ipv6):
            owner = address and self._by_container.get((address.version, int(address)))
            if owner and owner != endpoint.name:
                raise ConflictError(f"address {address} of endpoint {endpoint.name!r} already "
                                    f"belongs to endpoint {owner!r}")

    def _ensure_bridge(self, endpoint: Endpoint, bridge: Bridge) -> None:
        for version in (4, 6):
            address = endpoint.address(version)
            if address is not None and not bridge.contains(address):
                raise SpecError(
                    f"{address} of endpoint {endpoint.name!r} is in no subnet of bridge "
                    f"{bridge.name} ({', '.join(map(str, bridge.subnets)) or 'no addresses'})",
                    str(address), None)
        self.add_bridge(bridge)

    def add_bridge(self, bridge: Bridge) -> None:
        """natmap masquerades and guards ``bridge`` from now on (a publish on it,
        or a gateway mode set for it, adds it); bridges are long-lived: added
        once, kept. One natmap knows already with other subnets (re-addressed
        since) is replaced: its subnets recorded as the host has them now."""
        known = self.bridges.get(bridge.name)
        # (The same object again, as the engine passes it, is not compared: hashing subnets is slow.)
        if known is not bridge and (known is None or set(known.subnets) != set(bridge.subnets)):
            # Only subnets new to it are checked: a table adopted from nft's
            # kernel recorded each bridge with every bridge's subnets.
            new = [n for n in bridge.subnets if known is None or n not in known.subnets]
            for other in self.bridges.values():
                if other.name == bridge.name:
                    continue
                overlap = next((n for n in new for m in other.subnets if n.overlaps(m)), None)
                if overlap is not None:
                    raise SpecError(f"subnet {overlap} of bridge {bridge.name} overlaps bridge {other.name}'s "
                                    f"({', '.join(map(str, other.subnets))}): natmap cannot tell their "
                                    "containers apart", str(overlap), None)
            if known is not None:
                self._do(Verb.DELETE, known)
            self._do(Verb.ADD, bridge)

    def _publish_spec(self, endpoint: Endpoint, spec: PortSpec, pool: PortPool,
                      prefer: Mapping[Slot, Sequence[int]]) -> list[Binding]:
        host_ips = self._host_ips(endpoint, spec)
        host = spec.host_ports
        made: list[Binding] = []
        if host is not None and len(host) > 1 and host == spec.container_ports:  # a same-port range
            for host_ip in host_ips:
                container_ip = endpoint.address(host_ip.version)
                assert container_ip is not None  # _host_ips gives only the endpoint's own families
                made.append(Binding(endpoint.name, spec.proto, host_ip, host.start, container_ip, host.start, len(host)))
            return self._add_all(self._routed(endpoint.bridge, made))
        if host is None:
            ports = [self._assign(spec.proto, host_ips, pool, prefer=prefer.get((host_ips[0], spec.proto, port), ()))
                     for port in spec.container_ports]
        elif len(host) != len(spec.container_ports):  # a pool to pick one port from
            ports = [self._assign(spec.proto, host_ips, pool, within=host,
                                  prefer=prefer.get((host_ips[0], spec.proto, spec.container_ports.start), ()))]
        else:
            ports = list(host)
        pairs = list(zip(ports, spec.container_ports))
        for host_ip in host_ips:
            (host_port, container_port), container_ip = pairs[0], endpoint.address(host_ip.version)
            assert container_ip is not None  # _host_ips gives only the endpoint's own families
            first = Binding(endpoint.name, spec.proto, host_ip, host_port, container_ip, container_port)
            if len(pairs) == 1:  # most specs: one port
                made.append(first)
            else:
                made += first._on_ports(pairs)
        return self._add_all(self._routed(endpoint.bridge, made))

    def _routed(self, bridge: str, made: list[Binding]) -> list[Binding]:
        """``made`` as ``bridge``'s gateway mode holds bindings: RoutedBinding
        where the binding's IP family is ``routed``."""
        gateway = self.gateways.get(bridge)
        if gateway is None or "routed" not in (gateway.mode_ipv4, gateway.mode_ipv6):
            return made
        return [RoutedBinding.of(b) if held_routed(b, gateway.mode_of(b.version) == "routed") else b for b in made]

    def _publish_ones(self, endpoint: Endpoint, specs: Sequence[PortSpec]) -> list[Binding] | None:
        """What _publish_spec does for each spec, if each maps each host port
        to one container port (see :func:`_one_to_one`; else None, and nothing
        done), a run of ports at a time (a sandbox manager publishes 10,000
        ``PORT:PORT`` in one transaction; at a fifth of the cost), in the same
        order (spec, then IP family, then port): see :func:`_runs` and
        :meth:`_add_run`. The result is an :class:`_InDockerOrder` list when it
        is in ``docker port`` order already (rising container ports: most
        publishes)."""
        name = endpoint.name
        targets = [(_ANY[v], address, v) for v, address in ((4, endpoint.ip), (6, endpoint.ipv6))
                   if address is not None]
        one_family = len(targets) == 1
        runs = _runs(specs, one_family)
        if runs is None:
            return None
        steps = self._steps(Verb.ADD)
        made: list[Binding] = _InDockerOrder()  # most are: one copy fewer
        last, ordered = 0, True
        for proto, host_first, container_first, count, singles in runs:
            # In docker_order's order (by container port first, then protocol, then
            # address: 0.0.0.0 before ::) while each run's container ports follow the
            # last run's, and IPv4 and IPv6 bindings alternate a port at a time.
            ordered = ordered and container_first > last and (singles or one_family)
            last = container_first + count - 1
            key = proto._value_
            families = [_bindings_on(Binding, name, proto, host_ip, container_ip, (version, 0, key),  # 0.0.0.0, ::
                                     zip(range(host_first, host_first + count),
                                         range(container_first, container_first + count)))
                        for host_ip, container_ip, version in targets]
            if one_family:
                run = families[0]
            elif singles:  # specs of one port each: each port's IPv4 binding, then its IPv6 one
                run = [b for pair in zip(*families) for b in pair]
            else:  # one spec: its IPv4 bindings, then its IPv6 ones
                run = families[0] + families[1]
            self._add_run(run, targets, range(host_first, host_first + count), steps)
            made += run
        return made if ordered else list(made)

    def _add_run(self, run: list[Binding], targets: list[tuple[IPAddress, IPAddress, int]], ports: range,
                 steps: list[Item]) -> None:
        """Add ``run``, the bindings of one endpoint and protocol on the host
        ``ports`` for each of ``targets`` (host address, container address, IP
        version), as :meth:`_add_all` adds them, journaled in ``steps``.

        When no binding catches any of their packets (most publishes) they are
        inserted at once, as :meth:`_insert` would insert them one by one; else
        one by one: as _insert does when the port is free and the endpoint's
        address registered, else through _add_all, which inserts, skips an
        equal one or raises, as it does."""
        name, proto = run[0].endpoint, run[0].key[2]
        by_key, specific, ranges, all_ports = self._by_key, self._specific, self._ranges, self._ports
        # Free when no same-port range of the family is there and no single binding
        # on any of the ports (_ports counts them on every address): checked by
        # port numbers, cheaper to look up than keys.
        if not any((version, proto) in ranges or not all_ports.get((version, proto), {}).keys().isdisjoint(ports)
                   for _, _, version in targets):
            new = dict(zip(map(_KEY, run), run))  # each key hashed once: updating from a dict reuses the hashes
            by_key.update(new)
            of_endpoint = self._by_endpoint.get(name)
            if of_endpoint is None:  # a new endpoint (most publishes of a big transaction): these are all it has
                self._by_endpoint[name] = new
            else:
                of_endpoint.update(new)
            for _, container_ip, version in targets:
                counts = all_ports.get((version, proto))
                if counts is None:
                    counts = all_ports[(version, proto)] = {}
                counts.update(dict.fromkeys(ports, 1))
                container = (version, int(container_ip))
                if container not in self._by_container:  # its first binding here: its address is its own now
                    self._by_container[container] = name
                    self._addresses_of.setdefault(name, []).append(container)
            steps += run
            return
        known = {version: self._by_container.get((version, int(address))) == name for _, address, version in targets}
        for binding, key in zip(run, map(_KEY, run)):
            version, _, _, port = key
            counts, of_endpoint = all_ports.get((version, proto)), self._by_endpoint.get(name)
            if (not known[version] or counts is None or of_endpoint is None or key in by_key
                    or (version, proto, port) in specific or (version, proto) in ranges):
                self._add_all([binding])
                known[version] = True  # _insert registered the address (or it raised)
            else:
                by_key[key] = binding
                counts[port] = counts.get(port, 0) + 1
                of_endpoint[key] = binding
                steps.append(binding)

    def _publish_exposed(self, endpoint: Endpoint, pool: PortPool,
                         prefer: Mapping[Slot, Sequence[int]]) -> list[Binding]:
        published = {(b.proto, port) for b in self._by_endpoint.get(endpoint.name, {}).values()
                     for port in range(b.container_port, b.container_port + b.count)}
        made = []
        for exposed in endpoint.expose:
            for port in exposed.container_ports:
                if (exposed.proto, port) not in published:
                    made += self._publish_spec(
                        endpoint, PortSpec(None, None, PortRange(port), exposed.proto), pool, prefer)
        return made

    def _host_ips(self, endpoint: Endpoint, spec: PortSpec) -> list[IPAddress]:
        if spec.host_ip is not None:
            if endpoint.address(spec.host_ip.version) is None:
                raise SpecError(f"endpoint {endpoint.name!r} has no IPv{spec.host_ip.version} "
                                f"address for host IP {spec.host_ip}", str(spec), None)
            return [spec.host_ip]
        return [_ANY[v] for v in (4, 6) if endpoint.address(v) is not None]

    def _assign(self, proto: Protocol, host_ips: list[IPAddress], pool: PortPool,
                within: PortRange | None = None, prefer: Sequence[int] = ()) -> int:
        """A free port, the same for every host IP (Docker gives IPv4 and IPv6 one
        port): the first free one of ``prefer``, else the next free one in turn."""
        ports = within or pool.ports
        listening = pool.listening(proto)
        start = self._next_port.get(proto, ports.start) if within is None else ports.start
        if start not in ports:
            start = ports.start
        preferred = [port for port in prefer if port in ports]
        for port in itertools.chain(preferred, _wrapping(ports, start)):
            if port in pool.reserved or port in listening:
                continue
            if not any(self._taken(ip.version, int(ip), proto.value, port) for ip in host_ips):
                if within is None and port not in preferred:
                    self._next_port[proto] = port + 1
                return port
        raise ConflictError(f"no free host port for {proto.value} in {ports}")

    def _add_all(self, bindings: list[Binding]) -> list[Binding]:
        """Add the bindings not already there, journaling each; raise
        ConflictError at the first that would catch another one's packets."""
        steps = self._steps(Verb.ADD)
        for binding in bindings:
            existing = self.clash(binding)
            if existing is None:
                self._insert(binding)  # what _do does, without its dispatch: a big publish has thousands
                steps.append(binding)
            elif existing == binding:
                continue
            elif existing.endpoint == binding.endpoint:
                raise ConflictError(_self_conflict(binding, existing))
            else:
                raise ConflictError(
                    f"{binding}/{binding.proto.value} for endpoint {binding.endpoint!r} conflicts with "
                    f"{existing}/{existing.proto.value} of endpoint {existing.endpoint!r}"
                    + _routed_key_note(binding, existing))
        return bindings

    def _insert(self, binding: Binding) -> None:
        version, address, proto, port = key = binding.key
        self._by_key[key] = binding
        if binding.count > 1:
            self._ranges.setdefault((version, proto), {})[key] = binding
        else:
            ports = self._ports.get((version, proto))
            if ports is None:
                ports = self._ports[(version, proto)] = {}
            ports[port] = ports.get(port, 0) + 1
        if address and binding.count == 1:  # 0.0.0.0 and :: are found by key; the rare others are counted by port
            port_key = (version, proto, port)
            self._specific[port_key] = self._specific.get(port_key, 0) + 1
        of_endpoint = self._by_endpoint.get(binding.endpoint)
        if of_endpoint is None:  # (not setdefault: that makes a dict per call)
            of_endpoint = self._by_endpoint[binding.endpoint] = {}
        of_endpoint[key] = binding
        container = (binding.container_ip.version, int(binding.container_ip))
        if container not in self._by_container:
            self._by_container[container] = binding.endpoint
            self._addresses_of.setdefault(binding.endpoint, []).append(container)

    def _remove(self, binding: Binding) -> None:
        version, address, proto, port = key = binding.key
        del self._by_key[key]
        if binding.count > 1:
            del self._ranges[(version, proto)][key]
            if not self._ranges[(version, proto)]:
                del self._ranges[(version, proto)]
        else:
            ports = self._ports[(version, proto)]
            ports[port] -= 1
            if not ports[port]:
                del ports[port]
        if address and binding.count == 1:
            port_key = (version, proto, port)
            self._specific[port_key] -= 1
            if not self._specific[port_key]:
                del self._specific[port_key]
        del self._by_endpoint[binding.endpoint][key]
        if not self._by_endpoint[binding.endpoint]:  # its addresses are free for another name
            del self._by_endpoint[binding.endpoint]
            for container in self._addresses_of.pop(binding.endpoint):
                del self._by_container[container]


def _one_to_one(spec: PortSpec) -> bool:
    """Whether ``spec`` maps each of its host ports to one container port, on
    every address: ``8080:80``, ``8000-8010:80-90``; not a same-port range (one
    binding), a pool (``8000-8010:80``), an assigned port or a host IP."""
    host, container = spec.host_ports, spec.container_ports
    return (spec.host_ip is None and host is not None and host.end - host.start == container.end - container.start
            and (host.start == host.end or host.start != container.start))


def _runs(specs: Iterable[PortSpec], one_family: bool) -> list[tuple[Protocol, int, int, int, bool]] | None:
    """``specs`` as runs of ports, None unless each is one-to-one (see
    :func:`_one_to_one`, tested here in line: 10,000 specs are a tenth of a
    big publish's model time): (protocol, first host port, first container
    port, number of ports, whether made of specs of one port), each port of a
    run one more than the last on both sides. Specs that continue each other
    (``8000:80``, ``8001:81``) are one run; for a dual-stack endpoint only
    specs of one port are (its bindings are made spec by spec, then family by
    family, then port by port: the order of the general path, which
    _publish_ones keeps)."""
    runs = []
    proto, host_first, container_first, count, singles = None, 0, 0, 0, False
    for spec in specs:
        host, container = spec.host_ports, spec.container_ports
        if host is None or spec.host_ip is not None:
            return None
        start, end, container_start = host.start, host.end, container.start
        if end - start != container.end - container_start or (start != end and start == container_start):
            return None
        if (spec.proto is proto and start == host_first + count and container_start == container_first + count
                and (one_family or start == end and singles)):
            count += end - start + 1
            continue
        if proto is not None:
            runs.append((proto, host_first, container_first, count, singles))
        proto, host_first, container_first, count, singles = spec.proto, start, container_start, end - start + 1, \
            start == end
    if proto is not None:
        runs.append((proto, host_first, container_first, count, singles))
    return runs


class _InDockerOrder(list):  # type: ignore[type-arg]
    """A list of bindings its maker knows to be in :func:`docker_order`'s order
    already (Table._publish_ones): docker_order returns it as it is."""

    __slots__ = ()


def _routed_key_note(*bindings: Binding) -> str:
    """Why two bindings conflict when one is routed: its host port is not
    mapped, yet stays the binding's key (docs/kernel.md), as in Docker."""
    if not any(isinstance(b, RoutedBinding) for b in bindings):
        return ""
    return " (routed: the host port is not mapped but still identifies the binding; pick another host port)"


def _self_conflict(binding: Binding, existing: Binding) -> str:
    """The message for two bindings of one endpoint that catch the same packets
    (``-p 9000:80 -p 9000:81``): one endpoint, named once."""
    why = (f"{existing} already catches its packets" if existing.container_port == binding.container_port
           else f"it cannot forward to both container port {existing.container_port} and "
                f"{binding.container_port}" + ("" if existing.host_ip == binding.host_ip
                                                else f" ({existing} catches its packets)"))
    return f"{binding}/{binding.proto.value} of endpoint {binding.endpoint!r} conflicts with itself: {why}"


class Bindings(Sequence[Binding]):
    """Bindings, one a port, in ``docker port`` order, made from same-port
    ranges only when asked for: its length costs nothing, and the 131,070
    bindings of ``-p 1-65535:1-65535/tcp -p 1-65535:1-65535/udp`` are made
    (about 0.2 s) on the first look at one of them. It compares equal to a
    list of the same bindings; ``sort`` sorts it in place, as a list's does.
    """

    def __init__(self, held: Iterable[Binding]) -> None:
        self._held = list(held)  # as the table holds them: ranges and single ports
        self._expanded: list[Binding] | None = None

    def _list(self) -> list[Binding]:
        if self._expanded is None:
            self._expanded = _expand_in_order(self._held)
        return self._expanded

    @property
    def held(self) -> list[Binding]:
        """The bindings as the table holds them: same-port ranges as one each."""
        return list(self._held)

    def __len__(self) -> int:
        return sum(b.count for b in self._held) if self._expanded is None else len(self._expanded)

    def __getitem__(self, index):  # type: ignore[no-untyped-def]
        return self._list()[index]

    def __iter__(self) -> Iterator[Binding]:
        return iter(self._list())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (Bindings, list)):
            return self._list() == list(other)
        return NotImplemented

    def sort(self, *, key: Callable[[Binding], object] | None = None, reverse: bool = False) -> None:
        if key is Binding.sort_key and not reverse:  # the order it is in (a natural sort takes seconds)
            self._list()
            return
        self._list().sort(key=key, reverse=reverse)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"Bindings({self._held!r})"


def docker_order(bindings: Iterable[Binding]) -> list[Binding] | Bindings:
    """Single bindings (ranges expanded, when asked), sorted as ``docker port`` prints
    them: ``sorted(bindings, key=Binding.sort_key)`` without expanding the ranges yet."""
    if isinstance(bindings, Bindings):
        return bindings  # already in that order
    if isinstance(bindings, _InDockerOrder):
        return list(bindings)  # in that order, as a plain list (the caller's to change)
    bindings = list(bindings)
    if all(map((1).__eq__, map(_COUNT, bindings))):  # (looped in C: a big publish returns 10,000)
        if len(set(map(_ADDRESS_OF_KEY, map(_KEY, bindings)))) <= 1:
            # One address and protocol (most publishes): the lines differ only in
            # their port numbers, which sort_key compares as numbers.
            return sorted(bindings, key=_BY_PORTS)
        return sorted(bindings, key=Binding.sort_key)
    return Bindings(bindings)


_BY_PORTS = operator.attrgetter("container_port", "host_port")
_COUNT, _KEY, _ADDRESS_OF_KEY = operator.attrgetter("count"), operator.attrgetter("key"), operator.itemgetter(0, 1, 2)


def _expand_in_order(bindings: list[Binding]) -> list[Binding]:
    """Ranges expanded, sorted by a key equal to :meth:`Binding.sort_key` made
    of ints (a natural sort of 131,070 lines takes seconds): ``docker port``'s
    lines read ``CPORT/PROTO -> HOST:PORT`` and differ first in the container
    port, then in the protocol, then in the host address, then in the host
    port; the addresses, which are few, are ranked once by the natural sort.
    """
    singles = [p for b in bindings for p in b.expand()]
    hosts = sorted({b.host_ip for b in singles}, key=lambda ip: natural_key(f"{format_ip(ip)}:"))
    rank = {ip: i for i, ip in enumerate(hosts)}
    return sorted(singles, key=lambda b: (b.container_port, b.key[2], rank[b.host_ip], b.host_port))


def _consecutive(bindings: list[Binding]) -> Iterator[list[Binding]]:
    """``bindings`` (sorted by port) in runs of consecutive host ports."""
    run: list[Binding] = []
    for b in bindings:
        if run and b.host_port != run[-1].host_port + 1:
            yield run
            run = []
        run.append(b)
    if run:
        yield run


def _wrapping(ports: PortRange, start: int) -> Iterator[int]:
    yield from range(start, ports.end + 1)
    yield from range(ports.start, start)


def natural_key(text: str) -> tuple[tuple[str, int, str] | tuple[str], ...]:
    """A sort key giving Docker's ``sortorder.NaturalLess`` order: runs of
    digits compare as numbers when both sides have one, everything else as
    text. A run of digits keys as ("0", number, run): "0" sorts against a text
    run exactly as any digit does, since text runs hold no digits."""
    return tuple(("0", int(chunk), chunk) if chunk[0] in _DIGITS else (chunk,)
                 for chunk in _CHUNKS.findall(text))


_DIGITS = frozenset("0123456789")
_MIDDLE_KEYS: dict[tuple[int, int, str], tuple[tuple[str | int, ...], ...]] = {}  # see Binding.sort_key
_CHUNKS = re.compile(r"[0-9]+|[^0-9]+")

"""The nftables backend: a :class:`~natmap.model.Change` as one libnftables
transaction, and the kernel table read back as a :class:`~natmap.model.Table`.

The layout, one ``inet`` table per NatMap::

    map dnat4      ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service
    map dnat4_any             inet_proto . inet_service : ipv4_addr . inet_service
    map dnat6 / dnat6_any     the same for IPv6
    map dnat4_ports    ipv4_addr . inet_proto . inet_service : ipv4_addr  (flags interval)
    map dnat4_ports_any_tcp (_udp, _sctp)      inet_service : ipv4_addr  (flags interval)
    map dnat6_ports, dnat6_ports_any_*  the same for IPv6
    set bridges, subnets4, subnets6   what to masquerade
    set isolated       ifname . ifname: bridges closed to inter-container traffic
    set unprotected4 / unprotected6, routed_bridges4 / routed_bridges6, trusted
                       the gateway modes, per IP family (docs/kernel.md)
    set routed4 / routed6  container address . proto . ports: what a routed bridge opens
    set links4 / links6  source . target . proto . port: the flows links open

Each binding is ONE map element whose comment is its endpoint's name (each
link flow one set element, commented ``source>target:alias``), so a lookup
costs the same at any size and everything can be read back from the kernel.
Specific host addresses are looked up before 0.0.0.0 / ::. A same-port range
(``-p 10000-20000:10000-20000``) is ONE element of a ``_ports`` interval map
whose data is the container's address only: the DNAT keeps the port. On any
address, one map a protocol keyed on the port alone: a lookup in an interval
map keyed on a concatenation (nftables' pipapo) passed 0.69x the new flows of
an exact match here, one keyed on the port alone 0.95x.

nftables 1.0.6 (Debian 12) cannot declare a map whose data is a
concatenation in JSON: it silently makes a plain set. So the first change,
which creates the table, goes as nft text (skeleton and elements in one
``cmd`` call); every change after that goes as a JSON batch (one
``json_cmd`` call). Either way: one kernel transaction.
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import itertools
import json
import operator
import os
import re
import sys
import threading
from collections import namedtuple
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from ..errors import BackendError, ConflictError, PrivilegeError, SpecError
from ..guest import marker
from ..links import Flow, Link, links_from_flows
from ..model import (ROUTED_CT_MARK, Binding, Bridge, Change, Gateway, Isolation, Item, RoutedBinding, Table,
                     assert_never, validate_ifname)
from ..model import GatewayMode
from ..spec import Protocol
from .nft_keywords import KEYWORDS

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (2 ms of a `natmap` command)
if TYPE_CHECKING:
    from typing import Any

    from .base import Generation

_TABLE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}")
_VERSIONS = (4, 6)
_COUNT = operator.attrgetter("count")


def validate_table(name: str) -> str:
    """Return ``name`` if it is a usable table name (an nft identifier, <= 32
    chars, not one of nft's keywords: see :mod:`.nft_keywords`)."""
    if not isinstance(name, str) or not _TABLE_NAME.fullmatch(name):
        raise SpecError("invalid table name (a letter, then letters, digits or '_'; "
                        "at most 32 characters)", str(name), None)
    if name in KEYWORDS:
        raise SpecError("invalid table name: nftables reads it as a keyword", name, 0, len(name))
    return name


def skeleton(table: str) -> str:
    """The table, its maps, sets and chains, as nft text (see the module doc)."""
    t = f"inet {table}"
    # The marker, twice: the table's comment (other natmaps find natmap's tables
    # by it, in one netlink dump) and the bridges set's (it comes with every
    # listing, which nft 1.0.6's JSON gives without the table's comment).
    lines = [f'add table {t} {{ comment "{marker(table)}" ; }}']
    for v, addr in ((4, "ipv4_addr"), (6, "ipv6_addr")):
        lines += [
            f"add map {t} dnat{v} {{ type {addr} . inet_proto . inet_service : {addr} . inet_service ; }}",
            f"add map {t} dnat{v}_any {{ type inet_proto . inet_service : {addr} . inet_service ; }}",
            f"add map {t} dnat{v}_ports {{ type {addr} . inet_proto . inet_service : {addr} ; flags interval ; }}",
            *(f"add map {t} dnat{v}_ports_any_{p} {{ type inet_service : {addr} ; flags interval ; }}"
              for p in Protocol),
            f"add set {t} subnets{v} {{ type {addr} ; flags interval ; }}",
            f"add set {t} links{v} {{ type {addr} . {addr} . inet_proto . inet_service ; }}",
            f"add set {t} routed{v} {{ type {addr} . inet_proto . inet_service ; flags interval ; }}",
        ]
    lines += [
        f'add set {t} bridges {{ type ifname ; comment "{marker(table)}" ; }}',
        f"add set {t} isolated {{ type ifname . ifname ; }}",
        # the bridges per gateway mode (not nat), one set per IP family (Docker's _ipv4 / _ipv6)
        *(f"add set {t} {mode}{v} {{ type ifname ; }}" for mode in ("unprotected", "routed_bridges") for v in _VERSIONS),
        f"add set {t} trusted {{ type ifname . ifname ; }}",
        # Docker once had 127.0.0.1 bindings reachable from the LAN: drop such
        # packets before NAT can see them.
        f"add chain {t} localhost_guard {{ type filter hook prerouting priority raw ; policy accept ; }}",
        f'add rule {t} localhost_guard iifname != "lo" ip daddr 127.0.0.0/8 drop',
        f'add rule {t} localhost_guard iifname != "lo" ip6 daddr ::1 drop',
        f"add chain {t} published",
        f"add rule {t} published dnat ip to ip daddr . meta l4proto . th dport map @dnat4",
        f"add rule {t} published meta nfproto ipv4 dnat ip to meta l4proto . th dport map @dnat4_any",
        f"add rule {t} published dnat ip6 to ip6 daddr . meta l4proto . th dport map @dnat6",
        f"add rule {t} published meta nfproto ipv6 dnat ip6 to meta l4proto . th dport map @dnat6_any",
        f"add rule {t} published dnat ip to ip daddr . meta l4proto . th dport map @dnat4_ports",
        f"add rule {t} published dnat ip6 to ip6 daddr . meta l4proto . th dport map @dnat6_ports",
        *(f"add rule {t} published meta nfproto ipv{v} meta l4proto {p} dnat ip{'' if v == 4 else '6'} to "
          f"th dport map @dnat{v}_ports_any_{p}" for v in _VERSIONS for p in Protocol),
        f"add chain {t} prerouting {{ type nat hook prerouting priority dstnat ; policy accept ; }}",
        f"add rule {t} prerouting fib daddr type local jump published",
        f"add chain {t} output {{ type nat hook output priority -100 ; policy accept ; }}",
        f"add rule {t} output fib daddr type local jump published",
        f"add chain {t} postrouting {{ type nat hook postrouting priority srcnat ; policy accept ; }}",
        # Docker's routed mode: no masquerade for the containers of a routed bridge
        *(f"add rule {t} postrouting meta nfproto ipv{v} iifname @routed_bridges{v} return" for v in _VERSIONS),
        # localhost -> container: the container must answer the bridge, not 127.0.0.1
        f"add rule {t} postrouting oifname @bridges ip saddr 127.0.0.0/8 masquerade",
        f"add rule {t} postrouting oifname @bridges ip6 saddr ::1 masquerade",
        # hairpin: a container reaching a published port through the host
        f"add rule {t} postrouting ct status dnat oifname @bridges ip saddr @subnets4 masquerade",
        f"add rule {t} postrouting ct status dnat oifname @bridges ip6 saddr @subnets6 masquerade",
        # egress: containers reach the world with the host's address
        f"add rule {t} postrouting oifname != @bridges ip saddr @subnets4 masquerade",
        f"add rule {t} postrouting oifname != @bridges ip6 saddr @subnets6 masquerade",
        f"add chain {t} forward {{ type filter hook forward priority filter ; policy accept ; }}",
        f"add rule {t} forward ct status dnat accept",
        # --icc=false: on an isolated bridge only links' flows (and replies) pass.
        # Bridged traffic reaches this hook through br_netfilter.
        f"add chain {t} isolation",
        f"add rule {t} forward iifname . oifname @isolated jump isolation",
        f"add rule {t} isolation ct state established,related accept",
        # IPv6 neighbour discovery is ICMPv6, so it crosses this hook where ARP does not.
        f"add rule {t} isolation icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert }} accept",
        f"add rule {t} isolation ip saddr . ip daddr . meta l4proto . th dport @links4 accept",
        f"add rule {t} isolation ip6 saddr . ip6 daddr . meta l4proto . th dport @links6 accept",
        f"add rule {t} isolation drop",
        # Docker 28's direct-access protection: new flows routed into a bridge
        # from elsewhere than the table's bridges pass only if DNATed (accepted
        # above), if the bridge is nat-unprotected, or from a trusted interface.
        f"add chain {t} protect",
        f"add rule {t} forward oifname @bridges iifname != @bridges ct state new jump protect",
        *(f"add rule {t} protect meta nfproto ipv{v} oifname @unprotected{v} return" for v in _VERSIONS),
        f"add rule {t} protect iifname . oifname @trusted return",
        # routed: the published container ports (the host port ignored) and ICMP, as Docker's routed mode;
        # a flow let in is marked (natmap's bit alone), so that unpublishing can cut it (host.forget_flows)
        *(f"add rule {t} protect ip{'' if v == 4 else '6'} daddr . meta l4proto . th dport @routed{v} "
          f"ct mark set ct mark or {ROUTED_CT_MARK:#010x} return" for v in _VERSIONS),
        f"add rule {t} protect meta nfproto ipv4 oifname @routed_bridges4 meta l4proto icmp return",
        f"add rule {t} protect meta nfproto ipv6 oifname @routed_bridges6 meta l4proto ipv6-icmp return",
        f"add rule {t} protect drop",
    ]
    return "\n".join(lines) + "\n"


# --- items as kernel elements ---------------------------------------------------------


class _Ifname(str):
    """An interface name: quoted in nft text."""


class _Ports(namedtuple("_Ports", "first last")):
    """A port range as an interval map's key part: ``first-last``."""

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"


# One element of one set or map: the set's name, the element's key (a tuple of
# parts), its data (maps: a tuple) and its comment. A named tuple: tens of
# thousands are made per big change.
_Element = namedtuple("_Element", "set key data comment", defaults=(None, None))


def _elements(item: Item) -> Iterator[_Element]:
    """The kernel elements that make up one item of the table."""
    match item:
        case RoutedBinding():
            return iter((_routed_element(item),))
        case Binding():
            return _binding_elements(item)
        case Bridge():
            return _bridge_elements(item)
        case Link():
            return _link_elements(item)
        case Isolation():
            return _isolation_elements(item)
        case Gateway():
            return _gateway_elements(item)
        case _:
            assert_never(item)


def _read_items(contents: dict[str, list[Any]], foreign: list[str]) -> list[Item]:
    """Every item of the table, from the elements of its sets and maps by name;
    what natmap could not have written is described in ``foreign`` instead."""
    return [*_read_bindings(contents, foreign), *_read_bridges(contents, foreign),
            *_read_links(contents, foreign), *_read_isolation(contents, foreign),
            *_read_gateways(contents, foreign)]


def _readable(convert: Any, contents: dict[str, Any], name: str, foreign: list[str]) -> list[Any]:
    """``convert`` of each element of set ``name`` that natmap could have written."""
    elements = contents.get(name, [])
    if not isinstance(elements, list):
        elements = [elements]
    converted = []
    for elem in elements:
        try:
            converted.append(convert(elem))
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            foreign.append(f"{name} has an element natmap did not make: {json.dumps(elem)}")
    return converted


# Each kind of item: how it is written as elements, and read back from them.

def _binding_elements(b: Binding) -> Iterator[_Element]:
    """One element of ``dnat4``/``dnat6`` (a specific host address) or of
    ``dnat4_any``/``dnat6_any`` (0.0.0.0 or ::), commented with the endpoint;
    a same-port range: one element of a ``_ports`` interval map."""
    if b.count > 1:
        yield _range_element(b)
        return
    key: tuple[Any, ...] = (b.proto, b.host_port)
    suffix = "_any" if b.host_ip.is_unspecified else ""
    yield _Element(f"dnat{b.version}{suffix}", key if suffix else (b.host_ip, *key),
                   (b.container_ip, b.container_port), b.endpoint)


_MAP_VERSION = {"dnat4": 4, "dnat4_any": 4, "dnat6": 6, "dnat6_any": 6}


def _read_bindings(contents: dict[str, list[Any]], foreign: list[str]) -> Iterator[Binding]:
    for name, version in _MAP_VERSION.items():
        yield from _readable(functools.partial(_binding, version), contents, name, foreign)
    for version in _VERSIONS:
        yield from _readable(functools.partial(_range_binding, version, None), contents, f"dnat{version}_ports",
                             foreign)
        yield from _readable(_routed_binding, contents, f"routed{version}", foreign)
        for proto in Protocol:
            yield from _readable(functools.partial(_range_binding, version, proto), contents,
                                 f"dnat{version}_ports_any_{proto.value}", foreign)


def _binding(version: int, elem: list[Any]) -> Binding:
    key, data = elem
    entry = key["elem"]
    parts = entry["val"]["concat"]
    if len(parts) == 2:
        parts = ["0.0.0.0" if version == 4 else "::", *parts]
    container_ip, container_port = data["concat"]
    return Binding(entry.get("comment", ""), Protocol(parts[1]), ipaddress.ip_address(parts[0]),
                   int(parts[2]), ipaddress.ip_address(container_ip), int(container_port))


def _range_element(b: Binding) -> _Element:
    """A same-port range: one interval element mapped to the container's address."""
    ports = _Ports(b.host_port, b.last_port)
    if b.host_ip.is_unspecified:
        return _Element(f"dnat{b.version}_ports_any_{b.proto.value}", (ports,), (b.container_ip,), b.endpoint)
    return _Element(f"dnat{b.version}_ports", (b.host_ip, b.proto, ports), (b.container_ip,), b.endpoint)


def _range_binding(version: int, proto: Protocol | None, elem: list[Any]) -> Binding:
    """An element of a ``_ports`` interval map (``proto``: of a map on any
    address, keyed on the port alone): a same-port range."""
    key, container_ip = elem
    entry = key["elem"]
    if proto is None:
        parts = entry["val"]["concat"]
    else:
        parts = ["0.0.0.0" if version == 4 else "::", proto.value, entry["val"]]
    ports = parts[2]
    first, last = ports["range"] if isinstance(ports, dict) else (ports, ports)
    return Binding(entry.get("comment", ""), Protocol(parts[1]), ipaddress.ip_address(parts[0]),
                   int(first), ipaddress.ip_address(container_ip), int(first), int(last) - int(first) + 1)


def _routed_element(b: RoutedBinding) -> _Element:
    """A binding on a routed bridge: its container address, protocol and
    port(s) in ``routed4``/``routed6``, commented ``ENDPOINT HOST_IP HOST_PORT``
    (the host side is not mapped, only kept: see RoutedBinding)."""
    return _Element(f"routed{b.version}", (b.container_ip, b.proto, _Ports(b.container_port, b.container_port
                                                                            + b.count - 1)),
                    None, f"{b.endpoint} {b.host_ip} {b.host_port}")


def _routed_binding(elem: Any) -> RoutedBinding:
    entry = elem["elem"]
    container_ip, proto, ports = entry["val"]["concat"]
    first, last = ports["range"] if isinstance(ports, dict) else (ports, ports)
    endpoint, host_ip, host_port = entry["comment"].split(" ")
    return RoutedBinding(endpoint, Protocol(proto), ipaddress.ip_address(host_ip), int(host_port),
                         ipaddress.ip_address(container_ip), int(first), int(last) - int(first) + 1)


def _bridge_elements(bridge: Bridge) -> Iterator[_Element]:
    """Its name in ``bridges``, its subnets in ``subnets4``/``subnets6``."""
    yield _Element("bridges", (_Ifname(bridge.name),))
    for net in bridge.subnets:
        yield _Element(f"subnets{net.version}", (net,))


def _read_bridges(contents: dict[str, list[Any]], foreign: list[str]) -> list[Bridge]:
    # Which subnet belongs to which bridge is not kept in the kernel; every
    # bridge is read back with all subnets. Only membership matters to the rules.
    subnets = tuple(net for v in _VERSIONS for net in _readable(
        lambda p: ipaddress.ip_network(f"{p['prefix']['addr']}/{p['prefix']['len']}"),
        contents, f"subnets{v}", foreign))
    bridges: list[Bridge] = _readable(lambda name: Bridge(name, subnets), contents, "bridges", foreign)
    return bridges


def _link_elements(link: Link) -> Iterator[_Element]:
    """Each flow one element of ``links4``/``links6``, commented ``source>target:alias``."""
    for source, target, proto, port in link.flows():
        yield _Element(f"links{source.version}", (source, target, proto, port), None, link.comment)


def _read_links(contents: dict[str, list[Any]], foreign: list[str]) -> list[Link]:
    def flow(elem: Any) -> tuple[str, Flow]:
        source, target, proto, port = elem["elem"]["val"]["concat"]
        comment, one = elem["elem"]["comment"], (ipaddress.ip_address(source), ipaddress.ip_address(target),
                                                 Protocol(proto), int(port))
        links_from_flows({comment: [one]})  # natmap's source>target:alias, or raises
        return comment, one

    flows: dict[str, list[Flow]] = {}
    for v in _VERSIONS:
        for comment, one in _readable(flow, contents, f"links{v}", foreign):
            flows.setdefault(comment, []).append(one)
    return links_from_flows(flows)


def _isolation_elements(isolation: Isolation) -> Iterator[_Element]:
    """``BRIDGE . BRIDGE`` in ``isolated``: traffic in and out of the same bridge."""
    yield _Element("isolated", (_Ifname(isolation.bridge), _Ifname(isolation.bridge)))


def _read_isolation(contents: dict[str, list[Any]], foreign: list[str]) -> list[Isolation]:
    isolated: list[Isolation] = _readable(lambda e: Isolation(e["concat"][0]), contents, "isolated", foreign)
    return isolated


def _gateway_elements(gateway: Gateway) -> Iterator[_Element]:
    """A bridge not in the default mode: its name, per IP family, in
    ``unprotected4``/``6`` (``nat-unprotected``) or ``routed_bridges4``/``6``
    (``routed``); each trusted interface ``IFACE . BRIDGE`` in ``trusted``."""
    for v in _VERSIONS:
        mode = gateway.mode_of(v)
        if mode != "nat":
            yield _Element(f"{'unprotected' if mode == 'nat-unprotected' else 'routed_bridges'}{v}",
                           (_Ifname(gateway.bridge),))
    for interface in gateway.trusted:
        yield _Element("trusted", (_Ifname(interface), _Ifname(gateway.bridge)))


def _read_gateways(contents: dict[str, list[Any]], foreign: list[str]) -> list[Gateway]:
    def pair(elem: Any) -> tuple[str, str]:
        interface, bridge = elem["concat"]
        return validate_ifname(interface), validate_ifname(bridge)

    modes: dict[int, dict[str, GatewayMode]] = {v: {} for v in _VERSIONS}
    for v in _VERSIONS:
        modes[v].update((b, "nat-unprotected") for b in _readable(validate_ifname, contents, f"unprotected{v}", foreign))
        modes[v].update((b, "routed") for b in _readable(validate_ifname, contents, f"routed_bridges{v}", foreign))
    trusted: dict[str, list[str]] = {}
    for interface, bridge in _readable(pair, contents, "trusted", foreign):
        trusted.setdefault(bridge, []).append(interface)
    return [Gateway(b, None, tuple(trusted.get(b, ())), mode_ipv4=modes[4].get(b), mode_ipv6=modes[6].get(b))
            for b in sorted({*modes[4], *modes[6], *trusted})]


def _json_value(part: Any) -> Any:
    if isinstance(part, _Ports):
        return {"range": list(part)}
    if isinstance(part, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return {"prefix": {"addr": str(part.network_address), "len": part.prefixlen}}
    if isinstance(part, int):
        return part
    return str(part)


def _json_parts(parts: tuple[Any, ...]) -> Any:
    values = [_json_value(p) for p in parts]
    return values[0] if len(values) == 1 else {"concat": values}


def _text_parts(parts: tuple[Any, ...]) -> str:
    return " . ".join(f'"{p}"' if isinstance(p, _Ifname) else str(p) for p in parts)


def _grouped(items: tuple[Item, ...]) -> dict[str, list[_Element]]:
    groups: dict[str, list[_Element]] = {}
    for item in items:
        for element in _elements(item):
            groups.setdefault(element.set, []).append(element)
    return groups


# --- JSON: what is applied -------------------------------------------------------


def change_json(table: str, change: Change) -> dict[str, Any]:
    """The change as one libnftables JSON batch: deletions first, then additions."""
    commands: list[dict[str, Any]] = []
    keys = _binding_keys([b for b in change.deleted(Binding) if b.count == 1])
    others = (item for item in change.delete if type(item) is not Binding or item.count != 1)
    for name, elements in _grouped(tuple(others)).items():
        keys.setdefault(name, []).extend(_json_parts(e.key) for e in elements)
    for name, elems in keys.items():
        commands.append({"delete": {"element": _json_element(table, name, elems)}})
    for name, elements in _grouped(change.add).items():
        commands.append({"add": {"element": _json_element(table, name, [
            _json_entry(e) for e in elements])}})
    return {"nftables": commands}


def _binding_keys(bindings: list[Binding]) -> dict[str, list[Any]]:
    """Each single-port binding's map key as JSON, by map: _json_parts of its
    element's key (see _binding_elements), written out, since unpublishing a
    big table deletes thousands; the address is formatted once a run."""
    groups: dict[str, list[Any]] = {}
    host_ip: Any = None
    for b in bindings:
        if b.host_ip is not host_ip:
            host_ip = b.host_ip
            if host_ip.is_unspecified:  # 0.0.0.0 or ::
                group, host = groups.setdefault(f"dnat{host_ip.version}_any", []), None
            else:
                group, host = groups.setdefault(f"dnat{host_ip.version}", []), str(host_ip)
        _, _, proto, port = b.key
        group.append({"concat": [proto, port] if host is None else [host, proto, port]})
    return groups


def _json_entry(element: _Element) -> Any:
    key = _json_parts(element.key)
    if element.comment is not None:
        key = {"elem": {"val": key, "comment": element.comment}}
    return key if element.data is None else [key, _json_parts(element.data)]


def _json_element(table: str, name: str, elems: list[Any]) -> dict[str, Any]:
    return {"family": "inet", "table": table, "name": name, "elem": elems}


# --- text: what plan() shows --------------------------------------------------------


def change_text(table: str, change: Change) -> str:
    """The same change as nft text, one command a line (``nft -f`` reads it)."""
    lines = [f"delete element inet {table} {name} {{ {', '.join(_text_parts(e.key) for e in elements)} }}"
             for name, elements in _grouped(change.delete).items()]
    singles = change.added(Binding)
    ranges = [] if sum(map(_COUNT, singles)) == len(singles) else [b for b in singles if b.count > 1]  # (in C)
    if ranges:
        singles = [b for b in singles if b.count == 1]
    others: tuple[Item, ...] = (*change.added(Bridge), *change.added(Link), *change.added(Isolation),
                                *change.added(Gateway), *change.added(RoutedBinding), *ranges)
    lines += [f"add element inet {table} {name} {{ {', '.join(_text_entry(e) for e in elements)} }}"
              for name, elements in _grouped(others).items()]
    lines += [f"add element inet {table} {name} {{ {', '.join(entries)} }}"
              for name, entries in _binding_texts(singles).items()]
    return "\n".join(lines) + ("\n" if lines else "")


def _binding_texts(bindings: list[Binding]) -> dict[str, list[str]]:
    """Each binding's map element as text, by map: the same as _text_entry
    of its _elements, written out, since a big first publish has thousands.
    The bindings of one spec come one after another and share their endpoint
    and address and protocol objects: what they share is formatted once."""
    groups: dict[str, list[str]] = {}
    endpoint = host_ip = container_ip = proto = None
    for b in bindings:
        if b.endpoint is not endpoint or b.host_ip is not host_ip or b.container_ip is not container_ip \
                or b.proto is not proto:
            endpoint, host_ip, container_ip, proto = b.endpoint, b.host_ip, b.container_ip, b.proto
            if host_ip.is_unspecified:  # 0.0.0.0 or ::
                group, host = groups.setdefault(f"dnat{host_ip.version}_any", []), ""
            else:
                group, host = groups.setdefault(f"dnat{host_ip.version}", []), f"{host_ip} . "
            key = f"{host}{proto._value_} . "
            data = f' comment "{endpoint}" : {container_ip} . '
        group.append(f"{key}{b.host_port}{data}{b.container_port}")
    return groups


def _text_entry(element: _Element) -> str:
    text = _text_parts(element.key)
    if element.comment is not None:
        text += f' comment "{element.comment}"'
    return text if element.data is None else f"{text} : {_text_parts(element.data)}"


# --- reading back -----------------------------------------------------------------


def parse_table(listing: str, foreign: list[str] | None = None) -> Table:
    """The output of ``list table inet NAME`` (JSON) as a :class:`Table`.

    Elements natmap does not write (another program's) are left out, and
    described in ``foreign`` if given: they never break a read.
    """
    foreign = [] if foreign is None else foreign
    try:
        objects = json.loads(listing)["nftables"]
        contents = {body["name"]: body.get("elem", []) for obj in objects
                    for kind in ("map", "set") if kind in obj for body in [obj[kind]]}
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise BackendError(f"unreadable table listing from nft: {exc!r}") from exc
    return Table(_read_items(contents, foreign))


def require_marker(listing: str, table: str) -> None:
    """Raise ConflictError unless the listed table carries natmap's marker for
    ``table``: natmap never uses, changes or deletes another program's table."""
    try:
        # Decode only the bridges set's object where libnftables writes it: a
        # big table's listing is decoded once already, by parse_table.
        start = listing.find('{"set": {"family": "inet", "name": "bridges",')
        if start >= 0:
            objects = [json.JSONDecoder().raw_decode(listing, start)[0]]
        else:
            objects = json.loads(listing)["nftables"]
        comments = [obj["set"].get("comment") for obj in objects if obj.get("set", {}).get("name") == "bridges"]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BackendError(f"unreadable table listing from nft: {exc!r}") from exc
    if comments != [marker(table)]:
        raise ConflictError(f"table inet {table} exists but is not natmap's (it lacks the marker "
                            f"{marker(table)!r}); natmap will not use, change or delete it: "
                            "choose another table name")


# --- natmap's own objects, compared with what nft makes of the skeleton -----------------

_reference: dict[str, str] = {}


def reference_listing(table: str) -> str:
    """The listing of an empty table as natmap makes it, from this kernel and
    this libnftables: the skeleton is applied in a scratch network namespace
    (a thread of its own, which ends with it), never in the caller's."""
    if table not in _reference:
        result: list[Any] = []
        thread = threading.Thread(target=_scratch_listing, args=(table, result), name="natmap-reference")
        thread.start()
        thread.join()
        if not isinstance(result[0], str):
            raise BackendError(f"cannot build natmap's reference table in a scratch namespace: {result[0]}")
        _reference[table] = result[0]
    return _reference[table]


def _scratch_listing(table: str, result: list[Any]) -> None:
    import ctypes

    import nftables

    try:
        if ctypes.CDLL(None, use_errno=True).unshare(0x40000000) != 0:  # CLONE_NEWNET, this thread only
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET) failed")
        nft = nftables.Nftables()
        nft.set_json_output(True)
        for command in (skeleton(table), f"list table inet {table}"):
            rc, out, err = nft.cmd(command)
            _check("building the reference table", rc, err)
        result.append(out)
    except Exception as exc:  # handed to the caller's thread
        result.append(exc)


def _structure(listing: str) -> dict[str, str]:
    """Each object of a table listing but its elements, by a name that says
    what it is (``chain prerouting``, ``rule prerouting #1``), as canonical JSON."""
    objects: dict[str, str] = {}
    counts: dict[str, int] = {}
    for obj in json.loads(listing)["nftables"]:
        for kind in ("chain", "set", "map", "rule"):
            if kind not in obj:
                continue
            body = {k: v for k, v in obj[kind].items() if k not in ("handle", "elem", "family", "table")}
            if kind == "rule":
                chain = body["chain"]
                counts[chain] = counts.get(chain, 0) + 1
                name = f"rule {chain} #{counts[chain]}"
                body = body["expr"]
            else:
                name = f"{kind} {body['name']}"
            objects[name] = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return objects


def compare_structure(expected: dict[str, str], actual: dict[str, str]) -> list[str]:
    """Each object missing, changed or unexpected, one line each."""
    problems = [f"{name} is missing: {expected[name]}" for name in expected if name not in actual]
    problems += [f"{name} changed: {actual[name]} (natmap makes {expected[name]})"
                 for name in expected if name in actual and actual[name] != expected[name]]
    problems += [f"{name} is not natmap's: {actual[name]}" for name in actual if name not in expected]
    return problems


_NO_SUCH_TABLE = "No such file or directory"  # libnftables' words for ENOENT


def _check(what: str, rc: int, err: str) -> None:
    if rc != 0:
        if "Operation not permitted" in err:
            raise PrivilegeError(what)
        raise BackendError(f"nft refused {what}: {err.strip() or f'error {rc}'}")


@functools.cache
def _nftables_class() -> Any:
    """libnftables' Python binding, its Nftables class made safe to fail:
    the binding's ``__del__`` frees a context that a failed ``__init__``
    never made, which prints a traceback at exit. Raises ImportError or
    OSError when either is missing (make_backend says what to install)."""
    import ctypes

    import nftables

    ctypes.CDLL("libnftables.so.1")  # what Nftables() loads: fail here, before any Nftables exists

    class Nftables(nftables.Nftables):  # type: ignore[misc]
        def __del__(self) -> None:
            if "_Nftables__ctx" in self.__dict__:
                super().__del__()

    return Nftables


# File descriptor 2 is the process's: one capture at a time. This also makes
# every libnftables call in the process take turns, which its contexts, made
# for one thread each, want anyway.
_LIBNFTABLES = threading.Lock()


@contextmanager
def _stderr_captured(into: list[str]) -> Iterator[None]:
    """Catch what C code writes to file descriptor 2 during the block (libnftables
    prints "Operation not permitted (you must be root)" there itself, past its
    error buffer) and append it to ``into``. Without a descriptor 2, nothing to catch."""
    with _LIBNFTABLES:
        try:
            saved = os.dup(2)
        except OSError:
            into.append("")
            yield
            return
        read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)  # never blocks the writer
        if sys.stderr is not None:
            sys.stderr.flush()
        os.dup2(write_end, 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(write_end)
            chunks = []
            while chunk := _read_some(read_end):
                chunks.append(chunk)
            os.close(read_end)
            into.append(b"".join(chunks).decode(errors="replace"))


def _read_some(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except BlockingIOError:
        return b""


class NftBackend:
    """The :class:`~natmap.backends.base.Backend` on libnftables, in the
    calling thread's network namespace."""

    name = "nft"
    counts_every_commit = True  # the kernel's generation counts every commit, anyone's
    claimed = False  # natmap's store remembers the table (nft's marker goes only with the whole table)
    lock_timeout = 30.0  # libnftables takes no lock of the tools': nothing waits on it

    def __init__(self, table: str) -> None:
        self.table = validate_table(table)
        self._generation = _GenerationCounter()
        with _LIBNFTABLES:
            self._nft = _nftables_class()()
        self._nft.set_json_output(True)

    def _call(self, command: str | dict[str, Any]) -> tuple[int, Any, str]:
        """libnftables' (rc, output, errors), what it printed itself among the errors."""
        printed: list[str] = []
        try:
            with _stderr_captured(printed):
                if isinstance(command, str):
                    rc, out, err = self._nft.cmd(command)
                else:
                    rc, out, err = self._nft.json_cmd(command)
        except UnicodeDecodeError as exc:  # another program's bytes in natmap's table
            raise BackendError(f"nft answered what is not UTF-8: {exc}") from exc
        if printed[0] and rc == 0 and sys.stderr is not None:
            sys.stderr.write(printed[0])  # not libnftables' (another thread's): pass it on
        return rc, out, printed[0] + (err or "")

    def _run(self, what: str, command: str | dict[str, Any]) -> str:
        rc, out, err = self._call(command)
        _check(what, rc, err)
        return out if isinstance(out, str) else json.dumps(out)

    def usable(self) -> bool:
        """Whether the kernel answers nftables requests here."""
        rc, _, err = self._call(f"list table inet {self.table}")
        return rc == 0 or _NO_SUCH_TABLE in err

    def exists(self) -> bool:
        """Whether a table of this name is in the kernel (natmap's or not)."""
        rc, _, _ = self._call(f"list table inet {self.table}")
        return rc == 0

    def structure_problems(self, listing: str | None = None) -> list[str]:
        """How natmap's table differs from what natmap makes, object by object:
        every chain (type, hook, priority, policy), every rule with its
        verdict, every set and map declaration, and any chain, rule, set or
        map in the table that natmap did not make (the elements natmap did not
        write are :meth:`inspect`'s foreign ones). ``listing``: the table as
        :meth:`listing` gave it, if already read."""
        listing = self.listing() if listing is None else listing
        if listing is None:
            return []
        return compare_structure(_structure(reference_listing(self.table)), _structure(listing))

    def delete(self) -> None:
        """Remove the table and everything in it, whether it is there or not: one transaction."""
        self._run(f"deleting table inet {self.table}",
                  f"add table inet {self.table}\ndelete table inet {self.table}\n")

    def rebuild(self, items: Iterable[Item]) -> None:
        """Replace the table with its skeleton and ``items``: one transaction.
        (Adding the table first makes deleting it work whether it is there or not.)"""
        text = f"add table inet {self.table}\ndelete table inet {self.table}\n"
        self._run(f"rebuilding table inet {self.table}", text + self.text(Change(add=tuple(items)), create=True))

    def listing(self) -> str | None:
        """The table as nft's JSON text, or None if there is none.

        Asked with ``list table`` only: ``list tables`` makes libnftables 1.0.6
        fetch every table's elements, 30 ms when another program's table has
        10,000 (measured), where ``list table`` costs what natmap's own table holds.
        """
        rc, out, err = self._call(f"list table inet {self.table}")
        if rc != 0 and _NO_SUCH_TABLE in err:
            return None
        _check(f"listing table inet {self.table}", rc, err)
        return str(out)

    def read(self, foreign: list[str] | None = None) -> Table | None:
        """The table as the kernel holds it, or None if there is none; what
        natmap did not write is described in ``foreign``, not read."""
        listing = self.listing()
        if listing is not None:
            self._require_marker(listing)
        return None if listing is None else parse_table(listing, foreign)

    def inspect(self) -> tuple[Table | None, list[str], list[str]]:
        """The table (None if missing), its structure's problems and the
        elements natmap did not write, from one listing."""
        listing = self.listing()
        if listing is None:
            return None, [], []
        self._require_marker(listing)
        foreign: list[str] = []
        return parse_table(listing, foreign), self.structure_problems(listing), foreign

    def _require_marker(self, listing: str) -> None:
        """require_marker, and when the bridges set's marker is gone (its rules
        and the set deleted by hand), the table's own comment, which nft
        never changes on a table that exists: natmap's table, then, whose
        structure drifted (check() says so, repair() rebuilds it)."""
        try:
            require_marker(listing, self.table)
        except ConflictError:
            if self._table_comment() != marker(self.table):
                raise

    def _table_comment(self) -> str | None:
        """The table's comment. nft 1.0.6's JSON leaves it out, so it is read
        from the text listing, terse (without elements: cheap at any size),
        where it is the line after the table's."""
        self._nft.set_json_output(False)
        self._nft.set_terse_output(True)
        try:
            rc, out, err = self._call(f"list table inet {self.table}")
        finally:
            self._nft.set_terse_output(False)
            self._nft.set_json_output(True)
        _check(f"listing table inet {self.table}", rc, err)
        found = re.match(rf'table inet {self.table} {{\n\tcomment "([^"\n]*)"\n', str(out))
        return found.group(1) if found else None

    def take_back(self) -> None:
        """Nothing to take back: nft never changes a table's comment, the marker
        that outlasts any hand edit but deleting the table (see _require_marker)."""

    def generation(self) -> int:
        """The ruleset generation: one more with every committed transaction."""
        return self._generation.read()

    def apply(self, change: Change, *, create: bool = False, generation: Generation = None) -> Generation:
        """The whole change as one kernel transaction; with ``create``, the
        table's skeleton too, in the same transaction (then as text, since
        JSON cannot declare the maps: see the module doc). Returns the
        generation to expect now if nothing else committed meanwhile."""
        if create:
            self._run(f"creating table inet {self.table}", self.text(change, create=True))
        elif change:
            self._run("the change", change_json(self.table, change))
        return generation + 1 if isinstance(generation, int) else None

    def text(self, change: Change, *, create: bool = False) -> str:
        """The change as nft text; with ``create``, preceded by the skeleton."""
        return (skeleton(self.table) if create else "") + change_text(self.table, change)

    def close(self) -> None:
        """Close the netlink socket the generation is read on."""
        self._generation.close()


class _GenerationCounter:
    """nftables' ruleset generation (``NFT_MSG_GETGEN``): it grows by one with
    every committed transaction, whoever commits it. libnftables does not
    tell it, so it is asked with one netlink request on a socket of the
    standard library's (importing pyroute2 for it would cost a ``natmap
    port`` most of its time), kept open (opening one costs more than using
    it) in the namespace of the first call."""

    def __init__(self) -> None:
        self._socket: Any = None
        self._lock = threading.Lock()

    def read(self) -> int:
        with self._lock, _os_errors("reading the nftables generation"):
            if self._socket is None:
                import _socket as socket  # here, not at import; the C module: socket.py costs 5 ms more

                self._socket = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                             _NETLINK_NETFILTER)
                self._socket.bind((0, 0))
            return _nft_genid(self._socket)

    def close(self) -> None:
        with self._lock:
            if self._socket is not None:
                self._socket.close()
            self._socket = None


_NETLINK_NETFILTER = 12
_NFT_MSG_GETGEN = (10 << 8) | 16  # NFNL_SUBSYS_NFTABLES, NFT_MSG_GETGEN
_NLMSG_ERROR = 2
_sequence = itertools.count(1)


@contextmanager
def _os_errors(what: str) -> Iterator[None]:
    """Translate the netlink socket's errors into natmap's at this boundary."""
    try:
        yield
    except PermissionError as exc:
        raise PrivilegeError(what) from exc
    except OSError as exc:
        raise BackendError(f"{what}: {exc.strerror or exc}") from exc


def _nft_genid(sock: Any) -> int:
    """Ask the kernel for NFTA_GEN_ID: nlmsghdr + nfgenmsg out, the same back
    with its attributes (little-endian header, big-endian attribute value)."""
    import struct

    seq = next(_sequence) & 0xFFFFFFFF
    sock.send(struct.pack("=IHHII", 20, _NFT_MSG_GETGEN, 1, seq, 0) + struct.pack("=BBH", 0, 0, 0))
    while True:
        data = sock.recv(65536)
        length, kind, _, answer_seq, _ = struct.unpack_from("=IHHII", data)
        if answer_seq != seq:
            continue  # an answer to an older request that timed out
        if kind == _NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", data, 16)
            raise OSError(-code, os.strerror(-code))
        offset = 20  # past nlmsghdr (16) and nfgenmsg (4)
        while offset + 4 <= length:
            attr_len, attr_type = struct.unpack_from("=HH", data, offset)
            if attr_type & 0x3FFF == 1:  # NFTA_GEN_ID
                return int(struct.unpack_from(">I", data, offset + 4)[0])
            offset += (attr_len + 3) & ~3
        raise OSError(errno.EPROTO, "no NFTA_GEN_ID in the kernel's answer")


def ruleset_generation() -> int:
    """The calling thread's namespace's nftables generation, read once on a
    socket of its own (tests compare it before and after a change)."""
    counter = _GenerationCounter()
    try:
        return counter.read()
    finally:
        counter.close()

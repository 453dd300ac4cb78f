"""The nftables backend: a :class:`~natmap.plan.Change` as one libnftables
transaction, and the kernel table read back as a :class:`~natmap.plan.Table`.

The layout, one ``inet`` table per NatMap::

    map dnat4      ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service
    map dnat4_any             inet_proto . inet_service : ipv4_addr . inet_service
    map dnat6 / dnat6_any     the same for IPv6
    set bridges, subnets4, subnets6   what to masquerade

Each binding is ONE map element whose comment is its endpoint's name, so a
lookup costs the same at any size and everything can be read back from the
kernel. Specific host addresses are looked up before 0.0.0.0 / ::.

nftables 1.0.6 (Debian 12) cannot declare a map whose data is a
concatenation in JSON: it silently makes a plain set. So the first change,
which creates the table, goes as nft text (skeleton and elements in one
``cmd`` call); every change after that goes as a JSON batch (one
``json_cmd`` call). Either way: one kernel transaction.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..errors import BackendError, SpecError
from ..plan import Binding, Bridge, Change, Table
from ..spec import IPAddress, Protocol

_TABLE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}")
_VERSIONS = (4, 6)


def validate_table(name: str) -> str:
    """Return ``name`` if it is a usable table name (an nft identifier, <= 32 chars)."""
    if not isinstance(name, str) or not _TABLE_NAME.fullmatch(name):
        raise SpecError("invalid table name (a letter, then letters, digits or '_'; "
                        "at most 32 characters)", str(name))
    return name


def skeleton(table: str) -> str:
    """The table, its maps, sets and chains, as nft text (see the module doc)."""
    t = f"inet {table}"
    lines = [f"add table {t}"]
    for v, addr in ((4, "ipv4_addr"), (6, "ipv6_addr")):
        lines += [
            f"add map {t} dnat{v} {{ type {addr} . inet_proto . inet_service : {addr} . inet_service ; }}",
            f"add map {t} dnat{v}_any {{ type inet_proto . inet_service : {addr} . inet_service ; }}",
            f"add set {t} subnets{v} {{ type {addr} ; flags interval ; }}",
        ]
    lines += [
        f"add set {t} bridges {{ type ifname ; }}",
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
        f"add chain {t} prerouting {{ type nat hook prerouting priority dstnat ; policy accept ; }}",
        f"add rule {t} prerouting fib daddr type local jump published",
        f"add chain {t} output {{ type nat hook output priority -100 ; policy accept ; }}",
        f"add rule {t} output fib daddr type local jump published",
        f"add chain {t} postrouting {{ type nat hook postrouting priority srcnat ; policy accept ; }}",
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
    ]
    return "\n".join(lines) + "\n"


def _map_name(binding: Binding) -> str:
    return f"dnat{binding.version}" + ("_any" if binding.host_ip.is_unspecified else "")


def _key(binding: Binding) -> list[Any]:
    key: list[Any] = [binding.proto.value, binding.host_port]
    return key if binding.host_ip.is_unspecified else [str(binding.host_ip), *key]


# --- JSON: what is applied -------------------------------------------------------


def change_json(table: str, change: Change) -> dict[str, Any]:
    """The change as one libnftables JSON batch: deletions first, then additions."""
    commands: list[dict[str, Any]] = []
    for name, bindings in _by_map(change.delete).items():
        commands.append({"delete": {"element": _element(table, name, [
            {"concat": _key(b)} for b in bindings])}})
    for bridge in change.bridges:
        commands += _bridge_json(table, bridge)
    for name, bindings in _by_map(change.add).items():
        commands.append({"add": {"element": _element(table, name, [
            [{"elem": {"val": {"concat": _key(b)}, "comment": b.endpoint}},
             {"concat": [str(b.container_ip), b.container_port]}] for b in bindings])}})
    return {"nftables": commands}


def _bridge_json(table: str, bridge: Bridge) -> list[dict[str, Any]]:
    commands = [{"add": {"element": _element(table, "bridges", [bridge.name])}}]
    for v in _VERSIONS:
        prefixes = [{"prefix": {"addr": str(n.network_address), "len": n.prefixlen}}
                    for n in bridge.subnets if n.version == v]
        if prefixes:
            commands.append({"add": {"element": _element(table, f"subnets{v}", prefixes)}})
    return commands


def _element(table: str, name: str, elems: list[Any]) -> dict[str, Any]:
    return {"family": "inet", "table": table, "name": name, "elem": elems}


def _by_map(bindings: tuple[Binding, ...]) -> dict[str, list[Binding]]:
    groups: dict[str, list[Binding]] = {}
    for binding in bindings:
        groups.setdefault(_map_name(binding), []).append(binding)
    return groups


# --- text: what plan() shows --------------------------------------------------------


def change_text(table: str, change: Change) -> str:
    """The same change as nft text, one command a line (``nft -f`` reads it)."""
    t = f"inet {table}"
    lines = [f"delete element {t} {_map_name(b)} {{ {_key_text(b)} }}" for b in change.delete]
    for bridge in change.bridges:
        lines.append(f'add element {t} bridges {{ "{bridge.name}" }}')
        for v in _VERSIONS:
            nets = ", ".join(str(n) for n in bridge.subnets if n.version == v)
            if nets:
                lines.append(f"add element {t} subnets{v} {{ {nets} }}")
    lines += [f'add element {t} {_map_name(b)} {{ {_key_text(b)} comment "{b.endpoint}" : '
              f"{b.container_ip} . {b.container_port} }}" for b in change.add]
    return "\n".join(lines) + ("\n" if lines else "")


def _key_text(binding: Binding) -> str:
    return " . ".join(str(part) for part in _key(binding))


# --- reading back -----------------------------------------------------------------


def parse_table(listing: str) -> Table:
    """The output of ``list table inet NAME`` (JSON) as a :class:`Table`."""
    import ipaddress

    try:
        objects = json.loads(listing)["nftables"]
    except (ValueError, KeyError) as exc:
        raise BackendError(f"unreadable table listing from nft: {exc}") from exc
    bindings: list[Binding] = []
    sets: dict[str, list[Any]] = {}
    for obj in objects:
        kind = "map" if "map" in obj else "set" if "set" in obj else None
        if kind is None:
            continue
        body = obj[kind]
        if kind == "map" and body["name"] in _MAP_VERSION:
            version = _MAP_VERSION[body["name"]]
            bindings += [_binding(version, elem) for elem in body.get("elem", [])]
        else:
            sets[body["name"]] = body.get("elem", [])
    bridges = [Bridge(name, tuple(
        ipaddress.ip_network(f"{p['prefix']['addr']}/{p['prefix']['len']}")
        for v in _VERSIONS for p in sets.get(f"subnets{v}", []) if isinstance(p, dict) and "prefix" in p
    )) for name in sets.get("bridges", [])]
    # Which subnet belongs to which bridge is not kept in the kernel; every
    # bridge is shown with all subnets. Only membership matters for the rules.
    return Table(bindings, bridges)


_MAP_VERSION = {"dnat4": 4, "dnat4_any": 4, "dnat6": 6, "dnat6_any": 6}


def _binding(version: int, elem: list[Any]) -> Binding:
    import ipaddress

    key, data = elem
    entry = key["elem"]
    parts = entry["val"]["concat"]
    comment = entry.get("comment", "")
    if len(parts) == 2:
        parts = ["0.0.0.0" if version == 4 else "::", *parts]
    host_ip: IPAddress = ipaddress.ip_address(parts[0])
    container_ip, container_port = data["concat"]
    return Binding(comment, Protocol(parts[1]), host_ip, int(parts[2]),
                   ipaddress.ip_address(container_ip), int(container_port))


class NftBackend:
    """libnftables in the calling thread's network namespace."""

    def __init__(self, table: str) -> None:
        import nftables

        self.table = validate_table(table)
        self._nft = nftables.Nftables()
        self._nft.set_json_output(True)

    def _run(self, what: str, command: str | dict[str, Any]) -> str:
        if isinstance(command, str):
            rc, out, err = self._nft.cmd(command)
        else:
            rc, out, err = self._nft.json_cmd(command)
        if rc != 0:
            raise BackendError(f"nft refused {what}: {err.strip() or f'error {rc}'}")
        return out if isinstance(out, str) else json.dumps(out)

    def exists(self) -> bool:
        out = self._run("listing tables", "list tables inet")
        return any(obj.get("table", {}).get("name") == self.table
                   for obj in json.loads(out or '{"nftables": []}')["nftables"])

    def delete(self) -> None:
        """Remove the table and everything in it: one transaction."""
        self._run(f"deleting table inet {self.table}", f"delete table inet {self.table}")

    def listing(self) -> str:
        """The table as nft's JSON text."""
        return self._run(f"listing table inet {self.table}", f"list table inet {self.table}")

    def load(self) -> Table:
        return parse_table(self.listing())

    def apply(self, change: Change, *, create: bool = False) -> None:
        """The whole change as one kernel transaction; with ``create``, the
        table's skeleton too, in the same transaction (then as text, since
        JSON cannot declare the maps: see the module doc)."""
        if create:
            self._run(f"creating table inet {self.table}", self.text(change, create=True))
        elif change:
            self._run("the change", change_json(self.table, change))

    def text(self, change: Change, *, create: bool = False) -> str:
        """The change as nft text; with ``create``, preceded by the skeleton."""
        return (skeleton(self.table) if create else "") + change_text(self.table, change)

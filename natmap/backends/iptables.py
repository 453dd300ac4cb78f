"""The iptables backend: the same :class:`~natmap.model.Change` as rules in
natmap's own chains, through python-iptables (``iptc``, the legacy xtables
interface), never by running ``iptables``.

Chains, for a NatMap whose table is ``natmap`` (``lab1`` gives ``LAB1-...``)::

    raw    NATMAP-GUARD        from PREROUTING: drop 127.0.0.0/8 / ::1 not from lo
    nat    NATMAP-DNAT         from PREROUTING and OUTPUT (local destinations):
                               one DNAT rule per binding, commented with its endpoint
    nat    NATMAP-POSTROUTING  from POSTROUTING: localhost, hairpin and egress
                               masquerade per bridge, commented bridge:NAME
    filter NATMAP-FORWARD      from FORWARD: accept DNATed traffic; jump to
                               NATMAP-ISOLATION for bridges closed to each other
    filter NATMAP-ISOLATION    replies, neighbour discovery, the links' flows
                               (commented source>target:alias), then drop
    filter NATMAP-PROTECT      new flows routed into a bridge: the gateway modes'
                               returns, then a goto NATMAP-ROUTES
    filter NATMAP-ROUTES       a routed bridge's bindings (commented routed:...,
                               not DNAT rules): gotos NATMAP-ROUTED; then drop
    filter NATMAP-ROUTED       marks a routed flow (CONNMARK, natmap's bit); its
                               end returns from PROTECT (every step was a goto)

What is atomic: each table of each family is replaced in one commit
(``iptc_commit``). A change spans up to two tables in two families, committed
in a fixed order, filter before nat, IPv4 before IPv6, so that what a change
closes (links, isolation) is closed before ports change. If a commit fails,
the tables already committed are restored by committing the inverse steps
(each :class:`_Step` knows its ``inverse()``), and the error is raised. Every transaction also replaces a generation marker
(a comment rule in NATMAP-FORWARD, IPv4), which tells other NatMaps that
their picture of the chains is stale: legacy xtables has no generation counter.

iptables has no maps: the packet path is linear in the number of bindings.
"""

from __future__ import annotations

import ctypes
import enum
import hashlib
import ipaddress
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, assert_never

from ..errors import BackendError, ConflictError, LockTimeoutError, PrivilegeError, SpecError
from ..guest import marker, owner_of
from ..hoststate import crash_point
from ..links import Flow, Link, links_from_flows
from ..locking import LOCK_TIMEOUT, flocked
from ..model import ROUTED_CT_MARK, Binding, Bridge, Change, Gateway, Isolation, Item, RoutedBinding, Table
from ..model import GatewayMode
from ..spec import Protocol
from .base import Generation

_XTABLES_LOCK = "/run/xtables.lock"  # what the iptables commands lock too
_MARKER = "natmap-generation:"
_LOOPBACK = {4: "127.0.0.0/8", 6: "::1/128"}
_FAMILIES = (4, 6)
_PLAIN_TABLE = re.compile(r"[a-z][a-z0-9_]{0,15}")


@dataclass(frozen=True, slots=True)
class _Rule:
    """One rule in one of natmap's chains, as data: built for iptc, printed as text."""

    family: int
    table: str
    chain: str
    target: str
    matches: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()
    fields: tuple[tuple[str, str], ...] = ()     # src, dst, protocol, in_interface, out_interface
    target_args: tuple[tuple[str, str], ...] = ()
    first: bool = False                           # insert at the top instead of appending
    goto: bool = False                            # -g: the target chain's end returns from this one's caller

    def build(self) -> Any:
        import iptc

        rule = iptc.Rule() if self.family == 4 else iptc.Rule6()
        for name, value in self.fields:
            setattr(rule, name, value)
        if self.family == 6:
            _full_interface_masks(rule.entry.ipv6)
        for match_name, options in self.matches:
            match = rule.create_match(match_name)
            for option, value in options:
                setattr(match, option, value)
        target = rule.create_target(self.target, goto=self.goto)
        for option, value in self.target_args:
            setattr(target, option, value)
        return rule

    def text(self, verb: str = "-A") -> str:
        """As ``iptables-save`` would print it (for ``plan()``)."""
        flags = {"src": "-s", "dst": "-d", "protocol": "-p", "in_interface": "-i", "out_interface": "-o"}
        words = [verb, self.chain]
        for name, value in self.fields:
            negated = value.startswith("!")
            words += (["!"] if negated else []) + [flags[name], value.lstrip("!")]
        for match_name, options in self.matches:
            words += ["-m", match_name]
            for option, value in options:
                words += [f"--{option.replace('_', '-')}", f'"{value}"' if match_name == "comment" else value]
        words += ["-g" if self.goto else "-j", self.target]
        for option, value in self.target_args:
            words += [f"--{option.replace('_', '-')}", value]
        return f"{'ip6tables' if self.family == 6 else 'iptables'} -t {self.table} " + " ".join(words)


class Verb(enum.Enum):
    """What a step does to one table."""

    CHAIN = "chain"            # make a chain, unless it is there
    DROP_CHAIN = "drop-chain"  # delete a chain, if it is there
    JUMP = "jump"              # add a jump to one of natmap's chains, unless it is there
    ADD = "add"                # add a rule
    DELETE = "delete"          # delete a rule

    def inverse(self) -> Verb:
        """The verb that undoes this one."""
        return _INVERSE[self]


_INVERSE = {Verb.CHAIN: Verb.DROP_CHAIN, Verb.DROP_CHAIN: Verb.CHAIN, Verb.JUMP: Verb.DELETE,
            Verb.ADD: Verb.DELETE, Verb.DELETE: Verb.ADD}


@dataclass(frozen=True, slots=True)
class _Step:
    """One step of a change to one table of one family: a chain made or
    dropped (``rule`` None), a rule added or deleted, a jump added once."""

    verb: Verb
    family: int
    table: str
    chain: str
    rule: _Rule | None = None

    @classmethod
    def of(cls, verb: Verb, rule: _Rule) -> _Step:
        return cls(verb, rule.family, rule.table, rule.chain, rule)

    def inverse(self) -> _Step:
        """The step that undoes this one (a jump's inverse deletes it)."""
        return replace(self, verb=self.verb.inverse())

    def needs_rule(self) -> _Rule:
        if self.rule is None:
            raise AssertionError(f"a {self.verb.value} step without a rule")
        return self.rule

    def text(self) -> str:
        """As an iptables command (for ``preview()``)."""
        if self.rule is None:
            flag = "-N" if self.verb is Verb.CHAIN else "-X"
            return f"{_name(self.family)} -t {self.table} {flag} {self.chain}"
        return self.rule.text("-D" if self.verb is Verb.DELETE else "-I" if self.rule.first else "-A")


def chain_prefix(table: str) -> str:
    """The chains' prefix: ``NATMAP`` for table ``natmap``. Upper-casing is
    one-to-one on lower-case names of up to 16 characters; any other name gets
    its first 7 characters and a hash (``Lab.1f2e3d4c``), whose ``.`` no plain
    prefix has. So two tables never share chains by their names (a hash
    collision is caught by the marker rule, which names the table)."""
    if _PLAIN_TABLE.fullmatch(table):
        return table.upper()
    return f"{table.upper()[:7]}.{hashlib.sha256(table.encode()).hexdigest()[:8]}"


def natmap_tables() -> list[str]:
    """The natmap tables with chains in this namespace's (legacy) iptables, by
    their marker rules; none without opening iptables when its filter table
    was never loaded here."""
    from . import iptables_in_use

    if not iptables_in_use():
        return []
    _find_xtables_libdir()
    try:
        import iptc  # noqa: F401
    except (ImportError, OSError):  # no python-iptables here: it cannot have made chains either
        return []
    # Without the xtables lock, which every iptables command on the machine
    # takes (a publish waited up to 0.2 s for other programs' commands): a read
    # is the kernel's snapshot of the table, and libiptc reads it again when
    # it changed between its two getsockopt calls (EAGAIN); the lock keeps
    # commits from overwriting each other, and this commits nothing. But in
    # this process's turn: its threads share python-iptables' Table objects.
    with _iptc_turn():
        table = _table(4, "filter")
        return [name for chain in table.chains if chain.name.endswith("-GENERATION")
                for name in [_owner(chain)] if name is not None and chain_prefix(name) + "-GENERATION" == chain.name]


def _owner(chain: Any) -> str | None:
    """The table the marker rule of a GENERATION chain names."""
    return next(filter(None, (owner_of(_comment(rule)) for rule in chain.rules)), None)


class Layout:
    """natmap's chains and rules for one table, as data (see the module doc):
    each kind of item's rules written and read back side by side, the
    skeleton, and a change as steps or as iptables commands. No iptc: the
    rendering is tested without root."""

    def __init__(self, table: str) -> None:
        self.table = table
        self.prefix = chain_prefix(table)

    def _chain(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    # --- each kind of item: its rules, written and read back --------------------------

    def rules(self, item: Item) -> Iterator[_Rule]:
        """The rules that make up one item of the table."""
        match item:
            case RoutedBinding():
                return iter((self._routed(item),))
            case Binding():
                return iter((self._dnat(item),))
            case Bridge():
                return self._bridge_rules(item)
            case Link():
                return self._link_rules(item)
            case Isolation():
                return self._isolation_rules(item)
            case Gateway():
                return self._gateway_rules(item)
            case _:
                assert_never(item)

    def read_items(self, rules_of: Callable[[int, str, str], list[Any]],
                   foreign: list[str] | None = None) -> list[Item]:
        """Every item, read back from the rules of natmap's chains, which
        ``rules_of(family, table, chain)`` gives (as python-iptables does); a
        DNAT rule natmap did not write is described in ``foreign``, not read."""
        foreign = [] if foreign is None else foreign
        items: list[Item] = []
        gateways: dict[int, list[Gateway]] = {}
        for family in _FAMILIES:
            for rule in rules_of(family, "nat", self._chain("DNAT")):
                binding = self._read_dnat(rule)
                if binding is None:
                    foreign.append(f"{_name(family)} chain {self._chain('DNAT')} has a rule natmap did not make: "
                                   f"{_decoded(rule, family)}")
                else:
                    items.append(binding)
            items += self._read_bridges(rules_of(family, "nat", self._chain("POSTROUTING")))
            items += self._read_isolation(rules_of(family, "filter", self._chain("FORWARD")))
            gateways[family] = self._read_gateways(rules_of(family, "filter", self._chain("PROTECT")))
            items += filter(None, map(self._read_routed, rules_of(family, "filter", self._chain("ROUTES"))))
        items += _gateways_of_families(gateways[4], gateways[6])
        items += self._read_links(*(rules_of(family, "filter", self._chain("ISOLATION")) for family in _FAMILIES))
        return _merge_bridges(items)

    def _dnat(self, b: Binding) -> _Rule:
        """A binding: one DNAT rule in NATMAP-DNAT, commented with its endpoint."""
        fields = [("protocol", b.proto.value)]
        if not b.host_ip.is_unspecified:
            fields.insert(0, ("dst", str(b.host_ip)))
        destination = f"[{b.container_ip}]" if b.version == 6 else str(b.container_ip)
        # A same-port range is one rule, --dport first:last, whose DNAT keeps the port.
        dport, to = ((str(b.host_port), f"{destination}:{b.container_port}") if b.count == 1
                     else (f"{b.host_port}:{b.last_port}", destination))
        # Specific addresses go first, so they win over 0.0.0.0 as in the nft maps.
        return _Rule(b.version, "nat", self._chain("DNAT"), "DNAT",
                     ((b.proto.value, (("dport", dport),)), ("comment", (("comment", b.endpoint),))),
                     tuple(fields), (("to_destination", to),),
                     first=not b.host_ip.is_unspecified)

    @staticmethod
    def _read_dnat(rule: Any) -> Binding | None:
        """The binding a DNAT rule is; None for a rule natmap does not write
        (another program's: :meth:`structure_problems` reports it)."""
        try:
            match = {m.name: m for m in rule.matches}
            proto = Protocol(rule.protocol)
            destination = rule.target.to_destination
            host = rule.dst.split("/")[0]
            first, _, last = match[proto.value].dport.partition(":")
            if last:  # a same-port range: the destination is the address alone
                return Binding(match["comment"].comment, proto, ipaddress.ip_address(host), int(first),
                               ipaddress.ip_address(destination.strip("[]")), int(first), int(last) - int(first) + 1)
            address, _, port = destination.rpartition(":")
            return Binding(match["comment"].comment, proto, ipaddress.ip_address(host),
                           int(first), ipaddress.ip_address(address.strip("[]")), int(port))
        except (ValueError, KeyError, TypeError, AttributeError, IndexError):  # SpecError too
            return None

    def _routed(self, b: RoutedBinding) -> _Rule:
        """A binding on a routed bridge: in NATMAP-ROUTES, a goto NATMAP-ROUTED
        (which marks the flow and returns from PROTECT) for its container
        address, protocol and port(s), commented ``routed:ENDPOINT HOST_IP
        HOST_PORT`` (the host side is not mapped, only kept). NATMAP-ROUTES
        comes after every return of PROTECT: a flow PROTECT lets in otherwise
        (a trusted interface's, another bridge's of the table) is not marked."""
        dport = str(b.container_port) if b.count == 1 else f"{b.container_port}:{b.container_port + b.count - 1}"
        return _Rule(b.version, "filter", self._chain("ROUTES"), self._chain("ROUTED"),
                     ((b.proto.value, (("dport", dport),)),
                      ("comment", (("comment", f"routed:{b.endpoint} {b.host_ip} {b.host_port}"),))),
                     (("dst", str(b.container_ip)), ("protocol", b.proto.value)), first=True, goto=True)

    def _read_routed(self, rule: Any) -> RoutedBinding | None:
        comment = _comment(rule) or ""
        if not comment.startswith("routed:"):
            return None
        if rule.target is None or rule.target.name != self._chain("ROUTED") or not rule.target.goto:
            return None  # a routed rule that would not mark its flows (an older natmap's, a hand edit): not one
        try:
            endpoint, host_ip, host_port = comment[len("routed:"):].split(" ")
            proto = Protocol(rule.protocol)
            first, _, last = next(m for m in rule.matches if m.name == proto.value).dport.partition(":")
            return RoutedBinding(endpoint, proto, ipaddress.ip_address(host_ip), int(host_port),
                                 ipaddress.ip_network(rule.dst, strict=False).network_address, int(first),
                                 int(last or first) - int(first) + 1)
        except (ValueError, TypeError, StopIteration, AttributeError):  # SpecError too
            return None  # not natmap's, whatever its comment says

    def _bridge_rules(self, bridge: Bridge) -> Iterator[_Rule]:
        """A bridge: localhost, hairpin and egress masquerade in NATMAP-POSTROUTING,
        per family it has subnets of, commented ``bridge:NAME``."""
        chain, comment = self._chain("POSTROUTING"), ("comment", (("comment", f"bridge:{bridge.name}"),))
        for family in _FAMILIES:
            subnets = [n for n in bridge.subnets if n.version == family]
            if not subnets:
                continue
            yield from self._protect_rules(bridge, family)
            yield _Rule(family, "nat", chain, "MASQUERADE", (comment,),
                        (("src", _LOOPBACK[family]), ("out_interface", bridge.name)))
            for net in subnets:
                yield _Rule(family, "nat", chain, "MASQUERADE",
                            (("conntrack", (("ctstate", "DNAT"),)), comment),
                            (("src", str(net)), ("out_interface", bridge.name)))
                yield _Rule(family, "nat", chain, "MASQUERADE", (comment,),
                            (("src", str(net)), ("out_interface", f"!{bridge.name}")))

    def _protect_rules(self, bridge: Bridge, family: int) -> Iterator[_Rule]:
        """Docker 28's direct-access protection for one bridge: new flows into
        it go to PROTECT, and flows from it are no concern of PROTECT's."""
        comment = ("comment", (("comment", f"bridge:{bridge.name}"),))
        yield _Rule(family, "filter", self._chain("FORWARD"), self._chain("PROTECT"),
                    (("conntrack", (("ctstate", "NEW"),)), comment), (("out_interface", bridge.name),))
        yield _Rule(family, "filter", self._chain("PROTECT"), "RETURN", (comment,),
                    (("in_interface", bridge.name),), first=True)

    def _gateway_rules(self, gateway: Gateway) -> Iterator[_Rule]:
        """What lets routed traffic through PROTECT to one bridge: each IP
        family's mode in that family's table, commented ``gateway:BRIDGE:MODE``,
        and the trusted interfaces (both families)."""
        for family in _FAMILIES:
            mode = gateway.mode_of(family)
            comment = ("comment", (("comment", f"gateway:{gateway.bridge}:{mode}"),))
            if mode == "nat-unprotected":
                yield _Rule(family, "filter", self._chain("PROTECT"), "RETURN", (comment,),
                            (("out_interface", gateway.bridge),), first=True)
            elif mode == "routed":  # ICMP passes; the published ports: _routed; no masquerade
                yield _Rule(family, "filter", self._chain("PROTECT"), "RETURN", (comment,),
                            (("protocol", "icmp" if family == 4 else "icmpv6"), ("out_interface", gateway.bridge)),
                            first=True)
                yield _Rule(family, "nat", self._chain("POSTROUTING"), "RETURN", (comment,),
                            (("in_interface", gateway.bridge),), first=True)
            for interface in gateway.trusted:
                yield _Rule(family, "filter", self._chain("PROTECT"), "RETURN",
                            (("comment", (("comment", f"trusted:{gateway.bridge}"),)),),
                            (("in_interface", interface), ("out_interface", gateway.bridge)), first=True)

    @staticmethod
    def _read_bridges(rules: list[Any]) -> list[Bridge]:
        subnets: dict[str, set[Any]] = {}
        for rule in rules:
            comment = _comment(rule) or ""
            if comment.startswith("bridge:") and not rule.out_interface.startswith("!"):
                net = ipaddress.ip_network(rule.src, strict=False)
                subnets.setdefault(comment[len("bridge:"):], set())
                if not net.is_loopback:
                    subnets[comment[len("bridge:"):]].add(net)
        return [Bridge(name, tuple(sorted(nets, key=lambda n: (n.version, n)))) for name, nets in subnets.items()]

    def _link_rules(self, link: Link) -> Iterator[_Rule]:
        """A link: one ACCEPT in NATMAP-ISOLATION per flow, commented ``source>target:alias``."""
        for source, target, proto, port in link.flows():
            yield _Rule(source.version, "filter", self._chain("ISOLATION"), "ACCEPT",
                        ((proto.value, (("dport", str(port)),)), ("comment", (("comment", link.comment),))),
                        (("src", str(source)), ("dst", str(target)), ("protocol", proto.value)), first=True)

    @staticmethod
    def _read_links(*chains: list[Any]) -> list[Link]:
        flows: dict[str, list[Flow]] = {}
        for rules in chains:
            for rule in rules:
                comment = _comment(rule)
                if comment and ">" in comment:
                    try:
                        proto = Protocol(rule.protocol)
                        dport = next(int(m.dport) for m in rule.matches if m.name == proto.value)
                        flow = (ipaddress.ip_network(rule.src, strict=False).network_address,
                                ipaddress.ip_network(rule.dst, strict=False).network_address, proto, dport)
                        links_from_flows({comment: [flow]})  # natmap's source>target:alias, or raises
                    except (ValueError, TypeError, StopIteration):
                        continue  # not natmap's, whatever its comment says
                    flows.setdefault(comment, []).append(flow)
        return links_from_flows(flows)

    def _isolation_rules(self, isolation: Isolation) -> Iterator[_Rule]:
        """An isolated bridge: a jump to NATMAP-ISOLATION for its traffic to
        itself, both families, commented ``isolate:NAME``."""
        for family in _FAMILIES:
            yield _Rule(family, "filter", self._chain("FORWARD"), self._chain("ISOLATION"),
                        (("comment", (("comment", f"isolate:{isolation.bridge}"),)),),
                        (("in_interface", isolation.bridge), ("out_interface", isolation.bridge)))

    @staticmethod
    def _read_isolation(rules: list[Any]) -> list[Isolation]:
        return [Isolation(c[len("isolate:"):]) for c in map(_comment, rules) if c and c.startswith("isolate:")]

    @staticmethod
    def _read_gateways(rules: list[Any]) -> list[Gateway]:
        """The gateways one family's PROTECT chain holds (their ``mode`` that family's)."""
        modes: dict[str, GatewayMode] = {}  # a comment's mode: Gateway() checks it (SpecError below)
        trusted: dict[str, list[str]] = {}
        for rule in rules:
            comment = _comment(rule) or ""
            if comment.startswith("gateway:") and comment.count(":") == 2:
                _, bridge, mode = comment.split(":", 2)
                modes[bridge] = mode  # type: ignore[assignment]
            elif comment.startswith("trusted:") and rule.in_interface:
                trusted.setdefault(comment[len("trusted:"):], []).append(rule.in_interface)
        gateways = []
        for bridge in sorted({*modes, *trusted}):
            try:
                gateways.append(Gateway(bridge, modes.get(bridge, "nat"), tuple(trusted.get(bridge, ()))))
            except SpecError:
                continue  # not natmap's, whatever its comment says
        return gateways

    # --- natmap's own chains ----------------------------------------------------------

    def _skeleton(self) -> list[_Step]:
        """The chains, their fixed rules and the jumps to them, both families."""
        guard, dnat, post = self._chain("GUARD"), self._chain("DNAT"), self._chain("POSTROUTING")
        forward, isolation = self._chain("FORWARD"), self._chain("ISOLATION")
        local = (("addrtype", (("dst_type", "LOCAL"),)),)
        steps = [_Step(Verb.CHAIN, 4, "filter", self._chain("GENERATION")),
                 # The marker: what proves these chains are natmap's, for this table.
                 _Step.of(Verb.ADD, _Rule(4, "filter", self._chain("GENERATION"), "RETURN",
                                          (("comment", (("comment", marker(self.table)),)),)))]
        for family in _FAMILIES:
            for table, chain in (("raw", guard), ("nat", dnat), ("nat", post), ("filter", forward),
                                 ("filter", isolation), ("filter", self._chain("PROTECT")),
                                 ("filter", self._chain("ROUTES")), ("filter", self._chain("ROUTED"))):
                steps.append(_Step(Verb.CHAIN, family, table, chain))
            rules = [
                _Rule(family, "raw", guard, "DROP", (), (("dst", _LOOPBACK[family]), ("in_interface", "!lo"))),
                _Rule(family, "filter", forward, "ACCEPT", (("conntrack", (("ctstate", "DNAT"),)),)),
                _Rule(family, "filter", isolation, "ACCEPT", (("conntrack", (("ctstate", "RELATED,ESTABLISHED"),)),)),
            ]
            if family == 6:  # neighbour discovery is ICMPv6, so it crosses FORWARD where ARP does not
                rules += [_Rule(6, "filter", isolation, "ACCEPT", (("icmp6", (("icmpv6_type", kind),)),),
                                (("protocol", "icmpv6"),))
                          for kind in ("neighbour-solicitation", "neighbour-advertisement")]
            rules.append(_Rule(family, "filter", isolation, "DROP"))
            # After PROTECT's returns, by gotos (whose end returns from PROTECT): the routed
            # bindings, then drop; a routed binding goes to the mark (natmap's bit alone, so
            # that unpublishing can cut the flow: host.forget_flows).
            rules.append(_Rule(family, "filter", self._chain("PROTECT"), self._chain("ROUTES"), goto=True))
            rules.append(_Rule(family, "filter", self._chain("ROUTES"), "DROP"))
            rules.append(_Rule(family, "filter", self._chain("ROUTED"), "CONNMARK",
                               target_args=(("set_xmark", f"{ROUTED_CT_MARK:#x}/{ROUTED_CT_MARK:#x}"),)))
            steps += [_Step.of(Verb.ADD, r) for r in rules]
            jumps = [_Rule(family, "raw", "PREROUTING", guard, first=True),
                     _Rule(family, "nat", "PREROUTING", dnat, local),
                     _Rule(family, "nat", "OUTPUT", dnat, local),
                     _Rule(family, "nat", "POSTROUTING", post),
                     _Rule(family, "filter", "FORWARD", forward, first=True)]
            steps += [_Step.of(Verb.JUMP, r) for r in jumps]
        return steps

    def _marker_rule(self, marker: str) -> _Rule:
        """The generation marker: the only rule of a chain nothing jumps to."""
        return _Rule(4, "filter", self._chain("GENERATION"), "RETURN",
                     (("comment", (("comment", _MARKER + marker),)),))

    def _steps(self, change: Change, create: bool, old: str | None, marker: str) -> list[_Step]:
        """In order: the skeleton, deletions, additions, the marker."""
        steps = self._skeleton() if create else []
        for item in change.delete:
            steps += [_Step.of(Verb.DELETE, r) for r in self.rules(item)]
        for item in change.add:
            steps += [_Step.of(Verb.ADD, r) for r in self.rules(item)]
        if old is not None:
            steps.append(_Step.of(Verb.DELETE, self._marker_rule(old)))
        steps.append(_Step.of(Verb.ADD, self._marker_rule(marker)))
        return steps

    def text(self, change: Change, *, create: bool = False) -> str:
        """The change as iptables commands, one a line (the marker left out)."""
        return "".join(f"{step.text()}\n" for step in self._steps(change, create, None, "")[:-1])


class IptablesBackend(Layout):
    """The :class:`~natmap.backends.base.Backend` on python-iptables, in the
    calling thread's network namespace."""

    name = "iptables"
    counts_every_commit = False  # the marker changes with natmap's commits only, not with hand edits
    claimed = False  # set by the engine: natmap's store remembers this table (see foreign())
    lock_timeout = LOCK_TIMEOUT  # set by the engine: the longest wait for /run/xtables.lock (seconds)

    def __init__(self, table: str) -> None:
        _find_xtables_libdir()
        import iptc  # noqa: F401  (fail here, clearly, if python-iptables cannot load)

        # Without CAP_NET_ADMIN, libxtables' extension checks call exit():
        # open a table first, which fails cleanly.
        with _xtables_lock(self.lock_timeout):  # which also makes threads take turns with libxtables' globals
            _table(4, "filter")
            _prepare_extensions()
        super().__init__(table)

    def generation(self) -> Generation:
        """The marker of the last transaction (None if the chains are missing)."""
        with _iptc_errors("reading natmap's generation marker"), _xtables_lock(self.lock_timeout):
            return self._read_marker()

    def _read_marker(self) -> str | None:
        table = _table(4, "filter")
        if not table.is_chain(self._chain("GENERATION")):
            return None
        return _find_marker(_chain(table, self._chain("GENERATION")))

    def exists(self) -> bool:
        with _iptc_errors("looking for natmap's chains"), _xtables_lock(self.lock_timeout):
            return bool(_table(4, "nat").is_chain(self._chain("DNAT")))

    def read(self, foreign: list[str] | None = None) -> Table | None:
        """natmap's chains read back into a :class:`Table`; None if there are none.
        A rule natmap did not write is described in ``foreign``, not read.
        Raises ConflictError if a chain of natmap's names is not natmap's."""
        problem = self.foreign()
        if problem:
            raise ConflictError(f"{problem}; natmap will not use, change or delete it: "
                                "choose another table name")
        return self.load(foreign) if self.exists() else None

    def foreign(self) -> str | None:
        """What stands in the way of natmap's chains for this table, if anything:
        a chain of one of their names without natmap's marker for this table.
        A table natmap's store remembers (``claimed``) is natmap's also without
        the marker (flushed by hand, or made half): only a marker that names
        another table stands in its way then."""
        with _iptc_errors("looking for natmap's chains"), _xtables_lock(self.lock_timeout):
            generation = self._chain("GENERATION")
            filt = _table(4, "filter")
            if filt.is_chain(generation):
                owner = _owner(_chain(filt, generation))
                if owner == self.table or (owner is None and self.claimed):
                    return None
                if owner is None:
                    return (f"iptables chain {generation} exists but has no natmap marker for table "
                            f"{self.table!r} (deleted by hand? `natmap adopt --force` takes the chains back "
                            "if every rule in them is one natmap writes)")
                return (f"iptables chain {generation} exists but is not natmap's table {self.table!r}'s "
                        f"(its marker names {owner!r})")
            for step in self._skeleton() if not self.claimed else ():
                if step.verb is Verb.CHAIN and _table(step.family, step.table).is_chain(step.chain):
                    return f"{_name(step.family)} chain {step.chain} in table {step.table} exists but is not natmap's"
        return None

    def take_back(self) -> None:
        """Put natmap's marker rule back when it was deleted by hand (``natmap
        adopt --force``), if the chains prove themselves natmap's: the
        GENERATION chain (a name only natmap uses) is there and holds no
        other table's marker nor any rule but natmap's markers, and every rule
        of every chain of natmap's names is one natmap writes (a fixed one,
        or one of an item read back from them, written again the same).
        Raises ConflictError, changing nothing, otherwise; nothing to do
        without chains or with the marker in place."""
        with _iptc_errors("taking natmap's chains back"), _xtables_lock(self.lock_timeout):
            generation = self._chain("GENERATION")
            filt = _table(4, "filter")
            if not filt.is_chain(generation):
                if self._any_chain():
                    raise ConflictError(f"iptables chain {generation} is missing, so nothing proves the chains "
                                        f"named {self.prefix}-* natmap's table {self.table!r}'s: natmap will not "
                                        "take them")
                return
            rules = list(_chain(filt, generation).rules)
            owner = _owner(_chain(filt, generation))
            if owner == self.table:
                return
            problems = [f"iptables chain {generation}'s marker names table {owner!r}"] if owner else []
            problems += [f"iptables chain {generation} has a rule natmap did not make: {_decoded(r, 4)}"
                         for r in rules if not self._is_marker(r)]
            problems += self._missing_skeleton() or self._not_natmaps()
            problems += self._foreign_jumps()
            if problems:
                raise ConflictError(f"the chains of table {self.table!r} are not provably natmap's, so natmap "
                                    f"will not take them: {'; '.join(problems)}")
            _commit(4, "filter", [s for s in self._skeleton() if s.verb is Verb.ADD and s.chain == generation])

    def _is_marker(self, rule: Any) -> bool:
        """Whether ``rule`` is a marker exactly as natmap writes one (its comment,
        match and target), not just a rule whose comment starts like one."""
        comment = _comment(rule) or ""
        return comment.startswith(_MARKER) and \
            _decoded(rule, 4) == _decoded(self._marker_rule(comment[len(_MARKER):]).build(), 4)

    def _missing_skeleton(self) -> list[str]:
        """What of natmap's fixed chains and rules is not there: without the
        marker, only they can prove a set of chains natmap's (an empty or
        marker-shaped GENERATION chain alone proves nothing)."""
        missing = []
        for step in self._skeleton():
            table = _table(step.family, step.table)
            if step.verb is Verb.CHAIN and not table.is_chain(step.chain):
                missing.append(f"{_name(step.family)} chain {step.chain} in table {step.table} is missing")
            elif step.verb is Verb.ADD and step.chain != self._chain("GENERATION") and table.is_chain(step.chain):
                if self._to_missing_chain(step.needs_rule()):
                    missing.append(f"{_name(step.family)} rule natmap writes in {step.chain} is missing: "
                                   f"{step.needs_rule().text()}")
                    continue
                shape = _decoded(step.needs_rule().build(), step.family)
                if shape not in (_decoded(r, step.family) for r in _chain(table, step.chain).rules):
                    missing.append(f"{_name(step.family)} rule natmap writes in {step.chain} is missing: {shape}")
        return missing

    def _foreign_jumps(self) -> list[str]:
        """Each rule outside natmap's chains that jumps (or goes) to one of them
        and is not one of natmap's own jumps (from the built-in chains natmap
        jumps from, once each): another program's use of the chains."""
        expected: dict[tuple[int, str, str, str], int] = {}
        for step in self._skeleton():
            if step.verb is Verb.JUMP and _table(step.family, step.table).is_chain(step.needs_rule().target):
                key = (step.family, step.table, step.chain, _decoded(step.needs_rule().build(), step.family))
                expected[key] = expected.get(key, 0) + 1
        foreign = []
        for family, table_name in _CREATE_ORDER:
            for chain in _table(family, table_name).chains:
                if chain.name.startswith(self.prefix + "-"):
                    continue
                for rule in chain.rules:
                    target = rule.target.name if rule.target is not None else ""
                    if not target.startswith(self.prefix + "-"):
                        continue
                    key = (family, table_name, chain.name, _decoded(rule, family))
                    if expected.get(key, 0) > 0:
                        expected[key] -= 1
                    else:
                        foreign.append(f"{_name(family)} rule in {chain.name} jumps to {target} "
                                       f"and is not natmap's: {key[3]}")
        return foreign

    def _not_natmaps(self) -> list[str]:
        """Each rule in a chain of natmap's names (GENERATION aside) that
        natmap would not write for the items those chains hold."""
        tables: dict[tuple[int, str], Any] = {}

        def table_of(family: int, table_name: str) -> Any:
            if (family, table_name) not in tables:
                tables[(family, table_name)] = _table(family, table_name)
            return tables[(family, table_name)]

        def rules_of(family: int, table_name: str, chain: str) -> list[Any]:
            table = table_of(family, table_name)
            return list(_chain(table, chain).rules) if table.is_chain(chain) else []

        # Compared as python-iptables decodes them: its Rule equality finds an
        # IPv4 MASQUERADE built here unequal to the same rule read back.
        foreign: list[str] = []
        allowed: set[tuple[int, str, str, str]] = set()
        for rule in [*(r for item in self.read_items(rules_of, foreign) for r in self.rules(item)),
                     *(s.needs_rule() for s in self._skeleton()
                       if s.verb is Verb.ADD and not self._to_missing_chain(s.needs_rule()))]:
            allowed.add((rule.family, rule.table, rule.chain, _decoded(rule.build(), rule.family)))
        for family, table_name in _CREATE_ORDER:
            for chain in table_of(family, table_name).chains:
                if chain.name.startswith(self.prefix + "-") and chain.name != self._chain("GENERATION"):
                    foreign += [f"{_name(family)} rule in {chain.name} is not natmap's: {shape}"
                                for rule in chain.rules for shape in [_decoded(rule, family)]
                                if (family, table_name, chain.name, shape) not in allowed]
        return foreign

    def inspect(self) -> tuple[Table | None, list[str], list[str]]:
        """The table (None if missing), its structure's problems, the rules natmap did not write."""
        foreign: list[str] = []
        return self.read(foreign), self.structure_problems(), foreign

    def load(self, foreign: list[str] | None = None) -> Table:
        """Read natmap's chains back into a :class:`Table`."""
        with _iptc_errors("reading natmap's chains"), _xtables_lock(self.lock_timeout):
            tables: dict[tuple[int, str], Any] = {}

            def rules_of(family: int, table_name: str, chain: str) -> list[Any]:
                if (family, table_name) not in tables:
                    tables[(family, table_name)] = _table(family, table_name)
                return list(_chain(tables[(family, table_name)], chain).rules)

            items = self.read_items(rules_of, foreign)
        return Table(items)

    def apply(self, change: Change, *, create: bool = False, generation: Generation = None) -> Generation:
        """Commit the change table by table (see the module doc); return the new marker."""
        marker = secrets.token_hex(6)
        committed: list[tuple[int, str]] = []
        with _iptc_errors("applying the change"), _xtables_lock(self.lock_timeout):
            steps = self._steps(change, create, self._read_marker(), marker)
            # Creating: the marker, then the localhost guard, before anything can DNAT to 127/8.
            for family, table_name in (_CREATE_ORDER if create else _ORDER):
                todo = [s for s in steps if (s.family, s.table) == (family, table_name)]
                if not todo:
                    continue
                try:
                    _commit(family, table_name, todo)
                except Exception as exc:
                    self._restore(committed, steps)
                    raise BackendError(f"{_name(family)} refused the change in table {table_name}: "
                                       f"{exc}") from exc
                committed.append((family, table_name))
                crash_point(f"iptables-{family}-{table_name}")  # the crash tests' seam
        return marker

    def _restore(self, committed: list[tuple[int, str]], steps: list[_Step]) -> None:
        """Undo the commits already made, newest first, by committing their inverse."""
        for family, table_name in reversed(committed):
            _commit(family, table_name, undo(steps, family, table_name))

    def delete(self) -> None:
        """Remove natmap's chains and the jumps to them, every table, both families."""
        with _iptc_errors("deleting natmap's chains"), _xtables_lock(self.lock_timeout):
            for family, table_name in _ORDER:
                table = _table(family, table_name)
                names = {step.chain for step in self._skeleton()
                         if step.verb is Verb.CHAIN and (step.family, step.table) == (family, table_name)}
                ours = [c for c in table.chains if c.name in names]  # exactly natmap's own chains
                for chain in table.chains:
                    for rule in list(chain.rules):
                        if rule.target.name in {c.name for c in ours}:
                            chain.delete_rule(rule)
                for chain in ours:
                    chain.flush()
                for chain in ours:
                    table.delete_chain(chain.name)
                table.commit()
                table.refresh()

    def structure_problems(self) -> list[str]:
        """natmap's own chains, and the jumps to them, that are missing."""
        problems: list[str] = []
        with _iptc_errors("checking natmap's chains"), _xtables_lock(self.lock_timeout):
            if not self._any_chain():
                return problems  # no table at all: nothing half made
            for step in self._skeleton():
                table = _table(step.family, step.table)
                if step.verb is Verb.CHAIN and not table.is_chain(step.chain):
                    problems.append(f"{_name(step.family)} chain {step.chain} in {step.table} is missing")
                elif step.verb is Verb.JUMP and table.is_chain(step.chain) and \
                        table.is_chain(step.needs_rule().target) and \
                        step.needs_rule().build() not in _chain(table, step.chain).rules:
                    problems.append(f"{_name(step.family)} jump from {step.chain} to "
                                    f"{step.needs_rule().target} is missing")
                elif step.verb is Verb.ADD and table.is_chain(step.chain) and \
                        (self._to_missing_chain(step.needs_rule())
                         or step.needs_rule().build() not in _chain(table, step.chain).rules):
                    problems.append(f"{_name(step.family)} rule {step.needs_rule().text()} is missing or changed")
            problems += self._unknown_rules()
        return problems

    def _to_missing_chain(self, rule: _Rule) -> bool:
        """Whether ``rule`` goes to one of natmap's chains that is not there
        (then it cannot be there either, and python-iptables cannot build it)."""
        return rule.target.startswith(self.prefix + "-") and not _table(rule.family, rule.table).is_chain(rule.target)

    def _any_chain(self) -> bool:
        """Whether any of natmap's chains exists, in any table (also a half-made set)."""
        return any(c.name.startswith(self.prefix + "-") for family, name in _CREATE_ORDER
                   for c in _table(family, name).chains)

    def _unknown_rules(self) -> list[str]:
        """Rules in natmap's chains that are neither its fixed ones nor an item's
        (every item rule carries a comment), nor the generation marker. Foreign
        rules in the DNAT chain are :meth:`load`'s foreign ones."""
        fixed: dict[tuple[int, str, str], list[Any]] = {}
        for step in self._skeleton():
            if step.verb is Verb.ADD and not self._to_missing_chain(step.needs_rule()):
                fixed.setdefault((step.family, step.table, step.chain), []).append(step.needs_rule().build())
        unknown = []
        for family, table_name in _CREATE_ORDER:
            table = _table(family, table_name)
            for chain in table.chains:
                if not chain.name.startswith(self.prefix + "-") or \
                        chain.name in (self._chain("GENERATION"), self._chain("DNAT")):
                    continue
                for rule in chain.rules:
                    if rule not in fixed.get((family, table_name, chain.name), []) and not _comment(rule):
                        unknown.append(f"{_name(family)} rule in {chain.name} is not natmap's: "
                                       f"{_decoded(rule, family)}")
                    elif family == 6 and _loose_masks(rule.entry.ipv6):
                        unknown.append(f"ip6tables rule in {chain.name} matches interface names by their "
                                       f"lowest bits only (an older natmap's): {_decoded(rule, family)}")
        return unknown

    def rebuild(self, items: Iterable[Item]) -> None:
        """Remove natmap's chains (also a half-made set of them) and make them
        again with ``items`` (one commit per table, the guard first)."""
        self.delete()
        self.apply(Change(add=tuple(items)), create=True)

    def close(self) -> None:
        """Nothing to close: every call opens fresh table handles."""


def undo(steps: list[_Step], family: int, table_name: str) -> list[_Step]:
    """The steps that undo ``steps``' commit to one table: their inverses, newest first."""
    return [step.inverse() for step in reversed(steps) if (step.family, step.table) == (family, table_name)]


def _find_xtables_libdir() -> None:
    """Tell python-iptables where the xtables extensions are, which it would
    otherwise learn by running ``ldconfig -v`` as a process at import."""
    if "XTABLES_LIBDIR" in os.environ:
        return
    import sysconfig

    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    for path in (f"/usr/lib/{multiarch}/xtables", "/usr/lib64/xtables", "/usr/lib/xtables"):
        if os.path.isdir(path):
            os.environ["XTABLES_LIBDIR"] = path
            return


_ORDER = [(4, "filter"), (6, "filter"), (4, "nat"), (6, "nat"), (4, "raw"), (6, "raw")]
# Creating: IPv4 filter first (its GENERATION chain holds the marker that makes a
# half-made set of chains natmap's, issue 13), then the localhost guard (raw),
# both before anything can DNAT to 127/8 (nat).
_CREATE_ORDER = [(4, "filter"), (4, "raw"), (6, "raw"), (6, "filter"), (4, "nat"), (6, "nat")]


_NAT_TARGETS = ("DNAT", "MASQUERADE")
_prepared: list[Any] = []  # the private copy of the NAT library, kept loaded


def _prepare_extensions() -> None:
    """Register the NAT targets for both families, once per process.

    ``libxt_NAT.so`` serves DNAT and MASQUERADE for IPv4 and IPv6, but it
    registers only the family current when it is loaded, and libxtables loads
    a library once: in one process, python-iptables finds these targets for
    IPv4 or for IPv6, whichever asked first (and a failed lookup spoils later
    ones). So: look them up for IPv4 first, then load a private copy of the
    library (fresh structures, its own symbols first) with IPv6 current, whose
    constructor registers the IPv6 targets.
    """
    if _prepared:
        return
    from iptc import xtables as X

    x4, x6 = X.xtables(X.NFPROTO_IPV4), X.xtables(X.NFPROTO_IPV6)
    if not all(x4.find_target(name) for name in _NAT_TARGETS):
        raise BackendError("iptables: the NAT targets (DNAT, MASQUERADE) are not available")
    path = os.path.realpath(os.path.join(X._xtables_libdir, f"libxt_{_NAT_TARGETS[0]}.so"))
    X.xtables._xtables_set_nfproto(X.NFPROTO_IPV6)
    with tempfile.NamedTemporaryFile(suffix=".so") as copy:
        shutil.copyfile(path, copy.name)
        _prepared.append(ctypes.CDLL(copy.name, mode=os.RTLD_DEEPBIND))
    if not all(x6.find_target(name) for name in _NAT_TARGETS):
        raise BackendError("ip6tables: the NAT targets (DNAT, MASQUERADE) are not available")


def _name(family: int) -> str:
    return "ip6tables" if family == 6 else "iptables"


@contextmanager
def _iptc_errors(what: str) -> Iterator[None]:
    """Translate python-iptables' errors into natmap's at this boundary."""
    import iptc

    try:
        yield
    except iptc.IPTCError as exc:
        if "Permission denied" in str(exc):
            raise PrivilegeError(what, _capability_refused()) from exc
        raise BackendError(f"{what}: {exc}") from exc


def _capability_refused() -> str:
    """Which capability python-iptables was refused for: libiptc opens a raw
    socket (CAP_NET_RAW, which hardened runtimes drop) before it asks the
    kernel for a table (CAP_NET_ADMIN), and says "Permission denied" for
    either."""
    import _socket  # the C module: no enums to import

    try:
        _socket.socket(_socket.AF_INET, _socket.SOCK_RAW, _socket.IPPROTO_RAW).close()
    except PermissionError:
        return "CAP_NET_RAW (python-iptables' raw socket)"
    except OSError:
        pass
    return "CAP_NET_ADMIN"


def _table(family: int, name: str) -> Any:
    """A fresh handle on one table, read in the calling thread's namespace."""
    import iptc

    with _iptc_errors(f"opening {_name(family)} table {name}"):
        table = iptc.Table6(name, autocommit=False) if family == 6 else iptc.Table(name, autocommit=False)
        table.autocommit = False
        table.refresh()
    return table


def _full_interface_masks(entry: Any) -> None:
    """Make an ip6tables rule's ``-i``/``-o`` match the whole name, as ip6tables
    does (mask bytes 0xff). python-iptables 1.2's Rule6 writes 0x01 bytes, which
    the kernel ANDs with the name's bytes: only their lowest bits compared,
    ``-i nmout2`` matched ``nmout`` (and ``-o natmap0`` other bridges)."""
    for mask in ("iniface_mask", "outiface_mask"):
        setattr(entry, mask, bytes(0xFF if byte else 0 for byte in getattr(entry, mask)))


def _loose_masks(entry: Any) -> bool:
    """Whether an ip6tables rule's ``-i``/``-o`` has a mask of python-iptables 1.2 (see above)."""
    return any(0 < byte < 0xFF for mask in ("iniface_mask", "outiface_mask") for byte in getattr(entry, mask))


def _chain(table: Any, name: str) -> Any:
    import iptc

    return iptc.Chain(table, name)


def _commit(family: int, table_name: str, steps: list[_Step]) -> None:
    """Apply the steps to one table's handle, then commit it in one call."""
    table = _table(family, table_name)
    for step in steps:
        match step.verb:
            case Verb.CHAIN:
                if not table.is_chain(step.chain):
                    table.create_chain(step.chain)
            case Verb.DROP_CHAIN:
                if table.is_chain(step.chain):
                    table.delete_chain(step.chain)
            case Verb.JUMP:
                rule, chain = step.needs_rule(), _chain(table, step.chain)
                if rule.build() not in chain.rules:  # once, whatever was there
                    chain.insert_rule(rule.build()) if rule.first else chain.append_rule(rule.build())
            case Verb.ADD:
                rule, chain = step.needs_rule(), _chain(table, step.chain)
                chain.insert_rule(rule.build()) if rule.first else chain.append_rule(rule.build())
            case Verb.DELETE:
                _chain(table, step.chain).delete_rule(step.needs_rule().build())
            case _:
                assert_never(step.verb)
    table.commit()
    table.refresh()


def _find_marker(chain: Any) -> str | None:
    for rule in chain.rules:
        for match in rule.matches:
            if match.name == "comment" and match.comment.startswith(_MARKER):
                return str(match.comment[len(_MARKER):])
    return None


def _comment(rule: Any) -> str | None:
    return next((m.comment for m in rule.matches if m.name == "comment"), None)


def _gateways_of_families(ipv4: list[Gateway], ipv6: list[Gateway]) -> list[Gateway]:
    """One Gateway a bridge from what the IPv4 and the IPv6 tables hold (a
    family without a rule for the bridge: ``nat``; trusted: in either)."""
    of4, of6 = {g.bridge: g for g in ipv4}, {g.bridge: g for g in ipv6}
    gateways = []
    for bridge in sorted({*of4, *of6}):
        read = [g for g in (of4.get(bridge), of6.get(bridge)) if g is not None]
        gateways.append(Gateway(bridge, None, {i for g in read for i in g.trusted},
                                mode_ipv4=of4[bridge].mode_ipv4 if bridge in of4 else None,
                                mode_ipv6=of6[bridge].mode_ipv6 if bridge in of6 else None))
    return gateways


def _merge_bridges(items: list[Item]) -> list[Item]:
    """IPv4 and IPv6 rules of one bridge are read separately: make one Bridge of them."""
    merged: dict[str, set[Any]] = {}
    others: list[Item] = []
    for item in items:
        if isinstance(item, Bridge):
            merged.setdefault(item.name, set()).update(item.subnets)
        elif not (isinstance(item, Isolation) and item in others):
            others.append(item)
    bridges = [Bridge(n, tuple(sorted(s, key=lambda n: (n.version, n)))) for n, s in merged.items()]
    return [*bridges, *others]


def _decoded(rule: Any, family: int) -> str:
    """A foreign rule in words, for a drift message."""
    import iptc.easy

    try:
        decoded = iptc.easy.decode_iptc_rule(rule, family == 6)
        decoded.pop("counters", None)
        return str(decoded)  # the same rule, the same text: take_back compares rules by it
    except Exception:  # noqa: BLE001  (only words for a message)
        return "(unreadable)"


@contextmanager
def _xtables_lock(timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """The lock the iptables commands take, so natmap and they never commit over
    each other, then this process's turn on python-iptables (see
    :func:`_iptc_turn`: the flock already makes the process's threads take
    turns, but not with a listing, which takes no flock); both waited for at
    most ``timeout`` seconds in all (LockTimeoutError). Held for one backend
    call, never longer."""
    deadline = time.monotonic() + timeout
    with flocked(_XTABLES_LOCK, timeout=timeout), _iptc_turn(max(0.0, deadline - time.monotonic())):
        yield


# python-iptables keeps ONE Table object per table name for the whole process
# (iptc.Table.__new__ caches it), and its refresh() frees the C handle that
# another thread may be reading: threads that used it at once crashed the
# process (SIGSEGV) or committed garbage. Every use of python-iptables in the
# process takes this turn, in every namespace; a thread stuck in freed memory
# would otherwise keep /run/xtables.lock for the life of the process.
_IPTC_TURN = threading.RLock()


def _fresh_turn() -> None:
    """In a child forked while another thread had the turn: that thread is
    not in the child, and would never give it back."""
    global _IPTC_TURN
    _IPTC_TURN = threading.RLock()


os.register_at_fork(after_in_child=_fresh_turn)


@contextmanager
def _iptc_turn(timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """This thread's turn on python-iptables, waited for at most ``timeout`` seconds."""
    turn = _IPTC_TURN  # the one released, also if a fork replaced it meanwhile
    if not turn.acquire(timeout=min(timeout, threading.TIMEOUT_MAX)):
        raise LockTimeoutError(f"another thread of this process used python-iptables for more than {timeout:g} s",
                               os.getpid())
    try:
        yield
    finally:
        turn.release()

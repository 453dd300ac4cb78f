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

What is atomic: each table of each family is replaced in one commit
(``iptc_commit``). A change spans up to two tables in two families, committed
in a fixed order, filter before nat, IPv4 before IPv6, so that what a change
closes (links, isolation) is closed before ports change. If a commit fails,
the tables already committed are restored by committing the inverse change,
and the error is raised. Every transaction also replaces a generation marker
(a comment rule in NATMAP-FORWARD, IPv4), which tells other NatMaps that
their picture of the chains is stale: legacy xtables has no generation counter.

iptables has no maps: the packet path is linear in the number of bindings.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import BackendError, PrivilegeError
from ..links import Flow, Link, links_from_flows
from ..locking import flocked
from ..model import Binding, Bridge, Change, Isolation, Item, Table
from ..spec import Protocol

_XTABLES_LOCK = "/run/xtables.lock"  # what the iptables commands lock too
_MARKER = "natmap-generation:"
_LOOPBACK = {4: "127.0.0.0/8", 6: "::1/128"}
_FAMILIES = (4, 6)


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

    def build(self) -> Any:
        import iptc

        rule = iptc.Rule() if self.family == 4 else iptc.Rule6()
        for name, value in self.fields:
            setattr(rule, name, value)
        for match_name, options in self.matches:
            match = rule.create_match(match_name)
            for option, value in options:
                setattr(match, option, value)
        target = rule.create_target(self.target)
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
        words += ["-j", self.target]
        for option, value in self.target_args:
            words += [f"--{option.replace('_', '-')}", value]
        return f"{'ip6tables' if self.family == 6 else 'iptables'} -t {self.table} " + " ".join(words)


def chain_prefix(table: str) -> str:
    return table.upper()[:16]


class IptablesBackend:
    """python-iptables in the calling thread's network namespace."""

    name = "iptables"

    def __init__(self, table: str, session: Any = None) -> None:
        _find_xtables_libdir()
        import iptc  # noqa: F401  (fail here, clearly, if python-iptables cannot load)

        # Without CAP_NET_ADMIN, libxtables' extension checks call exit():
        # open a table first, which fails cleanly.
        with _xtables_lock():
            _table(4, "filter")
        _prepare_extensions()

        self.table = table
        self.prefix = chain_prefix(table)
        self._marker: str | None = None

    # --- the rules of each item ----------------------------------------------------

    def _chain(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def rules(self, item: Item) -> Iterator[_Rule]:
        """The rules that make up one item of the table."""
        if isinstance(item, Binding):
            yield self._dnat(item)
        elif isinstance(item, Bridge):
            yield from self._bridge_rules(item)
        elif isinstance(item, Link):
            for source, target, proto, port in item.flows():
                yield _Rule(source.version, "filter", self._chain("ISOLATION"), "ACCEPT",
                            ((proto.value, (("dport", str(port)),)), ("comment", (("comment", item.comment),))),
                            (("src", str(source)), ("dst", str(target)), ("protocol", proto.value)), first=True)
        else:
            for family in _FAMILIES:
                yield _Rule(family, "filter", self._chain("FORWARD"), self._chain("ISOLATION"),
                            (("comment", (("comment", f"isolate:{item.bridge}"),)),),
                            (("in_interface", item.bridge), ("out_interface", item.bridge)))

    def _dnat(self, b: Binding) -> _Rule:
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

    def _bridge_rules(self, bridge: Bridge) -> Iterator[_Rule]:
        chain, comment = self._chain("POSTROUTING"), ("comment", (("comment", f"bridge:{bridge.name}"),))
        for family in _FAMILIES:
            subnets = [n for n in bridge.subnets if n.version == family]
            if not subnets:
                continue
            yield _Rule(family, "nat", chain, "MASQUERADE", (comment,),
                        (("src", _LOOPBACK[family]), ("out_interface", bridge.name)))
            for net in subnets:
                yield _Rule(family, "nat", chain, "MASQUERADE",
                            (("conntrack", (("ctstate", "DNAT"),)), comment),
                            (("src", str(net)), ("out_interface", bridge.name)))
                yield _Rule(family, "nat", chain, "MASQUERADE", (comment,),
                            (("src", str(net)), ("out_interface", f"!{bridge.name}")))

    def _skeleton(self) -> list[tuple[str, int, str, Any]]:
        """The chains, their fixed rules and the jumps to them, both families,
        as (verb, family, table, what) steps."""
        steps: list[tuple[str, int, str, Any]] = []
        guard, dnat, post = self._chain("GUARD"), self._chain("DNAT"), self._chain("POSTROUTING")
        forward, isolation = self._chain("FORWARD"), self._chain("ISOLATION")
        local = (("addrtype", (("dst_type", "LOCAL"),)),)
        steps.append(("chain", 4, "filter", self._chain("GENERATION")))
        for family in _FAMILIES:
            for table, chain in (("raw", guard), ("nat", dnat), ("nat", post), ("filter", forward),
                                 ("filter", isolation)):
                steps.append(("chain", family, table, chain))
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
            steps += [("add", r.family, r.table, r) for r in rules]
            jumps = [_Rule(family, "raw", "PREROUTING", guard, first=True),
                     _Rule(family, "nat", "PREROUTING", dnat, local),
                     _Rule(family, "nat", "OUTPUT", dnat, local),
                     _Rule(family, "nat", "POSTROUTING", post),
                     _Rule(family, "filter", "FORWARD", forward, first=True)]
            steps += [("jump", r.family, r.table, r) for r in jumps]
        return steps

    def _marker_rule(self, marker: str) -> _Rule:
        """The generation marker: the only rule of a chain nothing jumps to."""
        return _Rule(4, "filter", self._chain("GENERATION"), "RETURN",
                     (("comment", (("comment", _MARKER + marker),)),))

    # --- the backend interface ------------------------------------------------------

    def generation(self) -> str | None:
        """The marker of the last transaction (None if the chains are missing)."""
        with _xtables_lock():
            return self._read_marker()

    def _read_marker(self) -> str | None:
        table = _table(4, "filter")
        if not table.is_chain(self._chain("GENERATION")):
            return None
        return _find_marker(_chain(table, self._chain("GENERATION")))

    def exists(self) -> bool:
        with _xtables_lock():
            return _table(4, "nat").is_chain(self._chain("DNAT"))

    def read(self) -> Table | None:
        """natmap's chains read back into a :class:`Table`; None if there are none."""
        return self.load() if self.exists() else None

    def load(self) -> Table:
        """Read natmap's chains back into a :class:`Table`."""
        with _xtables_lock():
            items: list[Item] = []
            for family in _FAMILIES:
                nat, filt = _table(family, "nat"), _table(family, "filter")
                items += [self._read_dnat(r) for r in _chain(nat, self._chain("DNAT")).rules]
                items += _read_bridges(_chain(nat, self._chain("POSTROUTING")).rules)
                items += _read_isolation(_chain(filt, self._chain("FORWARD")).rules)
            items += _read_links(_chain(_table(4, "filter"), self._chain("ISOLATION")).rules,
                                 _chain(_table(6, "filter"), self._chain("ISOLATION")).rules)
        return Table(_merge_bridges(items))

    def apply(self, change: Change, *, create: bool = False, generation: object = None) -> str:
        """Commit the change table by table (see the module doc); return the new marker."""
        marker = secrets.token_hex(6)
        committed: list[tuple[int, str]] = []
        with _xtables_lock():
            steps = self._steps(change, create, self._read_marker(), marker)
            for family, table_name in _ORDER:
                todo = [s for s in steps if s[1:3] == (family, table_name)]
                if not todo:
                    continue
                try:
                    _commit(family, table_name, todo)
                except Exception as exc:
                    self._restore(committed, steps)
                    raise BackendError(f"{_name(family)} refused the change in table {table_name}: "
                                       f"{exc}") from exc
                committed.append((family, table_name))
        return marker

    def _steps(self, change: Change, create: bool, old: str | None,
               marker: str) -> list[tuple[str, int, str, Any]]:
        """(verb, family, table, what), in order: the skeleton, deletions, additions, marker."""
        steps = self._skeleton() if create else []
        for item in change.delete:
            steps += [("delete", r.family, r.table, r) for r in self.rules(item)]
        for item in change.add:
            steps += [("add", r.family, r.table, r) for r in self.rules(item)]
        if old is not None:
            steps.append(("delete", 4, "filter", self._marker_rule(old)))
        steps.append(("add", 4, "filter", self._marker_rule(marker)))
        return steps

    def _restore(self, committed: list[tuple[int, str]], steps: list[tuple[str, int, str, Any]]) -> None:
        """Undo the commits already made, newest first, by committing their inverse."""
        inverse = {"add": "delete", "delete": "add", "chain": "drop-chain", "jump": "delete"}
        for family, table_name in reversed(committed):
            undo = [(inverse[v], f, t, what) for v, f, t, what in reversed(steps)
                    if (f, t) == (family, table_name)]
            _commit(family, table_name, undo)

    def text(self, change: Change, *, create: bool = False) -> str:
        """The change as iptables commands, one a line (the marker left out)."""
        steps = self._steps(change, create, None, "")[:-1]
        return "".join(f"{what.text('-D' if verb == 'delete' else '-I' if what.first else '-A')}\n"
                       if verb != "chain" else f"{_name(family)} -t {table} -N {what}\n"
                       for verb, family, table, what in steps)

    def delete(self) -> None:
        """Remove natmap's chains and the jumps to them, every table, both families."""
        with _xtables_lock():
            for family, table_name in _ORDER + [(4, "raw"), (6, "raw")]:
                table = _table(family, table_name)
                ours = [c for c in table.chains if c.name.startswith(self.prefix + "-")]
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
        problems = []
        with _xtables_lock():
            for verb, family, table_name, what in self._skeleton():
                table = _table(family, table_name)
                if verb == "chain" and not table.is_chain(what):
                    problems.append(f"{_name(family)} chain {what} in {table_name} is missing")
                elif verb == "jump" and table.is_chain(what.chain) and \
                        what.build() not in _chain(table, what.chain).rules:
                    problems.append(f"{_name(family)} jump from {what.chain} to {what.target} is missing")
        return problems

    def rebuild(self, items: set[Any]) -> None:
        """Remove natmap's chains and make them again with ``items`` (one commit per table)."""
        if self.exists():
            self.delete()
        self.apply(Change(add=tuple(items)), create=True)

    def listing(self) -> str:
        """Every rule of the tables natmap uses, both families (for comparing kernel states)."""
        import iptc.easy

        with _xtables_lock():
            lines = []
            for family, table_name in _ORDER + [(4, "raw"), (6, "raw")]:
                table = _table(family, table_name)
                for chain in table.chains:
                    for rule in chain.rules:
                        rule_d = iptc.easy.decode_iptc_rule(rule, family == 6)
                        rule_d.pop("counters", None)
                        lines.append(f"{_name(family)} {table_name} {chain.name} {rule_d}")
            return "\n".join(lines)

    def _read_dnat(self, rule: Any) -> Binding:
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


def _table(family: int, name: str) -> Any:
    """A fresh handle on one table, read in the calling thread's namespace."""
    import iptc

    try:
        table = iptc.Table6(name, autocommit=False) if family == 6 else iptc.Table(name, autocommit=False)
        table.autocommit = False
        table.refresh()
    except iptc.IPTCError as exc:
        if "Permission denied" in str(exc):
            raise PrivilegeError(f"opening {_name(family)} table {name}") from exc
        raise BackendError(f"{_name(family)} table {name}: {exc}") from exc
    return table


def _chain(table: Any, name: str) -> Any:
    import iptc

    return iptc.Chain(table, name)


def _commit(family: int, table_name: str, steps: list[tuple[str, int, str, Any]]) -> None:
    """Apply the steps to one table's handle, then commit it in one call."""
    import iptc

    table = _table(family, table_name)
    for verb, _, _, what in steps:
        if verb == "chain":
            if not table.is_chain(what):
                table.create_chain(what)
        elif verb == "drop-chain":
            if table.is_chain(what):
                table.delete_chain(what)
        elif verb == "jump":
            chain = iptc.Chain(table, what.chain)
            if what.build() not in chain.rules:  # once, whatever was there
                chain.insert_rule(what.build()) if what.first else chain.append_rule(what.build())
        elif verb == "add":
            chain = iptc.Chain(table, what.chain)
            chain.insert_rule(what.build()) if what.first else chain.append_rule(what.build())
        else:
            iptc.Chain(table, what.chain).delete_rule(what.build())
    table.commit()
    table.refresh()


def _find_marker(chain: Any) -> str | None:
    for rule in chain.rules:
        for match in rule.matches:
            if match.name == "comment" and match.comment.startswith(_MARKER):
                return match.comment[len(_MARKER):]
    return None


def _comment(rule: Any) -> str | None:
    return next((m.comment for m in rule.matches if m.name == "comment"), None)


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


def _read_isolation(rules: list[Any]) -> list[Isolation]:
    return [Isolation(c[len("isolate:"):]) for c in map(_comment, rules) if c and c.startswith("isolate:")]


def _read_links(*chains: list[Any]) -> list[Link]:
    flows: dict[str, list[Flow]] = {}
    for rules in chains:
        for rule in rules:
            comment = _comment(rule)
            if comment and ">" in comment:
                proto = Protocol(rule.protocol)
                dport = next(int(m.dport) for m in rule.matches if m.name == proto.value)
                flows.setdefault(comment, []).append(
                    (ipaddress.ip_network(rule.src, strict=False).network_address,
                     ipaddress.ip_network(rule.dst, strict=False).network_address, proto, dport))
    return links_from_flows(flows)


def _xtables_lock() -> Any:
    """The lock the iptables commands take, so natmap and they never commit over each other."""
    return flocked(_XTABLES_LOCK)

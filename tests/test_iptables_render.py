"""The iptables backend's rules as data, without root or python-iptables:
each kind of item is written as rules and read back the same, a change
renders as iptables commands, and the undo steps invert the change."""

import ipaddress
from types import SimpleNamespace

from natmap import Binding, Endpoint, Isolation, PortSpec
from natmap.backends.iptables import Layout, Verb, _Rule, _Step, undo
from natmap.links import Link
from natmap.model import Bridge, Change, Table

LAYOUT = Layout("natmap")
BRIDGE = Bridge("natmap0", (ipaddress.ip_network("172.30.0.0/24"), ipaddress.ip_network("fd00:30::/64")))
WEB = Endpoint("web01", "172.30.0.2", "natmap0", ipv6="fd00:30::2", expose=["5000"])


def items():
    table = Table()
    table.publish(WEB, [], publish_all=True, bridge=BRIDGE)
    table.publish(WEB, [PortSpec.parse("127.0.0.1:5001:5000"), PortSpec.parse("[::1]:5002:5000/udp")])
    table.link(Endpoint("web02", "172.30.0.4", "natmap0", ipv6="fd00:30::4"), WEB, "db")
    table.isolate("natmap0")
    return table.items()


class IptcLike:
    """A _Rule as python-iptables hands a rule back: the attributes the readers use."""

    def __init__(self, rule: _Rule) -> None:
        fields = dict(rule.fields)
        anywhere = "0.0.0.0/0" if rule.family == 4 else "::/0"
        self.protocol = fields.get("protocol")
        self.src, self.dst = fields.get("src", anywhere), fields.get("dst", anywhere)
        self.in_interface, self.out_interface = fields.get("in_interface"), fields.get("out_interface")
        self.matches = [SimpleNamespace(name=name, **dict(options)) for name, options in rule.matches]
        self.target = SimpleNamespace(name=rule.target, goto=rule.goto, **dict(rule.target_args))


def chains_of(written):
    """rules_of(family, table, chain) over the rules of ``written``, in chain order."""
    chains = {}
    for item in written:
        for rule in LAYOUT.rules(item):
            chain = chains.setdefault((rule.family, rule.table, rule.chain), [])
            chain.insert(0, IptcLike(rule)) if rule.first else chain.append(IptcLike(rule))
    return lambda family, table, chain: chains.get((family, table, chain), [])


def test_every_kind_of_item_is_read_back_as_it_was_written():
    written = items()
    assert {type(i) for i in written} == {Binding, Bridge, Link, Isolation}
    assert set(LAYOUT.read_items(chains_of(written))) == written


def test_a_binding_renders_as_iptables_save_prints_it():
    made = Table().publish(WEB, [PortSpec.parse("8080:5000"), PortSpec.parse("127.0.0.1:5001:5000")])
    text = LAYOUT.text(Change(add=tuple(made))).splitlines()
    assert text == [
        'iptables -t nat -A NATMAP-DNAT -p tcp -m tcp --dport 8080 -m comment --comment "web01" '
        '-j DNAT --to-destination 172.30.0.2:5000',
        'ip6tables -t nat -A NATMAP-DNAT -p tcp -m tcp --dport 8080 -m comment --comment "web01" '
        '-j DNAT --to-destination [fd00:30::2]:5000',
        # a specific address goes first, so it wins over 0.0.0.0 as in the nft maps
        'iptables -t nat -I NATMAP-DNAT -d 127.0.0.1 -p tcp -m tcp --dport 5001 -m comment --comment "web01" '
        '-j DNAT --to-destination 172.30.0.2:5000',
    ]
    assert LAYOUT.text(Change(delete=tuple(made[:1]))).startswith("iptables -t nat -D NATMAP-DNAT -p tcp ")


def test_creating_the_table_makes_the_chains_first_and_jumps_to_them():
    text = LAYOUT.text(Change(), create=True).splitlines()
    assert text[0] == "iptables -t filter -N NATMAP-GENERATION"
    assert "iptables -t raw -I PREROUTING -j NATMAP-GUARD" in text
    assert "ip6tables -t nat -A OUTPUT -m addrtype --dst-type LOCAL -j NATMAP-DNAT" in text
    assert text[-1] == "ip6tables -t filter -I FORWARD -j NATMAP-FORWARD"
    # The ownership marker (natmap.guest) is made with the chain; the generation marker is left out.
    assert text[1] == 'iptables -t filter -A NATMAP-GENERATION -m comment --comment "natmap v1 table=natmap" -j RETURN'
    assert all("GENERATION" not in line for line in text[2:])
    assert Layout("lab1").text(Change(), create=True).splitlines()[0] == "iptables -t filter -N LAB1-GENERATION"


def test_every_verb_has_an_inverse_that_undoes_it():
    assert {v: v.inverse() for v in Verb} == {
        Verb.CHAIN: Verb.DROP_CHAIN, Verb.DROP_CHAIN: Verb.CHAIN, Verb.JUMP: Verb.DELETE,
        Verb.ADD: Verb.DELETE, Verb.DELETE: Verb.ADD}
    for step in LAYOUT._skeleton():
        if step.verb is not Verb.JUMP:  # a jump is added once; undoing it deletes it
            assert step.inverse().inverse() == step


def test_undo_inverts_one_tables_steps_newest_first():
    change = Change(add=tuple(items()), delete=(Binding("old", "udp", "0.0.0.0", 53, "172.30.0.9", 53),))
    steps = LAYOUT._steps(change, True, "a1b2", "c3d4")
    undone = undo(steps, 4, "nat")
    assert undone == [s.inverse() for s in reversed(steps) if (s.family, s.table) == (4, "nat")]
    assert undone[-1] == _Step(Verb.DROP_CHAIN, 4, "nat", "NATMAP-DNAT")  # made first, dropped last
    assert any(s.verb is Verb.ADD and '--comment "old"' in s.text() for s in undone)  # deleted: put back
    assert all(s.family == 4 and s.table == "nat" for s in undone)
    marker = undo(steps, 4, "filter")
    assert marker[0].verb is Verb.DELETE and "natmap-generation:c3d4" in marker[0].text()
    assert marker[1].verb is Verb.ADD and "natmap-generation:a1b2" in marker[1].text()


def test_each_ip_family_has_its_gateway_mode_in_its_own_table_and_reads_back():
    from natmap import Gateway, RoutedBinding

    table = Table()
    table.set_gateway(Gateway("natmap0", mode_ipv4="nat-unprotected", mode_ipv6="routed"), BRIDGE)
    table.publish(WEB, [PortSpec.parse("8080:5000")], bridge=BRIDGE)
    written = table.items()
    assert {(type(b), b.version) for b in written if isinstance(b, Binding)} == {(Binding, 4), (RoutedBinding, 6)}
    assert set(LAYOUT.read_items(chains_of(written))) == written
    text = LAYOUT.text(Change(add=tuple(sorted(written, key=str)))).splitlines()
    assert ('iptables -t filter -I NATMAP-PROTECT -o natmap0 -m comment --comment "gateway:natmap0:nat-unprotected" '
            '-j RETURN') in text
    assert ('ip6tables -t nat -I NATMAP-POSTROUTING -i natmap0 -m comment --comment "gateway:natmap0:routed" '
            '-j RETURN') in text
    assert not any(line.startswith("iptables") and ":routed" in line for line in text)
    assert not any(line.startswith("ip6tables") and "nat-unprotected" in line for line in text)
    only6 = Table()
    only6.set_gateway(Gateway("natmap0", mode_ipv6="routed", trusted=["eth1"]), BRIDGE)
    assert set(LAYOUT.read_items(chains_of(only6.items()))) == only6.items()  # IPv4: nat, no mode rule


def test_a_routed_bridge_and_its_bindings_read_back_as_written():
    from natmap import Gateway, RoutedBinding

    table = Table()
    table.set_gateway(Gateway("natmap0", "routed"), BRIDGE)
    table.publish(WEB, [PortSpec.parse("8080:5000"), PortSpec.parse("6000-6002:6000-6002/udp")], bridge=BRIDGE)
    written = table.items()
    assert {type(i) for i in written} == {RoutedBinding, Bridge, Gateway}
    assert set(LAYOUT.read_items(chains_of(written))) == written
    text = LAYOUT.text(Change(add=tuple(sorted(written, key=str)))).splitlines()
    # the container port opened, the host side kept in the comment; ICMP; no masquerade
    # (each goes to NATMAP-ROUTED, which marks the flow and whose end returns from PROTECT)
    assert ('iptables -t filter -I NATMAP-ROUTES -d 172.30.0.2 -p tcp -m tcp --dport 5000 '
            '-m comment --comment "routed:web01 0.0.0.0 8080" -g NATMAP-ROUTED') in text
    assert ('ip6tables -t filter -I NATMAP-ROUTES -d fd00:30::2 -p udp -m udp --dport 6000:6002 '
            '-m comment --comment "routed:web01 :: 6000" -g NATMAP-ROUTED') in text
    assert ('iptables -t filter -I NATMAP-PROTECT -p icmp -o natmap0 -m comment --comment "gateway:natmap0:routed" '
            '-j RETURN') in text
    assert ('ip6tables -t nat -I NATMAP-POSTROUTING -i natmap0 -m comment --comment "gateway:natmap0:routed" '
            '-j RETURN') in text
    assert not any("-j DNAT" in line for line in text)


def test_the_routed_mark_rule_is_fixed_structure_and_sets_natmaps_bit_alone():
    """NATMAP-ROUTED is a chain of the skeleton in both families, and its one
    rule sets natmap's conntrack bit under a mask of that bit alone."""
    from natmap.model import ROUTED_CT_MARK

    text = LAYOUT.text(Change(), create=True).splitlines()
    for tool in ("iptables", "ip6tables"):
        # appended, so after every return of PROTECT (items insert theirs at the top: a trusted
        # interface's flow is let in unmarked): the routes, then drop
        assert [line for line in text if f"{tool} -t filter -A NATMAP-PROTECT" in line] == \
            [f"{tool} -t filter -A NATMAP-PROTECT -g NATMAP-ROUTES"]
        assert f"{tool} -t filter -A NATMAP-ROUTES -j DROP" in text
        assert f"{tool} -t filter -N NATMAP-ROUTED" in text
        assert (f"{tool} -t filter -A NATMAP-ROUTED -j CONNMARK "
                f"--set-xmark {ROUTED_CT_MARK:#x}/{ROUTED_CT_MARK:#x}") in text
    assert bin(ROUTED_CT_MARK).count("1") == 1


def test_a_routed_rule_that_does_not_mark_is_not_read_as_the_binding():
    """A hand edit (or an older natmap) that makes a routed rule -j RETURN lets
    flows in unmarked, which unpublishing could not cut: the binding reads as
    missing, so check() reports it and repair() writes it again."""
    from dataclasses import replace

    from natmap import Gateway

    table = Table()
    table.set_gateway(Gateway("natmap0", "routed"), BRIDGE)
    table.publish(WEB, [PortSpec.parse("8080:5000")], bridge=BRIDGE)
    routed = [b for b in table.items() if type(b).__name__ == "RoutedBinding" and b.version == 4]
    rule = next(LAYOUT.rules(routed[0]))
    unmarked = IptcLike(replace(rule, target="RETURN", goto=False))
    jumped = IptcLike(replace(rule, goto=False))
    assert LAYOUT.read_items(lambda f, t, c: [unmarked, jumped] if c == "NATMAP-ROUTES" and f == 4 else []) == []
    assert LAYOUT.read_items(lambda f, t, c: [IptcLike(rule)] if c == "NATMAP-ROUTES" and f == 4 else []) == routed

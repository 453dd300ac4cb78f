"""The nft backend's rendering, without a kernel: the text form of a change is
complete and its fast path for bindings says the same as the general one."""

import ipaddress

from hypothesis import given, strategies as st

from natmap import Binding, Endpoint, Isolation, PortSpec
from natmap.backends.nft import _elements, _text_entry, change_json, change_text
from natmap.model import Bridge, Change, Table


def bindings():
    return tuple(Binding(f"ep{i}", proto, host, 8000 + i, container, 80 + i)
                 for i, (proto, host, container) in enumerate([
                     ("tcp", "0.0.0.0", "172.30.0.2"), ("udp", "127.0.0.1", "172.30.0.2"),
                     ("sctp", "::", "fd00:30::2"), ("tcp", "::1", "fd00:30::2")]))


def test_the_binding_fast_path_renders_what_the_general_path_does():
    text = change_text("natmap", Change(add=bindings()))
    for b in bindings():
        (element,) = _elements(b)
        assert f"add element inet natmap {element.set} {{ " in text
        assert _text_entry(element) in text


def test_the_fast_path_formats_shared_parts_again_when_they_change():
    any_ip, local_ip = ipaddress.ip_address("0.0.0.0"), ipaddress.ip_address("127.0.0.1")
    shared_ip, other_ip = ipaddress.ip_address("172.30.0.2"), ipaddress.ip_address("172.30.0.3")
    made = (Binding("web01", "tcp", any_ip, 8000, shared_ip, 80),
            Binding("web01", "udp", any_ip, 8000, shared_ip, 80),     # the same objects, another protocol
            Binding("web02", "tcp", any_ip, 8001, shared_ip, 80),     # the same addresses, another name
            Binding("web02", "tcp", any_ip, 8002, other_ip, 80),      # the same name, another address
            Binding("web02", "tcp", local_ip, 8003, other_ip, 81))    # another host address
    any_line, specific_line = change_text("natmap", Change(add=made)).splitlines()
    entries = any_line.removeprefix("add element inet natmap dnat4_any { ").removesuffix(" }").split(", ")
    assert entries == [_text_entry(next(_elements(b))) for b in made[:4]]
    assert specific_line == f"add element inet natmap dnat4 {{ {_text_entry(next(_elements(made[4])))} }}"


def test_a_change_renders_deletions_before_additions_in_both_forms():
    table = Table()
    web = Endpoint("web01", "172.30.0.2", "natmap0", ipv6="fd00:30::2", expose=["5000"])
    bridge = Bridge("natmap0", (ipaddress.ip_network("172.30.0.0/24"), ipaddress.ip_network("fd00:30::/64")))
    table.publish(web, [], publish_all=True, bridge=bridge)
    table.isolate("natmap0")
    table.commit()
    table.unpublish("web01")
    table.link(Endpoint("web02", "172.30.0.4", "natmap0"), web, "db")
    change = table.change()
    text = change_text("natmap", change).splitlines()
    assert text[0].startswith("delete element inet natmap dnat4_any { tcp . ")
    assert 'add element inet natmap links4 { 172.30.0.4 . 172.30.0.2 . tcp . 5000 comment "web02>web01:db" }' in text
    commands = change_json("natmap", change)["nftables"]
    assert [next(iter(c)) for c in commands] == ["delete", "delete", "add"]  # web02 has no IPv6
    assert Isolation("natmap0") not in change.add


def test_a_routed_bridge_renders_its_bindings_as_open_container_ports():
    from natmap import Gateway

    table = Table()
    web = Endpoint("web01", "172.30.0.2", "natmap0", ipv6="fd00:30::2")
    bridge = Bridge("natmap0", (ipaddress.ip_network("172.30.0.0/24"), ipaddress.ip_network("fd00:30::/64")))
    table.set_gateway(Gateway("natmap0", "routed"), bridge)
    table.publish(web, [PortSpec.parse("8080:5000")], bridge=bridge)
    text = change_text("natmap", table.change()).splitlines()
    assert 'add element inet natmap routed_bridges4 { "natmap0" }' in text
    assert 'add element inet natmap routed_bridges6 { "natmap0" }' in text
    assert 'add element inet natmap routed4 { 172.30.0.2 . tcp . 5000-5000 comment "web01 0.0.0.0 8080" }' in text
    assert 'add element inet natmap routed6 { fd00:30::2 . tcp . 5000-5000 comment "web01 :: 8080" }' in text
    assert not any("dnat" in line for line in text)


def test_each_ip_family_renders_its_own_gateway_mode():
    """IPv4 nat, IPv6 routed (Docker's common IPv6 setup): the IPv4 binding a
    DNAT element, the IPv6 one an open container port; IPv6 alone is routed."""
    from natmap import Gateway

    table = Table()
    web = Endpoint("web01", "172.30.0.2", "natmap0", ipv6="fd00:30::2")
    bridge = Bridge("natmap0", (ipaddress.ip_network("172.30.0.0/24"), ipaddress.ip_network("fd00:30::/64")))
    table.set_gateway(Gateway("natmap0", mode_ipv6="routed"), bridge)
    table.publish(web, [PortSpec.parse("8080:5000")], bridge=bridge)
    text = change_text("natmap", table.change()).splitlines()
    assert 'add element inet natmap routed_bridges6 { "natmap0" }' in text
    assert not any("routed_bridges4" in line or "routed4" in line or "dnat6" in line for line in text)
    assert 'add element inet natmap dnat4_any { tcp . 8080 comment "web01" : 172.30.0.2 . 5000 }' in text
    assert 'add element inet natmap routed6 { fd00:30::2 . tcp . 5000-5000 comment "web01 :: 8080" }' in text
    table.set_gateway(Gateway("natmap0", mode_ipv4="nat-unprotected"), bridge)
    text = change_text("natmap", table.change()).splitlines()
    assert 'add element inet natmap unprotected4 { "natmap0" }' in text
    assert 'add element inet natmap dnat6_any { tcp . 8080 comment "web01" : fd00:30::2 . 5000 }' in text


def test_the_deletions_keys_written_out_are_those_of_the_bindings_elements():
    """change_json writes a single port's key out (an unpublish of a big table
    deletes thousands): the same keys, by map, as _json_parts of _elements."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from natmap import Protocol
    from natmap.backends.nft import _binding_keys, _json_parts

    hosts = [ipaddress.ip_address(a) for a in ("0.0.0.0", "::", "127.0.0.1", "10.0.0.1", "2001:db8::1")]
    bindings = st.builds(lambda host, proto, port, n: Binding(
        "web", proto, host, port, ipaddress.ip_address("172.30.0.2" if host.version == 4 else "fd00::2"), n),
        st.sampled_from(hosts), st.sampled_from(list(Protocol)), st.integers(1, 65535), st.integers(1, 65535))

    @settings(max_examples=200, deadline=None)
    @given(st.lists(bindings))
    def check(made):
        expected: dict = {}
        for b in made:
            for e in _elements(b):
                expected.setdefault(e.set, []).append(_json_parts(e.key))
        assert _binding_keys(made) == expected
        change = Change(delete=tuple(made))
        assert {c["delete"]["element"]["name"]: c["delete"]["element"]["elem"]
                for c in change_json("t", change)["nftables"]} == expected

    check()


_HOSTS = [ipaddress.ip_address(a) for a in ("0.0.0.0", "::", "127.0.0.1", "::1")]
_CONTAINERS = [ipaddress.ip_address(a) for a in ("172.30.0.2", "fd00:30::2")]


@st.composite
def _runs(draw):
    """Bindings as publishes make them: runs sharing their objects (one spec's,
    Binding._on_ports), names and addresses again as other objects now and
    then, same-port ranges among them."""
    made = []
    for _ in range(draw(st.integers(0, 6))):
        host = draw(st.sampled_from(_HOSTS))
        container = next(c for c in _CONTAINERS if c.version == host.version)
        if draw(st.booleans()):
            host = ipaddress.ip_address(str(host))  # equal, another object
        first, count = draw(st.integers(1, 9000)), draw(st.sampled_from([1, 1, 1, 4]))
        b = Binding(draw(st.sampled_from(["web01", "web02"])), draw(st.sampled_from(["tcp", "udp", "sctp"])),
                    host, first, container, first if count > 1 else draw(st.integers(1, 9000)), count)
        made += [b] if count > 1 else b._on_ports((first + i, b.container_port + i)
                                                  for i in range(draw(st.integers(1, 5))))
    return made


@given(_runs())
def test_the_binding_fast_path_renders_each_element_as_the_general_path_does(made):
    lines = change_text("natmap", Change(add=tuple(made))).splitlines()
    expected = {}
    for b in made:  # (a same-port range's map is another: the order of the lines differs)
        for element in _elements(b):
            expected.setdefault(element.set, []).append(_text_entry(element))
    want = [f"add element inet natmap {name} {{ {', '.join(entries)} }}" for name, entries in expected.items()]
    assert sorted(lines) == sorted(want)

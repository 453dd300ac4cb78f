"""natmap.guest's rules, on facts given in: no kernel, no root."""

import ipaddress

import pytest
from hypothesis import given, strategies as st

from natmap import ConflictError, Endpoint, PortSpec, SpecError
from natmap.backends.iptables import chain_prefix
from natmap.guest import (check_addresses, check_listeners, check_other_tables, host_port_ranges, mapped_ports, marker,
                          owner_of)
from natmap.host import Listener
from natmap.model import Binding, Table
from natmap.spec import Protocol

TCP, UDP = Protocol.TCP, Protocol.UDP


def binding(host_ip, port=2222, proto=TCP, endpoint="web01"):
    return Binding(endpoint, proto, host_ip, port, "172.30.0.2" if ":" not in host_ip else "fd00:30::2", 5000)


def listening(*sockets):
    return lambda proto: [s for s in sockets if s.proto is proto]


def sock(address, port=2222, proto=TCP, v6only=False):
    return Listener(proto, ipaddress.ip_address(address), port, v6only, 1)


@pytest.mark.parametrize("bound, listener, conflict", [
    ("0.0.0.0", sock("0.0.0.0"), True),
    ("0.0.0.0", sock("127.0.0.1"), True),           # Docker's bind of 0.0.0.0 fails on it too
    ("10.0.0.1", sock("0.0.0.0"), True),
    ("10.0.0.1", sock("10.0.0.2"), False),
    ("0.0.0.0", sock("::"), True),                  # a dual-stack socket holds the IPv4 port
    ("0.0.0.0", sock("::", v6only=True), False),
    ("::", sock("0.0.0.0"), False),
    ("0.0.0.0", sock("0.0.0.0", proto=UDP), False),  # another protocol
    ("0.0.0.0", sock("0.0.0.0", port=2223), False),
    # an IPv6 socket bound to an IPv4-mapped address holds the IPv4 port
    ("0.0.0.0", sock("::ffff:0.0.0.0"), True),
    ("10.0.0.1", sock("::ffff:0.0.0.0"), True),
    ("0.0.0.0", sock("::ffff:127.0.0.1"), True),
    ("127.0.0.1", sock("::ffff:127.0.0.1"), True),
    ("10.0.0.1", sock("::ffff:192.0.2.1"), False),
    ("::", sock("::ffff:0.0.0.0"), False),
])
def test_a_binding_conflicts_with_a_host_socket_on_its_port(bound, listener, conflict):
    check = lambda: check_listeners([binding(bound)], listening(listener), lambda inode: "pid 7 (sshd)")
    if conflict:
        with pytest.raises(ConflictError, match=r"listens on .*:2222/tcp \(pid 7 \(sshd\)\)"):
            check()
    else:
        check()


def test_other_tables_conflicts_name_the_table_and_endpoint_and_their_ports_are_skipped():
    other = Table([binding("0.0.0.0", 8080, endpoint="web02"), binding("0.0.0.0", 53, UDP, "dns")])
    others = [("table inet tb (nft)", other)]
    with pytest.raises(ConflictError, match=r"endpoint 'web02' in table inet tb \(nft\)"):
        check_other_tables([binding("10.0.0.1", 8080)], others)
    check_other_tables([binding("10.0.0.1", 8081)], others)
    assert mapped_ports(others, TCP) == {8080} and mapped_ports(others, UDP) == {53}


def test_markers_name_their_table():
    assert owner_of(marker("lab1")) == "lab1"
    assert owner_of("something else") is None and owner_of(None) is None


def test_iptables_chain_prefixes_never_fold_case_or_truncate_into_each_other():
    names = ["natmap", "lab", "LAB", "Lab", "a_very_long_table_name_1", "a_very_long_table_name_2",
             "abcdefghijklmnop", "abcdefghijklmnopq"]
    prefixes = [chain_prefix(n) for n in names]
    assert len(set(prefixes)) == len(names)
    assert chain_prefix("natmap") == "NATMAP" and chain_prefix("docker") == "DOCKER"
    assert all(len(p) + len("-POSTROUTING") <= 28 for p in prefixes)  # iptables' chain name limit


LOCAL = frozenset(ipaddress.ip_interface(a) for a in ("172.30.0.1/24", "192.0.2.1/24", "127.0.0.1/8"))
BRIDGE = (ipaddress.ip_interface("172.30.0.1/24"), ipaddress.ip_interface("fd00:30::1/64"))


def check(ip="172.30.0.2", specs=(), kind="bridge", nonlocal_bind=False):
    check_addresses(Endpoint("web01", ip, "natmap0"), [PortSpec.parse(s) for s in specs], bridge_kind=kind,
                    bridge_addresses=BRIDGE, local=lambda: LOCAL, nonlocal_bind=lambda v: nonlocal_bind)


@pytest.mark.parametrize("ip, specs, kind, message", [
    ("172.30.0.1", [], "bridge", "is the address of bridge natmap0"),
    ("172.30.0.0", [], "bridge", "is the network address"),
    ("172.30.0.255", [], "bridge", "is the broadcast address of bridge"),
    ("172.30.0.2", [], "veth", r"not a bridge \(veth\)"),
    ("172.30.0.2", [], None, "not a bridge"),
    ("172.30.0.2", ["203.0.113.5:80:80"], "bridge", "not an address of this host"),
    ("172.30.0.2", ["224.0.0.1:80:80"], "bridge", "multicast or broadcast"),
    ("172.30.0.2", ["255.255.255.255:80:80"], "bridge", "multicast or broadcast"),
    ("172.30.0.2", ["192.0.2.255:80:80"], "bridge", "is a broadcast address"),
])
def test_addresses_docker_refuses_are_spec_errors(ip, specs, kind, message):
    with pytest.raises(SpecError, match=message):
        check(ip, specs, kind)


def test_addresses_docker_accepts_pass():
    check("172.30.0.2", ["80", "192.0.2.1:80:80", "127.0.0.5:81:80", "0.0.0.0:82:80", "[::]:83:80"])
    check("172.30.0.2", ["203.0.113.5:80:80"], nonlocal_bind=True)


def test_a_mapped_address_is_read_as_the_ipv4_address_it_holds():
    assert str(sock("::ffff:192.0.2.1")) == "192.0.2.1:2222/tcp"
    assert sock("::ffff:0.0.0.0").address == ipaddress.IPv4Address("0.0.0.0")


def _ranges_one_by_one(bindings):
    """What the guard asked the kernel for before host_port_ranges: each
    binding's (first, last) host ports, by protocol, merged."""
    from natmap.nlquery import _merged

    return {proto: _merged([(b.host_port, b.last_port) for b in bindings if b.proto is proto])
            for proto in {b.proto for b in bindings}}


_PORTED = st.tuples(st.sampled_from([TCP, UDP]), st.integers(1, 70), st.integers(1, 70), st.sampled_from([1, 1, 1, 3]))


@given(st.lists(_PORTED, max_size=40), st.booleans())
def test_host_port_ranges_cover_the_ports_one_by_one_merging_covers(drawn, ascending):
    from natmap.nlquery import _merged

    if ascending:  # a publish's: runs of one protocol and ascending ports
        drawn = sorted(drawn)
    bindings = [Binding("web01", proto, "0.0.0.0", port, "172.30.0.2", port if count > 1 else shift, count)
                for proto, port, shift, count in drawn]
    ranges = host_port_ranges(bindings)
    assert {proto: _merged(r) for proto, r in ranges.items()} == _ranges_one_by_one(bindings)
    for proto, covered in ranges.items():  # each range only ports of the bindings: nothing asked for in vain
        ports = {p for b in bindings if b.proto is proto for p in range(b.host_port, b.last_port + 1)}
        assert all(p in ports for first, last in covered for p in range(first, last + 1))


def test_host_port_ranges_of_a_publish_are_one_range_a_run():
    bindings = [Binding("web01", TCP, "0.0.0.0", port, "172.30.0.2", port - 9999) for port in range(10000, 10040)]
    bindings += [Binding("web01", UDP, "0.0.0.0", 53, "172.30.0.2", 53),
                 Binding("web02", TCP, "0.0.0.0", 10040, "172.30.0.3", 1),
                 Binding("web02", TCP, "0.0.0.0", 20000, "172.30.0.3", 20000, 100)]
    assert host_port_ranges(bindings) == {TCP: [(10000, 10040), (20000, 20099)], UDP: [(53, 53)]}


def test_check_listeners_given_the_protocols_checks_as_without_them():
    bindings = [binding("0.0.0.0", 2221), binding("0.0.0.0", 2222, UDP), binding("0.0.0.0", 2222)]
    sockets = listening(sock("0.0.0.0", 2222))
    for protocols in (None, host_port_ranges(bindings)):
        with pytest.raises(ConflictError, match=r"0.0.0.0:2222/tcp for endpoint 'web01': a host socket listens"):
            check_listeners(bindings, sockets, lambda inode: None, protocols=protocols)
        check_listeners(bindings[:2], sockets, lambda inode: None, protocols=protocols)

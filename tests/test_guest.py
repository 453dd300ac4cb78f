"""natmap.guest's rules, on facts given in: no kernel, no root."""

import ipaddress

import pytest

from natmap import ConflictError, Endpoint, PortSpec, SpecError
from natmap.backends.iptables import chain_prefix
from natmap.guest import check_addresses, check_listeners, check_other_tables, mapped_ports, marker, owner_of
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

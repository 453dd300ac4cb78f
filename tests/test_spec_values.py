"""Exposed ports, link specs, names, port ranges and Docker's text forms for
bindings. No root, no kernel."""

from ipaddress import ip_address

import pytest

from natmap import Binding, LinkSpec, PortRange, PortSpec, Protocol, SpecError, validate_name


# --- --expose ------------------------------------------------------------------

@pytest.mark.parametrize("text, canonical", [
    ("5000", "5000/tcp"),
    ("5000/tcp", "5000/tcp"),
    ("5000/udp", "5000/udp"),
    ("5000/", "5000/tcp"),
    ("53/SCTP", "53/sctp"),
    ("7000-7010/udp", "7000-7010/udp"),
    ("+05000", "5000/tcp"),
])
def test_exposed_ports(text, canonical):
    spec = PortSpec.parse_exposed(text)
    assert str(spec) == canonical
    assert spec.host_ip is None and spec.host_ports is None
    # Exposed means what -P publishes: the same as a -p with no host part.
    assert spec == PortSpec.parse(canonical)


@pytest.mark.parametrize("text, fragment, column", [
    ("8080:80", "no host part", 4),
    ("::1", "no host part", 0),
    ("127.0.0.1::80", "no host part", 9),
    ("0", "container port 0", 0),
    ("", "no container port", 0),
    ("80/icmp", "invalid protocol", 3),
    ("80-70", "end before start", 0),
    ("target=80", "invalid port", 0),
])
def test_bad_exposed_ports(text, fragment, column):
    with pytest.raises(SpecError) as caught:
        PortSpec.parse_exposed(text)
    assert fragment in caught.value.message
    assert caught.value.start == column


# --- --link --------------------------------------------------------------------

@pytest.mark.parametrize("text, name, alias, canonical", [
    ("db01:web02Todb01", "db01", "web02Todb01", "db01:web02Todb01"),
    ("db01", "db01", "db01", "db01"),
    ("db01:db01", "db01", "db01", "db01"),
    ("db01:db", "db01", "db", "db01:db"),
    ("/db01:/web02/alias", "db01", "alias", "db01:alias"),
    ("/db01:/web02/web02Todb01", "db01", "web02Todb01", "db01:web02Todb01"),
    ("/db01:alias", "db01", "alias", "db01:alias"),
    ("/db01", "db01", "db01", "db01"),
    ("my-db_1.x:docker-1", "my-db_1.x", "docker-1", "my-db_1.x:docker-1"),
    ("db01:my.db", "db01", "my.db", "db01:my.db"),
    ("db01:d", "db01", "d", "db01:d"),
])
def test_links(text, name, alias, canonical):
    link = LinkSpec.parse(text)
    assert (link.name, link.alias) == (name, alias)
    assert str(link) == canonical
    assert LinkSpec.parse(canonical) == link


@pytest.mark.parametrize("text, fragment, column", [
    ("", "empty container name", 0),
    (":alias", "empty container name", 0),
    ("db01:", "empty link alias", 5),
    ("/db01:/web02/", "empty link alias", 13),
    ("a:b:c", "not three fields", 3),
    ("db01:alias:extra", "not three fields", 10),
    ("d", "too short", 0),
    ("db 01", "invalid container name", 2),
    ("db01:al ias", "invalid link alias", 7),
    ("_db", "invalid container name", 0),
    ("db01:-x", "invalid link alias", 5),
    ("db01:x;flush ruleset", "invalid link alias", 6),
    ("db01:\"x\"", "invalid link alias", 5),
    ("db01:x\ny", "invalid link alias", 6),
    ("db01:/web02/alias", "invalid link alias", 5),
    ("d" * 65, "longer than 64", 64),
])
def test_bad_links(text, fragment, column):
    with pytest.raises(SpecError) as caught:
        LinkSpec.parse(text)
    assert fragment in caught.value.message
    assert caught.value.start == column


def test_link_values_built_by_hand_are_checked():
    assert LinkSpec("db01", "db") == LinkSpec.parse("db01:db")
    with pytest.raises(SpecError):
        LinkSpec("db01", "")


def test_validate_name_returns_good_names_and_rejects_the_rest():
    assert validate_name("web01") == "web01"
    for bad in ["", "a b", "x" * 65, "web{01}", "ü"]:
        with pytest.raises(SpecError):
            validate_name(bad)


# --- PortRange -------------------------------------------------------------------

def test_port_range_basics():
    r = PortRange(8000, 8010)
    assert (r.start, r.end, len(r), str(r)) == (8000, 8010, 11, "8000-8010")
    assert list(PortRange(80, 82)) == [80, 81, 82]
    assert PortRange(80) == PortRange(80, 80) == PortRange.parse("80")
    assert str(PortRange(80)) == "80"
    assert sorted([PortRange(90), PortRange(80, 85), PortRange(80)]) == [
        PortRange(80), PortRange(80, 85), PortRange(90)]


@pytest.mark.parametrize("start, end", [(0, 0), (0, 10), (10, 9), (1, 65536), (-1, 5), ("80", 80), (True, 1)])
def test_bad_port_ranges(start, end):
    with pytest.raises(SpecError):
        PortRange(start, end)


def test_protocol_is_a_str_enum():
    assert [p.value for p in Protocol] == ["tcp", "udp", "sctp"]
    assert Protocol.UDP == "udp" and str(Protocol.SCTP) == "sctp"


# --- Docker's text forms for bindings --------------------------------------------

def binding(host_ip, host_port, container_port, proto="tcp"):
    return Binding("web01", proto, host_ip, host_port, "172.30.0.2", container_port)


def test_binding_text_forms_match_docker():
    b = binding("0.0.0.0", 32768, 5000)
    assert str(b) == "0.0.0.0:32768"
    assert b.port_line() == "5000/tcp -> 0.0.0.0:32768"
    assert b.ps_entry() == "0.0.0.0:32768->5000/tcp"
    v6 = binding("::", 9876, 80, "udp")
    assert str(v6) == "[::]:9876"
    assert v6.port_line() == "80/udp -> [::]:9876"
    assert v6.ps_entry() == "[::]:9876->80/udp"
    assert binding("127.0.0.1", 5001, 5000).container_ip == ip_address("172.30.0.2")


def test_bindings_sort_as_docker_port_does():
    made = [binding("::", 32768, 5000), binding("0.0.0.0", 9000, 80, "udp"),
            binding("0.0.0.0", 32768, 5000), binding("0.0.0.0", 9001, 443),
            binding("127.0.0.1", 5001, 5000), binding("0.0.0.0", 8080, 80)]
    lines = [b.port_line() for b in sorted(made, key=Binding.sort_key)]
    assert lines == [
        "80/tcp -> 0.0.0.0:8080",
        "80/udp -> 0.0.0.0:9000",
        "443/tcp -> 0.0.0.0:9001",
        "5000/tcp -> 0.0.0.0:32768",
        "5000/tcp -> 127.0.0.1:5001",
        "5000/tcp -> [::]:32768",
    ]

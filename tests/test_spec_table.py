"""Docker's own `-p` cases (DESIGN.md §2), each with what Docker makes of it.

No root, no kernel. Every valid row gives the parsed fields and the canonical
text; every invalid row gives a fragment of the message and the column the
caret must start at.
"""

from ipaddress import ip_address

import pytest

from natmap import PortRange, PortSpec, Protocol, SpecError

TCP, UDP, SCTP = Protocol.TCP, Protocol.UDP, Protocol.SCTP


def R(start, end=None):
    return PortRange(start, end)


# input, host_ip, host_ports, container_ports, proto, canonical text
VALID = [
    # the tutorial's forms
    ("5000:5000", None, R(5000), R(5000), TCP, "5000:5000/tcp"),
    ("3000:80", None, R(3000), R(80), TCP, "3000:80/tcp"),
    ("127.0.0.1:5001:5000", "127.0.0.1", R(5001), R(5000), TCP, "127.0.0.1:5001:5000/tcp"),
    ("127.0.0.1::5000", "127.0.0.1", None, R(5000), TCP, "127.0.0.1::5000/tcp"),
    ("5000", None, None, R(5000), TCP, "5000/tcp"),
    # protocols
    ("1234/tcp", None, None, R(1234), TCP, "1234/tcp"),
    ("1234/udp", None, None, R(1234), UDP, "1234/udp"),
    ("1234/sctp", None, None, R(1234), SCTP, "1234/sctp"),
    ("80/TCP", None, None, R(80), TCP, "80/tcp"),
    ("80/Udp", None, None, R(80), UDP, "80/udp"),
    ("80/SCTP", None, None, R(80), SCTP, "80/sctp"),
    ("80/", None, None, R(80), TCP, "80/tcp"),
    ("8080:80/", None, R(8080), R(80), TCP, "8080:80/tcp"),
    ("8080:80/udp", None, R(8080), R(80), UDP, "8080:80/udp"),
    ("0.0.0.0:1234:1234/tcp", "0.0.0.0", R(1234), R(1234), TCP, "0.0.0.0:1234:1234/tcp"),
    ("0.0.0.0:1234:1234/udp", "0.0.0.0", R(1234), R(1234), UDP, "0.0.0.0:1234:1234/udp"),
    # ranges
    ("1234-1235", None, None, R(1234, 1235), TCP, "1234-1235/tcp"),
    ("1234-1235/udp", None, None, R(1234, 1235), UDP, "1234-1235/udp"),
    ("1234-1235:3333-3334", None, R(1234, 1235), R(3333, 3334), TCP, "1234-1235:3333-3334/tcp"),
    ("0.0.0.0:1234-1235:3333-3334/tcp", "0.0.0.0", R(1234, 1235), R(3333, 3334), TCP,
     "0.0.0.0:1234-1235:3333-3334/tcp"),
    ("8000-8010:80", None, R(8000, 8010), R(80), TCP, "8000-8010:80/tcp"),
    ("127.0.0.1:8000-8010:80/udp", "127.0.0.1", R(8000, 8010), R(80), UDP,
     "127.0.0.1:8000-8010:80/udp"),
    ("80-80:80-80", None, R(80), R(80), TCP, "80:80/tcp"),
    ("1-65535:1-65535", None, R(1, 65535), R(1, 65535), TCP, "1-65535:1-65535/tcp"),
    ("9000-9001:9000-9001/sctp", None, R(9000, 9001), R(9000, 9001), SCTP, "9000-9001:9000-9001/sctp"),
    # assigned host ports: empty, 0, 0-0
    (":80", None, None, R(80), TCP, "80/tcp"),
    ("0:80", None, None, R(80), TCP, "80/tcp"),
    ("0-0:80", None, None, R(80), TCP, "80/tcp"),
    ("0-0:80-81", None, None, R(80, 81), TCP, "80-81/tcp"),
    ("127.0.0.1:0:80", "127.0.0.1", None, R(80), TCP, "127.0.0.1::80/tcp"),
    (":8080:80", None, R(8080), R(80), TCP, "8080:80/tcp"),
    # numbers: leading zeros and '+'
    ("0080", None, None, R(80), TCP, "80/tcp"),
    ("08080:080", None, R(8080), R(80), TCP, "8080:80/tcp"),
    ("+80", None, None, R(80), TCP, "80/tcp"),
    ("+8080:+80", None, R(8080), R(80), TCP, "8080:80/tcp"),
    ("65535:65535", None, R(65535), R(65535), TCP, "65535:65535/tcp"),
    ("1", None, None, R(1), TCP, "1/tcp"),
    # IPv6, Docker's split on every ':'
    ("::1:80:80", "::1", R(80), R(80), TCP, "[::1]:80:80/tcp"),
    ("::1", None, None, R(1), TCP, "1/tcp"),
    ("::::80", "::", None, R(80), TCP, "[::]::80/tcp"),
    ("[::1]:8080:80/udp", "::1", R(8080), R(80), UDP, "[::1]:8080:80/udp"),
    ("[::1]::80", "::1", None, R(80), TCP, "[::1]::80/tcp"),
    ("[::]:9876:80", "::", R(9876), R(80), TCP, "[::]:9876:80/tcp"),
    ("[2001:db8::1]:8080:80", "2001:db8::1", R(8080), R(80), TCP, "[2001:db8::1]:8080:80/tcp"),
    ("2001:db8::1:8080:80", "2001:db8::1", R(8080), R(80), TCP, "[2001:db8::1]:8080:80/tcp"),
    ("[fe80::1]:80:80", "fe80::1", R(80), R(80), TCP, "[fe80::1]:80:80/tcp"),
    ("[2001:DB8::A]:80:80", "2001:db8::a", R(80), R(80), TCP, "[2001:db8::a]:80:80/tcp"),
    ("[127.0.0.1]:80:80", "127.0.0.1", R(80), R(80), TCP, "127.0.0.1:80:80/tcp"),
    ("::ffff:127.0.0.1:80:80", "127.0.0.1", R(80), R(80), TCP, "127.0.0.1:80:80/tcp"),
    ("192.168.1.10:2000-2001:3000-3001/udp", "192.168.1.10", R(2000, 2001), R(3000, 3001), UDP,
     "192.168.1.10:2000-2001:3000-3001/udp"),
    # long syntax: natmap honours host_ip
    ("target=80", None, None, R(80), TCP, "80/tcp"),
    ("published=8080,target=80", None, R(8080), R(80), TCP, "8080:80/tcp"),
    ("published=8080,target=80,protocol=udp", None, R(8080), R(80), UDP, "8080:80/udp"),
    ("published=8080,target=80,protocol=udp,host_ip=127.0.0.1", "127.0.0.1", R(8080), R(80), UDP,
     "127.0.0.1:8080:80/udp"),
    ("target=80,published=0", None, None, R(80), TCP, "80/tcp"),
    ("TARGET=80,Published=8080", None, R(8080), R(80), TCP, "8080:80/tcp"),
    ("target=53,protocol=SCTP,host_ip=::1", "::1", None, R(53), SCTP, "[::1]::53/sctp"),
    ("target=53,host_ip=[::1]", "::1", None, R(53), TCP, "[::1]::53/tcp"),
    # ranges, as docker run reads published:target/protocol (issue 15, case 6)
    ("published=8000-8010,target=80", None, R(8000, 8010), R(80), TCP, "8000-8010:80/tcp"),
    ("published=8000-8001,target=80-81", None, R(8000, 8001), R(80, 81), TCP, "8000-8001:80-81/tcp"),
    ("target=80-81", None, None, R(80, 81), TCP, "80-81/tcp"),
    ("target=80,published=0-0", None, None, R(80), TCP, "80/tcp"),
]

# input, message fragment, caret column
INVALID = [
    ("", "no container port", 0),
    ("0", "container port 0", 0),
    ("8080:0", "container port 0", 5),
    ("0:0", "container port 0", 2),
    ("0-10", "container port 0", 0),
    ("0-10:80", "cannot start at 0", 0),
    ("8000-8010:80-85", "differ in length", 0),
    ("8080:80-81", "differ in length", 0),
    ("80-81:90-92", "differ in length", 0),
    ("80/icmp", "invalid protocol 'icmp'", 3),
    ("80/tcp/udp", "only one '/proto'", 6),
    ("80/tcp/", "only one '/proto'", 6),
    ("/tcp", "missing container port", 0),
    ("80-90-100", "one '-'", 5),
    ("80,81", "invalid port", 2),
    (" 80", "invalid port", 0),
    ("80 ", "invalid port", 2),
    ("8080: 80", "invalid port", 5),
    ("127.0.0.1:80", "'127.0.0.1' stands in the host port field", 0),
    ("[127.0.0.1]:80", "stands in the host port field", 0),
    ("70000:80", "invalid port 70000 (must be 0-65535)", 0),
    ("80:70000", "invalid port 70000", 3),
    ("65536", "invalid port 65536", 0),
    ("99999999999999999999", "invalid port", 0),
    ("-1", "missing port number", 0),
    ("80-", "missing port number", 3),
    ("90-80", "end before start", 0),
    ("8080-8000:80", "end before start", 0),
    ("+", "missing digits", 0),
    ("++80", "invalid port", 1),
    ("-80:80", "missing port number", 0),
    ("0x50", "invalid port", 1),
    ("8_0", "invalid port", 1),
    ("1e3", "invalid port", 1),
    ("\u0668\u0660", "invalid port", 0),  # Arabic-Indic digits are not ports
    ("abc", "invalid port", 0),
    ("80:", "no container port", 3),
    ("::", "no container port", 2),
    ("2001:db8::8080:80", "invalid IP address '2001:db8:'", 0),
    ("[::1]:80", "needs both port fields", 0),
    ("[::1]", "needs both port fields", 0),
    ("fe80::1%eth0:80:80", "zones", 7),
    ("[fe80::1%eth0]:80:80", "zones", 8),
    ("localhost:80:80", "not hostnames", 0),
    ("example.com:80:80", "not hostnames", 0),
    ("256.0.0.1:80:80", "invalid IP address", 0),
    ("127.0.0.01:80:80", "invalid IP address", 0),
    ("[]:80:80", "empty IP address", 0),
    ("[127.0.0.1:80:80", "needs both port fields", 0),
    ("[[::1]]:80:80", "invalid IP address", 0),
    ("1.2.3.4:5:6:7", "invalid IP address '1.2.3.4:5'", 0),
    ("target=0", "container port 0", 7),
    ("published=8080", "needs target", 0),
    ("target=80,mode=host", "unknown key 'mode'", 10),
    ("target=80,name=web", "unknown key 'name'", 10),
    ("target=80,", "empty field", 10),
    ("target=80,target=81", "given twice", 10),
    ("target=80,protocol=icmp", "invalid protocol", 19),
    ("target=80,host_ip=localhost", "not hostnames", 18),
    ("published=8000-8002,target=80-81", "differ in length", 10),
    ("published=0-5,target=80", "cannot start at 0", 10),
    ("=80", "expected key=value", 0),
    ("target=80,published", "expected key=value", 10),
    ("80\n", "invalid port", 2),
    ("80\x00", "invalid port", 2),
]


@pytest.mark.parametrize("text, ip, host, container, proto, canonical", VALID)
def test_valid_docker_case(text, ip, host, container, proto, canonical):
    spec = PortSpec.parse(text)
    assert spec.host_ip == (ip_address(ip) if ip else None)
    assert spec.host_ports == host
    assert spec.container_ports == container
    assert spec.proto is proto
    assert str(spec) == canonical
    assert PortSpec.parse(str(spec)) == spec


@pytest.mark.parametrize("text, fragment, column", INVALID)
def test_invalid_docker_case(text, fragment, column):
    with pytest.raises(SpecError) as caught:
        PortSpec.parse(text)
    error = caught.value
    assert fragment in error.message
    assert error.text == text
    assert error.start == column


def test_the_table_covers_at_least_80_cases():
    assert len(VALID) + len(INVALID) >= 80


def test_error_quotes_the_input_and_points_at_the_column():
    with pytest.raises(SpecError) as caught:
        PortSpec.parse("70000:80")
    assert str(caught.value).splitlines() == [
        "invalid port 70000 (must be 0-65535) in '70000:80'",
        "    70000:80",
        "    ^^^^^",
    ]


def test_error_caret_lines_up_under_escaped_control_characters():
    with pytest.raises(SpecError) as caught:
        PortSpec.parse("\t:80/icmp")
    shown, caret = str(caught.value).splitlines()[1:]
    assert shown == r"    \t:80/icmp"
    assert caret == "          ^^^^"


def test_error_on_a_very_long_input_stays_short():
    text = "8" * 10_000 + ":80"
    with pytest.raises(SpecError) as caught:
        PortSpec.parse(text)
    assert all(len(line) < 200 for line in str(caught.value).splitlines())


def test_spec_error_is_a_value_error_under_the_natmap_root():
    import natmap

    assert issubclass(natmap.SpecError, ValueError)
    assert issubclass(natmap.SpecError, natmap.NatmapError)


def test_equal_specs_from_different_texts_hash_equal():
    forms = ["0.0.0.0:8080:80", "0.0.0.0:8080:80/tcp", "[0.0.0.0]:08080:+80/TCP",
             "published=8080,target=80,host_ip=0.0.0.0"]
    specs = {PortSpec.parse(text) for text in forms}
    assert len(specs) == 1


def test_specs_differ_by_every_field():
    base = PortSpec.parse("127.0.0.1:8080:80/tcp")
    others = ["127.0.0.2:8080:80/tcp", "8080:80/tcp", "127.0.0.1:8081:80/tcp",
              "127.0.0.1::80/tcp", "127.0.0.1:8080:81/tcp", "127.0.0.1:8080:80/udp"]
    assert all(PortSpec.parse(text) != base for text in others)


def test_specs_are_frozen():
    spec = PortSpec.parse("8080:80")
    with pytest.raises(AttributeError):
        spec.proto = UDP


def test_family_follows_the_host_ip():
    assert PortSpec.parse("8080:80").family is None
    assert PortSpec.parse("127.0.0.1:8080:80").family == 4
    assert PortSpec.parse("[::1]:8080:80").family == 6


def test_parse_many_keeps_order_and_stops_at_the_first_bad_spec():
    assert [str(s) for s in PortSpec.parse_many(["8080:80", "53/udp"])] == ["8080:80/tcp", "53/udp"]
    with pytest.raises(SpecError) as caught:
        PortSpec.parse_many(["8080:80", "80/icmp", "70000"])
    assert caught.value.text == "80/icmp"


def test_parse_many_refuses_a_single_string():
    with pytest.raises(SpecError, match="list of specs"):
        PortSpec.parse_many("8080:80")


@pytest.mark.parametrize("value", [None, 80, b"80", ["80"]])
def test_non_text_input_is_a_spec_error(value):
    with pytest.raises(SpecError, match="expected a string"):
        PortSpec.parse(value)


def test_building_a_spec_by_hand_gets_the_parser_checks():
    spec = PortSpec("127.0.0.1", R(8080), R(80), "udp")
    assert spec == PortSpec.parse("127.0.0.1:8080:80/udp")
    with pytest.raises(SpecError, match="differ in length"):
        PortSpec(None, R(8000, 8001), R(80, 82))
    with pytest.raises(SpecError, match="invalid protocol"):
        PortSpec(None, None, R(80), "icmp")


def test_a_bad_spec_in_a_list_is_named_by_its_place_and_endpoint():
    """One of thousands: the text alone may not tell which (a newcomer's trial)."""
    with pytest.raises(SpecError) as caught:
        PortSpec.parse_many(["8080:80", "8081:81", "2x000:8000", "8083:83"], where="endpoint 'sb03000'")
    assert caught.value.message.startswith("endpoint 'sb03000', spec 3 of 4: invalid port '2x000'")
    assert str(caught.value).splitlines()[1:] == ["    2x000:8000", "     ^"]
    with pytest.raises(SpecError) as caught:
        PortSpec.parse_many(["2x000:8000"], where="endpoint 'sb03000'")
    assert caught.value.message.startswith("endpoint 'sb03000': invalid port '2x000'")
    with pytest.raises(SpecError) as caught:
        PortSpec.parse_many(["2x000:8000"])
    assert caught.value.message.startswith("invalid port '2x000'")

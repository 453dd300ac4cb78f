"""Property tests of the grammar (Hypothesis). No root, no kernel."""

from ipaddress import IPv4Address, IPv6Address

from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from natmap import LinkSpec, PortRange, PortSpec, Protocol, SpecError

ports = st.integers(min_value=1, max_value=65535)


@st.composite
def port_ranges(draw, max_len=65535):
    start = draw(ports)
    end = draw(st.integers(min_value=start, max_value=min(65535, start + max_len - 1)))
    return PortRange(start, end)


ipv4 = st.builds(IPv4Address, st.integers(min_value=0, max_value=2**32 - 1))
# IPv4-mapped IPv6 addresses read as IPv4 (as Docker's Go does), so leave them out here.
ipv6 = st.builds(IPv6Address, st.integers(min_value=0, max_value=2**128 - 1)).filter(
    lambda ip: ip.ipv4_mapped is None)


@st.composite
def port_specs(draw):
    container = draw(port_ranges(max_len=300))
    host = draw(st.one_of(
        st.none(),
        port_ranges(max_len=300) if len(container) == 1 else
        ports.filter(lambda p: p + len(container) - 1 <= 65535).map(
            lambda p: PortRange(p, p + len(container) - 1)),
    ))
    host_ip = draw(st.one_of(st.none(), ipv4, ipv6))
    return PortSpec(host_ip, host, container, draw(st.sampled_from(Protocol)))


@given(port_specs())
def test_round_trip(spec):
    assert PortSpec.parse(str(spec)) == spec
    assert hash(PortSpec.parse(str(spec))) == hash(spec)


@given(port_specs())
def test_canonical_text_is_a_fixed_point(spec):
    assert str(PortSpec.parse(str(spec))) == str(spec)


@given(port_specs())
def test_long_syntax_means_the_same_as_short(spec):
    assume(spec.host_ports is None or len(spec.host_ports) == 1)
    assume(len(spec.container_ports) == 1)
    fields = [f"target={spec.container_ports.start}", f"protocol={spec.proto.value}"]
    if spec.host_ports:
        fields.append(f"published={spec.host_ports.start}")
    if spec.host_ip:
        fields.append(f"host_ip={spec.host_ip}")
    assert PortSpec.parse(",".join(fields)) == spec


@given(st.text())
@example("::::::::::::::")
@example("[" * 50)
@example("0" * 5000)
@example("\ud800:80")
@example("published=1,target=2,host_ip=\udfff")
@settings(max_examples=500)
def test_arbitrary_text_only_ever_raises_spec_error(text):
    for parse in (PortSpec.parse, PortSpec.parse_exposed, LinkSpec.parse, PortRange.parse):
        try:
            value = parse(text)
        except SpecError as error:
            assert error.text == text
            assert 0 <= error.start <= len(text)
            str(error)
        else:
            assert parse(str(value)) == value


# Characters that matter to the grammar, so mutations hit the interesting paths.
grammar_chars = st.sampled_from(list("0123456789:/-+[],=.abcdeftcpudsTCP% \n") + ["\u0660", "\x00"])


@given(port_specs(), st.data())
@settings(max_examples=500)
def test_a_mutated_valid_spec_parses_or_raises_spec_error(spec, data):
    text = str(spec)
    at = data.draw(st.integers(min_value=0, max_value=len(text)))
    kind = data.draw(st.sampled_from(["insert", "delete", "replace"]))
    char = data.draw(grammar_chars)
    if kind == "insert":
        mutated = text[:at] + char + text[at:]
    elif kind == "delete":
        mutated = text[:at] + text[at + 1:]
    else:
        mutated = text[:at] + char + text[at + 1:]
    try:
        value = PortSpec.parse(mutated)
    except SpecError as error:
        assert error.text == mutated
    else:
        assert PortSpec.parse(str(value)) == value


@given(port_ranges(max_len=500), port_ranges(max_len=500))
def test_range_lengths_must_match_unless_the_container_port_is_single(host, container):
    text = f"{host}:{container}"
    if len(host) == len(container) or len(container) == 1:
        spec = PortSpec.parse(text)
        assert spec.host_ports == host
        assert spec.container_ports == container
    else:
        try:
            PortSpec.parse(text)
        except SpecError as error:
            assert "differ in length" in error.message
        else:
            raise AssertionError(f"{text} should be rejected")


@given(port_ranges())
def test_port_range_is_iterable_and_sized(r):
    assert len(r) == r.end - r.start + 1
    items = list(r) if len(r) < 2000 else None
    if items is not None:
        assert items == list(range(r.start, r.end + 1))
    assert r.start in r and r.end in r and r.end + 1 not in r
    assert PortRange.parse(str(r)) == r


@given(st.integers(min_value=0, max_value=10**6), st.integers(min_value=0, max_value=10**6))
def test_ports_outside_0_to_65535_are_rejected(host, container):
    text = f"{host}:{container}"
    valid = host <= 65535 and 1 <= container <= 65535
    try:
        PortSpec.parse(text)
    except SpecError:
        assert not valid
    else:
        assert valid


@given(ipv6, port_ranges(max_len=1), port_ranges(max_len=1))
def test_unbracketed_ipv6_reads_like_docker(ip, host, container):
    # Docker takes everything before the last two fields as the IP.
    spec = PortSpec.parse(f"{ip}:{host}:{container}")
    assert (spec.host_ip, spec.host_ports, spec.container_ports) == (ip, host, container)

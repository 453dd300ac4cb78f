"""The fast path for common ``-p`` shapes gives exactly what the full parser gives."""

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from natmap import spec as spec_module
from natmap.errors import SpecError
from natmap.spec import PortRange, PortSpec, _fast_pairs, _fast_spec, _Span, _spec

_PORT = st.one_of(st.integers(0, 70000).map(str), st.sampled_from(["+80", "080", "00", "", "65535", "65536"]))
_RANGE = st.one_of(_PORT, st.tuples(_PORT, _PORT).map("-".join))
_IP = st.sampled_from(["127.0.0.1", "0.0.0.0", "10.1.2.3", "1.2.3", "256.1.1.1", "01.2.3.4", "::1", "[::1]", ""])
_PROTO = st.sampled_from(["", "/tcp", "/udp", "/sctp", "/TCP", "/", "/icmp"])
_COMMON_SHAPES = st.one_of(
    st.tuples(_RANGE, _PROTO).map("".join),
    st.tuples(_RANGE, _RANGE, _PROTO).map(lambda t: f"{t[0]}:{t[1]}{t[2]}"),
    st.tuples(_IP, _RANGE, _RANGE, _PROTO).map(lambda t: f"{t[0]}:{t[1]}:{t[2]}{t[3]}"),
)


def _full(text):
    try:
        return _spec(_Span.of(text))
    except SpecError as exc:
        return str(exc)


@settings(max_examples=500, deadline=None)
@given(st.one_of(_COMMON_SHAPES, st.text(alphabet="0123456789:-./tcpud[]+", max_size=24)))
@example("1-65535:1-65535/udp")
@example("127.0.0.1::80")
@example(":80")
@example("8000-8010:80")
@example("99999:80")
@example("80-79")
def test_the_fast_path_gives_the_full_parsers_value_or_leaves_it_to_it(text):
    fast = _fast_spec(text)
    full = _full(text)
    if fast is not None:
        assert isinstance(full, PortSpec) and fast == full
        assert (fast.host_ip, fast.host_ports, fast.container_ports, fast.proto) == (
            full.host_ip, full.host_ports, full.container_ports, full.proto)
        assert str(fast) == str(full) and hash(fast) == hash(full)
    try:
        parsed = PortSpec.parse(text)
    except SpecError as exc:
        assert str(exc) == full
    else:
        assert parsed == full


def test_the_common_forms_take_the_fast_path():
    for text in ("80", "8080:80", "20000:8000/udp", "10000-20000:10000-20000/udp", "127.0.0.1:8080:80",
                 "127.0.0.1::80", "8000-8010:80/sctp"):
        assert _fast_spec(text) == _full(text)


_DIGITS = st.text(alphabet="0123456789\u00b2\u0661+-", max_size=7)  # with digits str.isdigit() takes and Docker does not


@settings(max_examples=300, deadline=None)
@given(st.tuples(_DIGITS, _DIGITS, st.sampled_from(["", "/tcp", "/udp", "/sctp", "/", "/UDP", "/tcp/udp"]))
       .map(lambda t: f"{t[0]}:{t[1]}{t[2]}"))
@example("\u0668\u0660:80")  # Arabic-Indic digits: str.isdigit() says yes, Docker's parser says no
@example("080:80")
@example("65536:80")
@example("8080:80/")
def test_the_host_colon_container_shortcut_agrees_with_the_full_parser(text):
    """``8080:80[/proto]`` skips the regex; what it gives is still the full parser's value."""
    fast = _fast_spec(text)
    if fast is not None:
        assert fast == _full(text) and str(fast) == str(_full(text))


# Lists as Transaction.publish reads them (PortSpec.parse_many): whole lists of
# ``host:container``, all with the same ``/proto`` or none, take the one-text
# path; a list with anything else in it, or anything wrong, is read spec by
# spec. Either way each value, and the error for the first bad spec, is the
# one PortSpec.parse gives for that spec.
_PAIR = st.tuples(st.integers(1, 65535), st.integers(1, 65535)).map(lambda t: f"{t[0]}:{t[1]}")
_SUFFIX = st.sampled_from(["", "/tcp", "/udp", "/sctp"])
_ODD = st.one_of(
    _COMMON_SHAPES,
    st.text(alphabet="0123456789:-./tcpud[]+\n ", max_size=16),
    st.sampled_from(["0:80", "080:80", "65536:80", "99999:1", "80:65536", "8080:80\n", "\n8080:80",
                     "8080:80\n9090:90", "", ":", "8080:", ":80", "\u0668\u0660:80", "8080:80 ", "+80:80",
                     "8080:80/udp", "8080:80/sctp", "8080:80/UDP", "8080:80/", "8080:80/udp/udp", "1/udp:2/udp",
                     "8080:80/udp\n", "127.0.0.1:8080:80", "target=80,published=8080"]),
    st.builds(PortSpec.parse, st.sampled_from(["8080:80", "53/udp", "[::1]:5353:53/udp"])),
    st.sampled_from([b"8080:80", 8080, None]),
)


def _one_by_one(items):
    """What the list parses to as PortSpec.parse reads each: its values, or
    the first bad spec's error (type, message, input and columns), its place
    in a list of more than one put in front of the message."""
    values = []
    for index, item in enumerate(items):
        if isinstance(item, PortSpec):
            values.append(item)
            continue
        try:
            values.append(PortSpec.parse(item))
        except SpecError as exc:
            if len(items) > 1:
                exc = SpecError(f"spec {index + 1} of {len(items)}: {exc.message}", exc.text, exc.start, exc.end)
            return (type(exc), exc.message, exc.text, exc.start, exc.end, str(exc))
    return values


def _as_list(items):
    try:
        return PortSpec.parse_many(items)
    except SpecError as exc:
        return (type(exc), exc.message, exc.text, exc.start, exc.end, str(exc))


def _same_values(got, want):
    assert [type(v) for v in got] == [type(v) for v in want] == [PortSpec] * len(want)
    assert got == want
    for a, b in zip(got, want):
        assert (a.host_ip, a.host_ports, a.container_ports, a.proto) == (
            b.host_ip, b.host_ports, b.container_ports, b.proto)
        assert [type(a.host_ports), type(a.container_ports)] == [type(b.host_ports), type(b.container_ports)]
        assert (repr(a), str(a), hash(a), hash(a.container_ports)) == (repr(b), str(b), hash(b), hash(b.container_ports))


@settings(max_examples=400, deadline=None)
@given(st.lists(_PAIR, max_size=60), _SUFFIX, st.lists(st.tuples(st.integers(0, 60), _ODD), max_size=3))
@example(["10000:1", "10001:2"], "", [])
@example(["10000:1", "10001:2"], "", [(1, "99999:1")])
@example(["10000:1", "10001:2"], "", [(2, "8080:80\n9090:90")])
@example(["10000:1"], "", [(0, "80"), (1, "70000:80")])
@example(["10000:1", "10001:2"], "/udp", [(1, "8080:80")])
@example(["10000:1", "10001:2"], "/udp", [(1, "8080:80/udp\n")])
@example(["10000:1"], "/udp", [(0, "1:2/udp\n3:4")])
@example([], "", [(0, "8080:80\n9090:90")])
@example([], "", [])
def test_a_list_parses_as_its_specs_one_by_one(pairs, suffix, odd):
    items = [pair + suffix for pair in pairs]
    for at, item in odd:
        items.insert(min(at, len(items)), item)
    got, want = _as_list(items), _one_by_one(items)
    if isinstance(want, tuple):
        assert got == want
    else:
        _same_values(got, want)


@settings(max_examples=200, deadline=None)
@given(st.lists(_PAIR, min_size=1, max_size=60), _SUFFIX, st.booleans())
def test_a_list_of_host_container_pairs_takes_the_one_text_path(pairs, suffix, cold):
    """The common lists are read as one text (else the test above tests little),
    with the ports read before or new to the process."""
    if cold:
        spec_module._PORTS.clear()
    texts = [pair + suffix for pair in pairs]
    fast = _fast_pairs(texts)
    assert fast is not None
    _same_values(fast, [_spec(_Span.of(text)) for text in texts])


def test_each_port_value_is_kept_once_by_its_text():
    """A port read again (a container port in every spec of a list) is the same value, not a copy."""
    specs = PortSpec.parse_many(["10000:80", "10001:80", "10002:80"]) + [PortSpec.parse("10003:80")]
    assert len({id(spec.container_ports) for spec in specs}) == 1
    assert specs[0].container_ports == PortRange(80) and specs[0].container_ports is spec_module._PORTS["80"]


def test_a_port_over_65535_in_a_list_is_the_one_spec_parsers_error():
    with pytest.raises(SpecError) as caught:
        PortSpec.parse_many(["10000:1", "10001:2", "10002:70000", "0:-1"])
    assert caught.value.text == "10002:70000"
    assert caught.value.message == "spec 3 of 4: invalid port 70000 (must be 0-65535)"
    assert (caught.value.start, caught.value.end) == (6, 11)


def test_a_portspec_in_the_list_is_taken_as_it_is():
    """As Transaction.publish takes them: values and texts mixed."""
    given = PortSpec.parse("[::1]:5353:53/udp")
    got = PortSpec.parse_many(iter(["8080:80", given]))
    assert got[1] is given and [str(spec) for spec in got] == ["8080:80/tcp", "[::1]:5353:53/udp"]

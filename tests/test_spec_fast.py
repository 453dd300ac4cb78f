"""The fast path for common ``-p`` shapes gives exactly what the full parser gives."""

from hypothesis import example, given, settings
from hypothesis import strategies as st

from natmap.errors import SpecError
from natmap.spec import PortSpec, _fast_spec, _Span, _spec

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

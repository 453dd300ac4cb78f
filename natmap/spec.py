"""Docker's ``-p``, ``--expose`` and ``--link`` specs, parsed into values.

The short ``-p`` grammar, read the way Docker's ``nat.ParsePortSpec`` reads it::

    spec      = [[ip ":"] [hostrange] ":"] portrange ["/" [proto]]
    portrange = port ["-" port]
    port      = ["+"] digit {digit}
    proto     = "tcp" | "udp" | "sctp"
    ip        = "[" address "]" | address

Docker does not tokenize left to right: it splits the text on every ``:`` and,
with four or more fields, takes all but the last two as the IP. That is why
``::1:80:80`` has host IP ``::1`` while ``::1`` alone is container port 1.
:func:`_fields` reproduces that split; every other rule is one function below
with its production in the docstring. Each works on a :class:`_Span`, a slice
of the input that remembers its columns, so every error can point at them.

No module here touches the kernel, and none imports pyroute2, iptc or
nftables.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from .errors import SpecError

__all__ = ["Protocol", "PortRange", "PortSpec", "LinkSpec", "IPAddress", "validate_alias", "validate_name"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_PORT = 65535
# Endpoint names and link aliases end up in kernel comments, /etc/hosts and
# environment variable names: keep them short and free of anything a shell,
# a hosts file or nft would read as syntax.
NAME_MAX = 64
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_DIGITS = re.compile(r"[0-9]+")


class Protocol(enum.StrEnum):
    """The transport protocols a port can be published for."""

    TCP = "tcp"
    UDP = "udp"
    SCTP = "sctp"


@dataclass(frozen=True, slots=True, order=True)
class PortRange:
    """An inclusive range of ports, ``start`` to ``end``, each 1-65535.

    ``PortRange(80)`` is the single port 80. ``str()`` gives ``80`` or
    ``8000-8010``, which :meth:`parse` reads back.
    """

    start: int
    end: int = None  # type: ignore[assignment]  # None: the single port ``start``

    def __post_init__(self) -> None:
        if self.end is None:
            object.__setattr__(self, "end", self.start)
        if not all(type(p) is int for p in (self.start, self.end)):
            raise SpecError("port numbers must be int", f"{self.start!r}-{self.end!r}", None)
        if not (1 <= self.start <= self.end <= MAX_PORT):
            raise SpecError(f"invalid port range (need 1 <= start <= end <= {MAX_PORT})",
                            f"{self.start}-{self.end}", None)

    @classmethod
    def parse(cls, text: str) -> PortRange:
        """Parse ``80`` or ``8000-8010`` (port 0 is not a range)."""
        span = _Span.of(text)
        start, end = _port_range(span)
        if start == 0:
            raise span.error("port 0 is not allowed in a range")
        return cls(start, end)

    def __str__(self) -> str:
        return str(self.start) if self.start == self.end else f"{self.start}-{self.end}"

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.end + 1))

    def __len__(self) -> int:
        return self.end - self.start + 1

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.start <= port <= self.end


@dataclass(frozen=True, slots=True)
class PortSpec:
    """One ``-p`` value: where on the host, which container ports, which protocol.

    - ``host_ip``: the address to bind, or ``None`` for every address;
    - ``host_ports``: the host ports, or ``None`` when they are to be assigned.
      A range with a single container port is the pool to pick ONE port from
      (``8000-8010:80``); otherwise it maps one to one onto the container range;
    - ``container_ports``: the container ports;
    - ``proto``: the :class:`Protocol`.

    ``str()`` is canonical short syntax that :meth:`parse` reads back to an
    equal value: ``8080:80/tcp``, ``127.0.0.1::5000/tcp``, ``[::1]:8080:80/udp``.
    """

    host_ip: IPAddress | None
    host_ports: PortRange | None
    container_ports: PortRange
    proto: Protocol = Protocol.TCP

    def __post_init__(self) -> None:
        # Values built by hand get the same checks the parser makes.
        if isinstance(self.host_ip, str):
            object.__setattr__(self, "host_ip", _ip(_Span.of(self.host_ip)))
        object.__setattr__(self, "proto", _proto(_Span.of(str(self.proto))))
        if not _ranges_fit(self.host_ports, self.container_ports):
            raise SpecError(_length_message(self.host_ports, self.container_ports), str(self), None)

    @classmethod
    def parse(cls, text: str) -> PortSpec:
        """Parse one ``-p`` value, short (``8080:80/tcp``) or long (``target=80,...``)."""
        fast = _fast_spec(text) if type(text) is str else None
        if fast is not None:
            return fast
        span = _Span.of(text)
        if "=" in span.text:
            return _long_spec(span)
        return _spec(span)

    @classmethod
    def parse_many(cls, texts: Iterable[str | PortSpec], where: str = "",
                   places: Sequence[str] | None = None) -> list[PortSpec]:
        """Parse a list of ``-p`` values, in order; the first bad one raises
        the error :meth:`parse` raises for it, its place put in front of the
        message (``spec 2501 of 5000: invalid port ...``, or ``places[i]``
        if given: ``specs.txt line 5``; ``where``, if given, before that:
        ``endpoint 'web01'``), since the text alone may not tell which of
        thousands it was. A :class:`PortSpec` in the list is taken as it is.
        A list of ``host:container`` values (``10000:80``, a sandbox
        manager's thousands) is read as one text, at C speed."""
        if isinstance(texts, str):
            raise SpecError("expected a list of specs, got one string", texts, 0, len(texts))
        texts = list(texts)
        if places is not None and len(places) != len(texts):
            raise ValueError(f"places: one a spec ({len(texts)}), got {len(places)}")
        fast = _fast_pairs(texts)
        if fast is not None:
            return fast
        specs = []
        for index, text in enumerate(texts):
            try:
                specs.append(text if isinstance(text, PortSpec) else cls.parse(text))
            except SpecError as exc:
                at = (places[index] if places is not None
                      else f"spec {index + 1} of {len(texts)}" if len(texts) > 1 else "")
                place = ", ".join(filter(None, [where, at]))
                if not place:
                    raise
                raise SpecError(f"{place}: {exc.message}", exc.text, exc.start, exc.end) from exc
        return specs

    @classmethod
    def parse_exposed(cls, text: str) -> PortSpec:
        """Parse an ``--expose`` / ``EXPOSE`` value: ``5000``, ``5000/udp``, ``7000-7010/tcp``.

        ``exposed = portrange ["/" [proto]]``; the result has no host part,
        which is exactly what ``-P`` publishes: each port to an assigned one.
        """
        span = _Span.of(text)
        colon = span.text.find(":")
        if colon >= 0:
            raise span.error("an exposed port has no host part (use -p to publish)",
                             colon, colon + 1)
        return _spec(span)

    @property
    def family(self) -> int | None:
        """4 or 6 when the host IP fixes the address family, else ``None``."""
        return None if self.host_ip is None else self.host_ip.version

    def __str__(self) -> str:
        container = f"{self.container_ports}/{self.proto.value}"
        host = "" if self.host_ports is None else str(self.host_ports)
        if self.host_ip is None:
            return f"{host}:{container}" if host else container
        return f"{format_ip(self.host_ip)}:{host}:{container}"


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """One ``--link`` value: the target container's ``name`` and the ``alias``
    it is known by in the linking container (the name when none is given).

    Empty names and aliases are errors, as are names Docker would not accept
    for a container (``[A-Za-z0-9][A-Za-z0-9_.-]+``, here at most 64 chars).
    """

    name: str
    alias: str

    def __post_init__(self) -> None:
        validate_name(self.name, "container name")
        validate_alias(self.alias)

    @classmethod
    def parse(cls, text: str) -> LinkSpec:
        """Parse ``name``, ``name:alias`` or Docker's stored ``/name:/parent/alias``.

        ``link = name [":" alias]``
        """
        span = _Span.of(text)
        fields = span.split(":")
        if len(fields) > 2:
            raise span.error("a link is name or name:alias, not three fields",
                             fields[2].start - 1, span.end)
        name = fields[0]
        stored_form = name.text.startswith("/")
        if stored_form:
            name = name.sub(1)
        alias = fields[1] if len(fields) == 2 else name
        if len(fields) == 2 and stored_form:
            alias = alias.sub(alias.text.rfind("/") + 1)
        _check_name(name, "container name", min_length=2)
        _check_name(alias, "link alias")
        return cls(name.text, alias.text)

    def __str__(self) -> str:
        return self.name if self.alias == self.name else f"{self.name}:{self.alias}"


def validate_name(name: str, what: str = "endpoint name", *, min_length: int = 2) -> str:
    """Return ``name`` if it is a usable endpoint (container) name, else raise
    :class:`SpecError`.

    Such names reach kernel comments, hosts files and environment variables,
    so only ``[A-Za-z0-9_.-]`` is allowed, starting with a letter or digit, at
    least two characters (Docker's rule for container names) and at most 64.
    """
    _check_name(_Span.of(name), what, min_length=min_length)
    return name


def validate_alias(alias: str) -> str:
    """Return ``alias`` if it is a usable link alias: a name, one character allowed."""
    return validate_name(alias, "link alias", min_length=1)


def format_ip(ip: IPAddress) -> str:
    """An address as it stands before ``:port``: IPv6 in brackets."""
    return f"[{ip_text(ip)}]" if ip.version == 6 else ip_text(ip)


@functools.lru_cache(maxsize=1024)
def ip_text(ip: IPAddress) -> str:
    """``str(ip)``, kept for the addresses seen last: ipaddress formats one in
    about 2 us, and listing 20,000 bindings formats their few addresses 60,000 times."""
    return str(ip)


# --- the grammar --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Span:
    """A slice ``start:end`` of the whole input, so errors can point at columns."""

    source: str
    start: int
    end: int

    @classmethod
    def of(cls, text: object) -> _Span:
        if not isinstance(text, str):
            raise SpecError(f"expected a string, got {type(text).__name__}", repr(text))
        return cls(text, 0, len(text))

    @property
    def text(self) -> str:
        return self.source[self.start:self.end]

    def sub(self, start: int, end: int | None = None) -> _Span:
        """The part from ``start`` to ``end``, relative to this span."""
        stop = self.end if end is None else self.start + end
        return _Span(self.source, self.start + start, stop)

    def split(self, sep: str) -> list[_Span]:
        """Split on every ``sep``, like Go's ``strings.Split``: never drops a field."""
        spans, at = [], 0
        for piece in self.text.split(sep):
            spans.append(self.sub(at, at + len(piece)))
            at += len(piece) + len(sep)
        return spans

    def error(self, message: str, start: int = 0, end: int | None = None) -> SpecError:
        """A :class:`SpecError` pointing at ``start:end`` of this span (all of it by default)."""
        stop = self.end if end is None else self.start + end
        return SpecError(message, self.source, self.start + start, stop)


def _spec(span: _Span) -> PortSpec:
    """``spec = [[ip ":"] [hostrange] ":"] portrange ["/" [proto]]``"""
    ip_span, host_span, container_span = _fields(span)
    host_ip = _ip(ip_span) if ip_span is not None and ip_span.text else None
    container_ports, proto = _container(container_span)
    if ip_span is None and host_span is not None and _looks_like_ip(host_span.text):
        raise host_span.error(f"{_clip(host_span.text)!r} stands in the host port field; with a "
                              f"host IP give both port fields, as in {_clip(host_span.text)}::80")
    host_ports = _host_range(host_span) if host_span is not None else None
    _check_lengths(host_span, host_ports, container_span, container_ports)
    return PortSpec(host_ip, host_ports, container_ports, proto)


# The shapes most specs have, ``[ipv4 ":"] [hostrange] ":"] portrange ["/" proto]``
# with plain ports (no "+", no leading zero, no 0) and a lower-case protocol.
_COMMON = re.compile(r"(?:(?:((?:[0-9]{1,3}\.){3}[0-9]{1,3}):)?(?:([1-9][0-9]{0,4})(?:-([1-9][0-9]{0,4}))?)?:)?"
                     r"([1-9][0-9]{0,4})(?:-([1-9][0-9]{0,4}))?(?:/(tcp|udp|sctp))?")
_PROTOCOLS = {None: Protocol.TCP, "tcp": Protocol.TCP, "udp": Protocol.UDP, "sctp": Protocol.SCTP}


def _fast_spec(text: str) -> PortSpec | None:
    """The common shapes, parsed at a tenth of :func:`_spec`'s cost (a sandbox
    manager publishes 10,000 single ports in one transaction), giving exactly
    the value :func:`_spec` gives (a property test holds them equal); ``None``
    for anything else, and for anything wrong, which :func:`_spec` then reads
    and explains."""
    head, colon, tail = text.partition(":")
    if colon and ":" not in tail:  # ``8080:80`` or ``8080:80/udp``, the commonest: no regex
        proto: str | None = None
        if "/" in tail:
            tail, _, proto = tail.partition("/")
        host, container = _fast_port(head), _fast_port(tail)
        if host is not None and container is not None and proto in _PROTOCOLS:
            return _fast_new(None, host, container, _PROTOCOLS[proto])
    match = _COMMON.fullmatch(text)
    if match is None:
        return None
    ip_text, host_start, host_end, start, end, proto = match.groups()
    container = _fast_range(start, end)
    host = _fast_range(host_start, host_end) if host_start else None
    if container is None or (host_start and host is None):
        return None
    if host is not None and len(host) != len(container) and len(container) != 1:
        return None
    host_ip = None
    if ip_text is not None:
        try:
            host_ip = ipaddress.IPv4Address(ip_text)
        except ValueError:
            return None
    return _fast_new(host_ip, host, container, _PROTOCOLS[proto])


def _fast_new(host_ip: IPAddress | None, host: PortRange | None, container: PortRange,
              proto: Protocol) -> PortSpec:
    """A PortSpec of fields checked already (what __post_init__ would check)."""
    spec = _UnfrozenSpec()
    spec.host_ip = host_ip
    spec.host_ports = host
    spec.container_ports = container
    spec.proto = proto
    spec.__class__ = PortSpec  # type: ignore[assignment]  # see _UnfrozenSpec
    return spec  # type: ignore[return-value]


class _UnfrozenSpec:
    """PortSpec's slots, in its layout, without its frozen ``__setattr__``: a
    spec of checked fields is made as one of these, its fields set by plain
    attribute stores (which the interpreter does in line for slots), then
    turned into a PortSpec by setting ``__class__`` (which Python allows
    between classes of one layout): half the cost of the slots' setters
    called one by one. The property tests of tests/test_spec_fast.py hold
    the result equal to the full parser's in every field."""

    __slots__ = PortSpec.__slots__
    host_ip: IPAddress | None
    host_ports: PortRange | None
    container_ports: PortRange
    proto: Protocol


class _UnfrozenRange:
    """PortRange's slots, as :class:`_UnfrozenSpec` has PortSpec's."""

    __slots__ = PortRange.__slots__
    start: int
    end: int


def _fast_port(text: str) -> PortRange | None:
    """``port`` as _COMMON reads it (1-65535, ASCII digits, no sign, no leading zero), else None."""
    ports = _PORTS.get(text)
    if ports is not None:
        return ports
    if not (0 < len(text) <= 5 and text.isascii() and text.isdigit() and text[0] != "0"):
        return None
    return _new_port(text)


def _new_port(text: str) -> PortRange | None:
    """The PortRange of ``text``, ASCII digits without a leading zero, kept
    in _PORTS; None over 65535."""
    port = int(text)
    if port > MAX_PORT:
        return None
    ports = _UnfrozenRange()
    ports.start = ports.end = port
    ports.__class__ = PortRange  # type: ignore[assignment]  # see _UnfrozenSpec
    _PORTS[text] = ports  # type: ignore[assignment]
    return ports  # type: ignore[return-value]


# Each single port read, by its text: a value (frozen) a process reads again
# and again (a container port, a host port published again). At most one a
# port: only the canonical text of a port is kept.
_PORTS: dict[str, PortRange] = {}

# ``host ":" container``, one a line, in the terms of _COMMON: plain ports
# (no "+", no leading zero); the protocol, if any, taken off before.
_PAIRS = re.compile(r"(?:[1-9][0-9]{0,4}:[1-9][0-9]{0,4}\n)*")


def _fast_pairs(texts: list[str | PortSpec]) -> list[PortSpec] | None:
    """The specs of ``texts`` when every one is ``host:container`` (``10000:80``),
    or every one that with the same ``/proto`` (``5353:53/udp``), as
    :func:`_fast_spec` would give them one by one; ``None`` when any is not
    (or names a port over 65535), for :meth:`PortSpec.parse` to read them
    one by one (and explain the first bad one).

    Thousands of such specs in one transaction (a sandbox manager publishing
    one port per request) cost more in their per-spec calls than in the
    reading: the list is checked as one text by one regex, split in one call,
    and each spec is then two dict lookups and one object."""
    try:
        lines = "\n".join(texts) + "\n"  # type: ignore[arg-type]  # a PortSpec raises
    except TypeError:
        return None
    proto = Protocol.TCP  # (a local: Protocol.TCP is a lookup of 0.1 us)
    if "/" in lines:  # one protocol named by every spec (``5353:53/udp``) is read off them all
        name = lines[lines.find("/") + 1:lines.find("\n")]
        suffix = f"/{name}\n"
        if name not in _PROTOCOLS or lines.count(suffix) != len(texts):
            return None
        proto, lines = _PROTOCOLS[name], lines.replace(suffix, "\n")
    # A "\n" inside a text would pass the regex as two specs: the count rules it out.
    if lines.count("\n") != len(texts) or _PAIRS.fullmatch(lines) is None:
        return None
    fields = lines.replace("\n", ":").split(":")  # host, container, host, ..., ""
    fields.pop()
    specs, known = [], _PORTS.get
    pairs = iter(fields)
    for host_text, container_text in zip(pairs, pairs):
        # A call only for a port new to the process (a new transaction's host ports).
        host = known(host_text)
        if host is None and (host := _new_port(host_text)) is None:
            return None
        container = known(container_text)
        if container is None and (container := _new_port(container_text)) is None:
            return None
        specs.append(_fast_new(None, host, container, proto))
    return specs


def _fast_range(start_text: str, end_text: str | None) -> PortRange | None:
    start = int(start_text)
    end = start if end_text is None else int(end_text)
    if not start <= end <= MAX_PORT:
        return None
    ports = object.__new__(PortRange)
    object.__setattr__(ports, "start", start)
    object.__setattr__(ports, "end", end)
    return ports


def _fields(span: _Span) -> tuple[_Span | None, _Span | None, _Span]:
    """Docker's split: ``c``, ``h:c``, ``ip:h:c``; with more fields, all but the
    last two are the IP (so ``::1:80:80`` is IP ``::1``)."""
    parts = span.split(":")
    if len(parts) == 1:
        return None, None, parts[0]
    if len(parts) == 2:
        return None, parts[0], parts[1]
    ip = _Span(span.source, parts[0].start, parts[-3].end)
    return ip, parts[-2], parts[-1]


def _ip(span: _Span) -> IPAddress:
    """``ip = "[" address "]" | address``: IPv4 or IPv6 literals, no zones, no names."""
    text = span.text
    if text.startswith("["):
        if not text.endswith("]") or len(text) < 2:
            raise span.error(f"invalid IP address {_clip(text)!r} (an IPv6 host IP needs both "
                             "port fields: [::1]:8080:80 or [::1]::80)")
        inner = span.sub(1, len(text) - 1)
        if not inner.text:
            raise span.error("empty IP address in brackets")
        if "[" in inner.text or "]" in inner.text:
            raise span.error(f"invalid IP address {_clip(text)!r}")
        return _address(inner)
    return _address(span)


def _address(span: _Span) -> IPAddress:
    """``address``: what ``ipaddress.ip_address`` accepts, minus scope zones."""
    text = span.text
    if "%" in text:
        at = text.index("%")
        raise span.error("IPv6 zones (%...) are not supported in a host IP", at)
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        hint = " (natmap takes IP literals, not hostnames)" if re.search(r"[g-zG-Z]", text) else ""
        raise span.error(f"invalid IP address {_clip(text)!r}{hint}") from None
    # Docker (Go's net.IP) treats ::ffff:a.b.c.d as the IPv4 address a.b.c.d.
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _looks_like_ip(text: str) -> bool:
    if "." not in text and ":" not in text:  # every IP literal has one; cheaper than failing to parse
        return False
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True


def _host_range(span: _Span) -> PortRange | None:
    """``hostrange = "" | portrange``; empty, ``0`` and ``0-0`` mean "assign one"."""
    if not span.text:
        return None
    start, end = _port_range(span)
    if start == 0 and end == 0:
        return None
    if start == 0:
        raise span.error("a host port range cannot start at 0 (0 alone means assign one)")
    return PortRange(start, end)


def _container(span: _Span) -> tuple[PortRange, Protocol]:
    """``container = portrange ["/" [proto]]``; ports 1-65535, proto tcp by default."""
    pieces = span.split("/")
    if len(pieces) > 2:
        raise span.error("only one '/proto' is allowed", pieces[2].start - span.start - 1)
    ports = pieces[0]
    if not ports.text:
        raise span.error("no container port given" if not span.text
                         else "missing container port before '/'")
    start, end = _port_range(ports)
    if start == 0:
        raise ports.error("container port 0 is not allowed")
    proto = _proto(pieces[1]) if len(pieces) == 2 else Protocol.TCP
    return PortRange(start, end), proto


def _port_range(span: _Span) -> tuple[int, int]:
    """``portrange = port ["-" port]`` with end >= start."""
    pieces = span.split("-")
    if len(pieces) > 2:
        raise span.error("a port range has one '-'", pieces[2].start - span.start - 1)
    start = _port(pieces[0])
    end = _port(pieces[1]) if len(pieces) == 2 else start
    if end < start:
        raise span.error(f"invalid port range {_clip(span.text)} (end before start)")
    return start, end


def _port(span: _Span) -> int:
    """``port = ["+"] digit {digit}``: a decimal 0-65535, leading zeros allowed."""
    text = span.text
    digits = text[1:] if text.startswith("+") else text
    if not digits:
        raise span.error("missing port number" if not text else "missing digits after '+'")
    if not _DIGITS.fullmatch(digits):
        bad = len(text) - len(digits) + next(i for i, c in enumerate(digits) if c not in "0123456789")
        raise span.error(f"invalid port {_clip(text)!r} (must be a number 0-{MAX_PORT})", bad, bad + 1)
    # Strip zeros before int(): a huge run of them must not meet int()'s digit limit.
    significant = digits.lstrip("0") or "0"
    if len(significant) > 5 or int(significant) > MAX_PORT:
        raise span.error(f"invalid port {_clip(text)} (must be 0-{MAX_PORT})")
    return int(significant)


def _proto(span: _Span) -> Protocol:
    """``proto = "tcp" | "udp" | "sctp"``, any case; empty means tcp."""
    if not span.text:
        return Protocol.TCP
    try:
        return Protocol(span.text.lower())
    except ValueError:
        raise span.error(f"invalid protocol {_clip(span.text)!r} (must be tcp, udp or sctp)") from None


def _check_lengths(host_span: _Span | None, host: PortRange | None,
                   container_span: _Span, container: PortRange) -> None:
    """Point at both port fields when their ranges do not fit together."""
    if host_span is None or _ranges_fit(host, container):
        return
    raise SpecError(_length_message(host, container),
                    host_span.source, host_span.start, container_span.end)


def _ranges_fit(host: PortRange | None, container: PortRange) -> bool:
    """Ranges map one to one, unless the container side is a single port
    (then the host range is a pool to pick one port from)."""
    return host is None or len(container) == 1 or len(host) == len(container)


def _length_message(host: PortRange | None, container: PortRange) -> str:
    return (f"host ports {host} ({len(host or ())}) and container ports {container} "
            f"({len(container)}) differ in length")


_LONG_KEYS = ("published", "target", "protocol", "host_ip")


def _long_spec(span: _Span) -> PortSpec:
    """``long = field {"," field}``, ``field = key "=" value``, keys
    ``published`` (a hostrange), ``target`` (a portrange; required),
    ``protocol`` and ``host_ip``.

    As ``docker run`` (docker/cli's convertToStandardNotation), it means the
    short ``published:target/protocol``: ranges, pools (``published=8000-8010,
    target=80``) and "assign one" alike. Unlike Docker, ``host_ip`` is
    honoured and any other key is an error.
    """
    values: dict[str, _Span] = {}
    for field in span.split(","):
        key, value = _long_field(field)
        if key in values:
            raise field.error(f"{key} is given twice")
        values[key] = value
    if "target" not in values:
        raise span.error("the long syntax needs target=PORT")
    target_span, published_span = values["target"], values.get("published")
    start, end = _port_range(target_span)
    if start == 0:
        raise target_span.error("container port 0 is not allowed")
    target = PortRange(start, end)
    published = _host_range(published_span) if published_span is not None else None
    _check_lengths(published_span, published, target_span, target)
    proto = _proto(values["protocol"]) if "protocol" in values else Protocol.TCP
    host_ip = _ip(values["host_ip"]) if "host_ip" in values and values["host_ip"].text else None
    return PortSpec(host_ip, published, target, proto)


def _long_field(span: _Span) -> tuple[str, _Span]:
    """``field = key "=" value``; keys are case-insensitive."""
    equals = span.text.find("=")
    if equals <= 0:
        raise span.error("expected key=value" if span.text else "empty field")
    key = span.text[:equals].lower()
    if key not in _LONG_KEYS:
        raise span.error(f"unknown key {_clip(span.text[:equals])!r} (expected one of {', '.join(_LONG_KEYS)})",
                         0, equals)
    return key, span.sub(equals + 1)


def _check_name(span: _Span, what: str, *, min_length: int = 1) -> None:
    """``name = alnum {alnum | "_" | "." | "-"}``, min_length..64 characters."""
    text = span.text
    if not text:
        raise span.error(f"empty {what}")
    if len(text) > NAME_MAX:
        raise span.error(f"{what} is longer than {NAME_MAX} characters", NAME_MAX)
    if not _NAME.fullmatch(text):
        bad = next((i for i, c in enumerate(text) if not _NAME.fullmatch("a" + c)), 0)
        raise span.error(f"invalid {what} {_clip(text)!r} (use letters, digits, '_', '.', '-'; "
                         f"start with a letter or digit)", bad, bad + 1)
    if len(text) < min_length:
        raise span.error(f"{what} {_clip(text)!r} is too short (at least {min_length} characters)")


def _clip(text: str, limit: int = 40) -> str:
    """A piece of the input short enough to quote in a message."""
    return text if len(text) <= limit else text[:limit] + "..."

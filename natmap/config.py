"""A declarative description of what a table should hold, read from TOML::

    [bridges.natmap0]
    isolate = true                  # Docker's --icc=false
    gateway_mode = "nat"            # or "nat-unprotected", "routed" (Docker 28's gateway modes), both families
    gateway_mode_ipv6 = "routed"    # one family's own (gateway_mode_ipv4 too): overrides gateway_mode
    trusted_interfaces = ["eth1"]   # routed traffic from these reaches containers directly

    [endpoints.db01]
    ip = "172.30.0.3"
    bridge = "natmap0"
    expose = ["5432/tcp"]
    publish_all = true              # -P

    [endpoints.web02]
    ip = "172.30.0.4"
    ipv6 = "fd00:30::4"             # optional
    bridge = "natmap0"
    publish = ["127.0.0.1:5001:5000", "8080:5000"]
    links = ["db01:web02Todb01"]    # --link

:meth:`Config.reconcile` turns it into the calls of one transaction that make
the table match it: adding, changing and removing, and keeping the ports it
had assigned before. Pure: reading the file is the only I/O.
"""

from __future__ import annotations

import reprlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, Protocol as TypingProtocol

from .errors import ConfigError, SpecError, UnknownInterfaceError
from .links import Link
from .model import Binding, Endpoint, Gateway, GatewayMode, Slot, Table, preferred, validate_ifname
from .spec import LinkSpec, PortSpec

__all__ = ["Config", "EndpointConfig"]

_ENDPOINT_KEYS = {"ip", "ipv6", "bridge", "expose", "publish", "publish_all", "links"}
_BRIDGE_KEYS = {"isolate", "gateway_mode", "gateway_mode_ipv4", "gateway_mode_ipv6", "trusted_interfaces"}


class _Transaction(TypingProtocol):
    """What reconcile needs of a transaction (natmap.Transaction has it)."""

    def table(self) -> Table: ...
    def publish(self, endpoint: Endpoint, specs: list[PortSpec], *, publish_all: bool,
                prefer: Mapping[Slot, Sequence[int]]) -> list[Binding]: ...
    def unpublish(self, endpoint: str) -> list[Binding]: ...
    def link(self, source: Endpoint, target: Endpoint, alias: str | None = None) -> Link: ...
    def unlink(self, source: str, target: str) -> Link: ...
    def isolate(self, bridge: str) -> None: ...
    def unisolate(self, bridge: str) -> None: ...
    def set_gateway(self, bridge: str, mode: GatewayMode | None = None, trusted_interfaces: Any = (), *,
                    mode_ipv4: GatewayMode | None = None, mode_ipv6: GatewayMode | None = None,
                    force: bool = False) -> Gateway: ...


@dataclass(frozen=True, slots=True)
class EndpointConfig:
    """One endpoint of the file: the endpoint, its ``-p`` specs, ``-P``, ``--link``s."""

    endpoint: Endpoint
    publish: tuple[PortSpec, ...]
    publish_all: bool
    links: tuple[LinkSpec, ...]


@dataclass(frozen=True, slots=True)
class Config:
    endpoints: tuple[EndpointConfig, ...]
    isolated: frozenset[str]
    gateways: tuple[Gateway, ...] = ()  # bridges not in the default gateway mode
    source: str = field(default="config", compare=False)  # the file, as its faults name it

    @classmethod
    def load(cls, path: str | Path) -> Config:
        """Read a TOML file (UTF-8). Whatever is wrong with it is a
        :class:`ConfigError` (the file cannot be read, is not UTF-8 or not
        TOML) or a :class:`SpecError` naming the file and the key path, as in
        ``lab.toml: endpoints.web01.publish[2]: invalid port ...`` (list
        indexes count from 0)."""
        return cls.parse(cls.read(path), path)

    @staticmethod
    def read(path: str | PathLike[str]) -> bytes:
        """The file's bytes; :class:`ConfigError` if it cannot be read."""
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read it: {exc.strerror or exc}") from exc

    @classmethod
    def parse(cls, raw: bytes, path: str | PathLike[str] = "config") -> Config:
        """The configuration a file's bytes (:meth:`read`) describe; mistakes
        as in :meth:`load`, named after ``path``."""
        import tomllib  # here: `natmap apply` of an unchanged file reads no TOML

        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start} is {raw[exc.start]:#04x})") from exc
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
        except RecursionError as exc:  # tomllib recurses once per nested array or inline table
            raise ConfigError(f"{path}: arrays or tables nested too deeply") from exc
        return cls.from_dict(data, str(path))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config") -> Config:
        """The configuration the mapping (TOML's shape) describes; mistakes as in :meth:`load`."""
        if not isinstance(data, Mapping):
            raise SpecError(f"{source}: must be a table", _shown(data))
        _only(data, {"bridges", "endpoints"}, source)
        bridges = _table(data.get("bridges", {}), source, "bridges")
        isolated = set()
        for name, settings in bridges.items():
            where = f"{source}: bridges.{name}"
            _parsed(validate_ifname, name, where)
            _only(_table(settings, source, f"bridges.{name}"), _BRIDGE_KEYS, where)
            if _typed(settings.get("isolate", False), bool, f"{where}.isolate"):
                isolated.add(name)
        endpoints = tuple(_endpoint(name, settings, f"{source}: endpoints.{name}")
                          for name, settings in _table(data.get("endpoints", {}), source, "endpoints").items())
        config = cls(endpoints, frozenset(isolated), _gateways(bridges, source), source)
        config._check_links(source)
        return config

    def _check_links(self, source: str) -> None:
        names = {e.endpoint.name for e in self.endpoints}
        for entry in self.endpoints:
            for link in entry.links:
                if link.name not in names:
                    raise SpecError(f"{source}: endpoints.{entry.endpoint.name} links to "
                                    f"{link.name!r}, which the file does not describe", str(link))

    def reconcile(self, tx: _Transaction) -> None:
        """Make ``tx``'s table match this configuration.

        An endpoint whose entry and bindings are as this process last
        published them is left alone. Any other is unpublished and published
        again in the same transaction, its assigned ports preferred again
        (:func:`natmap.model.preferred`): whatever comes back the same cancels
        out, so the kernel sees only what changed, and applying an unchanged
        file changes nothing.
        """
        table = tx.table()
        wanted = {e.endpoint.name: e for e in self.endpoints}
        kept: set[str] = set()  # endpoints left alone, and so their links
        for name in table.endpoints() + [l.source for l in table.links()] + [l.target for l in table.links()]:
            if name not in wanted and table.knows(name):
                tx.unpublish(name)
        for entry in self.endpoints:
            name, request = entry.endpoint.name, (entry.endpoint, entry.publish, entry.publish_all)
            if entry.endpoint.bridge in table.bridges and table.holds(name, request):
                kept.add(name)
                continue
            before = table.bindings_of(name)
            if table.knows(name):
                tx.unpublish(name)
            with _placed(f"{self.source}: endpoints.{name}"):
                made = tx.publish(entry.endpoint, list(entry.publish), publish_all=entry.publish_all,
                                  prefer=preferred(before))
            table.remember(name, request, made)
        self._reconcile_links(tx, wanted, kept)
        for bridge in sorted(table.isolated - self.isolated):
            tx.unisolate(bridge)
        for bridge in sorted(self.isolated - table.isolated):
            tx.isolate(bridge)
        wanted_gateways = {g.bridge: g for g in self.gateways}
        for bridge in sorted(set(table.gateways) - set(wanted_gateways)):
            tx.set_gateway(bridge)
        for gateway in self.gateways:
            with _placed(f"{self.source}: bridges.{gateway.bridge}"):
                tx.set_gateway(gateway.bridge, None, gateway.trusted, mode_ipv4=gateway.mode_ipv4,
                               mode_ipv6=gateway.mode_ipv6)


    def _reconcile_links(self, tx: _Transaction, wanted: Mapping[str, EndpointConfig], kept: set[str]) -> None:
        """Remove the links the file does not have; add those it has. A link
        between two endpoints left alone is as it was: its addresses and ports
        come from them."""
        table = tx.table()
        links = {(entry.endpoint.name, link.name): link for entry in self.endpoints for link in entry.links}
        there = set()
        for link in table.links():
            spec = links.get((link.source, link.target))
            if spec is None or spec.alias != link.alias:
                tx.unlink(link.source, link.target)
            elif link.source in kept and link.target in kept:
                there.add((link.source, link.target))
        for (source, target), spec in links.items():
            if (source, target) not in there:
                tx.link(wanted[source].endpoint, wanted[target].endpoint, spec.alias)


def _gateways(bridges: Mapping[str, Any], source: str) -> tuple[Gateway, ...]:
    """The ``gateway_mode`` / ``trusted_interfaces`` of each bridge, where not the default.
    ``gateway_mode`` is both families' mode; ``gateway_mode_ipv4`` / ``_ipv6``
    (Docker's option names) set one family's, over it."""
    gateways = []
    for name, settings in bridges.items():
        where = f"{source}: bridges.{name}"
        modes = {key: _parsed(lambda m: Gateway(name, m).mode, _typed(settings[key], str, f"{where}.{key}"),
                              f"{where}.{key}")
                 for key in ("gateway_mode", "gateway_mode_ipv4", "gateway_mode_ipv6") if key in settings}
        trusted = _typed(settings.get("trusted_interfaces", []), list, f"{where}.trusted_interfaces")
        interfaces = tuple(_parsed(validate_ifname, _typed(i, str, f"{where}.trusted_interfaces[{n}]"),
                                   f"{where}.trusted_interfaces[{n}]") for n, i in enumerate(trusted))
        gateway = Gateway(name, modes.get("gateway_mode"), interfaces, mode_ipv4=modes.get("gateway_mode_ipv4"),
                          mode_ipv6=modes.get("gateway_mode_ipv6"))
        if not gateway.default:
            gateways.append(gateway)
    return tuple(gateways)


def _endpoint(name: str, settings: Any, where: str) -> EndpointConfig:
    if not isinstance(settings, Mapping):
        raise SpecError(f"{where} must be a table", _shown(settings))
    _only(settings, _ENDPOINT_KEYS, where)
    if "bridge" not in settings:
        raise SpecError(f"{where} needs bridge = ...", name)
    if "ip" not in settings and "ipv6" not in settings:  # IPv6-only: ipv6 alone
        raise SpecError(f"{where} needs an address: ip = ... (IPv4), ipv6 = ... or both", name)
    publish = tuple(_each(PortSpec.parse, settings, "publish", where))
    expose = _each(PortSpec.parse_exposed, settings, "expose", where)
    # As with docker run, a published container port is exposed too (links open it).
    expose += [PortSpec(None, None, spec.container_ports, spec.proto) for spec in publish]
    endpoint = _parsed(lambda _: Endpoint(
        name, _typed(settings.get("ip"), (str, type(None)), f"{where}.ip"), _typed(settings["bridge"], str, f"{where}.bridge"),
        ipv6=_typed(settings.get("ipv6"), (str, type(None)), f"{where}.ipv6"),
        expose=tuple(dict.fromkeys(expose))), name, where)
    links = tuple(_each(LinkSpec.parse, settings, "links", where))
    return EndpointConfig(endpoint, publish,
                          _typed(settings.get("publish_all", False), bool, f"{where}.publish_all"), links)


def _each(parse: Callable[[str], Any], settings: Mapping[str, Any], key: str, where: str) -> list[Any]:
    """``parse`` of each string of the list ``settings[key]``; a fault names its place."""
    return [_parsed(parse, _typed(value, str, f"{where}.{key}[{i}]"), f"{where}.{key}[{i}]")
            for i, value in enumerate(_typed(settings.get(key, []), list, f"{where}.{key}"))]


def _parsed(parse: Callable[[Any], Any], value: Any, where: str) -> Any:
    """``parse(value)``; its SpecError again, the place in the file put in front."""
    try:
        return parse(value)
    except SpecError as exc:
        if exc.message.startswith(where):  # placed already (a _typed inside)
            raise
        raise SpecError(f"{where}: {exc.message}", exc.text, exc.start, exc.end) from exc


def _shown(value: Any) -> str:
    """A value as an error shows it: short, however big or deep it is."""
    return reprlib.repr(value) if not isinstance(value, str) else value


def _only(settings: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(settings) - allowed)
    if unknown:
        raise SpecError(f"{where}: unknown key {unknown[0]!r} (expected one of "
                        f"{', '.join(sorted(allowed))})", unknown[0])


def _table(value: Any, where: str, key: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise SpecError(f"{where}: {key} must be a table", _shown(value))
    return value


# TOML's names for the Python types tomllib gives: what the file's author wrote
_TOML_TYPES: dict[type, str] = {str: "string", int: "integer", float: "float", bool: "boolean",
                                list: "array", dict: "table"}


def _typed(value: Any, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(value, kind):
        wanted = " or ".join(_TOML_TYPES.get(k, k.__name__) for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise SpecError(f"{where} has the wrong type ({_TOML_TYPES.get(type(value), type(value).__name__)}, "
                        f"expected {wanted})", _shown(value))
    return value


@contextmanager
def _placed(where: str) -> Iterator[None]:
    """A host fact the file names that is not there (``trusted_interfaces =
    ["nosuch0"]``, a bridge that does not exist): the same error, naming the
    file and the key path as every fault of a file does (README)."""
    try:
        yield
    except UnknownInterfaceError as exc:
        if str(exc).startswith(where):
            raise
        raise type(exc)(f"{where}: {exc}") from exc

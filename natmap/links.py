"""Docker's legacy links (``--link db01:db``): environment, hosts entry, and the
flows a link opens on an isolated bridge. Pure: no kernel, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .errors import SpecError
from .spec import IPAddress, PortSpec, Protocol, validate_alias, validate_name

__all__ = ["Link", "link_env", "hosts_line"]

Port = tuple[int, Protocol]


def exposed_ports(exposed: Iterable[str | PortSpec]) -> tuple[Port, ...]:
    """Every port of ``exposed`` (``"5432/tcp"`` strings or parsed values), in
    the order Docker's links use: tcp first, then other protocols by name,
    each by number. Duplicates are dropped."""
    ports: set[Port] = set()
    for item in exposed:
        spec = item if isinstance(item, PortSpec) else PortSpec.parse_exposed(item)
        ports.update((port, spec.proto) for port in spec.container_ports)
    return tuple(sorted(ports, key=port_order))


def port_order(port: Port) -> tuple[bool, str, int]:
    """Docker's order for a link's ports: tcp first, then by protocol name, then number."""
    return (port[1] is not Protocol.TCP, port[1].value, port[0])


def link_env(parent: str, alias: str, target_ip: IPAddress | str,
             exposed: Iterable[str | PortSpec], target_env: Sequence[str] = ()) -> list[str]:
    """The ``NAME=value`` environment Docker's legacy links inject into ``parent``.

    For alias ``db``, target ``172.17.0.5`` exposing ``5432/tcp``::

        DB_PORT=tcp://172.17.0.5:5432
        DB_PORT_5432_TCP=tcp://172.17.0.5:5432
        DB_PORT_5432_TCP_ADDR=172.17.0.5
        DB_PORT_5432_TCP_PORT=5432
        DB_PORT_5432_TCP_PROTO=tcp
        DB_NAME=/web/db

    A run of two or more consecutive ports of one protocol adds ``_START``,
    ``_PORT_START``, ``_END`` and ``_PORT_END``, keyed by its first port. The
    target's own environment (``target_env``, ``NAME=value`` strings) comes as
    ``DB_ENV_NAME``, without ``HOME`` and ``PATH`` and without entries that
    have no ``=``. The order is Docker's (moby's ``daemon/links``).
    """
    validate_name(parent, "container name")
    validate_alias(alias)
    prefix = alias.upper().replace("-", "_")
    env: list[str] = []
    ports = exposed_ports(exposed)
    if ports:
        first, proto = ports[0]
        env.append(f"{prefix}_PORT={proto.value}://{target_ip}:{first}")
    run_start = run_end = ports[0] if ports else None
    for i, (port, proto) in enumerate(ports):
        key = f"{prefix}_PORT_{port}_{proto.value.upper()}"
        env += [f"{key}={proto.value}://{target_ip}:{port}", f"{key}_ADDR={target_ip}",
                f"{key}_PORT={port}", f"{key}_PROTO={proto.value}"]
        assert run_start is not None and run_end is not None
        if (port, proto) == (run_end[0] + 1, run_end[1]):
            run_end = (port, proto)
            if i < len(ports) - 1:
                continue
        if run_end != run_start:
            env += _run_env(prefix, target_ip, run_start, run_end)
        run_start = run_end = (port, proto)
    env.append(f"{prefix}_NAME=/{parent}/{alias}")
    for entry in target_env:
        name, sep, value = entry.partition("=")
        if sep and name not in ("HOME", "PATH"):
            env.append(f"{prefix}_ENV_{name}={value}")
    return env


def _run_env(prefix: str, target_ip: object, start: Port, end: Port) -> list[str]:
    key = f"{prefix}_PORT_{start[0]}_{start[1].value.upper()}"
    return [f"{key}_START={start[1].value}://{target_ip}:{start[0]}", f"{key}_PORT_START={start[0]}",
            f"{key}_END={end[1].value}://{target_ip}:{end[0]}", f"{key}_PORT_END={end[0]}"]


def hosts_line(alias: str, name: str, ip: IPAddress | str) -> str:
    """The ``/etc/hosts`` line a link adds: ``172.30.0.3\\tweb02Todb01 db01``."""
    names = [validate_alias(alias)]
    if name != alias:
        names.append(validate_name(name, "container name"))
    return f"{ip}\t{' '.join(names)}"


@dataclass(frozen=True, slots=True)
class Link:
    """A link from ``source`` to ``target`` (known there as ``alias``): the
    flows it opens on an isolated bridge are ``source_ips[i] -> target_ips[i]``
    on each of ``ports`` (the target's exposed ports), per IP version."""

    source: str
    target: str
    alias: str
    source_ips: tuple[IPAddress, ...]
    target_ips: tuple[IPAddress, ...]
    ports: tuple[Port, ...]
    # The target's own environment, for env; not kept in the kernel.
    target_env: tuple[str, ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        validate_name(self.source, "endpoint name")
        validate_name(self.target, "endpoint name")
        validate_alias(self.alias)
        if self.source == self.target:
            raise SpecError("an endpoint cannot link to itself", self.source, None)
        # A link is kept in the kernel as its flows, which pair addresses of one
        # IP version: an address with no partner of its version is no part of it
        # (an IPv4-only source links to the IPv4 address of a dual-stack target).
        shared = {ip.version for ip in self.source_ips} & {ip.version for ip in self.target_ips}
        object.__setattr__(self, "source_ips", tuple(ip for ip in self.source_ips if ip.version in shared))
        object.__setattr__(self, "target_ips", tuple(ip for ip in self.target_ips if ip.version in shared))

    def __str__(self) -> str:
        return f"{self.source} -> {self.target}:{self.alias}"

    @property
    def comment(self) -> str:
        """How the kernel elements name their owner: ``web02>db01:db``."""
        return f"{self.source}>{self.target}:{self.alias}"

    @property
    def target_ip(self) -> IPAddress:
        """The target's IPv4 address, as Docker's link environment gives it."""
        return next(ip for ip in self.target_ips if ip.version == 4)

    @property
    def hosts_line(self) -> str:
        return hosts_line(self.alias, self.target, self.target_ip)

    @property
    def env(self) -> list[str]:
        """The environment Docker would inject into the source (see :func:`link_env`)."""
        return link_env(self.source, self.alias, self.target_ip,
                        [f"{port}/{proto.value}" for port, proto in self.ports], self.target_env)

    def flows(self) -> list[tuple[IPAddress, IPAddress, Protocol, int]]:
        """(source address, target address, protocol, port) for every allowed flow."""
        pairs = [(s, t) for s in self.source_ips for t in self.target_ips if s.version == t.version]
        return [(s, t, proto, port) for s, t in pairs for port, proto in self.ports]


def parse_comment(comment: str) -> tuple[str, str, str]:
    """``web02>db01:db`` -> ("web02", "db01", "db")."""
    source, _, rest = comment.partition(">")
    target, _, alias = rest.partition(":")
    return source, target, alias


Flow = tuple[IPAddress, IPAddress, Protocol, int]  # source, target, protocol, port


def links_from_flows(flows: dict[str, list[Flow]]) -> list[Link]:
    """The links that kernel elements or rules describe, one flow each, by comment
    (how both backends read links back)."""
    def by_version(addresses: set[IPAddress]) -> tuple[IPAddress, ...]:
        return tuple(sorted(addresses, key=lambda ip: ip.version))

    links = []
    for comment, parts in flows.items():
        source, target, alias = parse_comment(comment)
        links.append(Link(source, target, alias, by_version({p[0] for p in parts}),
                          by_version({p[1] for p in parts}),
                          tuple(sorted({(port, proto) for _, _, proto, port in parts}, key=port_order))))
    return links

"""Docker's text forms of published ports: ``docker ps``'s PORTS column.

Pure: no kernel, no I/O. The algorithm is docker/cli's
``DisplayablePorts`` (cli/command/formatter/container.go), and
tests/test_docker_format.py holds it to docker/cli's own test cases.
"""

from __future__ import annotations

from collections.abc import Iterable

from .model import Binding
from .spec import IPAddress, PortSpec, format_ip

__all__ = ["PortSummary", "displayable_ports", "ps_ports"]

# One port of a container as Docker's API lists it: (container port, protocol,
# host IP or None for an exposed port without a binding, host port).
PortSummary = tuple[int, str, "IPAddress | None", int]


def ps_ports(bindings: Iterable[Binding], exposed: Iterable[str | PortSpec] = ()) -> str:
    """``docker ps``'s PORTS column for one endpoint: its bindings, then
    (``--expose``) ports without a binding as ``9000/tcp``. A same-port range
    (:attr:`Binding.count`) shows exactly as its single ports would, unexpanded."""
    ports: list[_Run] = [(b.container_port, b.proto.value, b.host_ip, b.host_port, b.count) for b in bindings]
    exposed = list(exposed)
    bound = {(port, proto) for first, proto, _, _, count in ports if exposed
             for port in range(first, first + count)}
    for item in exposed:
        spec = item if isinstance(item, PortSpec) else PortSpec.parse_exposed(item)
        ports += [(port, spec.proto.value, None, 0, 1) for port in spec.container_ports
                  if (port, spec.proto.value) not in bound]
    return _displayable(ports)


def displayable_ports(ports: Iterable[PortSummary]) -> str:
    """docker/cli's ``DisplayablePorts``.

    Sorted by container port, host IP (none first, then IPv4, then IPv6, by
    address), host port, protocol. A binding whose host port differs from its
    container port is listed on its own, after everything else
    (``1.2.3.4:8887->9998/udp``); the others are grouped by host IP and
    protocol, and a group's consecutive ports are shown as one range
    (``1.2.3.4:9998-9999->9998-9999/udp``, ``9998-9999/udp``), groups in the
    order they were first seen.
    """
    return _displayable((*port, 1) for port in ports)


# A PortSummary and how many ports it stands for: the ``count`` container ports
# from its own on, each on the same host port (a same-port range), or 1.
_Run = tuple[int, str, "IPAddress | None", int, int]


def _displayable(ports: Iterable[_Run]) -> str:
    """:func:`displayable_ports` of runs: as of their ports one by one. A run's
    ports are consecutive, and no other port of its host IP and protocol lies
    between them (it would catch the same packets), so it extends a group at
    its first port just as its ports would one after the other."""
    groups: dict[tuple[IPAddress | None, str], list[int]] = {}  # key -> [first, last]
    result: list[str] = []
    host_mappings: list[str] = []
    for container_port, proto, host_ip, host_port, count in sorted(ports, key=_port_order):
        if host_ip is not None and host_port != container_port:
            host_mappings.append(f"{format_ip(host_ip)}:{host_port}->{container_port}/{proto}")
            continue
        key = (host_ip, proto)
        group = groups.get(key)
        last = container_port + count - 1
        if group is None:
            groups[key] = [container_port, last]
        elif container_port == group[1] + 1:
            group[1] = last
        else:
            result.append(_group(key, *group))
            groups[key] = [container_port, last]  # a new run, in the key's first place
    return ", ".join(result + [_group(key, *g) for key, g in groups.items()] + host_mappings)


def _port_order(port: _Run) -> tuple[object, ...]:
    container_port, proto, host_ip, host_port, _ = port
    ip_order = (0, 0) if host_ip is None else (host_ip.version, int(host_ip))
    return (container_port, ip_order, host_port, proto)


def _group(key: tuple[IPAddress | None, str], first: int, last: int) -> str:
    host_ip, proto = key
    ports = str(first) if first == last else f"{first}-{last}"
    if host_ip is not None:
        return f"{format_ip(host_ip)}:{ports}->{ports}/{proto}"
    return f"{ports}/{proto}"

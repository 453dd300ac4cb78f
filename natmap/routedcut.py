"""Which routed flows a change forbids: the container ports a change closes to routed traffic.

A routed binding (:class:`~natmap.model.RoutedBinding`) opens its container
address, protocol and port(s) to flows routed from outside its bridge, and
the rule that lets such a flow in marks it (``ROUTED_CT_MARK``, see
docs/kernel.md). When the binding goes (unpublished, or its bridge left
``routed``), the marked flows to those ports must end, as a DNATed flow ends
with its binding, unless the table still opens the port: another routed
binding of the same container port (published again in the same change), or
a bridge in ``nat-unprotected`` mode for the binding's IP family, which lets
every routed flow of that family in.
"""

from __future__ import annotations

from collections.abc import Iterable

from .model import RoutedBinding, Table


def closed_routed(table: Table, deleted: Iterable[RoutedBinding]) -> list[RoutedBinding]:
    """The routed bindings of ``deleted`` whose container ports ``table`` (as
    the change left it) no longer opens to routed traffic, one binding a port
    where only some ports of a same-port range are closed."""
    deleted = list(deleted)
    if not deleted:
        return []
    unprotected = [(table.bridges[g.bridge], version) for g in table.gateways.values() for version in (4, 6)
                   if g.mode_of(version) == "nat-unprotected" and g.bridge in table.bridges]
    still_open: dict[tuple[object, str], list[tuple[int, int]]] = {}
    for b in table.held_bindings():
        if isinstance(b, RoutedBinding):
            still_open.setdefault((b.container_ip, b.proto.value), []).append(
                (b.container_port, b.container_port + b.count - 1))
    closed: list[RoutedBinding] = []
    for b in deleted:
        if any(version == b.container_ip.version and bridge.contains(b.container_ip)
               for bridge, version in unprotected):
            continue  # every routed flow of its family passes there
        spans = still_open.get((b.container_ip, b.proto.value))
        if not spans:
            closed.append(b)
            continue
        ports = [p for p in range(b.container_port, b.container_port + b.count)
                 if not any(first <= p <= last for first, last in spans)]
        if len(ports) == b.count:
            closed.append(b)
        else:  # a single port is covered whole or not at all; a range's ports are its own bindings
            closed += [b.at(p) for p in ports]  # type: ignore[misc]  # at() keeps the kind
    return closed

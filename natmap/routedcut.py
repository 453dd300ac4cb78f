"""Which routed flows a change forbids: the container ports a change closes to
routed traffic, and the bridges (per IP family) it closes to direct flows.

A routed binding (:class:`~natmap.model.RoutedBinding`) opens its container
address, protocol and port(s) to flows routed from outside its bridge, and
the rule that lets such a flow in marks it (``ROUTED_CT_MARK``, see
docs/kernel.md). When the binding goes (unpublished, or its bridge left
``routed``), the marked flows to those ports must end, as a DNATed flow ends
with its binding, unless the table still opens the port: another routed
binding of the same container port (published again in the same change), or
a bridge in ``nat-unprotected`` mode for the binding's IP family, which lets
every routed flow of that family in.

A bridge in ``nat-unprotected`` mode lets every direct flow in (one routed to
a container address, not DNATed), and a trusted interface's pass in ``nat``
and ``routed``. When a change forbids them (the family's mode leaves
``nat-unprotected``; an interface is no longer trusted), those flows must
end too: see :func:`closed_direct`.
"""

from __future__ import annotations

from collections.abc import Iterable

from .model import Gateway, RoutedBinding, Table

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (as natmap.host)
if TYPE_CHECKING:
    from typing import Any


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


def closed_direct(table: Table, deleted: Iterable[Gateway]) -> list[tuple[int, tuple[Any, ...], tuple[Any, ...]]]:
    """The direct flows a change forbids, as (IP version, the bridge's subnets
    of that version, every subnet of ``table``'s bridges): one for each bridge
    and family whose old gateway setting (a ``deleted`` one; a setting only
    added had the default ``nat``, which forbids them all already) let direct
    flows in that the setting ``table`` (as the change left it) holds does not:
    the family left ``nat-unprotected``, or (``nat``, ``routed``) an
    interface is trusted no more. Conntrack cannot tell which interface a
    flow came in on, so every direct flow of the family is cut, and the
    protection takes up again those still allowed (see docs/kernel.md)."""
    cuts: list[tuple[int, tuple[Any, ...], tuple[Any, ...]]] = []
    everywhere = tuple(net for bridge in table.bridges.values() for net in bridge.subnets)
    for old in deleted:
        bridge = table.bridges.get(old.bridge)
        if bridge is None:
            continue  # the bridge left the table: nothing guards it now
        new = table.gateways.get(old.bridge) or Gateway(old.bridge)
        untrusted = set(old.trusted) - set(new.trusted)
        for version in (4, 6):
            if new.mode_of(version) == "nat-unprotected":
                continue  # everything passes still
            if old.mode_of(version) == "nat-unprotected" or untrusted:
                subnets = tuple(net for net in bridge.subnets if net.version == version)
                if subnets:
                    cuts.append((version, subnets, everywhere))
    return cuts

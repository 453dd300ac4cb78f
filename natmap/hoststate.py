"""The host settings natmap's rules need, as state: derived from the store's
items, checked by ``check()``, ensured on every write and by ``repair()``.

- ``route_localnet=1`` on every bridge natmap masquerades for (127.0.0.1
  bindings are routed to the bridge);
- the local ``::1`` route on every bridge with an IPv6 subnet ([::1] bindings);
- br_netfilter's IP hooks (``bridge-nf-call-iptables``/``-ip6tables``) when a
  bridge is isolated (bridged traffic must reach the forward chain).

Each is idempotent: setting what is already set changes nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .host import Host

from .model import Bridge, Isolation, Item

__all__ = ["crash_point", "ensure", "precheck", "problems"]


def crash_point(step: str) -> None:
    """A test seam: die here, at once, as ``kill -9`` would, when the
    environment variable ``NATMAP_CRASH_AT`` names this step (the crash tests
    kill a publish at every step of a change to prove it recoverable)."""
    if os.environ.get("NATMAP_CRASH_AT") == step:
        import signal  # here only: its enum classes are most of a ms of every natmap process's start

        os.kill(os.getpid(), signal.SIGKILL)


def _needed(items: Iterable[Item]) -> tuple[list[Bridge], bool]:
    items = list(items)
    return [i for i in items if isinstance(i, Bridge)], any(isinstance(i, Isolation) for i in items)


def problems(host: Host, items: Iterable[Item]) -> list[str]:
    """What is not set as the items need, one line each."""
    bridges, isolated = _needed(items)
    found = []
    for bridge in bridges:
        if not host.interface_exists(bridge.name):
            found.append(f"bridge {bridge.name} does not exist (its bindings cannot work)")
            continue
        if not host.route_localnet_enabled(bridge.name):
            found.append(f"net.ipv4.conf.{bridge.name}.route_localnet is 0, not 1")
        if any(net.version == 6 for net in bridge.subnets) and not host.loopback6_present(bridge.name):
            found.append(f"the local ::1 route on {bridge.name} is missing")
    if isolated:
        try:
            if not host.bridge_hooks_enabled():
                found.append("net.bridge.bridge-nf-call-iptables/-ip6tables are not both 1")
        except OSError:
            found.append("br_netfilter is not loaded (net.bridge.bridge-nf-call-iptables is missing)")
    return found


def precheck(host: Host, items: Iterable[Item]) -> None:
    """Raise, before any kernel change, if a setting the items need cannot be
    written (``/proc/sys`` read-only, no privilege). Nothing is written."""
    bridges, isolated = _needed(items)
    for bridge in bridges:
        if host.interface_exists(bridge.name) and not host.route_localnet_enabled(bridge.name):
            host.sysctl_writable(f"net/ipv4/conf/{bridge.name}/route_localnet")
    if isolated:
        host.check_bridge_hooks()
        if not host.bridge_hooks_enabled():
            host.sysctl_writable("net/bridge/bridge-nf-call-iptables")


def ensure(host: Host, items: Iterable[Item], *, routes: bool = True) -> list[str]:
    """Set what the items need and is not set; return what was set. With
    ``routes=False`` the ``::1`` routes are left to repair (a netlink round
    trip per bridge): a write ensures them only when it adds a bridge."""
    bridges, isolated = _needed(items)
    done = []
    for bridge in bridges:
        if not host.interface_exists(bridge.name):
            continue  # reported by problems(); its bindings come back with the bridge
        if not host.route_localnet_enabled(bridge.name):
            host.enable_route_localnet(bridge.name)
            done.append(f"net.ipv4.conf.{bridge.name}.route_localnet=1")
        crash_point("host-route_localnet")
        if routes and any(net.version == 6 for net in bridge.subnets) and not host.loopback6_present(bridge.name):
            host.enable_loopback6(bridge.name)
            done.append(f"the local ::1 route on {bridge.name}")
        crash_point("host-loopback6")
    if isolated and not host.bridge_hooks_enabled():
        host.hook_bridged_traffic()
        done.append("net.bridge.bridge-nf-call-iptables=1, -ip6tables=1")
    crash_point("host-bridge-hooks")
    return done

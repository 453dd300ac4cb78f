"""What is (or is to be) published: bindings, and their Docker text forms.

Pure: no kernel, no I/O, no pyroute2, iptc or nftables.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass

from .spec import IPAddress, Protocol, format_ip

__all__ = ["Binding"]


@dataclass(frozen=True, slots=True)
class Binding:
    """One published port: ``host_ip:host_port`` -> ``container_ip:container_port``.

    ``str()`` is the host side as ``docker port`` prints it: ``0.0.0.0:32768``
    or ``[::]:9876``. :meth:`port_line` and :meth:`ps_entry` give Docker's
    other two forms.
    """

    endpoint: str
    proto: Protocol
    host_ip: IPAddress
    host_port: int
    container_ip: IPAddress
    container_port: int

    def __post_init__(self) -> None:
        for name in ("host_ip", "container_ip"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, ipaddress.ip_address(value))
        object.__setattr__(self, "proto", Protocol(self.proto))

    def __str__(self) -> str:
        return f"{format_ip(self.host_ip)}:{self.host_port}"

    @property
    def container_port_text(self) -> str:
        """The container side as Docker keys it: ``5000/tcp``."""
        return f"{self.container_port}/{self.proto.value}"

    def port_line(self) -> str:
        """``docker port NAME``'s line: ``5000/tcp -> 0.0.0.0:32768``."""
        return f"{self.container_port_text} -> {self}"

    def ps_entry(self) -> str:
        """One entry of ``docker ps``'s PORTS column: ``0.0.0.0:32768->5000/tcp``."""
        return f"{self}->{self.container_port_text}"

    def sort_key(self) -> object:
        """The order ``docker port`` prints in: a natural sort of :meth:`port_line`."""
        return natural_key(self.port_line())


def _natural_compare(a: str, b: str) -> int:
    """Docker's ``sortorder.NaturalLess`` as a comparison: runs of digits
    compare as numbers when both sides have one, everything else as text."""
    for x, y in zip(_CHUNKS.findall(a), _CHUNKS.findall(b)):
        if x.isdigit() and y.isdigit() and int(x) != int(y):
            return -1 if int(x) < int(y) else 1
        if x != y:
            return -1 if x < y else 1
    return (len(a) > len(b)) - (len(a) < len(b))


_CHUNKS = re.compile(r"[0-9]+|[^0-9]+")
natural_key = functools.cmp_to_key(_natural_compare)

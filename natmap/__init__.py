"""natmap: Docker-style port publishing and container links, applied to the
Linux kernel atomically through nftables or iptables, without Docker.

Everything public is importable from here; the submodules are private.
Importing natmap loads no kernel library: pyroute2, python-iptables and
libnftables are imported only when a backend needs them.
"""

from .engine import NatMap, TableMissingError, Transaction
from .errors import BackendError, ConflictError, NatmapError, SpecError
from .links import Link, hosts_line, link_env
from .plan import Binding, Endpoint
from .sandbox import Sandbox
from .spec import LinkSpec, PortRange, PortSpec, Protocol, validate_name

__all__ = [
    "Binding",
    "BackendError",
    "ConflictError",
    "Endpoint",
    "Link",
    "NatMap",
    "Sandbox",
    "TableMissingError",
    "Transaction",
    "hosts_line",
    "link_env",
    "LinkSpec",
    "NatmapError",
    "PortRange",
    "PortSpec",
    "Protocol",
    "SpecError",
    "validate_name",
]

__version__ = "0.1.0"

"""natmap: Docker-style port publishing and container links, applied to the
Linux kernel atomically through nftables or iptables, without Docker.

Everything public is importable from here; the submodules are private.
Importing natmap loads no kernel library: pyroute2, python-iptables and
libnftables are imported only when a backend needs them.
"""

import gc as _gc

# Importing natmap makes thousands of objects (its dataclasses' generated methods,
# compiled patterns) and no garbage: the 30-odd collections they would set off on
# the way find nothing, a tenth of the import (4-5 ms of a `natmap port` or CNI ADD).
# Collection is off for these imports only, and back as the caller had it.
_collecting = _gc.isenabled()
_gc.disable()
try:
    from .engine import NatMap, Transaction
finally:
    if _collecting:
        _gc.enable()
    del _collecting
from .errors import (BackendError, CommandLineError, ConfigError, ConflictError, DriftError, LockError, LockTimeoutError,
                     Loopback6Error, NatmapError, NestedTransactionError, NotFoundError, PrivilegeError,
                     SandboxError, SpecError, StoreCorruptError, StoreError, TableMissingError, TransactionClosedError,
                     TransactionOpenError, UnknownInterfaceError, UsageError, WrongNamespaceError)
from .links import Link, hosts_line, link_env
from .model import Binding, Bridge, Change, Drift, Endpoint, Gateway, GatewayMode, Isolation, RoutedBinding
from .spec import LinkSpec, PortRange, PortSpec, Protocol, validate_name

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:  # what type checkers see; at run time __getattr__ imports them on first use
    from .config import Config
    from .sandbox import Sandbox

__all__ = [
    "BackendError",
    "Binding",
    "Bridge",
    "Change",
    "CommandLineError",
    "Config",
    "ConfigError",
    "ConflictError",
    "Drift",
    "DriftError",
    "Endpoint",
    "Gateway",
    "GatewayMode",
    "hosts_line",
    "Isolation",
    "Link",
    "link_env",
    "LinkSpec",
    "LockError",
    "LockTimeoutError",
    "Loopback6Error",
    "NatMap",
    "NatmapError",
    "NestedTransactionError",
    "NotFoundError",
    "PortRange",
    "PortSpec",
    "PrivilegeError",
    "Protocol",
    "RoutedBinding",
    "Sandbox",
    "SandboxError",
    "SpecError",
    "StoreCorruptError",
    "StoreError",
    "TableMissingError",
    "Transaction",
    "TransactionClosedError",
    "TransactionOpenError",
    "UnknownInterfaceError",
    "UsageError",
    "validate_name",
    "WrongNamespaceError",
]

__version__ = "0.1.0"


if not TYPE_CHECKING:  # hidden from type checkers, which would take any name as valid

    def __getattr__(name: str) -> object:
        # Imported on first use: they pull in tomllib, subprocess and threads,
        # which `import natmap` (and `natmap port`) do not need.
        if name == "Config":
            from .config import Config

            return Config
        if name == "Sandbox":
            from .sandbox import Sandbox

            return Sandbox
        raise AttributeError(f"module 'natmap' has no attribute {name!r}")

"""natmap's one error tree.

Everything natmap raises on purpose is a :class:`NatmapError`, one class per
condition::

    NatmapError
    ├── SpecError (ValueError)          a spec, name or value natmap cannot read
    ├── ConfigError (ValueError)        a declarative file natmap cannot read (names file and key)
    ├── ConflictError                   collides with what is there (a port, a name)
    ├── NotFoundError (LookupError)     what a call names is not there
    │   ├── TableMissingError           (no longer raised: a table not made yet reads empty)
    │   └── UnknownInterfaceError       no such bridge or interface
    ├── BackendError                    the packet filter or the kernel refused or failed
    │   └── PrivilegeError (PermissionError)  ... for want of CAP_NET_ADMIN
    ├── Loopback6Error                  [::1] bindings while bridged IPv6 is hooked
    ├── DriftError                      the kernel is not as natmap made it (natmap check)
    ├── StoreError                      natmap's desired-state store cannot be read or written
    │   └── StoreCorruptError           ... its file is not a natmap store (natmap adopt rebuilds it)
    ├── CommandLineError                the natmap command line does not parse
    ├── UsageError                      the API used in a way it cannot serve
    │   ├── TransactionOpenError        a transaction is already open on the NatMap
    │   │   └── NestedTransactionError  ... by this thread, on this table: waiting would never end
    │   ├── TransactionClosedError      a transaction used outside its with block
    │   └── WrongNamespaceError         a NatMap called from another network namespace
    ├── LockError                       the table's lock directory is unsafe or unusable
    │   └── LockTimeoutError            another process (pid) held the lock past lock_timeout
    └── SandboxError                    the sandbox could not build or run what was asked

Errors from the libraries natmap drives are translated at one boundary per
library, with ``raise ... from exc``, so callers never need to know which
library sits underneath: libnftables in ``natmap/backends/nft.py``
(``_check``), python-iptables in ``natmap/backends/iptables.py``
(``_iptc_errors``), pyroute2 in ``natmap/host.py`` (``_netlink``).
"""

from __future__ import annotations

__all__ = ["NatmapError", "SpecError", "ConflictError", "BackendError", "NotFoundError", "PrivilegeError",
           "SandboxError", "TableMissingError", "UnknownInterfaceError", "Loopback6Error", "DriftError",
           "UsageError", "TransactionOpenError", "TransactionClosedError", "WrongNamespaceError",
           "ConfigError", "CommandLineError", "LockError", "LockTimeoutError", "NestedTransactionError",
           "StoreError", "StoreCorruptError"]

# How much of a long input an error message shows on each side of the fault.
_CONTEXT = 40


class NatmapError(Exception):
    """The root of every error natmap raises."""


class SpecError(NatmapError, ValueError):
    """A spec (``-p``, ``--expose``, ``--link``, a name) that natmap cannot read.

    ``str()`` gives the message, then the input with a caret under the
    offending columns, the way pypa/packaging reports requirement errors::

        invalid port 70000 (must be 0-65535) in '70000:80'
            70000:80
            ^^^^^

    A check of a whole value outside the grammar (a table or interface name,
    an address) has no columns to point at: it is raised with ``start=None``
    and prints the message and the quoted value only. ``start`` and ``end``
    are then None.
    """

    def __init__(self, message: str, text: str, start: int | None = 0, end: int | None = None) -> None:
        self.message = message
        self.text = text
        self.start: int | None = None
        self.end: int | None = None
        if start is not None:
            self.start = max(0, min(start, len(text)))
            self.end = max(self.start + 1, end if end is not None else self.start + 1)
        super().__init__(message, text, self.start, self.end)

    def __str__(self) -> str:
        if self.start is None or self.end is None:
            return f"{self.message} in {_quote(self.text)}"
        shown, caret_at, caret_len = _excerpt(self.text, self.start, self.end)
        return (
            f"{self.message} in {_quote(self.text)}\n"
            f"    {shown}\n"
            f"    {' ' * caret_at}{'^' * caret_len}"
        )


class ConflictError(NatmapError):
    """A change that collides with what is already there (a port, a name)."""


class BackendError(NatmapError):
    """The packet-filter backend or the kernel refused or failed a change."""


class NotFoundError(NatmapError, LookupError):
    """What a call names is not there: a table, an endpoint, a port, a link."""


class TableMissingError(NotFoundError):
    """The NatMap's table is not in the kernel: nothing was published with it
    in this network namespace, or someone deleted it."""


class UnknownInterfaceError(NotFoundError):
    """A bridge or interface that does not exist in the namespace."""


class StoreError(NatmapError):
    """natmap's desired-state store (SQLite, see docs/kernel.md) cannot be read
    or written: a full disk, a read-only file system, a lock, a bad file."""


class StoreCorruptError(StoreError):
    """The store's file is not a natmap store any more. The kernel's rules are
    untouched; ``natmap adopt`` rebuilds the store from them."""


class Loopback6Error(NatmapError):
    """A ``[::1]`` binding cannot work with the namespace's settings: while
    bridged IPv6 passes the IP hooks (``net.bridge.bridge-nf-call-ip6tables=1``,
    which isolating a bridge turns on), br_netfilter turns replies back to
    ``::1`` before the kernel's loopback check drops them."""


class DriftError(NatmapError):
    """The kernel is not what natmap's store says it should be (``natmap check``,
    ``check(strict=True)``). ``drift`` is the :class:`~natmap.Drift` (or its
    text); ``data`` holds the drift as the command's JSON output gives it."""

    def __init__(self, drift: object, data: dict[str, object] | None = None) -> None:
        super().__init__(str(drift))
        self.drift = drift
        self.data = data or {}


class CommandLineError(NatmapError):
    """The ``natmap`` command line does not parse (the command exits 2)."""


class UsageError(NatmapError):
    """natmap's API was used in a way it cannot serve."""


class TransactionOpenError(UsageError):
    """A transaction is already open on this NatMap (one at a time per instance)."""


class TransactionClosedError(UsageError):
    """A transaction was used outside its ``with`` block."""


class WrongNamespaceError(UsageError):
    """A NatMap was called from a thread in another network namespace than
    the one it was made for (pass ``netns=`` to work in another one)."""


class SandboxError(NatmapError):
    """The sandbox could not build or run what was asked."""


class ConfigError(NatmapError, ValueError):
    """A declarative file natmap cannot read: missing, not UTF-8, not TOML,
    nested too deeply. Its message starts with the file's name."""


class LockError(NatmapError):
    """natmap's table lock cannot be taken: its directory is unsafe or unusable."""


class LockTimeoutError(LockError):
    """Another process (``pid``, when the kernel names it) held the table's
    lock for longer than the NatMap's ``lock_timeout``."""

    def __init__(self, message: str, pid: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid


class NestedTransactionError(TransactionOpenError):
    """A call that changes a table, made by the thread that already holds
    that table's lock (inside a ``with nm.transaction():`` block, through the
    same or another NatMap): waiting would never end, so natmap refuses."""


class PrivilegeError(BackendError, PermissionError):
    """The kernel refused for want of privilege: natmap needs CAP_NET_ADMIN in
    the network namespace it works in (and CAP_SYS_ADMIN to enter another;
    python-iptables CAP_NET_RAW, for its raw socket). The message names the
    capability refused."""

    def __init__(self, what: str, needs: str = "CAP_NET_ADMIN") -> None:
        super().__init__(f"{what}: permission denied; natmap needs {needs} in the "
                         "network namespace (run it as root)")


def _printable(char: str) -> str:
    """One character as it can be shown on one terminal line."""
    return char if char.isprintable() else repr(char)[1:-1]


def _quote(text: str) -> str:
    """The input in quotes, escaped, and shortened when it is very long."""
    shown = "".join(_printable(c) for c in text)
    if len(shown) > 2 * _CONTEXT + 20:
        shown = shown[: 2 * _CONTEXT] + "..."
    return f"'{shown}'"


def _excerpt(text: str, start: int, end: int) -> tuple[str, int, int]:
    """A window of ``text`` around ``start:end``, escaped, with the caret's place.

    Returns the shown text, the caret's column in it and the caret's width.
    """
    end = min(end, start + 2 * _CONTEXT)  # a very long fault: show its start
    lo = max(0, start - _CONTEXT)
    hi = min(len(text), max(end, start + 1) + _CONTEXT)
    head = "..." if lo > 0 else ""
    tail = "..." if hi < len(text) else ""
    before = "".join(_printable(c) for c in text[lo:start])
    fault = "".join(_printable(c) for c in text[start:min(end, hi)])
    after = "".join(_printable(c) for c in text[min(end, hi):hi])
    return head + before + fault + after + tail, len(head) + len(before), max(1, len(fault))

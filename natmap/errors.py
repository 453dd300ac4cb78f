"""natmap's one error tree.

Everything natmap raises on purpose is a :class:`NatmapError`. Errors from the
libraries natmap drives (libnftables, python-iptables, pyroute2) are
translated where natmap calls them, with ``raise ... from exc``, so callers
never need to know which library sits underneath.
"""

from __future__ import annotations

__all__ = ["NatmapError", "SpecError", "ConflictError", "BackendError", "NotFoundError", "PrivilegeError",
           "SandboxError", "TableMissingError", "UnknownInterfaceError", "ConfigError", "LockError",
           "LockTimeoutError", "NestedTransactionError"]

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
    """

    def __init__(self, message: str, text: str, start: int = 0, end: int | None = None) -> None:
        self.message = message
        self.text = text
        self.start = max(0, min(start, len(text)))
        self.end = max(self.start + 1, end if end is not None else self.start + 1)
        super().__init__(message, text, self.start, self.end)

    def __str__(self) -> str:
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


class NestedTransactionError(LockError):
    """A call that changes a table, made by the thread that already holds
    that table's lock (inside a ``with nm.transaction():`` block, through the
    same or another NatMap): waiting would never end, so natmap refuses."""


class PrivilegeError(BackendError, PermissionError):
    """The kernel refused for want of privilege: natmap needs CAP_NET_ADMIN in
    the network namespace it works in (and CAP_SYS_ADMIN to enter another)."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what}: permission denied; natmap needs CAP_NET_ADMIN in the "
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

"""The packet-filter backends: ``nft`` (libnftables, the default) and
``iptables`` (python-iptables, the legacy xtables interface). Both render the
same :class:`~natmap.model.Change` and read back the same
:class:`~natmap.model.Table`; each imports its library only when chosen."""

from __future__ import annotations

from ..errors import BackendError, NatmapError, SpecError

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (2 ms of a `natmap` command)
if TYPE_CHECKING:
    from typing import Any

BACKENDS = ("nft", "iptables", "auto")


def make_backend(name: str, table: str, session: Any) -> Any:
    """The backend called ``name``; ``auto`` is the backend the table already
    exists on (in any process's past), else nft when libnftables loads and the
    kernel answers it, else iptables. So ``auto`` never makes a second copy of
    a table; and it raises BackendError rather than guess when the table is on
    nft but libnftables cannot load, or on both backends."""
    if name not in BACKENDS:
        raise SpecError(f"unknown backend (choose {', '.join(BACKENDS)})", str(name))
    if name == "auto":
        return _sticky(table, session)
    if name == "nft":
        try:
            from .nft import NftBackend

            return NftBackend(table, session)
        except NatmapError:
            raise
        except (ImportError, OSError) as exc:
            raise BackendError(f"the nft backend needs libnftables and its Python binding: {exc}") from exc
    return _iptables(table, session)


def _iptables(table: str, session: Any) -> Any:
    try:
        from .iptables import IptablesBackend

        return IptablesBackend(table, session)
    except NatmapError:
        raise
    except (ImportError, OSError) as exc:
        raise BackendError(f"the iptables backend needs python-iptables and libxtables: {exc}") from exc


def _sticky(table: str, session: Any) -> Any:
    """``auto``: where the table is, else where nft works, else iptables."""
    from .iptables import natmap_tables

    try:
        from .nft import NftBackend

        nft: Any = NftBackend(table, session)
        on_nft, failure = nft.exists(), None
    except NatmapError:
        raise
    except (ImportError, OSError) as exc:
        from ..host import nft_tables

        nft, on_nft, failure = None, table in nft_tables(), exc
    try:
        on_iptables = table in natmap_tables()
    except (ImportError, OSError):  # no python-iptables: no iptables table of natmap's either
        on_iptables = False
    if on_nft and on_iptables:
        raise BackendError(f"table {table!r} exists on both backends (nft and iptables); "
                           "pass backend='nft' or 'iptables'")
    if on_nft and nft is None:
        raise BackendError(f"table inet {table} exists on nft, but libnftables cannot load here "
                           f"({failure}); natmap will not make a second copy on iptables")
    if on_nft or (nft is not None and not on_iptables and nft.usable()):
        return nft
    return _iptables(table, session)

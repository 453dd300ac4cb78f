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
    """The backend called ``name``; ``auto`` is nft when libnftables loads and
    the kernel answers it, else iptables."""
    if name not in BACKENDS:
        raise SpecError(f"unknown backend (choose {', '.join(BACKENDS)})", str(name))
    if name in ("nft", "auto"):
        try:
            from .nft import NftBackend

            backend = NftBackend(table, session)
            if name == "nft" or backend.usable():
                return backend
        except NatmapError:
            raise
        except (ImportError, OSError) as exc:
            if name == "nft":
                raise BackendError("the nft backend needs libnftables and its Python binding: install the "
                                   "Debian package libnftables1 and the binding (Debian's python3-nftables, "
                                   f"or pip install pip-nftables), or use --backend iptables ({exc})") from exc
    try:
        from .iptables import IptablesBackend

        return IptablesBackend(table, session)
    except NatmapError:
        raise
    except (ImportError, OSError) as exc:
        raise BackendError(f"the iptables backend needs python-iptables and libxtables: {exc}") from exc

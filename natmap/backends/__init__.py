"""The packet-filter backends: ``nft`` (libnftables, the default) and
``iptables`` (python-iptables, the legacy xtables interface). Both implement
:class:`~natmap.backends.base.Backend`, the seam the engine calls through:
they render the same :class:`~natmap.model.Change` and read back the same
:class:`~natmap.model.Table`; each imports its library only when chosen.
``base.FakeBackend`` holds a table in memory, for tests."""

from __future__ import annotations

from ..errors import BackendError, NatmapError, SpecError

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (2 ms of a `natmap` command)
if TYPE_CHECKING:
    from .base import Backend

BACKENDS = ("nft", "iptables", "auto")


def make_backend(name: object, table: str) -> Backend:
    """The backend called ``name``; ``auto`` is nft when libnftables loads and
    the kernel answers it, else iptables. Any other name is a SpecError."""
    if name not in BACKENDS:
        raise SpecError(f"unknown backend (choose {', '.join(BACKENDS)})", str(name), None)
    if name in ("nft", "auto"):
        try:
            from .nft import NftBackend

            backend = NftBackend(table)
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

        return IptablesBackend(table)
    except NatmapError:
        raise
    except ModuleNotFoundError as exc:
        if exc.name != "iptc":
            raise
        # python-iptables is an extra (it builds a C extension): say how to get it.
        raise BackendError(f"the iptables backend needs python-iptables: pip install 'natmap[iptables]'"
                           f"{'' if name == 'iptables' else ' (and the nft backend is not usable here)'}") from exc
    except (ImportError, OSError) as exc:
        raise BackendError(f"the iptables backend needs python-iptables and libxtables: {exc}") from exc

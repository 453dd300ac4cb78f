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
    """The backend called ``name``; ``auto`` is the backend the table already
    exists on (in any process's past), else nft when libnftables loads and the
    kernel answers it, else iptables. So ``auto`` never makes a second copy of
    a table; and it raises BackendError rather than guess when the table is on
    nft but libnftables cannot load, or on both backends. Any other name is a
    SpecError."""
    if name not in BACKENDS:
        raise SpecError(f"unknown backend (choose {', '.join(BACKENDS)})", str(name), None)
    if name == "auto":
        return _sticky(table)
    if name == "nft":
        try:
            from .nft import NftBackend

            return NftBackend(table)
        except NatmapError:
            raise
        except (ImportError, OSError) as exc:
            raise BackendError("the nft backend needs libnftables and its Python binding: install the "
                               "Debian package libnftables1 and the binding (Debian's python3-nftables, "
                               f"or pip install pip-nftables), or use --backend iptables ({exc})") from exc
    return _iptables(table, str(name))


def iptables_in_use() -> bool:
    """Whether this namespace's legacy iptables filter table was ever loaded
    and holds more than its built-in chains' policies: where it was not, or
    holds nothing (loaded by a mere ``iptables-legacy -L``, or emptied by
    ``natmap remove``), natmap's iptables backend has no chains (it makes its
    marker chain there first), and none need reading (which would cost
    importing the backend, a quarter of a plugin process, or reading the
    table with every change)."""
    try:
        with open("/proc/net/ip_tables_names", "rb", buffering=0) as f:  # bytes: fewer system calls, every change
            if b"filter" not in f.read().split():
                return False
    except OSError:
        return False
    return _filter_entries_beyond_policies()


def _filter_entries_beyond_policies() -> bool:
    """Whether the (loaded) IPv4 filter table has an entry besides one policy
    a built-in chain and the closing one: a rule or a chain of its own. Asked
    with the kernel's IPT_SO_GET_INFO, its size alone (what iptables asks
    first); any failure answers True, which only costs a read. Asked on a
    UDP socket, which any process may open: the kernel answers it on any
    AF_INET socket (ip_getsockopt passes it to netfilter, which wants
    CAP_NET_ADMIN alone), and a raw socket, as iptables opens, needs
    CAP_NET_RAW, which hardened runtimes drop."""
    import ctypes
    import struct

    import _socket  # the C module: no enums to import

    from ..netns import _libc as libc  # Python's getsockopt cannot pass the table's name in

    try:
        sock = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    except OSError:
        return True
    try:
        info = ctypes.create_string_buffer(b"filter", _IPT_GETINFO_SIZE)  # struct ipt_getinfo, the name set
        size = ctypes.c_uint32(_IPT_GETINFO_SIZE)
        if libc.getsockopt(sock.fileno(), _SOL_IP, _IPT_SO_GET_INFO, info, ctypes.byref(size)) != 0:
            return True
        (hooks,) = struct.unpack_from("=I", info.raw, 32)  # valid_hooks, after the 32-byte name
        (entries,) = struct.unpack_from("=I", info.raw, 76)  # num_entries, after hook_entry[5] and underflow[5]
        return bool(entries > bin(hooks).count("1") + 1)
    finally:
        sock.close()


_SOL_IP, _IPT_SO_GET_INFO, _IPT_GETINFO_SIZE = 0, 64, 84  # linux/netfilter_ipv4/ip_tables.h


def _iptables(table: str, name: str) -> Backend:
    try:
        from .iptables import IptablesBackend

        return IptablesBackend(table)
    except NatmapError:
        raise
    except ModuleNotFoundError as exc:
        if exc.name != "iptc":
            raise
        # python-iptables is an extra (it builds a C extension): say how to get it.
        raise BackendError(f"the iptables backend needs python-iptables: pip install 'natmap[iptables]' "
                           f"(from a clone: pip install '.[iptables]')"
                           f"{'' if name == 'iptables' else '; the nft backend is not usable here'}") from exc
    except (ImportError, OSError) as exc:
        raise BackendError(f"the iptables backend needs python-iptables and libxtables: {exc}") from exc


def _sticky(table: str) -> Backend:
    """``auto``: where the table is, else where nft works, else iptables."""
    from .iptables import natmap_tables

    try:
        from .nft import NftBackend

        nft: NftBackend | None = NftBackend(table)
        on_nft, failure = nft is not None and nft.exists(), None
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
    if nft is not None and (on_nft or (not on_iptables and nft.usable())):
        return nft
    return _iptables(table, "auto")

"""NatMap: publish, unpublish and read back bindings, one kernel transaction a change.

The desired state lives on disk (:mod:`natmap.store`); the kernel is checked
against it. How a change happens, every time:

1. take the table's lock (``flock`` on ``/run/natmap/<dev>-<inode>-<table>.lock``,
   named after the namespace's nsfs device and inode; released by the kernel
   if the process dies; see :mod:`natmap.locking`), so natmap processes
   change a table one at a time;
2. finish a change a dead process left pending in the store, if any;
3. get the table from the store (kept in memory while the store's version
   stays), and read the kernel unless its generation is the one recorded
   after natmap's last commit;
4. change it in memory (``model.Table`` checks conflicts and assigns ports and
   journals every step); check that the host settings it needs can be set;
5. record the change in the store as pending; apply one kernel transaction
   from what the kernel holds to what the store says (so drift found is
   repaired in it); ensure the host settings; mark the change done. On a
   failure the store and the memory are rolled back, so all agree again.
"""

from __future__ import annotations

import functools
import gc
import ipaddress
import operator
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext

from . import guest, hoststate
from .backends import make_backend
from .backends.nft import validate_table
from .errors import (BackendError, ConflictError, DriftError, LockTimeoutError, Loopback6Error, NatmapError,
                     NestedTransactionError, NotFoundError, SpecError, StoreCorruptError, TransactionClosedError,
                     WrongNamespaceError)
from .host import Session
from .links import Link
from .locking import LOCK_DIR, LOCK_TIMEOUT, describe_holder, discard, namespace_lock, table_lock
from .model import (Binding, Bindings, Bridge, Change, Drift, Endpoint, Gateway, Isolation, Item, PortPool, Slot,
                    Table, describe, docker_order, validate_ifname)
from .model import misheld  # a binding held in a form its bridge's gateway mode does not want
from .model import GatewayMode, RoutedBinding
from .netns import current as current_netns, entered as entered_netns, validate_name as validate_netns
from .netns import cookie as netns_cookie
from .routedcut import closed_direct, closed_routed  # the routed and direct flows a change forbids
from .spec import PortRange, PortSpec, Protocol, validate_name
from .store import Store, default_dir

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (2 ms of a `natmap` command)
if TYPE_CHECKING:
    from typing import Any, TypeVar

    from .backends.base import Backend, Generation
    from .config import Config
    from .host import Host, Isolated, Listener

    _F = TypeVar("_F", bound=Callable[..., Any])

__all__ = ["NatMap", "Transaction"]

_NO_LOOPBACK6 = (
    "[::1] bindings cannot work while bridged IPv6 passes the IP hooks "
    "(net.bridge.bridge-nf-call-ip6tables=1, which isolating a bridge turns on): "
    "br_netfilter turns replies back to ::1 before the kernel's loopback check drops "
    "them; publish on 127.0.0.1, or keep that sysctl at 0 and bridges unisolated")

_LOOPBACK6 = ipaddress.IPv6Address("::1")
_HOST_IP = operator.attrgetter("host_ip")
_ANY6 = ipaddress.IPv6Address("::")

_pauses = 0                     # natmap calls running with the collector paused, in every thread
_pause_lock = threading.Lock()
_resume = False                 # whether the first of them found collection on


@contextmanager
def _collection_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused inside, and back as it was
    once the last such block of any thread ends. A transaction of 10,000
    bindings makes some 100,000 objects (bindings, their keys, the store's
    rows, the kernel's text) and no reference cycle: the 150-odd collections
    they would set off find nothing, yet each full one walks every object of
    the process (a third to a half of a big publish's Python time, measured).
    Their objects are freed as before, by reference counts. Never around a
    wait (the table's lock): the collector is the whole process's."""
    _pause()
    try:
        yield
    finally:
        _unpause()


def _pause() -> None:
    global _pauses, _resume
    with _pause_lock:
        if not _pauses:
            _resume = gc.isenabled()
            gc.disable()
        _pauses += 1


def _unpause() -> None:
    global _pauses
    with _pause_lock:
        _pauses -= 1
        if not _pauses and _resume:
            gc.enable()


def _uncollected(method: _F) -> _F:
    """``method`` run inside :func:`_collection_paused`, without its generator
    (a fifth of a publish call's own cost: a transaction makes 250 of them)."""

    @functools.wraps(method)
    def paused(*args: Any, **kwargs: Any) -> Any:
        _pause()
        try:
            return method(*args, **kwargs)
        finally:
            _unpause()
    return paused  # type: ignore[return-value]


class NatMap:
    """Docker-style port publishing in one network namespace, through one table.

    ``NatMap()`` works in the calling thread's current network namespace with
    table ``natmap``; ``NatMap(table="lab1")`` gives an independent instance;
    ``NatMap(netns="name")`` works inside the named namespace (as made by
    ``ip netns add``; a name, never a path), ``NatMap(netns_path="/proc/PID/ns/net")``
    inside the namespace that file is; either is entered only for the length
    of each call.

    Threads: a NatMap may be shared between threads. Its calls take turns on
    the instance: a change waits while another thread's change (or
    transaction) runs, and a read never uses libnftables or the netlink
    sockets at the same time as another call. A thread that calls a change on
    a table while it holds that table's lock, inside ``with nm.transaction():``
    through this or another NatMap, gets a :class:`NestedTransactionError` at
    once instead of waiting for itself.

    Processes: changes to one table take turns through a lock file in
    ``lock_dir`` (default ``$NATMAP_LOCK_DIR``, else ``/run/natmap``; made mode
    0700, refused with a :class:`LockError` if another user could use it). A wait for another
    process or thread ends after ``lock_timeout`` seconds (default 30) with a
    :class:`LockTimeoutError` naming the holder's PID.

    The seams, for tests and for other packet filters or hosts: ``backend``
    is a backend's name (``nft``, ``iptables``, ``auto``) or an object that
    implements :class:`natmap.backends.base.Backend` (such as its
    ``FakeBackend``); ``host`` an object that implements
    :class:`natmap.host.Host` (such as ``FakeHost``), by default the real
    host.

    ``state_dir`` is where natmap's store lives (default ``$NATMAP_STATE_DIR``,
    else ``/var/lib/natmap`` for the root and named namespaces, ``/run/natmap``
    for anonymous ones); ``state_path`` is the store's file.
    """

    def __init__(self, table: str = "natmap", *, backend: str | Backend = "nft", netns: str | None = None,
                 netns_path: str | None = None, host: Host | None = None, lock_timeout: float = LOCK_TIMEOUT,
                 lock_dir: str | None = None, state_dir: str | None = None) -> None:
        self.table_name = validate_table(table)
        if netns is not None and netns_path is not None:
            raise SpecError("give netns (--netns, a name) or netns_path (--netns-path, a path), not both", str(netns), None)
        self.netns = None if netns is None else validate_netns(netns)
        self.netns_path = None if netns_path is None else _path(netns_path, "netns_path")
        if (isinstance(lock_timeout, bool) or not isinstance(lock_timeout, (int, float))
                or not 0 <= lock_timeout <= threading.TIMEOUT_MAX):
            raise SpecError("lock_timeout is a number of seconds, 0 or more", str(lock_timeout))
        self.lock_timeout = float(lock_timeout)
        self.lock_dir = os.environ.get("NATMAP_LOCK_DIR", LOCK_DIR) if lock_dir is None else _path(lock_dir, "lock_dir")
        self._busy = threading.RLock()  # the calls' turns (see the class doc)
        self._owner: int | None = None   # the thread in a transaction, if one is
        self._lock_path = ""             # the table's lock file, while it is held
        self._inside = threading.local()  # .home: this thread is in a _ns block of this instance
        self._kernel: Host = Session() if host is None else host
        with entered_netns(self.netns, ns_path=self.netns_path):
            self._home = current_netns()
            self._backend: Backend = (backend if not isinstance(backend, str) and hasattr(backend, "apply")
                                      else make_backend(backend, self.table_name))
        self._backend.lock_timeout = self.lock_timeout  # iptables: /run/xtables.lock waits no longer either
        self.backend_name = self._backend.name
        named = netns or _netns_name(self._home)
        where = named and ("root" if named == "/" else f"netns-{named}")
        self.state_path = os.path.join(state_dir or default_dir(named is not None),
                                       f"{where or _anonymous(self._home, self._in_ns(netns_cookie))}.{self.table_name}."
                                       f"{self.backend_name}.db")
        self._store = Store(self.state_path)
        self._bridges: dict[str, Bridge] = {}
        self._facts: dict[str, tuple[str | None, tuple[Any, ...]]] = {}  # bridge -> its kind and addresses
        self._forced: set[tuple[int, int, str, int]] = set()  # force=True keys of the change committing (stored)
        self._cache: Table | None = None     # the store's items, as of _cache_version
        self._cache_version: str | None = None
        self._view: _KernelView | None = None  # the kernel, when it was read for this change
        self._seen: Generation = None          # the generation when this change began
        self._others_seen: tuple[Generation, list[tuple[str, Table]]] | None = None  # see _others
        self._missing = True

    # --- the API -------------------------------------------------------------------

    def publish(self, endpoint: Endpoint, specs: Iterable[str | PortSpec] = (), *,
                publish_all: bool = False, force: bool = False) -> list[Binding]:
        """Publish ``specs`` (``-p`` values) and, with ``publish_all``, every exposed
        port (``-P``) of ``endpoint``. One kernel transaction. Returns the bindings
        made, assigned ports filled in, in ``docker port`` order (as :meth:`port`).

        Raises :class:`ConflictError` when a host port is held by a host socket
        (as Docker's "address already in use"; ``force=True`` takes it
        knowingly) or mapped by another natmap table of the namespace, and
        :class:`SpecError` for addresses Docker refuses (see docs/kernel.md)."""
        with self.transaction() as tx:
            return tx.publish(endpoint, specs, publish_all=publish_all, force=force)

    def unpublish(self, endpoint: str) -> list[Binding]:
        """Remove every binding and link of ``endpoint`` and their conntrack
        entries; return the bindings, in ``docker port`` order. Raises
        :class:`NotFoundError` if ``endpoint`` has neither here (``docker rm``'s
        "No such container")."""
        with self.transaction() as tx:
            return tx.unpublish(endpoint)

    def port(self, endpoint: str, port: int | str | None = None) -> list[Binding]:
        """The bindings of ``endpoint`` as ``docker port`` lists them, read back from
        the kernel; with ``port`` (``5000``, ``"5000"``, ``"5000/udp"``) only those.

        Raises :class:`NotFoundError` when ``endpoint`` has no binding or link
        here ("No such endpoint: NAME"), or ``port`` none of its bindings
        ("No public port '5000/tcp' published for NAME", as ``docker port``)."""
        validate_name(endpoint, "endpoint name")
        wanted = None if port is None else _container_port(port)
        table = self._read(endpoint)
        if not table.knows(endpoint):
            raise NotFoundError(f"No such endpoint: {endpoint}")
        if wanted is None:
            return table.of(endpoint)  # type: ignore[return-value]  # a Sequence: ranges expand when read
        number, proto = wanted
        found = table.on(endpoint, number, proto)
        if not found:
            raise NotFoundError(f"No public port '{number}/{proto.value}' published for {endpoint}")
        return found

    def bindings(self) -> list[Binding]:
        """Every binding in this instance's table: the store's, as far as the kernel
        holds them (none when the table does not exist yet)."""
        return self._read().bindings()  # type: ignore[return-value]  # a Sequence: ranges expand when read

    def link(self, source: Endpoint | str, target: Endpoint | str, alias: str | None = None, *,
             target_env: Sequence[str] = ()) -> Link:
        """Link ``source`` to ``target`` (``--link target:alias``): on an isolated
        bridge, ``source`` may reach ``target``'s exposed ports and nothing else.
        An endpoint given by name is taken from its bindings (its addresses, and
        its published container ports as the exposed ones). Returns the
        :class:`Link`, with Docker's ``env`` and ``hosts_line``."""
        with self.transaction() as tx:
            return tx.link(source, target, alias, target_env=target_env)

    def unlink(self, source: str, target: str) -> Link:
        """Close the link from ``source`` to ``target`` and its open flows; return it.
        Raises :class:`NotFoundError` if there is no such link."""
        with self.transaction() as tx:
            return tx.unlink(source, target)

    def links(self) -> list[Link]:
        """Every link in this instance's table: the store's (with the target's
        environment), as far as the kernel holds them."""
        return self._read().links()

    def isolate(self, bridge: str) -> None:
        """Close inter-container traffic on ``bridge`` (Docker's ``--icc=false``):
        only links open flows there. Turns on br_netfilter's IP hooks in the
        namespace (``net.bridge.bridge-nf-call-iptables``/``-ip6tables``), which
        bridged traffic needs to reach the rules, as Docker does."""
        with self.transaction() as tx:
            tx.isolate(bridge)

    def unisolate(self, bridge: str) -> None:
        """Open inter-container traffic on ``bridge`` again (Docker's default)."""
        with self.transaction() as tx:
            tx.unisolate(bridge)

    def set_gateway(self, bridge: str, mode: GatewayMode | None = None, trusted_interfaces: Sequence[str] = (), *,
                    mode_ipv4: GatewayMode | None = None, mode_ipv6: GatewayMode | None = None,
                    force: bool = False) -> Gateway:
        """How traffic routed from outside reaches ``bridge``'s containers, as
        Docker 28's gateway modes, per IP family (``gateway_mode_ipv4`` /
        ``_ipv6``): ``mode`` sets both, ``mode_ipv4`` / ``mode_ipv6`` one
        family's over it (``set_gateway("natmap0", mode_ipv6="routed")``:
        IPv4 NATed and protected, IPv6 routed, Docker's common IPv6 setup).
        A call states the bridge's whole setting, as Docker's network options
        do: a family not given takes ``mode``, else ``nat``; interfaces not
        given are no longer trusted. The modes: ``nat`` (the default: only published ports
        and replies; and any flow from a ``trusted_interfaces`` interface),
        ``nat-unprotected`` (everything routed passes) or ``routed`` (no NAT:
        no masquerade, no DNAT from host ports; routed flows reach only the
        published container ports, ICMP, replies, and what a trusted
        interface sends). In ``routed`` the bridge's bindings of that family are kept with
        their host side, as :class:`RoutedBinding`, and mapped again when the
        mode goes back to ``nat`` (then checked against host sockets and
        other tables as a publish is: ConflictError; ``force=True`` takes a
        host socket's port knowingly, as ``publish(..., force=True)``). Returns the setting."""
        with self.transaction() as tx:
            return tx.set_gateway(bridge, mode, trusted_interfaces, mode_ipv4=mode_ipv4, mode_ipv6=mode_ipv6,
                                  force=force)

    def gateways(self) -> list[Gateway]:
        """The bridges not in the default ``nat`` mode, read back from the kernel."""
        return sorted(self._read().gateways.values(), key=lambda g: g.bridge)

    def isolated(self) -> list[str]:
        """The bridges whose inter-container traffic is closed, read back from the kernel."""
        return sorted(self._read().isolated)

    def transaction(self) -> Transaction:
        """Many publish/unpublish calls, ONE kernel transaction when the block ends
        (none if it raises)."""
        return Transaction(self)

    def preview(self, endpoint: Endpoint, specs: Iterable[str | PortSpec] = (), *,
             publish_all: bool = False) -> str:
        """What ``publish`` would do, as nft text. Nothing is applied."""
        tx = Transaction(self, dry_run=True)
        with tx:
            tx.publish(endpoint, specs, publish_all=publish_all)
        return tx.text

    def apply(self, config: Config | str | os.PathLike[str]) -> Change:
        """Make the table match ``config`` (adding, changing, removing) in one
        transaction; return what changed. Assigned ports stay while free.

        ``config`` is a :class:`Config` or the path of its TOML file (read as
        :meth:`Config.load` reads it). A file whose bytes are those the table
        was last applied from, with natmap's store unchanged since (no write
        by any process), is not parsed again: nothing in it can change the
        table. The kernel is checked against the store all the same, and any
        drift repaired, as in every change."""
        if not isinstance(config, (str, os.PathLike)):
            with self.transaction() as tx:
                config.reconcile(tx)
            return tx.change
        from .config import Config

        raw = Config.read(config)
        with Transaction(self, applying=_file_digest(raw)) as tx:
            if not tx.unchanged:
                Config.parse(raw, config).reconcile(tx)
        return tx.change

    def plan(self, config: Config) -> Change:
        """What :meth:`apply` would change. Nothing is applied."""
        tx = Transaction(self, dry_run=True)
        with tx:
            config.reconcile(tx)
        return tx.change

    def check(self, *, strict: bool = False) -> Drift:
        """How the kernel and the host differ from natmap's store, from any
        process: every item (missing, unexpected, changed), natmap's chains,
        rules, sets and maps, what natmap did not write inside its table, the
        host settings, and a change a dying process left half done. Changes
        nothing. With ``strict``, raise :class:`DriftError` if there is any."""
        with self._locked(), self._ns():
            drift = self._drift()
        if strict and drift:
            raise DriftError(drift)
        return drift

    def _drift(self) -> Drift:
        if not self._store.exists():  # never written here: nothing to compare with
            table, structure, foreign = self._backend.inspect()
            return Drift(structure=tuple(structure), foreign=tuple(foreign), remembered=False,
                         in_kernel=table is not None, **self._advice(table or Table()))
        desired = self._store.items()
        view = self._view = self._inspect()  # what a repair that follows starts from
        missing, unexpected = _differences(desired, view.table, self.backend_name)
        return Drift(missing=missing, unexpected=unexpected, table_missing=view.table is None and bool(desired),
                     structure=(*view.structure, *misheld(desired, self._store.placements())),
                     foreign=tuple(view.foreign),
                     host=tuple(hoststate.problems(self._kernel, desired)),
                     interrupted=self._store.pending(),
                     **self._advice(view.table or Table(), [i for i in desired if isinstance(i, (Bridge, Gateway))]))

    def _advice(self, table: Table, gateways: list[Item] | None = None) -> dict[str, Any]:
        """Drift's notes (the [::1] advice), shadowing (bindings that take a
        host socket's traffic, natmap.guest) and conflicts (bridges another
        natmap table holds in another gateway setting) for what the kernel holds
        (the conflicts: for the bridges and gateways of ``gateways``, the store's, if given)."""
        held = table if gateways is None else Table(gateways)
        forced = self._store.forced() if self._store.exists() else set()  # in any process (natmap.store)
        return {"notes": _loopback6_notes(table, self._kernel.bridged_ipv6_hooked),
                "shadowing": tuple(guest.shadowed([b for b in table.held_bindings() if b.key not in forced
                                                   and type(b) is Binding],  # RoutedBinding: no host port
                                                  functools.cache(self._kernel.listeners),
                                                  self._kernel.socket_owner)),
                "conflicts": tuple(guest.gateway_disagreements(held, self._others()) if held.bridges else ())}

    def repair(self) -> Drift:
        """Make the kernel and the host match natmap's store (one transaction on
        nft, one commit per table on iptables, the localhost guard first):
        put back what is missing, take out what natmap did not write inside
        its own table, finish a change a dying process left. Never deletes
        what any natmap process published (every one records it in the
        store). A bridge the host has re-addressed since is recorded with its
        subnets now first (unless they overlap another bridge's: kept, logged).
        Returns the drift it repaired."""
        with self._locked(), self._ns():
            if not self._store.exists():
                raise NotFoundError(f"no natmap store for table {self.table_name} here ({self.state_path}); "
                                    "`natmap adopt` makes it from the kernel")
            self._record_readdressed()
            drift = self._drift()
            if drift:
                _log_drift(drift, "repairing")
                self._sync_to_store(force=bool(drift.foreign or drift.structure))
            return drift

    def _record_readdressed(self) -> None:
        """Record anew the subnets of each stored bridge the host has
        re-addressed (one with no address now, or gone, is kept as it was).
        Call locked, in the namespace, with no change pending."""
        if self._store.pending():
            return  # finished first, as it was meant (repair's sync)
        table = Table(self._store.items(bindings=False))
        for name in sorted(table.bridges):
            try:
                now = self._kernel.bridge(name)
                if now.subnets:
                    table.add_bridge(now)
            except NatmapError as exc:  # UnknownInterfaceError, an overlap's SpecError
                _log("bridge %s as recorded is kept: %s", name, exc)
        change = table.change()
        if change:
            _log("recording re-addressed bridges: %s", ", ".join(b.name for b in change.added(Bridge)))
            self._store.begin(change)
            self._store.done(None)
            self._cache = None

    def adopt(self, *, force: bool = False) -> list[Item]:
        """Make the store from what the kernel holds now (a lost or damaged
        store, or a table made before natmap kept one); a damaged store file
        is kept beside as ``*.damaged``. Returns the items adopted.

        A whole store that says otherwise than the kernel is the desired
        state, and the kernel the one that drifted: that raises
        :class:`ConflictError` (``repair()`` puts the kernel back), unless
        ``force`` takes the kernel's state over it (``natmap adopt --force``).
        ``force`` also takes back a table whose marker was deleted by hand
        (iptables' marker rule), if every rule in its chains is one natmap
        writes; a table that is not provably natmap's stays a ConflictError.
        Neither a table in the kernel nor a store: :class:`NotFoundError`."""
        with self._locked(), self._ns():
            if force:  # a marker deleted by hand: put back if the table proves itself natmap's (ConflictError)
                self._backend.take_back()
            table = self._backend.read()
            if table is None and not self._store.exists():  # no store is made for a table that is nowhere
                raise NotFoundError(f"no natmap table {self.table_name} in the kernel here and nothing stored: "
                                    "nothing to adopt")
            items = sorted(table.items() if table is not None else (), key=describe)
            if not force and self._store.exists():
                try:
                    stored = set(self._store.items())
                except StoreCorruptError:
                    stored = None  # damaged: adopting is what it is for
                if stored is not None and stored != set(items):
                    raise ConflictError(
                        f"natmap's store for table {self.table_name} is whole and differs from the kernel "
                        f"({len(stored - set(items))} stored items missing there, {len(set(items) - stored)} "
                        "there not stored): `natmap repair` puts the kernel back as the store says; "
                        "`natmap adopt --force` takes the kernel's state instead")
            try:
                self._store.replace(items, self._stamp())
            except StoreCorruptError:
                self._store.close()
                os.replace(self.state_path, self.state_path + ".damaged")
                for suffix in ("-wal", "-shm"):
                    if os.path.exists(self.state_path + suffix):
                        os.remove(self.state_path + suffix)
                self._store.replace(items, self._stamp())
            self._cache = None
            return items

    def remove(self) -> None:
        """Delete this instance's table, and every binding with it (one
        transaction), and its store (``natmap remove``)."""
        with self._locked(), self._ns():
            self._backend.claimed = self._store.exists()
            table = self._backend.read()
            if table is not None or self._backend.structure_problems():  # also a half-made table
                self._backend.delete()
            if table is not None:
                self._kernel.forget_flows(table.held_bindings(), table.links())
            if self._store.exists():
                self._store.forget()
            self._cache = None
            discard(self._lock_path)  # the table is gone, and its lock with it

    def watch(self, *, ready: Callable[[], None] | None = None) -> None:
        """Repair natmap's table whenever the kernel's nftables change (a
        flush, a hand edit), until :meth:`stop_watching` is called (from a
        signal handler or another thread). Listens for nftables' netlink
        events: no polling. Each repair is logged (INFO on logger ``natmap``)."""
        from .watch import watch

        watch(self, ready)

    def tables(self) -> list[tuple[str, str]]:
        """(table, backend) of every natmap table of the namespace, sorted: those
        the kernel holds with natmap's marker (on either backend; another
        program's table of any name is not listed) and those natmap's store
        keeps (a table flushed away is still natmap's: ``restore`` makes it again)."""
        with self._turn(), self._ns():
            found = {(table, backend) for backend, table in self._kernel.natmap_table_names()}
        return sorted(found | set(self.stored_tables()))

    def stored_tables(self) -> list[tuple[str, str]]:
        """(table, backend) of every natmap table stored for this namespace."""
        directory, name = os.path.split(self.state_path)
        prefix = name[: -len(f".{self.table_name}.{self.backend_name}.db")]
        found = []
        for entry in sorted(os.listdir(directory)) if os.path.isdir(directory) else ():
            parts = entry.rsplit(".", 3)  # a namespace's name may hold dots; the rest cannot
            if len(parts) == 4 and parts[0] == prefix and parts[3] == "db":
                found.append((parts[1], parts[2]))
        return found

    def stop_watching(self) -> None:
        """End :meth:`watch` (safe from a signal handler)."""
        from .watch import stop

        stop(self)

    def close(self) -> None:
        """Close the netlink sockets and the store this instance keeps open (bindings stay)."""
        with self._turn():
            self._kernel.close()
            self._backend.close()
            self._store.close()

    def __enter__(self) -> NatMap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the machinery ---------------------------------------------------------------

    @contextmanager
    def _ns(self) -> Iterator[None]:
        """Run in this instance's namespace, and never anywhere else. Inside
        such a block of the same thread, at once when the thread is there
        (entering again cost a publish of one port a tenth of its time: two
        opens, two setns and a stat, several times a call); one stat tells,
        for code the block runs (an injected Host or Backend, a logging
        handler) may have entered another NatMap's namespace meanwhile."""
        inside = self._inside
        was_inside = getattr(inside, "home", False)
        if was_inside and current_netns() == self._home:
            yield
            return
        with entered_netns(self.netns, ns_path=self.netns_path):
            if current_netns() != self._home:
                raise WrongNamespaceError("this NatMap belongs to another network namespace than the "
                                          "calling thread's (pass netns= to work in another one)")
            inside.home = True
            try:
                yield
            finally:
                inside.home = was_inside

    @contextmanager
    def _turn(self) -> Iterator[None]:
        """This thread's turn on the instance (again, if it has it already)."""
        if not self._busy.acquire(timeout=self.lock_timeout):
            raise LockTimeoutError(f"another thread of this process kept this NatMap busy for more than "
                                   f"{self.lock_timeout:g} s", os.getpid())
        try:
            yield
        finally:
            self._busy.release()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """The instance and the table's lock file, for a change."""
        if self._owner == threading.get_ident():
            raise NestedTransactionError(
                "this thread is already in a transaction on this NatMap: make the change through "
                "that transaction (tx.publish(...)), or after its with block")
        with self._turn():
            self._owner = threading.get_ident()
            try:
                with table_lock(self.lock_dir, self._home, self.table_name, timeout=self.lock_timeout,
                                waiting=self._log_wait) as self._lock_path:
                    # Then the namespace's: host ports belong to the namespace, so
                    # every writer of every table assigns and commits in turn.
                    with namespace_lock(self.lock_dir, self._home, timeout=self.lock_timeout,
                                        waiting=self._log_wait):
                        yield
            finally:
                self._owner = None

    def _log_wait(self, pid: int | None) -> None:
        """Say (at INFO: ``natmap -v``) that a change waits for another process."""
        logging = sys.modules.get("logging")  # see _log_change
        if logging is not None:
            logging.getLogger("natmap").info(
                "waiting for the lock of table %s, held by %s (at most %g s)",
                self.table_name, describe_holder(pid), self.lock_timeout)

    def _read(self, endpoint: str | None = None) -> Table:
        """The store's table as far as the kernel holds it (verified: what the
        kernel lost is not listed). With ``endpoint``, only its items are
        taken from the store (an index lookup, whatever the table's size)."""
        with self._turn(), self._ns():
            if not self._store.exists():  # a table made before natmap kept a store, or none yet
                return self._backend.read() or Table()
            if endpoint:
                desired = Table(self._store.of(endpoint))
            elif self._owner is not None:  # a transaction is changing the cached table: a copy of our own
                desired = Table(self._store.items(), self._store.placements())
            else:
                desired = self._desired()
            if self._in_sync():
                return desired
            self._backend.claimed = True  # the store exists
            table = self._backend.read()
        if table is None:  # not made yet, or gone (`natmap check` says so): it holds nothing
            return Table()
        held = table.items()
        return Table(i for i in desired.items() if i in held or isinstance(i, Bridge))

    def _desired(self) -> Table:
        """The store's items as a Table, kept while the store's version stays."""
        version = self._store.version()
        if self._cache is None or version is None or version != self._cache_version:
            self._cache, self._cache_version = Table(self._store.items(), self._store.placements()), version
        return self._cache

    def _stamp(self, generation: Generation = None) -> str | None:
        """The kernel's generation (now, unless given) as the store records it:
        with the boot and the namespace, since a counter starts again at every
        boot and in every namespace. The namespace is told by its cookie too:
        one deleted and made again (``ip netns del X; ip netns add X``) may get
        the same nsfs inode, never the same cookie."""
        generation = self._backend.generation() if generation is None else generation
        if generation is None:
            return None
        return f"{_boot_id()}:{self._home[1]}:{self._in_ns(netns_cookie)}:{generation}"

    def _in_sync(self) -> bool:
        """Whether nothing was committed to the kernel since natmap's last change
        (then the kernel is as natmap left it, and need not be read). The
        generation read is kept: a change compares the one after its commit
        with it, so a commit by anyone in between is never missed."""
        self._seen = self._backend.generation()
        if not self._backend.counts_every_commit:
            return False  # legacy iptables: a hand edit leaves natmap's marker as it was
        recorded = self._store.get("generation")
        return recorded is not None and recorded == self._stamp(self._seen)

    def _inspect(self) -> _KernelView:
        """What the kernel holds. The generation is read first, for the change
        that follows (_sync): read after, a commit landing between the two
        reads would count as seen, though the read missed it, and natmap's
        own commit would then leave the kernel trusted with it unrepaired."""
        self._seen = self._backend.generation()
        self._backend.claimed = self._store.exists()
        table, structure, foreign = self._backend.inspect()
        return _KernelView(table, structure, foreign)

    def _load(self, dry_run: bool = False) -> Table:
        """The store's table, to change; the kernel read too unless it is in
        sync; a change a dead process left half done finished first. A dry
        run writes nothing: without a store it starts from the kernel."""
        if dry_run and not self._store.exists():
            self._view = self._inspect()
            self._missing = self._view.table is None
            return self._view.table or Table()
        if not self._store.exists():
            self._adopt_kernel()
        if not dry_run:
            self._recover()
        table = self._desired()
        self._view = None if self._in_sync() else self._inspect()
        self._missing = self._view is not None and self._view.table is None
        return table

    def _load_unchanged(self, digest: str) -> Table | None:
        """If the store is as applying the file of ``digest`` left it: the
        table, to keep as it is. The kernel is read (and the store's table
        with it) only if something committed since natmap's last commit: else
        only the items the host settings depend on are (bridges, isolations,
        gateways, links; not the bindings). None: load and reconcile it all."""
        if not self._store.exists() or self._store.pending() or not self._store.applied_from(digest):
            return None
        if not self._in_sync():  # drift, or another program's commit: compared when the change commits
            return self._load()
        self._view, self._missing = None, False
        return Table(self._store.items(bindings=False))

    def _record_applied(self, digest: str) -> None:
        """Note that the store is what applying the file of ``digest`` made. Only
        a shortcut for the next apply: if it cannot be written, that apply
        reads and reconciles the file, and this one stands."""
        from .errors import StoreError

        try:
            self._store.record_applied(digest)
        except StoreError as exc:
            _log("the applied file was not noted in the store: %s", exc)

    def _adopt_kernel(self) -> None:
        """No store yet: take what the kernel holds (a table made before natmap kept a store)."""
        table = self._backend.read()
        if table is not None and table.items():
            _log("adopting %d items of table %s from the kernel into %s", len(table.items()),
                 self.table_name, self.state_path)
        self._store.replace(table.items() if table is not None else ())

    def _recover(self) -> None:
        """A process died between recording a change and finishing it: the
        store holds the state it meant, so make the kernel and host match it."""
        if not self._store.pending():
            return
        _log("finishing a change a natmap process left half done")
        self._cache = None
        self._view = self._inspect()
        try:
            self._sync_to_store(force=bool(self._view.structure))
        except NatmapError:
            self._store.undo_pending()  # the kernel refuses it: it never happened
            raise

    def _sync_to_store(self, *, force: bool) -> None:
        """Make the kernel and host hold the store's items (``self._view``: what
        the kernel holds), and do the host steps of the pending change, which
        the process that began it may have died before: the flows it forbids
        are cut as the change would have cut them, before it is marked done."""
        self._sync(Table(self._store.items()), Change(), force=force, recovered=self._store.pending_change())

    def _commit(self, table: Table, change: Change) -> None:
        """Apply ``change``, ``table``'s journaled change, in one transaction, or roll it back."""
        if not change and self._view is None:  # the kernel as natmap left it: only the host to ensure
            self._store.place(table.placed())  # an endpoint's bridge first recorded (a store of before)
            table.commit()
            for what in hoststate.ensure(self._kernel, _host_items(table), routes=False):
                _log("host: set %s", what)
            return
        try:
            self._sync(table, change)
        except BaseException:
            table.rollback()
            self._cache = None
            raise
        table.commit()
        self._cache_version = self._store.version()

    def _sync(self, table: Table, change: Change, *, force: bool = False, recovered: Change = Change()) -> None:
        """Record ``change`` (already in ``table``), make the kernel hold
        ``table`` (repairing whatever drift ``self._view`` found, in the same
        kernel transaction), ensure the host settings, cut the flows the
        change forbids, mark the change done. ``force``: rebuild the table
        even if only elements differ. ``recovered``: a change a dead process
        recorded (the store holds it already), whose flows are cut with these."""
        started = time.perf_counter()
        hoststate.precheck(self._kernel, _host_items(table))
        if change:
            self._store.begin(change, self._forced, table.placed())
        else:
            self._store.place(table.placed())
        hoststate.crash_point("store-write")
        view, self._view = self._view, None
        before, self._seen = (self._backend.generation() if self._seen is None else self._seen), None
        try:
            for attempt in range(3):
                try:
                    applied, committed = self._kernel_change(table, change, view, force)
                    break
                except BackendError:
                    # Another program committed between natmap's read and its
                    # transaction (a flush, say): read the kernel again and redo it.
                    if attempt == 2 or self._backend.generation() == before:
                        raise
                    view = self._inspect()
                    before, self._seen = self._seen, None
        except BaseException:
            if change:
                self._store.undo(change)
            raise
        hoststate.crash_point("kernel-commit")
        after = self._backend.generation()
        _log_change(applied, self._backend.name, time.perf_counter() - started)
        set_now = hoststate.ensure(self._kernel, _host_items(table), routes=view is not None or bool(change.added(Bridge)))
        for what in set_now:
            _log("host: set %s", what)
        cut = Change(add=applied.add + recovered.add, delete=applied.delete + recovered.delete) \
            if recovered else applied
        self._kernel.forget_flows(cut.deleted(Binding), cut.deleted(Link), cut.added(Binding),
                                  self._isolated_cuts(table, cut), closed_routed(table, cut.deleted(RoutedBinding)),
                                  closed_direct(table, cut.deleted(Gateway)))
        # Trusted next time only if nobody else committed in between: the
        # generation moved by natmap's one commit, or not at all if it made none
        # (a publish of what is there already: one commit by another program
        # in the meantime must not pass for natmap's).
        expected = before + (1 if committed else 0) if isinstance(before, int) else None
        trusted = after is not None and (expected is None or after == expected)
        if (committed and self._others_seen is not None and after == expected
                and self._others_seen[0] == before):
            self._others_seen = (after, self._others_seen[1])  # only natmap's own commit since they were read
        self._store.done(self._stamp(after) if trusted else None)  # after, not now: a commit since is not ours
        hoststate.crash_point("store-commit")
        self._missing = False

    def _kernel_change(self, table: Table, change: Change, view: _KernelView | None,
                       force: bool) -> tuple[Change, bool]:
        """At most one kernel transaction from what the kernel holds (``view``;
        None: as natmap left it) to ``table``; returns the change applied and
        whether a transaction was committed (none when nothing differs)."""
        if view is None:
            if change:
                self._backend.apply(change, create=False)
            return change, bool(change)
        if view.table is None and not view.structure:  # not made yet (or gone): made with its items
            made = Change(add=_in_order(table))
            self._backend.apply(made, create=True)
            return made, True
        target = table.items()
        if view.table is None or view.structure or force:
            if view.table is not None:
                _log("rebuilding table %s: %s", self.table_name, "; ".join(view.structure) or "repair")
            self._backend.rebuild(target)
            return Change(add=tuple(target), delete=tuple(view.table.items()) if view.table is not None else ()), True
        missing, unexpected = _differences(target, view.table, self.backend_name)
        if any(isinstance(i, Bridge) for i in (*missing, *unexpected)):
            self._backend.rebuild(target)  # bridges share subnet elements: rebuild, do not patch
            return Change(add=tuple(target), delete=tuple(view.table.items())), True
        known = set(change.add) | set(change.delete)
        for item in missing + unexpected:
            if item not in known:
                _log("drift repaired: %s %s", "missing" if item in missing else "unexpected", describe(item))
        fixed = Change(add=missing, delete=unexpected)
        if fixed:
            self._backend.apply(fixed, create=False)
        return fixed, bool(fixed)

    def _isolated_cuts(self, table: Table, change: Change) -> list[Isolated]:
        """For each bridge ``change`` isolates: its subnets and the flows links open there."""
        allowed = frozenset(flow for link in table.links() for flow in link.flows())
        return [(self._subnets(isolation.bridge), allowed) for isolation in change.added(Isolation)]

    def _subnets(self, name: str) -> tuple[Any, ...]:
        """The bridge's own subnets, from the host (nft reads every bridge back
        with every bridge's subnets). Call in the namespace."""
        known = self._bridges.get(name)
        return known.subnets if known is not None else self._kernel.bridge(name).subnets

    def _bridge(self, endpoint: Endpoint, recorded: Bridge | None = None) -> Bridge:
        """The endpoint's bridge: remembered, and read again when it does not fit
        (with its kind and addresses, which :func:`guest.check_addresses` needs)
        or the table ``recorded`` it otherwise (another process saw it re-addressed)."""
        known = self._bridges.get(endpoint.bridge)
        if known is None or (recorded is not None and recorded is not known  # (hashing subnets is slow)
                             and set(recorded.subnets) != set(known.subnets)) \
                or not all(known.contains(ip) for ip in (endpoint.ip, endpoint.ipv6) if ip):
            with self._ns():
                self._facts[endpoint.bridge] = self._kernel.interface_facts(endpoint.bridge)
                known = self._bridges[endpoint.bridge] = self._kernel.bridge(endpoint.bridge)
        return known

    def _pool(self, others: Callable[[], list[tuple[str, Table]]],
              listeners: Callable[[Protocol], list[Listener]]) -> PortPool:
        """Where assigned ports come from, read once per transaction when a
        port is first assigned (a publish that names its host ports reads
        nothing); the listening sockets then too, once per protocol."""
        return _HostPool(functools.partial(self._in_ns, self._port_sysctls),  # type: ignore[return-value]
                         functools.cache(functools.partial(self._listening, others, listeners)))

    def _port_sysctls(self) -> tuple[PortRange, frozenset[int]]:
        return self._kernel.port_range(), self._kernel.reserved_ports()

    def _listening(self, others: Callable[[], list[tuple[str, Table]]],
                   listeners: Callable[[Protocol], list[Listener]], proto: Protocol) -> frozenset[int]:
        """Ports an assigned one must not be: held by a host socket, or mapped
        by another natmap table of the namespace."""
        return frozenset(s.port for s in listeners(proto)) | guest.mapped_ports(others(), proto)

    def _in_ns(self, fn: Callable[..., Any], *args: Any) -> Any:
        with self._ns():
            return fn(*args)

    def _others(self) -> list[tuple[str, Table]]:
        """The other natmap tables of the namespace, both backends, found by
        their markers and read. Call in the namespace.

        Kept while the kernel's nftables generation stays (it counts every
        nftables commit in the namespace, anyone's; :meth:`_sync` moves it on
        past natmap's own commit when no other came in between), and only
        where the namespace has no legacy iptables filter table (iptables
        counts no commits: there the tables are read every time)."""
        from .backends import iptables_in_use

        key = self._backend.generation() if self.backend_name == "nft" and not iptables_in_use() else None
        if key is not None and self._others_seen is not None and self._others_seen[0] == key:
            return self._others_seen[1]
        found = self._kernel.natmap_tables(exclude=(self.backend_name, self.table_name))
        self._others_seen = None if key is None else (key, found)  # the generation read BEFORE them
        return found

    def _guard(self, change: Change, forced: set[tuple[int, int, str, int]],
               others: Callable[[], list[tuple[str, Table]]]) -> None:
        """Raise ConflictError if a binding ``change`` adds takes a host socket's
        port (unless forced) or another natmap table's. The kernel is asked
        only for the sockets on the ports added (one port: one filtered
        sock_diag answer, whatever the host holds)."""
        added = change.added(Binding)
        if not added:
            return
        checked = [b for b in added if b.key not in forced] if forced else added
        wanted = guest.host_port_ranges(checked)
        guest.check_listeners(checked, lambda proto: self._in_ns(self._kernel.listeners, proto,
                                                                 wanted.get(proto, [])),
                              self._kernel.socket_owner, protocols=wanted)
        guest.check_other_tables(added, others())


class Transaction:
    """Publish and unpublish calls collected into one kernel transaction.

    Use it as ``with nm.transaction() as tx:``; the change is applied when the
    block ends, and nothing is applied if it raises. The table's lock is held
    for the whole block: other processes' changes to the table wait for it
    (their reads do not), other threads' calls on this NatMap wait for their
    turn, changes and reads alike (a NatMap of their own reads at once), and a
    change made in the block other than through ``tx`` raises
    :class:`NestedTransactionError`.
    """

    def __init__(self, natmap: NatMap, *, dry_run: bool = False, applying: str | None = None) -> None:
        self._nm = natmap
        self._dry_run = dry_run
        self._applying = applying  # the digest of the file NatMap.apply applies, if it was given one
        self.unchanged = False     # that file applied, and the store untouched since: nothing to reconcile
        self._table: Table | None = None
        self._pool: PortPool | None = None  # read once per transaction, when first needed
        self._lock: Any = None
        self.change = Change()  # what the transaction did (or, dry, would do)
        self._forced: set[tuple[int, int, str, int]] = set()  # Binding.key of bindings published with force=True
        self._reserved: set[tuple[int, int, str, int]] = set()  # ... with reserved=True: stored as forced too
        # The namespace's other natmap tables and host sockets, each read once, when first needed.
        self._others: Callable[[], list[tuple[str, Table]]] = functools.cache(
            functools.partial(natmap._in_ns, natmap._others))
        self._listeners: Callable[[Protocol], list[Listener]] = functools.cache(
            functools.partial(natmap._in_ns, natmap._kernel.listeners))
        self._local: frozenset[Any] | None = None  # the namespace's addresses, read once if needed
        self.text = ""          # the same as nft text, for a dry run

    def __enter__(self) -> Transaction:
        if self._lock is not None:  # replacing its lock would free it, and release the table mid-block
            raise NestedTransactionError("this transaction is open already: one with block at a time")
        lock = self._nm._locked()
        lock.__enter__()
        self._lock = lock
        try:
            with self._nm._ns(), _collection_paused():
                if self._applying is not None and not self._dry_run:
                    self._table = self._nm._load_unchanged(self._applying)
                    self.unchanged = self._table is not None
                if self._table is None:
                    self._table = self._nm._load(self._dry_run)
        except BaseException:
            lock, self._lock = self._lock, None
            lock.__exit__(None, None, None)
            raise
        return self

    @_uncollected
    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        table = self._require()
        try:
            if exc_type is not None:
                table.rollback()
                if not isinstance(exc, NatmapError):  # an interrupt may have cut a step between
                    self._nm._cache = None            # its index and its journal entry: read it again
                return
            self.change = table.change()
            try:
                with self._nm._ns():  # its questions (host sockets, other tables) in one entry
                    self._nm._guard(self.change, self._forced, self._others)
            except BaseException:
                table.rollback()
                raise
            if self._dry_run:
                self.text = self._nm._backend.text(self.change, create=self._nm._missing)
                table.rollback()
            else:
                self._nm._forced = self._forced | self._reserved  # recorded with the change (Store.begin)
                with self._nm._ns():
                    self._nm._commit(table, self.change)
                if self._applying is not None:  # under the lock: no other write in between
                    self._nm._record_applied(self._applying)
        finally:
            self._nm._forced = set()
            self._table = None
            lock, self._lock = self._lock, None
            lock.__exit__(None, None, None)

    def table(self) -> Table:
        """The table as this transaction has changed it so far."""
        return self._require()

    @_uncollected
    def publish(self, endpoint: Endpoint, specs: Iterable[str | PortSpec] = (), *,
                publish_all: bool = False,
                prefer: Mapping[Slot, Sequence[int]] | None = None,
                force: bool = False, reserved: bool = False) -> list[Binding]:
        """As :meth:`NatMap.publish`, applied when the transaction ends. An assigned
        port is the first free one of ``prefer[(host_ip, proto, container_port)]``
        (``host_ip`` 0.0.0.0 for a spec without one), if any is. ``reserved``:
        the caller holds a socket of its own on the host ports once published
        (a runtime's port reservation, natmap-cni): checked against host sockets
        as any publish, then stored as forced, so check calls that one no shadowing."""
        if not isinstance(endpoint, Endpoint):
            raise TypeError(f"expected a natmap.Endpoint, got {type(endpoint).__name__}")
        parsed = PortSpec.parse_many(_list(specs), where=f"endpoint {endpoint.name!r}")
        table = self._require()
        # The namespace is entered only to ask the kernel: a big transaction
        # publishes hundreds of endpoints on one bridge.
        bridge = self._nm._bridge(endpoint, table.bridges.get(endpoint.bridge))
        if self._pool is None:
            self._pool = self._nm._pool(self._others, self._listeners)
        named = any(map(_HOST_IP, parsed))  # (in C: most specs, thousands in a transaction, name none)
        if named and any(spec.host_ip is not None and spec.host_ip == _LOOPBACK6 for spec in parsed):  # only a spec can name [::1]
            with self._nm._ns():
                if self._nm._kernel.bridged_ipv6_hooked():
                    raise Loopback6Error(_NO_LOOPBACK6)
        self._check_addresses(endpoint, parsed, named)
        made = table.publish(endpoint, parsed, publish_all=publish_all,
                             pool=self._pool, bridge=bridge, prefer=prefer or {})
        if force or reserved:
            (self._forced if force else self._reserved).update(
                b.key for b in (made.held if isinstance(made, Bindings) else made))
        return docker_order(made)  # type: ignore[return-value]  # a Sequence: ranges expand when read

    def _check_addresses(self, endpoint: Endpoint, specs: list[PortSpec], asks: bool) -> None:
        """Docker's address checks (natmap.guest), the host asked once per
        transaction; ``asks``: whether a spec names a host IP (only that has the
        kernel asked: else no setns twice a call, and no spec to check)."""
        kernel = self._nm._kernel
        with self._nm._ns() if asks else nullcontext():
            if self._local is None and asks:
                self._local = kernel.local_addresses()
            kind, addresses = self._nm._facts[endpoint.bridge]  # read with the bridge
            guest.check_addresses(endpoint, specs if asks else (), bridge_kind=kind, bridge_addresses=addresses,
                                  local=lambda: self._local or frozenset(), nonlocal_bind=kernel.nonlocal_bind)

    @_uncollected
    def unpublish(self, endpoint: str) -> list[Binding]:
        """As :meth:`NatMap.unpublish`, applied when the transaction ends."""
        validate_name(endpoint, "endpoint name")
        table = self._require()
        if not table.knows(endpoint):
            raise NotFoundError(f"No such endpoint: {endpoint}")
        return docker_order(table.unpublish(endpoint))  # type: ignore[return-value]  # as publish

    def link(self, source: Endpoint | str, target: Endpoint | str, alias: str | None = None, *,
             target_env: Sequence[str] = ()) -> Link:
        """As :meth:`NatMap.link`, applied when the transaction ends."""
        return self._require().link(source, target, alias, target_env)

    def unlink(self, source: str, target: str) -> Link:
        """As :meth:`NatMap.unlink`, applied when the transaction ends."""
        validate_name(source, "endpoint name")
        validate_name(target, "endpoint name")
        link = self._require().unlink(source, target)
        if link is None:
            raise NotFoundError(f"No such link: {source} is not linked to {target}")
        return link

    def isolate(self, bridge: str) -> None:
        """As :meth:`NatMap.isolate`, applied when the transaction ends."""
        table = self._require()
        validate_ifname(bridge)
        if any(b.host_ip == _LOOPBACK6 for b in table.held_bindings()):
            raise Loopback6Error(_NO_LOOPBACK6)
        with self._nm._ns():
            self._nm._kernel.check_bridge_hooks()
            _require_bridge(bridge, self._nm._kernel.interface_facts(bridge)[0])  # UnknownInterfaceError too
        table.isolate(bridge)

    def set_gateway(self, bridge: str, mode: GatewayMode | None = None, trusted_interfaces: Sequence[str] = (), *,
                    mode_ipv4: GatewayMode | None = None, mode_ipv6: GatewayMode | None = None,
                    force: bool = False) -> Gateway:
        """As :meth:`NatMap.set_gateway`, applied when the transaction ends."""
        gateway = Gateway(validate_ifname(bridge), mode, tuple(trusted_interfaces), mode_ipv4=mode_ipv4,
                          mode_ipv6=mode_ipv6)
        if bridge in gateway.trusted_interfaces:
            raise SpecError("a bridge cannot be its own trusted interface: its containers' traffic to each "
                            "other is not routed from outside (isolate governs it)", bridge, None)
        with self._nm._ns():  # what it names must be there (UnknownInterfaceError), the bridge a bridge
            _require_bridge(bridge, self._nm._kernel.interface_facts(bridge)[0])
            for name in gateway.trusted:
                self._nm._kernel.interface_facts(name)
            known = self._nm._kernel.bridge(bridge)
        table = self._require()
        current = (table.gateways.get(bridge) or Gateway(bridge)) if bridge in table.bridges else None
        guest.check_gateway(gateway, current, self._others())  # the bridge's setting is the namespace's
        table.add_bridge(known)  # its mode guards it from now on, endpoints published on it or not
        table.set_gateway(gateway, known)  # the bindings published on it change form (Table.bridge_of)
        if force:  # its bindings mapped again may take a host socket's port, as publish(force=True)
            self._forced.update(b.key for b in table.held_bindings() if table.bridge_of(b.endpoint) == bridge)
        return gateway

    def unisolate(self, bridge: str) -> None:
        """As :meth:`NatMap.unisolate`, applied when the transaction ends."""
        self._require().isolate(validate_ifname(bridge), closed=False)

    def _require(self) -> Table:
        if self._table is None:
            raise TransactionClosedError("use the transaction in a with block")
        return self._table


def _in_order(table: Table) -> tuple[Item, ...]:
    """Everything ``table`` holds, in :func:`describe`'s order of kinds (a
    binding's "port ..." last): the few others sorted, the bindings as the
    table holds them, since sorting 10,000 by their text was a tenth of a
    big first publish."""
    others: list[Item] = [*table.bridges.values(), *table.links(), *(Isolation(bridge) for bridge in table.isolated),
                          *table.gateways.values()]  # what table.items() holds besides the bindings
    return (*sorted(others, key=describe), *table.held_bindings())


def _host_items(table: Table) -> list[Item]:
    """What the host settings depend on: the bridges and the isolated ones."""
    return [*table.bridges.values(), *(Isolation(bridge) for bridge in table.isolated)]


class _HostPool:
    """A :class:`PortPool` whose ``ports`` and ``reserved`` are the host's,
    read by ``read`` when first asked (two sysctl reads and a namespace
    entered: a tenth of publishing one port, for a pool it seldom uses)."""

    __slots__ = ("_read", "_host", "listening")

    def __init__(self, read: Callable[[], tuple[PortRange, frozenset[int]]],
                 listening: Callable[[Protocol], frozenset[int]]) -> None:
        self._read, self.listening = read, listening
        self._host: tuple[PortRange, frozenset[int]] | None = None

    @property
    def ports(self) -> PortRange:
        return self._asked()[0]

    @property
    def reserved(self) -> frozenset[int]:
        return self._asked()[1]

    def _asked(self) -> tuple[PortRange, frozenset[int]]:
        if self._host is None:
            self._host = self._read()
        return self._host


class _KernelView:
    """What the kernel holds, read once for a change or a check."""

    __slots__ = ("table", "structure", "foreign")

    def __init__(self, table: Table | None, structure: list[str], foreign: list[str]) -> None:
        self.table, self.structure, self.foreign = table, structure, foreign


def _differences(desired: Iterable[Item], kernel: Table | None,
                 backend: str) -> tuple[tuple[Item, ...], tuple[Item, ...]]:
    """(missing, unexpected): what ``desired`` holds and the kernel does not,
    and the reverse. A changed item is both (its old form unexpected). On
    nft the kernel does not keep which subnet is whose, so bridges compare
    with the union of all bridges' subnets."""
    want = _comparable(desired, backend)
    have = _comparable(kernel.items() if kernel is not None else (), backend)
    return (tuple(sorted((want[k] for k in want.keys() - have.keys()), key=describe)),
            tuple(sorted((have[k] for k in have.keys() - want.keys()), key=describe)))


def _comparable(items: Iterable[Item], backend: str) -> dict[object, Item]:
    items = list(items)
    union = frozenset(n for i in items if isinstance(i, Bridge) for n in i.subnets)
    view: dict[object, Item] = {}
    for item in items:
        if isinstance(item, Bridge):
            view[("bridge", item.name, union if backend == "nft" else frozenset(item.subnets))] = item
        else:
            view[item] = item
    return view


def _netns_name(home: tuple[int, int]) -> str | None:
    """"/" for the root namespace (that of process 1), the `ip netns` name of
    a named one, None for an anonymous one."""
    try:
        st = os.stat("/proc/1/ns/net")
        if (st.st_dev, st.st_ino) == home:
            return "/"
    except OSError:
        pass  # process 1 out of reach (a container, hidepid): the names may still tell
    try:
        names = os.listdir("/run/netns")
    except OSError:
        return None
    for name in names:
        try:  # one at a time: another program may be removing its own namespace meanwhile
            st = os.stat(f"/run/netns/{name}")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == home:
            return name
    return None


def _anonymous(home: tuple[int, int], cookie: int | None) -> str:
    """An anonymous namespace's part of its store's name: its nsfs (device,
    inode), which a namespace made after it is deleted may get again, and its
    cookie, which no other namespace of this boot gets (so a new namespace
    never takes an old one's store, and its rules, for its own)."""
    return "anon-%d-%d-%s" % (*home, cookie)


def _file_digest(raw: bytes) -> str:
    """What a configuration file is recognised by: its bytes, and the natmap
    that reads them (another version may read them otherwise)."""
    import hashlib

    from . import __version__

    return hashlib.sha256(__version__.encode() + b"\0" + raw).hexdigest()


@functools.cache
def _boot_id() -> str:
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()


def _log(message: str, *args: object) -> None:
    """An INFO line on logger ``natmap`` (stderr with -v), if logging is in use."""
    logging = sys.modules.get("logging")
    if logging is not None:
        logging.getLogger("natmap").info(message, *args)


def _log_drift(drift: Drift, doing: str) -> None:
    for line in str(drift).splitlines():
        _log("%s: %s", doing, line)
def _loopback6_notes(table: Table, hooked: Callable[[], bool]) -> tuple[str, ...]:
    """Why ``[::1]`` gets no answer from ``[::]`` bindings, when it does not;
    ``hooked`` says whether bridged IPv6 passes the IP hooks (called in the
    table's namespace)."""
    ports = [f"{b}/{b.proto.value}" for b in sorted({b for b in table.held_bindings() if b.host_ip == _ANY6},
                                                    key=lambda b: (b.host_port, b.proto.value))]  # tcp and udp apart
    if not ports or not hooked():
        return ()
    return (f"clients on [::1] get no answer from {', '.join(ports)} while bridged IPv6 passes the IP "
            "hooks (net.bridge.bridge-nf-call-ip6tables=1, which isolating a bridge turns on): br_netfilter "
            "turns the replies back to ::1 before the kernel's loopback check drops them; connect to "
            "127.0.0.1 or another IPv6 address of the host, or keep that sysctl at 0 and bridges unisolated",)


def _require_bridge(name: str, kind: str | None) -> None:
    """Raise :class:`SpecError` unless the interface ``name`` is a bridge:
    isolating a veth or ``lo`` would close nothing and say it had."""
    if kind != "bridge":
        raise SpecError(f"interface {name} is not a bridge ({kind or 'a plain interface'})", name, None)


def _log_change(change: Change, backend: str, seconds: float) -> None:
    """Log to logger ``natmap``: each item changed (INFO), each transaction (DEBUG)."""
    # Nobody can have set a level or a handler without importing logging, and
    # unconfigured INFO and DEBUG records go nowhere: so natmap does not
    # import it (a tenth of a `natmap` command's start) unless it is imported.
    logging = sys.modules.get("logging")
    if logging is None:
        return
    log = logging.getLogger("natmap")
    if log.isEnabledFor(logging.INFO):  # describing 10,000 bindings costs; only when asked
        for sign, items in (("-", change.delete), ("+", change.add)):
            for item in items:
                log.info("%s %s", sign, describe(item))
    log.debug("%s: one transaction, %d deleted and %d added, %.1f ms",
              backend, len(change.delete), len(change.add), seconds * 1000)


def _path(value: Any, what: str) -> str:
    """A path argument as text (``str`` or ``os.PathLike``)."""
    try:
        path = os.fspath(value)
    except TypeError:
        raise SpecError(f"{what} is a path", repr(value)) from None
    if not isinstance(path, str) or not path or "\0" in path:
        raise SpecError(f"{what} is a path", repr(value))
    return path


def _list(specs: Iterable[str | PortSpec]) -> list[str | PortSpec]:
    if isinstance(specs, (str, PortSpec)):
        raise TypeError("specs is a list of -p values, e.g. ['8080:80']")
    return list(specs)


def _container_port(port: int | str) -> tuple[int, Protocol]:
    """``5000``, ``"5000"`` or ``"5000/udp"`` as (port, protocol); no proto means tcp."""
    spec = PortSpec.parse_exposed(str(port))
    if len(spec.container_ports) != 1:
        raise SpecError("a port, not a range", str(port), None)
    return spec.container_ports.start, spec.proto


"""NatMap: publish, unpublish and read back bindings, one kernel transaction a change.

How a change happens, every time:

1. take the table's lock (``flock`` on ``/run/natmap/<netns>-<table>.lock``,
   released by the kernel if the process dies; see :mod:`natmap.locking`), so
   natmap processes change a table one at a time;
2. get the table: from memory if the backend's generation (nftables' counter,
   or natmap's marker rule on iptables) says nothing was committed since
   natmap last read or wrote it, else read from the kernel;
3. change it in memory (``model.Table`` checks conflicts and assigns ports and
   journals every step);
4. apply the net change as one transaction; on any failure, roll the memory
   back, so memory and kernel agree again.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager

from . import guest
from .backends import make_backend
from .backends.nft import validate_table
from .errors import (BackendError, LockTimeoutError, Loopback6Error, NestedTransactionError, NotFoundError,
                     SpecError, TransactionClosedError, WrongNamespaceError)
from .host import Session
from .links import Link
from .locking import LOCK_DIR, LOCK_TIMEOUT, describe_holder, discard, namespace_lock, table_lock
from .model import (Binding, Bindings, Bridge, Change, Drift, Endpoint, Gateway, Isolation, PortPool, Slot, Table,
                    describe, docker_order, validate_ifname)
from .netns import current as current_netns, entered as entered_netns, validate_name as validate_netns
from .spec import PortSpec, Protocol, validate_name

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (2 ms of a `natmap` command)
if TYPE_CHECKING:
    from typing import Any

    from .backends.base import Backend, Generation
    from .config import Config
    from .host import Host, Isolated, Listener

__all__ = ["NatMap", "Transaction"]

_NO_LOOPBACK6 = (
    "[::1] bindings cannot work while bridged IPv6 passes the IP hooks "
    "(net.bridge.bridge-nf-call-ip6tables=1, which isolating a bridge turns on): "
    "br_netfilter turns replies back to ::1 before the kernel's loopback check drops "
    "them; publish on 127.0.0.1, or keep that sysctl at 0 and bridges unisolated")

_LOOPBACK6 = ipaddress.IPv6Address("::1")
_ANY6 = ipaddress.IPv6Address("::")


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
    """

    def __init__(self, table: str = "natmap", *, backend: str | Backend = "nft", netns: str | None = None,
                 netns_path: str | None = None, host: Host | None = None, lock_timeout: float = LOCK_TIMEOUT,
                 lock_dir: str | None = None) -> None:
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
        self._kernel: Host = Session() if host is None else host
        with entered_netns(self.netns, ns_path=self.netns_path):
            self._home = current_netns()
            self._backend: Backend = (backend if not isinstance(backend, str) and hasattr(backend, "apply")
                                      else make_backend(backend, self.table_name))
        self.backend_name = self._backend.name
        self._bridges: dict[str, Bridge] = {}
        self._facts: dict[str, tuple[str | None, tuple[Any, ...]]] = {}  # bridge -> its kind and addresses
        self._forced: set[tuple[int, int, str, int]] = set()  # Binding.key of what publish(force=True) made
        self._cache: Table | None = None
        self._generation: Generation = None
        self._missing = True
        self._reads = 0
        self._remembered: Table | None = None

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
        table = self._read()
        if not table.knows(endpoint):
            raise NotFoundError(f"No such endpoint: {endpoint}")
        if port is None:
            return table.of(endpoint)  # type: ignore[return-value]  # a Sequence: ranges expand when read
        number, proto = _container_port(port)
        found = table.on(endpoint, number, proto)
        if not found:
            raise NotFoundError(f"No public port '{number}/{proto.value}' published for {endpoint}")
        return found

    def bindings(self) -> list[Binding]:
        """Every binding in this instance's table, read back from the kernel (none
        when the table does not exist yet)."""
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
        """Every link in this instance's table, read back from the kernel (their
        ``env`` lacks the target's own environment, which the kernel does not keep)."""
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

    def set_gateway(self, bridge: str, mode: str = "nat", trusted_interfaces: Sequence[str] = ()) -> Gateway:
        """How traffic routed from outside reaches ``bridge``'s containers, as
        Docker 28's gateway modes: ``nat`` (the default: only published ports
        and replies; and any flow from a ``trusted_interfaces`` interface) or
        ``nat-unprotected`` (everything routed passes). Returns the setting."""
        with self.transaction() as tx:
            return tx.set_gateway(bridge, mode, trusted_interfaces)

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

    def apply(self, config: Config) -> Change:
        """Make the table match ``config`` (adding, changing, removing) in one
        transaction; return what changed. Assigned ports stay while free."""
        with self.transaction() as tx:
            config.reconcile(tx)
        return tx.change

    def plan(self, config: Config) -> Change:
        """What :meth:`apply` would change. Nothing is applied."""
        tx = Transaction(self, dry_run=True)
        with tx:
            config.reconcile(tx)
        return tx.change

    def check(self) -> Drift:
        """How the kernel differs from what this NatMap last wrote or read.

        It reads the kernel afresh. What other programs (or other NatMaps)
        changed since shows as drift; a new NatMap remembers nothing and can
        only check the structure of the table, and says so.
        """
        with self._locked(), self._ns():
            remembered = self._remembered
            table, missing = self._kernel_table()
            kernel = table.items()
            structure = () if missing else tuple(self._backend.structure_problems())
            notes = _loopback6_notes(table, self._kernel.bridged_ipv6_hooked)
            shadowing = tuple(guest.shadowed([b for b in table.held_bindings() if b.key not in self._forced],
                                             functools.cache(self._kernel.listeners), self._kernel.socket_owner))
            self._cache = None  # whatever is there now, read it again next time
        if remembered is None:  # cannot tell lost from never there
            return Drift(structure=structure, remembered=False, notes=notes, shadowing=shadowing)
        known = remembered.items()
        return Drift(missing=tuple(sorted(known - kernel, key=describe)),
                     unexpected=tuple(sorted(kernel - known, key=describe)),
                     table_missing=missing and bool(known), structure=structure, notes=notes,
                     shadowing=shadowing)

    def repair(self) -> Drift:
        """Put back what this NatMap remembers, as one rebuild of its table
        (one transaction on nft); return the drift it repaired. A NatMap that
        remembers nothing cannot know what is missing: use ``apply()`` with
        the configuration instead."""
        drift = self.check()
        if not drift.remembered or self._remembered is None:
            raise NotFoundError("this NatMap remembers nothing to repair from (it is new); "
                                "apply the configuration instead (natmap apply FILE)")
        if drift:
            with self._locked(), self._ns():
                items = self._remembered.items()
                self._backend.rebuild(items)
                self._cache, self._generation, self._missing = Table(items), None, False
                self._remembered = self._cache
        return drift

    def remove(self) -> None:
        """Delete this instance's table, and every binding with it (one transaction)."""
        with self._locked(), self._ns():
            table = self._load()
            if not self._missing:
                self._backend.delete()
                self._kernel.forget_flows(table.held_bindings(), table.links())
            self._cache, self._generation, self._remembered = None, None, Table()
            discard(self._lock_path)  # the table is gone, and its lock with it

    def close(self) -> None:
        """Close the netlink sockets this instance keeps open (bindings stay)."""
        with self._turn():
            self._kernel.close()
            self._backend.close()

    def __enter__(self) -> NatMap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the machinery ---------------------------------------------------------------

    @contextmanager
    def _ns(self) -> Iterator[None]:
        """Run in this instance's namespace, and never anywhere else."""
        with entered_netns(self.netns, ns_path=self.netns_path):
            if current_netns() != self._home:
                raise WrongNamespaceError("this NatMap belongs to another network namespace than the "
                                          "calling thread's (pass netns= to work in another one)")
            yield

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

    def _read(self) -> Table:
        with self._turn(), self._ns():
            self._reads += 1
            if self._owner is not None or (self._cache is None and self._reads == 1):
                # A transaction is changing the cached table, or this is a first
                # look (say, `natmap port` as a process): read the kernel itself.
                # The dump is consistent on its own; only remembering it needs
                # the generation counter (and pyroute2, slow to import).
                # A table not made yet holds nothing: reading it is not an error.
                return self._kernel_table()[0]
            return self._load()

    def _load(self) -> Table:
        """The table, from memory if no transaction was committed since we last saw it."""
        for _ in range(3):
            generation = self._backend.generation()
            if self._cache is not None and generation == self._generation:
                return self._cache
            table, missing = self._kernel_table()
            if self._backend.generation() == generation:
                self._cache, self._generation, self._missing = table, generation, missing
                if self._remembered is None:
                    self._remembered = table
                return table
        raise BackendError("the ruleset kept changing while natmap read it")

    def _kernel_table(self) -> tuple[Table, bool]:
        """The table as the kernel holds it now, and whether it is missing."""
        table = self._backend.read()
        return (Table(), True) if table is None else (table, False)

    def _commit(self, table: Table, change: Change) -> None:
        """Apply ``change``, ``table``'s journaled change, in one transaction, or roll it back."""
        if not change:
            table.commit()
            return
        started = time.perf_counter()
        try:
            expected = self._backend.apply(change, create=self._missing, generation=self._generation)
        except BaseException:
            table.rollback()
            self._cache = None
            raise
        table.commit()
        _log_change(change, self._backend.name, time.perf_counter() - started)
        self._missing = False
        self._remembered = table  # what natmap itself put in the kernel: check() compares with it
        for bridge in change.added(Bridge):
            # Only now: the localhost guard is in place before 127/8 may be routed.
            self._kernel.enable_route_localnet(bridge.name)
            if any(net.version == 6 for net in bridge.subnets):
                self._kernel.enable_loopback6(bridge.name)
        if change.added(Isolation):
            self._kernel.hook_bridged_traffic()
        self._kernel.forget_flows(change.deleted(Binding), change.deleted(Link), change.added(Binding),
                                  self._isolated_cuts(table, change))
        self._generation = expected if self._backend.generation() == expected else None

    def _isolated_cuts(self, table: Table, change: Change) -> list[Isolated]:
        """For each bridge ``change`` isolates: its subnets and the flows links open there."""
        allowed = frozenset(flow for link in table.links() for flow in link.flows())
        return [(self._subnets(isolation.bridge), allowed) for isolation in change.added(Isolation)]

    def _subnets(self, name: str) -> tuple[Any, ...]:
        """The bridge's own subnets, from the host (nft reads every bridge back
        with every bridge's subnets). Call in the namespace."""
        known = self._bridges.get(name)
        return known.subnets if known is not None else self._kernel.bridge(name).subnets

    def _bridge(self, endpoint: Endpoint) -> Bridge:
        """The endpoint's bridge: remembered, and read again when it does not fit
        (with its kind and addresses, which :func:`guest.check_addresses` needs)."""
        known = self._bridges.get(endpoint.bridge)
        if known is None or not all(known.contains(ip) for ip in (endpoint.ip, endpoint.ipv6) if ip):
            with self._ns():
                self._facts[endpoint.bridge] = self._kernel.interface_facts(endpoint.bridge)
                known = self._bridges[endpoint.bridge] = self._kernel.bridge(endpoint.bridge)
        return known

    def _pool(self, others: Callable[[], list[tuple[str, Table]]],
              listeners: Callable[[Protocol], list[Listener]]) -> PortPool:
        """Where assigned ports come from, read once per transaction; the
        listening sockets are listed when a port is first assigned, once per protocol."""
        with self._ns():
            ports, reserved = self._kernel.port_range(), self._kernel.reserved_ports()
        return PortPool(ports, reserved, functools.cache(functools.partial(self._listening, others, listeners)))

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
        their markers and read. Call in the namespace."""
        return self._kernel.natmap_tables(exclude=(self.backend_name, self.table_name))

    def _guard(self, change: Change, forced: set[tuple[int, int, str, int]],
               others: Callable[[], list[tuple[str, Table]]],
               listeners: Callable[[Protocol], list[Listener]]) -> None:
        """Raise ConflictError if a binding ``change`` adds takes a host socket's
        port (unless forced) or another natmap table's."""
        added = change.added(Binding)
        if not added:
            return
        guest.check_listeners([b for b in added if b.key not in forced], listeners, self._kernel.socket_owner)
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

    def __init__(self, natmap: NatMap, *, dry_run: bool = False) -> None:
        self._nm = natmap
        self._dry_run = dry_run
        self._table: Table | None = None
        self._pool: PortPool | None = None  # read once per transaction, when first needed
        self._lock: Any = None
        self.change = Change()  # what the transaction did (or, dry, would do)
        self._forced: set[tuple[int, int, str, int]] = set()  # Binding.key of bindings published with force=True
        # The namespace's other natmap tables and host sockets, each read once, when first needed.
        self._others: Callable[[], list[tuple[str, Table]]] = functools.cache(
            functools.partial(natmap._in_ns, natmap._others))
        self._listeners: Callable[[Protocol], list[Listener]] = functools.cache(
            functools.partial(natmap._in_ns, natmap._kernel.listeners))
        self._local: frozenset[Any] | None = None  # the namespace's addresses, read once if needed
        self.text = ""          # the same as nft text, for a dry run

    def __enter__(self) -> Transaction:
        self._lock = self._nm._locked()
        self._lock.__enter__()
        try:
            with self._nm._ns():
                self._table = self._nm._load()
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        table = self._require()
        try:
            if exc_type is not None:
                table.rollback()
                return
            self.change = table.change()
            try:
                self._nm._guard(self.change, self._forced, self._others, self._listeners)
            except BaseException:
                table.rollback()
                raise
            if self._dry_run:
                self.text = self._nm._backend.text(self.change, create=self._nm._missing)
                table.rollback()
            else:
                with self._nm._ns():
                    self._nm._commit(table, self.change)
                self._nm._forced |= self._forced
        finally:
            self._table = None
            self._lock.__exit__(None, None, None)

    def table(self) -> Table:
        """The table as this transaction has changed it so far."""
        return self._require()

    def publish(self, endpoint: Endpoint, specs: Iterable[str | PortSpec] = (), *,
                publish_all: bool = False,
                prefer: Mapping[Slot, Sequence[int]] | None = None,
                force: bool = False) -> list[Binding]:
        """As :meth:`NatMap.publish`, applied when the transaction ends. An assigned
        port is the first free one of ``prefer[(host_ip, proto, container_port)]``
        (``host_ip`` 0.0.0.0 for a spec without one), if any is."""
        if not isinstance(endpoint, Endpoint):
            raise TypeError(f"expected a natmap.Endpoint, got {type(endpoint).__name__}")
        parsed = [s if isinstance(s, PortSpec) else PortSpec.parse(s) for s in _list(specs)]
        table = self._require()
        # The namespace is entered only to ask the kernel: a big transaction
        # publishes hundreds of endpoints on one bridge.
        bridge = self._nm._bridge(endpoint)
        if self._pool is None:
            self._pool = self._nm._pool(self._others, self._listeners)
        if any(spec.host_ip is not None and spec.host_ip == _LOOPBACK6 for spec in parsed):  # only a spec can name [::1]
            with self._nm._ns():
                if self._nm._kernel.bridged_ipv6_hooked():
                    raise Loopback6Error(_NO_LOOPBACK6)
        self._check_addresses(endpoint, parsed)
        made = table.publish(endpoint, parsed, publish_all=publish_all,
                             pool=self._pool, bridge=bridge, prefer=prefer or {})
        if force:
            self._forced.update(b.key for b in (made.held if isinstance(made, Bindings) else made))
        return docker_order(made)  # type: ignore[return-value]  # a Sequence: ranges expand when read

    def _check_addresses(self, endpoint: Endpoint, specs: list[PortSpec]) -> None:
        """Docker's address checks (natmap.guest), the host asked once per transaction."""
        kernel = self._nm._kernel
        with self._nm._ns():
            if self._local is None and any(s.host_ip for s in specs):
                self._local = kernel.local_addresses()
            kind, addresses = self._nm._facts[endpoint.bridge]  # read with the bridge
            guest.check_addresses(endpoint, specs, bridge_kind=kind, bridge_addresses=addresses,
                                  local=lambda: self._local or frozenset(), nonlocal_bind=kernel.nonlocal_bind)

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

    def set_gateway(self, bridge: str, mode: str = "nat", trusted_interfaces: Sequence[str] = ()) -> Gateway:
        """As :meth:`NatMap.set_gateway`, applied when the transaction ends."""
        gateway = Gateway(validate_ifname(bridge), mode, tuple(trusted_interfaces))
        self._require().set_gateway(gateway)
        return gateway

    def unisolate(self, bridge: str) -> None:
        """As :meth:`NatMap.unisolate`, applied when the transaction ends."""
        self._require().isolate(validate_ifname(bridge), closed=False)

    def _require(self) -> Table:
        if self._table is None:
            raise TransactionClosedError("use the transaction in a with block")
        return self._table


def _loopback6_notes(table: Table, hooked: Callable[[], bool]) -> tuple[str, ...]:
    """Why ``[::1]`` gets no answer from ``[::]`` bindings, when it does not;
    ``hooked`` says whether bridged IPv6 passes the IP hooks (called in the
    table's namespace)."""
    ports = [str(b) for b in sorted({b for b in table.held_bindings() if b.host_ip == _ANY6},
                                   key=lambda b: (b.host_port, b.proto.value))]
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


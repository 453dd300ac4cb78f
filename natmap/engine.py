"""NatMap: publish, unpublish and read back bindings, one kernel transaction a change.

How a change happens, every time:

1. take the table's lock (``flock`` on ``/run/natmap/<netns>-<table>.lock``,
   released by the kernel if the process dies), so natmap processes change a
   table one at a time;
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
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager

from . import host
from .backends import make_backend
from .backends.nft import validate_table
from .errors import BackendError, NatmapError, NotFoundError, SpecError, TableMissingError
from .links import Link
from .locking import flocked
from .model import (Binding, Bridge, Change, Drift, Endpoint, Isolation, PortPool, Table, describe,
                   validate_ifname)
from .netns import current as current_netns, entered as entered_netns
from .spec import PortSpec, Protocol, validate_name

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (2 ms of a `natmap` command)
if TYPE_CHECKING:
    from typing import Any

    from .config import Config

__all__ = ["NatMap", "Transaction"]

_NO_LOOPBACK6 = (
    "[::1] bindings cannot work while bridged IPv6 passes the IP hooks "
    "(net.bridge.bridge-nf-call-ip6tables=1, which isolating a bridge turns on): "
    "br_netfilter turns replies back to ::1 before the kernel's loopback check drops "
    "them; publish on 127.0.0.1, or keep that sysctl at 0 and bridges unisolated")

LOCK_DIR = "/run/natmap"
_LOOPBACK6 = ipaddress.IPv6Address("::1")


class NatMap:
    """Docker-style port publishing in one network namespace, through one table.

    ``NatMap()`` works in the calling thread's current network namespace with
    table ``natmap``; ``NatMap(table="lab1")`` gives an independent instance;
    ``NatMap(netns="name")`` works inside the named namespace (as made by
    ``ip netns add``), entering it only for the length of each call.
    """

    def __init__(self, table: str = "natmap", *, backend: str = "nft", netns: str | None = None) -> None:
        self.table_name = validate_table(table)
        self.netns = netns
        self._kernel = host.Session()
        with entered_netns(netns):
            self._home = current_netns()
            self._backend = make_backend(backend, self.table_name, self._kernel)
        self.backend_name = self._backend.name
        self._bridges: dict[str, Bridge] = {}
        self._cache: Table | None = None
        self._generation: int | None = None
        self._missing = True
        self._reads = 0
        self._remembered: Table | None = None
        self._busy = threading.Lock()

    # --- the API -------------------------------------------------------------------

    def publish(self, endpoint: Endpoint, specs: Iterable[str | PortSpec] = (), *,
                publish_all: bool = False) -> list[Binding]:
        """Publish ``specs`` (``-p`` values) and, with ``publish_all``, every exposed
        port (``-P``) of ``endpoint``. One kernel transaction. Returns the bindings
        made, assigned ports filled in."""
        with self.transaction() as tx:
            return tx.publish(endpoint, specs, publish_all=publish_all)

    def unpublish(self, endpoint: str) -> list[Binding]:
        """Remove every binding of ``endpoint`` and its conntrack entries; return them."""
        with self.transaction() as tx:
            return tx.unpublish(endpoint)

    def port(self, endpoint: str, port: int | str | None = None) -> list[Binding]:
        """The bindings of ``endpoint`` as ``docker port`` lists them, read back from
        the kernel; with ``port`` (``5000``, ``"5000"``, ``"5000/udp"``) only those."""
        validate_name(endpoint, "endpoint name")
        if port is None:
            return self._read().of(endpoint)  # type: ignore[return-value]  # a Sequence: ranges expand when read
        number, proto = _container_port(port)
        return self._read().on(endpoint, number, proto)

    def bindings(self) -> list[Binding]:
        """Every binding in this instance's table, read back from the kernel."""
        return self._read().bindings()

    def link(self, source: Endpoint | str, target: Endpoint | str, alias: str | None = None, *,
             target_env: Sequence[str] = ()) -> Link:
        """Link ``source`` to ``target`` (``--link target:alias``): on an isolated
        bridge, ``source`` may reach ``target``'s exposed ports and nothing else.
        An endpoint given by name is taken from its bindings (its addresses, and
        its published container ports as the exposed ones). Returns the
        :class:`Link`, with Docker's ``env`` and ``hosts_line``."""
        with self.transaction() as tx:
            return tx.link(source, target, alias, target_env=target_env)

    def unlink(self, source: str, target: str) -> Link | None:
        """Close the link from ``source`` to ``target`` and its open flows; return it."""
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
            self._cache = None  # whatever is there now, read it again next time
        if remembered is None:  # cannot tell lost from never there
            return Drift(structure=structure, remembered=False)
        known = remembered.items()
        return Drift(missing=tuple(sorted(known - kernel, key=describe)),
                     unexpected=tuple(sorted(kernel - known, key=describe)),
                     table_missing=missing and bool(known), structure=structure)

    def repair(self) -> Drift:
        """Put back what this NatMap remembers, as one rebuild of its table
        (one transaction on nft); return the drift it repaired. A NatMap that
        remembers nothing cannot know what is missing: use ``apply()`` with
        the configuration instead."""
        drift = self.check()
        if not drift.remembered:
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
                held = [b for b in table.items() if isinstance(b, Binding)]  # ranges as they are
                self._kernel.forget_flows(held, table.links())
            self._cache, self._generation, self._remembered = None, None, Table()

    def close(self) -> None:
        """Close the netlink sockets this instance keeps open (bindings stay)."""
        self._kernel.close()

    def __enter__(self) -> NatMap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the machinery ---------------------------------------------------------------

    @contextmanager
    def _ns(self) -> Iterator[None]:
        """Run in this instance's namespace, and never anywhere else."""
        with entered_netns(self.netns):
            if current_netns() != self._home:
                raise NatmapError("this NatMap belongs to another network namespace than the "
                                  "calling thread's (pass netns= to work in another one)")
            yield

    @contextmanager
    def _locked(self) -> Iterator[None]:
        if not self._busy.acquire(blocking=False):
            raise NatmapError("a transaction is already open on this NatMap")
        try:
            dev, ino = self._home
            with flocked(f"{LOCK_DIR}/{dev}-{ino}-{self.table_name}.lock"):
                yield
        finally:
            self._busy.release()

    def _read(self) -> Table:
        with self._ns():
            self._reads += 1
            if self._busy.locked() or (self._cache is None and self._reads == 1):
                # A transaction is changing the cached table, or this is a first
                # look (say, `natmap port` as a process): read the kernel itself.
                # The dump is consistent on its own; only remembering it needs
                # the generation counter (and pyroute2, slow to import).
                table, missing = self._kernel_table()
            else:
                table = self._load()
                missing = self._missing
        if missing:
            raise TableMissingError(f"table inet {self.table_name} does not exist in this network "
                                    "namespace (nothing was published with it yet)")
        return table

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
            host.enable_route_localnet(bridge.name)
            if any(net.version == 6 for net in bridge.subnets):
                host.enable_loopback6(bridge.name)
        if change.added(Isolation):
            host.hook_bridged_traffic()
        self._kernel.forget_flows(change.deleted(Binding), change.deleted(Link), change.added(Binding))
        self._generation = expected if self._backend.generation() == expected else None

    def _bridge(self, endpoint: Endpoint) -> Bridge:
        """The endpoint's bridge: remembered, and read again when it does not fit."""
        known = self._bridges.get(endpoint.bridge)
        if known is None or not all(known.contains(ip) for ip in (endpoint.ip, endpoint.ipv6) if ip):
            with self._ns():
                known = self._bridges[endpoint.bridge] = host.bridge(endpoint.bridge)
        return known

    def _pool(self) -> PortPool:
        """Where assigned ports come from, read once per transaction; the
        listening sockets are listed when a port is first assigned, once per protocol."""
        with self._ns():
            ports, reserved = host.port_range(), host.reserved_ports()
        return PortPool(ports, reserved, functools.cache(self._listening))

    def _listening(self, proto: Protocol) -> frozenset[int]:
        with self._ns():
            return host.listening_ports(proto)


class Transaction:
    """Publish and unpublish calls collected into one kernel transaction.

    Use it as ``with nm.transaction() as tx:``; the change is applied when the
    block ends, and nothing is applied if it raises. The table's lock is held
    for the whole block.
    """

    def __init__(self, natmap: NatMap, *, dry_run: bool = False) -> None:
        self._nm = natmap
        self._dry_run = dry_run
        self._table: Table | None = None
        self._pool: PortPool | None = None  # read once per transaction, when first needed
        self._lock: Any = None
        self.change = Change()  # what the transaction did (or, dry, would do)
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
            if self._dry_run:
                self.text = self._nm._backend.text(self.change, create=self._nm._missing)
                table.rollback()
            else:
                with self._nm._ns():
                    self._nm._commit(table, self.change)
        finally:
            self._table = None
            self._lock.__exit__(None, None, None)

    def table(self) -> Table:
        """The table as this transaction has changed it so far."""
        return self._require()

    def publish(self, endpoint: Endpoint, specs: Iterable[str | PortSpec] = (), *,
                publish_all: bool = False,
                prefer: Mapping[tuple[Protocol, int], int] | None = None) -> list[Binding]:
        """As :meth:`NatMap.publish`, applied when the transaction ends. An assigned
        port is ``prefer[(proto, container_port)]`` if that one is free."""
        if not isinstance(endpoint, Endpoint):
            raise TypeError(f"expected a natmap.Endpoint, got {type(endpoint).__name__}")
        parsed = [s if isinstance(s, PortSpec) else PortSpec.parse(s) for s in _list(specs)]
        table = self._require()
        # The namespace is entered only to ask the kernel: a big transaction
        # publishes hundreds of endpoints on one bridge.
        bridge = self._nm._bridge(endpoint)
        if self._pool is None:
            self._pool = self._nm._pool()
        if any(spec.host_ip is not None and spec.host_ip == _LOOPBACK6 for spec in parsed):  # only a spec can name [::1]
            with self._nm._ns():
                if host.bridged_ipv6_hooked():
                    raise NatmapError(_NO_LOOPBACK6)
        return table.publish(endpoint, parsed, publish_all=publish_all,
                             pool=self._pool, bridge=bridge, prefer=prefer or {})

    def unpublish(self, endpoint: str) -> list[Binding]:
        """As :meth:`NatMap.unpublish`, applied when the transaction ends."""
        validate_name(endpoint, "endpoint name")
        return self._require().unpublish(endpoint)

    def link(self, source: Endpoint | str, target: Endpoint | str, alias: str | None = None, *,
             target_env: Sequence[str] = ()) -> Link:
        """As :meth:`NatMap.link`, applied when the transaction ends."""
        return self._require().link(source, target, alias, target_env)

    def unlink(self, source: str, target: str) -> Link | None:
        """As :meth:`NatMap.unlink`, applied when the transaction ends."""
        validate_name(source, "endpoint name")
        validate_name(target, "endpoint name")
        return self._require().unlink(source, target)

    def isolate(self, bridge: str) -> None:
        """As :meth:`NatMap.isolate`, applied when the transaction ends."""
        table = self._require()
        validate_ifname(bridge)
        if any(b.host_ip == _LOOPBACK6 for b in table.bindings()):
            raise NatmapError(_NO_LOOPBACK6)
        with self._nm._ns():
            host.check_bridge_hooks()
        table.isolate(bridge)

    def unisolate(self, bridge: str) -> None:
        """As :meth:`NatMap.unisolate`, applied when the transaction ends."""
        self._require().isolate(validate_ifname(bridge), closed=False)

    def _require(self) -> Table:
        if self._table is None:
            raise NatmapError("use the transaction in a with block")
        return self._table


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


def _list(specs: Iterable[str | PortSpec]) -> list[str | PortSpec]:
    if isinstance(specs, (str, PortSpec)):
        raise TypeError("specs is a list of -p values, e.g. ['8080:80']")
    return list(specs)


def _container_port(port: int | str) -> tuple[int, Protocol]:
    """``5000``, ``"5000"`` or ``"5000/udp"`` as (port, protocol); no proto means tcp."""
    spec = PortSpec.parse_exposed(str(port))
    if len(spec.container_ports) != 1:
        raise SpecError("a port, not a range", str(port))
    return spec.container_ports.start, spec.proto


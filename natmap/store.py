"""The desired state on disk: what natmap means to exist, per network
namespace, table and backend, in SQLite (the standard library's ``sqlite3``).

The kernel is checked against it; it is never a cache of the kernel. One file
per (namespace, table, backend)::

    /var/lib/natmap/<namespace>.<table>.<backend>.db   the root namespace and
                                                        `ip netns` named ones
    /run/natmap/<namespace>.<table>.<backend>.db       anonymous namespaces
    $NATMAP_STATE_DIR/... or NatMap(state_dir=...)     anywhere else (tests)

Tables::

    items(key PRIMARY KEY, kind, endpoint, data)   one row an item: a binding
                                                   (kind routed on a routed
                                                   bridge; kind forced if published
                                                   with force, taking a host socket's
                                                   port knowingly), a bridge, a link (with its
                                                   target's env), an isolation; and kind
                                                   endpoint: which bridge an endpoint was
                                                   published on (key "endpoint NAME", data
                                                   [NAME, BRIDGE]; no item, no kernel element)
    meta(name PRIMARY KEY, value)                  version (one more each write),
                                                   generation (the kernel's, after
                                                   natmap's last commit), pending
                                                   (a change begun and not done),
                                                   format ("natmap-store 1": a file
                                                   without it is damaged, never empty),
                                                   applied (the digest of the file
                                                   `natmap apply` made the items from,
                                                   and the version it left)

A change is written in two store transactions that bracket the kernel's:
:meth:`Store.begin` writes the new items and the change as ``pending``; the
kernel commits; :meth:`Store.done` clears ``pending``. A process killed in
between leaves ``pending``: the next call sees it and finishes the change
(the store already holds the state the change meant; see NatMap._recover).
Every SQLite failure is translated to :class:`~natmap.errors.StoreError`.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sqlite3
import threading
from collections.abc import Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType

from .errors import PrivilegeError, StoreCorruptError, StoreError
from .links import Link
from .model import Binding, Bridge, Change, Gateway, Isolation, Item, RoutedBinding, assert_never
from .spec import Protocol

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (every natmap process would)
if TYPE_CHECKING:
    from typing import NoReturn

__all__ = ["Store", "default_dir", "exit_without_close", "item_key", "leave_open_until_exit"]

PERSISTENT_DIR = "/var/lib/natmap"  # the root namespace and `ip netns` named ones survive a reboot
VOLATILE_DIR = "/run/natmap"        # an anonymous namespace does not
FORMAT = "natmap-store 1"  # meta's 'format' row: what makes a SQLite file natmap's store

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (key TEXT PRIMARY KEY, kind TEXT NOT NULL, endpoint TEXT, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS items_endpoint ON items (endpoint);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

# The connections Store.close leaves open in a process about to end by os._exit
# (see leave_open_until_exit); None: close closes.
_left_open: list[sqlite3.Connection] | None = None


def leave_open_until_exit() -> None:
    """Make :meth:`Store.close` leave its SQLite connection open for the rest
    of the process, which then ends by ``os._exit`` (natmap-cni, ``natmap``).

    SQLite's last connection to close checkpoints the WAL into the database
    and deletes it: four fsyncs a process (the WAL's header and its directory
    again when the next process's first write makes a new WAL), 10-25 ms of a
    CNI ADD here. Ended without a close, the process leaves its commits in the
    WAL, as a killed process does, which SQLite is made for: the next
    connection reads them, and a commit checkpoints once the WAL passes
    SQLite's 1,000 pages. Durability is what synchronous=NORMAL gives anyway
    (see Store._open): a commit survives the process; a power cut may lose
    the last ones, never the file.
    """
    global _left_open
    if _left_open is None:
        _left_open = []


def exit_without_close(status: int) -> NoReturn:
    """End the process with ``status`` after flushing stdout and stderr, by
    ``os._exit``: no close of the stores left open (see
    :func:`leave_open_until_exit`) and no interpreter teardown, whose last
    collections would walk every object importing natmap made to free memory
    the kernel takes back anyway. A reader that went away is no error: the
    answer was written as far as anyone read it."""
    import sys

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)


def default_dir(named: bool) -> str:
    """Where the store lives: ``$NATMAP_STATE_DIR`` if set, else
    ``/var/lib/natmap`` for the root namespace and named ones (``named``),
    else ``/run/natmap``."""
    return os.environ.get("NATMAP_STATE_DIR") or (PERSISTENT_DIR if named else VOLATILE_DIR)


# --- items as rows -------------------------------------------------------------------


def item_key(item: Item) -> str:
    """The row key: what the kernel looks an item up by (one item a key)."""
    return _row(item)[0]


def _row(item: Item) -> tuple[str, str, str | None, str]:
    """(key, kind, endpoint, data) of one item."""
    match item:
        case Binding():
            return _rows([item])[0]
        case Bridge():
            return f"bridge {item.name}", "bridge", None, json.dumps([item.name, [str(n) for n in item.subnets]])
        case Link():
            data = json.dumps([item.source, item.target, item.alias, [str(ip) for ip in item.source_ips],
                               [str(ip) for ip in item.target_ips], [[p, proto.value] for p, proto in item.ports],
                               list(item.target_env)])
            return f"link {item.source}>{item.target}", "link", item.source, data
        case Isolation():
            return f"isolation {item.bridge}", "isolation", None, json.dumps([item.bridge])
        case Gateway():
            return (f"gateway {item.bridge}", "gateway", None,
                    json.dumps([item.bridge, item.mode_ipv4, list(item.trusted), item.mode_ipv6]))
        case _:
            assert_never(item)


def _rows(items: Iterable[Item], forced: Collection[tuple[int, int, str, int]] = ()
          ) -> list[tuple[str, str, str | None, str]]:
    """Each item's row, as :func:`_row` makes it (a binding whose key is in
    ``forced``: kind ``forced``). A binding's row is written
    out, not json.dumps'd (names, protocols and addresses hold no character
    JSON escapes), and the bindings of one spec come one after another and
    share their address objects: each is formatted once."""
    rows = []
    host_ip: object = None
    container_ip: object = None
    host_text = container_text = ""
    for item in items:
        if type(item) is not Binding and type(item) is not RoutedBinding:
            rows.append(_row(item))
            continue
        if item.host_ip is not host_ip:
            host_ip, host_text = item.host_ip, str(item.host_ip)
        if item.container_ip is not container_ip:
            container_ip, container_text = item.container_ip, str(item.container_ip)
        proto = item.proto._value_
        count = f",{item.count}" if item.count != 1 else ""  # a same-port range: one row, as one kernel element
        kind = "binding" if type(item) is Binding else "routed"  # routed: a bridge in Docker's routed mode
        if forced and kind == "binding" and item.key in forced:
            kind = "forced"  # `natmap check` does not call its host socket shadowed, in any process
        rows.append((f"binding {item.key[0]} {host_text} {proto} {item.host_port}", kind, item.endpoint,
                     f'["{item.endpoint}","{proto}","{host_text}",{item.host_port},'
                     f'"{container_text}",{item.container_port}{count}]'))
    return rows


def _item(kind: str, data: str) -> Item:
    d = json.loads(data)
    if kind == "binding" or kind == "routed" or kind == "forced":
        count = d[6] if len(d) > 6 else 1
        if not all(type(n) is int for n in (d[3], d[5], count)) or not (
                1 <= d[3] and 1 <= d[5] and d[3] + count - 1 <= 65535 and d[5] + count - 1 <= 65535):
            raise ValueError(f"a port out of range in {data}")  # the kernel would refuse it: damaged
        return (RoutedBinding if kind == "routed" else Binding)(
            d[0], Protocol(d[1]), ipaddress.ip_address(d[2]), d[3], ipaddress.ip_address(d[4]), d[5], count)
    if kind == "bridge":
        return Bridge(d[0], tuple(ipaddress.ip_network(n) for n in d[1]))
    if kind == "gateway":
        # [bridge, IPv4 mode, trusted, IPv6 mode]; a row of before the modes per family: one mode
        return Gateway(d[0], d[1], tuple(d[2]), mode_ipv6=d[3] if len(d) > 3 else d[1])
    if kind == "link":
        return Link(d[0], d[1], d[2], tuple(map(ipaddress.ip_address, d[3])),
                    tuple(map(ipaddress.ip_address, d[4])), tuple((p, Protocol(proto)) for p, proto in d[5]),
                    tuple(d[6]))
    if kind == "isolation":
        return Isolation(d[0])
    raise StoreCorruptError(f"unknown item kind {kind!r} in natmap's store")


# --- the store -----------------------------------------------------------------------


class Store:
    """One SQLite file: the items natmap means to exist, and its bookkeeping.

    Opened on first use; the file is made 0600 in a 0700 directory. Raises
    :class:`StoreError` (a full disk, a read-only file system) or
    :class:`StoreCorruptError` (not a natmap store) from any method.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None

    def exists(self) -> bool:
        return os.path.exists(self.path)

    @contextmanager
    def _translated(self, what: str) -> Iterator[None]:
        """SQLite's and the file system's errors as natmap's, at one boundary."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and "not a database" not in str(exc) \
                    and "malformed" not in str(exc):
                raise StoreError(f"natmap's store {self.path}: {what} failed: {exc}") from exc
            raise StoreCorruptError(
                f"natmap's store {self.path} is damaged ({exc}); the kernel's rules are untouched: "
                "`natmap adopt` rebuilds the store from them") from exc
        except PermissionError as exc:
            raise PrivilegeError(f"{what} in natmap's store {self.path}") from exc
        except OSError as exc:
            raise StoreError(f"natmap's store {self.path}: {what} failed: {exc.strerror}") from exc

    def _open(self) -> sqlite3.Connection:
        if self._db is not None:
            return self._db
        with self._translated("opening"):
            directory = os.path.dirname(self.path)
            os.makedirs(directory, mode=0o700, exist_ok=True)
            from .locking import check_own_dir

            # never loosen or tighten a directory of others': refuse it (the lock directory's rule)
            check_own_dir(directory, "state directory", "replace natmap's store and have natmap install "
                          "their rules", StoreError)
            if not os.path.lexists(self.path):
                self._create()
            elif os.path.islink(self.path):
                raise StoreError(f"natmap's store {self.path} is a symbolic link; natmap follows none")
            else:
                _check_own_file(self.path)
            # autocommit off by hand: every write below is one explicit transaction
            db = sqlite3.connect(self.path, isolation_level=None, timeout=30, check_same_thread=False)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                # NORMAL: in WAL mode a commit survives the process being killed (what the
                # pending mark needs); only a power cut can lose the last ones, and it
                # takes the kernel's rules with it. FULL would fsync twice a change.
                db.execute("PRAGMA synchronous=NORMAL")
                try:
                    mark = db.execute("SELECT value FROM meta WHERE name = 'format'").fetchone()
                except sqlite3.OperationalError as exc:
                    if "no such table" not in str(exc):
                        raise
                    mark = None  # no meta table: an empty file, or another program's
                if mark is None or str(mark[0]) != FORMAT:
                    # An empty or foreign SQLite file: were it read as natmap's, an empty
                    # store would have every binding in the kernel deleted as unexpected.
                    raise sqlite3.DatabaseError("not a natmap store (no format mark)")
            except BaseException:
                db.close()
                raise
            self._db = db
        return db

    def _create(self) -> None:
        """Make the store whole, or not at all: its schema and format mark are
        written to a file of its own, which is then linked in place (so another
        process never opens a store half made, and one that lacks the mark is
        damaged, never new). Made 0600 (SQLite makes its -wal and -shm alike)."""
        new = f"{self.path}.new-{os.getpid()}-{threading.get_ident()}"
        os.close(os.open(new, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
        try:
            db = sqlite3.connect(new, isolation_level=None)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(_SCHEMA)
                db.execute("INSERT INTO meta VALUES ('format', ?)", (FORMAT,))
            finally:
                db.close()
            try:
                os.link(new, self.path)
            except FileExistsError:
                pass  # another process made it first: theirs is as good
        finally:
            for leftover in (new, f"{new}-wal", f"{new}-shm"):
                if os.path.lexists(leftover):
                    os.unlink(leftover)

    def close(self) -> None:
        if self._db is not None:
            if _left_open is None:
                self._db.close()
            else:
                _left_open.append(self._db)  # the process ends by os._exit: see leave_open_until_exit
            self._db = None

    @contextmanager
    def _write(self, what: str, *, items: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction: all of it, or (on any error) none of it.
        ``items``: it may change the items (the version is one more)."""
        db = self._open()
        with self._translated(what):
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                if items:
                    db.execute("UPDATE meta SET value = value + 1 WHERE name = 'version'")
                    db.execute("INSERT OR IGNORE INTO meta VALUES ('version', 1)")
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    # --- reading ---------------------------------------------------------------

    def get(self, name: str) -> str | None:
        with self._translated("reading"):
            row = self._open().execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def version(self) -> str | None:
        """Changes with every write, by any process: tells a cached copy it is stale."""
        return self.get("version")

    def items(self, *, bindings: bool = True) -> list[Item]:
        """Every item; without ``bindings``, all but the bindings (a few rows)."""
        with self._translated("reading"):
            rows = self._open().execute(
                "SELECT kind, data FROM items WHERE kind != 'endpoint'" if bindings else
                "SELECT kind, data FROM items WHERE kind NOT IN ('binding', 'forced', 'routed', 'endpoint')"
            ).fetchall()
        return self._decoded(rows)

    def placements(self) -> dict[str, str]:
        """Which bridge each endpoint was published on (:meth:`Table.placed`)."""
        with self._translated("reading"):
            rows = self._open().execute("SELECT data FROM items WHERE kind = 'endpoint'").fetchall()
        try:
            return {name: bridge for name, bridge in (json.loads(row[0]) for row in rows)
                    if isinstance(name, str) and isinstance(bridge, str)}
        except (ValueError, TypeError) as exc:
            raise StoreCorruptError(f"natmap's store {self.path} holds an endpoint row natmap did not write "
                                    f"({exc!r}); `natmap adopt` rebuilds the store from the kernel") from exc

    def place(self, placed: Mapping[str, str | None]) -> None:
        """Record which bridge each endpoint of ``placed`` is on (None: none
        now), when no change of items is written with it (:meth:`begin` takes
        it otherwise)."""
        if placed:
            with self._write("recording the endpoints' bridges") as db:
                self._placement_rows(db, placed)

    def forced(self) -> set[tuple[int, int, str, int]]:
        """The keys (Binding.key) of the bindings published with force."""
        with self._translated("reading"):
            rows = self._open().execute("SELECT kind, data FROM items WHERE kind = 'forced'").fetchall()
        return {b.key for b in self._decoded(rows)}  # type: ignore[union-attr]

    def of(self, endpoint: str) -> list[Item]:
        """The bindings of one endpoint and the links from it (an index lookup)."""
        with self._translated("reading"):
            rows = self._open().execute("SELECT kind, data FROM items WHERE endpoint = ?", (endpoint,)).fetchall()
        return self._decoded(rows)

    def _decoded(self, rows: list[tuple[str, str]]) -> list[Item]:
        try:
            return [_item(kind, data) for kind, data in rows]
        except (ValueError, KeyError, TypeError, IndexError) as exc:  # SpecError is a ValueError
            raise StoreCorruptError(f"natmap's store {self.path} holds a row natmap did not write ({exc!r}); "
                                    "the kernel's rules are untouched: `natmap adopt` rebuilds the store "
                                    "from them") from exc

    def applied_from(self, digest: str) -> bool:
        """Whether the items are as applying the file of ``digest`` left them
        (:meth:`record_applied`), no write by any process since."""
        with self._translated("reading"):
            row = self._open().execute(
                "SELECT (SELECT value FROM meta WHERE name = 'applied'), "
                "(SELECT COALESCE(MAX(value), '') FROM meta WHERE name = 'version')").fetchone()
        return row[0] is not None and row[0] == f"{digest} {row[1]}"

    def pending(self) -> bool:
        """Whether a process began a change and did not finish it (it died)."""
        return self.get("pending") is not None

        # --- writing ---------------------------------------------------------------

    def begin(self, change: Change, forced: Collection[tuple[int, int, str, int]] = (),
              placed: Mapping[str, str | None] = MappingProxyType({})) -> None:
        """Write ``change`` to the items, and record it as pending: one transaction.
        The added bindings whose key is in ``forced`` are recorded as forced;
        ``placed``, in the same transaction, as :meth:`place` records it (a
        change taken back leaves it: only a hint for an endpoint published).
        The pending record holds what :meth:`undo_pending` needs: the keys
        added and the rows deleted."""
        added, deleted = _rows(change.add, forced), _rows(change.delete)
        with self._write("recording the change") as db:
            self._change_rows(db, added, deleted)
            self._placement_rows(db, placed)
            pending = {"added": [row[0] for row in added], "deleted": deleted}
            db.execute("INSERT OR REPLACE INTO meta VALUES ('pending', ?)", (json.dumps(pending),))

    def undo(self, change: Change) -> None:
        """Take back a change the kernel refused: the inverse change, pending cleared."""
        with self._write("taking the change back") as db:
            self._change_rows(db, _rows(change.delete), _rows(change.add))
            db.execute("DELETE FROM meta WHERE name = 'pending'")

    def pending_deleted(self) -> list[Item]:
        """What the pending change deleted (its flows are still to be forgotten)."""
        text = self.get("pending")
        return [] if text is None else self._decoded([(row[1], row[3]) for row in json.loads(text)["deleted"]])

    def undo_pending(self) -> None:
        """Take back the pending change a dead process left (the kernel refuses it)."""
        text = self.get("pending")
        if text is None:
            return
        with self._write("taking the pending change back") as db:
            pending = json.loads(text)
            self._change_rows(db, [tuple(row) for row in pending["deleted"]],
                              [(key, "", None, "") for key in pending["added"]])
            db.execute("DELETE FROM meta WHERE name = 'pending'")

    def done(self, generation: str | None) -> None:
        """The kernel holds the pending change: clear it, and record the kernel's
        generation after natmap's commit (None: unknown, read the kernel next time).

        Its own transaction, after the kernel's: the pending mark must be on
        disk before the kernel commits (a crash in between leaves it for the
        next process to finish the change), and cleared only after. It
        changes no item, so the version stays (begin moved it on): readers
        that cache the items by version keep them. Both commits are cheap in
        WAL mode with synchronous=NORMAL (see _open): no fsync, and a commit
        survives the process being killed, which is what recovery needs."""
        with self._write("finishing the change", items=False) as db:
            db.execute("DELETE FROM meta WHERE name = 'pending'")
            self._set_generation(db, generation)

    def record_applied(self, digest: str) -> None:
        """Note that the items are what applying the file of ``digest`` made, as
        of this version (meta ``applied``; the version stays: no item changed)."""
        if self.applied_from(digest):
            return
        with self._write("noting the file applied", items=False) as db:
            db.execute("INSERT OR REPLACE INTO meta SELECT 'applied', ? || ' ' || "
                       "(SELECT COALESCE(MAX(value), '') FROM meta WHERE name = 'version')", (digest,))

    def replace(self, items: Iterable[Item], generation: str | None = None) -> None:
        """Make the store hold exactly ``items`` (``natmap adopt``): one transaction."""
        with self._write("replacing the items") as db:
            db.execute("DELETE FROM items")
            db.executemany("INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?)", _rows(items))
            db.execute("DELETE FROM meta WHERE name = 'pending'")
            self._set_generation(db, generation)

    def forget(self) -> None:
        """Nothing is meant to exist any more (``remove()``): the file goes, so
        the table is no longer listed as stored (``natmap tables``, ``restore``)."""
        self.close()
        with self._translated("deleting"):
            for path in (self.path, f"{self.path}-wal", f"{self.path}-shm"):
                if os.path.lexists(path):
                    os.unlink(path)

    @staticmethod
    def _set_generation(db: sqlite3.Connection, generation: str | None) -> None:
        if generation is None:
            db.execute("DELETE FROM meta WHERE name = 'generation'")
        else:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('generation', ?)", (generation,))

    @staticmethod
    def _placement_rows(db: sqlite3.Connection, placed: Mapping[str, str | None]) -> None:
        db.executemany("DELETE FROM items WHERE key = ?",
                       ((f"endpoint {name}",) for name, bridge in placed.items() if bridge is None))
        db.executemany("INSERT OR REPLACE INTO items VALUES (?, 'endpoint', NULL, ?)",
                       ((f"endpoint {name}", json.dumps([name, bridge])) for name, bridge in placed.items()
                        if bridge is not None))

    @staticmethod
    def _change_rows(db: sqlite3.Connection, added: list[tuple[str, str, str | None, str]],
                     deleted: list[tuple[str, str, str | None, str]]) -> None:
        db.executemany("DELETE FROM items WHERE key = ?", ((row[0],) for row in deleted))
        db.executemany("INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?)", added)
        # the generation of before the change says nothing about the kernel after it
        db.execute("DELETE FROM meta WHERE name = 'generation'")


def _check_own_file(path: str) -> None:
    """Refuse a store file another user owns or can write: its rows become the kernel's rules."""
    import stat

    st = os.lstat(path)
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise StoreError(f"natmap's store {path} must be owned by uid {os.geteuid()} and writable by no "
                         f"other user (it is uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}): another "
                         "user could have natmap install their rules; remove it or fix it (chown, chmod 600)")

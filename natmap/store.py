"""The desired state on disk: what natmap means to exist, per network
namespace, table and backend, in SQLite (the standard library's ``sqlite3``).

The kernel is checked against it; it is never a cache of the kernel. One file
per (namespace, table, backend)::

    /var/lib/natmap/<namespace>.<table>.<backend>.db   the root namespace and
                                                        `ip netns` named ones
    /run/natmap/<namespace>.<table>.<backend>.db       anonymous namespaces
    $NATMAP_STATE_DIR/... or NatMap(state_dir=...)     anywhere else (tests)

Tables::

    items(key PRIMARY KEY, kind, endpoint, data)   one row an item other than a
                                                   binding: a bridge, a link (with
                                                   its target's env), an isolation,
                                                   a gateway mode; and kind endpoint:
                                                   which bridge an endpoint was
                                                   published on (key "endpoint NAME",
                                                   data [NAME, BRIDGE]; no item, no
                                                   kernel element)
    runs(endpoint, host, proto, port, kind,        the bindings, one row a run: n
         container, container_port, n, count)      single ports of one endpoint,
         PRIMARY KEY (endpoint, host, proto,       address pair and shift
         port) WITHOUT ROWID                       (``-p 20000-29999:30000-39999``,
                                                   or 40 ``-p`` of consecutive
                                                   ports), or one same-port range of
                                                   count ports (n 1). kind binding,
                                                   routed (a routed bridge's), or
                                                   forced (published with force,
                                                   taking a host socket's port
                                                   knowingly)
    meta(name PRIMARY KEY, value)                  version (one more each write),
                                                   generation (the kernel's, after
                                                   natmap's last commit), pending
                                                   (a change begun and not done: the
                                                   touched endpoints' runs before it,
                                                   the other items' keys added and
                                                   rows deleted), format
                                                   ("natmap-store 2": a file without
                                                   it is damaged, never empty; a
                                                   "natmap-store 1" file, a row a
                                                   binding in items, is made format
                                                   2 in place when opened; "natmap-store
                                                   3" on, a newer natmap's, is refused,
                                                   not damaged), applied
                                                   (the digest of the file `natmap
                                                   apply` made the items from, and
                                                   the version it left)

A change is written in two store transactions that bracket the kernel's:
:meth:`Store.begin` writes the new items and the change as ``pending``; the
kernel commits; :meth:`Store.done` clears ``pending``. A process killed in
between leaves ``pending``: the next call sees it and finishes the change
(the store already holds the state the change meant; see NatMap._recover).
Every SQLite failure is translated to :class:`~natmap.errors.StoreError`,
and every row is checked as it is read: one natmap never writes (an endpoint
name it refuses, two runs over one host port, a pending record of another
shape) is :class:`~natmap.errors.StoreCorruptError`, as a file that is not
SQLite is.
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
import json
import operator
import os
import sqlite3
import threading
from collections.abc import Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType

from .errors import PrivilegeError, StoreCorruptError, StoreError
from .links import Link
from .model import Binding, Bridge, Change, Gateway, Isolation, Item, RoutedBinding, assert_never
from .spec import IPAddress, Protocol, ip_text, validate_name

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (2 ms of a `natmap` command)
if TYPE_CHECKING:
    from typing import Any, NoReturn

    _Pending = dict[str, Any]  # the pending record: see _change

__all__ = ["Store", "default_dir", "exit_without_close", "item_key", "leave_open_until_exit"]

PERSISTENT_DIR = "/var/lib/natmap"  # the root namespace and `ip netns` named ones survive a reboot
VOLATILE_DIR = "/run/natmap"        # an anonymous namespace does not
FORMAT = "natmap-store 2"    # meta's 'format' row: what makes a SQLite file natmap's store
FORMAT_1 = "natmap-store 1"  # one row a binding in items: migrated in place when opened (_migrate)
_BINDING_KINDS = ("binding", "forced", "routed")


def _newer(mark: str) -> int | None:
    """The format number of a newer natmap's mark ("natmap-store 3"), else None."""
    name, _, number = mark.partition(" ")
    newer = name == FORMAT.split()[0] and number.isdecimal() and int(number) > int(FORMAT.split()[1])
    return int(number) if newer else None


_ITEMS = "CREATE TABLE IF NOT EXISTS items (key TEXT PRIMARY KEY, kind TEXT NOT NULL, endpoint TEXT, data TEXT NOT NULL)"
# The bindings, a row a run of ports (see _runs_of), keyed by endpoint first:
# one endpoint's are one range of the primary key, no second index to keep.
_RUNS = ("CREATE TABLE IF NOT EXISTS runs (endpoint TEXT NOT NULL, host TEXT NOT NULL, proto TEXT NOT NULL, "
         "port INTEGER NOT NULL, kind TEXT NOT NULL, container TEXT NOT NULL, container_port INTEGER NOT NULL, "
         "n INTEGER NOT NULL, count INTEGER NOT NULL, PRIMARY KEY (endpoint, host, proto, port)) WITHOUT ROWID")
_SCHEMA = f"""
{_ITEMS};
CREATE INDEX IF NOT EXISTS items_endpoint ON items (endpoint);
{_RUNS};
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
        except (OSError, ValueError, AttributeError):  # AttributeError: started with it closed (None)
            pass
    os._exit(status)


def default_dir(named: bool) -> str:
    """Where the store lives: ``$NATMAP_STATE_DIR`` if set, else
    ``/var/lib/natmap`` for the root namespace and named ones (``named``),
    else ``/run/natmap``."""
    return os.environ.get("NATMAP_STATE_DIR") or (PERSISTENT_DIR if named else VOLATILE_DIR)


# --- items as rows -------------------------------------------------------------------


def item_key(item: Item) -> str:
    """The row key of an item other than a binding, and a binding's own key
    text: what the kernel looks an item up by (one item a key)."""
    if isinstance(item, Binding):
        return f"binding {item.key[0]} {item.host_ip} {item.proto._value_} {item.host_port}"
    return _row(item)[0]


def _row(item: Item) -> tuple[str, str, str | None, str]:
    """(key, kind, endpoint, data) of one item of table ``items`` (all but the
    bindings; format 1 kept bindings there too, see :func:`_item`)."""
    match item:
        case Binding():
            raise TypeError("a binding is kept in a run row (table runs), not in items")
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


def _item(kind: str, data: str) -> Item:
    """An item of table ``items`` from its row; a binding as format 1 wrote it
    (read only to migrate a format-1 store)."""
    if kind in _BINDING_KINDS:
        return _binding_of_format_1(kind, data)
    d = json.loads(data)
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


def _stored_item(row: _ItemRow) -> Item:
    """The item of a row of table ``items`` (format 2: no binding), or
    ValueError (TypeError) if natmap did not write it: its key, kind and
    endpoint must be the ones natmap writes for the item its data makes."""
    key, kind, endpoint, data = row
    item = _item(kind, data)
    if _row(item)[:3] != (key, kind, endpoint):  # a binding's is a TypeError: format 2 keeps none here
        raise ValueError(f"an item row natmap did not write: {key!r} {kind!r} {endpoint!r}")
    return item


def _binding_of_format_1(kind: str, data: str) -> Binding:
    """A binding's row as format 1 wrote it (read only to migrate a format-1 store)."""
    d = json.loads(data)
    count = d[6] if len(d) > 6 else 1
    if not all(type(n) is int for n in (d[3], d[5], count)) or not (
            1 <= d[3] and 1 <= d[5] and d[3] + count - 1 <= 65535 and d[5] + count - 1 <= 65535):
        raise ValueError(f"a port out of range in {data}")  # the kernel would refuse it: damaged
    return (RoutedBinding if kind == "routed" else Binding)(
        d[0], Protocol(d[1]), ipaddress.ip_address(d[2]), d[3], ipaddress.ip_address(d[4]), d[5], count)


# --- bindings as runs ----------------------------------------------------------------
#
# A run row is (endpoint, host, proto, port, kind, container, container_port,
# n, count): n single bindings host:port+i -> container:container_port+i
# (count 1: consecutive `-p` of one endpoint with one shift, a shifted range),
# or one same-port range of count ports (n 1). 10,000 single `-p` strings of
# 250 endpoints are 250 rows; `-p 20000-29999:30000-39999` is one.

# One binding as a run sees it: Binding.key -> (kind, container, container_port, count).
_Key = tuple[int, int, str, int]
_Held = dict[_Key, tuple[str, str, int, int]]
_Run = tuple[str, str, str, int, str, str, int, int, int]
_ItemRow = tuple[str, str, str | None, str]
_Span = tuple[int, int, str, int, int, str]  # a run's host ports: version, address, proto, first, last, endpoint
_ENDPOINT = operator.attrgetter("endpoint")
_JSON_STRING = json.encoder.encode_basestring_ascii  # json.dumps of a str (ensure_ascii, its default), in C


def _kind(binding: Binding, forced: Collection[_Key]) -> str:
    if type(binding) is RoutedBinding:
        return "routed"  # a bridge in Docker's routed mode
    # forced: `natmap check` does not call its host socket shadowed, in any process
    return "forced" if forced and binding.key in forced else "binding"


def _held_of(rows: Iterable[_Run], held: dict[str, _Held]) -> None:
    """Each row's bindings into ``held`` (by endpoint), keyed as Binding.key."""
    parsed: dict[str, tuple[int, int]] = {}
    spans: list[_Span] = []
    for row in rows:
        endpoint, host, proto, port, kind, container, container_port, n, count = _checked(row)
        mine = held.setdefault(endpoint, {})
        if host not in parsed:
            ip = ipaddress.ip_address(host)
            parsed[host] = (ip.version, int(ip))
        version, address = parsed[host]
        spans.append((version, address, proto, port, port + n + count - 2, endpoint))
        for i in range(n):
            mine[(version, address, proto, port + i)] = (kind, container, container_port + i, count)
    _disjoint(spans)


def _held(bindings: Iterable[Binding], forced: Collection[_Key], held: _Held | None = None) -> _Held:
    """``bindings`` (into ``held``, or a new dict) as :func:`_held_of` keeps them."""
    held = {} if held is None else held
    container_ip: object = None
    container = ""
    for b in bindings:
        if b.container_ip is not container_ip:
            container_ip, container = b.container_ip, str(b.container_ip)
        held[b.key] = (_kind(b, forced), container, b.container_port, b.count)
    return held


def _runs_of(endpoint: str, held: _Held) -> list[_Run]:
    """An endpoint's bindings (as :func:`_held_of` keeps them) as run rows:
    consecutive single ports of one kind, address pair and shift merge into one."""
    rows: list[list[Any]] = []
    last: list[Any] = [None, None, None, 0, None, None, 0, 0, 0, None]
    texts: dict[tuple[int, int], str] = {}
    for (version, address, proto, port), (kind, container, container_port, count) in sorted(held.items()):
        n = last[7]
        if (count == 1 and last[8] == 1 and last[3] + n == port and last[6] + n == container_port
                and last[9] == (version, address) and last[2] == proto and last[4] == kind and last[5] == container):
            last[7] += 1
            continue
        host = texts.get((version, address))
        if host is None:
            host = texts[(version, address)] = str(ipaddress.IPv4Address(address) if version == 4
                                                   else ipaddress.IPv6Address(address))
        last = [endpoint, host, proto, port, kind, container, container_port, 1, count, (version, address)]
        rows.append(last)
    return [tuple(row[:9]) for row in rows]


def _new_runs(endpoint: str, bindings: list[Binding], forced: Collection[_Key]) -> list[_Run]:
    """The run rows of the bindings of an endpoint that has none yet: taken
    as they come if their keys ascend (a publish's do), else through
    :func:`_runs_of` (sorted, and one binding a key: the last)."""
    rows: list[list[Any]] = []
    previous: _Key = (0, 0, "", 0)
    last: list[Any] = [None, None, None, 0, None, None, 0, 0, 0]
    host_ip: object = None
    container_ip: object = None
    host = container = ""
    # The next binding of the current run, as one spec's come: the next host
    # and container port, with the same address, protocol, type and kind
    # objects. Checked first, with nothing else to do for it (its key ascends:
    # the port is one more); a binding that does not match is looked at below.
    next_port = next_container_port = -1
    proto: object = None
    kind_of: type = Binding
    for b in bindings:
        if (b.host_port == next_port and b.container_port == next_container_port and b.host_ip is host_ip
                and b.container_ip is container_ip and b.proto is proto and type(b) is kind_of and b.count == 1
                and (not forced or _kind(b, forced) == last[4])):
            last[7] += 1
            next_port += 1
            next_container_port += 1
            continue
        if next_port > 0:  # the run's last binding, as the loop below would have left it
            previous = (previous[0], previous[1], previous[2], next_port - 1)
        if b.key <= previous:
            return _runs_of(endpoint, _held(bindings, forced))
        previous = b.key
        if b.host_ip is not host_ip:  # the bindings of one spec share their address objects
            host_ip, host = b.host_ip, ip_text(b.host_ip)
        if b.container_ip is not container_ip:
            container_ip, container = b.container_ip, str(b.container_ip)
        kind = _kind(b, forced)
        port, container_port, n = b.host_port, b.container_port, last[7]
        if (b.count == 1 and last[8] == 1 and last[3] + n == port and last[6] + n == container_port
                and last[1] == host and last[2] == b.proto._value_ and last[4] == kind and last[5] == container):
            last[7] += 1
        else:
            last = [endpoint, host, b.proto._value_, port, kind, container, container_port, 1, b.count]
            rows.append(last)
        n = last[7]
        next_port, next_container_port = (last[3] + n, last[6] + n) if last[8] == 1 else (-1, -1)
        proto, kind_of = b.proto, type(b)
    return [tuple(row) for row in rows]


def _checked(row: _Run) -> _Run:
    """``row``, or ValueError if natmap did not write it (a port out of range:
    the kernel would refuse it; a run of more ports than there are)."""
    endpoint, host, proto, port, kind, container, container_port, n, count = row
    if not all(type(v) is int for v in (port, container_port, n, count)) or not (
            n >= 1 and count >= 1 and (n == 1 or count == 1) and 1 <= port and 1 <= container_port
            and port + n + count - 2 <= 65535 and container_port + n + count - 2 <= 65535) \
            or kind not in _BINDING_KINDS:
        raise ValueError(f"a run natmap did not write: {host} {proto} {port}+{n}x{count} of {endpoint!r}")
    _endpoint_name(endpoint)
    return row


@functools.lru_cache(maxsize=1024)  # a store holds a few hundred endpoints, each with many rows
def _endpoint_name(name: str) -> str:
    """``name`` if natmap could have published it (SpecError, a ValueError, if
    not): the characters natmap's names may have (they reach kernel comments
    and hosts files); the length rule is the callers' (a Binding takes any)."""
    if type(name) is not str:
        raise ValueError(f"an endpoint name natmap did not write: {name!r}")
    return validate_name(name, min_length=1)


def _disjoint(spans: list[_Span]) -> None:
    """ValueError if two runs' spans (version, address, proto, first port,
    last port, endpoint) share a host port: natmap holds one binding a key,
    and the kernel one element (a second would be a conflict it refuses)."""
    spans.sort()
    for a, b in itertools.pairwise(spans):
        if a[:3] == b[:3] and b[3] <= a[4]:
            raise ValueError(f"two runs hold host port {b[3]}/{b[2]} of one address: of endpoints "
                             f"{a[5]!r} and {b[5]!r}")


def _run_items(rows: Iterable[_Run]) -> list[Binding]:
    """The bindings of run rows; raises ValueError (or TypeError) for a row
    natmap did not write (a port out of range: the kernel would refuse it)."""
    made: list[Binding] = []
    addresses: dict[str, IPAddress] = {}
    spans: list[_Span] = []
    for row in rows:
        endpoint, host, proto, port, kind, container, container_port, n, count = _checked(row)
        host_ip = addresses.get(host) or addresses.setdefault(host, ipaddress.ip_address(host))
        spans.append((host_ip.version, int(host_ip), proto, port, port + n + count - 2, endpoint))
        container_ip = addresses.get(container) or addresses.setdefault(container, ipaddress.ip_address(container))
        first = (RoutedBinding if kind == "routed" else Binding)(
            endpoint, Protocol(proto), host_ip, port, container_ip, container_port, count)
        made.append(first)
        if n > 1:
            made += first._on_ports((port + i, container_port + i) for i in range(1, n))
    _disjoint(spans)
    return made


def _runs_from(items: Iterable[Binding], forced: Collection[_Key] = ()) -> list[_Run]:
    """The run rows of ``items`` (bindings of unique keys; those whose key is
    in ``forced``: kind forced)."""
    by_endpoint: dict[str, list[Binding]] = {}
    for b in items:
        by_endpoint.setdefault(b.endpoint, []).append(b)
    return [row for endpoint, mine in by_endpoint.items() for row in _new_runs(endpoint, mine, forced)]


# SQLite's words for a file that is not natmap's store as natmap made it: not
# SQLite's, or its tables changed by hand (dropped, columns gone). Any other
# OperationalError (locked, disk I/O, read-only) is a StoreError, not damage.
_DAMAGE_SIGNS = ("not a database", "malformed", "no such table", "no such column", "has no column named",
                 "values were supplied")

_COLUMNS = "endpoint, host, proto, port, kind, container, container_port, n, count"
_INSERT_RUN = "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"


def _select_runs(db: sqlite3.Connection, endpoints: list[str]) -> list[_Run]:
    """The run rows of ``endpoints`` (primary key lookups, a few hundred a statement)."""
    rows: list[_Run] = []
    for i in range(0, len(endpoints), 500):
        chunk = endpoints[i:i + 500]
        rows += db.execute(f"SELECT {_COLUMNS} FROM runs WHERE endpoint IN ({','.join('?' * len(chunk))})",
                           chunk).fetchall()
    return rows


def _by_endpoint(by_kind: dict[type, list[Item]]) -> tuple[dict[str, list[Binding]], list[_ItemRow]]:
    """One side of a change (its items by type, as Change keeps them): the
    bindings by endpoint, the other items' rows."""
    bindings: dict[str, list[Binding]] = {}
    rows: list[_ItemRow] = []
    for kind, items in by_kind.items():
        if not issubclass(kind, Binding):
            rows += map(_row, items)
            continue
        for endpoint, group in itertools.groupby(items, _ENDPOINT):  # a publish's come together
            mine = bindings.get(endpoint)
            if mine is None:
                bindings[endpoint] = list(group)  # type: ignore[arg-type]  # items of a Binding type
            else:
                mine.extend(group)  # type: ignore[arg-type]
    return bindings, rows


def _change(db: sqlite3.Connection, add: dict[type, list[Item]], delete: dict[type, list[Item]],
            forced: Collection[_Key]) -> _Pending:
    """Write a change (each side's items by type, as Change keeps them): the
    other items by key, the bindings as the runs of the endpoints they
    touch, made again. Returns what takes it back (the pending record):
    those endpoints' rows before, the other items' keys added and rows deleted."""
    deletes, other_delete = _by_endpoint(delete)
    adds, other_add = _by_endpoint(add)
    endpoints = list(dict.fromkeys([*deletes, *adds]))
    before = _select_runs(db, endpoints)
    held: dict[str, _Held] = {}
    _held_of(before, held)
    new_rows: list[_Run] = []
    for endpoint in endpoints:
        mine = held.get(endpoint)
        if mine is None:  # none yet: a publish's runs, as they come
            new_rows += _new_runs(endpoint, adds.get(endpoint, []), forced)
            continue
        for b in deletes.get(endpoint, ()):
            mine.pop(b.key, None)
        new_rows += _runs_of(endpoint, _held(adds.get(endpoint, ()), forced, mine))
    db.executemany("DELETE FROM runs WHERE endpoint = ?", ((e,) for e in held))
    db.executemany(_INSERT_RUN, new_rows)
    db.executemany("DELETE FROM items WHERE key = ?", ((row[0],) for row in other_delete))
    db.executemany("INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?)", other_add)
    # the generation of before the change says nothing about the kernel after it
    db.execute("DELETE FROM meta WHERE name = 'generation'")
    return {"endpoints": endpoints, "runs": before, "added": [row[0] for row in other_add], "deleted": other_delete}


def _restore(db: sqlite3.Connection, pending: _Pending) -> None:
    """Take back the change whose pending record (see :func:`_change`) is ``pending``."""
    db.executemany("DELETE FROM runs WHERE endpoint = ?", ((e,) for e in pending["endpoints"]))
    db.executemany(_INSERT_RUN, [tuple(row) for row in pending["runs"]])
    db.executemany("DELETE FROM items WHERE key = ?", ((key,) for key in pending["added"]))
    db.executemany("INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?)", [tuple(row) for row in pending["deleted"]])
    db.execute("DELETE FROM meta WHERE name = 'generation'")


def _pending_record(text: str) -> _Pending:
    """The pending record (see :func:`_change`) meta holds as ``text``;
    ValueError (or TypeError, KeyError) if natmap did not write it: each
    part is checked here, before any of it is read or written back."""
    record = json.loads(text)
    if type(record) is not dict or sorted(record) != ["added", "deleted", "endpoints", "runs"] \
            or not all(type(record[part]) is list for part in record):
        raise ValueError(f"a pending record natmap did not write: {text[:80]!r}")
    endpoints = [_endpoint_name(e) for e in record["endpoints"]]
    runs = [tuple(row) for row in record["runs"]]
    if any(len(row) != 9 or row[0] not in endpoints for row in runs):
        raise ValueError(f"a pending run natmap did not write: {text[:80]!r}")
    _run_items(runs)  # each run as natmap writes it
    deleted = [tuple(row) for row in record["deleted"]]
    if any(type(key) is not str for key in record["added"]) or any(
            len(row) != 4 or not all(type(v) is str for v in (row[0], row[1], row[3]))
            or row[1] in _BINDING_KINDS for row in deleted):
        raise ValueError(f"a pending item natmap did not write: {text[:80]!r}")
    for row in deleted:
        _stored_item(row)  # each item as natmap writes it
    return {"endpoints": endpoints, "runs": runs, "added": record["added"], "deleted": deleted}


def _migrate(db: sqlite3.Connection, path: str) -> None:
    """Make a format-1 store (one row a binding in items, their keys and rows
    in the pending record) format 2, in place, in one transaction: SQLite's
    write lock is held throughout, so another process opening it meanwhile
    waits, then finds it done (the mark is read again under the lock). A
    change a dead process left pending stays pending, as format 2 records it."""
    kinds = "('binding', 'forced', 'routed')"
    db.execute("BEGIN IMMEDIATE")
    try:
        mark = db.execute("SELECT value FROM meta WHERE name = 'format'").fetchone()
        if mark is not None and str(mark[0]) == FORMAT_1:
            rows = db.execute(f"SELECT key, kind, data FROM items WHERE kind IN {kinds}").fetchall()
            text = db.execute("SELECT value FROM meta WHERE name = 'pending'").fetchone()
            try:
                held = {key: (kind, _binding_of_format_1(kind, data)) for key, kind, data in rows}
                pending = None if text is None else _pending_of_format_1(json.loads(text[0]), held)
            except (ValueError, KeyError, TypeError, IndexError) as exc:
                raise StoreCorruptError(f"natmap's store {path} (format 1) holds a row natmap did not write "
                                        f"({exc!r}); the kernel's rules are untouched: `natmap adopt` rebuilds "
                                        "the store from them") from exc
            db.execute(_RUNS)
            db.execute(f"DELETE FROM items WHERE kind IN {kinds}")
            db.executemany(_INSERT_RUN, _runs_from([b for _, b in held.values()],
                                                   {b.key for kind, b in held.values() if kind == "forced"}))
            if pending is not None:
                db.execute("UPDATE meta SET value = ? WHERE name = 'pending'", (json.dumps(pending),))
            db.execute("UPDATE meta SET value = ? WHERE name = 'format'", (FORMAT,))
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _pending_of_format_1(old: _Pending, held: dict[str, tuple[str, Binding]]) -> _Pending:
    """A format-1 pending record (``added``: row keys, ``deleted``: rows) as
    format 2's: the touched endpoints' bindings before the change, as runs."""
    added = {key for key in old["added"] if key.startswith("binding ")}
    gone = [(row[1], _binding_of_format_1(row[1], row[3])) for row in old["deleted"] if row[1] in _BINDING_KINDS]
    touched = list(dict.fromkeys([held[key][1].endpoint for key in added if key in held]
                                 + [b.endpoint for _, b in gone]))
    before = [(kind, b) for key, (kind, b) in held.items() if key not in added and b.endpoint in touched] + gone
    return {"endpoints": touched,
            "runs": _runs_from([b for _, b in before], {b.key for kind, b in before if kind == "forced"}),
            "added": [key for key in old["added"] if not key.startswith("binding ")],
            "deleted": [row for row in old["deleted"] if row[1] not in _BINDING_KINDS]}


# --- the store -----------------------------------------------------------------------


class Store:
    """One SQLite file: the items natmap means to exist, and its bookkeeping.

    Opened on first use; the file is made 0600 in a 0700 directory. Raises
    :class:`StoreError` (a full disk, a read-only file system) or
    :class:`StoreCorruptError` (not a natmap store, or a row natmap never
    writes) from any method.
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
            if isinstance(exc, sqlite3.OperationalError) and not any(
                    sign in str(exc) for sign in _DAMAGE_SIGNS):
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
                if mark is not None and str(mark[0]) == FORMAT_1:
                    _migrate(db, self.path)
                elif mark is not None and _newer(str(mark[0])):
                    # Not damaged: a newer natmap's. Adopting would set its rows aside.
                    raise StoreError(f"natmap's store {self.path} was written by a newer natmap "
                                     f"(format {_newer(str(mark[0]))}); this one reads format "
                                     f"{FORMAT.split()[1]}: use the newer natmap")
                elif mark is None or str(mark[0]) != FORMAT:
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
                # No fsync: nothing is linked in place until it is whole, and a power
                # cut that loses it loses the kernel's rules as well (see _open).
                db.execute("PRAGMA synchronous=OFF")
                db.executescript(f"BEGIN; {_SCHEMA} INSERT INTO meta VALUES ('format', '{FORMAT}'); COMMIT;")
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
                if items and not db.execute("UPDATE meta SET value = value + 1 WHERE name = 'version'").rowcount:
                    db.execute("INSERT INTO meta VALUES ('version', 1)")  # the first write
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
        version = self.get("version")
        if version is not None and not version.isdecimal():
            with self._damage():
                raise ValueError(f"a version natmap did not write: {version!r}")
        return version

    def items(self, *, bindings: bool = True) -> list[Item]:
        """Every item; without ``bindings``, all but the bindings (a few rows)."""
        with self._translated("reading"):
            db = self._open()
            rows = db.execute("SELECT key, kind, endpoint, data FROM items WHERE kind != 'endpoint'").fetchall()
            runs = db.execute(f"SELECT {_COLUMNS} FROM runs").fetchall() if bindings else []
        return self._decoded(rows, runs)

    def placements(self) -> dict[str, str]:
        """Which bridge each endpoint was published on (:meth:`Table.placed`)."""
        with self._translated("reading"):
            rows = self._open().execute("SELECT key, data FROM items WHERE kind = 'endpoint'").fetchall()
        with self._damage():
            placed = {}
            for key, data in rows:  # as _placement_rows writes them: key "endpoint NAME", data [NAME, BRIDGE]
                pair = json.loads(data)
                if type(pair) is not list or len(pair) != 2 or type(pair[1]) is not str \
                        or key != f"endpoint {_endpoint_name(pair[0])}":
                    raise ValueError(f"an endpoint row natmap did not write: {key!r} {data[:80]!r}")
                placed[pair[0]] = pair[1]
            return placed

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
            runs = self._open().execute(f"SELECT {_COLUMNS} FROM runs WHERE kind = 'forced'").fetchall()
        return {b.key for b in self._decoded([], runs)}  # type: ignore[union-attr]

    def of(self, endpoint: str) -> list[Item]:
        """The bindings of one endpoint and the links from it (an index lookup)."""
        with self._translated("reading"):
            db = self._open()
            rows = db.execute("SELECT key, kind, endpoint, data FROM items WHERE endpoint = ?",
                              (endpoint,)).fetchall()
            runs = _select_runs(db, [endpoint])
        return self._decoded(rows, runs)

    def _decoded(self, rows: list[_ItemRow], runs: Iterable[_Run] = ()) -> list[Item]:
        with self._damage():
            return [_stored_item(row) for row in rows] + _run_items(runs)

    @contextmanager
    def _damage(self) -> Iterator[None]:
        """A row natmap did not write, met reading or changing the items: a damaged store."""
        try:
            yield
        except (ValueError, KeyError, TypeError, IndexError, RecursionError) as exc:  # SpecError is a ValueError
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
        return self._pending() is not None

    def _pending(self) -> _Pending | None:
        """The pending record, checked (:func:`_pending_record`), or None."""
        text = self.get("pending")
        if text is None:
            return None
        with self._damage():
            return _pending_record(text)

    # --- writing ---------------------------------------------------------------

    def begin(self, change: Change, forced: Collection[tuple[int, int, str, int]] = (),
              placed: Mapping[str, str | None] = MappingProxyType({})) -> None:
        """Write ``change`` to the items, and record it as pending: one transaction.
        The added bindings whose key is in ``forced`` are recorded as forced;
        ``placed``, in the same transaction, as :meth:`place` records it (a
        change taken back leaves it: only a hint for an endpoint published).
        The pending record holds what :meth:`undo_pending` needs: the run rows
        the touched endpoints had, the keys of the other items added and the
        rows of those deleted."""
        with self._write("recording the change") as db, self._damage():
            pending = _change(db, change._added, change._deleted, forced)  # by type, as Change sorted them
            self._placement_rows(db, placed)
            db.execute("INSERT OR REPLACE INTO meta VALUES ('pending', ?)", (json.dumps(pending),))

    def undo(self, change: Change) -> None:
        """Take back a change the kernel refused: the store as it was before
        :meth:`begin` (from its pending record; without one, the inverse change),
        pending cleared."""
        pending = self._pending()
        with self._write("taking the change back") as db:
            if pending is not None:
                _restore(db, pending)
            else:
                with self._damage():
                    _change(db, change._deleted, change._added, ())
            db.execute("DELETE FROM meta WHERE name = 'pending'")

    def pending_change(self) -> Change:
        """The change a process recorded and did not finish (it died), as it
        changed the items: empty if none. Its host steps are still to be done:
        the flows it forbids cut, as the change would have cut them."""
        pending = self._pending()
        if pending is None:
            return Change()
        added = pending["added"]
        with self._translated("reading"):
            db = self._open()
            now = _select_runs(db, pending["endpoints"])
            marks = ",".join("?" * len(added))
            rows = db.execute(f"SELECT key, kind, endpoint, data FROM items WHERE key IN ({marks})",
                              added).fetchall() if added else []
        before, after = self._decoded([], pending["runs"]), self._decoded(rows, now)
        was, kept = set(before), set(after)
        return Change(add=tuple(item for item in after if item not in was),
                      delete=tuple([item for item in before if item not in kept] + self._decoded(pending["deleted"])))

    def undo_pending(self) -> None:
        """Take back the pending change a dead process left (the kernel refuses it)."""
        pending = self._pending()
        if pending is None:
            return
        with self._write("taking the pending change back") as db:
            _restore(db, pending)
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
            db.execute("DELETE FROM runs")
            items = list(items)
            db.executemany("INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?)",
                           [_row(i) for i in items if not isinstance(i, Binding)])
            db.executemany(_INSERT_RUN, _runs_from(i for i in items if isinstance(i, Binding)))
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
        # json.dumps([name, bridge]), written out: a big publish places hundreds of endpoints
        quoted = functools.lru_cache(maxsize=None)(_JSON_STRING)  # one bridge for all, often
        db.executemany("INSERT OR REPLACE INTO items VALUES (?, 'endpoint', NULL, ?)",
                       ((f"endpoint {name}", f"[{_JSON_STRING(name)}, {quoted(bridge)}]")
                        for name, bridge in placed.items() if bridge is not None))


def _check_own_file(path: str) -> None:
    """Refuse a store file another user owns or can write: its rows become the kernel's rules."""
    import stat

    st = os.lstat(path)
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise StoreError(f"natmap's store {path} must be owned by uid {os.geteuid()} and writable by no "
                         f"other user (it is uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}): another "
                         "user could have natmap install their rules; remove it or fix it (chown, chmod 600)")

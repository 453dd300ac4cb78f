"""The store's format 2 (a row a run of ports) against what format 1 (a row a
binding) kept: whatever bindings and changes, the store gives back the same
items, forced keys, pending change and undo; a format-1 file opens as it was."""

import ipaddress
import json
import sqlite3

from hypothesis import given, settings
from hypothesis import strategies as st

from natmap import Binding, Bridge, Isolation, Protocol
from natmap.model import Change, RoutedBinding
from natmap.store import FORMAT, Store

HOSTS = [ipaddress.ip_address(a) for a in ("0.0.0.0", "::", "127.0.0.1", "10.0.0.1")]
CONTAINERS = [ipaddress.ip_address(a) for a in ("172.30.0.2", "172.30.0.3", "fd00::2")]


@st.composite
def bindings(draw):
    """A binding of a few endpoints and ports close together (so that runs
    form and break): single ports with a shift, or same-port ranges."""
    port = draw(st.integers(1, 40) | st.integers(65500, 65535))
    count = draw(st.sampled_from([1, 1, 1, 2, 5])) if port <= 65531 else 1
    shift = 0 if count > 1 else draw(st.sampled_from([0, 1, 100, -port + 1]))
    kind = draw(st.sampled_from([Binding, Binding, RoutedBinding]))
    return kind(draw(st.sampled_from(["a", "b", "c"])), draw(st.sampled_from(list(Protocol))),
                draw(st.sampled_from(HOSTS)), port, draw(st.sampled_from(CONTAINERS)),
                min(port + shift, 65535) if count == 1 else port, count)


def ports(b):
    """The host ports a binding catches, as keys."""
    return {(*b.key[:3], port) for port in range(b.host_port, b.last_port + 1)}


def unique(items):
    """One binding a host port, as a table holds them (the last of each; a
    table refuses a range over a port held, and the store's reader too)."""
    taken, kept = set(), []
    for b in reversed(list(items)):
        if not ports(b) & taken:
            taken |= ports(b)
            kept.append(b)
    return kept[::-1]


binding_sets = st.lists(bindings(), max_size=40).map(unique)
OTHERS = (Bridge("natmap0", (ipaddress.ip_network("172.30.0.0/24"),)), Isolation("natmap0"))


def forced_of(items, data):
    return {b.key for b in data.draw(st.lists(st.sampled_from(items))) if type(b) is Binding} if items else set()


def new_store(tmp_path_factory):
    return Store(str(tmp_path_factory.mktemp("store") / "state" / "x.natmap.nft.db"))


@settings(max_examples=60, deadline=None)
@given(items=binding_sets, data=st.data())
def test_items_come_back_as_they_went_in(tmp_path_factory, items, data):
    forced = forced_of(items, data)
    store = new_store(tmp_path_factory)
    store.begin(Change(add=(*items, *OTHERS)), forced)
    store.done(None)
    assert sorted(map(repr, store.items())) == sorted(map(repr, [*items, *OTHERS]))
    assert store.forced() == forced
    for endpoint in "abc":
        assert sorted(map(repr, store.of(endpoint))) == sorted(repr(b) for b in items if b.endpoint == endpoint)
    store.replace([*items, *OTHERS])
    assert set(store.items()) == {*items, *OTHERS} and store.forced() == set()
    store.close()


@settings(max_examples=60, deadline=None)
@given(first=binding_sets, changes=st.lists(st.tuples(binding_sets, st.lists(st.integers(0, 39))), max_size=4),
       data=st.data())
def test_changes_undo_and_pending_are_those_of_a_row_a_binding(tmp_path_factory, first, changes, data):
    """Each change as the model makes it (deletes of held items, adds of free
    keys); held per key as format 1 held it. A change undone, or left pending
    and taken back, leaves the store as it was."""
    store = new_store(tmp_path_factory)
    held = {b.key: b for b in first}
    forced = forced_of(first, data)
    store.begin(Change(add=tuple(first)), forced)
    store.done(None)
    forced_now = set(forced)
    for adds, picks in changes:
        current = list(held.values())
        deleted = unique(current[i] for i in picks if i < len(current))
        gone = {b.key for b in deleted}
        # net, as Table.change makes it: never one item both deleted and added
        taken = {port for b in held.values() if b.key not in gone for port in ports(b)}
        added = [b for b in adds if not ports(b) & taken and b not in deleted]
        change = Change(add=tuple(added), delete=tuple(deleted))
        before = sorted(map(repr, store.items()))
        store.begin(change)
        pending = store.pending_change()  # what recovery cuts the flows of
        assert sorted(map(repr, pending.delete)) == sorted(map(repr, deleted))
        assert sorted(map(repr, pending.add)) == sorted(map(repr, added))
        if data.draw(st.booleans()):
            (store.undo(change) if data.draw(st.booleans()) else store.undo_pending())
            assert sorted(map(repr, store.items())) == before and not store.pending()
            continue
        store.done(None)
        for b in deleted:
            del held[b.key]
            forced_now.discard(b.key)
        for b in added:
            held[b.key] = b
            forced_now.discard(b.key)
        assert sorted(map(repr, store.items())) == sorted(map(repr, held.values()))
        assert store.forced() == forced_now
    store.close()


# --- format 1, as the code before format 2 wrote it ------------------------------------

FORMAT_1_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (key TEXT PRIMARY KEY, kind TEXT NOT NULL, endpoint TEXT, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS items_endpoint ON items (endpoint);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def format_1_row(item, forced=()):
    """A row as format 1 wrote it (natmap.store._rows before format 2)."""
    if isinstance(item, Bridge):
        return f"bridge {item.name}", "bridge", None, json.dumps([item.name, [str(n) for n in item.subnets]])
    if isinstance(item, Isolation):
        return f"isolation {item.bridge}", "isolation", None, json.dumps([item.bridge])
    kind = "routed" if type(item) is RoutedBinding else "forced" if item.key in forced else "binding"
    count = f",{item.count}" if item.count != 1 else ""
    return (f"binding {item.key[0]} {item.host_ip} {item.proto.value} {item.host_port}", kind, item.endpoint,
            f'["{item.endpoint}","{item.proto.value}","{item.host_ip}",{item.host_port},'
            f'"{item.container_ip}",{item.container_port}{count}]')


def format_1_file(path, items, forced=(), pending=None):
    path.parent.mkdir(mode=0o700)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(FORMAT_1_SCHEMA)
    db.execute("INSERT INTO meta VALUES ('format', 'natmap-store 1')")
    db.execute("INSERT INTO meta VALUES ('version', 7)")
    db.executemany("INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?)", [format_1_row(i, forced) for i in items])
    if pending is not None:
        db.execute("INSERT INTO meta VALUES ('pending', ?)", (json.dumps(pending),))
    db.close()
    path.chmod(0o600)


@settings(max_examples=40, deadline=None)
@given(items=binding_sets, after=binding_sets, data=st.data())
def test_a_format_1_store_opens_as_it_was_pending_change_and_all(tmp_path_factory, items, after, data):
    """Made by format 1's SQL, with a change a dead process left pending
    (``after`` now held, ``items`` before): migrated when opened, it gives
    the same items and forced keys, and undoing the pending change gives
    back what was before it."""
    forced = forced_of(after, data)
    before = {b.key: b for b in items}
    now = {b.key: b for b in after}
    added = [b for b in after if before.get(b.key) != b]  # net: what both hold is in neither
    deleted = [b for b in items if now.get(b.key) != b]
    pending = {"added": [format_1_row(b)[0] for b in added] + [format_1_row(OTHERS[0])[0]],
               "deleted": [list(format_1_row(b)) for b in deleted] + [list(format_1_row(OTHERS[1]))]}
    path = tmp_path_factory.mktemp("old") / "state" / "x.natmap.nft.db"
    format_1_file(path, [*after, OTHERS[0]], forced, pending if data.draw(st.booleans()) else None)
    pending_kept = sqlite3.connect(path).execute("SELECT 1 FROM meta WHERE name = 'pending'").fetchone()
    store = Store(str(path))
    assert sorted(map(repr, store.items())) == sorted(map(repr, [*after, OTHERS[0]]))
    assert store.get("format") == FORMAT and store.version() == "7"
    assert store.forced() == {b.key for b in after if b.key in forced and type(b) is Binding}
    if pending_kept:
        pending = store.pending_change()
        assert sorted(map(repr, pending.delete)) == sorted(map(repr, [*deleted, OTHERS[1]]))
        assert sorted(map(repr, pending.add)) == sorted(map(repr, [*added, OTHERS[0]]))
        store.undo_pending()
        assert sorted(map(repr, store.items())) == sorted(map(repr, [*items, OTHERS[1]]))
    store.close()
    assert sqlite3.connect(path).execute("SELECT COUNT(*) FROM items WHERE kind = 'binding'").fetchone() == (0,)


@st.composite
def publishes(draw):
    """An endpoint's bindings as publishes make them: runs of one spec (one
    address, protocol and type object each, consecutive ports with a shift:
    Binding._on_ports), ranges, an address now and then equal but not the
    same object, in the order made (mostly ascending, not always)."""
    made = []
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from([Binding, Binding, RoutedBinding]))
        host = draw(st.sampled_from(HOSTS))
        if draw(st.booleans()):
            host = ipaddress.ip_address(str(host))  # equal, another object
        first, n = draw(st.integers(1, 60)), draw(st.integers(1, 6))
        shift = draw(st.sampled_from([0, 1, 100]))
        count = draw(st.sampled_from([1, 1, 1, 3]))
        b = kind("a", draw(st.sampled_from(list(Protocol))), host, first, draw(st.sampled_from(CONTAINERS)),
                 first if count > 1 else first + shift, count)
        made += [b] if count > 1 else b._on_ports((first + i, first + shift + i) for i in range(n))
    if draw(st.booleans()):
        made.sort(key=lambda b: b.key)  # ascending throughout: every binding taken as it comes
    return unique(made) if draw(st.booleans()) else made  # a key twice: the last one counts


@settings(max_examples=300, deadline=None)
@given(items=publishes(), data=st.data())
def test_a_publish_s_runs_taken_as_they_come_are_those_of_the_sorted_bindings(items, data):
    from natmap.store import _held, _new_runs, _runs_of

    forced = forced_of(items, data) if data.draw(st.booleans()) else set()
    assert _new_runs("a", items, forced) == _runs_of("a", _held(items, forced))


@settings(max_examples=30, deadline=None)
@given(placed=st.dictionaries(st.from_regex(r"[a-z][a-z0-9_.-]{0,20}", fullmatch=True),
                              st.from_regex(r"[a-z][a-z0-9é\"\\-]{0,14}", fullmatch=True), max_size=5))
def test_placement_rows_are_the_json_of_name_and_bridge(tmp_path_factory, placed):
    store = new_store(tmp_path_factory)
    store.place(placed)
    rows = store._open().execute("SELECT key, data FROM items WHERE kind = 'endpoint'").fetchall()
    assert sorted(rows) == sorted((f"endpoint {name}", json.dumps([name, bridge])) for name, bridge in placed.items())
    assert store.placements() == placed
    store.close()

"""natmap's store on its own: no kernel, no root needed."""

import ipaddress
import os
import stat

import pytest

from natmap import Binding, Bridge, Isolation, Link, Protocol, StoreCorruptError, StoreError
from natmap.model import Change
from natmap.store import Store

WEB = Binding("web01", Protocol.TCP, ipaddress.ip_address("0.0.0.0"), 8080,
              ipaddress.ip_address("172.30.0.2"), 5000)
BRIDGE = Bridge("natmap0", (ipaddress.ip_network("172.30.0.0/24"), ipaddress.ip_network("fd00:30::/64")))
LINK = Link("web02", "db01", "db", (ipaddress.ip_address("172.30.0.3"),), (ipaddress.ip_address("172.30.0.2"),),
            ((5432, Protocol.TCP),), ("PGUSER=me",))


@pytest.fixture
def store(tmp_path):
    s = Store(str(tmp_path / "state" / "x.natmap.nft.db"))
    yield s
    s.close()


def test_items_round_trip_with_what_the_kernel_cannot_keep(store):
    store.begin(Change(add=(WEB, BRIDGE, LINK, Isolation("natmap0"))))
    store.done("gen")
    items = store.items()
    assert set(items) == {WEB, BRIDGE, LINK, Isolation("natmap0")}
    assert next(i for i in items if isinstance(i, Bridge)).subnets == BRIDGE.subnets  # its own, not all
    assert next(i for i in items if isinstance(i, Link)).target_env == ("PGUSER=me",)
    assert store.of("web01") == [WEB] and store.of("nobody") == []
    assert store.get("generation") == "gen" and not store.pending()


def test_which_bridge_an_endpoint_is_on_is_kept_beside_the_items(store):
    store.begin(Change(add=(WEB, BRIDGE)), placed={"web01": "natmap0"})
    store.done("gen")
    assert store.placements() == {"web01": "natmap0"}
    assert set(store.items()) == {WEB, BRIDGE} and set(store.items(bindings=False)) == {BRIDGE}
    assert store.of("web01") == [WEB]  # no item: not among the endpoint's
    store.place({"web01": "natmap1", "db01": "natmap0"})
    assert store.placements() == {"web01": "natmap1", "db01": "natmap0"}
    store.place({"web01": None})
    assert store.placements() == {"db01": "natmap0"}


def test_a_gateway_row_keeps_each_families_mode_and_reads_one_of_before(store):
    import json
    import sqlite3

    from natmap import Gateway

    store.begin(Change(add=(Gateway("natmap0", mode_ipv6="routed", trusted=["eth1"]),)))
    assert store.items() == [Gateway("natmap0", "nat", ("eth1",), mode_ipv6="routed")]
    store.close()
    with sqlite3.connect(store.path) as db:  # a row natmap wrote when one mode held for both families
        db.execute("UPDATE items SET data = ? WHERE kind = 'gateway'", (json.dumps(["natmap0", "routed", []]),))
    assert store.items() == [Gateway("natmap0", "routed")]


def test_a_change_is_pending_until_done_and_undo_takes_it_back(store):
    store.begin(Change(add=(WEB,)))
    assert store.pending() and store.get("generation") is None
    store.undo(Change(add=(WEB,)))
    assert store.items() == [] and not store.pending()
    version = store.version()
    store.begin(Change(add=(WEB,)))
    assert store.version() != version
    store.done("gen")
    store.begin(Change(add=(BRIDGE,), delete=(WEB,)))  # what a dead process left
    store.undo_pending()
    assert store.items() == [WEB] and not store.pending()


def test_files_are_0600_in_a_0700_directory(store):
    store.items()
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(store.path)).st_mode) == 0o700


def test_a_directory_others_can_write_is_refused_and_left_as_it_was(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    with pytest.raises(StoreError, match="writable by others"):
        Store(str(shared / "x.natmap.nft.db")).items()
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777


def test_a_damaged_file_is_one_clear_error(tmp_path):
    path = tmp_path / "x.natmap.nft.db"
    tmp_path.chmod(0o700)
    path.write_bytes(b"not a database at all" * 200)
    with pytest.raises(StoreCorruptError, match="natmap adopt"):
        Store(str(path)).items()


def test_a_row_natmap_did_not_write_is_a_damaged_store(store):
    store.begin(Change(add=(WEB,)))
    store._open().execute("UPDATE runs SET proto = 'bad!', container = 'not an address'")
    with pytest.raises(StoreCorruptError, match="did not write"):
        store.items()


def test_a_same_port_range_is_one_row_and_comes_back_whole(store):
    rtp = Binding("media", Protocol.UDP, ipaddress.ip_address("0.0.0.0"), 10000,
                  ipaddress.ip_address("172.30.0.9"), 10000, 10001)  # -p 10000-20000:10000-20000/udp
    store.begin(Change(add=(rtp, WEB)))
    store.done("gen")
    assert set(store.items()) == {rtp, WEB}
    assert next(i for i in store.items() if i == rtp).count == 10001


@pytest.mark.parametrize("damage", ["empty", "foreign"])
def test_an_empty_or_foreign_sqlite_file_is_damaged_never_an_empty_store(tmp_path, damage):
    import sqlite3

    path = tmp_path / "state" / "x.natmap.nft.db"
    first = Store(str(path))
    first.begin(Change(add=(WEB,)))
    first.done("gen")
    first.close()
    if damage == "empty":
        path.write_bytes(b"")  # truncated to 0 bytes: SQLite would open it as a new, empty database
    else:
        path.unlink()
        sqlite3.connect(path).executescript("CREATE TABLE x (y); CREATE TABLE meta (name, value);")
    store = Store(str(path))
    with pytest.raises(StoreCorruptError, match="adopt"):
        store.items()  # read as empty, every binding in the kernel would be deleted as unexpected
    store.close()


def test_a_store_that_is_a_symlink_is_refused(tmp_path):
    (tmp_path / "state").mkdir(mode=0o700)
    (tmp_path / "elsewhere.db").write_bytes(b"")
    (tmp_path / "state" / "x.natmap.nft.db").symlink_to(tmp_path / "elsewhere.db")
    with pytest.raises(StoreError, match="symbolic link"):
        Store(str(tmp_path / "state" / "x.natmap.nft.db")).items()


def test_a_row_with_a_port_the_kernel_would_refuse_is_damage(store):
    store.begin(Change(add=(WEB,)))
    store.done("gen")
    store._open().execute("UPDATE runs SET port = 99999 WHERE kind = 'binding'")
    with pytest.raises(StoreCorruptError, match="adopt"):
        store.items()


NOBODY = 65534


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_a_state_directory_of_another_user_or_a_symlink_is_refused(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, NOBODY, NOBODY)
    with pytest.raises(StoreError, match=r"state directory .*theirs must be owned by uid 0 .*uid 65534, mode 0755"):
        Store(str(theirs / "x.natmap.nft.db")).items()
    assert not os.listdir(theirs)  # nothing made there
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(mine)
    with pytest.raises(StoreError, match="state directory .*link is a symbolic link"):
        Store(str(tmp_path / "link" / "x.natmap.nft.db")).items()
    assert not os.listdir(mine)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
@pytest.mark.parametrize("owner, mode", [(NOBODY, 0o600), (0, 0o666), (0, 0o620)])
def test_a_store_file_another_user_owns_or_can_write_is_refused(tmp_path, owner, mode):
    tmp_path.chmod(0o700)
    store = Store(str(tmp_path / "x.natmap.nft.db"))
    store.replace([WEB])
    store.close()
    os.chown(store.path, owner, owner)
    os.chmod(store.path, mode)
    with pytest.raises(StoreError, match=r"must be owned by uid 0 and writable by no other user"):
        Store(store.path).items()


def test_a_forced_binding_is_kept_as_forced_until_it_is_deleted(store):
    """A binding published with force is a binding to every reader, and forced
    to `natmap check` in any process; deleting it forgets that."""
    other = Binding("web02", Protocol.TCP, ipaddress.ip_address("0.0.0.0"), 8081,
                    ipaddress.ip_address("172.30.0.3"), 5000)
    store.begin(Change(add=(WEB, other, BRIDGE)), {WEB.key})
    store.done(None)
    assert set(store.items()) == {WEB, other, BRIDGE} and store.of("web01") == [WEB]
    assert store.items(bindings=False) == [BRIDGE]
    assert store.forced() == {WEB.key}
    store.begin(Change(delete=(WEB,)))
    store.begin(Change(add=(WEB,)))  # published again without force
    assert store.forced() == set()


def test_items_without_bindings_leave_out_every_kind_of_binding(store):
    """An unchanged file's re-apply reads all but the bindings: a routed one
    (a bridge in Docker's routed mode) is a binding too."""
    from natmap.model import RoutedBinding

    routed = RoutedBinding("web02", Protocol.TCP, ipaddress.ip_address("0.0.0.0"), 8081,
                           ipaddress.ip_address("172.30.0.3"), 5000)
    store.begin(Change(add=(WEB, routed, BRIDGE)), {WEB.key})
    store.done(None)
    assert set(store.items()) == {WEB, routed, BRIDGE}
    assert store.items(bindings=False) == [BRIDGE]


def test_a_process_ending_without_close_leaves_its_commits_for_the_next(tmp_path):
    """natmap and natmap-cni end by os._exit with the store left open (no
    checkpoint's fsyncs): the commits stay in the WAL, whole, and the next
    process reads them; a store closed the usual way has no WAL left."""
    import subprocess
    import sys

    path = str(tmp_path / "state" / "x.natmap.nft.db")
    program = f"""
import sys
from natmap import Binding, Protocol
from natmap.model import Change
from natmap import store
if sys.argv[1] == "kept":
    store.leave_open_until_exit()
s = store.Store({path!r})
s.begin(Change(add=(Binding("web01", Protocol.TCP, "0.0.0.0", 8080, "172.30.0.2", 80),)))
s.done("1")
s.close()
print("answered", end="")
store.exit_without_close(7)
"""
    ended = subprocess.run([sys.executable, "-c", program, "kept"], capture_output=True, text=True)
    assert (ended.returncode, ended.stdout) == (7, "answered")  # the answer flushed, the status kept
    assert os.path.getsize(path + "-wal") > 0  # no checkpoint ran: the commits are in the WAL
    again = Store(path)
    assert [str(b) for b in again.items()] == ["0.0.0.0:8080"] and not again.pending()
    assert again.get("generation") == "1"
    again.close()
    assert not os.path.exists(path + "-wal")  # the last close checkpointed it into the file

    subprocess.run([sys.executable, "-c", program, "closed"], capture_output=True, check=False)
    assert not os.path.exists(path + "-wal")


def test_a_run_of_more_ports_than_there_are_is_damage_to_a_read_and_to_a_change(store):
    """A run row is read back port by port: a damaged count is refused before
    any is made (a change reads the endpoint's runs too), and nothing is written."""
    store.begin(Change(add=(WEB,)))
    store.done("gen")
    store._open().execute("UPDATE runs SET n = 1000000000")
    with pytest.raises(StoreCorruptError, match="adopt"):
        store.items()
    with pytest.raises(StoreCorruptError, match="adopt"):
        store.begin(Change(delete=(WEB,)))
    assert not store.pending() and store.get("generation") == "gen"


# --- everything read is checked at one boundary: a row natmap never writes is damage ---


def _edited(store, sql):
    """``store`` holding WEB, then edited by hand with ``sql``; a new Store on the file."""
    import sqlite3

    store.begin(Change(add=(WEB, BRIDGE)))
    store.done(None)
    store.close()
    db = sqlite3.connect(store.path)
    db.executescript(sql)
    db.close()
    return Store(store.path)


PENDING_EDITS = {
    "not JSON": "garbage",
    "nested past Python's recursion": "[" * 100_000,
    "a list": "[1, 2]",
    "a key missing": '{"endpoints": []}',
    "a key more": '{"endpoints": [], "runs": [], "added": [], "deleted": [], "x": 1}',
    "an endpoint not a name": '{"endpoints": ["web 01"], "runs": [], "added": [], "deleted": []}',
    "a run of another endpoint": '{"endpoints": [], "runs": [["web01", "0.0.0.0", "tcp", 80, "binding", '
                                 '"172.30.0.2", 80, 1, 1]], "added": [], "deleted": []}',
    "a run out of range": '{"endpoints": ["web01"], "runs": [["web01", "0.0.0.0", "tcp", 65535, "binding", '
                          '"172.30.0.2", 80, 2, 1]], "added": [], "deleted": []}',
    "a run short": '{"endpoints": ["web01"], "runs": [["web01", "0.0.0.0"]], "added": [], "deleted": []}',
    "an added key not text": '{"endpoints": [], "runs": [], "added": [1], "deleted": []}',
    "a deleted row not an item": '{"endpoints": [], "runs": [], "added": [], '
                                 '"deleted": [["bridge x", "bridge", null, "[1]"]]}',
    "a deleted row a binding": '{"endpoints": [], "runs": [], "added": [], '
                               '"deleted": [["binding x", "binding", "web01", "[]"]]}',
}


@pytest.mark.parametrize("text", PENDING_EDITS.values(), ids=list(PENDING_EDITS))
def test_a_pending_record_natmap_did_not_write_is_damage_whatever_reads_it(store, text):
    edited = _edited(store, "INSERT OR REPLACE INTO meta VALUES ('pending', '" + text.replace("'", "''") + "')")
    for read in (edited.pending, edited.pending_change, edited.undo_pending, lambda: edited.undo(Change())):
        with pytest.raises(StoreCorruptError, match=r"holds a row natmap did not write.*`natmap adopt` rebuilds"):
            read()
    edited.close()


ROW_EDITS = {
    "two endpoints on one host port": "INSERT INTO runs SELECT 'web02', host, proto, port, kind, container, "
                                      "container_port, n, count FROM runs",
    "an endpoint name with a space": "UPDATE runs SET endpoint = 'web 01'",
    "a run over another": "INSERT INTO runs SELECT endpoint, host, proto, port - 1, kind, container, "
                          "container_port - 1, 3, 1 FROM runs",
    "a range over a run": "INSERT INTO runs SELECT endpoint, host, proto, port - 5, kind, container, "
                          "port - 5, 1, 9 FROM runs",
    "an item row's key not its item's": "UPDATE items SET key = 'bridge other' WHERE kind = 'bridge'",
    "an item row's kind not its item's": "UPDATE items SET kind = 'isolation' WHERE kind = 'bridge'",
    "a binding row in items (format 1's)": "INSERT INTO items VALUES ('binding web02', 'binding', 'web02', "
                                           "'[\"web02\", \"tcp\", \"0.0.0.0\", 81, \"172.30.0.3\", 80]')",
    "an endpoint row not a pair": "INSERT INTO items VALUES ('endpoint web01', 'endpoint', NULL, '[\"web01\"]')",
    "an endpoint row an object": "INSERT INTO items VALUES ('endpoint ab', 'endpoint', NULL, '{\"ab\": 1, \"x\": 2}')",
    "an endpoint row of another key": "INSERT INTO items VALUES ('endpoint web09', 'endpoint', NULL, '[\"web01\", \"x\"]')",
    "an endpoint row's name not a name": "INSERT INTO items VALUES ('endpoint x', 'endpoint', NULL, '[\"a b\", \"x\"]')",
}


@pytest.mark.parametrize("sql", ROW_EDITS.values(), ids=list(ROW_EDITS))
def test_a_row_natmap_never_writes_is_damage(store, sql):
    edited = _edited(store, sql)
    with pytest.raises(StoreCorruptError, match=r"holds a row natmap did not write.*`natmap adopt` rebuilds"):
        edited.items()
        edited.placements()
    edited.close()


def test_a_row_natmap_never_writes_is_damage_to_a_change_too(store):
    edited = _edited(store, ROW_EDITS["a run over another"])
    with pytest.raises(StoreCorruptError, match="`natmap adopt` rebuilds"):
        edited.begin(Change(delete=(WEB,)))
    assert not edited.pending()  # nothing written
    edited.close()


@pytest.mark.parametrize("sql", ["DROP TABLE runs", "ALTER TABLE runs DROP COLUMN count", "DROP TABLE items"])
def test_a_table_changed_by_hand_is_damage_not_a_failed_read(store, sql):
    edited = _edited(store, sql)
    with pytest.raises(StoreCorruptError, match=r"is damaged \(.*\); .*`natmap adopt` rebuilds"):
        edited.items()
    with pytest.raises(StoreCorruptError, match="`natmap adopt` rebuilds"):
        edited.replace([WEB])  # adopt's write: damage, so adopt sets the file aside
    edited.close()


def test_a_version_natmap_did_not_write_is_damage(store):
    edited = _edited(store, "UPDATE meta SET value = 'x' WHERE name = 'version'")
    with pytest.raises(StoreCorruptError, match="a version natmap did not write"):
        edited.version()
    edited.close()


@pytest.mark.parametrize("mark", ["natmap-store 3", "natmap-store 12"])
def test_a_store_of_a_newer_natmap_is_a_store_error_without_the_adopt_advice(store, mark):
    edited = _edited(store, f"UPDATE meta SET value = '{mark}' WHERE name = 'format'")
    with pytest.raises(StoreError) as caught:
        edited.items()
    assert type(caught.value) is StoreError  # not damaged: `natmap adopt` would set it aside
    assert str(caught.value) == (f"natmap's store {store.path} was written by a newer natmap "
                                 f"(format {mark.split()[1]}); this one reads format 2: use the newer natmap")


@pytest.mark.parametrize("mark", ["natmap-store 0", "natmap-store x", "natmap-store", "other 3"])
def test_a_mark_of_no_natmap_is_still_damage(store, mark):
    edited = _edited(store, f"UPDATE meta SET value = '{mark}' WHERE name = 'format'")
    with pytest.raises(StoreCorruptError, match="no format mark"):
        edited.items()

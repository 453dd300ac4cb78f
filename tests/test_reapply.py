"""Re-applying a file (issue 15): an unchanged file costs the same whatever
its size, in a new process too, and the kernel is checked all the same.

Each new NatMap here stands for a new `natmap apply` process: it shares only
what a process shares with the one before (the store on disk, the kernel:
one FakeBackend, the host: one FakeHost). What the engine asks of the kernel
and the host is counted through the fakes' ``events``."""

import ipaddress
import os

import pytest

import natmap
from natmap import Binding, NatMap, PortRange
from natmap.backends.base import FakeBackend
from natmap.host import FakeHost
from natmap.model import Bridge

BRIDGE = Bridge("natmap0", (ipaddress.ip_network("172.30.0.0/16"),))
# The host queries a publish makes for its endpoint (its bridge, its
# addresses, the port pool, sockets, other tables): none may come per endpoint.
PER_ENDPOINT = {"host.bridge", "host.interface_facts", "host.local_addresses", "host.listeners",
                "host.listening_ports", "host.port_range", "host.reserved_ports", "host.natmap_tables"}


class Processes:
    """New `natmap` processes on one host: each call a NatMap with nothing in
    memory from the one before; they share the store on disk, the kernel
    (one FakeBackend) and the host (one FakeHost), whose calls go to ``events``."""

    def __init__(self, tmp_path) -> None:
        tmp_path.mkdir(exist_ok=True)
        self.events: list[str] = []
        self.backend = FakeBackend(events=self.events)
        self.host = FakeHost([BRIDGE], ports=PortRange(40000, 60000), events=self.events)
        self.dirs = dict(lock_dir=str(tmp_path / "locks"), state_dir=str(tmp_path / "state"))
        self.made: list[NatMap] = []

    def __call__(self) -> NatMap:
        self.made.append(NatMap(backend=self.backend, host=self.host, **self.dirs))
        return self.made[-1]


@pytest.fixture
def process(tmp_path):
    processes = Processes(tmp_path)
    yield processes
    for nm in processes.made:
        nm.close()


def write(path, n, *, extra=""):
    """A file of ``n`` endpoints: explicit and assigned ports, a link, an isolated bridge."""
    base = ipaddress.IPv4Address("172.30.1.0")
    lines = ["[bridges.natmap0]", "isolate = true", ""]
    for i in range(n):
        lines += [f"[endpoints.ep{i}]", f'ip = "{base + i}"', 'bridge = "natmap0"',
                  f'publish = ["{10000 + i}:80", "::{9000 + i % 7}"]', ""]
    lines += ["[endpoints.client]", 'ip = "172.30.0.200"', 'bridge = "natmap0"', 'links = ["ep0:web"]', extra]
    path.write_text("\n".join(lines))
    return path


def reapplied(process, path):
    """What a new process's apply of ``path`` changed and asked for."""
    nm = process()
    process.events.clear()
    change = nm.apply(path)
    return change, list(process.events)


@pytest.mark.parametrize("n", [10, 300])
def test_an_unchanged_file_applied_again_by_a_new_process_asks_nothing_per_endpoint(process, tmp_path, n):
    path = write(tmp_path / "lab.toml", n)
    first = process().apply(path)
    assert len(first.added(Binding)) == 2 * n and process.backend.commits == 1
    change, asked = reapplied(process, path)
    assert not change and process.backend.commits == 1  # no kernel transaction
    assert not PER_ENDPOINT & set(asked), asked
    # O(1): the kernel's generation (is it as natmap's last commit left it?), nothing read
    assert [e for e in asked if e.startswith("backend.")] == ["backend.generation"]


def test_an_unchanged_file_costs_the_same_calls_whatever_its_size(tmp_path):
    asked = {}
    for n in (5, 500):
        process = Processes(tmp_path / str(n))
        path = write(tmp_path / f"lab{n}.toml", n)
        process().apply(path)
        asked[n] = reapplied(process, path)[1]
    assert asked[5] == asked[500]


def test_a_binding_the_kernel_lost_is_put_back_by_reapplying_the_unchanged_file(process, tmp_path):
    path = write(tmp_path / "lab.toml", 20)
    process().apply(path)
    lost = next(b for b in process.backend.items if isinstance(b, Binding) and b.endpoint == "ep3")
    process.backend.commit_elsewhere(delete=[lost])  # `nft delete element ...` by hand: the generation moves
    assert not process().apply(path)  # the file's change: none (the repair is drift's, as in any change)
    assert lost in process.backend.items and not process().check()


def test_a_table_flushed_away_is_made_again_by_reapplying_the_unchanged_file(process, tmp_path):
    path = write(tmp_path / "lab.toml", 20)
    process().apply(path)
    held = set(process.backend.items)
    process.backend.delete()  # `nft flush ruleset`
    process().apply(path)
    assert process.backend.items == held and not process().check()


def test_what_another_process_changed_since_is_undone_by_reapplying_the_unchanged_file(process, tmp_path):
    path = write(tmp_path / "lab.toml", 20)
    process().apply(path)
    extra = natmap.Endpoint("extra", "172.30.0.100", "natmap0")
    process().publish(extra, ["7777:80"])
    process().unpublish("ep1")
    change = process().apply(path)
    assert [b.endpoint for b in change.deleted(Binding)] == ["extra"]
    assert {b.endpoint for b in change.added(Binding)} == {"ep1"}
    assert not process().apply(path)


def test_an_edited_file_is_read_again(process, tmp_path):
    path = write(tmp_path / "lab.toml", 20)
    process().apply(path)
    change = process().apply(write(path, 20, extra='publish = ["8888:80"]'))
    assert [str(b) for b in change.added(Binding)] == ["0.0.0.0:8888"] and not change.deleted(Binding)


def test_a_failed_apply_is_not_taken_for_an_applied_file(process, tmp_path):
    path = write(tmp_path / "lab.toml", 20)
    process.backend.fail_next("apply")
    with pytest.raises(natmap.BackendError):
        process().apply(path)
    assert not process.backend.items
    change = process().apply(path)
    assert len(change.added(Binding)) == 40 and process.backend.items


def test_a_file_applied_through_a_config_and_through_its_path_agree(process, tmp_path):
    """The path only spares the parse: the same file, as a Config, changes nothing either."""
    path = write(tmp_path / "lab.toml", 20)
    process().apply(path)
    assert not process().apply(natmap.Config.load(path))
    assert not process().plan(natmap.Config.load(path))
    assert not process().apply(path)


def test_a_file_that_cannot_be_read_is_a_config_error(process, tmp_path):
    with pytest.raises(natmap.ConfigError, match="cannot read it"):
        process().apply(tmp_path / "nosuch.toml")
    (tmp_path / "bad.toml").write_bytes(b"[endpoints\n")
    with pytest.raises(natmap.ConfigError, match="bad.toml: not valid TOML"):
        process().apply(str(tmp_path / "bad.toml"))


def test_a_store_that_cannot_note_the_file_fails_nothing(process, tmp_path, monkeypatch):
    """The note is a shortcut for the next apply: without it, that apply reconciles the file."""
    from natmap.store import Store

    def full(self, digest):
        raise natmap.StoreError("disk full")

    path = write(tmp_path / "lab.toml", 5)
    monkeypatch.setattr(Store, "record_applied", full)
    assert process().apply(path)
    monkeypatch.undo()
    process.events.clear()
    assert not process().apply(path)
    assert "host.bridge" in process.events  # reconciled: the file was not taken for applied
    assert not process().apply(path) and process.backend.commits == 1


def test_a_namespace_made_again_with_the_same_inode_and_generation_is_not_trusted(process, tmp_path, monkeypatch):
    """`ip netns del X; ip netns add X`: the kernel may give the new namespace
    the old one's nsfs inode, and its nftables generation may reach the
    recorded number; its cookie is new, so the table is made again."""
    path = write(tmp_path / "lab.toml", 5)
    monkeypatch.setattr("natmap.engine.netns_cookie", lambda: 101)
    process().apply(path)
    held, commits = set(process.backend.items), process.backend.commits
    process.backend.items = None  # the new namespace: no table, the same generation number, the same inode
    assert process.backend.commits == commits
    monkeypatch.setattr("natmap.engine.netns_cookie", lambda: 102)
    process().apply(path)
    assert process.backend.items == held and not process().check()


def test_the_same_namespace_stays_trusted(process, tmp_path, monkeypatch):
    path = write(tmp_path / "lab.toml", 5)
    monkeypatch.setattr("natmap.engine.netns_cookie", lambda: 101)
    process().apply(path)
    change, asked = reapplied(process, path)
    assert not change and [e for e in asked if e.startswith("backend.")] == ["backend.generation"]


def test_an_anonymous_namespace_made_again_with_the_same_inode_gets_a_store_of_its_own(tmp_path, monkeypatch):
    """An anonymous namespace's store is named by its inode and its cookie: a
    new namespace that gets a deleted one's inode does not take its rules."""
    monkeypatch.setattr("natmap.engine._netns_name", lambda home: None)  # neither the root nor a named one
    paths = []
    for cookie in (101, 102):
        monkeypatch.setattr("natmap.engine.netns_cookie", lambda: cookie)
        with NatMap(backend=FakeBackend(), host=FakeHost([BRIDGE]), lock_dir=str(tmp_path / "locks"),
                    state_dir=str(tmp_path / "state")) as nm:
            paths.append(os.path.basename(nm.state_path))
    assert paths[0] != paths[1] and paths[0].startswith("anon-") and "-101." in paths[0]

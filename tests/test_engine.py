"""The engine (NatMap, Transaction) through its seams, without root: a
FakeBackend holds the table, a FakeHost the host's facts and settings, and
the lock files live in a temporary directory. The kernel tests prove the same
flows with real traffic; these prove the engine's own logic: cache and
generation, rollback, dry runs, locking, the order of host steps."""

import ipaddress
import os
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import natmap
from natmap import (BackendError, Binding, ConflictError, Endpoint, Isolation, Loopback6Error, NatMap, PortRange,
                    NotFoundError, Protocol, TransactionClosedError, TransactionOpenError,
                    UnknownInterfaceError)
from natmap.backends.base import FakeBackend
from natmap.host import FakeHost
from natmap.model import Bridge

BRIDGE = Bridge("natmap0", (ipaddress.ip_network("172.30.0.0/24"), ipaddress.ip_network("fd00:30::/64")))
WEB = Endpoint("web01", "172.30.0.2", "natmap0", ipv6="fd00:30::2", expose=["5000"])
DB = Endpoint("db01", "172.30.0.3", "natmap0", expose=["5432"])
OTHER = Binding("other", "tcp", "0.0.0.0", 8080, "172.30.0.9", 80)  # another writer's


@pytest.fixture(autouse=True)
def state_dir(tmp_path_factory, monkeypatch):
    """Each test's own store: a FakeBackend's table starts empty, and so must natmap's store of it."""
    path = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("NATMAP_STATE_DIR", str(path))
    return path


@pytest.fixture
def events():
    return []


@pytest.fixture
def backend(events):
    return FakeBackend(events=events)


@pytest.fixture
def host(events):
    return FakeHost([BRIDGE], ports=PortRange(40000, 40009), events=events)


@pytest.fixture
def nm(backend, host, tmp_path):
    with NatMap(backend=backend, host=host, lock_dir=str(tmp_path)) as instance:
        yield instance


def lines(bindings):
    return [b.port_line() for b in bindings]


# --- publish, unpublish, link, isolate ----------------------------------------------


def test_publish_creates_the_table_with_the_bridge_and_the_bindings_in_one_apply(nm, backend):
    made = nm.publish(WEB, ["8080:5000", "127.0.0.1:5001:5000"])
    assert lines(made) == ["5000/tcp -> 0.0.0.0:8080", "5000/tcp -> 127.0.0.1:5001", "5000/tcp -> [::]:8080"]
    assert len(backend.applied) == 1 and backend.last_text.startswith("create table\n")
    assert backend.dump().splitlines() == [
        "bridge natmap0 172.30.0.0/24 fd00:30::/64",
        "port web01 5000/tcp -> 0.0.0.0:8080",
        "port web01 5000/tcp -> 127.0.0.1:5001",
        "port web01 5000/tcp -> [::]:8080",
    ]
    assert nm.backend_name == "fake"
    assert lines(nm.port("web01", 5000)) == lines(nm.bindings()) == [
        "5000/tcp -> 0.0.0.0:8080", "5000/tcp -> 127.0.0.1:5001", "5000/tcp -> [::]:8080"]


def test_assigned_ports_skip_reserved_and_listening_ones(backend, tmp_path):
    host = FakeHost([BRIDGE], ports=PortRange(40000, 40009), reserved=[40000],
                    listening={Protocol.TCP: [40001]})
    nm = NatMap(backend=backend, host=host, lock_dir=str(tmp_path))
    assert [b.host_port for b in nm.publish(WEB, [], publish_all=True)] == [40002, 40002]


def test_unpublish_removes_the_bindings_and_forgets_their_flows_after_the_commit(nm, backend, host, events):
    made = nm.publish(WEB, ["8080:5000"])
    events.clear()
    assert nm.unpublish("web01") == made
    assert set(backend.last_change.delete) == set(made) and not backend.last_change.add
    assert events.index("backend.apply") < events.index("host.forget_flows")
    assert host.forgotten[-1] == (made, [], [])
    with pytest.raises(NotFoundError, match="No such endpoint: web01"):
        nm.port("web01")


def test_link_and_isolate_are_items_of_the_table_and_hook_bridged_traffic_after_the_commit(nm, backend, host,
                                                                                           events):
    nm.publish(WEB, ["8080:5000"])
    link = nm.link(DB, WEB, "web")
    assert "WEB_PORT=tcp://172.30.0.2:5000" in link.env
    assert link in backend.items and nm.links() == [link]
    events.clear()
    nm.isolate("natmap0")
    assert Isolation("natmap0") in backend.items and nm.isolated() == ["natmap0"]
    assert events.index("host.check_bridge_hooks") < events.index("backend.apply") < \
        events.index("host.hook_bridged_traffic")
    assert host.bridged_ipv4 and host.bridged_ipv6
    nm.unlink("db01", "web01")
    assert link not in backend.items and host.forgotten[-1][1] == [link]
    nm.unisolate("natmap0")
    assert nm.isolated() == []


def test_isolating_without_br_netfilter_applies_nothing(backend, tmp_path):
    nm = NatMap(backend=backend, host=FakeHost([BRIDGE], br_netfilter=False), lock_dir=str(tmp_path))
    with pytest.raises(BackendError, match="br_netfilter"):
        nm.isolate("natmap0")
    assert backend.applied == []


def test_loopback6_bindings_and_hooked_bridged_ipv6_exclude_each_other(nm, host):
    nm.publish(WEB, ["[::1]:5002:5000"])
    with pytest.raises(Loopback6Error, match="bridge-nf-call-ip6tables"):
        nm.isolate("natmap0")
    nm.unpublish("web01")
    nm.isolate("natmap0")
    with pytest.raises(Loopback6Error):
        nm.publish(WEB, ["[::1]:5002:5000"])
    assert issubclass(Loopback6Error, natmap.NatmapError)


def test_host_settings_for_a_new_bridge_come_after_the_commit(nm, host, events):
    nm.publish(WEB, ["127.0.0.1:5001:5000"])
    apply = events.index("backend.apply")
    assert apply < events.index("host.enable_route_localnet") and apply < events.index("host.enable_loopback6")
    assert host.route_localnet == host.loopback6 == {"natmap0"}
    events.clear()
    nm.publish(DB, ["5432:5432"])  # the bridge is there already: nothing set again
    assert "host.enable_route_localnet" not in events


def test_an_unknown_bridge_is_refused_before_anything_is_applied(nm, backend):
    with pytest.raises(UnknownInterfaceError, match="nosuchbr"):
        nm.publish(Endpoint("web01", "172.30.0.2", "nosuchbr"), ["8080:5000"])
    assert backend.applied == []


def test_remove_deletes_the_table_and_forgets_every_flow(nm, backend, host):
    made = nm.publish(WEB, ["8080:5000"])
    nm.remove()
    assert backend.items is None and set(host.forgotten[-1][0]) == set(made)
    assert nm.bindings() == []  # a table that is not there holds nothing


def test_close_closes_both_seams(backend, host, tmp_path):
    NatMap(backend=backend, host=host, lock_dir=str(tmp_path)).close()
    assert backend.closed and host.closed


# --- conflicts ----------------------------------------------------------------------


def test_a_conflict_names_both_owners_and_applies_nothing(nm, backend):
    nm.publish(WEB, ["8080:5000"])
    with pytest.raises(ConflictError, match="'db01' conflicts with 0.0.0.0:8080/tcp of endpoint 'web01'"):
        nm.publish(DB, ["5432:5432", "8080:5432"])
    assert len(backend.applied) == 1 and "db01" not in backend.dump()
    assert lines(nm.publish(DB, ["5432:5432"])) == ["5432/tcp -> 0.0.0.0:5432"]


# --- the cache and the generation ------------------------------------------------


def test_the_table_is_read_once_while_nobody_else_commits(nm, events):
    nm.publish(WEB, ["8080:5000"])
    events.clear()
    nm.publish(DB, ["5432:5432"])
    nm.unpublish("db01")
    assert "backend.read" not in events


def test_a_commit_by_another_writer_between_transactions_is_read_again(nm, backend, host, tmp_path):
    nm.publish(WEB, ["8081:5000"])
    # Another natmap process: it records what it writes in natmap's store, as every writer does.
    NatMap(backend=backend, host=host, lock_dir=str(tmp_path)).publish(
        Endpoint("other", "172.30.0.9", "natmap0"), ["8080:80"])
    with pytest.raises(ConflictError, match="endpoint 'other'"):
        nm.publish(DB, ["8080:5432"])
    assert OTHER in nm.bindings()


def test_a_commit_while_natmap_reads_makes_it_read_again(nm, backend, events):
    backend.before_next("read", lambda: backend.commit_elsewhere(add=[OTHER]))
    with pytest.raises(ConflictError, match="endpoint 'other'"):
        nm.publish(DB, ["8080:5432"])
    assert events.count("backend.read") == 2


def test_a_commit_elsewhere_during_apply_makes_the_next_transaction_read_again(nm, backend, events):
    nm.publish(WEB, ["8080:5000"])
    backend.before_next("generation", lambda: None)  # the generation read at the start
    backend.before_next("generation", backend.bump)  # the one after apply: someone committed
    nm.publish(DB, ["5432:5432"])
    events.clear()
    nm.unpublish("db01")
    assert "backend.read" in events


def test_a_commit_elsewhere_during_a_call_that_commits_nothing_makes_the_next_read_again(nm, backend, events):
    """natmap's own commit moves the generation by one: a call that makes none
    (a publish of what is there) must not take another program's one commit for it
    (the attacker trial: a deleted element stayed missing, the kernel trusted)."""
    web = nm.publish(WEB, ["8080:5000"])
    backend.bump()  # another program's commit: the next call reads the kernel, finds nothing to repair
    backend.before_next("generation", lambda: None)  # the one read at the start
    backend.before_next("generation", lambda: None)  # the one read before the kernel (_inspect)
    backend.before_next("generation", lambda: backend.commit_elsewhere(delete=[web[0]]))  # the one after
    assert nm.publish(WEB, ["8080:5000"]) == web  # nothing to commit
    events.clear()
    nm.publish(DB, ["5432:5432"])
    assert "backend.read" in events and web[0] in backend.items and not nm.check()


def test_a_commit_elsewhere_just_after_repair_read_the_kernel_is_never_trusted(nm, backend, monkeypatch):
    """The generation is read before the kernel, so a commit landing right after
    natmap's read (which misses it) is not taken for seen (the second attacker
    trial: a repair, then every later call, left db01's binding missing)."""
    web, db = nm.publish(WEB, ["8080:5000"]), nm.publish(DB, ["5432:5432"])
    backend.commit_elsewhere(delete=[web[0]])  # drift for the repair
    inspect = backend.inspect

    def inspect_then_someone_commits():
        seen = inspect()
        if db[0] in backend.items:
            backend.commit_elsewhere(delete=[db[0]])  # after natmap's read: the read misses it
        return seen

    monkeypatch.setattr(backend, "inspect", inspect_then_someone_commits)
    nm.repair()
    monkeypatch.undo()
    nm.publish(Endpoint("more", "172.30.0.8", "natmap0"), ["9001:91"])  # must read the kernel and repair db's
    assert not nm.check()


def test_a_commit_elsewhere_during_the_host_steps_makes_the_next_transaction_read_again(nm, backend, host, events,
                                                                                      monkeypatch):
    nm.publish(WEB, ["8080:5000"])
    forget = host.forget_flows

    def commit_then_forget(*args):
        backend.bump()  # another program commits after natmap's commit, before the change is marked done
        return forget(*args)

    monkeypatch.setattr(host, "forget_flows", commit_then_forget)
    nm.publish(DB, ["5432:5432"])
    monkeypatch.undo()
    events.clear()
    nm.unpublish("db01")
    assert "backend.read" in events


def test_the_namespace_is_checked_at_every_call_though_nested_ones_skip_entering(nm, monkeypatch):
    nm.publish(WEB, ["8080:5000"])  # its calls in the namespace, nested ones at once
    home = natmap.engine.current_netns()
    monkeypatch.setattr(natmap.engine, "current_netns", lambda: (home[0], home[1] + 1))  # the thread moved away
    for call in (lambda: nm.publish(DB, ["5432:5432"]), lambda: nm.port("web01"), nm.check):
        with pytest.raises(natmap.WrongNamespaceError):
            call()
    monkeypatch.undo()
    assert len(nm.port("web01")) == 2 and not nm.check()


def test_a_nested_call_runs_in_its_own_namespace_when_user_code_entered_another(tmp_path, monkeypatch):
    """A's Backend, called inside A's block, calls B (another namespace),
    whose Backend calls A: that call of A runs in A's namespace, not B's (a
    flag of "inside A's block" skipped entering). The namespaces here are
    names a fake setns keeps per thread."""
    from contextlib import contextmanager

    where = threading.local()

    @contextmanager
    def entered(name=None, *, ns_path=None):
        before = getattr(where, "ns", "root")
        where.ns = name or before
        try:
            yield
        finally:
            where.ns = before

    monkeypatch.setattr(natmap.engine, "entered_netns", entered)
    monkeypatch.setattr(natmap.engine, "current_netns", lambda: (0, hash(getattr(where, "ns", "root"))))
    seen, calls = [], {}

    class Calling(FakeBackend):
        def read(self, foreign=None):
            seen.append((self.label, where.ns))
            if self.label in calls:
                calls.pop(self.label)()
            return super().read(foreign)

    backends = {label: Calling() for label in "ab"}
    for label, backend in backends.items():
        backend.label = label
    with NatMap(netns="a", backend=backends["a"], host=FakeHost([BRIDGE]), lock_dir=str(tmp_path)) as a, \
            NatMap(netns="b", backend=backends["b"], host=FakeHost([BRIDGE]), lock_dir=str(tmp_path)) as b:
        seen.clear()
        calls.update(a=b.bindings, b=a.bindings)
        assert a.bindings() == []
    assert seen == [("a", "a"), ("b", "b"), ("a", "a")]  # a, inside b, inside a


# --- rollback ---------------------------------------------------------------------


def test_a_failing_apply_rolls_memory_back_and_leaves_the_table_as_it_was(nm, backend, host):
    nm.publish(WEB, ["8080:5000"])
    before, forgotten = backend.dump(), list(host.forgotten)
    backend.fail_next("apply")
    with pytest.raises(BackendError, match="fake: apply failed"):
        with nm.transaction() as tx:
            tx.unpublish("web01")
            tx.publish(DB, ["5432:5432"])
    assert backend.dump() == before and host.forgotten == forgotten
    assert lines(nm.port("web01")) == ["5000/tcp -> 0.0.0.0:8080", "5000/tcp -> [::]:8080"]
    with pytest.raises(NotFoundError):
        nm.port("db01")
    nm.publish(DB, ["5432:5432"])  # memory agrees with the table: nothing twice, nothing missing
    assert set(backend.last_change.add) == set(nm.port("db01"))


def test_an_error_inside_the_block_applies_nothing(nm, backend):
    nm.publish(WEB, ["8080:5000"])
    with pytest.raises(RuntimeError):
        with nm.transaction() as tx:
            tx.unpublish("web01")
            raise RuntimeError("the caller changed its mind")
    assert len(backend.applied) == 1 and len(nm.port("web01")) == 2


def test_a_table_deleted_behind_natmaps_back_fails_the_apply_and_is_read_again(nm, backend):
    made = nm.publish(WEB, ["8080:5000"])
    backend.items.discard(made[0])  # no generation bump: an edit natmap cannot see coming
    with pytest.raises(BackendError, match="not there"):
        nm.unpublish("web01")
    assert nm.port("web01") == made[1:]


# --- dry runs ------------------------------------------------------------------------


def test_preview_shows_the_change_and_applies_nothing(nm, backend, host):
    text = nm.preview(WEB, ["8080:5000"])
    assert text.splitlines()[0] == "create table"
    assert "+ port web01 5000/tcp -> 0.0.0.0:8080" in text.splitlines()
    assert backend.items is None and backend.applied == [] and not host.route_localnet
    nm.publish(WEB, ["8080:5000"])
    assert nm.preview(WEB, ["8080:5000"]) == ""


def test_plan_shows_what_apply_would_change_and_applies_nothing(nm, backend):
    config = natmap.Config.from_dict({"endpoints": {"web01": {
        "ip": "172.30.0.2", "bridge": "natmap0", "publish": ["8080:5000"]}}})
    change = nm.plan(config)
    assert [b.port_line() for b in change.added(Binding)] == ["5000/tcp -> 0.0.0.0:8080"]
    assert backend.applied == []
    assert nm.apply(config) == change and len(backend.applied) == 1
    assert not nm.plan(config)


@pytest.mark.parametrize("data, where", [
    ({"bridges": {"natmap0": {"trusted_interfaces": ["nosuch0"]}}}, "lab.toml: bridges.natmap0: "),
    ({"endpoints": {"web01": {"ip": "172.30.0.2", "bridge": "nosuch0"}}}, "lab.toml: endpoints.web01: "),
])
def test_a_host_fact_a_file_names_wrongly_is_named_with_the_file_and_key(nm, backend, data, where):
    """README: every fault in a file names both the file and the key path, also those only the host tells."""
    config = natmap.Config.from_dict(data, "lab.toml")
    for call in (nm.plan, nm.apply):
        with pytest.raises(natmap.UnknownInterfaceError) as info:
            call(config)
        assert str(info.value).startswith(where) and "no interface named 'nosuch0'" in str(info.value)
    assert backend.applied == []


# --- locking ----------------------------------------------------------------------


def test_the_lock_files_live_in_lock_dir(nm, tmp_path):
    nm.publish(WEB, ["8080:5000"])
    # The table's, and the namespace's (every table's changes take turns on host ports).
    (table,) = (p.name for p in Path(tmp_path).iterdir() if p.name.endswith("-natmap.lock"))
    assert {p.name for p in Path(tmp_path).iterdir()} == {table, table.replace("-natmap.lock", ".lock")}


def test_natmaps_on_one_table_change_it_one_at_a_time(backend, host, tmp_path):
    first = NatMap(backend=backend, host=host, lock_dir=str(tmp_path))
    second = NatMap(backend=backend, host=host, lock_dir=str(tmp_path))
    done = threading.Event()
    with first.transaction() as tx:
        tx.publish(WEB, ["8080:5000"])
        worker = threading.Thread(target=lambda: (second.publish(DB, ["5432:5432"]), done.set()))
        worker.start()
        time.sleep(0.3)
        assert not done.is_set()  # waiting for the lock
    worker.join(10)
    assert done.is_set()
    assert {b.endpoint for b in backend.read().bindings()} == {"web01", "db01"}


def test_one_natmap_has_one_transaction_open_at_a_time(nm):
    with nm.transaction():
        with pytest.raises(TransactionOpenError):
            nm.transaction().__enter__()


def test_a_transaction_outside_its_with_block_is_refused(nm):
    with pytest.raises(TransactionClosedError, match="with block"):
        nm.transaction().publish(WEB, ["8080:5000"])


# --- drift ------------------------------------------------------------------------


def test_check_reports_what_another_writer_removed_and_repair_puts_it_back(nm, backend):
    made = nm.publish(WEB, ["8080:5000"])
    backend.commit_elsewhere(delete=[made[0]])
    drift = nm.check()
    assert drift.missing == (made[0],) and not drift.unexpected
    assert nm.repair().missing == (made[0],)
    assert made[0] in backend.items and not nm.check()
    backend.structure = ["chain isolation is missing"]
    assert str(nm.check()) == "structure: chain isolation is missing"


# --- the fakes themselves -----------------------------------------------------------


def test_the_fake_backend_refuses_what_the_kernel_refuses():
    fake = FakeBackend()
    change = natmap.Change(add=(OTHER,))
    with pytest.raises(BackendError, match="does not exist"):
        fake.apply(change)
    assert fake.apply(change, create=True) == fake.generation() == 1
    with pytest.raises(BackendError, match="not there"):
        fake.apply(natmap.Change(delete=(Binding("x1", "tcp", "0.0.0.0", 1, "10.0.0.1", 1),)))
    assert fake.dump() == "port other 80/tcp -> 0.0.0.0:8080" and fake.generation() == 1


# --- any run of changes -------------------------------------------------------------

OPS = st.lists(st.tuples(st.sampled_from(["publish", "unpublish", "fail", "elsewhere", "transaction"]),
                         st.integers(0, 3), st.integers(8000, 8003)), max_size=15)


@settings(max_examples=60, deadline=None)
@given(ops=OPS)
def test_memory_and_the_table_agree_after_any_run_of_changes(tmp_path_factory, ops):
    backend = FakeBackend()
    state, locks = str(tmp_path_factory.mktemp("state")), str(tmp_path_factory.getbasetemp())
    nm = NatMap(backend=backend, host=FakeHost([BRIDGE]), lock_dir=locks, state_dir=state)
    # Another writer: another natmap process, which records what it writes in the same store.
    other = NatMap(backend=backend, host=FakeHost([BRIDGE]), lock_dir=locks, state_dir=state)

    def endpoint(i):
        return Endpoint(f"ep{i}", f"172.30.0.{10 + i}", "natmap0")

    for op, i, port in ops:
        before = backend.dump()
        try:
            if op == "publish":
                nm.publish(endpoint(i), [f"{port}:80"])
            elif op == "unpublish":
                nm.unpublish(f"ep{i}")
            elif op == "fail":
                backend.fail_next("apply")
                nm.publish(endpoint(i), [f"{port}:81"])
            elif op == "elsewhere":  # another writer, on ports natmap's endpoints do not use here
                other.publish(Endpoint(f"x{i}", f"172.30.0.{50 + i}", "natmap0"), [f"{9000 + i}:80"])
            else:
                with nm.transaction() as tx:
                    tx.unpublish(f"ep{i}")
                    tx.publish(endpoint(i), [f"{port}:80"])
                    tx.publish(endpoint((i + 1) % 4), [f"{port + 1}:80"])
        except (ConflictError, BackendError, NotFoundError):
            assert backend.dump() == before  # all of it or none of it
        kernel = {item for item in backend.items or () if isinstance(item, Binding)}
        assert set(nm.bindings() if backend.items is not None else ()) == kernel


# --- a guest on a shared host (natmap.guest), through the fakes ------------------------------


def test_a_host_sockets_port_is_refused_and_force_takes_it_and_check_tells_others(backend, tmp_path):
    from natmap.host import Listener

    sshd = Listener(Protocol.TCP, ipaddress.ip_address("0.0.0.0"), 2222, False, 7)
    host = FakeHost([BRIDGE], sockets=[sshd])
    nm = NatMap(backend=backend, host=host, lock_dir=str(tmp_path))
    with pytest.raises(ConflictError, match=r"a host socket listens on 0\.0\.0\.0:2222/tcp"):
        nm.publish(WEB, ["2222:5000"])
    assert backend.items is None  # nothing applied
    assert lines(nm.publish(WEB, ["2222:5000"], force=True)) == ["5000/tcp -> 0.0.0.0:2222", "5000/tcp -> [::]:2222"]
    assert not nm.check().shadowing  # this NatMap took it knowingly
    other = NatMap(backend=backend, host=host, lock_dir=str(tmp_path))
    assert not other.check().shadowing  # and the store says so to any process (issue: forced persisted)
    other.unpublish("web01")
    other.publish(WEB, ["2223:5000"])  # a port no socket holds: nothing forced
    with pytest.raises(ConflictError):  # unforced again: a publish without force is refused
        other.publish(WEB, ["2222:5001"])
    host.sockets.append(Listener(Protocol.TCP, ipaddress.ip_address("0.0.0.0"), 2223, False, 8))
    assert NatMap(backend=backend, host=host, lock_dir=str(tmp_path)).check().shadowing == (
        "port web01 5000/tcp -> 0.0.0.0:2223 shadows the host socket on 0.0.0.0:2223/tcp",)


def test_a_forced_binding_stays_forced_only_until_unpublished(backend, tmp_path):
    from natmap.host import Listener

    sshd = Listener(Protocol.TCP, ipaddress.ip_address("0.0.0.0"), 2222, False, 7)
    host = FakeHost([BRIDGE], sockets=[sshd])
    nm = NatMap(backend=backend, host=host, lock_dir=str(tmp_path))
    nm.publish(WEB, ["2222:5000"], force=True)
    nm.unpublish("web01")
    host.sockets.remove(sshd)
    nm.publish(WEB, ["2222:5000"])  # republished without force, then a socket comes
    host.sockets.append(sshd)
    assert NatMap(backend=backend, host=host, lock_dir=str(tmp_path)).check().shadowing == (
        "port web01 5000/tcp -> 0.0.0.0:2222 shadows the host socket on 0.0.0.0:2222/tcp",)


def test_another_tables_port_is_a_conflict_and_never_assigned(backend, tmp_path):
    from natmap.model import Table

    taken = Table([Binding("theirs", "tcp", "0.0.0.0", 8080, "172.30.0.9", 80),
                   Binding("theirs", "tcp", "0.0.0.0", 40000, "172.30.0.9", 81)])
    host = FakeHost([BRIDGE], ports=PortRange(40000, 40001), others=[("table inet lab1 (nft)", taken)])
    nm = NatMap(backend=backend, host=host, lock_dir=str(tmp_path))
    with pytest.raises(ConflictError, match="of endpoint 'theirs' in table inet lab1"):
        nm.publish(WEB, ["8080:5000"])
    assert {b.host_port for b in nm.publish(WEB, ["5000"])} == {40001}


def test_the_bridge_must_be_a_bridge_and_the_host_ip_local(backend, tmp_path):
    host = FakeHost([BRIDGE, Bridge("veth0", BRIDGE.subnets)],
                    interfaces={"veth0": ("veth", ())}, addresses=[ipaddress.ip_interface("10.0.0.1/24")])
    nm = NatMap(backend=backend, host=host, lock_dir=str(tmp_path))
    with pytest.raises(natmap.SpecError, match=r"not a bridge \(veth\)"):
        nm.publish(Endpoint("web01", "172.30.0.2", "veth0"), ["8080:5000"])
    with pytest.raises(natmap.SpecError, match="not an address of this host"):
        nm.publish(WEB, ["10.0.0.9:8080:5000"])
    assert lines(nm.publish(WEB, ["10.0.0.1:8080:5000"])) == ["5000/tcp -> 10.0.0.1:8080"]


def test_a_gateway_mode_is_an_item_of_the_table(backend, tmp_path):
    host = FakeHost([BRIDGE], interfaces={"eth1": (None, ())})
    nm = NatMap(backend=backend, host=host, lock_dir=str(tmp_path))
    gateway = nm.set_gateway("natmap0", "nat-unprotected", ["eth1"])
    assert nm.gateways() == [gateway] and gateway in backend.items
    assert BRIDGE in backend.items  # guarded from now on, endpoints published on it or not
    nm.set_gateway("natmap0")  # the default mode is no item
    assert nm.gateways() == [] and backend.dump() == f"bridge natmap0 {' '.join(map(str, BRIDGE.subnets))}"
    with pytest.raises(natmap.UnknownInterfaceError, match="eth9"):
        nm.set_gateway("natmap0", "nat", ["eth9"])


def test_routed_mode_holds_the_bridges_bindings_unmapped_and_maps_them_again_after(backend, tmp_path):
    from natmap import RoutedBinding
    from natmap.host import Listener

    other = Bridge("natmap1", (ipaddress.ip_network("172.31.0.0/24"),))
    host = FakeHost([BRIDGE, other], ports=PortRange(40000, 40009))
    nm = NatMap(backend=backend, host=host, lock_dir=str(tmp_path))
    nm.publish(WEB, ["8080:5000"])
    db = nm.publish(Endpoint("db01", "172.31.0.2", "natmap1"), ["5432"])
    nm.set_gateway("natmap0", "routed")
    assert all(type(b) is RoutedBinding for b in nm.port("web01"))
    assert lines(nm.port("web01")) == ["5000/tcp -> 0.0.0.0:8080", "5000/tcp -> [::]:8080"]  # the host side kept
    assert nm.port("db01") == db and all(type(b) is Binding for b in db)                  # another bridge: as it was
    assert {type(i) for i in backend.last_change.add} == {RoutedBinding, natmap.Gateway}
    assert {type(i) for i in backend.last_change.delete} == {Binding}
    assert backend.last_change.deleted(Binding) == [b.mapped() for b in backend.last_change.added(RoutedBinding)]
    made = nm.publish(Endpoint("web02", "172.30.0.3", "natmap0"), ["5000"])  # -P-style: a port still assigned
    assert [type(b) for b in made] == [RoutedBinding] and made[0].host_port == 40001
    fresh = NatMap(backend=backend, host=host, lock_dir=str(tmp_path))  # the store keeps the form
    assert fresh.port("web02") == made and not fresh.check()
    assert "port web02 5000/tcp -> 0.0.0.0:40001 (routed: host port not mapped)" in backend.dump()
    # A routed binding takes no host port's traffic: a socket on it is no conflict...
    host.sockets.append(Listener(Protocol.TCP, ipaddress.ip_address("0.0.0.0"), 8080, False, 7))
    assert not nm.check().shadowing
    # ... until the bridge is mapped again, which is refused then, and changes nothing.
    before = backend.dump()
    with pytest.raises(ConflictError, match="a host socket listens on 0.0.0.0:8080/tcp"):
        nm.set_gateway("natmap0", "nat")
    assert backend.dump() == before and nm.gateways() == [natmap.Gateway("natmap0", "routed")]
    nm.set_gateway("natmap0", "nat", force=True)  # as publish(force=True): taken knowingly, and remembered so
    assert lines(nm.port("web01")) == ["5000/tcp -> 0.0.0.0:8080", "5000/tcp -> [::]:8080"]
    assert not nm.check().shadowing
    nm.set_gateway("natmap0", "routed")
    host.sockets.clear()
    nm.set_gateway("natmap0", "nat")
    assert lines(nm.port("web01")) == ["5000/tcp -> 0.0.0.0:8080", "5000/tcp -> [::]:8080"]
    assert not any(isinstance(i, RoutedBinding) for i in backend.items)


def test_a_bridge_trusting_itself_is_refused_with_the_reason(nm, backend):
    with pytest.raises(natmap.SpecError, match="a bridge cannot be its own trusted interface: its containers'"):
        nm.set_gateway("natmap0", "routed", ["natmap0"])
    assert nm.gateways() == [] and backend.applied == []


def test_isolate_refuses_what_is_not_a_bridge_and_changes_nothing(backend, tmp_path):
    import ipaddress

    host = FakeHost([BRIDGE], interfaces={"veth1": ("veth", (ipaddress.ip_interface("10.0.0.1/24"),))})
    nm = NatMap(backend=backend, host=host, lock_dir=str(tmp_path))
    nm.publish(WEB, ["8080:5000"])
    before = backend.dump()
    with pytest.raises(natmap.SpecError, match="veth1 is not a bridge"):
        nm.isolate("veth1")
    with pytest.raises(natmap.UnknownInterfaceError, match="nosuch0"):
        nm.isolate("nosuch0")
    assert backend.dump() == before and nm.isolated() == []


def test_a_same_port_range_through_the_engine_is_one_element_and_docker_ports_lines(nm, backend):
    """Ranges with the seams: one item applied, docker port's order back, the
    not-found rule, forced keys, idempotent apply, unpublish's order."""
    made = nm.publish(WEB, ["8000-8999:8000-8999/udp", "9000:9000/udp"])
    assert len(made) == 2002 and [str(b) for b in made[:3]] == ["0.0.0.0:8000", "[::]:8000", "0.0.0.0:8001"]
    assert sorted(b.count for b in backend.applied[-1].added(Binding)) == [1, 1, 1000, 1000]
    assert [str(b) for b in nm.port("web01", "8500/udp")] == ["0.0.0.0:8500", "[::]:8500"]
    with pytest.raises(NotFoundError, match="No public port '8500/tcp'"):
        nm.port("web01", "8500/tcp")
    config = natmap.Config.from_dict({"endpoints": {"web01": {
        "ip": "172.30.0.2", "bridge": "natmap0", "publish": ["8000-8999:8000-8999/udp"]}}})
    nm.apply(config)
    assert not nm.plan(config)
    removed = nm.unpublish("web01")
    assert len(removed) == 1000 and list(removed) == sorted(removed, key=Binding.sort_key)  # as the file has it: IPv4


def test_adopt_takes_no_drift_over_a_whole_store_unless_forced(nm, backend):
    made = nm.publish(WEB, ["8080:5000", "8081:5001"])
    lost = next(b for b in made if b.host_port == 8081)
    backend.commit_elsewhere(delete=[lost])  # deleted by hand
    with pytest.raises(ConflictError, match="natmap repair"):
        nm.adopt()  # the store is whole: it is the kernel that drifted
    assert lost in nm.check().missing
    adopted = nm.adopt(force=True)
    assert lost not in adopted and not nm.check()


def _edit_store(nm, sql):
    import sqlite3

    nm.close()
    db = sqlite3.connect(nm.state_path)
    db.executescript(sql)
    db.close()


def test_adopt_rebuilds_a_store_with_a_pending_record_natmap_did_not_write(nm, backend):
    made = nm.publish(WEB, ["8080:5000"])
    _edit_store(nm, "INSERT OR REPLACE INTO meta VALUES ('pending', '{\"endpoints\": []}')")
    with pytest.raises(natmap.StoreCorruptError, match="`natmap adopt` rebuilds"):
        nm.publish(WEB, ["8081:5001"])
    assert set(backend.read().items()) >= set(made)  # the kernel untouched
    assert set(made) <= set(nm.adopt()) and not nm.check()
    assert len(nm.publish(WEB, ["8081:5001"])) == 2


def test_adopt_leaves_a_newer_natmaps_store_as_it_is(nm, backend):
    nm.publish(WEB, ["8080:5000"])
    _edit_store(nm, "UPDATE meta SET value = 'natmap-store 3' WHERE name = 'format'")
    for force in (False, True):
        with pytest.raises(natmap.StoreError, match=r"newer natmap \(format 3\)") as caught:
            nm.adopt(force=force)
        assert not isinstance(caught.value, natmap.StoreCorruptError)
    assert not os.path.exists(nm.state_path + ".damaged")


def test_a_fresh_namespace_has_nothing_to_check_and_nothing_to_adopt(nm):
    # Nothing stored and no table in the kernel: natmap was not used here. No
    # drift, no advice to adopt, and adopting makes no store for a table that is nowhere.
    drift = nm.check()
    assert not drift and not drift.remembered and not drift.in_kernel
    assert str(drift) == ("nothing stored and no natmap table in the kernel: nothing to check "
                          "(nothing was published with this table here)")
    with pytest.raises(natmap.NotFoundError, match="nothing to adopt"):
        nm.adopt()
    assert not os.path.exists(nm.state_path)


def test_a_table_in_the_kernel_without_a_store_is_adopted(nm, backend, host, tmp_path):
    nm.publish(WEB, ["8080:5000"])
    nm.close()
    os.remove(nm.state_path)  # the store lost, the kernel's table still there
    with NatMap(backend=backend, host=host, lock_dir=str(tmp_path)) as later:
        drift = later.check()
        assert not drift and drift.in_kernel and "`natmap adopt` makes the store from the kernel" in str(drift)
        assert {b.host_port for b in later.adopt() if isinstance(b, Binding)} == {8080}
        assert later.check().remembered


def test_each_ip_family_has_its_own_gateway_mode_from_the_api_and_the_file(backend, tmp_path):
    """Docker's gateway_mode_ipv4 / _ipv6: IPv4 NATed and IPv6 routed on one
    bridge; ``mode`` is both, a family's own over it, a call the whole setting."""
    from natmap import Config, Gateway, RoutedBinding

    host = FakeHost([BRIDGE], ports=PortRange(40000, 40009))
    nm = NatMap(backend=backend, host=host, lock_dir=str(tmp_path))
    nm.publish(WEB, ["8080:5000"])
    gateway = nm.set_gateway("natmap0", mode_ipv6="routed")
    assert (gateway.mode_ipv4, gateway.mode_ipv6, gateway.mode) == ("nat", "routed", None)
    assert {(b.version, type(b)) for b in nm.port("web01")} == {(4, Binding), (6, RoutedBinding)}
    fresh = NatMap(backend=backend, host=host, lock_dir=str(tmp_path))  # the store keeps both modes
    assert fresh.gateways() == [Gateway("natmap0", mode_ipv6="routed")] and not fresh.check()
    assert nm.set_gateway("natmap0", "routed", mode_ipv4="nat-unprotected") == Gateway(
        "natmap0", mode_ipv4="nat-unprotected", mode_ipv6="routed")
    assert nm.set_gateway("natmap0", mode_ipv4="routed").mode_ipv6 == "nat"  # the whole setting: IPv6 back to nat
    assert {(b.version, type(b)) for b in nm.port("web01")} == {(4, RoutedBinding), (6, Binding)}
    with pytest.raises(natmap.SpecError, match="unknown gateway mode"):
        nm.set_gateway("natmap0", mode_ipv6="route")
    wanted = {"bridges": {"natmap0": {"gateway_mode": "nat-unprotected", "gateway_mode_ipv6": "routed"}},
              "endpoints": {"web01": {"ip": "172.30.0.2", "ipv6": "fd00:30::2", "bridge": "natmap0",
                                      "publish": ["8080:5000"]}}}
    nm.apply(Config.from_dict(wanted))
    assert nm.gateways() == [Gateway("natmap0", "nat-unprotected", mode_ipv6="routed")]
    assert {(b.version, type(b)) for b in nm.port("web01")} == {(4, Binding), (6, RoutedBinding)}
    assert not nm.apply(Config.from_dict(wanted)) and not nm.check()
    with pytest.raises(natmap.SpecError, match=r"bridges\.natmap0\.gateway_mode_ipv4: unknown gateway mode"):
        Config.from_dict({"bridges": {"natmap0": {"gateway_mode_ipv4": "nat-protected"}}})


def test_a_new_process_sets_a_mode_on_the_bindings_published_on_the_bridge_after_a_readdress(backend, tmp_path):
    """Which endpoint is on which bridge is in the store, and a re-addressed
    bridge's subnets are recorded anew when natmap sees it: a new process
    (another NatMap) picks exactly the bindings published on the bridge, even
    where the old subnet now belongs to another bridge."""
    from natmap import RoutedBinding

    old = Bridge("natmap0", (ipaddress.ip_network("172.30.0.0/24"),))
    host = FakeHost([old], ports=PortRange(40000, 40009))
    NatMap(backend=backend, host=host, lock_dir=str(tmp_path)).publish(
        Endpoint("web01", "172.30.0.2", "natmap0"), ["8080:5000"])
    host.bridges["natmap0"] = Bridge("natmap0", (ipaddress.ip_network("10.9.0.0/24"),))  # re-addressed
    host.bridges["natmap1"] = Bridge("natmap1", (ipaddress.ip_network("172.30.0.0/24"),))  # its old subnet
    second = NatMap(backend=backend, host=host, lock_dir=str(tmp_path))
    with pytest.raises(natmap.SpecError, match="overlaps bridge natmap0's"):  # natmap0 not seen re-addressed yet
        second.publish(Endpoint("web02", "172.30.0.3", "natmap1"), ["8081:5000"])
    second.publish(Endpoint("db01", "10.9.0.5", "natmap0"), ["5432:5432"])  # seen: its subnets recorded anew
    assert Bridge("natmap0", (ipaddress.ip_network("10.9.0.0/24"),)) in backend.items and old not in backend.items
    second.publish(Endpoint("web02", "172.30.0.3", "natmap1"), ["8081:5000"])  # no overlap now
    third = NatMap(backend=backend, host=host, lock_dir=str(tmp_path))
    third.set_gateway("natmap0", "routed")
    assert {b.endpoint: type(b) for b in third.bindings()} == {
        "web01": RoutedBinding, "db01": RoutedBinding, "web02": Binding}
    assert not third.check()
    fourth = NatMap(backend=backend, host=host, lock_dir=str(tmp_path))
    fourth.unpublish("web01")
    fourth.publish(Endpoint("web01", "172.30.0.2", "natmap1"), ["8080:5000"])  # now on natmap1
    NatMap(backend=backend, host=host, lock_dir=str(tmp_path)).set_gateway("natmap1", "routed")
    assert {b.endpoint: type(b) for b in fourth.bindings()} == {
        "web01": RoutedBinding, "db01": RoutedBinding, "web02": RoutedBinding}


def test_repair_records_a_readdressed_bridges_subnets_and_keeps_one_that_would_overlap(backend, tmp_path):
    old = Bridge("natmap0", (ipaddress.ip_network("172.30.0.0/24"),))
    other = Bridge("natmap1", (ipaddress.ip_network("10.9.0.0/24"),))
    host = FakeHost([old, other])
    nm = NatMap(backend=backend, host=host, lock_dir=str(tmp_path))
    nm.publish(Endpoint("web01", "172.30.0.2", "natmap0"), ["8080:5000"])
    nm.publish(Endpoint("db01", "10.9.0.2", "natmap1"), ["5432:5432"])
    moved = host.bridges["natmap0"] = Bridge("natmap0", (ipaddress.ip_network("10.8.0.0/24"),))
    host.bridges["natmap1"] = Bridge("natmap1", (ipaddress.ip_network("10.8.0.0/16"),))  # would overlap
    drift = NatMap(backend=backend, host=host, lock_dir=str(tmp_path)).repair()
    assert (drift.missing, drift.unexpected) == ((moved,), (old,))
    assert moved in backend.items and other in backend.items and old not in backend.items
    assert not nm.check() and not nm.repair()


def test_a_file_puts_a_bridge_in_routed_mode_and_applying_it_again_changes_nothing(backend, tmp_path):
    from natmap import Config, RoutedBinding

    nm = NatMap(backend=backend, host=FakeHost([BRIDGE], ports=PortRange(40000, 40009)), lock_dir=str(tmp_path))
    routed = {"bridges": {"natmap0": {"gateway_mode": "routed"}},
              "endpoints": {"web01": {"ip": "172.30.0.2", "bridge": "natmap0", "publish": ["8080:5000", "5001"]}}}
    change = nm.apply(Config.from_dict(routed))
    assert {type(i) for i in change.add} == {RoutedBinding, Bridge, natmap.Gateway} and not change.delete
    assert not nm.apply(Config.from_dict(routed)) and not nm.check()
    nat = {**routed, "bridges": {}}
    change = nm.apply(Config.from_dict(nat))  # back to nat: the same ports, mapped
    assert sorted(map(str, change.added(Binding))) == ["0.0.0.0:40000", "0.0.0.0:8080"]
    assert not nm.apply(Config.from_dict(nat)) and nm.gateways() == []


def test_check_names_a_binding_held_in_a_form_its_bridges_mode_does_not_want(backend, tmp_path):
    """A store and kernel that agree, from a natmap that moved bindings by the
    host's subnets then: check names the binding, setting the mode again heals it."""
    from natmap import RoutedBinding

    nm = NatMap(backend=backend, host=FakeHost([BRIDGE]), lock_dir=str(tmp_path))
    nm.publish(WEB, ["8080:5000"])
    nm.set_gateway("natmap0", "routed")
    wrong = [b.mapped() for b in nm.port("web01")]
    items = [i for i in nm._store.items() if not isinstance(i, RoutedBinding)] + wrong
    nm._store.replace(items)
    backend.items = set(items)
    drift = nm.check()
    assert [p for p in drift.structure if "is held mapped on bridge natmap0 in IPv4 gateway mode routed" in p] \
        and len(drift.structure) == 2 and not drift.missing and not drift.unexpected
    nm.set_gateway("natmap0", "routed")  # the mode it has: the bindings in its form again
    assert not nm.check() and all(type(b) is RoutedBinding for b in nm.port("web01"))


# --- routed flows: what unpublishing a routed binding cuts (the decision; the cut itself is
# tests/kernel/test_kernel_routedcut.py's) -------------------------------------------------


def _routed(backend, tmp_path, *bridges):
    host = FakeHost([BRIDGE, *bridges], ports=PortRange(40000, 40009))
    nm = NatMap(backend=backend, host=host, lock_dir=str(tmp_path))
    nm.set_gateway("natmap0", "routed")
    return nm, host


def test_unpublishing_a_routed_binding_cuts_its_marked_flows_and_no_nat_ones(backend, tmp_path):
    from natmap import RoutedBinding

    nm, host = _routed(backend, tmp_path)
    made = nm.publish(WEB, ["8080:5000", "9000-9002:9000-9002/udp"])
    assert host.routed_cut[-1] == []  # a publish closes nothing
    nm.unpublish("web01")
    cut = host.routed_cut[-1]
    assert any(b.count == 3 for b in cut)  # a range whole
    assert sorted((x for b in cut for x in b.expand()), key=repr) == sorted(made, key=repr)  # both families
    assert all(type(b) is RoutedBinding for b in cut)
    assert host.forgotten[-1][0] == []  # nothing was DNATed: no NAT flow to forget


def test_leaving_routed_for_nat_closes_the_ports_and_for_nat_unprotected_does_not(backend, tmp_path):
    nm, host = _routed(backend, tmp_path)
    made = nm.publish(WEB, ["8080:5000"])
    nm.set_gateway("natmap0", "nat-unprotected")  # every routed flow passes there: nothing to cut
    assert host.routed_cut[-1] == []
    nm.set_gateway("natmap0", "routed")
    nm.set_gateway("natmap0", "nat")  # now only DNATed flows pass: the direct ones end
    assert sorted(host.routed_cut[-1], key=str) == sorted(made, key=str)


def test_a_port_published_again_in_the_same_change_stays_open(backend, tmp_path):
    nm, host = _routed(backend, tmp_path)
    nm.publish(WEB, ["8080:5000", "7000-7003:7000-7003"])
    with nm.transaction() as tx:
        tx.unpublish("web01")
        tx.publish(WEB, ["8081:5000", "7001:7001"])  # another host side, the same container port
    # Only the range's ports no binding opens any more are cut, one binding each.
    assert sorted((b.version, b.container_port, b.count) for b in host.routed_cut[-1]) == \
        [(4, 7000, 1), (4, 7002, 1), (4, 7003, 1), (6, 7000, 1), (6, 7002, 1), (6, 7003, 1)]


def test_another_bridges_unpublish_cuts_no_routed_flow(backend, tmp_path):
    other = Bridge("natmap1", (ipaddress.ip_network("172.31.0.0/24"),))
    nm, host = _routed(backend, tmp_path, other)
    nm.publish(WEB, ["8080:5000"])
    nm.publish(Endpoint("db01", "172.31.0.2", "natmap1"), ["5432"])
    nm.unpublish("db01")
    assert host.routed_cut[-1] == [] and len(host.forgotten[-1][0]) == 1


# --- the cyclic garbage collector paused for natmap's work (see engine._uncollected)


@pytest.mark.parametrize("enabled", [True, False])
def test_a_transaction_leaves_the_collector_as_it_found_it_and_pauses_it_inside(nm, enabled, monkeypatch):
    import gc

    from natmap.model import Table

    seen, inside = [], []
    publish = Table.publish
    monkeypatch.setattr(Table, "publish", lambda *a, **k: inside.append(gc.isenabled()) or publish(*a, **k))
    (gc.enable if enabled else gc.disable)()
    try:
        with nm.transaction() as tx:
            seen.append(gc.isenabled())  # the caller's own code in the block: collection as the caller has it
            tx.publish(WEB, ["8080:5000"])
        with pytest.raises(ConflictError), nm.transaction() as tx:
            tx.publish(DB, ["8080:5432"])  # raises inside a paused call
        assert gc.isenabled() is enabled
        assert nm.unpublish("web01") and gc.isenabled() is enabled
    finally:
        gc.enable()
    assert seen == [enabled] and inside == [False, False]


def test_threads_publishing_at_once_leave_the_collector_on(backend, host, tmp_path):
    import gc

    assert gc.isenabled()
    errors = []

    def publish(i):
        try:
            with NatMap(backend=backend, host=host, lock_dir=str(tmp_path)) as mine:
                for j in range(5):
                    mine.publish(Endpoint(f"t{i}x{j}", f"172.30.0.{10 + i * 5 + j}", "natmap0"),
                                 [f"{9000 + i * 5 + j}:80"])
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=publish, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and gc.isenabled()


# --- direct flows: what switching protection back on cuts (the decision; the cut itself is
# tests/kernel/test_kernel_directcut.py's) --------------------------------------------------

V4, V6 = BRIDGE.subnets


def test_leaving_nat_unprotected_cuts_the_direct_flows_of_each_family_it_protects(nm, host):
    nm.publish(WEB, ["8080:5000"])
    nm.set_gateway("natmap0", "nat-unprotected")
    assert host.direct_cut[-1] == []  # opening forbids nothing
    nm.set_gateway("natmap0", mode_ipv4="nat-unprotected", mode_ipv6="routed")
    assert host.direct_cut[-1] == [(6, (V6,), (V4, V6))]
    nm.set_gateway("natmap0", "nat")
    assert host.direct_cut[-1] == [(4, (V4,), (V4, V6))]  # IPv6 was protected already


def test_a_withdrawn_trusted_interface_cuts_both_families_and_a_new_one_nothing(backend, tmp_path):
    host = FakeHost([BRIDGE], interfaces={"eth1": (None, ()), "eth2": (None, ())})
    nm = NatMap(backend=backend, host=host, lock_dir=str(tmp_path))
    nm.set_gateway("natmap0", "nat", ["eth1"])
    assert host.direct_cut[-1] == []
    nm.set_gateway("natmap0", "routed", ["eth1", "eth2"])  # nat -> routed, eth1 still trusted
    assert host.direct_cut[-1] == []
    nm.set_gateway("natmap0", "routed", ["eth2"])
    assert host.direct_cut[-1] == [(4, (V4,), (V4, V6)), (6, (V6,), (V4, V6))]


def test_a_direct_cut_names_every_bridge_of_the_table_as_inside(backend, tmp_path):
    other = Bridge("natmap1", (ipaddress.ip_network("172.31.0.0/24"),))
    host = FakeHost([BRIDGE, other], ports=PortRange(40000, 40009))
    nm = NatMap(backend=backend, host=host, lock_dir=str(tmp_path))
    nm.publish(Endpoint("db01", "172.31.0.2", "natmap1"), ["5432"])
    nm.set_gateway("natmap0", "nat-unprotected")
    nm.set_gateway("natmap0", "nat")
    assert [(v, subnets, set(inside)) for v, subnets, inside in host.direct_cut[-1]] == \
        [(4, (V4,), {V4, V6, other.subnets[0]}), (6, (V6,), {V4, V6, other.subnets[0]})]


def test_a_gateway_change_killed_before_its_cut_has_it_cut_by_the_next_call(backend, host, tmp_path,
                                                                            monkeypatch):
    from natmap import hoststate

    def die(where):
        if where == "kernel-commit":
            raise KeyboardInterrupt  # stands for the kill: the store's pending change stays

    nm = NatMap(backend=backend, host=host, lock_dir=str(tmp_path))
    nm.set_gateway("natmap0", "nat-unprotected")
    alive = hoststate.crash_point
    monkeypatch.setattr(hoststate, "crash_point", die)
    with pytest.raises(KeyboardInterrupt):
        nm.set_gateway("natmap0", "nat")
    assert host.direct_cut[-1] == []  # killed before it
    monkeypatch.setattr(hoststate, "crash_point", alive)
    fresh = NatMap(backend=backend, host=host, lock_dir=str(tmp_path))
    fresh.repair()
    assert (4, (V4,), (V4, V6)) in host.direct_cut[-1]


# --- a bridge's gateway setting is the namespace's: other natmap tables on it must agree ---


def _beside(backend, tmp_path, *their_items):
    from natmap.model import Table

    theirs = Table([BRIDGE, *their_items])
    host = FakeHost([BRIDGE], interfaces={"eth1": (None, ())}, others=[("table inet natmap (nft)", theirs)])
    return NatMap("lab2", backend=backend, host=host, lock_dir=str(tmp_path)), host


def test_a_gateway_another_table_holds_otherwise_is_a_conflict_naming_it(backend, tmp_path):
    from natmap import Gateway

    nm, host = _beside(backend, tmp_path)  # theirs: natmap0 in the default nat
    with pytest.raises(ConflictError, match=r"natmap0 \(ipv4 routed ipv6 nat\) conflicts with table inet "
                                            r"natmap \(nft\), which holds it in nat"):
        nm.set_gateway("natmap0", mode_ipv4="routed")
    with pytest.raises(ConflictError, match="which holds it in nat"):
        nm.set_gateway("natmap0", "nat", ["eth1"])  # trust too is the namespace's
    assert nm.gateways() == [] and host.direct_cut == []  # nothing applied
    assert nm.set_gateway("natmap0", "nat") == Gateway("natmap0")  # the same setting: no conflict


def test_a_table_that_agreed_may_move_first_and_check_reports_the_disagreement(backend, tmp_path):
    from natmap import Gateway

    nm, host = _beside(backend, tmp_path, Gateway("natmap0", "routed"))
    nm.set_gateway("natmap0", "routed")  # agrees with theirs
    nm.set_gateway("natmap0", "nat")     # moves first: theirs agreed with lab2 until now
    drift = nm.check()
    assert drift and drift.conflicts == (
        "bridge natmap0: gateway nat here, routed in table inet natmap (nft) "
        "(a bridge's gateway setting is the namespace's: set it the same in both)",)
    assert "conflict: bridge natmap0: gateway nat here, routed in table inet natmap (nft)" in str(drift)
    with pytest.raises(ConflictError, match="which holds it in routed"):
        nm.set_gateway("natmap0", "nat-unprotected")  # a third setting agrees with nobody


def test_a_table_not_on_the_bridge_is_no_conflict(backend, tmp_path):
    from natmap.model import Table

    host = FakeHost([BRIDGE], others=[("table inet natmap (nft)", Table())])
    nm = NatMap("lab2", backend=backend, host=host, lock_dir=str(tmp_path))
    nm.set_gateway("natmap0", "routed")
    assert not nm.check()


# --- a change a dead process left: its host steps are done by the next call --------


class _Killed(BaseException):
    """What a kill -9 at a crash point is to the test: the call ends there."""


@pytest.fixture
def killed_at(monkeypatch):
    """``killed_at(step)``: the next crash point named ``step`` ends the call (as
    NATMAP_CRASH_AT's kill does, but in this process), once."""
    from natmap import hoststate

    armed: list[str] = []

    def crash_point(step):
        if armed and armed[0] == step:
            armed.clear()
            raise _Killed(step)

    monkeypatch.setattr(hoststate, "crash_point", crash_point)
    return armed.append


def _after_death(backend, host, tmp_path, call):
    """Run ``call`` in a NatMap that dies at the armed step, and return a new one (the next process)."""
    with pytest.raises(_Killed):
        call(NatMap(backend=backend, host=host, lock_dir=str(tmp_path)))
    return NatMap(backend=backend, host=host, lock_dir=str(tmp_path))


@pytest.mark.parametrize("step", ["kernel-commit", "store-commit"])
def test_an_isolation_whose_process_died_cuts_its_flows_in_the_next_call(backend, host, tmp_path, killed_at, step):
    """isolate() killed after its kernel commit: the flows it forbids are cut by
    whichever call finishes the change, before the change is marked done (a
    kill after the mark leaves nothing for the next call to do)."""
    setup = NatMap(backend=backend, host=host, lock_dir=str(tmp_path))
    setup.publish(WEB, ["8080:5000"])
    setup.publish(DB, ["5432"])
    killed_at("kernel-commit")
    nxt = _after_death(backend, host, tmp_path, lambda nm: nm.isolate("natmap0"))
    host.cut.clear()
    if step == "store-commit":  # the call finishing it dies too, after its mark: the cut was made before
        killed_at(step)
        with pytest.raises(_Killed):
            nxt.repair()
    else:
        nxt.repair()
    assert [subnets for cuts in host.cut for subnets, _ in cuts] == [BRIDGE.subnets]
    host.cut.clear()
    NatMap(backend=backend, host=host, lock_dir=str(tmp_path)).repair()
    assert not any(host.cut)  # done once: nothing pending any more


def test_a_udp_publish_whose_process_died_cuts_the_stale_flows_in_the_next_call(backend, host, tmp_path, killed_at):
    killed_at("kernel-commit")
    nxt = _after_death(backend, host, tmp_path, lambda nm: nm.publish(WEB, ["5353:5353/udp"]))
    host.forgotten.clear()
    nxt.repair()
    added = [b for _, _, made in host.forgotten for b in made]
    assert sorted(lines(added)) == ["5353/udp -> 0.0.0.0:5353", "5353/udp -> [::]:5353"]


def test_a_routed_unpublish_whose_process_died_cuts_its_flows_in_the_next_call(backend, host, tmp_path, killed_at):
    setup = NatMap(backend=backend, host=host, lock_dir=str(tmp_path))
    setup.set_gateway("natmap0", "routed")
    setup.publish(WEB, ["8080:5000"])
    killed_at("kernel-commit")
    nxt = _after_death(backend, host, tmp_path, lambda nm: nm.unpublish("web01"))
    host.routed_cut.clear()
    killed_at("store-commit")  # and the call finishing it dies after its mark
    with pytest.raises(_Killed):
        nxt.repair()
    assert sorted(lines(b for cut in host.routed_cut for b in cut)) == [
        "5000/tcp -> 0.0.0.0:8080", "5000/tcp -> [::]:8080"]


def test_a_bad_spec_in_a_transaction_names_its_endpoint_and_place_and_applies_nothing(nm):
    with pytest.raises(natmap.SpecError) as caught, nm.transaction() as tx:
        tx.publish(WEB, ["8080:5000"])
        tx.publish(DB, ["15432:5432", "1543x:5433"])
    assert caught.value.message.startswith("endpoint 'db01', spec 2 of 2: invalid port '1543x'")
    assert nm.bindings() == []


def test_a_publish_that_raises_inside_a_transaction_takes_back_its_earlier_specs(nm):
    """The caller catches the error and the block goes on: the failed call publishes
    none of its ports (as docker run), the calls around it stay."""
    nm.publish(DB, ["9000:90"])
    with nm.transaction() as tx:
        tx.publish(WEB, ["7000:70"])
        with pytest.raises(ConflictError, match="9000"):
            tx.publish(WEB, ["8080:80", "8081:81", "9000:90"])
        tx.publish(WEB, ["7001:71"])
    assert [b.port_line() for b in nm.port("web01")] == [
        "70/tcp -> 0.0.0.0:7000", "70/tcp -> [::]:7000", "71/tcp -> 0.0.0.0:7001", "71/tcp -> [::]:7001"]
    assert not nm.check()


def test_an_interrupt_inside_a_publish_leaves_no_ghost_for_later_calls(nm, monkeypatch):
    """Ctrl-C between a binding's index and its journal entry: the table is read
    again for the next call (the second attacker trial: a ghost endpoint stayed
    in the cached table, and unpublishing it raised a KeyError)."""
    from natmap.model import Table

    nm.publish(WEB, ["8080:5000"])
    insert = Table._insert

    def interrupted(self, binding):
        insert(self, binding)
        raise KeyboardInterrupt

    monkeypatch.setattr(Table, "_insert", interrupted)
    with pytest.raises(KeyboardInterrupt):
        nm.publish(DB, [], publish_all=True)  # the general path: _add_all inserts, then journals
    monkeypatch.undo()
    nm.publish(Endpoint("more", "172.30.0.8", "natmap0"), ["9001:91"])
    assert {b.endpoint for b in nm.bindings()} == {"web01", "more"}
    with pytest.raises(natmap.NotFoundError):
        nm.unpublish("db01")
    assert not nm.check()

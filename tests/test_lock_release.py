"""A lock natmap takes is released on every way out: here, a
KeyboardInterrupt (Ctrl-C, or any exception a signal handler raises) that
arrives right after any call natmap's locking makes: Python delivers signals
between calls, so these are the places one can land. No root needed."""

import fcntl
import ipaddress
import os
import sys

import pytest

import natmap
from lockguard import held_by_another_thread, held_locks
from natmap import locking
from natmap.backends.base import FakeBackend
from natmap.host import FakeHost
from natmap.model import Bridge

NETNS = (4, 4026531840)  # as natmap names a namespace's files: its nsfs (device, inode)


def interrupted(take, n, where=lambda code: code.co_filename == locking.__file__):
    """Run ``with take(): pass`` with a KeyboardInterrupt raised after the
    ``n``-th call that a function of natmap.locking (or any code ``where``
    says) makes; True if the block ran to its end (n was past the last call)."""
    calls = 0

    def profile(frame, event, arg):
        nonlocal calls
        caller = frame if event == "c_return" else frame.f_back
        if event in ("c_return", "return") and caller is not None and where(caller.f_code):
            calls += 1
            if calls == n:
                sys.setprofile(None)
                raise KeyboardInterrupt

    sys.setprofile(profile)
    try:
        with take():
            pass
    except KeyboardInterrupt:
        return False
    finally:
        sys.setprofile(None)
    return True


TAKERS = {
    "flocked": lambda d: locking.flocked(os.path.join(d, "1-2.lock"), timeout=1),
    "table_lock": lambda d: locking.table_lock(d, NETNS, "natmap", timeout=1),
    "namespace_lock": lambda d: locking.namespace_lock(d, NETNS, timeout=1),
}


@pytest.mark.parametrize("kind", TAKERS)
def test_an_interrupt_after_any_call_of_the_locking_leaves_nothing_held(tmp_path, monkeypatch, kind):
    monkeypatch.setenv("NATMAP_LOCK_DIR", str(tmp_path / "locks"))  # where the guard looks, too
    locks = str(tmp_path / "locks")
    locking.prepare_dir(locks)
    for n in range(1, 1000):
        finished = interrupted(lambda: TAKERS[kind](locks), n)
        assert held_locks() == {}, f"an interrupt after call {n} kept the lock"
        with TAKERS[kind](locks):  # and this thread can take it again at once (no false nesting)
            pass
        if finished:
            break
    else:
        pytest.fail("the lock was never taken without an interrupt")
    assert n > 5  # the interrupts landed in the lock taking, not nowhere


def test_a_nested_take_in_one_thread_raises_and_keeps_the_outer_lock(tmp_path):
    path = str(tmp_path / "1-2.lock")
    with locking.flocked(path, timeout=1):
        with pytest.raises(locking.NestedTransactionError):
            with locking.flocked(path, timeout=1):
                pass
        other = os.open(path, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):  # still held, by the outer block
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(other)
        with pytest.raises(locking.NestedTransactionError):  # and still known as this thread's
            with locking.flocked(path, timeout=1):
                pass


@pytest.fixture
def nm(tmp_path, monkeypatch):
    """A NatMap on the fakes, its lock files and store in the test's directory."""
    monkeypatch.setenv("NATMAP_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("NATMAP_LOCK_DIR", str(tmp_path / "locks"))
    bridge = Bridge("natmap0", (ipaddress.ip_network("172.30.0.0/24"),))
    return natmap.NatMap(backend=FakeBackend(), host=FakeHost([bridge]), lock_dir=str(tmp_path / "locks"))


WEB = natmap.Endpoint("web01", "172.30.0.2", "natmap0")
_TAKING = {"__enter__", "__exit__", "_locked", "_turn"}  # the engine's code that takes and releases


def test_an_interrupt_after_any_call_taking_a_transaction_s_locks_leaves_nothing_held(nm):
    engine = natmap.engine.__file__

    def taking(code):
        return code.co_filename == locking.__file__ or (code.co_filename == engine and code.co_name in _TAKING)

    for n in range(1, 1000):
        finished = interrupted(nm.transaction, n, taking)
        assert held_locks() == {}, f"an interrupt after call {n} kept a lock"
        if finished:
            break
    assert n > 20
    with nm.transaction() as tx:  # and the NatMap works on
        tx.publish(WEB, ["8080:80"])
    assert [b.host_port for b in nm.bindings()] == [8080]


def test_entering_an_open_transaction_again_raises_and_keeps_its_locks(nm):
    """Entering it again once gave it a second lock and freed the first: the
    table's and namespace's lock files were released in the middle of the
    outer block, and the outer block went on unlocked."""
    tx = nm.transaction()
    with tx:
        held = held_locks()
        assert len(held) == 2  # the table's and the namespace's
        with pytest.raises(natmap.NestedTransactionError, match="open already"):
            with tx:
                pass
        assert held_locks() == held
        tx.publish(WEB, ["8080:80"])
    assert held_locks() == {}
    with tx:  # one block after another is fine
        tx.unpublish("web01")
    assert nm.bindings() == []


def test_a_child_forked_while_a_lock_is_held_does_not_keep_it(tmp_path, monkeypatch):
    """A flock belongs to the open file, which a child forked without exec
    shares: it kept the lock, under this PID, after this process let it go."""
    monkeypatch.setenv("NATMAP_LOCK_DIR", str(tmp_path))
    path = str(tmp_path / "1-2.lock")
    go, wait = os.pipe()
    started, ready = os.pipe()
    with locking.flocked(path, timeout=1):
        child = os.fork()
        if child == 0:  # the child lives on, in the block, until told
            try:
                os.close(wait)
                os.write(ready, b"!")  # it runs: what happens at a fork has happened
                os.read(go, 1)
            finally:
                os._exit(0)
    os.close(go)
    os.close(ready)
    try:
        assert os.read(started, 1) == b"!"
        assert held_locks() == {}
        with locking.flocked(path, timeout=0):  # free at once
            pass
    finally:
        os.close(wait)
        os.close(started)
        os.waitpid(child, 0)


def test_a_child_forked_while_another_thread_uses_python_iptables_gets_its_own_turn():
    """The process's turn on python-iptables (its threads share its Table
    objects) is a thread lock: a child forked while another thread had it
    would wait for a thread it does not have."""
    from natmap.backends import iptables

    with held_by_another_thread(iptables._iptc_turn):
        child = os.fork()
        if child == 0:
            try:
                with iptables._iptc_turn(timeout=0):
                    os._exit(0)
            finally:
                os._exit(1)
    assert os.waitpid(child, 0)[1] == 0

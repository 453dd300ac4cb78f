"""The guard every test runs under (conftest.no_lock_kept): it sees the locks
this process holds, by the kernel's list, however they are held."""

import fcntl
import os

from lockguard import held_locks


def locked(path):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def test_a_natmap_lock_file_held_is_named_and_one_released_is_not(tmp_path):
    path = str(tmp_path / "4-4026531840-natmap.lock")
    other = str(tmp_path / "unrelated.lock")  # not natmap's: none of the guard's business
    fd, fd2 = locked(path), locked(other)
    try:
        assert list(held_locks().values()) == [path]
    finally:
        os.close(fd)
        os.close(fd2)
    assert held_locks() == {}


def test_a_lock_a_forked_child_keeps_is_still_this_process_s(tmp_path, monkeypatch):
    """flock belongs to the open file: a child forked without exec keeps it
    after this process closed its copy, and the kernel lists this PID (the
    file is found in the lock directory, as no file of this process names it)."""
    monkeypatch.setenv("NATMAP_LOCK_DIR", str(tmp_path))
    path = str(tmp_path / "4-4026531840.lock")
    fd = locked(path)
    go, wait = os.pipe()
    child = os.fork()
    if child == 0:  # the child: keep the inherited file open until told
        os.close(wait)
        os.read(go, 1)
        os._exit(0)
    os.close(go)
    os.close(fd)
    try:
        assert list(held_locks().values()) == [path]
    finally:
        os.close(wait)  # the child reads EOF and exits
        os.waitpid(child, 0)
    assert held_locks() == {}

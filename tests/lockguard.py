"""Which locks this process holds that it must not keep between tests:
``/run/xtables.lock`` (every iptables command on the machine waits for it)
and natmap's lock files, as the kernel lists them in ``/proc/locks``.

A ``flock`` belongs to an open file, not to a thread: a lock a thread of this
process took is this process's in ``/proc/locks`` (its PID, the file's
device and inode), and so is one that a child forked without ``exec`` keeps
through the file it inherited. Nothing is released here: the guard names.
"""

import os
import threading
from contextlib import contextmanager

from natmap.locking import LOCK_DIR
from natmap.locking import _LOCK_NAME as NATMAP_LOCK  # <dev>-<ino>[-<table>].lock

XTABLES_LOCK = "/run/xtables.lock"
NATMAP_LOCK_DIRS = (LOCK_DIR,)  # and $NATMAP_LOCK_DIR, read at each look


def _where(st: os.stat_result) -> str:
    """A file as /proc/locks names it: ``major:minor:inode`` (hex device)."""
    return f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"


def flocks_of(pid: int) -> set[str]:
    """The files (``major:minor:inode``) on which process ``pid`` holds a flock."""
    held = set()
    with open("/proc/locks") as locks:
        for line in locks:
            # "1: FLOCK  ADVISORY  WRITE 1234 00:1a:5678 0 EOF"; a waiter's line has "->" second
            words = line.split()
            if len(words) >= 6 and words[1] == "FLOCK" and words[4] == str(pid):
                held.add(words[5])
    return held


def _candidates() -> dict[str, str]:
    """``major:minor:inode`` -> path of every lock the guard watches that it
    can find by name: the xtables lock, the files of natmap's lock
    directories, and any natmap-named lock file this process has open
    (a test's own ``lock_dir``)."""
    found = {}
    paths = [XTABLES_LOCK]
    for directory in (*NATMAP_LOCK_DIRS, os.environ.get("NATMAP_LOCK_DIR")):
        if directory:
            try:
                paths += [os.path.join(directory, name) for name in os.listdir(directory)]
            except OSError:
                pass
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        fds = []
    for fd in fds:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target == XTABLES_LOCK or NATMAP_LOCK.fullmatch(os.path.basename(target)):
            paths.append(target)
    for path in paths:
        try:
            found[_where(os.stat(path))] = path
        except OSError:
            pass
    return found


def held_locks(pid: int | None = None) -> dict[str, str]:
    """The watched locks process ``pid`` (this one) holds: ``major:minor:inode``
    -> path. Cheap when it holds no flock at all (one read of /proc/locks)."""
    held = flocks_of(os.getpid() if pid is None else pid)
    if not held:
        return {}
    return {where: path for where, path in _candidates().items() if where in held}


@contextmanager
def held_by_another_thread(take):
    """Run the block while another thread is inside ``with take():``."""
    inside, leave = threading.Event(), threading.Event()

    def hold():
        with take():
            inside.set()
            leave.wait(30)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert inside.wait(10), "the other thread never got in"
        yield
    finally:
        leave.set()
        thread.join()

"""File locks that a dying process cannot leave held, and that no wait outlasts.

natmap's table locks are ``flock`` files in one directory (``/run/natmap``
unless a NatMap is given another ``lock_dir``), one per network namespace and
table: ``<dev>-<inode>-<table>.lock``, the namespace named by its nsfs inode;
and one per namespace, ``<dev>-<inode>.lock``, which every change
of every table takes inside its table's (host ports are the namespace's).

- The directory is made mode 0700 and refused unless it is a directory owned
  by the user natmap runs as (root) with that mode: a lock another user can
  take, fake or replace is no lock. natmap changes the mode of no directory
  but its default ``/run/natmap`` (an older natmap made it 0755), since a
  ``lock_dir`` named by the caller may be anything (``/run`` itself). Lock
  files are opened with ``O_NOFOLLOW``.
- A wait gives up after ``timeout`` seconds with a :class:`LockTimeoutError`
  naming the process that holds the lock (the kernel says which, in
  ``/proc/locks``).
- A thread that asks for a lock it already holds gets a
  :class:`NestedTransactionError` at once: it would wait for itself forever.
- Lock files of namespaces that no longer exist are removed (only files named
  exactly as natmap names its own: other files in the directory are left
  alone), and a NatMap
  removes its table's lock file with the table. A file is removed only while
  its lock is held, and a lock taker checks that the file it locked is still
  the one at the path, so removing never lets two holders in.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .errors import LockError, LockTimeoutError, NestedTransactionError, PrivilegeError

LOCK_DIR = "/run/natmap"  # NATMAP_LOCK_DIR in the environment, or lock_dir=, chooses another
LOCK_TIMEOUT = 30.0  # seconds
_LONGEST_NAP = 0.02  # seconds between two looks at a held lock

# Which thread holds which lock file, across every NatMap of the process:
# flock does not conflict within one open file, but two NatMaps open the
# file twice, and a thread waiting for itself would wait forever. A key is
# (device, inode of the file, thread ident), its value the open file's fd:
# each thread adds and removes only its own, so no guard is needed.
_held: dict[tuple[int, int, int], int] = {}


def _forget_in_child() -> None:
    """In a child forked (without exec) from a process that holds locks: drop
    its copies of their files. A flock belongs to the open file, so the child
    would keep the parent's lock for its whole life after the parent let it go
    (and /proc/locks names the parent). Dropping a copy never releases the
    parent's lock. Each fd number is pointed at /dev/null rather than closed,
    so that the block which took it (if the forking thread is in one) closes
    a number that is still its own."""
    if not _held:
        return
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        for fd in list(_held.values()):
            os.dup2(null, fd, inheritable=False)
    finally:
        os.close(null)
    _held.clear()


os.register_at_fork(after_in_child=_forget_in_child)

# The names natmap gives its lock files: <dev>-<inode>-<table>.lock for a
# table, <dev>-<inode>.lock for a namespace. Only these are ever swept.
_LOCK_NAME = re.compile(r"(?P<netns>[0-9]+-[0-9]+)(-[A-Za-z][A-Za-z0-9_]{0,31})?\.lock")


@contextmanager
def flocked(path: str, *, timeout: float = LOCK_TIMEOUT,
            waiting: Callable[[int | None], None] | None = None) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (made if missing) for the block.

    The kernel releases it when the file is closed, so also when the process
    dies: no stale lock is ever left behind. Waits at most ``timeout`` seconds
    (:class:`LockTimeoutError`), calling ``waiting(pid of the holder or None)``
    once first; a thread that holds ``path`` already gets a
    :class:`NestedTransactionError`.
    """
    me = threading.get_ident()
    deadline = time.monotonic() + timeout
    # The lock is the open file: whatever happens after it is taken (an
    # exception, a KeyboardInterrupt after any call), the finally closes it,
    # and closing comes first there, since an fd number lost is a lock kept
    # for the life of the process (/run/xtables.lock: every iptables command).
    fd, mine, added = -1, (0, 0, me), False
    try:
        while True:
            fd = _open(path)
            st = os.fstat(fd)
            mine = (st.st_dev, st.st_ino, me)  # the file, however the path is spelled
            if mine in _held and _still_held(fd):
                raise NestedTransactionError(
                    f"this thread already holds the lock {path}: a change inside a transaction "
                    "goes through that transaction (tx.publish(...)), not through another call")
            _wait(fd, path, deadline, timeout, waiting)
            if _still_at(fd, path):
                break
            closing, fd = fd, -1  # removed (see sweep) while we waited: lock the file there now
            os.close(closing)
            waiting = None
        _held[mine] = fd
        added = True
        yield
    finally:
        if fd >= 0:
            os.close(fd)
        if added:
            _held.pop(mine, None)


def _still_held(fd: int) -> bool:
    """Whether this process holds the flock on ``fd``'s file: an entry of
    :data:`_held` outlives its lock if an interrupt came between closing the
    file and removing the entry; then it is dropped, not obeyed."""
    if holder(fd) == os.getpid():
        return True
    st = os.fstat(fd)
    _held.pop((st.st_dev, st.st_ino, threading.get_ident()), None)
    return False


@contextmanager
def table_lock(lock_dir: str, netns: tuple[int, int], table: str, *, timeout: float = LOCK_TIMEOUT,
               waiting: Callable[[int | None], None] | None = None) -> Iterator[str]:
    """Hold the lock of ``table`` in namespace ``netns`` (its nsfs (device,
    inode)) for the block; yields the lock file's path (see :func:`discard`).
    Raises :class:`LockError` if ``lock_dir`` is unsafe or unusable."""
    prepare_dir(lock_dir)
    path = os.path.join(lock_dir, f"{netns[0]}-{netns[1]}-{table}.lock")
    with flocked(path, timeout=timeout, waiting=waiting):
        yield path


@contextmanager
def namespace_lock(lock_dir: str, netns: tuple[int, int], *, timeout: float = LOCK_TIMEOUT,
                   waiting: Callable[[int | None], None] | None = None) -> Iterator[str]:
    """Hold the lock of namespace ``netns`` itself for the block (taken inside
    a :func:`table_lock`): host ports belong to the namespace, so writers of
    different tables assign and commit in turn. Its file is
    ``<dev>-<ino>.lock`` (no table's: a table's has a ``-<table>`` part), swept
    with the namespace's. Yields its path."""
    prepare_dir(lock_dir)
    path = os.path.join(lock_dir, f"{netns[0]}-{netns[1]}.lock")
    fresh = not os.path.lexists(path)
    with flocked(path, timeout=timeout, waiting=waiting):
        # A namespace new to the directory: tidy it of the gone ones' (once per
        # namespace; not per new table file, which every first change after a
        # remove() makes, and a sweep stats every process's namespace).
        if fresh:
            sweep(lock_dir)
        yield path


def discard(path: str) -> None:
    """Remove the lock file ``path``, whose lock the caller holds (its table is gone)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def prepare_dir(lock_dir: str) -> None:
    """Make ``lock_dir`` (mode 0700) if missing; refuse it unless it is a
    directory owned by this user (root) with mode 0700."""
    try:
        os.mkdir(lock_dir, 0o700)
        os.chmod(lock_dir, 0o700)  # whatever the umask took away
    except FileExistsError:
        pass
    except PermissionError as exc:
        raise PrivilegeError(f"making the lock directory {lock_dir}") from exc
    except OSError as exc:
        raise LockError(f"cannot make the lock directory {lock_dir}: {exc.strerror}") from exc
    try:
        st = os.lstat(lock_dir)
    except OSError as exc:
        raise LockError(f"cannot use the lock directory {lock_dir}: {exc.strerror}") from exc
    mode = stat.S_IMODE(st.st_mode)
    if (stat.S_ISDIR(st.st_mode) and os.path.abspath(lock_dir) == LOCK_DIR and st.st_uid == os.geteuid()
            and mode != 0o700 and not mode & 0o022):
        os.chmod(lock_dir, 0o700)  # natmap's own by name, and no one else could write it: an older natmap's
    check_own_dir(lock_dir, "lock directory", "take or fake natmap's locks", LockError, exact_mode=0o700)


def check_own_dir(path: str, what: str, risk: str, error: type[Exception], *,
                  exact_mode: int | None = None) -> None:
    """Refuse (``error``) ``path`` unless it is a directory, not a symbolic
    link, owned by this user (root), that no other user can write (with mode
    ``exact_mode`` if given): else another user could ``risk``. ``what``
    names it (``lock directory``)."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise error(f"cannot use the {what} {path}: {exc.strerror}") from exc
    if stat.S_ISLNK(st.st_mode):
        raise error(f"the {what} {path} is a symbolic link; natmap follows none: give the directory itself")
    if not stat.S_ISDIR(st.st_mode):
        raise error(f"the {what} {path} is not a directory; remove it")
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid != os.geteuid() or mode & 0o022 or (exact_mode is not None and mode != exact_mode):
        wanted = f"with mode {exact_mode:04o}" if exact_mode is not None else "and not writable by others"
        raise error(f"the {what} {path} must be owned by uid {os.geteuid()} {wanted} "
                    f"(it is uid {st.st_uid}, mode {mode:04o}): another user could "
                    f"{risk}; remove it or fix it (chown, chmod 700)")


def sweep(lock_dir: str) -> None:
    """Remove the lock files of namespaces that no longer exist (each only
    while holding its lock, so never one that someone holds)."""
    live = _live_namespaces()
    try:
        entries = [e.name for e in os.scandir(lock_dir)]
    except OSError:
        return
    for name in entries:
        match = _LOCK_NAME.fullmatch(name)
        if match and match["netns"] not in live:
            _remove_unheld(os.path.join(lock_dir, name))


def forget_namespace(lock_dir: str, netns: tuple[int, int]) -> None:
    """Remove the lock files of namespace ``netns`` (its nsfs (device, inode)):
    its own and its tables', each only while holding its lock. For whoever
    deleted the namespace (natmap.sandbox), so that nothing of it is left for
    a later :func:`sweep` to find."""
    key = f"{netns[0]}-{netns[1]}"
    for name in _listdir(lock_dir):
        match = _LOCK_NAME.fullmatch(name)
        if match and match["netns"] == key:
            _remove_unheld(os.path.join(lock_dir, name))


def holder(fd: int) -> int | None:
    """The PID of the process that holds the flock on ``fd``'s file, as the
    kernel lists it in ``/proc/locks``; None if it says none."""
    st = os.fstat(fd)
    where = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as locks:
            for line in locks:
                # "1: FLOCK  ADVISORY  WRITE 1234 00:1a:5678 0 EOF"; waiters have "->"
                words = line.split()
                if len(words) >= 6 and words[1] == "FLOCK" and words[5] == where:
                    return int(words[4])
    except (OSError, ValueError):
        pass
    return None


def describe_holder(pid: int | None) -> str:
    """``process 1234 (natmap)``, as far as the kernel tells."""
    if pid is None:
        return "another process"
    try:
        with open(f"/proc/{pid}/comm") as comm:
            return f"process {pid} ({comm.read().strip()})"
    except OSError:
        return f"process {pid}"


def _open(path: str) -> int:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except PermissionError as exc:
        raise PrivilegeError(f"taking the lock {path}") from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise LockError(f"the lock file {path} is a symbolic link: refused (remove it)") from exc
        raise LockError(f"cannot open the lock file {path}: {exc.strerror}") from exc
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
        os.close(fd)
        raise LockError(f"the lock file {path} is not a regular file of uid {os.geteuid()}: refused (remove it)")
    return fd


def _wait(fd: int, path: str, deadline: float, timeout: float,
          waiting: Callable[[int | None], None] | None) -> None:
    """Take the flock on ``fd``, looking again now and then until ``deadline``."""
    nap = 0.001
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        if waiting is not None:
            waiting(holder(fd))
            waiting = None
        left = deadline - time.monotonic()
        if left <= 0:
            pid = holder(fd)
            raise LockTimeoutError(f"{describe_holder(pid)} held the lock {path} for more than "
                                   f"{timeout:g} s; gave up waiting (a stopped or hung natmap? "
                                   "set the wait with lock_timeout= or --lock-timeout)", pid)
        time.sleep(min(nap, left))
        nap = min(nap * 2, _LONGEST_NAP)


def _still_at(fd: int, path: str) -> bool:
    """Whether the file locked through ``fd`` is still the one at ``path``."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _remove_unheld(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if _still_at(fd, path):
            os.unlink(path)
    except OSError:  # held (BlockingIOError) or gone: leave it
        pass
    finally:
        os.close(fd)


def _live_namespaces() -> set[str]:
    """``dev-inode`` of every network namespace a process is in or a name pins."""
    live = set()
    places = [f"/run/netns/{n}" for n in _listdir("/run/netns")]
    places += [f"/proc/{p}/ns/net" for p in _listdir("/proc") if p.isdigit()]
    for place in places:
        try:
            st = os.stat(place)
        except OSError:
            continue
        live.add(f"{st.st_dev}-{st.st_ino}")
    return live


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []

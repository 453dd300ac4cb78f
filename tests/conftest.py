"""Every test keeps natmap's state files in a temporary directory, removed
at the end: nothing writes /var/lib/natmap on the machine (the CLI processes
the tests start inherit NATMAP_STATE_DIR); and no test leaves this process
holding /run/xtables.lock or a natmap lock (see lockguard.py)."""

import os
import shutil
import tempfile

import pytest
from lockguard import held_locks


@pytest.fixture(scope="session", autouse=True)
def natmap_state_dir():
    path = tempfile.mkdtemp(prefix="natmap-state-")
    old = os.environ.get("NATMAP_STATE_DIR")
    os.environ["NATMAP_STATE_DIR"] = path
    try:
        yield path
    finally:
        if old is None:
            os.environ.pop("NATMAP_STATE_DIR", None)
        else:
            os.environ["NATMAP_STATE_DIR"] = old
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def no_lock_kept(request):
    """Fail the test after which this process (any of its threads, or a child
    forked from it that kept the file) holds a flock it did not hold before
    on /run/xtables.lock or on a natmap lock file: a natmap that keeps the
    xtables lock blocks every iptables command on the machine. The lock is
    named, and left as it is."""
    before = held_locks()
    yield
    kept = {where: path for where, path in held_locks().items() if where not in before}
    assert not kept, (f"{request.node.nodeid} left this process (pid {os.getpid()}) holding the lock of "
                      f"{', '.join(sorted(kept.values()))}")

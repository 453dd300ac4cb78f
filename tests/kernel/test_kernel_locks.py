"""What natmap holds of /run/xtables.lock and its own lock files, and that
nothing keeps them: not threads sharing python-iptables, not a wait given up."""

import subprocess
import sys
import textwrap
import threading
import time

import natmap
from lockguard import held_by_another_thread
from natmap.backends import iptables

# A NatMap publishing and unpublishing on iptables while another thread of the
# same process lists the namespace's natmap tables (as `natmap tables`, a
# NatMap(backend="auto") and every change's look at the other tables do).
SHARED_IPTC = textwrap.dedent("""
    import sys, threading, time
    import natmap
    from natmap.backends.iptables import natmap_tables
    from natmap.netns import entered

    netns, ip, bridge, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    nm = natmap.NatMap(netns=netns, backend="iptables")
    web = natmap.Endpoint("web01", ip, bridge)
    stop = threading.Event()

    def lister():
        with entered(netns):
            while not stop.is_set():
                natmap_tables()

    thread = threading.Thread(target=lister)
    thread.start()
    ends = time.monotonic() + seconds
    try:
        while time.monotonic() < ends:
            nm.publish(web, ["8080:80"])
            nm.unpublish("web01")
    finally:
        stop.set()
        thread.join()
    print("ok", flush=True)
""")


def test_threads_listing_tables_while_another_publishes_on_iptables_do_not_crash(sandbox):
    """python-iptables keeps ONE Table object per table name for the whole
    process (iptc.Table.__new__), whose refresh frees the C handle another
    thread may be reading: listing natmap's tables without taking turns with
    a publish crashed the process (SIGSEGV, SIGBUS) within seconds, and a
    thread stuck in the freed memory would keep /run/xtables.lock."""
    web = sandbox.container("web01")
    child = subprocess.run([sys.executable, "-c", SHARED_IPTC, sandbox.host.name, str(web.ip), sandbox.bridge, "8"],
                           capture_output=True, text=True, timeout=120)
    assert (child.returncode, child.stdout) == (0, "ok\n"), child.stderr[-2000:]


def test_listing_tables_waits_for_a_thread_inside_python_iptables(sandbox):
    """The same, without luck: while one thread is inside a backend call,
    another thread's listing waits for it."""
    natmap.NatMap(netns=sandbox.host.name, backend="iptables").publish(sandbox.container("web01").endpoint(), ["80"])
    listed = []
    with held_by_another_thread(iptables._xtables_lock):
        lister = threading.Thread(target=lambda: listed.append(sandbox.host.call(iptables.natmap_tables)))
        lister.start()
        time.sleep(0.3)
        assert listed == []  # still waiting its turn
    lister.join(10)
    assert listed == [["natmap"]]

"""Kernel tests: root, in namespaces the sandbox makes and always removes.
Every test that takes ``nm`` runs once per backend."""

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import time

import pytest

import natmap
from natmap.sandbox import Sandbox

BACKENDS = ["nft", "iptables"]


def pytest_collection_modifyitems(items):
    reason = None
    if os.geteuid() != 0:
        reason = "kernel tests need root (they run in network namespaces they create)"
    elif shutil.which("ip") is None or shutil.which("nft") is None:
        reason = "kernel tests need iproute2 and nftables (make test installs them)"
    for item in items:
        if "/kernel/" in str(item.fspath):
            item.add_marker(pytest.mark.kernel)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session", autouse=True)
def lock_dir():
    """natmap's lock files in a directory of the test run's own, removed after
    it (the commands the tests run inherit it), never in /run/natmap."""
    path = tempfile.mkdtemp(prefix="natmap-locks-")
    os.chmod(path, 0o700)
    saved = os.environ.get("NATMAP_LOCK_DIR")
    os.environ["NATMAP_LOCK_DIR"] = path
    yield path
    if saved is None:
        del os.environ["NATMAP_LOCK_DIR"]
    else:
        os.environ["NATMAP_LOCK_DIR"] = saved
    shutil.rmtree(path, ignore_errors=True)


def _root_firewall():
    """The root network namespace's nftables tables and legacy iptables rules,
    read in this process (whose main thread never leaves the root namespace)."""
    tables = subprocess.run(["nft", "-j", "list", "tables"], capture_output=True, text=True).stdout
    saved = "".join(subprocess.run([tool], capture_output=True, text=True).stdout
                    for tool in ("iptables-legacy-save", "ip6tables-legacy-save") if shutil.which(tool))
    return tables, re.sub(r"\[\d+:\d+\]|^#.*$", "", saved, flags=re.M)  # counters and timestamps move


@pytest.fixture(autouse=True)
def root_namespace_untouched(request):
    """Fail the test that changed the root namespace's firewall: every kernel
    test works only in namespaces it made (a libnftables context made in the
    root namespace and used from inside a sandbox once added tables here)."""
    if os.geteuid() != 0:
        yield
        return
    before = _root_firewall()
    yield
    assert _root_firewall() == before, f"{request.node.nodeid} changed the ROOT namespace's firewall"


NATMAP_DIRS = ("/run/natmap", "/var/lib/natmap")  # natmap's defaults: no test may write there
# The namespaces this run made, as natmap's file names name them, and when each
# lived: "<dev>-<ino>" -> [(made, removed)] (the kernel reuses a freed inode, and
# other test runs on the machine make namespaces too), and their names.
_lived: dict[str, list[tuple[float, float]]] = {}
_made_names: set[str] = set()


def _natmap_files():
    names = set()
    for directory in NATMAP_DIRS:
        try:
            names |= {os.path.join(directory, name) for name in os.listdir(directory)}
        except OSError:
            pass  # not there: nothing written
    return names


@pytest.fixture(scope="session", autouse=True)
def _record_namespaces():
    """Note every sandbox namespace: when it was made, and before it is removed,
    its nsfs inode and name."""
    mp = pytest.MonkeyPatch()
    create, close = Sandbox._create, Sandbox.close

    def recording_create(self, ns):
        ns.made_at = time.time()
        create(self, ns)

    def recording_close(self):
        for ns in self.namespaces:
            try:
                st = os.stat(f"/run/netns/{ns.name}")
            except OSError:
                continue
            _lived.setdefault(f"{st.st_dev}-{st.st_ino}", []).append((ns.made_at, time.time()))
            _made_names.add(ns.name)
        close(self)

    mp.setattr(Sandbox, "_create", recording_create)
    mp.setattr(Sandbox, "close", recording_close)
    yield
    mp.undo()


# natmap's names for a namespace's files: locks <dev>-<ino>[-<table>].lock, stores
# anon-<dev>-<ino>.<table>.<backend>.db and netns-<name>.<table>.<backend>.db
_NAMED = re.compile(r"(?:anon-)?(?P<inode>[0-9]+-[0-9]+)[-.]|netns-(?P<name>[^.]+)\.")


def _names_ours(path):
    """Whether natmap named the file after a namespace of this run: by its name,
    or by an inode that was this run's namespace's when the file was made."""
    match = _NAMED.match(os.path.basename(path))
    if match is None:
        return False
    if match["name"] is not None:
        return match["name"] in _made_names
    try:
        made = os.stat(path).st_ctime
    except OSError:
        return False
    return any(start - 0.01 <= made <= end for start, end in _lived.get(match["inode"], ()))


@pytest.fixture(autouse=True)
def nothing_left_in_natmap_dirs(request):
    """Fail the test after which /run/natmap or /var/lib/natmap holds a file
    made for a namespace of this run: every natmap the tests run (the CLI,
    natmap-cni, podman's calls of it) keeps its locks and state in temporary
    directories. Files of other namespaces are not this run's (other test runs
    may share the machine) and are left alone."""
    before = _natmap_files()
    yield
    left = sorted(path for path in _natmap_files() - before if _names_ours(path))
    for path in left:  # this run's, of namespaces gone: reported, and not left for the next run
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
    assert not left, f"{request.node.nodeid} left natmap files behind: {left}"


@pytest.fixture
def sandbox():
    with Sandbox() as sb:
        yield sb


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture
def nm(sandbox, backend):
    with natmap.NatMap(netns=sandbox.host.name, backend=backend) as instance:
        yield instance


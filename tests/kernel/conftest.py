"""Kernel tests: root, in namespaces the sandbox makes and always removes.
Every test that takes ``nm`` runs once per backend."""

import os
import re
import shutil
import subprocess
import tempfile

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


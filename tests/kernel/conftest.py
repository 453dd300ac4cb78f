"""Kernel tests: root, in namespaces the sandbox makes and always removes.
Every test that takes ``nm`` runs once per backend."""

import os
import shutil

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


"""Drift: someone changes natmap's table behind its back; check() says how,
repair() puts back what natmap made, in one rebuild. Root only."""

import subprocess
import sys
from pathlib import Path

import pytest

import natmap
from helpers import delete_behind_natmaps_back, wipe


@pytest.fixture
def published(sandbox, nm):
    web = sandbox.container("web01")
    web.serve(5000)
    nm.publish(web.endpoint(), ["8080:5000", "127.0.0.1:5001:5000"])
    return web, sandbox.client("client1")


def test_a_flushed_table_is_reported_and_repaired(sandbox, nm, backend, published):
    web, client = published
    assert client.request(sandbox.outside_ip, 8080) == "web01 192.0.2.2"
    wipe(sandbox, backend)
    assert client.request(sandbox.outside_ip, 8080, timeout=0.5) is None
    drift = nm.check()
    assert drift and drift.remembered
    assert "missing: port web01 5000/tcp -> 0.0.0.0:8080" in str(drift).splitlines()
    assert drift.table_missing == (backend == "nft")
    repaired = nm.repair()
    assert repaired.missing == drift.missing
    assert client.request(sandbox.outside_ip, 8080) == "web01 192.0.2.2"
    assert sandbox.host.request("127.0.0.1", 5001) == f"web01 {sandbox.bridge_ip}"
    assert not nm.check()


def test_a_binding_deleted_by_hand_is_reported_and_repaired(sandbox, nm, backend, published):
    web, client = published
    victim = nm.port("web01", 5000)[0]
    delete_behind_natmaps_back(sandbox, backend, victim)
    drift = nm.check()
    assert drift.missing == (victim,) and not drift.unexpected and not drift.structure
    nm.repair()
    assert victim in nm.port("web01")
    assert not nm.check()


def test_a_broken_structure_is_reported(sandbox, nm, backend, published):
    if backend == "nft":
        sandbox.host.run(["nft", "flush", "chain", "inet", "natmap", "localhost_guard"], check=True)
        expected = "structure: rule localhost_guard #1 is missing"
    else:
        sandbox.host.run(["iptables-legacy", "-t", "raw", "-D", "PREROUTING", "-j", "NATMAP-GUARD"], check=True)
        expected = "structure: iptables jump from PREROUTING to NATMAP-GUARD is missing"
    assert any(line.startswith(expected) for line in str(nm.check()).splitlines())
    nm.repair()
    assert not nm.check()


def test_a_new_natmap_without_a_store_checks_structure_only_and_cannot_repair(sandbox, backend, published,
                                                                             tmp_path):
    fresh = natmap.NatMap(netns=sandbox.host.name, backend=backend, state_dir=str(tmp_path))
    drift = fresh.check()
    assert not drift and not drift.remembered
    assert str(drift).startswith("nothing stored")
    with pytest.raises(natmap.NotFoundError, match="natmap adopt"):
        fresh.repair()
    assert {b.host_port for b in fresh.adopt() if isinstance(b, natmap.Binding)} == {8080, 5001}
    assert not fresh.check() and fresh.check().remembered


def test_natmap_check_exits_1_on_a_broken_structure(sandbox, nm, backend, published):
    natmap_cli = str(Path(sys.executable).with_name("natmap"))
    run = lambda: subprocess.run([natmap_cli, "check", "--backend", backend, "--netns", sandbox.host.name],  # noqa: E731
                                 capture_output=True, text=True)
    assert run().returncode == 0
    if backend == "nft":
        sandbox.host.run(["nft", "delete", "chain", "inet", "natmap", "isolation"], check=False)
        sandbox.host.run(["nft", "flush", "chain", "inet", "natmap", "postrouting"], check=True)
    else:
        sandbox.host.run(["iptables-legacy", "-t", "nat", "-D", "POSTROUTING", "-j", "NATMAP-POSTROUTING"], check=True)
    result = run()
    assert result.returncode == 1 and "structure:" in result.stderr

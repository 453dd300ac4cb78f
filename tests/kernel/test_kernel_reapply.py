"""Re-applying an unchanged file with `natmap apply` as a new process (issue
15): the file is not reconciled again, and the kernel is still checked
against the store: a flushed ruleset, a binding deleted by hand or a change
another process made since are all put right by it. Both backends, real
traffic. Root only."""

import subprocess
import sys
from pathlib import Path

import pytest

import natmap
from helpers import delete_behind_natmaps_back, wipe

NATMAP = str(Path(sys.executable).with_name("natmap"))


def apply(sb, backend, path):
    result = subprocess.run([NATMAP, "--netns", sb.host.name, "--backend", backend, "apply", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def lab(sandbox, tmp_path):
    web = sandbox.container("web01")
    web.serve(5000)
    path = tmp_path / "lab.toml"
    path.write_text(f"""
[endpoints.web01]
ip = "{web.ip}"
bridge = "{sandbox.bridge}"
publish = ["8080:5000", "127.0.0.1::5000"]
""")
    return path, sandbox.client("client1")


def test_an_unchanged_file_reapplied_changes_nothing_and_repairs_a_wiped_table(sandbox, backend, lab):
    path, client = lab
    assert "+ port web01 5000/tcp -> 0.0.0.0:8080" in apply(sandbox, backend, path)
    assert apply(sandbox, backend, path) == ""
    assert client.request(sandbox.outside_ip, 8080) == "web01 192.0.2.2"
    wipe(sandbox, backend)
    assert client.request(sandbox.outside_ip, 8080, timeout=0.5) is None
    assert apply(sandbox, backend, path) == ""  # the file changed nothing; the kernel is put back
    assert client.request(sandbox.outside_ip, 8080) == "web01 192.0.2.2"
    with natmap.NatMap(netns=sandbox.host.name, backend=backend) as nm:
        assert not nm.check()


def test_a_binding_deleted_by_hand_or_another_processs_change_is_undone(sandbox, backend, lab):
    path, client = lab
    apply(sandbox, backend, path)
    with natmap.NatMap(netns=sandbox.host.name, backend=backend) as nm:
        delete_behind_natmaps_back(sandbox, backend, nm.port("web01", 5000)[0])
        assert apply(sandbox, backend, path) == ""
        assert client.request(sandbox.outside_ip, 8080) == "web01 192.0.2.2" and not nm.check()
        nm.unpublish("web01")  # another process's change, recorded in the store
        assert "+ port web01 5000/tcp -> 0.0.0.0:8080" in apply(sandbox, backend, path)
        assert client.request(sandbox.outside_ip, 8080) == "web01 192.0.2.2" and not nm.check()

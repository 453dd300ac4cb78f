"""podman (CNI backend) publishing through natmap-cni, and through the stock
portmap for comparison: real containers, real traffic, in namespaces and
temporary directories of the test's own (see podman_harness)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from podman_harness import NETWORK, ULIMITS, Podman, documented_conflists, missing

from natmap.cni import endpoint_name

HTTP_GET = b"GET / HTTP/1.0\r\n\r\n"

pytestmark = pytest.mark.skipif(missing() is not None, reason=f"podman cannot run here: {missing()}")


@pytest.fixture(params=["natmap", "portmap"])
def podman(request, sandbox):
    with Podman(sandbox.host.name, request.param) as pm:
        try:
            pm.podman("info", timeout=60)
        except RuntimeError as exc:  # only where podman cannot run at all
            pytest.skip(f"podman cannot run here: {exc}")
        yield pm


def answers(ns, host, port):
    answer = ns.request(str(host), port, payload=HTTP_GET) or ""
    return answer.startswith("HTTP/1.") and " 200 " in answer.splitlines()[0]


def natmap(sandbox, *args):
    """The ``natmap`` command, run in the sandbox's host namespace as podman's plugins are."""
    return subprocess.run(["nsenter", f"--net=/run/netns/{sandbox.host.name}",
                           str(Path(sys.executable).parent / "natmap"), *args], capture_output=True, text=True)


def test_podman_run_publishes_and_rm_removes(podman, sandbox):
    client = sandbox.client("client1")
    cid = podman.run("web", "8080:80", "127.0.0.1:8081:80", "8082:80/udp")
    assert answers(client, sandbox.outside_ip, 8080)
    assert answers(sandbox.host, "127.0.0.1", 8080)    # the host's loopback
    assert answers(sandbox.host, "127.0.0.1", 8081)
    assert not answers(client, sandbox.outside_ip, 8081)  # published on 127.0.0.1 only
    podman_lines = sorted(podman.podman("port", "web").stdout.split())
    if podman.plugin == "natmap":
        shown = natmap(sandbox, "port", endpoint_name("natmaptest", cid, "eth0"))
        assert shown.returncode == 0, shown.stderr
        assert sorted(shown.stdout.split()) == podman_lines
        # conmon holds a socket on each published port (podman's reservation): ADD published
        # knowingly, so natmap check, with the plugin's store, finds nothing shadowed. The
        # plugin runs where /run/netns is not mounted (podman's own mount namespace): its
        # store is named as an anonymous namespace's, so check looks from such a view too.
        checked = subprocess.run(
            ["nsenter", f"--net=/run/netns/{sandbox.host.name}", "unshare", "--mount", "sh", "-c",
             'mount -t tmpfs none /run/netns && exec "$0" "$@"', str(Path(sys.executable).parent / "natmap"),
             "--table", podman.table, "check"], capture_output=True, text=True,
            env={**os.environ, "NATMAP_STATE_DIR": podman.state_dir, "NATMAP_LOCK_DIR": podman.lock_dir})
        assert checked.returncode == 0, checked.stdout + checked.stderr
    podman.rm("web")
    assert not answers(client, sandbox.outside_ip, 8080)
    assert not answers(sandbox.host, "127.0.0.1", 8080)
    if podman.plugin == "natmap":
        listed = natmap(sandbox, "ls")
        assert listed.returncode == 0 and "cni-" not in listed.stdout, listed.stdout + listed.stderr


def test_podman_range_and_conflict(podman, sandbox):
    client = sandbox.client("client1")
    podman.run("big", "9000-9099:9000-9099")
    podman.podman("rm", "-f", "-t", "0", "big")
    podman.run("web1", "8080:80")
    second = podman.podman("run", "-d", "--name", "web2", "--network", "natmaptest", "-p", "8080:80",
                           *podman_args(podman), check=False)
    assert second.returncode != 0
    if podman.plugin == "natmap":
        # natmap refuses the taken port and names the container that holds it
        assert "conflicts with" in second.stderr and "cni-" in second.stderr, second.stderr
    print(second.stderr)
    assert answers(client, sandbox.outside_ip, 8080)


def podman_args(podman):
    return [*ULIMITS, "--rootfs", str(podman.tmp / "rootfs"), "/bin/busybox", "httpd", "-f", "-p", "80", "-h", "/"]


def test_the_documented_podman_conflist_works_as_written(sandbox):
    """A newcomer's path: docs/cni.md's install step (the harness links natmap-cni as "natmap")
    and its podman conflist, unchanged but for the network's name."""
    documented = documented_conflists()[0]
    assert documented["plugins"][-1]["type"] == "natmap"

    class Documented(Podman):
        def conflist(self):
            return {**documented, "name": NETWORK}

    with Documented(sandbox.host.name, "natmap") as pm:
        try:
            pm.podman("info", timeout=60)
        except RuntimeError as exc:
            pytest.skip(f"podman cannot run here: {exc}")
        client = sandbox.client("client1")
        pm.run("web", "8080:80")
        assert answers(client, sandbox.outside_ip, 8080)
        assert answers(sandbox.host, "127.0.0.1", 8080)
        pm.rm("web")
        assert not answers(client, sandbox.outside_ip, 8080)


def test_the_documented_try_out_in_a_namespace_runs_as_written():
    """docs/cni.md's "Trying it in a namespace", pasted into a root shell: podman
    publishes through natmap-cni in the namespace it makes, and removing the
    container removes the binding; the namespace and its files are gone after."""
    import os
    import re
    import shutil
    import tempfile

    docs = (Path(__file__).resolve().parents[2] / "docs" / "cni.md").read_text()
    script = re.search(r"#### Trying it in a namespace\n.*?```sh\n(.*?)```", docs, re.S).group(1)
    assert not os.path.exists("/run/netns/cnitry"), "a namespace named cnitry exists already"
    outer = Path(tempfile.mkdtemp(prefix="nm-"))  # the script's mktemp -d lands here (podman wants a short runroot)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "TMPDIR": str(outer)}
    env.pop("NATMAP_LOCK_DIR", None)  # the script names its own directories
    try:
        result = subprocess.run(["bash", "-e", "-c", script], env=env, capture_output=True, text=True, timeout=300)
    finally:
        left = list(outer.iterdir())
        shutil.rmtree(outer, ignore_errors=True)
        if os.path.exists("/run/netns/cnitry"):  # the script failed before its end: clean up for it
            subprocess.run(["ip", "netns", "del", "cnitry"], capture_output=True)
    assert result.returncode == 0, result.stdout + result.stderr
    listed = [line for line in result.stdout.splitlines() if line.startswith("cni-")]
    assert len(listed) == 1 and listed[0].endswith("0.0.0.0:8080->80/tcp"), result.stdout
    assert "hello through natmap" in result.stdout.splitlines(), result.stdout  # the page, via 127.0.0.1:8080
    assert result.stdout.splitlines()[-1].split() == ["ENDPOINT", "ADDRESSES", "PORTS"]  # after podman rm
    assert not left  # rm -rf "$tmp" took everything

"""natmap-cni run as a container runtime runs it: the executable, CNI_* in the
environment, the network configuration on stdin, in the sandbox's host
namespace; real traffic from the host's loopback and from a client namespace."""

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

try:
    from helpers import delete_behind_natmaps_back
except ImportError:  # where tests/kernel/helpers.py is not there yet
    from conftest import delete_behind_natmaps_back

import natmap
from natmap.cni import endpoint_name

NETWORK = "kernelnet"
PLUGIN = str(Path(sys.executable).parent / "natmap-cni")


@pytest.fixture
def cni(sandbox, tmp_path, backend):
    """Call the plugin: ``cni("ADD", container, mappings)`` -> (exit status, stdout JSON)."""

    def call(command, container=None, mappings=(), *, prev=True, netns=None, ifname="eth0",
             version="1.0.0", network=NETWORK, extra=None, container_id=None, families="46"):
        conf = {"cniVersion": version, "name": network, "type": "natmap", "backend": backend,
                "capabilities": {"portMappings": True},
                "runtimeConfig": {"portMappings": [dict(m) for m in mappings]}, **(extra or {})}
        # the runtime's environment, as libcni passes it, with the run's NATMAP_LOCK_DIR (never /run/natmap)
        env = {**os.environ, "CNI_COMMAND": command, "CNI_PATH": "/usr/lib/cni", "NATMAP_STATE_DIR": str(tmp_path)}
        if container is not None:
            env.update(CNI_CONTAINERID=container_id or f"id-{container.label}", CNI_IFNAME=ifname,
                       CNI_NETNS=netns or f"/run/netns/{container.name}")
            if prev:
                conf["prevResult"] = prev_result(sandbox, container, version, families)
        done = subprocess.run(["nsenter", f"--net=/run/netns/{sandbox.host.name}", PLUGIN],
                              input=json.dumps(conf), env=env, capture_output=True, text=True)
        return done.returncode, json.loads(done.stdout) if done.stdout.strip() else None

    return call


def prev_result(sandbox, container, version, families="46"):
    """What the bridge plugin (with host-local) reports for ``container``, with
    its addresses of the IP versions in ``families`` ("6": an IPv6-only network)."""
    ips = [{"address": f"{container.ip}/24", "interface": 2, "version": "4"},
           {"address": f"{container.ipv6}/64", "interface": 2, "version": "6"}]
    ips = [entry for entry in ips if entry["version"] in families]
    if not version.startswith("0."):
        for entry in ips:
            del entry["version"]
    return {"cniVersion": version,
            "interfaces": [{"name": sandbox.bridge, "mac": "02:00:00:00:00:01"},
                           {"name": "veth123", "mac": "02:00:00:00:00:02"},
                           {"name": "eth0", "mac": "02:00:00:00:00:03",
                            "sandbox": f"/run/netns/{container.name}"}],
            "ips": ips}


def mapping(host_port, container_port=5000, protocol="tcp", host_ip=None):
    entry = {"hostPort": host_port, "containerPort": container_port, "protocol": protocol}
    if host_ip:
        entry["hostIP"] = host_ip
    return entry


def bindings(sandbox, backend):
    with natmap.NatMap(netns=sandbox.host.name, backend=backend) as nm:
        return list(nm.bindings())  # none when the table is not made yet


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0", "1.1.0"])
def test_add_publishes_check_passes_del_removes(sandbox, cni, backend, version):
    if backend == "iptables" and version != "1.0.0":
        pytest.skip("the versions differ in the JSON, not in the backend: each once, on nft")
    web = sandbox.container("web01")
    web.serve(5000)
    web.serve(5353, "udp")
    client = sandbox.client("client1")
    status, out = cni("ADD", web, [mapping(8080), mapping(5353, 5353, "udp"),
                                   mapping(8081, host_ip="127.0.0.1")], version=version)
    assert status == 0, out
    assert out["cniVersion"] == version and out["interfaces"][2]["name"] == "eth0"  # prevResult passed on
    assert client.request(sandbox.outside_ip, 8080) == "web01 192.0.2.2"
    assert client.request(sandbox.outside_ip6, 8080) == "web01 2001:db8:2::2"
    assert client.request(sandbox.outside_ip, 5353, "udp") == "web01 192.0.2.2"
    assert sandbox.host.request("127.0.0.1", 8080) is not None
    assert sandbox.host.request("127.0.0.1", 8081) is not None
    assert client.request(sandbox.outside_ip, 8081, timeout=0.5) is None
    assert cni("CHECK", web, [mapping(8080), mapping(5353, 5353, "udp"),
                              mapping(8081, host_ip="127.0.0.1")], version=version) == (0, None)

    assert cni("DEL", web, version=version) == (0, None)
    assert client.request(sandbox.outside_ip, 8080, timeout=0.5) is None
    assert bindings(sandbox, backend) == []
    assert cni("DEL", web, version=version) == (0, None)  # idempotent


def test_an_ipv6_only_container_is_published_on_ipv6(sandbox, cni, backend):
    """prevResult with only IPv6 addresses: a mapping without hostIP binds the
    IPv6 wildcard only, one with an IPv4 hostIP is left out (the container has
    no IPv4 address to forward it to), as Docker and portmap do."""
    web = sandbox.container("web01")
    web.serve(5000)
    client = sandbox.client("client1")
    mappings = [mapping(8080), mapping(8081, host_ip="::1"), mapping(8082, host_ip="127.0.0.1")]
    status, out = cni("ADD", web, mappings, families="6")
    assert status == 0, out
    assert [ip["address"] for ip in out["ips"]] == [f"{web.ipv6}/64"]
    assert {(b.version, str(b.host_ip), b.host_port, str(b.container_ip)) for b in bindings(sandbox, backend)} == {
        (6, "::", 8080, str(web.ipv6)), (6, "::1", 8081, str(web.ipv6))}
    assert (client.request(sandbox.outside_ip6, 8080) or "").startswith("web01 ")
    assert client.request(sandbox.outside_ip, 8080, timeout=0.5) is None
    assert (sandbox.host.request("::1", 8081) or "").startswith("web01 ")
    assert sandbox.host.request("127.0.0.1", 8082, timeout=0.5) is None
    assert cni("CHECK", web, mappings, families="6") == (0, None)
    assert cni("DEL", web) == (0, None)
    assert bindings(sandbox, backend) == []
    assert client.request(sandbox.outside_ip6, 8080, timeout=0.5) is None


def test_an_add_after_a_del_checks_the_host_again(sandbox, cni, backend):
    """A container's second ADD (podman run after podman rm) takes no port a
    host service took meanwhile: the guest checks run on every ADD."""
    web = sandbox.container("web01")
    assert cni("ADD", web, [mapping(8080)])[0] == 0
    assert cni("DEL", web) == (0, None)
    sandbox.host.serve(8080, family=4)
    status, out = cni("ADD", web, [mapping(8080)])
    assert (status, out["code"]) == (1, 100) and "a host socket listens on 0.0.0.0:8080" in out["msg"], out
    assert bindings(sandbox, backend) == []


@pytest.mark.parametrize("address", ["::ffff:0.0.0.0", "::ffff:127.0.0.1", "::ffff:192.0.2.1"])
def test_an_add_is_refused_a_port_held_through_an_ipv4_mapped_address(sandbox, cni, backend, address):
    """natmap-cni reads the host's sockets with natmap.nlquery: an IPv6 socket
    bound to an IPv4-mapped address holds the IPv4 port, and is named by it."""
    def listen():
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((address, 8080))
        sock.listen()
        return sock
    web = sandbox.container("web01")
    with sandbox.host.call(listen):
        status, out = cni("ADD", web, [mapping(8080)])
        ipv4 = address.removeprefix("::ffff:")
        assert (status, out["code"]) == (1, 100) and f"a host socket listens on {ipv4}:8080" in out["msg"], out
        assert bindings(sandbox, backend) == []


def test_check_fails_when_a_binding_is_lost(sandbox, cni, backend):
    web = sandbox.container("web01")
    assert cni("ADD", web, [mapping(8080), mapping(8090)])[0] == 0
    lost = next(b for b in bindings(sandbox, backend) if b.host_port == 8090 and b.version == 4)
    delete_behind_natmaps_back(sandbox, backend, lost)
    status, out = cni("CHECK", web, [mapping(8080), mapping(8090)])
    assert status != 0 and out["code"] == 101
    assert "0.0.0.0:8090" in out["details"]
    # CHECK with other mappings than were published fails as well
    assert cni("ADD", web, [mapping(8080)])[0] == 0
    status, out = cni("CHECK", web, [mapping(8080), mapping(8090)])
    assert (status, out["code"]) == (1, 101)


def test_conflict_names_the_other_owner_and_changes_nothing(sandbox, cni, backend):
    web1, web2 = sandbox.container("web01"), sandbox.container("web02")
    web1.serve(5000)
    web2.serve(5000)
    client = sandbox.client("client1")
    assert cni("ADD", web1, [mapping(8080)])[0] == 0
    status, out = cni("ADD", web2, [mapping(9090), mapping(8080)])
    assert status == 1 and out["code"] == 100
    assert endpoint_name(NETWORK, "id-web01", "eth0") in out["msg"]
    assert client.request(sandbox.outside_ip, 8080) == "web01 192.0.2.2"
    assert client.request(sandbox.outside_ip, 9090, timeout=0.5) is None  # all of the ADD or none


def test_del_without_prev_result_and_netns_gone(sandbox, cni, backend):
    web = sandbox.container("web01")
    assert cni("ADD", web, [mapping(8080)])[0] == 0
    assert cni("DEL", web, prev=False, netns="/run/netns/gone-away") == (0, None)
    assert bindings(sandbox, backend) == []


def test_gc_removes_attachments_not_valid(sandbox, cni, backend):
    web1, web2, other = (sandbox.container(n) for n in ("web01", "web02", "web03"))
    assert cni("ADD", web1, [mapping(8081)])[0] == 0
    assert cni("ADD", web2, [mapping(8082)])[0] == 0
    assert cni("ADD", other, [mapping(8083)], network="othernet")[0] == 0
    valid = {"cni.dev/valid-attachments": [{"containerID": "id-web01", "ifname": "eth0"}]}
    assert cni("GC", version="1.1.0", extra=valid) == (0, None)
    assert {b.endpoint for b in bindings(sandbox, backend)} == {
        endpoint_name(NETWORK, "id-web01", "eth0"), endpoint_name("othernet", "id-web03", "eth0")}
    assert cni("STATUS", version="1.1.0") == (0, None)


def test_concurrent_adds_for_different_containers(sandbox, cni, backend):
    containers = [sandbox.container(f"web{i:02}") for i in range(6)]
    results = {}

    def add(i, container):
        results[i] = cni("ADD", container, [mapping(8000 + i), mapping(9000 + i, protocol="udp")])

    threads = [threading.Thread(target=add, args=(i, c)) for i, c in enumerate(containers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(status == 0 for status, _ in results.values()), results
    by_endpoint = {}
    for b in bindings(sandbox, backend):
        by_endpoint.setdefault(b.endpoint, set()).add((b.proto.value, b.host_port, str(b.container_ip)))
    assert by_endpoint == {
        endpoint_name(NETWORK, f"id-{c.label}", "eth0"): {
            (proto, port, str(c.ip)) for proto, port in (("tcp", 8000 + i), ("udp", 9000 + i))}
        | {(proto, port, str(c.ipv6)) for proto, port in (("tcp", 8000 + i), ("udp", 9000 + i))}
        for i, c in enumerate(containers)}


def test_long_container_ids_stay_apart(sandbox, cni, backend):
    """Kubernetes and podman IDs are 64 hex digits; two that share a long prefix are two endpoints."""
    web1, web2 = sandbox.container("web01"), sandbox.container("web02")
    base = "f" * 60
    assert cni("ADD", web1, [mapping(8081)], container_id=base + "0001")[0] == 0
    assert cni("ADD", web2, [mapping(8082)], container_id=base + "0002")[0] == 0
    assert cni("DEL", web1, container_id=base + "0001") == (0, None)
    assert {b.host_port for b in bindings(sandbox, backend)} == {8082}



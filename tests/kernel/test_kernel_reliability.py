"""Reliability and security in the sandbox: privileges, crafted packets to
127.0.0.1, hostile names, concurrency, crashes, stale conntrack entries,
limits. Root only. STRESS=1 (make stress) runs the long ones at full count."""

import json
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import natmap
from helpers import delete_behind_natmaps_back, kernel_state
from natmap import Binding
from natmap.docker_format import ps_ports

STRESS = os.environ.get("STRESS") == "1"


# --- privileges ----------------------------------------------------------------------------

def test_without_cap_net_admin_every_call_is_one_clear_error(sandbox, backend):
    web = sandbox.container("web01")
    natmap.NatMap(netns=sandbox.host.name, backend=backend).publish(web.endpoint(), ["8080:80"])
    before = kernel_state(sandbox, backend)
    script = textwrap.dedent(f"""
        import natmap
        for call in ("publish", "unpublish", "bindings"):
            try:
                nm = natmap.NatMap(backend="{backend}")
                if call == "publish":
                    nm.publish(natmap.Endpoint("web02", "{web.ip}", "{sandbox.bridge}"), ["9090:80"])
                elif call == "unpublish":
                    nm.unpublish("web01")
                else:
                    nm.bindings()
            except natmap.PrivilegeError as exc:
                assert isinstance(exc, PermissionError)
                print(call, "->", exc)
    """)
    result = sandbox.host.run(["setpriv", "--bounding-set", "-net_admin", "--inh-caps", "-net_admin",
                               sys.executable, "-c", script], timeout=60)
    lines = result.stdout.splitlines()
    assert [line.split(" -> ")[0] for line in lines] == ["publish", "unpublish", "bindings"], result.stderr
    assert all(line.endswith("natmap needs CAP_NET_ADMIN in the network namespace (run it as root)")
               for line in lines)
    assert kernel_state(sandbox, backend) == before


# --- crafted packets to 127.0.0.1 and ::1 ----------------------------------------------------

def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _syn_frame(src_mac, dst_mac, src_ip, dst_ip, dport, sport=45678):
    import ipaddress

    src, dst = ipaddress.ip_address(src_ip), ipaddress.ip_address(dst_ip)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x02, 64240, 0, 0)
    if src.version == 4:
        pseudo = src.packed + dst.packed + struct.pack("!BBH", 0, 6, len(tcp))
        tcp = tcp[:16] + struct.pack("!H", _checksum(pseudo + tcp)) + tcp[18:]
        header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0, src.packed, dst.packed)
        header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
        ethertype = 0x0800
    else:
        pseudo = src.packed + dst.packed + struct.pack("!I3xB", len(tcp), 6)
        tcp = tcp[:16] + struct.pack("!H", _checksum(pseudo + tcp)) + tcp[18:]
        header = struct.pack("!IHBB16s16s", 6 << 28, len(tcp), 6, 64, src.packed, dst.packed)
        ethertype = 0x86DD
    return dst_mac + src_mac + struct.pack("!H", ethertype) + header + tcp


def _answered(frame: bytes, sport: int = 45678) -> bool:
    """Send one raw frame on eth0 and say whether any TCP packet came back to sport."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    sock.bind(("eth0", 0))
    sock.settimeout(0.1)
    sock.send(frame)
    deadline = time.monotonic() + 0.8
    try:
        while time.monotonic() < deadline:
            try:
                data = sock.recv(2048)
            except TimeoutError:
                continue
            ethertype = struct.unpack("!H", data[12:14])[0]
            offset = 14 + (20 if ethertype == 0x0800 else 40)
            if ethertype in (0x0800, 0x86DD) and len(data) >= offset + 4 and \
                    data[23 if ethertype == 0x0800 else 20] == 6 and \
                    struct.unpack("!H", data[offset + 2:offset + 4])[0] == sport:
                return True
        return False
    finally:
        sock.close()


def test_crafted_packets_to_loopback_bindings_get_nothing(sandbox, nm, backend):
    web = sandbox.container("web01")
    web.serve(5000)
    client = sandbox.client("client1")
    nm.publish(web.endpoint(), ["127.0.0.1:5001:5000", "[::1]:5002:5000", "8080:5000"])
    host_mac = bytes.fromhex(sandbox.host.run(["cat", "/sys/class/net/nmout/address"]).stdout.strip().replace(":", ""))
    client_mac = bytes.fromhex(client.run(["cat", "/sys/class/net/eth0/address"]).stdout.strip().replace(":", ""))
    # The crafting works: the same SYN to a wildcard binding on the host's address is answered.
    assert client.call(_answered, _syn_frame(client_mac, host_mac, "192.0.2.2", str(sandbox.outside_ip), 8080))
    assert not client.call(_answered, _syn_frame(client_mac, host_mac, "192.0.2.2", "127.0.0.1", 5001))
    assert not client.call(_answered, _syn_frame(client_mac, host_mac, "2001:db8:2::2", "::1", 5002))
    entries = sandbox.host.run(["conntrack", "-L", "-f", "ipv4"]).stdout + \
        sandbox.host.run(["conntrack", "-L", "-f", "ipv6"]).stdout
    assert "dst=127.0.0.1" not in entries and "dst=::1 " not in entries


# --- hostile input ------------------------------------------------------------------------------

HOSTILE = ['web"01', "web;01", "web\n01", "web{01}", "flush ruleset", "web01' ; flush ruleset ; '",
           "x" * 65, "", "-rf", "web 01", "web\x0001", "ünicode"]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_are_refused_and_change_nothing(sandbox, nm, backend, name):
    web = sandbox.container("web01")
    nm.publish(web.endpoint(), ["8080:80"])
    before = kernel_state(sandbox, backend)
    for attempt in (lambda: natmap.Endpoint(name, web.ip, sandbox.bridge),
                    lambda: nm.unpublish(name), lambda: nm.port(name),
                    lambda: nm.link("web01", name), lambda: natmap.NatMap(table=name),
                    lambda: natmap.LinkSpec.parse(f"db01:{name}"),
                    lambda: nm.isolate(name)):
        with pytest.raises(ValueError):
            attempt()
    assert kernel_state(sandbox, backend) == before


names = st.one_of(st.text(max_size=70), st.sampled_from(HOSTILE + ["web01", "db01"]))
addresses = st.one_of(st.text(max_size=40), st.sampled_from(["172.30.0.9", "fd00:30::9", "::1", "0.0.0.0"]))
specs = st.one_of(st.text(max_size=40), st.sampled_from(["8080:80", "127.0.0.1::80", "[::1]:1:1", "80/udp"]))


@given(name=names, address=addresses, spec=specs)
@settings(max_examples=150 if not STRESS else 2000, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_random_input_through_plan_only_raises_natmaps_errors(sandbox, name, address, spec):
    nm = natmap.NatMap(netns=sandbox.host.name)
    try:
        nm.preview(natmap.Endpoint(name, address, sandbox.bridge), [spec])
    except natmap.NatmapError:
        pass
    assert kernel_state(sandbox, "nft") == ""  # plan never applies anything


# --- concurrency -----------------------------------------------------------------------------------

WORKER = textwrap.dedent("""
    import json, sys, natmap
    netns, backend, me, ops = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    nm = natmap.NatMap(netns=netns, backend=backend)
    alive = {}
    for j in range(ops):
        name = f"p{me}e{j}"
        endpoint = natmap.Endpoint(name, f"172.30.{me + 1}.{j % 250 + 1}", "natmap0", expose=("80", "53/udp"))
        if j % 3 == 2 and alive:
            victim = sorted(alive)[0]
            nm.unpublish(victim)
            del alive[victim]
        else:
            alive[name] = [str(b) + "/" + b.proto.value for b in nm.publish(endpoint, publish_all=True)]
    print(json.dumps(alive))
""")


@pytest.fixture
def wide():
    """A sandbox whose bridge holds 172.30.0.0/16: room for many endpoints."""
    with natmap.Sandbox(subnet="172.30.0.0/16", subnet6=None) as sb:
        yield sb


def test_concurrent_processes_lose_nothing_and_never_share_a_port(wide, backend):
    sandbox = wide
    processes, ops = (8, 100) if STRESS else (8, 25 if backend == "nft" else 12)
    natmap.NatMap(netns=sandbox.host.name, backend=backend).publish(
        natmap.Endpoint("seed", "172.30.0.9", sandbox.bridge), ["1:1"])  # the table exists
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, sandbox.host.name, backend, str(i), str(ops)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for i in range(processes)]
    believed = {}
    for worker in workers:
        out, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err
        believed.update(json.loads(out))
    nm = natmap.NatMap(netns=sandbox.host.name, backend=backend)
    actual = {}
    for b in nm.bindings():
        if b.endpoint != "seed":
            actual.setdefault(b.endpoint, []).append(str(b) + "/" + b.proto.value)
    assert {k: sorted(v) for k, v in actual.items()} == {k: sorted(v) for k, v in believed.items()}
    host_sides = [h for hs in actual.values() for h in hs]
    assert len(host_sides) == len(set(host_sides))  # no port given twice


# --- crashes -------------------------------------------------------------------------------------------

CRASHER = textwrap.dedent("""
    import ipaddress, sys, natmap
    nm = natmap.NatMap(netns=sys.argv[1])
    with nm.transaction() as tx:
        for i in range(250):
            ep = natmap.Endpoint(f"big{i}", ipaddress.IPv4Address("172.30.1.0") + i, "natmap0")
            tx.publish(ep, [f"{10000 + 40 * i}-{10039 + 40 * i}:1-40"])
        print("committing", flush=True)
""")


def test_sigkill_during_a_big_publish_leaves_before_or_after(wide):
    sandbox = wide
    nm = natmap.NatMap(netns=sandbox.host.name)
    nm.publish(natmap.Endpoint("seed", "172.30.0.9", sandbox.bridge), ["1:1"])
    before = kernel_state(sandbox, "nft")
    outcomes = set()
    for attempt in range(50 if STRESS else 6):
        child = subprocess.Popen([sys.executable, "-c", CRASHER, sandbox.host.name], stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline() == "committing\n"  # the model is built; the kernel call comes now
        time.sleep(random.uniform(0, 0.15))
        child.send_signal(signal.SIGKILL)
        child.wait()
        count = len(natmap.NatMap(netns=sandbox.host.name).bindings())
        assert count in (1, 10001), count  # never in between
        outcomes.add(count)
        if count == 10001:
            with nm.transaction() as tx:  # back to before, and the lock is free again
                for i in range(250):
                    tx.unpublish(f"big{i}")
        assert kernel_state(sandbox, "nft") == before or count == 10001
    assert outcomes <= {1, 10001}


# --- conntrack ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", [4, 6])
def test_publishing_over_a_stale_udp_flow_takes_it_over(sandbox, nm, family):
    web = sandbox.container("web01")
    web.serve(5353, "udp")
    client = sandbox.client("client1")
    nm.publish(sandbox.container("db01").endpoint(), ["1:1"])  # the table and bridge exist
    host, seen_as = (sandbox.outside_ip, "192.0.2.2") if family == 4 else (sandbox.outside_ip6, "2001:db8:2::2")
    flow = client.udp_socket(family)
    # Before publishing, the flow goes to the host itself, which has no such
    # service: conntrack keeps an unanswered entry for it.
    assert client.request(host, 5353, "udp", sock=flow, timeout=0.3) is None
    assert "dport=5353" in sandbox.host.run(["conntrack", "-L", "-p", "udp", "-f", f"ipv{family}"]).stdout
    nm.publish(web.endpoint(), ["5353:5353/udp"])
    assert client.request(host, 5353, "udp", sock=flow) == f"web01 {seen_as}"
    flow.close()


def test_publishing_udp_ports_takes_over_the_stale_flows_of_each_and_no_other(sandbox, nm):
    """The stale flows are dumped by port (one dump a port, for a few ports):
    each published port's are taken over; another port's unanswered flow stays."""
    web = sandbox.container("web01")
    web.serve(5353, "udp")
    web.serve(5354, "udp")
    client = sandbox.client("client1")
    nm.publish(sandbox.container("db01").endpoint(), ["1:1"])  # the table and bridge exist
    flows = {port: client.udp_socket(4) for port in (5353, 5354, 5355)}
    for port, flow in flows.items():
        assert client.request(sandbox.outside_ip, port, "udp", sock=flow, timeout=0.3) is None
    nm.publish(web.endpoint(), ["5353:5353/udp", "5354:5354/udp"])
    for port in (5353, 5354):
        assert client.request(sandbox.outside_ip, port, "udp", sock=flows[port]) == "web01 192.0.2.2"
    assert "dport=5355" in sandbox.host.run(["conntrack", "-L", "-p", "udp", "-f", "ipv4"]).stdout
    for flow in flows.values():
        flow.close()


# --- limits ------------------------------------------------------------------------------------------------

def test_all_65535_ports_of_one_range_in_one_transaction(sandbox):
    nm = natmap.NatMap(netns=sandbox.host.name)
    web = sandbox.container("web01")
    web.serve(65535)
    made = nm.publish(web.endpoint(ipv6=False), ["1-65535:1-65535"])
    assert len(made) == 65535
    assert len(natmap.NatMap(netns=sandbox.host.name).bindings()) == 65535
    assert sandbox.client("client1").request(sandbox.outside_ip, 65535) == "web01 192.0.2.2"


def test_running_out_of_assignable_ports_names_the_range(sandbox, nm, backend):
    sandbox.host.run(["sysctl", "-qw", "net.ipv4.ip_local_port_range=40000 40001"], check=True)
    web = sandbox.container("web01")
    nm.publish(web.endpoint(), ["80"])
    before = kernel_state(sandbox, backend)
    with pytest.raises(natmap.ConflictError, match="no free host port for tcp in 40000-40001"):
        nm.publish(web.endpoint(expose=["81", "82"]), publish_all=True)
    assert kernel_state(sandbox, backend) == before


def test_a_same_port_range_is_one_kernel_element_carrying_traffic_and_read_back(sandbox, nm, backend):
    web = sandbox.container("web01")
    web.serve(15000, "udp")
    web.serve(20000)
    client = sandbox.client("client1")
    nm.publish(web.endpoint(), ["10000-20000:10000-20000/udp", "10000-20000:10000-20000"])
    state = kernel_state(sandbox, backend)
    one_element = '"range": [10000, 20000]' if backend == "nft" else "--dport 10000:20000"
    assert state.count(one_element) == 4  # tcp and udp, IPv4 and IPv6
    flow = client.udp_socket()
    assert client.request(sandbox.outside_ip, 15000, "udp", sock=flow) == "web01 192.0.2.2"
    assert client.request(sandbox.outside_ip6, 20000) == "web01 2001:db8:2::2"
    fresh = natmap.NatMap(netns=sandbox.host.name, backend=backend)
    assert len(fresh.port("web01")) == 4 * 10001
    assert [str(b) for b in fresh.port("web01", "15000/udp")] == ["0.0.0.0:15000", "[::]:15000"]
    assert not nm.check()
    with pytest.raises(natmap.ConflictError, match="10000-20000/udp"):
        nm.publish(sandbox.container("db01").endpoint(), ["15000:53/udp"])
    assert len(nm.unpublish("web01")) == 4 * 10001
    assert client.request(sandbox.outside_ip, 15000, "udp", sock=flow, timeout=0.5) is None  # its flow cut
    assert "10000" not in kernel_state(sandbox, backend)
    flow.close()


def test_assigned_ports_that_match_their_container_ports_are_one_kernel_element(sandbox, nm, backend):
    """-P of EXPOSE 40000-40049 given ports 40000-40049: one element a family,
    as `-p 40000-40049:40000-40049` is, whatever check, repair and ps see."""
    sandbox.host.run(["sysctl", "-qw", "net.ipv4.ip_local_port_range=40000 40100"], check=True)
    web = sandbox.container("web01")
    web.serve(40025)
    client = sandbox.client("client1")
    made = nm.publish(web.endpoint(expose=["40000-40049/tcp"]), [], publish_all=True)
    assert [b.host_port for b in made][:4] == [40000, 40000, 40001, 40001] and len(made) == 100
    one_element = '"range": [40000, 40049]' if backend == "nft" else "--dport 40000:40049"
    assert kernel_state(sandbox, backend).count(one_element) == 2  # IPv4 and IPv6
    assert client.request(sandbox.outside_ip, 40025) == "web01 192.0.2.2"
    fresh = natmap.NatMap(netns=sandbox.host.name, backend=backend)
    assert [str(b) for b in fresh.port("web01", 40025)] == ["0.0.0.0:40025", "[::]:40025"]
    assert ps_ports(fresh.bindings()) == "0.0.0.0:40000-40049->40000-40049/tcp, [::]:40000-40049->40000-40049/tcp"
    assert not nm.check()
    (v4,) = [b for b in nm.bindings() if b.host_port == 40000 and b.version == 4]
    delete_behind_natmaps_back(sandbox, backend, Binding(v4.endpoint, v4.proto, v4.host_ip, 40000,
                                                         v4.container_ip, 40000, 50))
    assert nm.check()
    nm.repair()
    assert not nm.check() and client.request(sandbox.outside_ip, 40025) == "web01 192.0.2.2"
    with pytest.raises(natmap.ConflictError, match="40000-40049/tcp"):
        nm.publish(sandbox.container("db01").endpoint(), ["40010:53"])
    assert len(nm.unpublish("web01")) == 100
    assert not re.search(r"\b40000", kernel_state(sandbox, backend))  # a port (the ct mark 0x4000000 is no port)

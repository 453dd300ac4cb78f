"""natmap as a guest on a shared host (issue 13): host sockets' ports, other
natmap tables, other programs' tables and chains, odd addresses. Root only;
every namespace is the sandbox's own; each case with real traffic, both backends."""

import os
import re
import socket
import subprocess
import sys
import textwrap

import pytest

import natmap
from helpers import delete_behind_natmaps_back, kernel_state
from test_kernel_engine import client, web  # noqa: F401 (the same fixtures: web01 serving, client1 outside)
from natmap import ConflictError, SpecError
from natmap.errors import UnknownInterfaceError


def host_listener(sandbox, port, proto="tcp", address="0.0.0.0"):
    """A host service (think sshd) holding ``port`` in the sandbox's host namespace."""
    def make():
        kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, kind)
        sock.bind((address, port))
        if proto == "tcp":
            sock.listen()
        return sock
    return sandbox.host.call(make)


# --- 1. a host service's port ---------------------------------------------------------


def test_an_explicit_port_a_host_socket_listens_on_is_refused_naming_it(sandbox, nm, web, client):
    with host_listener(sandbox, 2222):
        with pytest.raises(ConflictError, match=r"listens on 0\.0\.0\.0:2222/tcp \(pid %d " % os.getpid()):
            nm.publish(web.endpoint(), ["2222:5000"])
        assert nm.bindings() == []  # nothing applied
        # A bound UDP socket on one address holds that address and the wildcard.
        with host_listener(sandbox, 5353, "udp", "127.0.0.1"):
            with pytest.raises(ConflictError, match=r"127\.0\.0\.1:5353/udp"):
                nm.publish(web.endpoint(), ["5353:5353/udp"])
            nm.publish(web.endpoint(), [f"{sandbox.outside_ip}:5353:5353/udp"])  # another address: free


def mapped_listener(sandbox, port, address):
    """An IPv6 TCP socket (IPV6_V6ONLY=0) bound to the IPv4-mapped ``address``:
    it holds the IPv4 port, so a plain IPv4 bind of it fails."""
    def make():
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((address, port))
        sock.listen()
        plain = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with plain, pytest.raises(OSError, match="Address already in use"):
            plain.bind((address.removeprefix("::ffff:"), port))
        return sock
    return sandbox.host.call(make)


@pytest.mark.parametrize("address", ["::ffff:0.0.0.0", "::ffff:127.0.0.1", "::ffff:192.0.2.1"])
def test_a_socket_on_an_ipv4_mapped_address_holds_the_ipv4_port(sandbox, nm, web, address):
    ipv4 = address.removeprefix("::ffff:")
    with mapped_listener(sandbox, 2222, address):
        with pytest.raises(ConflictError, match=r"listens on %s:2222/tcp" % re.escape(ipv4)):
            nm.publish(web.endpoint(), ["2222:5000"])
        with pytest.raises(ConflictError, match=r"listens on %s:2222/tcp" % re.escape(ipv4)):
            nm.publish(web.endpoint(), [f"{ipv4}:2222:5000"])
        assert nm.bindings() == []
        nm.publish(web.endpoint(), ["[::]:2222:5000"])  # the IPv6 port is free
        nm.remove()
    nm.publish(web.endpoint(), ["2222:5000"])  # before the socket: check() then sees it shadowed
    with mapped_listener(sandbox, 2222, address):
        drift = natmap.NatMap(netns=sandbox.host.name, backend=nm.backend_name).check()
        assert "shadows the host socket on %s:2222/tcp" % ipv4 in str(drift)


def test_force_takes_a_host_sockets_port_knowingly_and_the_store_tells_others(sandbox, nm, web, client):
    with host_listener(sandbox, 2222):
        nm.publish(web.endpoint(), ["2222:5000"], force=True)
        assert client.request(sandbox.outside_ip, 2222) == "web01 192.0.2.2"
        assert not nm.check()  # forced: no news
        with natmap.NatMap(netns=sandbox.host.name, backend=nm.backend_name) as fresh:
            assert not fresh.check().shadowing  # the store keeps it forced, for any process
        nm.unpublish("web01")
    nm.publish(web.endpoint(), ["2222:5000"])  # not forced any more
    with host_listener(sandbox, 2222), natmap.NatMap(netns=sandbox.host.name, backend=nm.backend_name) as fresh:
        [shadowing] = fresh.check().shadowing
        assert shadowing.startswith("port web01 5000/tcp -> 0.0.0.0:2222 shadows the host socket on 0.0.0.0:2222/tcp")


def test_back_to_nat_over_a_host_socket_is_refused_unless_forced_as_publish(sandbox, nm, web, client):
    """The conflict's advice (force=True / --force) is one set_gateway takes: the port mapped knowingly."""
    nm.publish(web.endpoint(), ["2222:5000"])
    nm.set_gateway(sandbox.bridge, "routed")
    with host_listener(sandbox, 2222):
        with pytest.raises(ConflictError, match="listens on 0.0.0.0:2222/tcp.*force=True / --force"):
            nm.set_gateway(sandbox.bridge, "nat")
        nm.set_gateway(sandbox.bridge, "nat", force=True)
        assert client.request(sandbox.outside_ip, 2222) == "web01 192.0.2.2"
        assert not nm.check()  # forced: no news


def test_check_reports_a_listener_that_appeared_after_the_binding(sandbox, nm, web):
    nm.publish(web.endpoint(), ["2222:5000"])
    assert not nm.check()
    with host_listener(sandbox, 2222, address="127.0.0.1"):
        drift = nm.check()
        assert drift.shadowing and "127.0.0.1:2222/tcp" in drift.shadowing[0]
    assert not nm.check()


def test_assigned_ports_skip_a_dual_stack_listener(sandbox, nm, web):
    low = int(sandbox.host.run(["sysctl", "-n", "net.ipv4.ip_local_port_range"]).stdout.split()[0])
    with host_listener(sandbox, low, address="::"):
        made = nm.publish(web.endpoint(), ["5000"])
        assert {b.host_port for b in made} == {low + 1}


# --- 2. another table's port ----------------------------------------------------------


@pytest.mark.parametrize("other_backend", ["nft", "iptables"])
def test_two_tables_never_hold_one_host_port(sandbox, nm, web, client, other_backend):
    other_web = sandbox.container("web02")
    other_web.serve(5000)
    with natmap.NatMap(table="tb", netns=sandbox.host.name, backend=other_backend) as tb:
        tb.publish(other_web.endpoint(), ["8080:5000"])
        with pytest.raises(ConflictError, match=r"endpoint 'web02' in table .*tb \(%s\)" % other_backend):
            nm.publish(web.endpoint(), ["8080:5000"])
        assert client.request(sandbox.outside_ip, 8080) == "web02 192.0.2.2"
        # -P never hands out a port another table maps.
        theirs = tb.publish(other_web.endpoint(), ["5000"])[0].host_port
        mine = nm.publish(web.endpoint(), ["5000"])
        assert theirs not in {b.host_port for b in mine}
        assert client.request(sandbox.outside_ip, mine[0].host_port) == "web01 192.0.2.2"
        tb.remove()


def test_another_tables_ports_are_seen_after_every_change_to_it_while_kept_between(sandbox, web, client,
                                                                                 monkeypatch):
    """A NatMap keeps the other nft tables it read while the kernel's
    generation says nothing but its own commits came after (as on a host
    without legacy iptables, where that is done): a port the other table
    takes or gives back meanwhile is seen at the next publish."""
    import natmap.backends

    monkeypatch.setattr(natmap.backends, "iptables_in_use", lambda: False)
    other_web = sandbox.container("web02")
    other_web.serve(5000)
    with natmap.NatMap(table="mine", netns=sandbox.host.name) as mine, \
            natmap.NatMap(table="tb", netns=sandbox.host.name) as tb:
        tb.publish(other_web.endpoint(), ["8080:5000"])
        mine.publish(web.endpoint(), ["8081:5000"])  # tb read, and kept
        mine.publish(web.endpoint(), ["8082:5000"])  # kept: only mine committed since
        with pytest.raises(ConflictError, match="endpoint 'web02' in table inet tb"):
            mine.publish(web.endpoint(), ["8080:5000"])
        tb.publish(other_web.endpoint(), ["8083:5000"])  # another table's commit: read again
        with pytest.raises(ConflictError, match="8083/tcp of endpoint 'web02'"):
            mine.publish(web.endpoint(), ["8083:5000"])
        tb.unpublish("web02")  # the ports given back
        mine.publish(web.endpoint(), ["8080:5000", "8083:5000"])
        assert client.request(sandbox.outside_ip, 8080) == "web01 192.0.2.2"
        mine.remove()
        tb.remove()


def test_same_table_name_on_the_other_backend_is_another_table(sandbox, nm, web):
    other = "iptables" if nm.backend_name == "nft" else "nft"
    with natmap.NatMap(netns=sandbox.host.name, backend=other) as twin:
        twin.publish(web.endpoint(), ["8080:5000"])
        with pytest.raises(ConflictError, match="8080"):
            nm.publish(web.endpoint(), ["0.0.0.0:8080:5000"])
        twin.remove()


_RACER = textwrap.dedent("""
    import sys, natmap
    table, backend, netns, ip, bridge, count = sys.argv[1:]
    nm = natmap.NatMap(table=table, backend=backend, netns=netns)
    ports = []
    for i in range(int(count)):
        endpoint = natmap.Endpoint("e" + table, ip, bridge, expose=(str(5000 + i),))
        ports += [b.host_port for b in nm.publish(endpoint, [], publish_all=True)]
    print(" ".join(map(str, ports)))
""")


def test_concurrent_publish_all_in_two_tables_never_yields_one_port_twice(sandbox, backend):
    count = 200 if os.environ.get("STRESS") else 30  # make stress: the 200
    racers = [subprocess.Popen([sys.executable, "-c", _RACER, table, backend, sandbox.host.name,
                                str(sandbox.subnet.network_address + n), sandbox.bridge, str(count)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for n, table in ((20, "ta"), (21, "tb"))]
    outputs = [racer.communicate(timeout=600) for racer in racers]
    assert all(racer.returncode == 0 for racer in racers), [err for _, err in outputs]
    ports = [set(map(int, out.split())) for out, _ in outputs]
    assert len(ports[0]) == len(ports[1]) == count
    assert not ports[0] & ports[1]


# --- 3. another program's tables and chains --------------------------------------------


def test_an_nft_table_natmap_did_not_make_is_never_used_or_deleted(sandbox, web):
    sandbox.host.run(["nft", "add table inet natmap; add chain inet natmap mine; "
                      "add rule inet natmap mine counter accept"], check=True)
    before = kernel_state(sandbox, "nft")
    nm = natmap.NatMap(netns=sandbox.host.name)
    for action in (lambda: nm.publish(web.endpoint(), ["8080:5000"]), nm.remove, nm.bindings):
        with pytest.raises(ConflictError, match="table inet natmap exists but is not natmap's"):
            action()
    assert kernel_state(sandbox, "nft") == before


def _save(sandbox, *tables):
    """The tables as iptables-legacy-save prints them, without its timestamp
    comments and the policies' packet counters (the namespace's own traffic moves them)."""
    saved = "".join(sandbox.host.run(["iptables-legacy-save", "-t", t]).stdout for t in tables)
    return "\n".join(re.sub(r"\[\d+:\d+\]$", "", line) for line in saved.splitlines() if not line.startswith("#"))


@pytest.mark.parametrize("table", ["docker", "DOCKER"])
def test_docker_named_tables_leave_a_foreign_docker_user_chain_byte_for_byte(sandbox, web, client, table):
    sandbox.host.run(["iptables-legacy", "-N", "DOCKER-USER"], check=True)
    sandbox.host.run(["iptables-legacy", "-A", "DOCKER-USER", "-s", "198.51.100.7", "-j", "DROP"], check=True)
    before = [line for line in _save(sandbox, "filter").splitlines() if "DOCKER-USER" in line]
    with natmap.NatMap(table=table, netns=sandbox.host.name, backend="iptables") as nm:
        nm.publish(web.endpoint(), ["8080:5000"])
        assert client.request(sandbox.outside_ip, 8080) == "web01 192.0.2.2"
        nm.check()
        nm.remove()
    after = [line for line in _save(sandbox, "filter").splitlines() if "DOCKER-USER" in line]
    assert after == before
    assert client.request(sandbox.outside_ip, 8080, timeout=0.5) is None


def test_an_existing_chain_of_natmaps_names_is_refused(sandbox, web):
    sandbox.host.run(["iptables-legacy", "-N", "DOCKER-FORWARD"], check=True)
    sandbox.host.run(["iptables-legacy", "-A", "DOCKER-FORWARD", "-j", "ACCEPT"], check=True)
    before = _save(sandbox, "filter", "nat")
    with natmap.NatMap(table="docker", netns=sandbox.host.name, backend="iptables") as nm:
        with pytest.raises(ConflictError, match="chain DOCKER-FORWARD in table filter exists but is not natmap's"):
            nm.publish(web.endpoint(), ["8080:5000"])
        with pytest.raises(ConflictError):
            nm.remove()
    assert _save(sandbox, "filter", "nat") == before


_MARKER_RULE = ["-m", "comment", "--comment", "natmap v1 table=natmap", "-j", "RETURN"]


def test_a_marker_rule_deleted_by_hand_is_drift_that_repair_puts_back(sandbox, web, client):
    with natmap.NatMap(netns=sandbox.host.name, backend="iptables") as nm:
        nm.publish(web.endpoint(), ["8080:5000"])
        sandbox.host.run(["iptables-legacy", "-D", "NATMAP-GENERATION", *_MARKER_RULE], check=True)
        assert client.request(sandbox.outside_ip, 8080) == "web01 192.0.2.2"   # traffic does not care
        drift = nm.check()
        assert [p for p in drift.structure if "natmap v1 table=natmap" in p] and not drift.missing, str(drift)
        assert nm.port("web01")  # natmap's store remembers the table: still natmap's
        nm.repair()
        assert not nm.check()
        assert '-A NATMAP-GENERATION -m comment --comment "natmap v1 table=natmap" -j RETURN' in _save(
            sandbox, "filter")
        assert client.request(sandbox.outside_ip, 8080) == "web01 192.0.2.2"


def test_without_a_store_adopt_force_takes_chains_back_only_if_every_rule_is_natmaps(sandbox, web, client, tmp_path):
    with natmap.NatMap(netns=sandbox.host.name, backend="iptables") as nm:
        published = nm.publish(web.endpoint(), ["8080:5000", "127.0.0.1:8081:5000"])
    sandbox.host.run(["iptables-legacy", "-D", "NATMAP-GENERATION", *_MARKER_RULE], check=True)
    sandbox.host.run(["iptables-legacy", "-A", "NATMAP-FORWARD", "-s", "198.51.100.7", "-j", "ACCEPT"], check=True)
    lost = natmap.NatMap(netns=sandbox.host.name, backend="iptables", state_dir=str(tmp_path))  # the store lost
    before = _save(sandbox, "filter", "nat", "raw")
    with pytest.raises(ConflictError, match="no natmap marker for table 'natmap'.*adopt --force"):
        lost.publish(web.endpoint(), ["9090:5000"])
    with pytest.raises(ConflictError, match="no natmap marker"):
        lost.adopt()
    with pytest.raises(ConflictError, match="not provably natmap's.*rule in NATMAP-FORWARD is not natmap's"):
        lost.adopt(force=True)  # another program's rule in natmap's chain: never taken
    assert _save(sandbox, "filter", "nat", "raw") == before
    sandbox.host.run(["iptables-legacy", "-D", "NATMAP-FORWARD", "-s", "198.51.100.7", "-j", "ACCEPT"], check=True)
    adopted = lost.adopt(force=True)
    assert set(published) <= set(adopted)
    assert not lost.check()
    assert lost.port("web01") == published
    assert client.request(sandbox.outside_ip, 8080) == "web01 192.0.2.2"


def test_adopt_force_takes_back_a_routed_bridge_with_its_gateway_rules(sandbox, web, client, tmp_path):
    with natmap.NatMap(netns=sandbox.host.name, backend="iptables") as nm:
        nm.publish(web.endpoint(), ["8080:5000", "6000-6002:6000-6002/udp"])
        nm.set_gateway(sandbox.bridge, "routed", ["nmout"])
        before = (list(nm.bindings()), nm.gateways())
    sandbox.host.run(["iptables-legacy", "-D", "NATMAP-GENERATION", *_MARKER_RULE], check=True)
    lost = natmap.NatMap(netns=sandbox.host.name, backend="iptables", state_dir=str(tmp_path))
    lost.adopt(force=True)
    assert (list(lost.bindings()), lost.gateways()) == before
    assert len(before[0]) == 8 and all(isinstance(b, natmap.RoutedBinding) for b in before[0])
    assert not lost.check()
    assert client.request(str(web.ip), 5000) == "web01 192.0.2.2"


def _iptables(sandbox, *commands):
    for command in commands:
        sandbox.host.run(["iptables-legacy", *command.split()], check=True)


def test_adopt_force_never_takes_another_programs_generation_chain(sandbox, web, client, tmp_path):
    # Another program's chain of natmap's name, a marker-like rule of another
    # target in it, jumped to from built-in chains natmap never jumps from.
    _iptables(sandbox, "-N NATMAP-GENERATION", "-I FORWARD -j NATMAP-GENERATION", "-I INPUT -j NATMAP-GENERATION")
    sandbox.host.run(["iptables-legacy", "-A", "NATMAP-GENERATION", "-m", "comment", "--comment",
                      "natmap-generation:evil", "-j", "ACCEPT"], check=True)
    before = _save(sandbox, "filter", "nat", "raw")
    lost = natmap.NatMap(netns=sandbox.host.name, backend="iptables", state_dir=str(tmp_path))
    with pytest.raises(ConflictError, match="not provably natmap's.*natmap-generation:evil.*"
                                            "chain NATMAP-FORWARD in table filter is missing.*"
                                            "rule in INPUT jumps to NATMAP-GENERATION"):
        lost.adopt(force=True)
    assert _save(sandbox, "filter", "nat", "raw") == before
    # The same chain empty, nothing jumping to it: still nothing proves it natmap's.
    _iptables(sandbox, "-D FORWARD -j NATMAP-GENERATION", "-D INPUT -j NATMAP-GENERATION", "-F NATMAP-GENERATION")
    before = _save(sandbox, "filter", "nat", "raw")
    with pytest.raises(ConflictError, match="is missing"):
        lost.adopt(force=True)
    assert _save(sandbox, "filter", "nat", "raw") == before
    with pytest.raises(ConflictError):
        lost.publish(web.endpoint(), ["8080:5000"])
    assert _save(sandbox, "filter", "nat", "raw") == before


@pytest.mark.parametrize("extra, undo, found", [
    (["-I INPUT -j NATMAP-FORWARD"], ["-D INPUT -j NATMAP-FORWARD"], "rule in INPUT jumps to NATMAP-FORWARD"),
    (["-N OTHER", "-A OTHER -j NATMAP-PROTECT", "-I FORWARD -j OTHER"],
     ["-D FORWARD -j OTHER", "-F OTHER", "-X OTHER"], "rule in OTHER jumps to NATMAP-PROTECT"),
    (["-A FORWARD -j NATMAP-FORWARD"], ["-D FORWARD -j NATMAP-FORWARD"], "rule in FORWARD jumps to NATMAP-FORWARD"),
    (["-A NATMAP-GENERATION -m comment --comment natmap-generation:x -j ACCEPT"],
     ["-D NATMAP-GENERATION -m comment --comment natmap-generation:x -j ACCEPT"], "natmap-generation:x"),
    # the routed mark's chain: a rule natmap does not write in it, a goto into it from elsewhere, its rule gone
    (["-I NATMAP-ROUTED -j ACCEPT"], ["-D NATMAP-ROUTED -j ACCEPT"], "rule in NATMAP-ROUTED is not natmap's"),
    (["-I INPUT -g NATMAP-ROUTED"], ["-D INPUT -g NATMAP-ROUTED"], "rule in INPUT jumps to NATMAP-ROUTED"),
    (["-D NATMAP-ROUTED -j CONNMARK --set-xmark 0x4000000/0x4000000"],
     ["-A NATMAP-ROUTED -j CONNMARK --set-xmark 0x4000000/0x4000000"], "rule natmap writes in NATMAP-ROUTED is missing"),
])
def test_adopt_force_refuses_natmaps_chains_that_others_use(sandbox, web, client, tmp_path, extra, undo, found):
    with natmap.NatMap(netns=sandbox.host.name, backend="iptables") as nm:
        published = nm.publish(web.endpoint(), ["8080:5000"])
    sandbox.host.run(["iptables-legacy", "-D", "NATMAP-GENERATION", *_MARKER_RULE], check=True)
    _iptables(sandbox, *extra)
    before = _save(sandbox, "filter", "nat", "raw")
    lost = natmap.NatMap(netns=sandbox.host.name, backend="iptables", state_dir=str(tmp_path))
    with pytest.raises(ConflictError, match="not provably natmap's.*" + re.escape(found)):
        lost.adopt(force=True)
    assert _save(sandbox, "filter", "nat", "raw") == before
    _iptables(sandbox, *undo)
    assert set(published) <= set(lost.adopt(force=True))
    assert not lost.check()
    assert client.request(sandbox.outside_ip, 8080) == "web01 192.0.2.2"


def test_adopt_force_never_takes_chains_without_natmaps_generation_chain(sandbox, web, tmp_path):
    sandbox.host.run(["iptables-legacy", "-N", "DOCKER-FORWARD"], check=True)
    sandbox.host.run(["iptables-legacy", "-A", "DOCKER-FORWARD", "-j", "ACCEPT"], check=True)
    before = _save(sandbox, "filter", "nat", "raw")
    with natmap.NatMap(table="docker", netns=sandbox.host.name, backend="iptables",
                       state_dir=str(tmp_path)) as nm:
        with pytest.raises(ConflictError, match="DOCKER-GENERATION is missing.*will not take them"):
            nm.adopt(force=True)
    assert _save(sandbox, "filter", "nat", "raw") == before


def test_an_nft_table_whose_marked_set_was_deleted_by_hand_is_still_natmaps(sandbox, web, client):
    with natmap.NatMap(netns=sandbox.host.name) as nm:
        nm.publish(web.endpoint(), ["8080:5000"])
        # The set that carries the marker in listings, after every rule that uses it; the table's
        # own comment cannot be changed by hand (nft keeps it), so it still proves the table natmap's.
        sandbox.host.run(["nft", "flush chain inet natmap postrouting; flush chain inet natmap forward; "
                          "delete set inet natmap bridges"], check=True)
        sandbox.host.run(["nft", 'add table inet natmap { comment "someone else" ; }'], check=True)
        drift = nm.check()
        assert any("set bridges is missing" in p for p in drift.structure), str(drift)
        nm.repair()
        assert not nm.check()
        assert client.request(sandbox.outside_ip, 8080) == "web01 192.0.2.2"


def test_tables_differing_in_case_or_past_16_characters_get_their_own_chains(sandbox, web, client):
    web2 = sandbox.container("web02")
    web2.serve(5000)
    names = ["lab", "LAB", "a_very_long_table_name_1", "a_very_long_table_name_2"]
    nms = [natmap.NatMap(table=name, netns=sandbox.host.name, backend="iptables") for name in names]
    for n, nm in enumerate(nms):
        nm.publish(web.endpoint() if n % 2 == 0 else web2.endpoint(), [f"{8080 + n}:5000"])
    for n, nm in enumerate(nms):
        assert [str(b) for b in nm.bindings()] == [f"0.0.0.0:{8080 + n}", f"[::]:{8080 + n}"]
        assert client.request(sandbox.outside_ip, 8080 + n) == f"{'web01' if n % 2 == 0 else 'web02'} 192.0.2.2"
    for nm in nms:
        nm.remove()
        nm.close()


# --- 7. odd addresses -------------------------------------------------------------------


def test_odd_addresses_are_refused_before_anything_is_applied(sandbox, nm, web):
    gateway = natmap.Endpoint("gw", sandbox.bridge_ip, sandbox.bridge)
    network = natmap.Endpoint("net", sandbox.subnet.network_address, sandbox.bridge)
    broadcast = natmap.Endpoint("bc", sandbox.subnet.broadcast_address, sandbox.bridge)
    cases = [
        (gateway, ["9090:80"], "is the address of bridge"),
        (network, ["9090:80"], "is the network address of bridge"),
        (broadcast, ["9090:80"], "is the broadcast address of bridge"),
        (web.endpoint(), ["203.0.113.5:9090:80"], "not an address of this host"),
        (web.endpoint(), ["224.0.0.1:9090:80"], "multicast or broadcast"),
        (web.endpoint(), ["255.255.255.255:9090:80"], "multicast or broadcast"),
        (web.endpoint(), ["192.0.2.255:9090:80"], "is a broadcast address"),
        (web.endpoint(), ["[ff02::1]:9090:80"], "multicast"),
    ]
    for endpoint, specs, message in cases:
        with pytest.raises(SpecError, match=message):
            nm.publish(endpoint, specs)
    assert nm.bindings() == []  # nothing applied
    sandbox.host.run(["ip", "link", "add", "vx0", "type", "veth", "peer", "name", "vx1"], check=True)
    with pytest.raises(SpecError, match=r"not a bridge \(veth\)"):
        nm.publish(natmap.Endpoint("xx", "172.30.0.9", "vx0"), ["9090:80"])
    with pytest.raises(UnknownInterfaceError):
        nm.publish(natmap.Endpoint("xx", "172.30.0.9", "nosuch0"), ["9090:80"])


def test_a_nonlocal_host_ip_is_allowed_when_nonlocal_bind_is_on(sandbox, nm, web):
    sandbox.host.run(["sysctl", "-qw", "net.ipv4.ip_nonlocal_bind=1"], check=True)
    made = nm.publish(web.endpoint(), ["203.0.113.5:9090:5000"])
    assert [str(b) for b in made] == ["203.0.113.5:9090"]


def test_the_command_refuses_a_host_sockets_port_and_force_takes_it(sandbox, web):
    natmap_cmd = str(__import__("pathlib").Path(sys.executable).with_name("natmap"))
    argv = [natmap_cmd, "publish", "web01", "--ip", str(web.ip), "--bridge", sandbox.bridge,
            "-p", "2222:5000", "--netns", sandbox.host.name]
    with host_listener(sandbox, 2222):
        refused = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert refused.returncode == 1
        assert "a host socket listens on 0.0.0.0:2222/tcp" in refused.stderr
        forced = subprocess.run([*argv, "--force"], capture_output=True, text=True, timeout=60)
        assert (forced.returncode, forced.stdout) == (0, "5000/tcp -> 0.0.0.0:2222\n")
        check = subprocess.run([natmap_cmd, "check", "--netns", sandbox.host.name], capture_output=True,
                               text=True, timeout=60)
        # a later process: the store says it was forced (docs/json.md: shadowing excludes it)
        assert (check.returncode, check.stdout, check.stderr) == (0, "no drift\n", "")


# --- 5. isolation cuts what it forbids ----------------------------------------------------


@pytest.mark.parametrize("family", [4, 6])
def test_isolating_cuts_established_flows_between_unlinked_containers_only(sandbox, nm, family):
    db = sandbox.container("db01")
    db.serve(5432, "udp")
    linked, other = sandbox.container("web02"), sandbox.container("web03")
    db_ip = db.ip if family == 4 else db.ipv6
    nm.link(linked.endpoint(), db.endpoint(expose=["5432/udp"]), "db")
    flows = {c.label: c.udp_socket(family) for c in (linked, other)}
    for c in (linked, other):
        assert c.request(db_ip, 5432, "udp", sock=flows[c.label]) == f"db01 {c.ip if family == 4 else c.ipv6}"
    nm.isolate(sandbox.bridge)
    assert other.request(db_ip, 5432, "udp", sock=flows["web03"], timeout=0.5) is None
    assert linked.request(db_ip, 5432, "udp", sock=flows["web02"]) is not None
    for flow in flows.values():
        flow.close()


@pytest.mark.parametrize("family", [4, 6])
def test_isolating_again_cuts_flows_the_kernel_tracked_meanwhile(sandbox, nm, family):
    """Bridged traffic is tracked once natmap hooked it (the first isolation):
    flows made while the bridge was open again are cut by the next isolation."""
    db, other = sandbox.container("db01"), sandbox.container("web03")
    db.serve(5432, "udp")
    db_ip, source = (db.ip, other.ip) if family == 4 else (db.ipv6, other.ipv6)
    nm.isolate(sandbox.bridge)
    nm.unisolate(sandbox.bridge)
    flow = other.udp_socket(family)
    assert other.request(db_ip, 5432, "udp", sock=flow) == f"db01 {source}"
    nm.isolate(sandbox.bridge)
    assert other.request(db_ip, 5432, "udp", sock=flow, timeout=0.5) is None
    flow.close()


# --- 6. conntrack cleanup touches only what natmap changes --------------------------------


def conntrack_entries(sandbox, dport):
    """(orig destination, status) of the host's conntrack entries to UDP port ``dport``."""
    def dump():
        from pyroute2 import Conntrack
        from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

        with Conntrack() as ct:
            return [(e.tuple_orig.daddr, e.status) for e in ct.dump_entries(tuple_orig=NFCTAttrTuple(proto=17))
                    if e.tuple_orig.dport == dport]
    return sandbox.host.call(dump)


def test_publishing_leaves_forwarded_flows_to_the_same_port_alone(sandbox, nm, client):
    client.serve(5353, "udp")
    resolver = sandbox.container("web01")
    nm.publish(resolver.endpoint(), ["8080:5000"])  # egress masquerade in place
    query = resolver.udp_socket()
    assert resolver.request("192.0.2.2", 5353, "udp", sock=query) == f"client1 {sandbox.outside_ip}"
    assert [d for d, _ in conntrack_entries(sandbox, 5353)] == ["192.0.2.2"]
    server = sandbox.container("web02")
    server.serve(5353, "udp")
    nm.publish(server.endpoint(), ["5353:5353/udp"])
    assert [d for d, _ in conntrack_entries(sandbox, 5353)] == ["192.0.2.2"]  # untouched
    assert client.request(sandbox.outside_ip, 5353, "udp") == "web02 192.0.2.2"
    query.close()


def test_publishing_leaves_answered_flows_to_a_host_service_alone(sandbox, nm, client):
    server = sandbox.container("web02")
    nm.publish(server.endpoint(), ["8080:5000"])  # the table's NAT hooks make the host track flows
    sandbox.host.serve(5353, "udp", family=4)
    answered, unanswered = client.udp_socket(), client.udp_socket()
    assert client.request(sandbox.outside_ip, 5353, "udp", sock=answered) == "host 192.0.2.2"
    assert client.request(sandbox.outside_ip, 5354, "udp", sock=unanswered, timeout=0.3) is None
    server.serve(5353, "udp")
    server.serve(5354, "udp")
    nm.publish(server.endpoint(), ["5353:5353/udp", "5354:5354/udp"], force=True)
    # The host service keeps its answered flow; the unanswered one now reaches the container.
    assert client.request(sandbox.outside_ip, 5353, "udp", sock=answered) == "host 192.0.2.2"
    assert client.request(sandbox.outside_ip, 5354, "udp", sock=unanswered) == "web02 192.0.2.2"
    answered.close()
    unanswered.close()


# --- 8. auto is sticky --------------------------------------------------------------------


_AUTO = textwrap.dedent("""
    import sys
    if sys.argv[2] == "no-libnftables":
        sys.modules["nftables"] = None  # as on a host where libnftables fails to load
    import natmap
    try:
        nm = natmap.NatMap(netns=sys.argv[1], backend="auto")
        print(nm.backend_name, " ".join(str(b) for b in nm.bindings()))
    except natmap.NatmapError as exc:
        print("error:", exc)
""")


def auto_in_a_process(sandbox, how="normal"):
    result = subprocess.run([sys.executable, "-c", _AUTO, sandbox.host.name, how],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_auto_takes_the_backend_the_table_is_on(sandbox, backend, web):
    with natmap.NatMap(netns=sandbox.host.name, backend=backend) as nm:
        nm.publish(web.endpoint(), ["8080:5000"])
    assert auto_in_a_process(sandbox) == f"{backend} 0.0.0.0:8080 [::]:8080"
    with natmap.NatMap(netns=sandbox.host.name, backend="auto") as auto:
        assert auto.backend_name == backend
        auto.publish(web.endpoint(), ["8081:5000"])  # into the same table, not a second copy
    with natmap.NatMap(netns=sandbox.host.name, backend=backend) as nm:
        assert len(nm.bindings()) == 4


def test_auto_without_libnftables_refuses_an_nft_table_and_otherwise_takes_iptables(sandbox, web):
    assert auto_in_a_process(sandbox, "no-libnftables") == "iptables"  # no table yet: iptables, holding nothing
    with natmap.NatMap(netns=sandbox.host.name) as nm:
        nm.publish(web.endpoint(), ["8080:5000"])
    assert auto_in_a_process(sandbox, "no-libnftables").startswith(
        "error: table inet natmap exists on nft, but libnftables cannot load here")


# --- 4. unpublished container ports: Docker 28's direct-access protection -----------------


@pytest.mark.parametrize("family", [4, 6])
def test_routed_access_to_unpublished_ports_follows_the_gateway_mode(sandbox, nm, web, client, family):
    web.serve(9999)
    direct = str(web.ip if family == 4 else web.ipv6)
    outside = str(sandbox.outside_ip if family == 4 else sandbox.outside_ip6)
    seen = "192.0.2.2" if family == 4 else "2001:db8:2::2"
    nm.publish(web.endpoint(), ["8080:5000"])
    modes = [("nat", (), False), ("nat-unprotected", (), True), ("nat", ("nmout",), True), ("nat", (), False)]
    for mode, trusted, open_ in modes:
        nm.set_gateway(sandbox.bridge, mode, trusted)
        assert (client.request(direct, 9999, timeout=0.5) is not None) is open_, (mode, trusted)
        assert client.request(outside, 8080) == f"web01 {seen}"        # published: always
    assert nm.gateways() == []
    client.serve(9000)  # the container's own flows and their replies: untouched
    assert web.request(seen, 9000) == f"client1 {sandbox.outside_ip if family == 4 else sandbox.outside_ip6}"


def test_a_gateway_mode_guards_a_bridge_nothing_is_published_on_yet(sandbox, nm, web, client):
    web.serve(9999)
    assert client.request(str(web.ip), 9999, timeout=0.5) == "web01 192.0.2.2"  # no natmap yet: routed through
    nm.set_gateway(sandbox.bridge, "nat")
    assert client.request(str(web.ip), 9999, timeout=0.5) is None
    assert not nm.check()


def test_gateway_settings_read_back_and_come_from_the_toml_file(sandbox, nm, web, client, tmp_path):
    web.serve(9999)
    nm.set_gateway(sandbox.bridge, "nat", ["nmout"])
    fresh = natmap.NatMap(netns=sandbox.host.name, backend=nm.backend_name)
    assert fresh.gateways() == [natmap.Gateway(sandbox.bridge, "nat", ("nmout",))]
    path = tmp_path / "lab.toml"
    path.write_text(textwrap.dedent(f"""
        [bridges.{sandbox.bridge}]
        gateway_mode = "nat-unprotected"
        [endpoints.web01]
        ip = "{web.ip}"
        bridge = "{sandbox.bridge}"
        publish = ["8080:5000"]
    """))
    change = fresh.apply(natmap.Config.load(path))
    assert f"gateway {sandbox.bridge} nat-unprotected" in [natmap.model.describe(i) for i in change.add]
    assert client.request(str(web.ip), 9999) == "web01 192.0.2.2"
    with pytest.raises(SpecError, match="unknown gateway mode"):
        nm.set_gateway(sandbox.bridge, "route")


@pytest.mark.parametrize("family", [4, 6])
def test_routed_mode_opens_only_published_container_ports_without_nat(sandbox, nm, web, client, family):
    """Docker's routed gateway mode: no DNAT from the host port, no masquerade;
    routed flows reach the published container ports (and what a trusted
    interface sends), nothing else; back to nat, the mapping is as it was."""
    web.serve(9999)
    direct = str(web.ip if family == 4 else web.ipv6)
    outside = str(sandbox.outside_ip if family == 4 else sandbox.outside_ip6)
    seen = "192.0.2.2" if family == 4 else "2001:db8:2::2"
    nm.publish(web.endpoint(), ["8080:5000"])
    client.serve(9000)
    def state():  # but the iptables generation marker, new with every transaction
        return re.sub(r".*natmap-generation:.*", "", kernel_state(sandbox, nm.backend_name))

    states: dict[str, set[str]] = {"nat": {state()}, "routed": set()}
    for _ in range(2):  # back and forth: nothing stale either way
        nm.set_gateway(sandbox.bridge, "routed")
        states["routed"].add(state())
        assert client.request(direct, 5000) == f"web01 {seen}"              # published container port
        assert client.request(direct, 9999, timeout=0.5) is None           # unpublished: dropped
        assert client.request(outside, 8080, timeout=0.5) is None          # no mapping from the host port
        assert web.request(seen, 9000) == f"client1 {direct}"               # no masquerade
        assert [b.port_line() for b in nm.port("web01")] == ["5000/tcp -> 0.0.0.0:8080", "5000/tcp -> [::]:8080"]
        assert all(isinstance(b, natmap.RoutedBinding) for b in nm.port("web01"))
        assert not nm.check()
        nm.set_gateway(sandbox.bridge, "routed", ["nmout"])
        assert client.request(direct, 9999) == f"web01 {seen}"              # trusted: everything
        nm.set_gateway(sandbox.bridge, "nat")
        assert client.request(outside, 8080) == f"web01 {seen}"             # mapped again, same port
        assert client.request(direct, 9999, timeout=0.5) is None
        assert client.request(direct, 5000, timeout=0.5) is None            # nat: only through the mapping
        assert web.request(seen, 9000) == f"client1 {outside}"               # masqueraded again
        assert not any(isinstance(b, natmap.RoutedBinding) for b in nm.port("web01"))
        assert not nm.check()
        states["nat"].add(state())
    assert (len(states["nat"]), len(states["routed"])) == (1, 1)  # each mode: the same kernel every time


def test_nat_for_ipv4_and_routed_for_ipv6_on_one_bridge(sandbox, nm, web, client):
    """Docker's common IPv6 setup (gateway_mode_ipv4=nat, gateway_mode_ipv6=routed):
    IPv4 through the host port, masqueraded; IPv6 straight to the published
    container port, not NATed; each family's other ports dropped. Swapped, the
    other way round; back to nat, both mapped as they were."""
    web.serve(9999)
    client.serve(9000)
    nm.publish(web.endpoint(), ["8080:5000"])
    seen = {4: "192.0.2.2", 6: "2001:db8:2::2"}
    outside = {4: str(sandbox.outside_ip), 6: str(sandbox.outside_ip6)}
    direct = {4: str(web.ip), 6: str(web.ipv6)}

    def holds(mode_of):
        for v in (4, 6):
            if mode_of[v] == "routed":
                assert client.request(direct[v], 5000) == f"web01 {seen[v]}", v
                assert client.request(outside[v], 8080, timeout=0.5) is None, v
                assert web.request(seen[v], 9000) == f"client1 {direct[v]}", v    # no masquerade
            else:
                assert client.request(outside[v], 8080) == f"web01 {seen[v]}", v
                assert client.request(direct[v], 5000, timeout=0.5) is None, v
                assert web.request(seen[v], 9000) == f"client1 {outside[v]}", v   # masqueraded
            assert client.request(direct[v], 9999, timeout=0.5) is None, v
        assert {(b.version, type(b) is natmap.RoutedBinding) for b in nm.port("web01")} == {
            (v, mode_of[v] == "routed") for v in (4, 6)}
        assert not nm.check()

    for ipv4, ipv6 in (("nat", "routed"), ("routed", "nat"), ("nat", "routed")):
        gateway = nm.set_gateway(sandbox.bridge, mode_ipv4=ipv4, mode_ipv6=ipv6)
        assert natmap.model.describe(gateway) == f"gateway {sandbox.bridge} ipv4 {ipv4} ipv6 {ipv6}"
        holds({4: ipv4, 6: ipv6})
        fresh = natmap.NatMap(netns=sandbox.host.name, backend=nm.backend_name)
        assert fresh.gateways() == [natmap.Gateway(sandbox.bridge, mode_ipv4=ipv4, mode_ipv6=ipv6)]
    nm.set_gateway(sandbox.bridge)
    holds({4: "nat", 6: "nat"})
    assert nm.gateways() == []


def test_routed_mode_survives_repair_and_a_fresh_process_reads_it(sandbox, nm, web, client):
    nm.publish(web.endpoint(), ["8080:5000", "6000-6002:6000-6002/udp"])
    nm.set_gateway(sandbox.bridge, "routed")
    fresh = natmap.NatMap(netns=sandbox.host.name, backend=nm.backend_name)
    assert fresh.gateways() == [natmap.Gateway(sandbox.bridge, "routed")]
    assert len(fresh.port("web01")) == 8 and all(isinstance(b, natmap.RoutedBinding) for b in fresh.port("web01"))
    adopted = fresh.adopt()  # refused unless the kernel, read back, says what the store says
    assert sum(isinstance(i, natmap.RoutedBinding) for i in adopted) == 4
    routed = next(i for i in adopted if isinstance(i, natmap.RoutedBinding) and i.version == 4 and i.count == 1)
    delete_behind_natmaps_back(sandbox, nm.backend_name, routed)
    assert client.request(str(web.ip), 5000, timeout=0.5) is None
    assert [natmap.model.describe(i) for i in fresh.check().missing] == [natmap.model.describe(routed)]
    fresh.repair()
    assert client.request(str(web.ip), 5000) == "web01 192.0.2.2"
    nm.set_gateway(sandbox.bridge, "nat")
    drift = fresh.check()
    assert not drift, str(drift)


def test_the_gateway_command_sets_and_prints_the_mode(sandbox, web, client):
    web.serve(9999)
    natmap_cmd = str(__import__("pathlib").Path(sys.executable).with_name("natmap"))
    subprocess.run([natmap_cmd, "publish", "web01", "--ip", str(web.ip), "--bridge", sandbox.bridge, "-p",
                    "8080:5000", "--netns", sandbox.host.name], check=True, capture_output=True, timeout=60)
    assert client.request(str(web.ip), 9999, timeout=0.5) is None
    result = subprocess.run([natmap_cmd, "gateway", sandbox.bridge, "--trust", "nmout", "--netns",
                             sandbox.host.name], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout) == (0, f"gateway {sandbox.bridge} nat trusted nmout\n")
    assert client.request(str(web.ip), 9999) == "web01 192.0.2.2"


def test_a_bridge_overlapping_a_bridge_natmap_guards_is_refused_up_front(sandbox, nm, web, client):
    """Which bridge an endpoint is on must be plain: a second bridge whose
    subnet overlaps one natmap guards is refused before anything changes,
    on both backends (nft's sets could not hold both anyway)."""
    nm.publish(web.endpoint(), ["8080:5000"])
    sandbox.host.run(["ip", "link", "add", "br2", "type", "bridge"], check=True)
    sandbox.host.run(["ip", "addr", "add", "172.30.200.1/16", "dev", "br2"], check=True)
    sandbox.host.run(["ip", "link", "set", "br2", "up"], check=True)
    before = kernel_state(sandbox, nm.backend_name)
    for mode in ("routed", "nat"):
        with pytest.raises(SpecError, match=r"subnet 172\.30\.0\.0/16 of bridge br2 overlaps bridge natmap0's"):
            nm.set_gateway("br2", mode)
    assert kernel_state(sandbox, nm.backend_name) == before and nm.gateways() == []
    assert not any(isinstance(b, natmap.RoutedBinding) for b in nm.port("web01"))
    assert client.request(sandbox.outside_ip, 8080) == "web01 192.0.2.2"
    assert not nm.check()


def _address(sandbox, verb, address):
    sandbox.host.run(["ip", "addr", verb, address, "dev", sandbox.bridge], check=True)


def test_a_gateway_mode_takes_the_bindings_published_on_the_bridge_whatever_its_addresses_now(
        sandbox, nm, web, client):
    nm.publish(web.endpoint(), ["8080:5000"])
    _address(sandbox, "add", "10.77.0.1/24")
    _address(sandbox, "del", f"{sandbox.bridge_ip}/24")  # re-addressed behind natmap's back
    nm.set_gateway(sandbox.bridge, "routed")
    assert [type(b) for b in nm.port("web01")] == [natmap.RoutedBinding] * 2
    assert not nm.check()
    assert client.request(str(web.ipv6), 5000) == "web01 2001:db8:2::2"
    _address(sandbox, "add", f"{sandbox.bridge_ip}/24")  # its IPv4 subnet back: routed, not mapped
    assert client.request(str(web.ip), 5000) == "web01 192.0.2.2"
    assert client.request(sandbox.outside_ip, 8080, timeout=0.5) is None
    nm.set_gateway(sandbox.bridge, "nat")
    assert [type(b) for b in nm.port("web01")] == [natmap.Binding] * 2
    assert client.request(sandbox.outside_ip, 8080) == "web01 192.0.2.2"
    assert client.request(str(web.ip), 5000, timeout=0.5) is None
    assert not nm.check()


def test_a_new_process_sets_the_mode_of_the_bindings_published_on_a_readdressed_bridge(sandbox, nm, web, client):
    """Which endpoint is on which bridge is in the store: a process that never
    saw web01 published takes its binding, though the bridge's subnets as now
    recorded (seen re-addressed, at the mode change) hold none of its addresses."""
    nm.publish(natmap.Endpoint("web01", web.ip, sandbox.bridge), ["8080:5000"])  # IPv4 only
    _address(sandbox, "add", "10.77.0.1/24")
    _address(sandbox, "del", f"{sandbox.bridge_ip}/24")  # re-addressed behind natmap's back
    fresh = natmap.NatMap(netns=sandbox.host.name, backend=nm.backend_name)
    fresh.set_gateway(sandbox.bridge, "routed")
    assert [type(b) for b in fresh.port("web01")] == [natmap.RoutedBinding]
    recorded = next(i for i in fresh._store.items() if isinstance(i, natmap.Bridge))
    assert "10.77.0.0/24" in map(str, recorded.subnets) and "172.30.0.0/24" not in map(str, recorded.subnets)
    _address(sandbox, "add", f"{sandbox.bridge_ip}/24")  # a route to web01 again: routed, not mapped
    assert client.request(str(web.ip), 5000) == "web01 192.0.2.2"
    assert client.request(sandbox.outside_ip, 8080, timeout=0.5) is None
    natmap.NatMap(netns=sandbox.host.name, backend=nm.backend_name).set_gateway(sandbox.bridge, "nat")
    assert client.request(sandbox.outside_ip, 8080) == "web01 192.0.2.2"
    assert not natmap.NatMap(netns=sandbox.host.name, backend=nm.backend_name).check()


def test_routed_mode_keeps_loopback_bindings_host_only(sandbox, nm, web, client):
    """Docker 28 opens the container port of every mapping in routed mode,
    host address ignored; a loopback one asked for this host only, so natmap
    keeps it mapped from loopback and opens nothing to routed traffic."""
    web.serve(5001)
    web.serve(5002)
    nm.publish(web.endpoint(), ["127.0.0.1:8081:5001", "[::1]:8082:5002", "8080:5000"])
    nm.set_gateway(sandbox.bridge, "routed")
    assert [(type(b).__name__, b.port_line()) for b in nm.port("web01")] == [
        ("RoutedBinding", "5000/tcp -> 0.0.0.0:8080"), ("RoutedBinding", "5000/tcp -> [::]:8080"),
        ("Binding", "5001/tcp -> 127.0.0.1:8081"), ("Binding", "5002/tcp -> [::1]:8082")]
    assert client.request(str(web.ip), 5000) == "web01 192.0.2.2"          # asked for: open
    assert client.request(str(web.ipv6), 5000) == "web01 2001:db8:2::2"
    assert client.request(str(web.ip), 5001, timeout=0.5) is None          # loopback only: closed
    assert client.request(str(web.ipv6), 5002, timeout=0.5) is None
    assert sandbox.host.request("127.0.0.1", 8081) == f"web01 {sandbox.bridge_ip}"  # and still there
    assert sandbox.host.request("::1", 8082) == f"web01 {sandbox.bridge_ip6}"
    assert not nm.check()
    fresh = natmap.NatMap(netns=sandbox.host.name, backend=nm.backend_name)
    assert not fresh.check() and fresh.adopt()  # the kernel read back says what the store says
    nm.set_gateway(sandbox.bridge, "nat")
    assert client.request(str(web.ip), 5001, timeout=0.5) is None
    assert sandbox.host.request("127.0.0.1", 8081) == f"web01 {sandbox.bridge_ip}"
    assert not nm.check()

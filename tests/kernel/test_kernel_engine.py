"""The engine with real traffic: a server in a container namespace, clients in
another namespace and on the host's loopback, real connections, and none after
removal. Root only; every namespace is the sandbox's own."""

import socket

import pytest

import natmap
from helpers import delete_behind_natmaps_back, kernel_state
from natmap import BackendError, ConflictError, NotFoundError, SpecError
from natmap.host import UnknownInterfaceError
from natmap.sandbox import _write_sysctls


def lines(bindings):
    return [b.port_line() for b in bindings]


@pytest.fixture
def web(sandbox):
    container = sandbox.container("web01")
    container.serve(5000)
    container.serve(5353, "udp")
    return container


@pytest.fixture
def client(sandbox):
    return sandbox.client("client1")


def test_published_port_answers_outside_clients_on_both_families(sandbox, nm, web, client):
    made = nm.publish(web.endpoint(), ["8080:5000"])
    assert lines(made) == ["5000/tcp -> 0.0.0.0:8080", "5000/tcp -> [::]:8080"]
    assert client.request(sandbox.outside_ip, 8080) == "web01 192.0.2.2"
    assert client.request(sandbox.outside_ip6, 8080) == "web01 2001:db8:2::2"


def test_localhost_bindings_answer_on_the_hosts_loopback_only(sandbox, nm, web, client):
    nm.publish(web.endpoint(), ["127.0.0.1:5001:5000", "[::1]:5002:5000"])
    assert sandbox.host.request("127.0.0.1", 5001) == f"web01 {sandbox.bridge_ip}"
    assert sandbox.host.request("::1", 5002) == f"web01 {sandbox.bridge_ip6}"
    # Not from outside, not even through the host's own addresses.
    assert client.request(sandbox.outside_ip, 5001, timeout=0.5) is None
    assert client.request(sandbox.outside_ip6, 5002, timeout=0.5) is None
    # And not for the other family on the same port.
    assert sandbox.host.request("::1", 5001, timeout=0.5) is None


def test_a_wildcard_binding_answers_on_loopback_too(sandbox, nm, web):
    nm.publish(web.endpoint(), ["8080:5000"])
    assert sandbox.host.request("127.0.0.1", 8080) == f"web01 {sandbox.bridge_ip}"
    assert sandbox.host.request("::1", 8080) == f"web01 {sandbox.bridge_ip6}"


def test_ipv6_loopback_binding_is_refused_while_bridged_ipv6_is_hooked(sandbox, nm, web):
    sandbox.host.run(["sysctl", "-qw", "net.bridge.bridge-nf-call-ip6tables=1"], check=True)
    with pytest.raises(natmap.NatmapError, match="bridge-nf-call-ip6tables"):
        nm.publish(web.endpoint(), ["[::1]:5002:5000"])
    assert nm.bindings() == []


def test_hairpin_a_container_reaches_its_own_and_a_neighbours_published_port(sandbox, nm, web):
    neighbour = sandbox.container("web02")
    nm.publish(web.endpoint(), ["8080:5000"])
    for host_ip in (sandbox.outside_ip, sandbox.bridge_ip):
        assert web.request(host_ip, 8080) == f"web01 {sandbox.bridge_ip}"
        assert neighbour.request(host_ip, 8080) == f"web01 {sandbox.bridge_ip}"
    assert web.request(sandbox.outside_ip6, 8080) == f"web01 {sandbox.bridge_ip6}"
    assert neighbour.request(sandbox.outside_ip6, 8080) == f"web01 {sandbox.bridge_ip6}"


def test_egress_is_masqueraded_to_the_hosts_address(sandbox, nm, web, client):
    client.serve(9000)
    nm.publish(web.endpoint(), ["8080:5000"])
    assert web.request("192.0.2.2", 9000) == f"client1 {sandbox.outside_ip}"
    assert web.request("2001:db8:2::2", 9000) == f"client1 {sandbox.outside_ip6}"


def test_publish_all_assigns_ports_from_the_namespaces_range(sandbox, nm, web, client):
    sandbox.host.run(["sysctl", "-qw", "net.ipv4.ip_local_port_range=40000 40100"], check=True)
    sandbox.host.run(["sysctl", "-qw", "net.ipv4.ip_local_reserved_ports=40000"], check=True)
    sandbox.host.serve(40001)  # a listening socket on the host: skipped too
    made = nm.publish(web.endpoint(expose=["5000/tcp", "5353/udp"]), [], publish_all=True)
    assert lines(made) == ["5000/tcp -> 0.0.0.0:40002", "5000/tcp -> [::]:40002",
                           "5353/udp -> 0.0.0.0:40001", "5353/udp -> [::]:40001"]
    assert client.request(sandbox.outside_ip, 40002) == "web01 192.0.2.2"
    assert client.request(sandbox.outside_ip, 40001, "udp") == "web01 192.0.2.2"


def test_a_reserved_list_longer_than_a_page_is_read_whole(sandbox, nm, web, client):
    """ip_local_reserved_ports is formatted by the kernel on the first read
    only: a list of 22,512 characters whose last item reserves the range's
    first ports was cut at 4096, and natmap assigned 28000. (Written in one
    write: the sysctl command cuts it at 4096 characters too.)"""
    reserved = ",".join(str(p) for p in range(1001, 10000, 2)) + ",28000-28005"
    sandbox.host.call(_write_sysctls, {"net/ipv4/ip_local_port_range": "28000 28010",
                                       "net/ipv4/ip_local_reserved_ports": reserved})
    assert sandbox.host.run(["cat", "/proc/sys/net/ipv4/ip_local_reserved_ports"]).stdout == reserved + "\n"
    made = nm.publish(web.endpoint(), ["5000"])
    assert lines(made) == ["5000/tcp -> 0.0.0.0:28006", "5000/tcp -> [::]:28006"]
    assert client.request(sandbox.outside_ip, 28006) == "web01 192.0.2.2"


def test_a_call_nested_in_another_namespaces_call_runs_in_its_own(sandbox):
    """A's block, B's inside it (user code A runs: a Host, a logging
    handler), A's inside that: the innermost runs in A's namespace."""
    from natmap.netns import current

    other = sandbox.client("other1")
    with natmap.NatMap(netns=sandbox.host.name) as a, natmap.NatMap(netns=other.name) as b:
        def where(nm):
            with nm._ns():
                return current()
        with a._ns(), b._ns():
            assert (where(a), where(b), current()) == (a._home, b._home, b._home)
        assert a._home != b._home


def test_a_host_range_picks_one_port_and_ranges_map_one_to_one(sandbox, nm, web, client):
    web.serve(7001)
    other = sandbox.container("db01")
    nm.publish(other.endpoint(), ["8000:5432"])
    (v4, v6) = nm.publish(web.endpoint(), ["8000-8010:5000"])
    assert (v4.host_port, v6.host_port) == (8001, 8001)
    nm.publish(web.endpoint(), ["9000-9001:7000-7001"])
    assert client.request(sandbox.outside_ip, 8001) == "web01 192.0.2.2"
    assert client.request(sandbox.outside_ip, 9001) == "web01 192.0.2.2"
    assert client.request(sandbox.outside_ip, 9000, timeout=0.5) is None  # nothing on 7000


def test_udp_echo_and_sctp_bindings(sandbox, nm, web, client):
    nm.publish(web.endpoint(), ["5353:5353/udp", "3868:3868/sctp"])
    assert client.request(sandbox.outside_ip, 5353, "udp") == "web01 192.0.2.2"
    assert client.request(sandbox.outside_ip6, 5353, "udp") == "web01 2001:db8:2::2"
    assert lines(nm.port("web01", "3868/sctp")) == ["3868/sctp -> 0.0.0.0:3868", "3868/sctp -> [::]:3868"]
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP).close()
    except OSError:
        pytest.skip("this kernel has no SCTP: the sctp rules are installed, traffic cannot be tried")
    web.serve(3868, "sctp")
    assert client.request(sandbox.outside_ip, 3868, "sctp") == "web01 192.0.2.2"


@pytest.mark.parametrize("family", [4, 6])
def test_unpublish_stops_new_connections_and_established_udp_flows(sandbox, nm, web, client, family):
    nm.publish(web.endpoint(), ["8080:5000", "5353:5353/udp"])
    host, container = (sandbox.outside_ip, "192.0.2.2") if family == 4 else (sandbox.outside_ip6, "2001:db8:2::2")
    flow = client.udp_socket(family)
    assert client.request(host, 5353, "udp", sock=flow) == f"web01 {container}"
    assert client.request(host, 8080) == f"web01 {container}"
    removed = nm.unpublish("web01")
    assert len(removed) == 4
    assert client.request(host, 8080, timeout=0.5) is None
    assert client.request(host, 5353, "udp", sock=flow, timeout=0.5) is None
    with pytest.raises(NotFoundError, match="No such endpoint: web01"):  # gone, as docker port says
        nm.port("web01")
    flow.close()


def test_port_reads_back_from_the_kernel_in_docker_order(sandbox, nm, web):
    nm.publish(web.endpoint(expose=["5000"]), ["127.0.0.1:5001:5000", "8080:5000", "53:53/udp"])
    fresh = natmap.NatMap(netns=sandbox.host.name, backend=nm.backend_name)  # nothing in memory
    assert lines(fresh.port("web01")) == [
        "53/udp -> 0.0.0.0:53", "53/udp -> [::]:53",
        "5000/tcp -> 0.0.0.0:8080", "5000/tcp -> 127.0.0.1:5001", "5000/tcp -> [::]:8080"]
    for query in (5000, "5000", "5000/tcp"):
        assert [str(b) for b in fresh.port("web01", query)] == ["0.0.0.0:8080", "127.0.0.1:5001", "[::]:8080"]
    assert [str(b) for b in fresh.port("web01", "53/udp")] == ["0.0.0.0:53", "[::]:53"]
    with pytest.raises(NotFoundError, match="No public port '53/tcp' published for web01"):
        fresh.port("web01", 53)
    assert fresh.bindings() == nm.bindings()


def test_conflicts_are_refused_and_nothing_is_applied(sandbox, nm, backend, web):
    other = sandbox.container("db01")
    nm.publish(web.endpoint(), ["127.0.0.1:8080:5000"])
    before = kernel_state(sandbox, backend)
    with pytest.raises(ConflictError, match="'db01'.*'web01'"):
        nm.publish(other.endpoint(), ["9000:5432", "8080:5432"])
    assert kernel_state(sandbox, backend) == before


def test_a_name_already_used_by_another_address_is_a_conflict(sandbox, nm, web):
    other = sandbox.container("db01")
    nm.publish(web.endpoint(), ["8080:5000"])
    impostor = natmap.Endpoint("web01", other.ip, sandbox.bridge)
    with pytest.raises(ConflictError, match="already published with address"):
        nm.publish(impostor, ["9090:5000"])


def test_a_failing_transaction_leaves_the_kernel_as_it_was(sandbox, nm, backend, web):
    other = sandbox.container("db01")
    nm.publish(web.endpoint(), ["8080:5000"])
    nm.publish(other.endpoint(), ["5432:5432"])
    # A conflict found late: the first publish of the transaction was fine.
    before = kernel_state(sandbox, backend)
    with pytest.raises(ConflictError):
        with nm.transaction() as tx:
            tx.publish(web.endpoint(), ["8081:5000"])
            tx.unpublish("db01")
            tx.publish(other.endpoint(), ["8080:5432"])
    assert kernel_state(sandbox, backend) == before
    # Someone deleted a binding behind natmap's back while the transaction was
    # open, so deleting it again fails in the kernel.
    victim = nm.port("db01")[0]
    if backend == "nft":
        # nft's generation shows the other commit: natmap reads the kernel
        # again and redoes the transaction from it (issue 12), whole.
        with nm.transaction() as tx:
            tx.publish(web.endpoint(), ["8082:5000"])
            tx.unpublish("db01")
            assert nm.port("db01") == [victim, *nm.port("db01")[1:]]  # reads see the kernel
            delete_behind_natmaps_back(sandbox, backend, victim)
        with pytest.raises(NotFoundError):
            nm.port("db01")
        assert sorted(lines(nm.port("web01", 5000))) == [
            "5000/tcp -> 0.0.0.0:8080", "5000/tcp -> 0.0.0.0:8082", "5000/tcp -> [::]:8080", "5000/tcp -> [::]:8082"]
        assert not nm.check()
        return
    # iptables' marker does not move with a hand edit: the refusal is final.
    with pytest.raises(BackendError):
        with nm.transaction() as tx:
            tx.publish(web.endpoint(), ["8082:5000"])
            tx.unpublish("db01")
            assert nm.port("db01") == [victim, *nm.port("db01")[1:]]  # reads see the kernel
            delete_behind_natmaps_back(sandbox, backend, victim)
            before = kernel_state(sandbox, backend)
    assert kernel_state(sandbox, backend) == before
    # natmap re-reads the kernel afterwards and agrees with it.
    assert lines(nm.port("db01")) == ["5432/tcp -> [::]:5432"]
    assert lines(nm.port("web01", 5000)) == ["5000/tcp -> 0.0.0.0:8080", "5000/tcp -> [::]:8080"]


def test_one_transaction_applies_many_changes_at_once(sandbox, nm, backend, web, client):
    db = sandbox.container("db01")
    db.serve(5432)
    generation = sandbox.host.call(natmap.backends.nft.ruleset_generation)
    with nm.transaction() as tx:
        tx.publish(web.endpoint(), ["8080:5000"])
        tx.publish(db.endpoint(), ["5432:5432"])
        tx.unpublish("web01")
        tx.publish(web.endpoint(), ["8081:5000"])
    if backend == "nft":  # the table's skeleton and the change: one nftables transaction
        assert sandbox.host.call(natmap.backends.nft.ruleset_generation) == generation + 1
    assert client.request(sandbox.outside_ip, 8081) == "web01 192.0.2.2"
    assert client.request(sandbox.outside_ip, 5432) == "db01 192.0.2.2"
    assert client.request(sandbox.outside_ip, 8080, timeout=0.5) is None
    generation = sandbox.host.call(natmap.backends.nft.ruleset_generation)
    nm.publish(web.endpoint(), ["8082:5000"])
    if backend == "nft":
        assert sandbox.host.call(natmap.backends.nft.ruleset_generation) == generation + 1


def test_plan_shows_the_change_as_nft_text_and_applies_nothing(sandbox, web):
    nm = natmap.NatMap(netns=sandbox.host.name)
    text = nm.preview(web.endpoint(), ["8080:5000"])
    assert "add table inet natmap" in text
    assert 'add element inet natmap dnat4_any { tcp . 8080 comment "web01" : 172.30.0.2 . 5000 }' in text
    assert 'add element inet natmap dnat6_any { tcp . 8080 comment "web01" : fd00:30::2 . 5000 }' in text
    assert kernel_state(sandbox, "nft") == ""
    # The text is exactly what publishing does: nft -f of it gives the same table.
    sandbox.host.run(["nft", "-f", "-"], input=text, check=True)
    assert lines(nm.port("web01")) == ["5000/tcp -> 0.0.0.0:8080", "5000/tcp -> [::]:8080"]
    assert nm.preview(web.endpoint(), ["8080:5000"]) == ""


def test_bad_endpoints_are_refused_before_anything_is_applied(sandbox, nm, web):
    with pytest.raises(UnknownInterfaceError, match="nosuchbr"):
        nm.publish(natmap.Endpoint("web01", web.ip, "nosuchbr"), ["8080:5000"])
    with pytest.raises(SpecError, match="in no subnet of bridge natmap0"):
        nm.publish(natmap.Endpoint("web01", "10.1.2.3", sandbox.bridge), ["8080:5000"])
    with pytest.raises(NotFoundError, match="No such endpoint: web01"):
        nm.port("web01")


OTHER_PROGRAM = {
    "nft": ["nft", "-f", "-"],
    "iptables": ["iptables-legacy-restore", "--noflush"],
}
OTHER_RULES = {
    "nft": ("add table inet other\n"
            "add chain inet other c { type filter hook input priority 0 ; }\n"
            "add rule inet other c tcp dport 1 counter\n"),
    "iptables": "*nat\n:OTHER - [0:0]\n-A OTHER -p tcp --dport 1 -j RETURN\n-A PREROUTING -j OTHER\nCOMMIT\n",
}


def other_programs_rules(sb, backend):
    if backend == "nft":
        return kernel_state(sb, "nft", "other")
    return "\n".join(l for l in kernel_state(sb, "iptables").splitlines() if "OTHER" in l)


def test_instances_with_different_tables_and_other_programs_rules_are_independent(sandbox, backend, web, client):
    sandbox.host.run(OTHER_PROGRAM[backend], check=True, input=OTHER_RULES[backend])
    other_before = other_programs_rules(sandbox, backend)
    assert other_before
    lab1 = natmap.NatMap(table="lab1", netns=sandbox.host.name, backend=backend)
    lab2 = natmap.NatMap(table="lab2", netns=sandbox.host.name, backend=backend)
    lab1.publish(web.endpoint(), ["8080:5000"])
    lab2.publish(web.endpoint(), ["9090:5000"])
    assert [str(b) for b in lab1.bindings()] == ["0.0.0.0:8080", "[::]:8080"]
    assert [str(b) for b in lab2.bindings()] == ["0.0.0.0:9090", "[::]:9090"]
    lab1.unpublish("web01")
    assert client.request(sandbox.outside_ip, 9090) == "web01 192.0.2.2"
    assert client.request(sandbox.outside_ip, 8080, timeout=0.5) is None
    lab2.remove()
    assert lab2.bindings() == []
    assert lab1.bindings() == []
    assert other_programs_rules(sandbox, backend) == other_before


def test_a_natmap_refuses_calls_from_another_namespace(sandbox, web):
    nm = sandbox.host.call(natmap.NatMap)  # bound to the sandbox host, built inside it
    with pytest.raises(natmap.NatmapError, match="another network namespace"):
        nm.bindings()


def test_the_publish_example_runs():
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "examples" / "publish_in_sandbox.py"
    result = subprocess.run([sys.executable, str(example)], capture_output=True, text=True,
                            timeout=120, check=True)
    assert result.stdout.splitlines() == [
        "5000/tcp -> 0.0.0.0:32768",
        "5000/tcp -> 127.0.0.1:5001",
        "5000/tcp -> [::]:32768",
        "from outside: web01 192.0.2.2",
        "from the host's loopback: web01 172.30.0.1",
        "127.0.0.1 binding from outside: None",
        "after unpublish: None",
    ]


def test_unpublishing_most_of_a_big_table_in_one_transaction_keeps_the_rest(sandbox, nm, web, client):
    """1,240 bindings, 1,160 unpublished and one added to an endpoint that
    keeps its others, in one transaction (the store rewrites the runs of the
    endpoints touched): what stays answers, and a new NatMap reads exactly
    the table back, with no drift."""
    others = [(natmap.Endpoint(f"bulk{i}", f"172.30.0.{100 + i}", web.bridge),
               f"{20000 + 40 * i}-{20039 + 40 * i}:1-40") for i in range(29)]  # IPv4 only
    with nm.transaction() as tx:
        for endpoint, spec in others:
            tx.publish(endpoint, [spec])
        tx.publish(web.endpoint(), ["8080:5000", *[f"{9000 + i}:{7000 + i}" for i in range(39)]])
    assert len(nm.bindings()) == 29 * 40 + 2 * 40  # web01 on both families
    with nm.transaction() as tx:
        for endpoint, _ in others:
            tx.unpublish(endpoint.name)
        tx.publish(web.endpoint(), ["8081:5000"])
    assert client.request(sandbox.outside_ip, 8080) == "web01 192.0.2.2"
    assert client.request(sandbox.outside_ip6, 8081) == "web01 2001:db8:2::2"
    fresh = natmap.NatMap(netns=sandbox.host.name, backend=nm.backend_name)
    assert sorted(map(repr, fresh.bindings())) == sorted(map(repr, nm.bindings()))
    assert len(nm.bindings()) == 82 and not nm.check()

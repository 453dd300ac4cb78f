"""What only the iptables backend has to prove: commits across tables roll
back, jumps stay single, other programs' chains stay as they were. Root only."""

import sys
from pathlib import Path

import pytest

import natmap
from helpers import delete_behind_natmaps_back, kernel_state


@pytest.fixture
def ipt(sandbox):
    with natmap.NatMap(netns=sandbox.host.name, backend="iptables") as instance:
        yield instance


def saved(sb, table):
    return sb.host.run(["iptables-legacy-save", "-t", table]).stdout + \
        sb.host.run(["ip6tables-legacy-save", "-t", table]).stdout


def test_a_failure_in_the_second_table_rolls_the_first_back(sandbox, ipt, monkeypatch):
    db, web = sandbox.container("db01"), sandbox.container("web02")
    ipt.publish(db.endpoint(expose=["5432"]), ["5432:5432"])
    ipt.isolate(sandbox.bridge)
    ipt.link(web.endpoint(), db.endpoint(expose=["5432"]), "db")
    db.serve(5432)
    assert web.request(db.ip, 5432) is not None
    # Unpublishing db01 removes its link (filter, committed first) and its
    # bindings (nat, committed second); the nat commit fails (a refusal the
    # test injects: the filter commit and its undo are the kernel's), so the
    # filter commit must be undone, and the store must keep the link.
    from natmap.backends import iptables

    real = iptables._commit
    calls = []

    def nat_refuses(family, table_name, steps):
        calls.append(table_name)
        if table_name == "nat" and calls.count("nat") == 1:
            raise OSError("injected refusal")
        return real(family, table_name, steps)

    before = kernel_state(sandbox, "iptables")
    monkeypatch.setattr(iptables, "_commit", nat_refuses)
    with pytest.raises(natmap.BackendError, match="refused the change in table nat"):
        ipt.unpublish("db01")
    monkeypatch.undo()
    assert kernel_state(sandbox, "iptables") == before
    assert [str(link) for link in ipt.links()] == ["web02 -> db01:db"]
    assert web.request(db.ip, 5432) is not None  # the link still works
    assert not ipt.check()


def test_jumps_to_natmaps_chains_are_never_duplicated(sandbox, ipt):
    web = sandbox.container("web01")
    for round in range(10):
        ipt.publish(web.endpoint(), [f"{8000 + round}:80"])
        ipt.unpublish("web01")
        if round % 3 == 0:
            ipt.remove()
    ipt.publish(web.endpoint(), ["8080:80"])
    for table, chain, target in [("nat", "PREROUTING", "NATMAP-DNAT"), ("nat", "OUTPUT", "NATMAP-DNAT"),
                                 ("nat", "POSTROUTING", "NATMAP-POSTROUTING"),
                                 ("filter", "FORWARD", "NATMAP-FORWARD"), ("raw", "PREROUTING", "NATMAP-GUARD")]:
        rules = [line for line in saved(sandbox, table).splitlines()
                 if line.startswith(f"-A {chain} ") and line.endswith(f"-j {target}")]
        assert len(rules) == 2, (table, chain, rules)  # once for IPv4, once for IPv6


def test_other_programs_chains_in_the_same_tables_are_untouched(sandbox, ipt):
    sandbox.host.run(["iptables-legacy-restore", "--noflush"], check=True, input=(
        "*nat\n:DOCKER - [0:0]\n-A DOCKER -p tcp --dport 7 -j RETURN\n-A PREROUTING -j DOCKER\nCOMMIT\n"
        "*filter\n:DOCKER-USER - [0:0]\n-A DOCKER-USER -j RETURN\n-A FORWARD -j DOCKER-USER\nCOMMIT\n"))

    def theirs():
        return [line for table in ("nat", "filter") for line in saved(sandbox, table).splitlines()
                if "DOCKER" in line]
    before = theirs()
    web = sandbox.container("web01")
    ipt.publish(web.endpoint(), ["8080:80"])
    ipt.isolate(sandbox.bridge)
    ipt.unpublish("web01")
    ipt.remove()
    assert theirs() == before
    assert "NATMAP" not in saved(sandbox, "nat") + saved(sandbox, "filter") + saved(sandbox, "raw")


def test_plan_shows_iptables_commands_and_applies_nothing(sandbox, ipt):
    web = sandbox.container("web01")
    text = ipt.preview(web.endpoint(), ["127.0.0.1:8080:5000"])
    assert ("iptables -t nat -I NATMAP-DNAT -d 127.0.0.1 -p tcp -m tcp --dport 8080 -m comment "
            '--comment "web01" -j DNAT --to-destination 172.30.0.2:5000') in text.splitlines()
    assert "iptables -t nat -N NATMAP-DNAT" in text.splitlines()
    assert "NATMAP" not in saved(sandbox, "nat")


def test_an_empty_legacy_filter_table_holds_no_natmap_table_and_one_made_later_is_a_conflict(sandbox):
    """`iptables-legacy -L` loads the filter table with nothing in it: natmap
    then skips reading iptables (its size says it holds no chain), and an
    iptables table another natmap makes afterwards is found at once."""
    from natmap.backends import iptables_in_use

    sandbox.host.run(["iptables-legacy", "-t", "filter", "-L", "-n"], check=True)
    assert "filter" in sandbox.host.call(lambda: open("/proc/net/ip_tables_names").read()).split()
    assert sandbox.host.call(iptables_in_use) is False
    web, db = sandbox.container("web01"), sandbox.container("db01")
    with natmap.NatMap(netns=sandbox.host.name) as nft, \
            natmap.NatMap(table="other", netns=sandbox.host.name, backend="iptables") as ipt:
        nft.publish(web.endpoint(), ["8080:80"])  # the other tables read, none found
        ipt.publish(db.endpoint(), ["9090:80"])
        assert sandbox.host.call(iptables_in_use) is True
        assert ("other", "iptables") in nft.tables()
        with pytest.raises(natmap.ConflictError, match="table other"):
            nft.publish(web.endpoint(), ["9090:80"])
        ipt.remove()
        assert sandbox.host.call(iptables_in_use) is False  # the built-in chains alone again
        nft.publish(web.endpoint(), ["9090:80"])  # the port is free again
        assert {b.host_port for b in nft.port("web01")} == {8080, 9090}
        sandbox.host.run(["iptables-legacy", "-A", "INPUT", "-j", "ACCEPT"], check=True)
        assert sandbox.host.call(iptables_in_use) is True  # a rule: read, as any table with something in it
        nft.remove()


NATMAP = str(Path(sys.executable).with_name("natmap"))
NO_NET_RAW = ["setpriv", "--bounding-set", "-net_raw", "--inh-caps", "-net_raw"]  # as hardened runtimes run a plugin
RAW_REFUSED = "natmap needs CAP_NET_RAW (python-iptables' raw socket) in the network namespace (run it as root)\n"


def natmap_without_net_raw(sb, web, *args):
    return sb.host.run([*NO_NET_RAW, NATMAP, "publish", "web01", "--ip", str(web.ip), "--bridge", sb.bridge, *args],
                       timeout=60)


def test_without_cap_net_raw_nft_publishes_where_the_legacy_filter_table_holds_policies_only(sandbox):
    """The size of the legacy filter table (is there anything to read?) is
    asked on a UDP socket: a raw one, which needs CAP_NET_RAW, failed and
    every publish then read the table through python-iptables and failed."""
    web, client = sandbox.container("web01"), sandbox.client("client1")
    web.serve(5000)
    assert natmap_without_net_raw(sandbox, web, "-p", "8080:5000").returncode == 0
    sandbox.host.run(["iptables-legacy", "-L", "-n"], check=True)  # loaded, its built-in chains' policies alone
    published = natmap_without_net_raw(sandbox, web, "-p", "8081:5000")
    assert published.returncode == 0, published.stderr
    assert client.request(sandbox.outside_ip, 8081) == "web01 192.0.2.2"
    sandbox.host.run(["iptables-legacy", "-A", "INPUT", "-j", "ACCEPT"], check=True)  # now read for natmap tables
    refused = natmap_without_net_raw(sandbox, web, "-p", "8082:5000")
    assert (refused.returncode, refused.stderr.endswith(RAW_REFUSED)) == (4, True), refused.stderr
    assert client.request(sandbox.outside_ip, 8082, timeout=0.5) is None
    assert sandbox.host.run([NATMAP, "remove"]).returncode == 0


def test_without_cap_net_raw_the_iptables_backend_says_it_needs_it(sandbox):
    web = sandbox.container("web01")
    refused = natmap_without_net_raw(sandbox, web, "-p", "8080:5000", "--backend", "iptables")
    assert (refused.returncode, refused.stderr.endswith(RAW_REFUSED)) == (4, True), refused.stderr
    assert sandbox.host.run(["iptables-legacy-save", "-t", "nat"]).stdout.count("NATMAP") == 0

"""Links and inter-container isolation with real traffic between sandbox
containers on one bridge. Root only."""

import pytest

import natmap
from helpers import kernel_state


@pytest.fixture
def trio(sandbox):
    """db01 serving an exposed port (5432) and a port it does not expose (6000),
    web02 to be linked to it, web03 never linked."""
    db = sandbox.container("db01")
    for port in (5432, 6000):
        db.serve(port)
    db.serve(5432, "udp")
    return db, sandbox.container("web02"), sandbox.container("web03")


def db_endpoint(db):
    return db.endpoint(expose=["5432/tcp", "5432/udp"])


def reaches(client, server, port, proto="tcp", family=4):
    address = server.ip if family == 4 else server.ipv6
    return client.request(address, port, proto, timeout=0.5) is not None


def test_an_open_bridge_lets_everyone_reach_everyone(nm, trio):
    db, web02, web03 = trio
    nm.publish(db_endpoint(db), ["5432:5432"])
    for client in (web02, web03):
        assert reaches(client, db, 5432) and reaches(client, db, 6000)
        assert reaches(client, db, 5432, family=6)


def test_on_an_isolated_bridge_only_links_open_flows(sandbox, nm, trio):
    db, web02, web03 = trio
    nm.isolate(sandbox.bridge)
    assert nm.isolated() == [sandbox.bridge]
    for client in (web02, web03):
        assert not reaches(client, db, 5432)
    link = nm.link(web02.endpoint(), db_endpoint(db), "web02Todb01", target_env=["POSTGRES_DB=app"])
    assert link.hosts_line == f"{db.ip}\tweb02Todb01 db01"
    assert "WEB02TODB01_ENV_POSTGRES_DB=app" in link.env
    assert f"WEB02TODB01_PORT=tcp://{db.ip}:5432" in link.env
    for family in (4, 6):
        assert reaches(web02, db, 5432, family=family)              # linked, exposed
        assert reaches(web02, db, 5432, "udp", family=family)       # each protocol
        assert not reaches(web02, db, 6000, family=family)          # not exposed
        assert not reaches(web03, db, 5432, family=family)          # not linked
        assert not reaches(db, web02, 5432, family=family)          # one way only
    assert [str(l) for l in nm.links()] == ["web02 -> db01:web02Todb01"]
    assert nm.unlink("web02", "db01").alias == "web02Todb01"
    assert not reaches(web02, db, 5432)
    assert nm.links() == []
    nm.unisolate(sandbox.bridge)
    assert reaches(web03, db, 6000)


@pytest.mark.parametrize("family", [4, 6])
def test_unlink_cuts_an_established_udp_flow(sandbox, nm, trio, family):
    db, web02, _ = trio
    nm.isolate(sandbox.bridge)
    nm.link(web02.endpoint(), db_endpoint(db), "db")
    flow = web02.udp_socket(family)
    target, source = (db.ip, web02.ip) if family == 4 else (db.ipv6, web02.ipv6)
    assert web02.request(target, 5432, "udp", sock=flow) == f"db01 {source}"
    nm.unlink("web02", "db01")
    assert web02.request(target, 5432, "udp", sock=flow, timeout=0.5) is None
    flow.close()


def test_unpublishing_an_endpoint_removes_its_links(sandbox, nm, trio):
    db, web02, _ = trio
    nm.isolate(sandbox.bridge)
    nm.publish(db_endpoint(db), ["5432:5432"])
    nm.link(web02.endpoint(), db_endpoint(db))
    assert reaches(web02, db, 5432)
    nm.unpublish("db01")
    assert nm.links() == [] and not reaches(web02, db, 5432)


def test_links_are_read_back_from_the_kernel(sandbox, nm, trio):
    db, web02, web03 = trio
    with nm.transaction() as tx:
        tx.isolate(sandbox.bridge)
        tx.link(web02.endpoint(), db_endpoint(db), "db")
        tx.link(web03.endpoint(), db_endpoint(db), "database")
    fresh = natmap.NatMap(netns=sandbox.host.name, backend=nm.backend_name)
    links = fresh.links()
    assert [str(l) for l in links] == ["web02 -> db01:db", "web03 -> db01:database"]
    assert links[0].ports == ((5432, natmap.Protocol.TCP), (5432, natmap.Protocol.UDP))
    assert links[0].hosts_line == f"{db.ip}\tdb db01"
    assert links[0].env == natmap.link_env("web02", "db", db.ip, ["5432/tcp", "5432/udp"])


def test_a_failing_link_transaction_changes_nothing(sandbox, nm, backend, trio):
    db, web02, _ = trio
    nm.link(web02.endpoint(), db_endpoint(db), "db")
    before = kernel_state(sandbox, backend)
    with pytest.raises(natmap.ConflictError, match="already linked"):
        with nm.transaction() as tx:
            tx.isolate(sandbox.bridge)
            tx.link(web02.endpoint(), db_endpoint(db), "other")
    assert kernel_state(sandbox, backend) == before


def test_isolating_refuses_while_ipv6_loopback_bindings_exist(sandbox, nm, trio):
    db, _, _ = trio
    nm.publish(db_endpoint(db), ["[::1]:5432:5432"])
    with pytest.raises(natmap.NatmapError, match="bridge-nf-call-ip6tables"):
        nm.isolate(sandbox.bridge)
    assert nm.isolated() == []


def test_the_tutorial_scenario(sandbox, nm):
    """docker run -d -P --name db01; -P --name web01; -P --name web02 --link db01:web02Todb01."""
    db, web01, web02 = (sandbox.container(name) for name in ("db01", "web01", "web02"))
    for container, port in ((db, 5432), (web01, 5000), (web02, 5000)):
        container.serve(port)
    nm.isolate(sandbox.bridge)
    nm.publish(db.endpoint(expose=["5432/tcp"], ipv6=False), publish_all=True)
    nm.publish(web01.endpoint(expose=["5000/tcp"], ipv6=False), publish_all=True)
    nm.publish(web02.endpoint(expose=["5000/tcp"], ipv6=False), publish_all=True)
    link = nm.link(web02.endpoint(ipv6=False), db.endpoint(expose=["5432/tcp"], ipv6=False), "web02Todb01")
    assert [b.port_line() for b in nm.port("db01")] == ["5432/tcp -> 0.0.0.0:32768"]
    assert [b.port_line() for b in nm.port("web01")] == ["5000/tcp -> 0.0.0.0:32769"]
    assert [str(b) for b in nm.port("web02", 5000)] == ["0.0.0.0:32770"]
    assert link.env[:2] == [f"WEB02TODB01_PORT=tcp://{db.ip}:5432",
                            f"WEB02TODB01_PORT_5432_TCP=tcp://{db.ip}:5432"]
    assert reaches(web02, db, 5432) and not reaches(web01, db, 5432)
    client = sandbox.client("client1")
    assert client.request(sandbox.outside_ip, 32769) == "web01 192.0.2.2"

"""Docker's legacy link environment and hosts line, case by case (moby's
daemon/links semantics). No root, no kernel."""

import ipaddress

import pytest

from natmap import Endpoint, Link, SpecError, hosts_line, link_env
from natmap.model import Table

IP = "172.17.0.5"


def port_vars(prefix, port, proto, ip=IP):
    key = f"{prefix}_PORT_{port}_{proto.upper()}"
    return [f"{key}={proto}://{ip}:{port}", f"{key}_ADDR={ip}", f"{key}_PORT={port}", f"{key}_PROTO={proto}"]


def run_vars(prefix, start, end, proto, ip=IP):
    key = f"{prefix}_PORT_{start}_{proto.upper()}"
    return [f"{key}_START={proto}://{ip}:{start}", f"{key}_PORT_START={start}",
            f"{key}_END={proto}://{ip}:{end}", f"{key}_PORT_END={end}"]


CASES = [
    pytest.param(
        dict(parent="web", alias="db", exposed=["5432/tcp"]),
        ["DB_PORT=tcp://172.17.0.5:5432",
         "DB_PORT_5432_TCP=tcp://172.17.0.5:5432",
         "DB_PORT_5432_TCP_ADDR=172.17.0.5",
         "DB_PORT_5432_TCP_PORT=5432",
         "DB_PORT_5432_TCP_PROTO=tcp",
         "DB_NAME=/web/db"],
        id="single-port"),
    pytest.param(
        dict(parent="web", alias="db", exposed=["5432"]),
        ["DB_PORT=tcp://172.17.0.5:5432", *port_vars("DB", 5432, "tcp"), "DB_NAME=/web/db"],
        id="no-proto-means-tcp"),
    pytest.param(
        dict(parent="web", alias="db", exposed=["53/udp", "80/tcp", "53/tcp", "9/sctp"]),
        ["DB_PORT=tcp://172.17.0.5:53", *port_vars("DB", 53, "tcp"), *port_vars("DB", 80, "tcp"),
         *port_vars("DB", 9, "sctp"), *port_vars("DB", 53, "udp"), "DB_NAME=/web/db"],
        id="tcp-first-then-protocols-by-name"),
    pytest.param(
        dict(parent="web", alias="db", exposed=["53/udp"]),
        ["DB_PORT=udp://172.17.0.5:53", *port_vars("DB", 53, "udp"), "DB_NAME=/web/db"],
        id="udp-only"),
    pytest.param(
        dict(parent="web", alias="db", exposed=["8000-8002/tcp", "8004/tcp", "7000-7001/udp"]),
        ["DB_PORT=tcp://172.17.0.5:8000", *port_vars("DB", 8000, "tcp"), *port_vars("DB", 8001, "tcp"),
         *port_vars("DB", 8002, "tcp"), *port_vars("DB", 8004, "tcp"), *run_vars("DB", 8000, 8002, "tcp"),
         *port_vars("DB", 7000, "udp"), *port_vars("DB", 7001, "udp"), *run_vars("DB", 7000, 7001, "udp"),
         "DB_NAME=/web/db"],
        id="consecutive-runs"),
    pytest.param(
        dict(parent="web", alias="db", exposed=["80/tcp", "81/udp"]),
        ["DB_PORT=tcp://172.17.0.5:80", *port_vars("DB", 80, "tcp"), *port_vars("DB", 81, "udp"),
         "DB_NAME=/web/db"],
        id="a-run-needs-one-protocol"),
    pytest.param(
        dict(parent="web", alias="db", exposed=["6379", "6379/tcp"]),
        ["DB_PORT=tcp://172.17.0.5:6379", *port_vars("DB", 6379, "tcp"), "DB_NAME=/web/db"],
        id="duplicates-once"),
    pytest.param(
        dict(parent="web", alias="db", exposed=[],
             target_env=["PASSWORD=secret", "HOME=/root", "PATH=/usr/bin", "NOEQUALS", "A=b=c", "lower=1",
                         "EMPTY="]),
        ["DB_NAME=/web/db", "DB_ENV_PASSWORD=secret", "DB_ENV_A=b=c", "DB_ENV_lower=1", "DB_ENV_EMPTY="],
        id="env-copied-without-home-path-and-bare-names"),
    pytest.param(
        dict(parent="web02", alias="web02Todb01", exposed=["5432/tcp"]),
        ["WEB02TODB01_PORT=tcp://172.17.0.5:5432", *port_vars("WEB02TODB01", 5432, "tcp"),
         "WEB02TODB01_NAME=/web02/web02Todb01"],
        id="tutorial-alias"),
    pytest.param(
        dict(parent="web", alias="docker-1", exposed=["80"]),
        ["DOCKER_1_PORT=tcp://172.17.0.5:80", *port_vars("DOCKER_1", 80, "tcp"), "DOCKER_1_NAME=/web/docker-1"],
        id="dash-becomes-underscore"),
    pytest.param(
        dict(parent="web", alias="my.db", exposed=["80"]),
        ["MY.DB_PORT=tcp://172.17.0.5:80", *port_vars("MY.DB", 80, "tcp"), "MY.DB_NAME=/web/my.db"],
        id="dot-is-kept-as-docker-does"),
]


@pytest.mark.parametrize("args, expected", CASES)
def test_link_env_matches_docker(args, expected):
    assert link_env(target_ip=IP, **args) == expected


def test_link_env_takes_parsed_specs_and_addresses():
    from natmap import PortSpec

    env = link_env("web", "db", ipaddress.ip_address(IP), [PortSpec.parse_exposed("5432/tcp")])
    assert env[0] == "DB_PORT=tcp://172.17.0.5:5432"


@pytest.mark.parametrize("parent, alias", [("web", "bad alias"), ("w", "db"), ("web", "")])
def test_link_env_checks_names(parent, alias):
    with pytest.raises(SpecError):
        link_env(parent, alias, IP, ["80"])


def test_hosts_line():
    assert hosts_line("web02Todb01", "db01", "172.30.0.3") == "172.30.0.3\tweb02Todb01 db01"
    assert hosts_line("db01", "db01", "172.30.0.3") == "172.30.0.3\tdb01"
    with pytest.raises(SpecError):
        hosts_line("x y", "db01", "172.30.0.3")


def endpoint(name, n, expose=()):
    return Endpoint(name, f"172.30.0.{n}", "natmap0", ipv6=f"fd00:30::{n}", expose=expose)


def test_a_link_opens_the_targets_exposed_ports_per_family():
    table = Table()
    link = table.link(endpoint("web02", 4), endpoint("db01", 3, ["5432", "53/udp"]), "web02Todb01",
                      ["POSTGRES_DB=app"])
    assert str(link) == "web02 -> db01:web02Todb01"
    assert link.hosts_line == "172.30.0.3\tweb02Todb01 db01"
    assert "WEB02TODB01_ENV_POSTGRES_DB=app" in link.env
    assert [(str(s), str(t), p.value, port) for s, t, p, port in link.flows()] == [
        ("172.30.0.4", "172.30.0.3", "tcp", 5432), ("172.30.0.4", "172.30.0.3", "udp", 53),
        ("fd00:30::4", "fd00:30::3", "tcp", 5432), ("fd00:30::4", "fd00:30::3", "udp", 53)]


def test_links_conflict_per_pair_and_go_with_their_endpoints():
    table = Table()
    db, web = endpoint("db01", 3, ["5432"]), endpoint("web02", 4)
    table.link(web, db, "db")
    assert table.link(web, db, "db").alias == "db"  # the same link again: no change
    with pytest.raises(Exception, match="already linked"):
        table.link(web, db, "other")
    table.commit()
    table.unpublish("db01")
    assert table.links() == []
    table.rollback()
    assert [str(l) for l in table.links()] == ["web02 -> db01:db"]
    assert table.unlink("web02", "db01").alias == "db"
    assert table.unlink("web02", "db01") is None


def test_a_link_to_itself_is_refused():
    with pytest.raises(SpecError, match="itself"):
        Link("db01", "db01", "db", (), (), ())

"""`natmap ps`'s PORTS column is docker ps's: docker/cli's DisplayablePorts
cases (cli/command/formatter/container_test.go, TestDisplayablePorts), and
the issue 15 case."""

import ipaddress

import pytest

from natmap import Binding, PortSpec
from natmap.docker_format import displayable_ports, ps_ports


def port(private, proto, ip=None, public=0):
    return (private, proto, None if ip is None else ipaddress.ip_address(ip), public)


# (ports, docker's expected text): docker/cli's own cases, in its order.
DOCKER_CASES = [
    ([port(9988, "tcp")], "9988/tcp"),
    ([port(9988, "udp")], "9988/udp"),
    ([port(9988, "tcp", "0.0.0.0")], "0.0.0.0:0->9988/tcp"),
    ([port(9988, "tcp", "::")], "[::]:0->9988/tcp"),
    ([port(9988, "tcp", public=8899)], "9988/tcp"),
    ([port(9988, "tcp", "4.3.2.1", 8899)], "4.3.2.1:8899->9988/tcp"),
    ([port(9988, "tcp", "::1", 8899)], "[::1]:8899->9988/tcp"),
    ([port(9988, "tcp", "4.3.2.1", 9988)], "4.3.2.1:9988->9988/tcp"),
    ([port(9988, "tcp", "::1", 9988)], "[::1]:9988->9988/tcp"),
    ([port(9988, "udp"), port(9988, "udp")], "9988/udp, 9988/udp"),
    ([port(9998, "udp", "1.2.3.4", 9998), port(9999, "udp", "1.2.3.4", 9999)],
     "1.2.3.4:9998-9999->9998-9999/udp"),
    ([port(9998, "udp", "::1", 9998), port(9999, "udp", "::1", 9999)], "[::1]:9998-9999->9998-9999/udp"),
    ([port(9998, "udp", "1.2.3.4", 8887), port(9999, "udp", "1.2.3.4", 8888)],
     "1.2.3.4:8887->9998/udp, 1.2.3.4:8888->9999/udp"),
    ([port(9998, "udp", "::1", 8887), port(9999, "udp", "::1", 8888)],
     "[::1]:8887->9998/udp, [::1]:8888->9999/udp"),
    ([port(9998, "udp"), port(9999, "udp")], "9998-9999/udp"),
    ([port(6677, "tcp", "1.2.3.4", 7766), port(9988, "udp", public=8899)], "9988/udp, 1.2.3.4:7766->6677/tcp"),
    ([port(9988, "udp", "1.2.3.4", 8899), port(9988, "tcp", "1.2.3.4", 8899), port(2233, "tcp", "4.3.2.1", 3322),
      port(2233, "tcp", "::1", 3322)],
     "4.3.2.1:3322->2233/tcp, [::1]:3322->2233/tcp, 1.2.3.4:8899->9988/tcp, 1.2.3.4:8899->9988/udp"),
    ([port(9988, "udp", public=8899), port(6677, "tcp", "1.2.3.4", 7766), port(2233, "tcp", "4.3.2.1", 3322)],
     "9988/udp, 4.3.2.1:3322->2233/tcp, 1.2.3.4:7766->6677/tcp"),
    ([port(80, "tcp"), port(1024, "tcp"), port(80, "udp"), port(1024, "udp"),
      port(1024, "tcp", "1.1.1.1", 80), port(1024, "udp", "1.1.1.1", 80),
      port(80, "tcp", "1.1.1.1", 1024), port(80, "udp", "1.1.1.1", 1024),
      port(1024, "tcp", "2.1.1.1", 80), port(1024, "udp", "2.1.1.1", 80),
      port(80, "tcp", "2.1.1.1", 1024), port(80, "udp", "2.1.1.1", 1024), port(12345, "sctp")],
     "80/tcp, 80/udp, 1024/tcp, 1024/udp, 12345/sctp, 1.1.1.1:1024->80/tcp, 1.1.1.1:1024->80/udp, "
     "2.1.1.1:1024->80/tcp, 2.1.1.1:1024->80/udp, 1.1.1.1:80->1024/tcp, 1.1.1.1:80->1024/udp, "
     "2.1.1.1:80->1024/tcp, 2.1.1.1:80->1024/udp"),
]


@pytest.mark.parametrize("ports, expected", DOCKER_CASES)
def test_dockers_own_cases(ports, expected):
    assert displayable_ports(ports) == expected


def bindings(specs, host_ip="0.0.0.0"):
    return [Binding("web01", "tcp", host_ip, h, "172.30.0.2", c) for h, c in specs]


def test_only_runs_whose_host_port_is_the_container_port_merge():
    # -p 9000-9002:8000-8002: Docker lists each; natmap once merged them.
    assert ps_ports(bindings([(9000, 8000), (9001, 8001), (9002, 8002)])) == (
        "0.0.0.0:9000->8000/tcp, 0.0.0.0:9001->8001/tcp, 0.0.0.0:9002->8002/tcp")
    # -p 8000-8002:8000-8002 merges.
    assert ps_ports(bindings([(8000, 8000), (8001, 8001), (8002, 8002)])) == "0.0.0.0:8000-8002->8000-8002/tcp"


def test_exposed_ports_without_a_binding_are_listed_as_docker_does():
    assert ps_ports([], ["9000"]) == "9000/tcp"
    assert ps_ports(bindings([(8080, 80)]), [PortSpec.parse_exposed("80"), "9000-9001/udp"]) == (
        "9000-9001/udp, 0.0.0.0:8080->80/tcp")


def test_a_dual_stack_binding_lists_ipv4_then_ipv6():
    assert ps_ports(bindings([(8080, 80)]) + bindings([(8080, 80)], "::")) == (
        "0.0.0.0:8080->80/tcp, [::]:8080->80/tcp")

"""Switching protection back on ends the direct flows it now forbids: a client's
flow routed straight to a container's UNPUBLISHED port, let in while the bridge
was ``nat-unprotected`` (or while its interface was trusted), gets no more
answers once the bridge is set to ``nat``/``routed`` (or the interface is
trusted no more), as a new one is refused; a flow from an interface still
trusted goes on. Real traffic, both backends (the ``nm`` fixture), both families."""

import pytest

from natmap.sandbox import Namespace
from test_kernel_engine import client, web  # noqa: F401 (the same fixtures: web01, client1 outside on nmout)
from test_kernel_routedcut import Flow, addresses, echo_server


def second_outside(sandbox, label="client2"):
    """A second outside link of the host, ``nmout2`` (198.51.100.0/24,
    2001:db8:3::/64), and a client namespace on it routing through the host."""
    sandbox.host.run(["ip", "link", "add", "nmout2", "type", "bridge"], check=True)
    sandbox.host.run(["ip", "addr", "add", "198.51.100.1/24", "dev", "nmout2"], check=True)
    sandbox.host.run(["ip", "addr", "add", "2001:db8:3::1/64", "dev", "nmout2", "nodad"], check=True)
    sandbox.host.run(["ip", "link", "set", "nmout2", "up"], check=True)
    ns = Namespace(sandbox._real_name(label), label)
    sandbox._create(ns)
    sandbox._attach(ns, 150, "nmout2", "198.51.100.2/24", "2001:db8:3::2/64", "198.51.100.1", "2001:db8:3::1",
                    hairpin=False)
    return ns


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("target", ["nat", "routed"])
def test_leaving_nat_unprotected_cuts_direct_flows_to_unpublished_ports(sandbox, nm, web, client, family, target):
    direct, _ = addresses(sandbox, web, family)
    echo_server(web, 7000)
    echo_server(web, 9999)
    nm.publish(web.endpoint(), ["8080:7000"])
    nm.set_gateway(sandbox.bridge, "nat-unprotected")
    flow = Flow(client, direct, 9999)
    assert flow.ask() == "web01 answer:ping"
    nm.set_gateway(sandbox.bridge, target)
    assert not Flow(client, direct, 9999, timeout=0.5).connected  # a new one is refused
    assert flow.ask(timeout=0.5) is None                          # and the established one ends
    flow.close()


def test_only_the_family_that_leaves_nat_unprotected_is_cut(sandbox, nm, web, client):
    echo_server(web, 9999)
    nm.publish(web.endpoint(), ["8080:7000"])
    nm.set_gateway(sandbox.bridge, "nat-unprotected")
    four, six = Flow(client, web.ip, 9999), Flow(client, web.ipv6, 9999)
    assert four.ask() == six.ask() == "web01 answer:ping"
    nm.set_gateway(sandbox.bridge, mode_ipv4="nat-unprotected", mode_ipv6="nat")
    assert six.ask(timeout=0.5) is None
    assert four.ask() == "web01 answer:ping"  # IPv4 is still unprotected: its flow goes on
    four.close()
    six.close()


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("mode", ["nat", "routed"])
def test_an_interface_trusted_no_more_loses_its_flows_and_one_still_trusted_keeps_them(
        sandbox, nm, web, client, family, mode):
    other = second_outside(sandbox)
    direct, _ = addresses(sandbox, web, family)
    echo_server(web, 9999)
    nm.publish(web.endpoint(), ["8080:7000"])
    nm.set_gateway(sandbox.bridge, mode, ["nmout", "nmout2"])
    withdrawn, kept = Flow(client, direct, 9999), Flow(other, direct, 9999)
    assert withdrawn.ask() == kept.ask() == "web01 answer:ping"
    nm.set_gateway(sandbox.bridge, mode, ["nmout2"])
    assert withdrawn.ask(timeout=0.5) is None              # nmout is trusted no more: its flow ends
    assert not Flow(client, direct, 9999, timeout=0.5).connected
    assert kept.ask() == "web01 answer:ping"               # nmout2's flow, cut too, is taken up again
    assert kept.ask() == "web01 answer:ping"
    assert Flow(other, direct, 9999).ask() == "web01 answer:ping"
    withdrawn.close()
    kept.close()


def test_a_published_flow_and_the_containers_own_survive_the_cut(sandbox, nm, web, client):
    echo_server(web, 7000)
    echo_server(web, 9999)
    echo_server(client, 7100)
    nm.publish(web.endpoint(), ["8080:7000"])
    nm.set_gateway(sandbox.bridge, "nat-unprotected")
    mapped = Flow(client, sandbox.outside_ip, 8080)  # DNATed: the binding's, not a direct flow
    own = Flow(web, "192.0.2.2", 7100)               # the container's own outgoing flow
    direct = Flow(client, web.ip, 9999)
    for flow, who in ((mapped, "web01"), (own, "client1"), (direct, "web01")):
        assert flow.ask() == f"{who} answer:ping"
    nm.set_gateway(sandbox.bridge, "nat")
    assert direct.ask(timeout=0.5) is None
    assert mapped.ask() == "web01 answer:ping"
    assert own.ask() == "client1 answer:ping"
    for flow in (mapped, own, direct):
        flow.close()

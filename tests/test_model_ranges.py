"""Same-port ranges held as one item: conflicts, order, unpublish. No root, no kernel."""

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from natmap import Binding, ConflictError, Endpoint, PortSpec, SpecError
from natmap.model import Bridge, Table, docker_order

BRIDGE = Bridge("natmap0", (ipaddress.ip_network("172.30.0.0/24"), ipaddress.ip_network("fd00:30::/64")))


def ep(name="web01", n=2, ipv6=True):
    return Endpoint(name, f"172.30.0.{n}", "natmap0", ipv6=f"fd00:30::{n}" if ipv6 else None)


def publish(table, endpoint, specs):
    return table.publish(endpoint, [PortSpec.parse(s) for s in specs], bridge=BRIDGE)


def test_a_same_port_range_is_one_item_per_address_and_lists_one_line_a_port():
    table = Table()
    made = publish(table, ep(), ["1-65535:1-65535/udp"])
    assert len(made) == 2 * 65535
    assert made[0].count == 1
    held = [b for b in table.items() if isinstance(b, Binding)]
    assert sorted(str(b) for b in held) == ["0.0.0.0:1-65535", "[::]:1-65535"]
    assert len(table.change().add) == 3  # the bridge and two ranges
    assert table.of("web01")[:3] == [Binding("web01", "udp", "0.0.0.0", 1, "172.30.0.2", 1),
                                     Binding("web01", "udp", "::", 1, "fd00:30::2", 1),
                                     Binding("web01", "udp", "0.0.0.0", 2, "172.30.0.2", 2)]


def test_a_shifted_range_stays_one_binding_a_port():
    table = Table()
    publish(table, ep(ipv6=False), ["20000-20009:30000-30009"])
    assert all(b.count == 1 for b in table.items() if isinstance(b, Binding))


def test_a_single_port_inside_a_published_range_conflicts_either_way():
    table = Table()
    publish(table, ep(), ["10000-20000:10000-20000/udp"])
    with pytest.raises(ConflictError, match=r"0\.0\.0\.0:15000/udp.*'db01'.*0\.0\.0\.0:10000-20000/udp.*'web01'"):
        publish(table, ep("db01", 3), ["15000:53/udp"])
    with pytest.raises(ConflictError, match="'web01'"):
        publish(table, ep("db01", 3, ipv6=False), ["127.0.0.1:20000:53/udp"])
    publish(table, ep("db01", 3), ["20001:53/udp", "15000:53/tcp"])  # beside it, or another protocol
    other = Table()
    publish(other, ep("db01", 3), ["15000:53/udp"])
    with pytest.raises(ConflictError, match="'db01'"):
        publish(other, ep(), ["10000-20000:10000-20000/udp"])


def test_overlapping_ranges_conflict_and_the_same_range_again_is_no_change():
    table = Table()
    publish(table, ep(), ["127.0.0.1:100-200:100-200"])
    table.commit()
    with pytest.raises(ConflictError):
        publish(table, ep("db01", 3), ["150-250:150-250"])
    table.rollback()
    publish(table, ep("db01", 3), ["127.0.0.2:150-250:150-250", "127.0.0.1:201-300:201-300"])
    table.commit()
    publish(table, ep(), ["127.0.0.1:100-200:100-200"])
    assert not table.change()


def test_assigned_ports_skip_a_published_range():
    from natmap import PortRange
    from natmap.model import PortPool

    table = Table()
    publish(table, ep(), ["32768-32770:32768-32770"])
    (b,) = table.publish(ep("db01", 3, ipv6=False), [PortSpec.parse("80")], bridge=BRIDGE,
                         pool=PortPool(PortRange(32768, 32800)))
    assert b.host_port == 32771


def test_unpublish_removes_the_range_as_one_item_and_returns_its_ports():
    table = Table()
    publish(table, ep(), ["8000-8099:8000-8099"])
    table.commit()
    removed = table.unpublish("web01")  # as held: one a range
    assert sorted(str(b) for b in removed) == ["0.0.0.0:8000-8099", "[::]:8000-8099"]
    assert len(docker_order(removed)) == 200  # docker port's lines, as NatMap.unpublish returns them
    assert [str(b) for b in table.change().delete] == ["0.0.0.0:8000-8099", "[::]:8000-8099"]
    assert len(table) == 0 and table._ranges == {} and not table._taken(4, 0, "tcp", 8000)


def test_a_binding_of_many_ports_must_keep_the_port():
    with pytest.raises(SpecError, match="same port"):
        Binding("web01", "tcp", "0.0.0.0", 8000, "172.30.0.2", 80, 10)
    with pytest.raises(SpecError):
        Binding("web01", "tcp", "0.0.0.0", 65530, "172.30.0.2", 65530, 10)
    b = Binding("web01", "tcp", "0.0.0.0", 8000, "172.30.0.2", 8000, 10)
    assert (b.port_line(), b.ps_entry()) == ("8000-8009/tcp -> 0.0.0.0:8000-8009", "0.0.0.0:8000-8009->8000-8009/tcp")
    assert b.at(8005) == Binding("web01", "tcp", "0.0.0.0", 8005, "172.30.0.2", 8005)
    assert b != Binding("web01", "tcp", "0.0.0.0", 8000, "172.30.0.2", 8000)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["0.0.0.0", "127.0.0.1", "10.0.0.10", "::", "::1", "fd00::1"]),
                          st.sampled_from(["tcp", "udp", "sctp"]), st.integers(1, 200), st.integers(1, 12),
                          st.integers(1, 300)), max_size=12))
def test_the_order_with_ranges_is_docker_ports_natural_order(specs):
    table = Table()
    for host, proto, port, count, container in specs:
        b = (Binding("e", proto, host, port, "172.30.0.2" if ":" not in host else "fd00:30::2", port, count)
             if count > 1 else
             Binding("e", proto, host, port, "172.30.0.2" if ":" not in host else "fd00:30::2", container))
        if table.clash(b) is None:
            table._insert(b)
    expanded = [p for b in table.items() if isinstance(b, Binding) for p in b.expand()]
    assert [b.port_line() for b in table.bindings()] == [b.port_line() for b in sorted(expanded, key=Binding.sort_key)]


def test_one_container_port_of_a_range_is_found_without_expanding_it():
    table = Table()
    publish(table, ep(), ["1-65535:1-65535/udp", "8080:80"])
    assert [b.port_line() for b in table.on("web01", 5353, "udp")] == ["5353/udp -> 0.0.0.0:5353",
                                                                      "5353/udp -> [::]:5353"]
    assert [str(b) for b in table.on("web01", 80, "tcp")] == ["0.0.0.0:8080", "[::]:8080"]
    assert table.on("web01", 81, "tcp") == [] and table.on("db01", 80, "tcp") == []


def test_the_bindings_of_a_range_are_a_sequence_equal_to_the_list():
    table = Table()
    made = publish(table, ep(ipv6=False), ["100-102:100-102"])
    singles = [Binding("web01", "tcp", "0.0.0.0", p, "172.30.0.2", p) for p in (100, 101, 102)]
    assert len(made) == 3 and made == singles and list(made) == singles and made[-1] == singles[-1]
    assert table.of("web01") == singles == table.bindings()
    made.sort(key=Binding.sort_key)
    assert made == singles
    made.sort(key=lambda b: -b.host_port)
    assert made == singles[::-1]


def test_ps_merges_a_range_with_its_neighbours_as_docker_does():
    from natmap.docker_format import ps_ports

    table = Table()
    publish(table, ep(ipv6=False), ["10000-20000:10000-20000/udp", "20001:20001/udp", "20003:20003/udp"])
    held = [b for b in table.items() if isinstance(b, Binding)]
    assert ps_ports(held) == "0.0.0.0:10000-20001->10000-20001/udp, 0.0.0.0:20003->20003/udp"
    assert ps_ports(held) == ps_ports(table.bindings())


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["", "127.0.0.1:"]), st.integers(1, 40), st.integers(0, 4),
                          st.booleans(), st.sampled_from(["tcp", "udp"])), max_size=8),
       st.lists(st.tuples(st.integers(1, 50), st.sampled_from(["tcp", "udp"])), max_size=4))
def test_ps_shows_a_range_exactly_as_its_single_ports(specs, exposed):
    """docker/cli's DisplayablePorts of the ranges as held equals that of their ports one by one."""
    from natmap.docker_format import ps_ports

    table = Table()
    endpoint = ep(ipv6=False)
    for address, first, extra, shift, proto in specs:
        # a single port shifted on the host, or a same-port run
        host = f"{first + 100 if shift and not extra else first}" + (f"-{first + extra}" if extra else "")
        try:
            publish(table, endpoint, [f"{address}{host}:{first}" + (f"-{first + extra}" if extra else "") + f"/{proto}"])
        except ConflictError:
            continue
    exposed_specs = [f"{port}/{proto}" for port, proto in exposed]
    held = table.held_bindings()
    assert ps_ports(held, exposed_specs) == ps_ports(list(table.bindings()), exposed_specs)


def test_a_range_meets_other_tables_and_host_sockets_on_any_of_its_ports():
    """natmap.guest's checks see every port of a same-port range, unexpanded."""
    from natmap import guest
    from natmap.host import Listener
    from natmap.spec import Protocol

    other = Table()
    publish(other, ep("db01", 3, ipv6=False), ["8050:8050"])
    ranges = Table()
    publish(ranges, ep(ipv6=False), ["8000-8099:8000-8099"])
    (held,) = ranges.held_bindings()
    with pytest.raises(ConflictError, match="0.0.0.0:8050/tcp of endpoint 'db01' in table b"):
        guest.check_other_tables([held], [("table b", other)])
    with pytest.raises(ConflictError, match="0.0.0.0:8000-8099/tcp of endpoint 'web01' in table a"):
        guest.check_other_tables(other.held_bindings(), [("table a", ranges)])
    assert guest.mapped_ports([("table a", ranges)], Protocol.TCP) == frozenset(range(8000, 8100))
    socket = Listener(Protocol.TCP, ipaddress.IPv4Address("127.0.0.1"), 8077, False, 0)
    with pytest.raises(ConflictError, match=r"0.0.0.0:8077/tcp for endpoint 'web01': a host socket"):
        guest.check_listeners([held], lambda proto: [socket], lambda inode: None)
    assert guest.shadowed([held], lambda proto: [socket], lambda inode: None) == [
        "port web01 8077/tcp -> 0.0.0.0:8077 shadows the host socket on 127.0.0.1:8077/tcp"]


# --- assigned ports that happen to match: one range too ----------------------------------------

def exposing(*expose, name="web01", n=2, ipv6=True):
    return Endpoint(name, f"172.30.0.{n}", "natmap0", ipv6=f"fd00:30::{n}" if ipv6 else None, expose=expose)


def held(table):
    return sorted((str(b), b.container_port, b.count) for b in table.held_bindings())


def test_assigned_ports_equal_to_their_container_ports_are_held_as_one_range():
    from natmap.model import PortPool
    from natmap.spec import PortRange

    table = Table()
    pool = PortPool(ports=PortRange(40000, 40010))
    made = table.publish(exposing("40000-40003/tcp", "40005/tcp", "80/udp"), [], publish_all=True,
                         pool=pool, bridge=BRIDGE)
    assert held(table) == [("0.0.0.0:40000", 80, 1), ("0.0.0.0:40000-40003", 40000, 4),
                           ("0.0.0.0:40004", 40005, 1), ("[::]:40000", 80, 1),
                           ("[::]:40000-40003", 40000, 4), ("[::]:40004", 40005, 1)]
    # What docker port and the caller see is one line a port, as before.
    assert [b.port_line() for b in made] == [b.port_line() for b in table.of("web01")] == [
        "80/udp -> 0.0.0.0:40000", "80/udp -> [::]:40000",
        *(f"{p}/tcp -> {h}:{p}" for p in range(40000, 40004) for h in ("0.0.0.0", "[::]")),
        "40005/tcp -> 0.0.0.0:40004", "40005/tcp -> [::]:40004"]
    # The journal holds the ranges, not their ports: one kernel element each.
    assert sorted(str(b) for b in table.change().add if isinstance(b, Binding)) == sorted(
        s for s, _, _ in held(table))


def test_an_assigned_run_is_merged_from_a_spec_without_host_ports_too_and_rolled_back_whole():
    from natmap.model import PortPool
    from natmap.spec import PortRange

    table = Table()
    publish(table, ep("db01", 3, ipv6=False), ["40002:5432"])
    table.commit()
    made = table.publish(ep(ipv6=False), [PortSpec.parse("40000-40005")], pool=PortPool(ports=PortRange(40000, 40010)),
                         bridge=BRIDGE)
    # 40002 is taken: 40000-40001 match, then 40003-40006 for 40002-40005 do not.
    assert [(b.host_port, b.container_port) for b in made] == [(40000, 40000), (40001, 40001), (40003, 40002),
                                                                (40004, 40003), (40005, 40004), (40006, 40005)]
    assert ("0.0.0.0:40000-40001", 40000, 2) in held(table)
    table.rollback()
    assert held(table) == [("0.0.0.0:40002", 5432, 1)]


def test_a_merged_run_conflicts_unpublishes_and_is_assigned_again_like_its_ports():
    from natmap.model import PortPool, preferred
    from natmap.spec import PortRange

    table = Table()
    pool = PortPool(ports=PortRange(40000, 40010))
    web = exposing("40000-40003/tcp", ipv6=False)
    table.publish(web, [], publish_all=True, pool=pool, bridge=BRIDGE)
    with pytest.raises(ConflictError, match=r"0\.0\.0\.0:40002/tcp.*'db01'.*0\.0\.0\.0:40000-40003/tcp.*'web01'"):
        publish(table, ep("db01", 3, ipv6=False), ["40002:80"])
    # -P again: its ports are published already, nothing changes and nothing conflicts.
    table.commit()
    assert len(table.publish(web, [], publish_all=True, pool=pool, bridge=BRIDGE)) == 0
    assert not table.change()
    # Re-applied with the ports it had (Config does so): the same ports, even after the cursor moved on.
    before = table.bindings_of("web01")
    assert [(b.host_port, b.count) for b in before] == [(40000, 4)]
    removed = table.unpublish("web01")
    assert removed == before
    made = table.publish(web, [], publish_all=True, pool=pool, bridge=BRIDGE, prefer=preferred(before))
    assert [b.host_port for b in made] == [40000, 40001, 40002, 40003]
    assert [(b.host_port, b.count) for b in table.bindings_of("web01")] == [(40000, 4)]


def test_explicit_single_same_port_specs_stay_single():
    """Only ports natmap chose are merged: `-p 5000:5000` published again must find
    its own binding, the same, not a range it became part of."""
    table = Table()
    publish(table, ep(ipv6=False), ["5000:5000", "5001:5001"])
    assert held(table) == [("0.0.0.0:5000", 5000, 1), ("0.0.0.0:5001", 5001, 1)]
    table.commit()
    publish(table, ep(ipv6=False), ["5000:5000"])
    assert not table.change()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(40000, 40015), st.integers(0, 4), st.sampled_from(["tcp", "udp"])), max_size=5),
       st.lists(st.integers(40000, 40020), max_size=4))
def test_merged_assigned_runs_hold_exactly_the_ports_assigned(exposed, taken):
    """Whatever is exposed and whatever is taken already: the table holds the
    same ports, one line each, as the bindings made say; ranges only where
    the host port is the container port; a rollback leaves what was there."""
    from natmap.model import PortPool
    from natmap.spec import PortRange

    table = Table()
    for i, port in enumerate(sorted(set(taken))):
        publish(table, ep(f"db{i}", 10 + i, ipv6=False), [f"{port}:5432"])
    table.commit()
    before = held(table)
    specs = [f"{first}-{first + extra}/{proto}" if extra else f"{first}/{proto}" for first, extra, proto in exposed]
    made = table.publish(exposing(*specs), [], publish_all=True, pool=PortPool(ports=PortRange(40000, 40060)),
                         bridge=BRIDGE)
    lines = sorted(b.port_line() for b in made)
    assert lines == sorted(b.port_line() for b in table.of("web01"))
    assert len(set(lines)) == len(lines) == len({(b.host_ip, b.proto, b.host_port) for b in made})
    assert all(b.host_port == b.container_port for b in table.bindings_of("web01") if b.count > 1)
    table.rollback()
    assert held(table) == before

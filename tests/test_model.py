"""The table model: resolution, port assignment, conflicts, journal. No root, no kernel."""

import copy
import dataclasses
import ipaddress
import pickle

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from natmap import Binding, ConflictError, Endpoint, PortRange, PortSpec, SpecError
from natmap.model import (Bridge, PortPool, RoutedBinding, Table, _InDockerOrder, _one_to_one, docker_order,
                          natural_key)

BRIDGE = Bridge("natmap0", (ipaddress.ip_network("172.30.0.0/24"), ipaddress.ip_network("fd00:30::/64")))
POOL = PortPool(PortRange(32768, 32800))


def web(name="web01", n=2, ipv6=True, expose=()):
    return Endpoint(name, f"172.30.0.{n}", "natmap0", ipv6=f"fd00:30::{n}" if ipv6 else None,
                    expose=expose)


def publish(table, endpoint, specs, **kw):
    kw.setdefault("pool", POOL)
    return table.publish(endpoint, [PortSpec.parse(s) for s in specs], bridge=BRIDGE, **kw)


def lines(bindings):
    return [b.port_line() for b in sorted(bindings, key=Binding.sort_key)]


def test_no_host_ip_binds_both_families_with_the_same_port():
    table = Table()
    made = publish(table, web(), ["8080:5000", "5000"])
    assert lines(made) == [
        "5000/tcp -> 0.0.0.0:8080", "5000/tcp -> 0.0.0.0:32768",
        "5000/tcp -> [::]:8080", "5000/tcp -> [::]:32768"]


def test_an_endpoint_without_ipv6_gets_ipv4_only():
    made = publish(Table(), web(ipv6=False), ["8080:5000"])
    assert lines(made) == ["5000/tcp -> 0.0.0.0:8080"]


def test_an_explicit_host_ip_gives_one_family():
    table = Table()
    assert lines(publish(table, web(), ["127.0.0.1:5001:5000"])) == ["5000/tcp -> 127.0.0.1:5001"]
    assert lines(publish(table, web(), ["[::1]:5001:5000"])) == ["5000/tcp -> [::1]:5001"]


def test_an_ipv6_host_ip_needs_an_ipv6_endpoint():
    with pytest.raises(SpecError, match="no IPv6 address"):
        publish(Table(), web(ipv6=False), ["[::1]:5001:5000"])


def test_bindings_carry_the_container_side():
    (b,) = publish(Table(), web(ipv6=False), ["8080:5000/udp"])
    assert (b.endpoint, b.container_ip, b.container_port, b.proto) == (
        "web01", ipaddress.ip_address("172.30.0.2"), 5000, "udp")


def test_assigned_ports_skip_reserved_listening_and_mapped_ports():
    table = Table()
    publish(table, web("db01", 3), ["32768:5432"])
    pool = PortPool(PortRange(32768, 32800), reserved=frozenset({32769}),
                    listening=lambda proto: frozenset({32770}) if proto == "tcp" else frozenset())
    made = publish(table, web(), ["5000", "5001/udp"], pool=pool)
    assert lines(made) == ["5000/tcp -> 0.0.0.0:32771", "5000/tcp -> [::]:32771",
                           "5001/udp -> 0.0.0.0:32768", "5001/udp -> [::]:32768"]


def test_an_assigned_port_is_free_in_both_families():
    table = Table()
    publish(table, web("other", 9), ["[::]:32768:80"])  # taken for IPv6 only
    made = publish(table, web(), ["5000"])
    assert {b.host_port for b in made} == {32769}


def test_a_host_range_with_one_container_port_picks_one_free_port():
    table = Table()
    publish(table, web("db01", 3), ["8000:5432"])
    made = publish(table, web(), ["8000-8010:80"])
    assert lines(made) == ["80/tcp -> 0.0.0.0:8001", "80/tcp -> [::]:8001"]


def test_ranges_map_one_to_one():
    made = publish(Table(), web(ipv6=False), ["9000-9002:7000-7002/udp"])
    assert [(b.host_port, b.container_port) for b in made] == [(9000, 7000), (9001, 7001), (9002, 7002)]


def test_running_out_of_ports_names_the_range():
    table = Table()
    publish(table, web("db01", 3), ["8000-8001:5432-5433"])
    with pytest.raises(ConflictError, match="no free host port for tcp in 8000-8001"):
        publish(table, web(), ["8000-8001:80"])


@pytest.mark.parametrize("first, second", [
    ("8080:80", "127.0.0.1:8080:80"),
    ("127.0.0.1:8080:80", "8080:80"),
    ("127.0.0.1:8080:80", "127.0.0.1:8080:81"),
    ("[::]:8080:80", "[::1]:8080:80"),
])
def test_overlapping_host_addresses_conflict_and_name_both_owners(first, second):
    table = Table()
    publish(table, web("db01", 3), [first])
    with pytest.raises(ConflictError) as caught:
        publish(table, web(), [second])
    assert "'web01'" in str(caught.value) and "'db01'" in str(caught.value)


@pytest.mark.parametrize("first, second", [
    ("8080:80", "8080:80/udp"),
    ("127.0.0.1:8080:80", "127.0.0.2:8080:80"),
    ("0.0.0.0:8080:80", "[::]:8080:80"),
])
def test_disjoint_bindings_coexist(first, second):
    table = Table()
    made = publish(table, web("db01", 3), [first]) + publish(table, web(), [second])
    assert len(table) == len(made) >= 2


def test_publishing_the_same_binding_again_changes_nothing():
    table = Table()
    first = publish(table, web(), ["8080:80"])
    table.commit()
    again = publish(table, web(), ["8080:80"])
    assert again == first and not table.change()


def test_a_second_publish_for_the_same_endpoint_adds_bindings():
    table = Table()
    publish(table, web(ipv6=False), ["8080:80"])
    publish(table, web(ipv6=False), ["8443:443"])
    assert lines(table.of("web01")) == ["80/tcp -> 0.0.0.0:8080", "443/tcp -> 0.0.0.0:8443"]


def test_a_name_belongs_to_one_address():
    table = Table()
    publish(table, web("web01", 2), ["8080:80"])
    with pytest.raises(ConflictError, match="already published with address 172.30.0.2"):
        publish(table, web("web01", 5), ["9090:80"])


def test_an_address_belongs_to_one_name():
    table = Table()
    publish(table, web("web01", 2), ["8080:80"])
    with pytest.raises(ConflictError, match="already belongs to endpoint 'web01'"):
        publish(table, web("web02", 2), ["9090:80"])


def test_publish_all_assigns_exposed_ports_without_an_explicit_binding():
    table = Table()
    endpoint = web(ipv6=False, expose=["5000", "53/udp", "7000-7001"])
    made = publish(table, endpoint, ["8080:5000"], publish_all=True)
    assert lines(made) == ["53/udp -> 0.0.0.0:32768", "5000/tcp -> 0.0.0.0:8080",
                           "7000/tcp -> 0.0.0.0:32768", "7001/tcp -> 0.0.0.0:32769"]
    assert publish(table, endpoint, [], publish_all=True) == []


def test_an_endpoint_outside_its_bridge_is_refused():
    with pytest.raises(SpecError, match="in no subnet of bridge natmap0"):
        publish(Table(), Endpoint("web01", "10.9.9.9", "natmap0"), ["8080:80"])


def test_unpublish_removes_every_binding_of_the_endpoint():
    table = Table()
    publish(table, web(), ["8080:80", "127.0.0.1::81"])
    publish(table, web("db01", 3), ["5432"])
    removed = table.unpublish("web01")
    assert len(removed) == 3 and table.of("web01") == [] and len(table) == 2
    assert table.unpublish("nobody") == []


def test_change_is_the_net_difference_and_rollback_restores():
    table = Table()
    publish(table, web(), ["8080:80"])
    table.commit()
    before = table.bindings()
    publish(table, web("db01", 3), ["5432:5432"])
    table.unpublish("web01")
    change = table.change()
    assert {b.endpoint for b in change.added(Binding)} == {"db01"}
    assert {b.endpoint for b in change.deleted(Binding)} == {"web01"}
    table.rollback()
    assert table.bindings() == before and not table.change()


def test_added_then_removed_in_one_transaction_is_no_change():
    table = Table()
    table.bridges[BRIDGE.name] = BRIDGE
    publish(table, web(), ["8080:80"])
    table.unpublish("web01")
    assert not table.change()


def test_the_first_publish_on_a_bridge_adds_it_once():
    table = Table()
    publish(table, web(), ["8080:80"])
    publish(table, web("db01", 3), ["5432"])
    assert table.change().added(Bridge) == [BRIDGE]


def test_endpoint_values_are_checked():
    with pytest.raises(SpecError):
        Endpoint("web 01", "172.30.0.2", "natmap0")
    with pytest.raises(SpecError):
        Endpoint("web01", "fd00::2", "natmap0")
    with pytest.raises(SpecError):
        Endpoint("web01", "127.0.0.1", "natmap0")
    with pytest.raises(SpecError):
        Endpoint("web01", "172.30.0.2", "a-very-long-bridge-name")
    with pytest.raises(SpecError):
        Endpoint("web01", "172.30.0.2", "natmap0", expose=["80:80"])


# --- a model check: whatever is published and unpublished, the table stays consistent

ops = st.lists(st.tuples(
    st.sampled_from(["publish", "unpublish"]),
    st.integers(min_value=2, max_value=6),                         # which endpoint
    st.sampled_from(["", "127.0.0.1:", "0.0.0.0:", "[::]:", "[::1]:"]),
    st.integers(min_value=32768, max_value=32772),                 # host port
    st.sampled_from(["tcp", "udp"]),
), max_size=40)


@given(ops)
@settings(max_examples=200)
def test_bindings_never_overlap_whatever_the_sequence(sequence):
    table = Table()
    for verb, n, ip, port, proto in sequence:
        if verb == "unpublish":
            table.unpublish(f"ep{n}")
            table.commit()
            continue
        try:
            publish(table, web(f"ep{n}", n), [f"{ip}{port}:80/{proto}"])
        except ConflictError:
            table.rollback()  # as a failed transaction does
        else:
            table.commit()
    bindings = table.bindings()
    for i, a in enumerate(bindings):
        for b in bindings[i + 1:]:
            same_port = (a.version, a.proto, a.host_port) == (b.version, b.proto, b.host_port)
            assert not (same_port and (a.host_ip == b.host_ip or a.host_ip.is_unspecified
                                       or b.host_ip.is_unspecified)), (a, b)
    rebuilt = Table(bindings)
    assert rebuilt.bindings() == bindings
    assert sorted(sum((table.of(e) for e in table.endpoints()), []), key=Binding.sort_key) == bindings


@given(st.sampled_from(["0.0.0.0", "127.0.0.1", "::", "::1"]), st.sampled_from(["tcp", "udp", "sctp"]),
       st.lists(st.tuples(st.integers(1, 65535), st.integers(1, 65535)), min_size=1, max_size=20),
       st.sampled_from([Binding, RoutedBinding]))
def test_bindings_made_in_bulk_equal_bindings_made_one_by_one(host_ip, proto, pairs, kind):
    container_ip = "172.30.0.2" if ":" not in host_ip else "fd00:30::2"
    first = kind("web01", proto, host_ip, 1, container_ip, 1)
    one_by_one = [kind("web01", proto, host_ip, h, container_ip, c) for h, c in pairs]
    bulk = first._on_ports(pairs)  # made as model._Unfrozen, then turned into kind
    assert bulk == one_by_one and all(type(b) is kind for b in bulk)
    assert [(b.key, hash(b), repr(b)) for b in bulk] == [(b.key, hash(b), repr(b)) for b in one_by_one]
    assert [pickle.loads(pickle.dumps(b)) for b in bulk] == [copy.copy(b) for b in bulk] == one_by_one
    assert dataclasses.replace(bulk[0], host_port=7) == dataclasses.replace(one_by_one[0], host_port=7)
    with pytest.raises(AttributeError):  # still frozen
        bulk[0].host_port = 2


@pytest.mark.parametrize("specs, message", [
    (["9000:80", "9000:81"], "0.0.0.0:9000/tcp of endpoint 'web01' conflicts with itself: it cannot forward "
                             "to both container port 80 and 81"),
    (["9000:80", "127.0.0.1:9000:80"], "127.0.0.1:9000/tcp of endpoint 'web01' conflicts with itself: "
                                       "0.0.0.0:9000 already catches its packets"),
])
def test_a_self_conflict_names_the_endpoint_once(specs, message):
    with pytest.raises(ConflictError) as raised:
        publish(Table(), web(ipv6=False), specs)
    assert str(raised.value) == message


def test_an_ipv6_only_endpoint_publishes_ipv6_only():
    """An endpoint without an IPv4 address (a CNI result of an IPv6-only
    network): no host IP binds the IPv6 wildcard only; an IPv4 host IP is an
    error naming the missing family; an endpoint needs one address at least."""
    v6 = Endpoint("web01", None, "natmap0", ipv6="fd00:30::2")
    assert v6.ip is None and v6.address(4) is None
    table = Table()
    made = publish(table, v6, ["8080:80", "[::1]:8081:80"])
    assert sorted((str(b.host_ip), b.host_port, str(b.container_ip)) for b in made) == [
        ("::", 8080, "fd00:30::2"), ("::1", 8081, "fd00:30::2")]
    with pytest.raises(SpecError, match="no IPv4 address"):
        publish(table, v6, ["127.0.0.1:8082:80"])
    with pytest.raises(SpecError, match="needs an address"):
        Endpoint("web02", None, "natmap0")


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["web", "db-1"]), st.sampled_from(["tcp", "udp", "sctp"]), st.booleans(), st.booleans(),
       st.integers(1, 65535), st.integers(1, 65535))
def test_a_single_port_binding_made_the_fast_way_equals_one_made_by_the_constructor(
        name, proto, ipv4, ipv6, host_port, container_port):
    """Table's one-to-one loop (``8080:80``) builds Binding values without
    __post_init__: they must be the constructor's values, hash and key included."""
    from natmap.model import Table
    from natmap.spec import PortSpec

    endpoint = Endpoint(name, "172.30.0.2" if ipv4 or not ipv6 else None, "natmap0",
                        ipv6="fd00:30::2" if ipv6 else None)
    spec = PortSpec.parse(f"{host_port}:{container_port}/{proto}")
    fast = Table().publish(endpoint, [spec])
    made = [Binding(name, proto, "0.0.0.0" if b.version == 4 else "::", host_port, b.container_ip, container_port)
            for b in fast]
    assert [b.version for b in fast] == [4] * (ipv4 or not ipv6) + [6] * ipv6
    assert fast == made and [hash(b) for b in fast] == [hash(b) for b in made]
    assert [b.key for b in fast] == [b.key for b in made] and repr(fast) == repr(made)


# --- the one-to-one loop (Table._publish_ones: 8080:80, 8000-8001:80-81) does what the general path does

_spec_parts = st.tuples(st.sampled_from(["", "", "127.0.0.1:", "[::1]:"]),
                        st.sampled_from(["8000", "8001", "8003", "8000-8001", "8001-8003", "80-81", "81"]),
                        st.sampled_from(["80", "81", "80-81", "8000-8001", "80-82"]),
                        st.sampled_from(["tcp", "udp"]))


@st.composite
def _single_run(draw):
    """Single specs that continue each other (``7999:79 8000:80 8001:81``: one run
    of the one-to-one loop), over ports the other specs use too (conflicts mid-run)."""
    host, container, count = draw(st.integers(7998, 8003)), draw(st.integers(78, 83)), draw(st.integers(1, 5))
    proto = draw(st.sampled_from(["tcp", "udp"]))
    return [("", str(host + i), str(container + i), proto) for i in range(count)]


_steps = st.lists(st.tuples(
    st.sampled_from(["publish", "publish", "unpublish", "rollback"]),
    st.integers(min_value=2, max_value=4),                          # which endpoint
    st.booleans(),                                                  # with IPv6
    st.lists(st.one_of(_spec_parts.map(lambda parts: [parts]), _single_run()), max_size=4)
    .map(lambda groups: [parts for group in groups for parts in group]),
), max_size=25)


def _general():
    """A Table whose publish never takes the one-to-one loop."""
    class General(Table):
        def _publish_ones(self, endpoint, specs):
            if not all(map(_one_to_one, specs)):
                return None
            made = []
            for spec in specs:
                made += self._publish_spec(endpoint, spec, POOL, {})
            return made
    return General()


def _outcome(table, verb, endpoint, specs):
    try:
        if verb == "unpublish":
            return sorted(map(repr, table.unpublish(endpoint.name)))
        if verb == "rollback":
            table.rollback()
            return None
        made = publish(table, endpoint, specs)
        if isinstance(made, _InDockerOrder):  # docker_order takes it as it is: it must be in that order
            assert made == sorted(made, key=lambda b: natural_key(b.port_line())) == docker_order(made)
        return [repr(b) for b in made]
    except (ConflictError, SpecError) as exc:
        return f"{type(exc).__name__}: {exc}"


@given(_steps)
@example([("publish", 2, False, [("", "8003", "80", "tcp")]),  # a single port of (4, tcp) first, then
          ("publish", 2, False, [("", "8000-8001", "8000-8001", "tcp")]),  # a same-port range, then
          ("publish", 2, False, [("", "8001", "81", "tcp")])])  # a port inside it: a conflict
@example([("publish", 2, True, [("", "8000", "80", "tcp"), ("", "8001", "81", "tcp")]),  # dual-stack run, then
          ("publish", 3, False, [("", "7999", "79", "tcp"), ("", "8000", "80", "tcp")]),  # taken mid-run, then
          ("rollback", 2, False, []), ("publish", 3, False, [("", "7999", "79", "tcp"), ("", "8000", "80", "tcp")])])
@example([("publish", 2, False, [("127.0.0.1:", "8001", "81", "tcp")]),  # a specific address, then a run over it
          ("publish", 2, False, [("", "8000", "80", "tcp"), ("", "8001", "81", "tcp"), ("", "8002", "82", "tcp")]),
          ("publish", 2, True, [("", "8005", "85", "udp"), ("", "8006", "86", "udp"),
                                ("", "8007-8008", "87-88", "udp")])])
@example([("publish", 4, True, [("", "8003", "80", "tcp")]),  # IPv6 of tcp in use, then an IPv4-only endpoint
          ("publish", 2, False, [("", "8000", "80", "tcp")]),  # whose run, with IPv6 now, finds one of it there
          ("publish", 2, True, [("", "8000", "80", "tcp"), ("", "8001", "81", "tcp")])])
@settings(max_examples=400, deadline=None)
def test_the_one_to_one_loop_leaves_the_table_the_general_path_leaves(sequence):
    fast, general = Table(), _general()
    for verb, n, ipv6, parts in sequence:
        endpoint = web(f"ep{n}", n, ipv6=ipv6 and n != 3)  # ep3 never has IPv6: one name, one address set
        specs = [f"{ip}{host}:{container}/{proto}" for ip, host, container, proto in parts]
        assert _outcome(fast, verb, endpoint, specs) == _outcome(general, verb, endpoint, specs)
        assert fast.items() == general.items()
        assert fast.change() == general.change()
        assert fast.bindings() == general.bindings()
        for key in ("_by_key", "_specific", "_ranges", "_by_endpoint", "_by_container", "_addresses_of"):
            assert getattr(fast, key) == getattr(general, key), key
        assert {k: v for k, v in fast._ports.items() if v} == {k: v for k, v in general._ports.items() if v}


@given(st.lists(st.tuples(st.sampled_from(["0.0.0.0", "10.0.0.1", "::", "fd00::1"]), st.sampled_from(["tcp", "udp"]),
                          st.integers(1, 65535), st.integers(1, 65535)), max_size=30),
       st.booleans())
@settings(max_examples=300, deadline=None)
def test_docker_order_is_the_natural_sort_of_docker_ports_lines(parts, one_address):
    """docker_order sorts one address and protocol by port numbers alone: the same order."""
    from natmap.model import docker_order

    if one_address:
        parts = [("0.0.0.0", "tcp", host, container) for _, _, host, container in parts]
    bindings = list({(ip, proto, host): Binding("web", proto, ip, host, "fd00:30::2" if ":" in ip else "172.30.0.2",
                                                container)
                     for ip, proto, host, container in parts}.values())  # one binding a key, as in a table
    assert docker_order(bindings) == sorted(bindings, key=lambda b: natural_key(b.port_line()))


@given(st.booleans(), st.lists(st.tuples(st.integers(1, 300), st.integers(1, 3), st.sampled_from(["tcp", "udp"]),
                                        st.booleans()), max_size=12))
@settings(max_examples=300, deadline=None)
def test_a_publish_in_docker_port_order_is_not_sorted_again(ipv6, parts):
    """The one-to-one loop tells docker_order when what it made is in ``docker port``
    order already (rising container ports); docker_order then does not sort it:
    it must be the order the natural sort gives."""
    specs = []
    for i, (container, count, proto, merge) in enumerate(parts):
        host = 10000 + 10 * i
        if merge and specs:  # continuing the last spec: one run of the loop
            last = PortSpec.parse(specs[-1])
            host, container = last.host_ports.end + 1, last.container_ports.end + 1
        if container + count - 1 > 65535 or host == container:
            continue
        ports = f"{host}:{container}" if count == 1 else f"{host}-{host + count - 1}:{container}-{container + count - 1}"
        specs.append(f"{ports}/{proto}")
    made = publish(Table(), web(ipv6=ipv6), specs)
    assert docker_order(made) == sorted(made, key=lambda b: natural_key(b.port_line()))
    assert type(docker_order(made)) is list


def test_a_loop_of_single_ports_is_in_docker_port_order_as_made():
    made = publish(Table(), web(ipv6=True), [f"{8000 + i}:{80 + i}" for i in range(5)])
    assert isinstance(made, _InDockerOrder)  # docker_order takes it as it is
    assert [b.port_line() for b in made] == [f"{80 + i}/tcp -> {ip}:{8000 + i}" for i in range(5)
                                             for ip in ("0.0.0.0", "[::]")]
    assert not isinstance(publish(Table(), web(), ["8000:81", "8001:80"]), _InDockerOrder)


def test_specs_given_as_an_iterator_are_all_published():
    table = Table()
    made = table.publish(web(), (PortSpec.parse(s) for s in ["8080:80", "8081:81"]), bridge=BRIDGE, pool=POOL)
    assert sorted(b.host_port for b in made) == [8080, 8080, 8081, 8081]


# --- gateway modes: which bindings a mode change takes, in which form -----------------


def test_a_gateway_mode_takes_the_bindings_of_the_bridge_they_were_published_on():
    from natmap import Gateway, RoutedBinding

    table = Table()
    publish(table, web(), ["8080:5000", "127.0.0.1:8081:5001"])
    moved = Bridge("natmap0", (ipaddress.ip_network("10.77.0.0/24"),))  # the host's subnets now: none of web01's
    table.set_gateway(Gateway("natmap0", "routed"), moved)
    assert sorted((type(b).__name__, b.port_line()) for b in table.of("web01")) == [
        ("Binding", "5001/tcp -> 127.0.0.1:8081"),                 # loopback only: kept mapped
        ("RoutedBinding", "5000/tcp -> 0.0.0.0:8080"), ("RoutedBinding", "5000/tcp -> [::]:8080")]
    fresh = Table(table.items())  # read back (from the store or the kernel): the bridge's subnets as recorded
    fresh.set_gateway(Gateway("natmap0", "nat"))
    assert not any(isinstance(b, RoutedBinding) for b in fresh.bindings())


def test_which_bridge_an_endpoint_is_on_is_a_change_of_its_own_committed_or_rolled_back():
    table = Table(bridges_of={"db01": "natmap1"})  # as the store recorded it
    assert table.bridge_of("db01") == "natmap1" and table.placed() == {}
    publish(table, web(), ["8080:5000"])
    assert table.placed() == {"web01": "natmap0"}
    table.rollback()
    assert table.bridge_of("web01") is None and table.placed() == {}
    publish(table, web(), ["8080:5000"])
    table.commit()
    assert table.placed() == {} and table.bridge_of("web01") == "natmap0"
    table.unpublish("web01")
    assert table.placed() == {"web01": None}
    publish(table, web(), ["8080:5000"])  # gone and back on the same bridge: nothing to record
    assert table.placed() == {}


def test_a_readdressed_bridge_is_recorded_anew_and_a_new_subnet_still_may_not_overlap():
    table = Table()
    publish(table, web(), ["8080:5000"])
    table.add_bridge(Bridge("br2", (ipaddress.ip_network("10.9.0.0/24"),)))
    table.commit()
    moved = Bridge("natmap0", (ipaddress.ip_network("10.8.0.0/24"),))
    table.add_bridge(moved)
    assert table.bridges["natmap0"] == moved and (table.change().add, table.change().delete) == ((moved,), (BRIDGE,))
    table.commit()
    with pytest.raises(SpecError, match=r"10\.9\.0\.0/16 of bridge natmap0 overlaps bridge br2's"):
        table.add_bridge(Bridge("natmap0", (ipaddress.ip_network("10.9.0.0/16"),)))
    assert table.bridges["natmap0"] == moved and not table.change()


def test_a_bridge_whose_subnet_overlaps_another_is_refused_and_nothing_changes():
    from natmap import Gateway

    table = Table()
    publish(table, web(), ["8080:5000"])
    table.commit()
    with pytest.raises(SpecError, match=r"172\.30\.0\.0/16 of bridge br2 overlaps bridge natmap0's"):
        table.add_bridge(Bridge("br2", (ipaddress.ip_network("172.30.0.0/16"),)))
    assert not table.change().add and "br2" not in table.bridges
    table.set_gateway(Gateway("br2", "routed"))  # not a bridge natmap knows: web01 is natmap0's
    assert [type(b) for b in table.bindings()] == [Binding, Binding]


def test_misheld_names_bindings_in_a_form_their_bridges_mode_does_not_want():
    from natmap import Gateway, RoutedBinding
    from natmap.model import misheld

    table = Table()
    publish(table, web(), ["8080:5000", "127.0.0.1:8081:5001"])
    items = table.items()
    assert misheld(items) == []
    assert misheld(items | {Gateway("natmap0", "routed")}) == [
        "port web01 5000/tcp -> 0.0.0.0:8080 is held mapped on bridge natmap0 in IPv4 gateway mode routed "
        "(`natmap gateway natmap0 --mode routed` holds it as the mode wants)",
        "port web01 5000/tcp -> [::]:8080 is held mapped on bridge natmap0 in IPv6 gateway mode routed "
        "(`natmap gateway natmap0 --mode routed` holds it as the mode wants)"]
    assert misheld(items | {Gateway("natmap0", mode_ipv6="routed")}) == [  # IPv4 is nat: only IPv6's
        "port web01 5000/tcp -> [::]:8080 is held mapped on bridge natmap0 in IPv6 gateway mode routed "
        "(`natmap gateway natmap0 --mode-ipv4 nat --mode-ipv6 routed` holds it as the mode wants)"]
    routed_loopback = RoutedBinding.of(next(b for b in items if isinstance(b, Binding) and b.host_ip.is_loopback))
    assert len(misheld([*items, routed_loopback, Gateway("natmap0", "routed")])) == 3  # loopback: never routed


def test_two_routed_endpoints_conflict_on_the_host_port_and_the_message_says_why():
    """Routed mode maps no host port, yet the host port stays the binding's key
    (docs/kernel.md): a second endpoint with it conflicts, and is told so."""
    from natmap import Gateway

    table = Table()
    table.set_gateway(Gateway("natmap0", "routed"))
    publish(table, web(), ["8080:5000"])
    with pytest.raises(ConflictError) as raised:
        publish(table, web("web02", 3), ["8080:5000"])
    assert "of endpoint 'web01'" in str(raised.value)
    assert "routed: the host port is not mapped but still identifies the binding" in str(raised.value)
    other = Table()
    publish(other, web(), ["8080:5000"])
    with pytest.raises(ConflictError) as raised:
        publish(other, web("web02", 3), ["8080:5000"])
    assert "routed" not in str(raised.value)  # nat mode: the port is mapped, no note


def _state(table):
    """Everything a publish may change, as comparable values (copies)."""
    import copy

    return copy.deepcopy((table.items(), table.change(), table._bridge_of, table._placed, table._next_port,
                          table._by_key, table._specific, table._by_container, table._addresses_of,
                          table._by_endpoint, {k: v for k, v in table._ports.items() if v}, table._ranges))


@given(_steps, st.booleans())
@example([("publish", 2, False, [("", "8000", "80", "tcp")]),
          ("publish", 3, False, [("", "8001", "81", "tcp"), ("", "8000", "80", "tcp")])], False)
@settings(max_examples=300, deadline=None)
def test_a_publish_that_raises_leaves_the_table_as_it_was(sequence, publish_all):
    """A call that raises changed nothing, its earlier specs' bindings included
    (the attacker trial: the caller caught the error and the transaction applied them)."""
    table = Table()
    for verb, n, ipv6, parts in sequence:
        endpoint = web(f"ep{n}", n, ipv6=ipv6 and n != 3, expose=("32770", "8001/udp"))
        specs = [f"{ip}{host}:{container}/{proto}" for ip, host, container, proto in parts]
        if verb != "publish":
            _outcome(table, verb, endpoint, specs)
            continue
        before = _state(table)
        try:
            publish(table, endpoint, specs, publish_all=publish_all)
        except (ConflictError, SpecError):
            assert _state(table) == before


def test_assigned_ports_on_a_routed_bridge_merge_into_a_routed_range():
    """-P on a bridge in routed mode: the run of assigned ports equal to their
    container ports is one RoutedBinding range, never a mapped one (the second
    attacker trial: a plain Binding range was published, DNAT and all)."""
    from natmap.model import Gateway, RoutedBinding

    table = Table()
    table.set_gateway(Gateway("natmap0", "routed"))
    endpoint = web("web01", 2, ipv6=False, expose=("40000-40003",))
    made = publish(table, endpoint, [], publish_all=True, pool=PortPool(PortRange(40000, 40010)))
    held = table.held_bindings()
    assert [(type(b), b.host_port, b.count) for b in held] == [(RoutedBinding, 40000, 4)]
    assert {type(b) for b in made} == {RoutedBinding} and len(made) == 4

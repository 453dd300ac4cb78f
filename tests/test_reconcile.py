"""`apply` then `plan` is empty, whatever the file (issue 15, cases 1 and 2).

The engine's reconcile runs here on the table model, against an in-memory
"kernel" that keeps what a backend keeps: items, links as their flows (how
both backends store and read them back). tests/kernel/test_kernel_cli.py
holds the same property against the real kernel, with fewer examples.
"""

import ipaddress
import time

import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from natmap import Config, ConflictError, Link, SpecError
from natmap.links import links_from_flows
from natmap.model import Bridge, Change, PortPool, Table
from natmap.spec import PortRange

BRIDGE = Bridge("natmap0", (ipaddress.ip_network("172.30.0.0/16"), ipaddress.ip_network("fd00:30::/64")))
POOL = PortPool(PortRange(32768, 32800))  # small: assignments wrap and run into each other


class ModelKernel:
    """What a backend keeps of a table, and what it reads back."""

    def __init__(self):
        self.items = set()

    def apply(self, change: Change) -> None:
        self.items -= set(change.delete)
        self.items |= set(change.add)

    def read(self) -> Table:
        return Table(_read_back(item) for item in self.items)


def _read_back(item):
    if isinstance(item, Link):
        (link,) = links_from_flows({item.comment: item.flows()})
        return link
    return item


class ModelTransaction:
    """What Config.reconcile asks of natmap.Transaction, on a Table."""

    def __init__(self, table: Table):
        self._table = table

    def table(self):
        return self._table

    def publish(self, endpoint, specs, *, publish_all, prefer):
        return self._table.publish(endpoint, specs, publish_all=publish_all, pool=POOL, bridge=BRIDGE,
                                   prefer=prefer)

    def unpublish(self, name):
        return self._table.unpublish(name)

    def link(self, source, target, alias=None):
        return self._table.link(source, target, alias)

    def unlink(self, source, target):
        return self._table.unlink(source, target)

    def isolate(self, bridge):
        self._table.isolate(bridge)

    def unisolate(self, bridge):
        self._table.isolate(bridge, closed=False)


def apply(table: Table, config: Config, kernel: ModelKernel | None = None, *, dry: bool = False) -> Change:
    """NatMap.apply (or, dry, NatMap.plan) on the model, as the engine does it."""
    try:
        config.reconcile(ModelTransaction(table))
    except BaseException:
        table.rollback()
        raise
    change = table.change()
    if dry:
        table.rollback()
    else:
        table.commit()
        if kernel is not None:
            kernel.apply(change)
    return change


SPECS = st.sampled_from([
    "{c}", "::{c}", "127.0.0.1::{c}", "{h}:{c}", "127.0.0.1:{h}:{c}", "{c}/udp", "{h}:{c}/udp",
    "[::1]::{c}", "[::]:{h}:{c}", "{h}-{h2}:{c}", "{h}-{h3}:{c}-{c3}", "{c}-{c3}", "32790-32800:{c}",
])


@st.composite
def endpoint_tables(draw, index):
    ipv6 = draw(st.booleans())
    specs = []
    for form in draw(st.lists(SPECS, max_size=3)):
        if "[::" in form and not ipv6:
            continue
        c, h = draw(st.integers(1, 6)) * 1000, 10000 + draw(st.integers(0, 40)) * 10
        specs.append(form.format(c=c, c3=c + 2, h=h, h2=h + 5, h3=h + 2))
    table = {"ip": f"172.30.{index // 200}.{index % 200 + 2}", "bridge": "natmap0", "publish": specs,
             "expose": draw(st.lists(st.sampled_from(["7000", "7001/udp", "8000-8001"]), max_size=2)),
             "publish_all": draw(st.booleans())}
    if ipv6:
        table["ipv6"] = f"fd00:30::{index + 2:x}"
    return table


@st.composite
def configs(draw, max_endpoints=5):
    count = draw(st.integers(0, max_endpoints))
    endpoints = {f"ep{i}": draw(endpoint_tables(i)) for i in range(count)}
    names = sorted(endpoints)
    for name, table in endpoints.items():
        targets = [t for t in names if t != name and (endpoints[t]["publish"] or endpoints[t]["expose"])]
        chosen = draw(st.lists(st.sampled_from(targets), unique=True, max_size=2)) if targets else []
        table["links"] = [f"{t}:{t}alias" if draw(st.booleans()) else t for t in chosen]
    data = {"endpoints": endpoints}
    if draw(st.booleans()):
        data["bridges"] = {"natmap0": {"isolate": True}}
    return Config.from_dict(data)


def applied(config, table, kernel):
    try:
        return apply(table, config, kernel)
    except ConflictError:  # two specs of the file catch the same packets: the file is wrong, not natmap
        assume(False)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs(), configs())
def test_apply_then_plan_is_empty_for_every_file(before, config):
    kernel, table = ModelKernel(), Table()
    applied(before, table, kernel)
    applied(config, table, kernel)
    # The same process (the cached table, its port cursor moved) and a new one (read from the kernel).
    for looked_at in (table, kernel.read()):
        assert not apply(looked_at, config, dry=True)
        assert not apply(looked_at, config)
    assert kernel.read().items() == table.items()


@settings(max_examples=100, deadline=None)
@given(configs())
def test_plans_change_nothing_a_later_call_sees(config):
    dry_table, wet_table = Table(), Table()
    try:
        planned = apply(dry_table, config, dry=True)
    except ConflictError:
        assume(False)
    apply(dry_table, config, dry=True)  # twice: the second plan says the same as the first
    assert apply(dry_table, config, dry=True) == planned
    assert set(apply(dry_table, config).add) == set(planned.add) == set(apply(wet_table, config).add)


def test_an_ipv4_endpoint_linked_to_a_dual_stack_one_applies_once():
    config = Config.from_dict({"endpoints": {
        "web01": {"ip": "172.30.0.2", "ipv6": "fd00:30::2", "bridge": "natmap0", "publish": ["8080:80"]},
        "web02": {"ip": "172.30.0.3", "bridge": "natmap0", "links": ["web01:web"]}}})
    kernel, table = ModelKernel(), Table()
    apply(table, config, kernel)
    assert not apply(kernel.read(), config, dry=True)


def test_assigned_ports_of_one_container_port_stay_put():
    config = Config.from_dict({"endpoints": {"web01": {
        "ip": "172.30.0.2", "ipv6": "fd00:30::2", "bridge": "natmap0", "publish": ["::5000", "127.0.0.1::5000"]}}})
    kernel, table = ModelKernel(), Table()
    first = apply(table, config, kernel)
    assert sorted(b.host_port for b in first.add if hasattr(b, "host_port")) == [32768, 32768, 32769]
    assert not apply(kernel.read(), config)


def test_a_link_to_an_endpoint_without_ports_is_refused_before_anything_is_applied():
    config = Config.from_dict({"endpoints": {
        "db01": {"ip": "172.30.0.2", "bridge": "natmap0"},
        "web01": {"ip": "172.30.0.3", "bridge": "natmap0", "links": ["db01"]}}})
    with pytest.raises(SpecError, match="'db01' exposes no ports"):
        apply(Table(), config, dry=True)


def test_re_applying_10000_unchanged_endpoints_takes_under_half_a_second():
    endpoints = {f"ep{i}": {"ip": f"172.30.{i // 200}.{i % 200 + 2}", "bridge": "natmap0",
                            "publish": [f"{10000 + i}:80", "5000"]} for i in range(10000)}
    for i in range(0, 10000, 2):
        endpoints[f"ep{i}"]["links"] = [f"ep{i + 1}"]
    config = Config.from_dict({"endpoints": endpoints})
    table = Table()
    pool = POOL
    try:
        globals()["POOL"] = PortPool(PortRange(20000, 60999))
        apply(table, config)
        started = time.perf_counter()
        change = apply(table, config)
        took = time.perf_counter() - started
    finally:
        globals()["POOL"] = pool
    assert not change
    assert took < 0.5, f"{took:.2f} s"

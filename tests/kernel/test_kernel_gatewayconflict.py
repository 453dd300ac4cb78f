"""A bridge's gateway setting is the namespace's (as its host ports are): two
natmap tables on one bridge, of either backend, must agree on it. Setting
another mode or trust than a table holding the bridge has is a ConflictError
naming that table, and ``check()`` of each reports a disagreement it finds
(one made by a table that agreed and moved first, or by a table that came
onto a bridge already set)."""

import re

import pytest

import natmap
from natmap import ConflictError
from test_kernel_engine import web  # noqa: F401 (web01 on natmap0, serving)

PAIRS = [("nft", "iptables"), ("iptables", "nft")]


def _label(name, backend):
    return f"table inet {name} (nft)" if backend == "nft" else f"table {name} (iptables)"


@pytest.mark.parametrize(("first", "second"), PAIRS)
def test_a_mode_or_trust_another_table_holds_otherwise_is_refused(sandbox, web, first, second):
    with natmap.NatMap(netns=sandbox.host.name, backend=first) as nm, \
            natmap.NatMap("lab2", netns=sandbox.host.name, backend=second) as lab2:
        nm.publish(web.endpoint(), ["8080:5000"])  # natmap0 held in the default nat
        refused = re.escape(f"conflicts with {_label('natmap', first)}, which holds it in nat")
        with pytest.raises(ConflictError, match=refused):
            lab2.set_gateway(sandbox.bridge, mode_ipv4="routed")
        with pytest.raises(ConflictError, match=r"conflicts with .*, which holds it in nat"):
            lab2.set_gateway(sandbox.bridge, "nat", ["nmout"])
        assert lab2.gateways() == []
        nm.set_gateway(sandbox.bridge, mode_ipv4="routed")    # the one table on it moves (lab2 holds no bridge)
        assert lab2.set_gateway(sandbox.bridge, mode_ipv4="routed").mode_ipv4 == "routed"  # the same: agreed
        assert not nm.check() and not lab2.check()
        nm.remove()
        lab2.remove()


@pytest.mark.parametrize(("first", "second"), PAIRS)
def test_check_of_both_tables_reports_a_disagreement(sandbox, web, first, second):
    with natmap.NatMap(netns=sandbox.host.name, backend=first) as nm, \
            natmap.NatMap("lab2", netns=sandbox.host.name, backend=second) as lab2:
        lab2.set_gateway(sandbox.bridge, mode_ipv4="routed")
        nm.publish(web.endpoint(), ["8080:5000"])  # comes onto the bridge in nat
        mine, theirs = nm.check(), lab2.check()
        assert mine.conflicts == (f"bridge natmap0: gateway nat here, ipv4 routed ipv6 nat in "
                                  f"{_label('lab2', second)} (a bridge's gateway setting is the namespace's: "
                                  "set it the same in both)",)
        assert theirs.conflicts and _label("natmap", first) in theirs.conflicts[0]
        assert mine and theirs  # a disagreement is drift
        nm.set_gateway(sandbox.bridge, mode_ipv4="routed")  # set the same: both agree
        assert not nm.check() and not lab2.check()
        nm.remove()
        lab2.remove()

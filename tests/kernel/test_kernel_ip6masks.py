"""ip6tables rules match whole interface names (python-iptables 1.2's Rule6
writes -i/-o masks of 0x01 bytes, which compare only each byte's lowest bit:
``-i nmout2`` matched ``nmout``). natmap writes full masks; a rule an older
natmap wrote with loose ones is structure drift that repair rebuilds, and
deleting such a rule (its item removed) still works. iptables backend only."""

import pytest

import natmap
from test_kernel_engine import web  # noqa: F401 (web01 on natmap0)
from test_kernel_routedcut import Flow, echo_server


def _loosen(sandbox, chain, comment):
    """Put back the rule of ``chain`` commented ``comment`` with python-iptables'
    own loose masks, as an older natmap wrote it; return the masks it had."""
    def swap():
        import iptc

        table = iptc.Table6(iptc.Table6.FILTER)
        table.autocommit = False
        target = iptc.Chain(table, chain)
        old = next(r for r in target.rules if any(m.name == "comment" and m.comment == comment for m in r.matches))
        masks = bytes(old.entry.ipv6.iniface_mask), bytes(old.entry.ipv6.outiface_mask)
        loose = iptc.Rule6()
        loose.in_interface, loose.out_interface = old.in_interface, old.out_interface
        match = loose.create_match("comment")
        match.comment = comment
        loose.create_target(old.target.name)
        target.delete_rule(old)
        target.insert_rule(loose)
        table.commit()
        return masks
    return sandbox.host.call(swap)


def test_a_loose_mask_is_drift_repair_rebuilds_and_its_rule_deletes(sandbox, web, client):
    with natmap.NatMap(netns=sandbox.host.name, backend="iptables") as nm:
        echo_server(web, 9999)
        nm.publish(web.endpoint(), ["8080:5000"])
        nm.set_gateway(sandbox.bridge, "nat", ["nmout"])
        full = _loosen(sandbox, "NATMAP-PROTECT", "trusted:natmap0")
        assert b"\xff" in full[0]  # what natmap writes: whole names
        drift = nm.check()
        assert any("lowest bits only" in problem for problem in drift.structure), str(drift)
        nm.set_gateway(sandbox.bridge, "nat")  # deletes the loose rule (its item gone)
        assert not Flow(client, web.ipv6, 9999, timeout=0.5).connected
        nm.set_gateway(sandbox.bridge, "nat", ["nmout"])
        _loosen(sandbox, "NATMAP-PROTECT", "trusted:natmap0")
        nm.repair()
        assert not nm.check()
        assert Flow(client, web.ipv6, 9999).ask() == "web01 answer:ping"
        nm.remove()


@pytest.fixture
def client(sandbox):
    return sandbox.client("client1")

"""NatMap.tables(), what `natmap tables` and `--table` completion list
(issue 15, case 10): natmap's tables only, from the kernel's markers (on
either backend: the Host seam) and from the store; through the fakes."""

import ipaddress

from natmap import Endpoint, NatMap, PortRange
from natmap.backends.base import FakeBackend
from natmap.host import FakeHost
from natmap.model import Bridge, Table

BRIDGE = Bridge("natmap0", (ipaddress.ip_network("172.30.0.0/24"),))


def test_tables_are_the_kernels_marked_ones_and_the_stored_ones(tmp_path):
    others = [("table inet lab (nft)", Table()), ("table ipt (iptables)", Table()),
              ("table inet natmap (nft)", Table())]
    host = FakeHost([BRIDGE], ports=PortRange(40000, 40009), others=others)
    kw = dict(host=host, lock_dir=str(tmp_path / "locks"), state_dir=str(tmp_path / "state"))
    with NatMap("stored", backend=FakeBackend(), **kw) as nm:
        assert nm.tables() == [("ipt", "iptables"), ("lab", "nft"), ("natmap", "nft")]
        nm.publish(Endpoint("web01", "172.30.0.2", "natmap0"), ["8080:80"])  # now stored, whatever the kernel holds
        assert nm.tables() == [("ipt", "iptables"), ("lab", "nft"), ("natmap", "nft"), ("stored", "fake")]

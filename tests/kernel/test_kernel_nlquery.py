"""natmap.nlquery (the pyroute2-free netlink questions natmap.host and
natmap-cni ask) answers what pyroute2 answers, on a live namespace with sockets of
every kind, a bridge with addresses, natmap's and foreign nftables tables and
the ::1 route natmap adds to an IPv6 bridge."""

import socket
import subprocess

import pytest

import natmap
from natmap import nlquery
from natmap.errors import UnknownInterfaceError
from natmap.host import Listener
from natmap.spec import Protocol


def _pyroute2_listeners(proto):
    """The host sockets holding a port of ``proto``, as pyroute2's sock_diag
    reads them: the reference nlquery.listeners is held to."""
    import ipaddress

    from pyroute2 import DiagSocket

    states = (1 << 10) if proto is not Protocol.UDP else 0xFFFFFFFF  # TCP_LISTEN; UDP: any state
    number = {Protocol.TCP: 6, Protocol.UDP: 17, Protocol.SCTP: 132}[proto]
    found = []
    with DiagSocket() as diag:
        diag.bind()
        for family in (socket.AF_INET, socket.AF_INET6):
            try:
                answers = diag.get_sock_stats(family=family, states=states, protocol=number)
            except OSError:
                continue  # no diag support for this protocol (sctp_diag not loaded)
            found += [Listener(proto, ipaddress.ip_address(msg["idiag_src"]), msg["idiag_sport"],
                               bool(msg.get_attr("INET_DIAG_SKV6ONLY")), msg["idiag_inode"])
                      for msg in answers]
    return found


def _pyroute2_interface_facts(name):
    """The kind and addresses of an interface as pyroute2 reads them: the
    reference nlquery.interface_facts is held to."""
    import ipaddress

    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        links = ipr.get_links(ifname=name) if ipr.link_lookup(ifname=name) else []
        if not links:
            raise UnknownInterfaceError(name)
        info = links[0].get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
        addresses = tuple(ipaddress.ip_interface(f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}")
                          for msg in ipr.get_addr(index=links[0]["index"]) if msg.get_attr("IFA_ADDRESS"))
    return kind, addresses


def _pyroute2_nft_tables():
    """The inet tables and their comments as pyroute2's nftables socket lists them."""
    from pyroute2.netlink.nfnetlink.nftsocket import NFT_MSG_GETTABLE, NFTSocket, nfgen_msg

    sock = NFTSocket(nfgen_family=1)  # NFPROTO_INET
    try:
        return {msg.get_attr("NFTA_TABLE_NAME"): msg.get_attr("NFTA_TABLE_USERDATA")
                for msg in sock.request_get(nfgen_msg(), NFT_MSG_GETTABLE)}
    finally:
        sock.close()


def _pyroute2_loopback6_present(name):
    """Whether the local ::1 route on ``name`` is there, as pyroute2 reads the routes."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname=name)
        if not index:
            return False
        return any(r.get_attr("RTA_DST") == "::1" and r["dst_len"] == 128
                   for r in ipr.get_routes(family=socket.AF_INET6, table=255, oif=index[0]))


def _open_sockets():
    """Sockets the listener check must see, each kind once, made in the calling thread's namespace."""
    made = []

    def sock(family, kind, address, port, v6only=None, listen=True):
        s = socket.socket(family, kind)
        if v6only is not None:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        s.bind((address, port))
        if listen and kind == socket.SOCK_STREAM:
            s.listen()
        made.append(s)

    sock(socket.AF_INET, socket.SOCK_STREAM, "127.0.0.1", 7001)
    sock(socket.AF_INET6, socket.SOCK_STREAM, "::", 7002, v6only=False)
    sock(socket.AF_INET6, socket.SOCK_STREAM, "::", 7003, v6only=True)
    sock(socket.AF_INET, socket.SOCK_STREAM, "0.0.0.0", 7004, listen=False)  # bound, not listening: no holder
    sock(socket.AF_INET, socket.SOCK_DGRAM, "0.0.0.0", 7005)
    sock(socket.AF_INET6, socket.SOCK_DGRAM, "::1", 7006, v6only=True)
    return made


def _as_text(listeners):
    return sorted((str(s), s.v6only, s.inode) for s in listeners)


def test_nlquery_answers_as_host_does(sandbox):
    web = sandbox.container("web01")
    made = sandbox.host.call(_open_sockets)
    try:
        with natmap.NatMap(netns=sandbox.host.name) as nm:
            nm.publish(natmap.Endpoint("web", web.ip, sandbox.bridge, ipv6=web.ipv6),
                       ["127.0.0.1:8080:80", "[::1]:8081:80"])  # ::1 on an IPv6 bridge: natmap's ::1 route
        sandbox.host.run(["nft", "add table inet foreign { comment \"not natmap's\"; }"], check=True)
        sandbox.host.run(["nft", "add table inet bare"], check=True)
        for proto in Protocol:
            mine = sandbox.host.call(nlquery.listeners, proto)
            assert _as_text(mine) == _as_text(sandbox.host.call(_pyroute2_listeners, proto))
        tcp = {str(s): s.v6only for s in sandbox.host.call(nlquery.listeners, Protocol.TCP)}
        assert tcp == {"127.0.0.1:7001/tcp": False, "[::]:7002/tcp": False, "[::]:7003/tcp": True}
        assert {str(s) for s in sandbox.host.call(nlquery.listeners, Protocol.UDP)} == {
            "0.0.0.0:7005/udp", "[::1]:7006/udp"}

        for name in (sandbox.bridge, "lo", "nmout"):
            facts = sandbox.host.call(nlquery.interface_facts, name)
            assert facts == sandbox.host.call(_pyroute2_interface_facts, name)
        kind, addresses = sandbox.host.call(nlquery.interface_facts, sandbox.bridge)
        assert kind == "bridge" and f"{sandbox.bridge_ip}/24" in {str(a) for a in addresses}
        for name in ("nosuch0", "x" * 16, ""):
            with pytest.raises(UnknownInterfaceError):
                sandbox.host.call(nlquery.interface_facts, name)

        tables = sandbox.host.call(nlquery.nft_tables)
        assert tables == sandbox.host.call(_pyroute2_nft_tables)
        assert tables["foreign"] == "not natmap's" and tables["bare"] is None
        assert tables["natmap"] == "natmap v1 table=natmap"

        for name in (sandbox.bridge, "nmout", "nosuch0"):
            present = sandbox.host.call(nlquery.loopback6_present, name)
            assert present == sandbox.host.call(_pyroute2_loopback6_present, name)
        assert sandbox.host.call(nlquery.loopback6_present, sandbox.bridge)
        assert not sandbox.host.call(nlquery.loopback6_present, "nmout")
    finally:
        for s in made:
            s.close()


def test_listeners_filtered_by_port_are_the_sockets_on_those_ports(sandbox):
    """The question a publish asks (the sockets on the ports it adds, filtered
    by the kernel) answers what the whole listing answers for those ports:
    single ports, ranges, the lowest and highest port, adjacent ranges merged,
    and more ranges than one filter holds (then the whole listing)."""
    def bind_all():
        made = []
        for port in (1, 7001, 7002, 7100, 9000, 65535):
            s = socket.socket()
            s.bind(("127.0.0.1", port))
            s.listen()
            made.append(s)
        for port in (7001, 7050, 9001):
            s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            s.bind(("::", port))
            made.append(s)
        return made

    made = sandbox.host.call(bind_all)
    try:
        asks = [[], [(7001, 7001)], [(9000, 9001), (7001, 7002)], [(1, 1), (65535, 65535)], [(7002, 7100)],
                [(8000, 8999)], [(7001, 7001), (7002, 7002), (7003, 7049)], [(p, p) for p in range(7000, 7400, 2)],
                [(1, 65535)]]
        for proto in (Protocol.TCP, Protocol.UDP):
            every = sandbox.host.call(nlquery.listeners, proto)
            for ports in asks:
                wanted = [s for s in every if any(a <= s.port <= b for a, b in ports)]
                got = sandbox.host.call(nlquery.listeners, proto, ports)
                assert _as_text(got) == _as_text(wanted), (proto, ports)
        assert {s.port for s in sandbox.host.call(nlquery.listeners, Protocol.TCP, [(7002, 7100)])} == {7002, 7100}
        assert {s.port for s in sandbox.host.call(nlquery.listeners, Protocol.UDP, [(7002, 7100)])} == {7050}
    finally:
        for s in made:
            s.close()


def test_a_kept_netfilter_socket_lists_tables_again_and_again(sandbox):
    """Session lists nft tables on one kept socket: each answer is the whole,
    current listing (no answer left over from the one before)."""
    def ask():
        sock = nlquery.netfilter_socket()
        try:
            first = nlquery.nft_tables(sock)
            subprocess.run(["nft", "add table inet kept { comment \"x\"; }"], check=True)
            second = nlquery.nft_tables(sock)
            third = nlquery.nft_tables(sock)
            return first, second, third
        finally:
            sock.close()

    first, second, third = sandbox.host.call(ask)
    assert "kept" not in first and second["kept"] == "x" and third == second == sandbox.host.call(_pyroute2_nft_tables)

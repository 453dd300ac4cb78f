"""A routed binding's direct flows end with it (issue 13): unpublishing, or the
bridge leaving ``routed``, cuts the established flows the routed accept let in
(those natmap marked), and no other: not a trusted interface's flow to the very
same container port, not the container's own outgoing flow. Real traffic from a
client that routes the container subnet through the host, both backends (the
``nm`` fixture), both families."""

import socket
import threading

import pytest

from natmap.model import ROUTED_CT_MARK
from test_kernel_engine import client, web  # noqa: F401 (the same fixtures: web01 serving, client1 outside)


class Flow:
    """One long-lived TCP connection from namespace ``ns`` to ``address:port``:
    each :meth:`ask` sends a line on it and returns the answer, or None when
    none comes within ``timeout`` (what a user of a cut connection sees)."""

    def __init__(self, ns, address, port, timeout=2.0):
        family = socket.AF_INET6 if ":" in str(address) else socket.AF_INET
        self.sock = ns.call(socket.socket, family, socket.SOCK_STREAM)  # made inside: the namespace's
        self.sock.settimeout(timeout)
        try:
            self.sock.connect((str(address), port))
            self.connected = True
        except OSError:
            self.connected = False

    def ask(self, text="ping", timeout=2.0):
        if not self.connected:
            return None
        self.sock.settimeout(timeout)
        try:
            self.sock.sendall(text.encode())
            return self.sock.recv(2048).decode() or None
        except OSError:
            return None

    def close(self):
        self.sock.close()


def echo_server(ns, port):
    """A server in ``ns`` on ``port`` (both families) that answers every line of
    every connection with ``LABEL ANSWER:LINE``, each connection as long as it lasts;
    it stops when the sandbox closes (its socket with the sandbox's stop event)."""
    def listen():
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", port))
        sock.listen(16)
        sock.settimeout(0.2)
        return sock

    server = ns.call(listen)

    def talk(conn):
        with conn:
            conn.settimeout(0.2)
            while not ns._stop.is_set():
                try:
                    data = conn.recv(2048)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                conn.sendall(f"{ns.label} answer:{data.decode()}".encode())

    def accept():
        with server:
            while not ns._stop.is_set():
                try:
                    conn, _ = server.accept()
                except (TimeoutError, OSError):
                    continue
                threading.Thread(target=talk, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    ns._servers.append(thread)


def marks(sandbox, address, port):
    """The conntrack marks of the host's TCP flows to ``address:port``, sorted."""
    def dump():
        from pyroute2 import Conntrack
        from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

        family = socket.AF_INET6 if ":" in str(address) else socket.AF_INET
        with Conntrack(nfgen_family=family) as ct:
            return sorted((e.mark or 0) for e in ct.dump_entries(tuple_orig=NFCTAttrTuple(family=family, proto=6))
                          if e.tuple_orig.daddr == str(address) and e.tuple_orig.dport == port)
    return sandbox.host.call(dump)


def addresses(sandbox, web, family):
    if family == 4:
        return web.ip, sandbox.outside_ip
    return web.ipv6, sandbox.outside_ip6


@pytest.mark.parametrize("family", [4, 6])
def test_unpublishing_a_routed_binding_cuts_its_direct_flows_and_no_other(sandbox, nm, web, client, family):
    direct, outside = addresses(sandbox, web, family)
    client_ip = "192.0.2.2" if family == 4 else "2001:db8:2::2"
    echo_server(web, 7000)
    echo_server(client, 7100)
    nm.publish(web.endpoint(), ["8080:7000"])
    from test_kernel_directcut import second_outside

    nm.set_gateway(sandbox.bridge, "routed", ["nmout"])
    trusted = Flow(client, direct, 7000)        # from a trusted interface: let in unmarked
    other = second_outside(sandbox)             # a client on nmout2, not trusted
    routed = Flow(other, direct, 7000)          # the routed accept lets it in, and marks it
    own = Flow(web, client_ip, 7100)            # the container's own outgoing flow
    for flow, who in ((trusted, "web01"), (routed, "web01"), (own, "client1")):
        assert flow.ask() == f"{who} answer:ping"
    assert marks(sandbox, direct, 7000) == [0, ROUTED_CT_MARK]  # natmap's bit on the routed flow alone

    nm.unpublish("web01")
    assert routed.ask(timeout=0.5) is None                     # cut: the next send gets no answer
    assert not Flow(other, direct, 7000, timeout=0.5).connected  # and a new one is not let in
    assert trusted.ask() == "web01 answer:ping"                # the trusted flow to the same port goes on
    assert own.ask() == "client1 answer:ping"                  # so does the container's own
    assert marks(sandbox, direct, 7000).count(ROUTED_CT_MARK) == 0
    for flow in (trusted, routed, own):
        flow.close()


@pytest.mark.parametrize("family", [4, 6])
def test_leaving_routed_for_nat_cuts_the_direct_flows_and_nat_unprotected_keeps_them(
        sandbox, nm, web, client, family):
    direct, outside = addresses(sandbox, web, family)
    echo_server(web, 7000)
    nm.publish(web.endpoint(), ["8080:7000"])
    nm.set_gateway(sandbox.bridge, "routed")
    kept = Flow(client, direct, 7000)
    nm.set_gateway(sandbox.bridge, "nat-unprotected")  # every routed flow passes there: nothing to cut
    assert kept.ask() == "web01 answer:ping"
    nm.set_gateway(sandbox.bridge, "routed")
    cut = Flow(client, direct, 7000)
    assert cut.ask() == "web01 answer:ping"
    nm.set_gateway(sandbox.bridge, "nat")  # only DNATed flows pass now: the direct ones end
    assert cut.ask(timeout=0.5) is None
    mapped = Flow(client, outside, 8080)    # the mapping is back, and answers
    assert mapped.ask() == "web01 answer:ping"
    for flow in (kept, cut, mapped):
        flow.close()


def _drop_the_mark(sandbox, backend):
    """Undo the routed accept's mark by hand, the way a careless admin would."""
    if backend == "nft":
        listing = sandbox.host.run(["nft", "-a", "list", "chain", "inet", "natmap", "protect"], check=True).stdout
        line = next(li for li in listing.splitlines() if "@routed4" in li)
        handle = line.rsplit("# handle ", 1)[1].strip()
        sandbox.host.run(["nft", "replace", "rule", "inet", "natmap", "protect", "handle", handle,
                          "ip", "daddr", ".", "meta", "l4proto", ".", "th", "dport", "@routed4", "return"], check=True)
    else:
        sandbox.host.run(["iptables-legacy", "-D", "NATMAP-ROUTED", "1"], check=True)


def test_a_mark_rule_undone_by_hand_is_drift_that_repair_restores(sandbox, nm, web, client):
    echo_server(web, 7000)
    nm.publish(web.endpoint(), ["8080:7000"])
    nm.set_gateway(sandbox.bridge, "routed")
    _drop_the_mark(sandbox, nm.backend_name)
    unmarked = Flow(client, web.ip, 7000)
    assert unmarked.ask() == "web01 answer:ping"  # let in, but not marked: unpublishing could not cut it
    assert marks(sandbox, web.ip, 7000) == [0]
    drift = nm.check()
    assert drift.structure, str(drift)
    nm.repair()
    assert not nm.check()
    marked = Flow(client, web.ip, 7000)
    assert marked.ask() == "web01 answer:ping"
    assert marks(sandbox, web.ip, 7000) == [0, ROUTED_CT_MARK]
    nm.unpublish("web01")
    assert marked.ask(timeout=0.5) is None
    unmarked.close()
    marked.close()


def test_another_programs_ct_mark_bits_are_kept(sandbox, nm, web, client):
    """natmap sets its bit under its own mask: a bit another program set on
    the flow before natmap's rule stays set."""
    other = 0x1
    sandbox.host.run(["nft", "-f", "-"], check=True, input=(
        "table inet other {\n chain pre {\n type filter hook prerouting priority mangle ;\n"
        f" tcp dport 7000 ct state new ct mark set ct mark or {other:#x}\n }}\n}}\n"))
    echo_server(web, 7000)
    nm.publish(web.endpoint(), ["8080:7000"])
    nm.set_gateway(sandbox.bridge, "routed")
    flow = Flow(client, web.ip, 7000)
    assert flow.ask() == "web01 answer:ping"
    assert marks(sandbox, web.ip, 7000) == [ROUTED_CT_MARK | other]
    nm.unpublish("web01")
    assert flow.ask(timeout=0.5) is None
    flow.close()
    sandbox.host.run(["nft", "delete", "table", "inet", "other"], check=True)


def test_an_unpublish_killed_before_cutting_routed_flows_has_them_cut_by_the_next_call(sandbox, nm, web, client):
    """The cut runs after the kernel commit: a process killed in between leaves
    a pending change whose finishing (here by repair) cuts the marked flows."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    echo_server(web, 7000)
    nm.publish(web.endpoint(), ["8080:7000"])
    nm.set_gateway(sandbox.bridge, "routed")
    flow = Flow(client, web.ip, 7000)
    assert flow.ask() == "web01 answer:ping"
    env = {**os.environ, "NATMAP_CRASH_AT": "kernel-commit"}
    result = subprocess.run([str(Path(sys.executable).with_name("natmap")), "unpublish", "web01",
                             "--backend", nm.backend_name, "--netns", sandbox.host.name],
                            env=env, capture_output=True, text=True)
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert flow.ask() == "web01 answer:ping"  # the rule is gone, the established flow not yet
    nm.repair()  # finishes the change, flows included
    assert flow.ask(timeout=0.5) is None
    assert not nm.check()
    flow.close()

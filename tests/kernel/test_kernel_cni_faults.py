"""natmap-cni attacked as runtimes and other programs treat it: killed in the
middle of an ADD, ADD and DEL of one container racing, ADD called twice, the
table flushed or deleted under it, foreign elements in it, GC with garbage.
Every outcome is success or CNI error JSON; nothing is half-applied or left over."""

import json
import os
import shlex
import signal
import subprocess
import threading
import time

import natmap
from natmap.backends.iptables import Layout
from natmap.backends.nft import change_text
from natmap.cni import endpoint_name
from natmap.model import Change
from test_kernel_cni import NETWORK, PLUGIN, bindings, cni, mapping, prev_result  # noqa: F401 (cni: a fixture)

RANGE = [mapping(8080)] + [mapping(port, port) for port in range(9000, 9200)]


def add_behind_natmaps_back(sb, backend, binding, table="natmap"):
    """Add one binding's elements or rules with the backend's own command-line tool."""
    change = Change(add=(binding,))
    if backend == "nft":
        sb.host.run(["nft", "-f", "-"], input=change_text(table, change), check=True)
        return
    legacy = {"iptables": "iptables-legacy", "ip6tables": "ip6tables-legacy"}
    for line in Layout(table).text(change).splitlines():
        tool, *args = shlex.split(line)
        sb.host.run([legacy[tool], *args], check=True)


def ours(sandbox, backend, label="web01"):
    name = endpoint_name(NETWORK, f"id-{label}", "eth0")
    return [b for b in bindings(sandbox, backend) if b.endpoint == name]


def test_an_add_killed_at_any_moment_leaves_all_or_nothing(sandbox, cni, backend, tmp_path):
    web = sandbox.container("web01")
    web.serve(5000)
    conf = json.dumps({"cniVersion": "1.0.0", "name": NETWORK, "type": "natmap", "backend": backend,
                       "runtimeConfig": {"portMappings": RANGE}, "prevResult": prev_result(sandbox, web, "1.0.0")})
    env = {**os.environ, "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "id-web01", "CNI_IFNAME": "eth0",
           "CNI_NETNS": f"/run/netns/{web.name}", "CNI_PATH": "/usr/lib/cni", "NATMAP_STATE_DIR": str(tmp_path)}
    complete = 2 * len(RANGE)  # IPv4 and IPv6
    seen = set()
    for delay in (0.0, 0.03, 0.06, 0.1, 0.15, 0.2, 0.3, 0.5):
        # nsenter execs the plugin: this PID is the plugin's, and only it is killed
        proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{sandbox.host.name}", PLUGIN], env=env,
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        proc.stdin.write(conf.encode())
        proc.stdin.close()
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        have = len(ours(sandbox, backend))
        # nft commits once; iptables once per table and family (docs/backends.md), so a kill
        # between its IPv4 and IPv6 commits can leave half: CHECK then fails, and DEL cleans up.
        assert have in (0, complete) or backend == "iptables", f"killed after {delay} s: {have} of {complete}"
        seen.add(have)
        status, out = cni("CHECK", web, RANGE)
        assert (status, out and out["code"]) == ((0, None) if have == complete else (1, 101))
        assert cni("DEL", web) == (0, None)  # what a runtime does after a failed ADD
        assert ours(sandbox, backend) == []
    # then the runtime tries again, twice (a retried ADD is the same ADD)
    for _ in range(2):
        assert cni("ADD", web, RANGE)[0] == 0
        assert len(ours(sandbox, backend)) == complete
        assert cni("CHECK", web, RANGE) == (0, None)
    assert sandbox.client("client1").request(sandbox.outside_ip, 8080) == "web01 192.0.2.2"
    assert cni("DEL", web) == (0, None) and bindings(sandbox, backend) == []


def test_add_and_del_of_one_container_racing_end_consistent(sandbox, cni, backend):
    web = sandbox.container("web01")
    results = []

    def churn(command):
        for _ in range(3):
            results.append((command, cni(command, web, RANGE[:20])))

    threads = [threading.Thread(target=churn, args=(c,)) for c in ("ADD", "DEL", "ADD", "DEL")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(status == 0 for _, (status, _) in results), results
    have = len(ours(sandbox, backend))
    assert have in (0, 40)
    assert cni("CHECK", web, RANGE[:20])[0] == (0 if have else 1)
    assert cni("DEL", web) == (0, None) and bindings(sandbox, backend) == []


def test_del_check_add_after_the_table_was_deleted_or_flushed(sandbox, cni, backend):
    web = sandbox.container("web01")
    web.serve(5000)
    client = sandbox.client("client1")
    assert cni("ADD", web, [mapping(8080)])[0] == 0
    with natmap.NatMap(netns=sandbox.host.name, backend=backend) as nm:
        nm.remove()  # another program (or an admin) removed natmap's table
    status, out = cni("CHECK", web, [mapping(8080)])
    assert (status, out["code"]) == (1, 101) and "0.0.0.0:8080" in out["details"]
    assert cni("DEL", web) == (0, None)
    assert cni("DEL", web) == (0, None)
    assert cni("ADD", web, [mapping(8080)])[0] == 0
    assert client.request(sandbox.outside_ip, 8080) == "web01 192.0.2.2"
    if backend == "nft":
        # `nft flush table` empties the chains and keeps the maps: bindings that forward nothing
        sandbox.host.run(["nft", "flush", "table", "inet", "natmap"], check=True)
        status, out = cni("CHECK", web, [mapping(8080)])
        assert (status, out["code"]) == (1, 101) and "damaged" in out["msg"], out
        assert cni("DEL", web) == (0, None)


def test_check_names_foreign_elements_of_its_attachment_only(sandbox, cni, backend, tmp_path):
    web = sandbox.container("web01")
    assert cni("ADD", web, [mapping(8080)])[0] == 0
    mine = endpoint_name(NETWORK, "id-web01", "eth0")
    # another natmap user's binding in the table, for another endpoint: not this attachment's business
    # (a binding written behind natmap's back is drift, which the next write repairs: issue 12)
    with natmap.NatMap(netns=sandbox.host.name, backend=backend, state_dir=str(tmp_path)) as nm:  # the plugin's
        nm.publish(natmap.Endpoint("someone-else", "172.30.0.99", sandbox.bridge), ["7070:80"])
    assert cni("CHECK", web, [mapping(8080)]) == (0, None)
    # one made in this attachment's name: CHECK says it is unexpected
    add_behind_natmaps_back(sandbox, backend, natmap.Binding(mine, "udp", "0.0.0.0", 7171, web.ip, 71))
    status, out = cni("CHECK", web, [mapping(8080)])
    assert (status, out["code"]) == (1, 101) and "0.0.0.0:7171" in out["details"], out
    # DEL removes all of the attachment's, the foreign one of its name too, and leaves the other's
    assert cni("DEL", web) == (0, None)
    assert [b.endpoint for b in bindings(sandbox, backend)] == ["someone-else"]


def test_gc_with_garbage_attachments_changes_nothing(sandbox, cni, backend):
    web = sandbox.container("web01")
    assert cni("ADD", web, [mapping(8080)])[0] == 0
    before = bindings(sandbox, backend)
    for garbage in ("all", [{"containerID": 5, "ifname": "eth0"}], [None], {"containerID": "x"}):
        status, out = cni("GC", version="1.1.0", extra={"cni.dev/valid-attachments": garbage})
        assert (status, out["code"]) == (1, 7), out
    assert bindings(sandbox, backend) == before


def tracked(sandbox, *args):
    """The host namespace's conntrack entries that match ``args`` (conntrack -L filters)."""
    listed = sandbox.host.run(["conntrack", "-L", *args], capture_output=True, text=True)
    return [line for line in listed.stdout.splitlines() if "=" in line]


def test_del_forgets_the_containers_flows_and_udp_add_the_stale_ones(sandbox, cni, backend):
    """natmap-cni looks at /proc/net/nf_conntrack before it opens a conntrack
    socket: the flows it must forget are forgotten all the same."""
    web = sandbox.container("web01")
    web.serve(5353, "udp")
    client = sandbox.client("client1")
    other = sandbox.container("web02")
    assert cni("ADD", other, [mapping(8080)])[0] == 0  # natmap's table there: conntrack tracks the host's flows
    sock = client.udp_socket()  # one flow: the same source port each time
    # before the binding: the host itself is asked, nobody answers, the entry stays
    assert client.request(sandbox.outside_ip, 5353, "udp", sock=sock, timeout=0.3) is None
    assert tracked(sandbox, "-p", "udp", "--orig-port-dst", "5353")
    assert cni("ADD", web, [mapping(5353, 5353, "udp")])[0] == 0
    # the stale entry was forgotten, so the same flow now reaches the container
    assert client.request(sandbox.outside_ip, 5353, "udp", sock=sock) == "web01 192.0.2.2"
    assert tracked(sandbox, "-p", "udp", "--reply-src", str(web.ip))
    assert cni("DEL", web) == (0, None)
    assert tracked(sandbox, "-p", "udp", "--reply-src", str(web.ip)) == []
    sock.close()

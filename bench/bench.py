"""natmap's benchmarks: `make bench` (root; everything inside sandbox namespaces).

Prints tables and ratios measured in this one run (these machines are noisy:
absolute times are for orientation, ratios are the point; each figure is the
median of several runs, and what is compared is measured in turns) and writes
bench/RESULTS.md. `make bench` compiles natmap's bytecode first, as an
installed package has it.

1. full apply: publish N bindings (40 ports an endpoint) in one call, vs the
   floor (the same rule set as hand-written nft text, applied by one `nft -f`
   process and by one in-process libnftables call), vs the Docker way (one
   `iptables` process per rule), vs natmap's iptables backend;
2. incremental: publish / unpublish one port with N present, vs the floor
   (one element added / deleted in-process);
3. teardown: unpublish an endpoint with 1,000 ports, vs publishing it;
4. packet path: new flows a second that the host DNATs, N = 1 and 10,000;
5. start-up: `import natmap` and `natmap port NAME` as processes;
6. memory: peak RSS publishing 10,000 bindings, and processes left behind;
7. the store (issue 12): `natmap port NAME` by table size, watch after a flush;
8. scale (issue 16): 10,000 single `-p` strings in one transaction; tcp+udp
   1-65535 same-port (publish, port() from a new NatMap, `natmap ls` as a
   process, unpublish, peak RSS, iptables publish); a shifted range of 10,000;
   `natmap port NAME` with 10,000 other bindings; unpublishing 10,000 bindings
   beside 2,000 unrelated conntrack entries; new flows through a 65,535-port
   interval element.
9. re-apply (issue 15): an unchanged file of 10,000 endpoints, `natmap apply`
   as a new process (bench/reapply_bench.py, which also runs alone).
"""

from __future__ import annotations

import datetime
import gc
import ipaddress
import os
import platform
import socket
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

import natmap
from natmap.backends.nft import skeleton
from natmap.sandbox import Sandbox
from reapply_bench import section as reapply_section

PORTS = 40                       # per endpoint, as in the issue
FIRST_HOST_PORT = 10000
RESULTS = Path(__file__).with_name("RESULTS.md")
NATMAP_CLI = str(Path(sys.executable).with_name("natmap"))
QUICK = os.environ.get("BENCH_QUICK") == "1"   # a smoke run: fewer repeats
REPEATS = 1 if QUICK else 5
STARTS = 5 if QUICK else 15      # whole processes: cheap, and noisier
BIG_REPEATS = 1 if QUICK else 11  # the 10,000-binding ratios: their medians moved by a third with 5
report: list[str] = []


def out(line: str = "") -> None:
    print(line, flush=True)
    report.append(line)


def median_time(fn, repeats: int = REPEATS, setup=None) -> float:
    times = []
    for _ in range(repeats):
        if setup:
            setup()
        times.append(_fresh_timed(fn))
    return statistics.median(times)


def interleaved(contestants: dict, repeats: int = REPEATS) -> dict[str, float]:
    """The median time of each contestant (name: (fn, setup or None)), measured
    in turns, one round each at a time: a slow spell of this shared machine
    then falls on all of them alike, and the ratios between them hold. A first
    round, for all, is not counted: it measures the process growing its heap."""
    times: dict[str, list[float]] = {name: [] for name in contestants}
    for _ in range(1 + repeats):
        for name, (fn, setup) in contestants.items():
            if setup:
                setup()
            times[name].append(_fresh_timed(fn))
    return {name: statistics.median(values[1:]) for name, values in times.items()}


def endpoints(n: int, bridge: str) -> list[tuple[natmap.Endpoint, str]]:
    """Enough endpoints for n bindings, each with its range spec."""
    base = ipaddress.IPv4Address("172.30.1.0")
    made = []
    for i in range((n + PORTS - 1) // PORTS):
        count = min(PORTS, n - i * PORTS)
        first = FIRST_HOST_PORT + i * PORTS
        made.append((natmap.Endpoint(f"ep{i}", base + i, bridge),
                     f"{first}-{first + count - 1}:1-{count}"))
    return made


def publish_all(nm: natmap.NatMap, eps) -> None:
    with nm.transaction() as tx:
        for endpoint, spec in eps:
            tx.publish(endpoint, [spec])


def floor_text(table: str, eps) -> str:
    """The same rule set, written by hand: the skeleton and one element each.
    The skeleton carries natmap's marker: a floor table left in place is, to
    natmap, another natmap table of the namespace (its bindings conflict, and
    reading it would be charged to natmap), so natmap's turns follow its removal."""
    elements = []
    for endpoint, spec in eps:
        first = int(spec.split("-")[0])
        count = int(spec.split(":")[1].split("-")[1])
        elements += [f'tcp . {first + i} comment "{endpoint.name}" : {endpoint.ip} . {i + 1}' for i in range(count)]
    return (skeleton(table) + f'add element inet {table} bridges {{ "natmap0" }}\n'
            f"add element inet {table} subnets4 {{ 172.30.0.0/16 }}\n"
            f"add element inet {table} dnat4_any {{ {', '.join(elements)} }}\n")


def docker_way_rules(eps) -> list[list[str]]:
    """What Docker runs: one iptables process per rule."""
    rules = []
    for endpoint, spec in eps:
        first = int(spec.split("-")[0])
        count = int(spec.split(":")[1].split("-")[1])
        rules += [["iptables-legacy", "-w", "-t", "nat", "-A", "DOCKER", "-p", "tcp", "--dport", str(first + i),
                   "-j", "DNAT", "--to-destination", f"{endpoint.ip}:{i + 1}"] for i in range(count)]
    return rules


# --- 1. full apply ---------------------------------------------------------------------


def full_apply(sb: Sandbox) -> dict:
    import nftables

    sizes = [1, 100, 1000] if QUICK else [1, 100, 1000, 10000]
    out("## 1. Full apply: N bindings in one call (median, ms)")
    out()
    out("| N | natmap nft | floor `nft -f` | floor in-process | ratio to in-process | Docker way (process per rule) | natmap iptables |")
    out("|---|---|---|---|---|---|---|")
    results = {}
    for n in sizes:
        eps = endpoints(n, sb.bridge)
        nm = natmap.NatMap(table="bench", netns=sb.host.name)
        text = floor_text("floor", eps)
        path = Path(f"/tmp/natmap-bench-{os.getpid()}.nft")
        path.write_text(text)
        drop_floor = lambda: sb.host.run(["nft", "delete", "table", "inet", "floor"])  # noqa: E731
        lib = sb.host.call(nftables.Nftables)
        timed = interleaved({
            # Each setup removes what the turn before it left: every run follows one
            # table's deletion (the kernel finishes freeing one after the call).
            "natmap": (lambda: publish_all(nm, eps), _settled(drop_floor)),
            "nft_f": (lambda: sb.host.run(["nft", "-f", str(path)], check=True), _settled(lambda: _clean(nm))),
            "in_process": (lambda: sb.host.call(lib.cmd, text), _settled(drop_floor)),
        }, repeats=BIG_REPEATS if n >= 10000 else REPEATS)
        natmap_s, nft_f, in_process = timed["natmap"], timed["nft_f"], timed["in_process"]
        drop_floor()
        _clean(nm)  # else its bindings are another natmap table's to the iptables runs: a conflict
        path.unlink()
        docker = _docker_way(sb, eps) if n <= 1000 else None
        ipt = natmap.NatMap(table="bench", netns=sb.host.name, backend="iptables")
        ipt_s = median_time(lambda: publish_all(ipt, eps), setup=lambda: _clean(ipt),
                            repeats=1 if n >= 10000 else REPEATS)
        _clean(ipt)
        _clean(nm)
        results[n] = dict(natmap=natmap_s, nft_f=nft_f, floor=in_process, docker=docker, iptables=ipt_s)
        docker_text = f"{docker * 1000:.0f}" if docker else f"~{_extrapolate(results, n):.0f} (extrapolated)"
        out(f"| {n} | {natmap_s * 1000:.1f} | {nft_f * 1000:.1f} | {in_process * 1000:.1f} | "
            f"{natmap_s / in_process:.2f}x | {docker_text} | {ipt_s * 1000:.0f} |")
    out()
    return results


def _settled(setup):
    """``setup``, then a pause: the kernel frees a deleted table's 10,000
    elements after the call that deleted it returns (RCU callbacks), and that
    work, on one of two vCPUs, ran into the next timed call (a floor of the
    same text measured 92-124 ms from run to run)."""
    def settled() -> None:
        setup()
        time.sleep(0.1)
    return settled


def _clean(nm: natmap.NatMap) -> None:
    try:
        nm.remove()
    except natmap.NatmapError:
        pass


def _docker_way(sb: Sandbox, eps) -> float:
    def setup():
        sb.host.run(["iptables-legacy", "-w", "-t", "nat", "-F"])
        sb.host.run(["iptables-legacy", "-w", "-t", "nat", "-X", "DOCKER"])
        sb.host.run(["iptables-legacy", "-w", "-t", "nat", "-N", "DOCKER"], check=True)

    rules = docker_way_rules(eps)
    elapsed = median_time(lambda: [sb.host.run(r, check=True) for r in rules], setup=setup, repeats=1)
    setup()
    return elapsed


def _extrapolate(results: dict, n: int) -> float:
    per_rule = results[1000]["docker"] / 1000
    return per_rule * n * 1000


# --- 2 and 3. incremental and teardown ---------------------------------------------------


def incremental(sb: Sandbox) -> dict:
    rounds, blocks = (2, 2) if QUICK else (6, 5)
    out(f"## 2. Incremental: one more port with N present (median of {rounds * blocks}, ms)")
    out()
    out("| N | natmap publish | natmap unpublish | floor add element | floor delete element |")
    out("|---|---|---|---|---|")
    sizes = [10, 1000, 10000]
    times: dict[int, dict[str, list[float]]] = {n: {"add": [], "delete": [], "floor_add": [], "floor_delete": []}
                                                for n in sizes}
    # In blocks, each size in turn, so the machine's slow spells fall on every
    # size alike; in a block, natmap first, then the floor: a floor commit in
    # between would make natmap (rightly) read the table again, as after any
    # foreign change.
    for _ in range(blocks):
        for n in sizes:
            _incremental_block(sb, n, rounds, times[n])
    results = {}
    for n in sizes:
        row = results[n] = {k: statistics.median(v) for k, v in times[n].items()}
        out(f"| {n} | {row['add'] * 1000:.2f} | {row['delete'] * 1000:.2f} | "
            f"{row['floor_add'] * 1000:.2f} | {row['floor_delete'] * 1000:.2f} |")
    out()
    out("Floor calls run on a thread inside the namespace (about 0.1 ms of that is the thread);"
        " natmap's unpublish includes removing the binding's conntrack entries, which walks the"
        " kernel's conntrack hash.")
    out()
    return results


def _incremental_block(sb: Sandbox, n: int, rounds: int, times: dict[str, list[float]]) -> None:
    import nftables

    extra = natmap.Endpoint("extra", "172.30.200.1", sb.bridge)
    lib = sb.host.call(nftables.Nftables)
    element = "tcp . 60001"
    nm = natmap.NatMap(table="bench", netns=sb.host.name)
    publish_all(nm, endpoints(n, sb.bridge))
    for _ in range(rounds):
        times["add"].append(_timed(lambda: nm.publish(extra, ["60000:80"])))
        times["delete"].append(_timed(lambda: nm.unpublish("extra")))
    for _ in range(rounds):
        times["floor_add"].append(_timed(lambda: sb.host.call(
            lib.cmd, f'add element inet bench dnat4_any {{ {element} comment "x" : 172.30.200.1 . 80 }}')))
        times["floor_delete"].append(_timed(lambda: sb.host.call(
            lib.cmd, f"delete element inet bench dnat4_any {{ {element} }}")))
    _clean(nm)
    nm.close()


def _fresh_timed(fn) -> float:
    """``fn``'s time, started with no garbage left by what ran before: the
    collector's work for earlier allocations (the iptables runs make millions)
    is not charged to whoever happens to run next. Its own is."""
    gc.collect()
    return _timed(fn)


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def teardown(sb: Sandbox) -> dict:
    out("## 3. Teardown: an endpoint with 1,000 ports (median, ms)")
    out()
    big = natmap.Endpoint("big", "172.30.100.1", sb.bridge)
    nm = natmap.NatMap(table="bench", netns=sb.host.name)
    timed = interleaved({"publish": (lambda: nm.publish(big, ["20000-20999:1-1000"]), None),
                         "unpublish": (lambda: nm.unpublish("big"), None)})
    publish, unpublish = timed["publish"], timed["unpublish"]
    _clean(nm)
    out(f"publish {publish * 1000:.1f} ms, unpublish {unpublish * 1000:.1f} ms: ratio {unpublish / publish:.2f}x")
    out()
    return dict(publish=publish, unpublish=unpublish)


# --- 4. packet path -----------------------------------------------------------------------


def packet_path(sb: Sandbox) -> dict:
    """New UDP flows (each a fresh source port) sent from a client through the
    host's DNAT to a container: the sender's rate is bounded by the host's work
    per new flow, which is done in the sending call on this machine."""
    out(f"## 4. Packet path: new flows a second the host DNATs (median of {REPEATS} runs of 20,000 flows)")
    out()
    out("| backend | N = 1 | N = 10,000 | ratio |")
    out("|---|---|---|---|")
    container = sb.container("sink")
    client = sb.client("sender")
    results = {}
    for backend in ("nft", "iptables"):
        rates = {}
        for n in (1, 10000):
            nm = natmap.NatMap(table="bench", netns=sb.host.name, backend=backend)
            eps = endpoints(n, sb.bridge) if n > 1 else []
            with nm.transaction() as tx:
                for endpoint, spec in eps:
                    tx.publish(endpoint, [spec])
                # The measured port is published last: the iptables rule walked last.
                tx.publish(container.endpoint(ipv6=False), ["9999:9"])
            runs = []
            for _ in range(REPEATS):
                sb.host.run(["conntrack", "-F"])
                runs.append(client.call(_send_new_flows, str(sb.outside_ip), 9999, 5000 if QUICK else 20000))
            rates[n] = statistics.median(runs)
            _clean(nm)
        results[backend] = rates
        out(f"| {backend} | {rates[1]:,.0f} | {rates[10000]:,.0f} | {rates[10000] / rates[1]:.2f}x |")
    out()
    return results


def _send_new_flows(host: str, port: int, count: int) -> float:
    """UDP datagrams from `count` different source ports (checksum 0: none), each a new flow."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
    packets = [struct.pack("!HHHH", 20000 + i % 40000, port, 8, 0) for i in range(count)]
    start = time.perf_counter()
    for packet in packets:
        sock.sendto(packet, (host, 0))
    elapsed = time.perf_counter() - start
    sock.close()
    return count / elapsed


# --- 5 and 6. start-up, memory, processes -------------------------------------------------------


def startup(sb: Sandbox) -> dict:
    out(f"## 5. Start-up as whole processes (median of {STARTS}, taken in turns, ms)")
    out()
    web = sb.container("startup")
    natmap.NatMap(netns=sb.host.name).publish(web.endpoint(), ["8080:80"])
    timed = interleaved({
        "python": (lambda: subprocess.run([sys.executable, "-c", "pass"], check=True), None),
        "imported": (lambda: subprocess.run([sys.executable, "-c", "import natmap"], check=True), None),
        "port": (lambda: subprocess.run([NATMAP_CLI, "port", "startup", "--netns", sb.host.name],
                                        check=True, capture_output=True), None),
        "read": (lambda: sb.host.run(["nft", "-j", "list", "table", "inet", "natmap"], check=True), None),
    }, repeats=STARTS)
    python, imported, port, read = timed["python"], timed["imported"], timed["port"], timed["read"]
    heavy = subprocess.run([sys.executable, "-c", "import sys, natmap; print(sorted({m.split('.')[0] for m in "
                            "sys.modules} & {'pyroute2', 'iptc', 'nftables'}))"],
                           capture_output=True, text=True, check=True).stdout.strip()
    out(f"`python -c pass` {python * 1000:.0f} ms; `import natmap` {imported * 1000:.0f} ms "
        f"(kernel libraries imported: {heavy}); `natmap port NAME` {port * 1000:.0f} ms; "
        f"the kernel read alone (`nft -j list table`) {read * 1000:.0f} ms.")
    out(f"`natmap port` / (python start + kernel read): {port / (python + read):.2f}x "
        f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs at the end)")
    out()
    return dict(python=python, imported=imported, port=port, read=read)


def memory(sb: Sandbox) -> dict:
    out("## 6. Memory and processes")
    out()
    code = (
        "import sys, ipaddress, natmap\n"
        "nm = natmap.NatMap(table='mem', netns=sys.argv[1])\n"
        "with nm.transaction() as tx:\n"
        "    for i in range(250):\n"
        "        ep = natmap.Endpoint(f'ep{i}', ipaddress.IPv4Address('172.30.1.0') + i, 'natmap0')\n"
        "        tx.publish(ep, [f'{10000 + 40 * i}-{10039 + 40 * i}:1-40'])\n"
        "assert len(nm.bindings()) == 10000\n"
        "nm.remove()\n"
        # VmHWM, not ru_maxrss: the latter keeps the parent's peak across fork and exec.
        "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))\n")
    before = _children()
    rss_kb = int(subprocess.run([sys.executable, "-c", code, sb.host.name], capture_output=True, text=True,
                                check=True).stdout)
    left = _children() - before
    out(f"peak RSS publishing 10,000 bindings (a whole process): {rss_kb / 1024:.0f} MB; "
        f"processes left running afterwards: {len(left)}")
    out()
    return dict(rss_mb=rss_kb / 1024, left=len(left))


def store(sb: Sandbox) -> dict:
    """Issue 12: reads come from the store (O(endpoint)); watch's repair time."""
    out(f"## 7. The desired-state store: `natmap port NAME` by table size, watch after a flush "
        f"(medians, ms)")
    out()
    ports = {}
    for n in (10, 10000):
        nm = natmap.NatMap(table=f"port{n}", netns=sb.host.name)
        publish_all(nm, endpoints(n, sb.bridge))
        ports[n] = median_time(lambda: subprocess.run(
            [NATMAP_CLI, "port", "ep0", "--table", f"port{n}", "--netns", sb.host.name],
            check=True, capture_output=True), repeats=STARTS)
        nm.remove()
    out(f"`natmap port NAME` with 10 bindings {ports[10] * 1000:.0f} ms, with 10,000 "
        f"{ports[10000] * 1000:.0f} ms: {ports[10000] / ports[10]:.2f}x")
    web, client = sb.container("watchweb"), sb.client("watchclient")
    web.serve(5000)
    nm = natmap.NatMap(netns=sb.host.name)
    nm.publish(web.endpoint(), ["8099:5000"])
    watcher = subprocess.Popen([NATMAP_CLI, "watch", "--netns", sb.host.name], stderr=subprocess.PIPE, text=True)
    answers = []
    try:
        watcher.stderr.readline()  # "watching"
        for _ in range(20):
            sb.host.run(["nft", "flush", "ruleset"], check=True)
            started = time.perf_counter()
            while client.request(sb.outside_ip, 8099, timeout=0.2) is None:
                pass
            answers.append(time.perf_counter() - started)
    finally:
        watcher.terminate()
        watcher.wait()
    nm.remove()
    watch = statistics.median(answers)
    out(f"`natmap watch`: from `nft flush ruleset` to the published port answering again, median of 20: "
        f"{watch * 1000:.0f} ms (a client connection every attempt included)")
    out()
    out("Every write also records its change in natmap's store (SQLite): section 1's natmap column "
        "includes writing 10,000 rows there, which the floors do not do.")
    out()
    return dict(port10=ports[10], port10000=ports[10000], watch=watch)


def _children() -> set[int]:
    me = os.getpid()
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == me:
                found.add(int(entry))
    return found


# --- 8. scale: the workloads of issue 16 ------------------------------------------------------


def singles(sb: Sandbox) -> dict:
    """10,000 single `-p` strings (`10000:1`, ...; 250 endpoints x 40) in one
    transaction, vs the same 10,000 elements as one libnftables call."""
    import nftables

    eps = endpoints(10000, sb.bridge)
    specs = [(endpoint, [f"{int(spec.split('-')[0]) + i}:{i + 1}" for i in range(PORTS)]) for endpoint, spec in eps]
    nm = natmap.NatMap(table="bench", netns=sb.host.name)
    lib = sb.host.call(nftables.Nftables)
    text = floor_text("floor", eps)
    drop_floor = lambda: sb.host.run(["nft", "delete", "table", "inet", "floor"])  # noqa: E731

    def publish_singles() -> None:
        with nm.transaction() as tx:
            for endpoint, texts in specs:
                tx.publish(endpoint, texts)

    def natmap_setup() -> None:  # removes the floor's table; the ports parsed as a new process parses them
        drop_floor()
        natmap.spec._PORTS.clear()  # the single ports read before (spec._fast_port): a first parse is measured

    timed = interleaved({"natmap": (publish_singles, _settled(natmap_setup)),  # each setup removes the other's table
                         "floor": (lambda: sb.host.call(lib.cmd, text), _settled(lambda: _clean(nm)))},
                        repeats=BIG_REPEATS)
    _clean(nm)
    drop_floor()
    out(f"10,000 single `-p` strings, one transaction: natmap {timed['natmap'] * 1000:.1f} ms, "
        f"floor (one map, one libnftables call) {timed['floor'] * 1000:.1f} ms: "
        f"{timed['natmap'] / timed['floor']:.2f}x")
    out()
    return timed


WHOLE = ["1-65535:1-65535/tcp", "1-65535:1-65535/udp"]


def whole_range(sb: Sandbox) -> dict:
    """tcp+udp 1-65535 same-port for one endpoint."""
    big = natmap.Endpoint("whole", "172.30.100.1", sb.bridge)
    nm = natmap.NatMap(table="whole", netns=sb.host.name)
    timed = interleaved({"publish": (lambda: nm.publish(big, WHOLE), None),
                         "port": (lambda: natmap.NatMap(table="whole", netns=sb.host.name).port("whole"), None),
                         "ls": (lambda: subprocess.run([NATMAP_CLI, "ls", "--table", "whole", "--netns",
                                                        sb.host.name], check=True, capture_output=True), None),
                         "unpublish": (lambda: nm.unpublish("whole"), None)})
    code = ("import sys, natmap\n"
            "nm = natmap.NatMap(table='mem', netns=sys.argv[1])\n"
            "nm.publish(natmap.Endpoint('whole', '172.30.100.1', 'natmap0'), sys.argv[2:])\n"
            "assert len(natmap.NatMap(table='mem', netns=sys.argv[1]).port('whole')) == 131070\n"
            "nm.remove()\n"
            "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))\n")
    rss_mb = int(subprocess.run([sys.executable, "-c", code, sb.host.name, *WHOLE], capture_output=True,
                                text=True, check=True).stdout) / 1024
    ipt = natmap.NatMap(table="bench", netns=sb.host.name, backend="iptables")
    ipt_timed = interleaved({"publish": (lambda: ipt.publish(big, WHOLE), None),
                             "unpublish": (lambda: ipt.unpublish("whole"), None)}, repeats=3)
    _clean(ipt)
    _clean(nm)
    out("tcp+udp 1-65535 same-port, one endpoint (131,070 ports): "
        f"publish {timed['publish'] * 1000:.1f} ms, port() from a new NatMap {timed['port'] * 1000:.1f} ms, "
        f"`natmap ls` as a process {timed['ls'] * 1000:.0f} ms, unpublish {timed['unpublish'] * 1000:.1f} ms, "
        f"peak RSS (a whole process publishing and reading it) {rss_mb:.0f} MB; "
        f"iptables: publish {ipt_timed['publish'] * 1000:.1f} ms, unpublish {ipt_timed['unpublish'] * 1000:.1f} ms")
    out()
    return dict(timed, rss_mb=rss_mb, ipt_publish=ipt_timed["publish"])


def shifted(sb: Sandbox) -> dict:
    """A shifted range of 10,000 ports: one element a port, vs those elements in one call."""
    import nftables

    big = natmap.Endpoint("shifted", "172.30.100.2", sb.bridge)
    nm = natmap.NatMap(table="bench", netns=sb.host.name)
    lib = sb.host.call(nftables.Nftables)
    elements = ", ".join(f'tcp . {20000 + i} comment "shifted" : {big.ip} . {30000 + i}' for i in range(10000))
    text = (skeleton("floor") + f'add element inet floor bridges {{ "natmap0" }}\n'
            f"add element inet floor subnets4 {{ 172.30.0.0/16 }}\n"
            f"add element inet floor dnat4_any {{ {elements} }}\n")
    drop_floor = lambda: sb.host.run(["nft", "delete", "table", "inet", "floor"])  # noqa: E731
    timed = interleaved({"natmap": (lambda: nm.publish(big, ["20000-29999:30000-39999"]), _settled(drop_floor)),
                         "floor": (lambda: sb.host.call(lib.cmd, text), _settled(lambda: _clean(nm)))},
                        repeats=BIG_REPEATS)
    _clean(nm)
    drop_floor()
    out(f"shifted range 20000-29999:30000-39999 (10,000 elements): natmap {timed['natmap'] * 1000:.1f} ms, "
        f"floor {timed['floor'] * 1000:.1f} ms: {timed['natmap'] / timed['floor']:.2f}x")
    out()
    return timed


def port_among(sb: Sandbox) -> dict:
    """`natmap port NAME` as a process, with 10 and with 10,000 other bindings in the table."""
    web = natmap.Endpoint("asked", "172.30.100.3", sb.bridge)
    results = {}
    for n in (10, 10000):
        nm = natmap.NatMap(table="among", netns=sb.host.name)
        publish_all(nm, endpoints(n, sb.bridge))
        nm.publish(web, ["9080:80"])
        results[n] = interleaved({"port": (lambda: subprocess.run(
            [NATMAP_CLI, "port", "asked", "--table", "among", "--netns", sb.host.name], check=True,
            capture_output=True), None)},
            repeats=STARTS)["port"]
        _clean(nm)
    out(f"`natmap port NAME` as a process: {results[10] * 1000:.0f} ms with 10 other bindings, "
        f"{results[10000] * 1000:.0f} ms with 10,000: {results[10000] / results[10]:.2f}x")
    out()
    return results


def conntrack_cleanup(sb: Sandbox) -> dict:
    """Unpublishing 10,000 UDP bindings (all 250 endpoints, one transaction) with
    2,000 unrelated UDP conntrack entries (unanswered flows from the host to
    other ports), and unpublishing ONE endpoint (40 bindings) among them."""
    nm = natmap.NatMap(table="bench", netns=sb.host.name)
    eps = [(endpoint, spec + "/udp") for endpoint, spec in endpoints(10000, sb.bridge)]

    def setup() -> None:
        _clean(nm)
        publish_all(nm, eps)
        sb.host.run(["conntrack", "-F"])
        sb.host.call(_udp_flows, 2000)  # they last 30 s: made again before each run

    def unpublish_all() -> None:
        with nm.transaction() as tx:
            for endpoint, _ in eps:
                tx.unpublish(endpoint.name)

    timed = interleaved({"all": (unpublish_all, setup), "one": (lambda: nm.unpublish("ep0"), setup)})
    entries = int(sb.host.run(["conntrack", "-C"], capture_output=True, text=True).stdout)
    _clean(nm)
    out(f"unpublish with 10,000 bindings and {entries:,} unrelated conntrack entries: "
        f"all 10,000 in one transaction {timed['all'] * 1000:.0f} ms; one endpoint (40) {timed['one'] * 1000:.1f} ms")
    out()
    return timed


def _udp_flows(count: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(count):
        sock.sendto(b"x", ("127.0.0.1", 40000 + i))
    sock.close()


def range_flows(sb: Sandbox) -> dict:
    """New flows a second through a single-port binding and through one
    65,535-port interval element, both published at once and sent to in
    alternating blocks of 100 flows: a spell of load on this shared machine
    falls on both alike (measured one after the other, a round each, the ratio
    swung from 0.5x to 1.7x between rounds with the same rule set)."""
    container = sb.container("rangesink")
    client = sb.client("rangesender")
    nm = natmap.NatMap(table="bench", netns=sb.host.name)
    second = str(sb.outside_ip + 100)  # a second host address: the range holds every port of the first
    sb.host.run(["ip", "addr", "add", f"{second}/{sb.outside.prefixlen}", "dev", "nmout"], check=True)
    layouts = {  # name: (specs, (single's target, range's target))
        "range": ([f"{second}:9999:9999/udp", f"{sb.outside_ip}:1-65535:1-65535/udp"],
                  [(second, 9999), (str(sb.outside_ip), 20000)]),
        # the common shape: every address, the range beside the single port
        "any": (["9999:9999/udp", "10000-65535:10000-65535/udp"],
                [(str(sb.outside_ip), 9999), (str(sb.outside_ip), 20000)]),
        # two single ports: what the method reads where there is no difference
        "control": (["9999:9999/udp", "20000:20000/udp"], [(str(sb.outside_ip), 9999), (str(sb.outside_ip), 20000)]),
    }
    ratios: dict[str, float] = {}
    for name, (specs, targets) in layouts.items():
        nm.publish(container.endpoint(ipv6=False), specs)
        runs = []
        for _ in range(1 + REPEATS):  # the first round not counted
            sb.host.run(["conntrack", "-F"])
            single, through_range = client.call(_send_alternating, targets, 5000 if QUICK else 30000)
            runs.append(through_range / single)
        sb.host.run(["conntrack", "-F"])  # else removing the bindings cuts their flows one by one
        _clean(nm)
        ratios[name] = statistics.median(runs[1:])
    out(f"new flows a second through a 65,535-port interval element (on one host address) / through a "
        f"single-port binding (on another), in alternating blocks: {ratios['range']:.2f}x; on every address, "
        f"a 55,536-port element beside the single port: {ratios['any']:.2f}x; two single ports the same way "
        f"(the method's own spread): {ratios['control']:.2f}x")
    out()
    return ratios


def _send_alternating(targets: list[tuple[str, int]], count: int, block: int = 100) -> list[float]:
    """UDP datagrams (new flows: each from its own source port) to each of
    ``targets`` in turn, ``block`` at a time; the flows a second of each."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
    spent = [0.0] * len(targets)
    for first in range(0, count, block):
        for i, (host, port) in enumerate(targets):
            packets = [struct.pack("!HHHH", 1024 + first + j, port, 8, 0) for j in range(block)]
            start = time.perf_counter()
            for packet in packets:
                sock.sendto(packet, (host, 0))
            spent[i] += time.perf_counter() - start
    sock.close()
    return [count / s for s in spent]


def scale(sb: Sandbox) -> dict:
    out("## 8. Scale: the workloads of issue 16 (medians, measured in turns)")
    out()
    return dict(singles=singles(sb), whole=whole_range(sb), shifted=shifted(sb), port=port_among(sb),
                conntrack=conntrack_cleanup(sb), flows=range_flows(sb))


def scale_checks(sc: dict) -> list[tuple[str, float, float]]:
    whole = sc["whole"]
    return [
        ("10,000 single `-p` strings, one transaction <= 1.5x the floor",
         sc["singles"]["natmap"] / sc["singles"]["floor"], 1.5),
        ("tcp+udp 1-65535 same-port: publish <= 50 ms", whole["publish"] * 1000, 50),
        ("tcp+udp 1-65535: port() from a new NatMap <= 100 ms", whole["port"] * 1000, 100),
        ("tcp+udp 1-65535: `natmap ls` (ps) as a process <= 150 ms", whole["ls"] * 1000, 150),
        ("tcp+udp 1-65535: unpublish <= 50 ms", whole["unpublish"] * 1000, 50),
        ("tcp+udp 1-65535: peak RSS <= 100 MB", whole["rss_mb"], 100),
        ("tcp+udp 1-65535 on iptables: publish <= 1 s", whole["ipt_publish"] * 1000, 1000),
        ("shifted range of 10,000 <= 1.5x the floor", sc["shifted"]["natmap"] / sc["shifted"]["floor"], 1.5),
        ("`natmap port NAME` with 10,000 others <= 1.5x with 10", sc["port"][10000] / sc["port"][10], 1.5),
        ("unpublish 10,000 bindings beside 2,000 unrelated conntrack entries <= 100 ms",
         sc["conntrack"]["all"] * 1000, 100),
        ("unpublish one endpoint beside 10,000 bindings and 2,000 entries <= 100 ms",
         sc["conntrack"]["one"] * 1000, 100),
        ("new-flow rate through a 65,535-port element >= 0.9x a single port (shown as single/range <= 1.11)",
         1 / sc["flows"]["range"], 1 / 0.9),
    ]


# What section 8's targets that do not hold on this machine cost, and what was tried (issue 16).
SCALE_NOTES = """\
### Section 8: what each target took, where its margin is thin, what was tried

- **10,000 single `-p` strings, a shifted range of 10,000 and section 1's
  full apply of 10,000 <= 1.5x the floor.** natmap makes the floor's own
  call (its nft text is the floor's, byte for byte, and costs the floor's
  time); what it adds is Python, so 1.5x leaves it half the floor (35-50
  ms for 10,000 bindings on this VM). They reached it on 2026-11-30 after
  four rounds, each profiled (cProfile, perf_counter and thread_time around
  each phase, old and new code in turns) before it was cut:
  (1) `8080:80[/proto]` read without the regex; one-to-one specs published
  in one loop that changes the indexes in line; a first publish's items not
  sorted by their text; no setns per endpoint when no host IP is checked.
  (2) The store's format 2: a row a run of ports (10,000 single `-p` of 250
  endpoints are 250 rows), a new store made without fsync.
  (3) The cyclic garbage collector paused inside natmap's calls (a
  10,000-binding change makes ~100,000 objects and no cycle); slot-setter
  constructors; deletions' keys written out.
  (4) This round (perfparse, perfmodel, perfexit): a LIST of
  `host:container[/proto]` specs read as one text (PortSpec.parse_many:
  one regex, one split, a cache of port values; anything unusual falls back
  to the one-spec parser for the whole list, so every error is its error):
  a first parse of the bench's 10,000 singles 15 -> 8 ms of CPU; the model
  takes consecutive single specs as one run of ports (checked free by port
  numbers, inserted with dict.update, else binding by binding, so every
  error stays the same) and makes its objects as slot twins turned Binding /
  PortSpec by `__class__` (a third of the slot setters' cost); a publish's
  result known to be in `docker port` order is not sorted again; the guard
  asks the kernel for the host ports as runs (no sort of 10,000 tuples) and
  skips other tables when there are none; the store's run rows and the nft
  text share what a run shares. CPU of 10,000 bindings outside the kernel
  call: the publish calls 30.5 -> 14 ms (singles, parsing apart) and 24.5 ->
  11.5 (range specs); the guard, store, text and the rest of the commit 28
  -> 16. Property tests hold each fast path equal to the general one
  (values, order, errors). Six runs of section 8 between 20:28 and 20:58
  UTC (load 0.3-1.2, nothing else running): singles 1.48x, 2.15x, 1.06x,
  1.74x, 1.31x, 1.60x (median 1.54x); shifted 1.35x, 1.30x, 1.63x, 1.17x,
  1.63x, 1.28x; section 1's 10,000 1.35x, 1.38x, 1.39x (2.49x, 1.26x and
  1.73x in the whole run of 18:20 before this round, at load 2). So the
  full apply holds, the shifted range holds more often than not, and the
  singles sit on the line. The spread is the machine's: timed phase by phase
  (perf_counter, ten rounds in one process), every phase of a slow round is
  about 1.5x a fast one's, Python and libnftables' C alike (the floor's own
  call measured 77-131 ms in one series), and natmap's rounds fall in two
  groups about 60 ms apart; medians of 11 rounds instead of 5 and a pause
  after each setup (the kernel frees a deleted table's elements after the
  call returns) did not narrow it. natmap's own part, in CPU time, is what
  fell (above). About 10 ms of the singles' time is the garbage collector
  running in the caller's loop BETWEEN the 250 publish calls (each call's
  new bindings are young objects; a full collection walks the whole heap
  when it comes).
  Pausing it for the whole `with` block would only move that work past the
  block (the bindings live on) and stop collection in every other thread of
  the caller's process meanwhile; not done. What is left is about 3 us of
  Python a binding (making 10,000 Binding objects alone is 3 ms); the next
  step is one model object per run of ports (a shifted run as one binding
  of `count` ports, as same-port ranges are), which changes what every
  reader of the table sees: not begun.
- **One more port with 10,000 present, store included, <= 1.5 ms (section
  2).** 1.3-1.4 ms in the helper's runs of section 2 alone (perfinc: the
  namespace entered once a call, the port pool's sysctls read only when a
  port is assigned, a legacy filter table of policies only no longer read
  with every change, fewer system calls), 1.7-2.0 ms in the whole runs of
  20:28-20:58 UTC, with 10 bindings present as with 10,000 (nothing grows
  with the table). What is left is spread thin: the libnftables call about
  0.3 ms (the floor's add is 0.4-0.6), two SQLite write transactions about
  0.2, the host-socket check about 0.1, loading and the locks about 0.1,
  and some 14 namespace-guard blocks, each now a stat. After the attacker
  trial each nested block checks the thread's namespace again (one stat; a
  flag alone let a call run in another NatMap's namespace). Unpublishing
  one port: 7-9 ms, almost all of it the kernel walking its conntrack hash
  (one dump, whatever the filter), under the lock for the reasons in
  natmap.host.Session.forget_flows.
- **`natmap port NAME` with 10,000 others <= 1.5x with 10.** The kernel cannot
  be asked for one endpoint's elements: the comment is not a key. `list
  table` makes libnftables format all 10,000 elements (about 40% of the time)
  and natmap builds the table in Python (about 35%); building only the asked
  endpoint's bindings would save the latter, not reach 1.5x. Left to the
  desired-state store (issue 12), which answers from disk.
- **Unpublishing 10,000 bindings beside 2,000 unrelated conntrack entries
  <= 100 ms.** The conntrack part is O(entries + bindings) (43 s before:
  each entry was tested against each binding) and now makes the bindings'
  tests only when the kernel hands back translated entries: one dump of the
  translated entries of both families, 6-40 ms here (the kernel walking its
  262,144-bucket hash; none of the 2,000 is translated). The rest is the
  write path: deleting 10,000 elements (rendering and the libnftables call,
  60-80 ms alone), the store's rows and the model; measured 126 ms in a quiet
  spell and 360-550 ms under load. Unpublishing one endpoint among them:
  8-44 ms. The cleanup stays under the table's lock (see
  natmap.host.Session.forget_flows: outside it, a republished binding's new
  flows could be cut, and a crash would leave old ones with nothing pending).
  Timed by phase on 2026-11-30 (storefast; loaded, totals 240-260 ms):
  libnftables deleting the 10,000 elements 80-90 ms, making that JSON batch
  70-100 ms, conntrack 15-30, the model 12-20, the store 7-30 (now a row
  a run). `flush map` of the same map takes 7-16 ms, against 95-125 ms for
  deleting its 10,000 elements (text or JSON alike, measured in turns): a
  change that empties or nearly empties a map is cheapest as a flush and the
  rest added back, which would save most of both the libnftables call and
  the JSON. Written and taken back: a flush also drops any element another
  program put in natmap's maps, which natmap leaves and reports (README,
  Guarantees: other programs' rules), and knowing there is none takes a
  read of the map, which costs about what the flush saves. Done after this
  run: the deletions' JSON keys written out, no _Element a binding (as the
  publish's text is): 10,000 keys in about 5 ms of CPU instead of 31.
  Run of 17:08, load 0.6-2: 113 ms (191 ms at 16:20 before these changes;
  509 ms at 16:31, load 5-6). After perf2's changes (the collector paused,
  conntrack's families read from the bindings' keys): 88, 73 and 105 ms in
  three runs at load 1-2.6, so it holds unless the machine is loaded. The
  libnftables call is 55-60 ms of it; deleting the same 10,000 keys as nft
  text instead of JSON measured 62 against 71 ms (JSON encoding included),
  not switched (the change's JSON is what apply sends for every change).
- **Absolute targets (publish, unpublish, `natmap ls` of tcp+udp 1-65535).**
  Held as one interval element per protocol (nft) or one rule (iptables),
  they cost what one element costs; `natmap ls` as a process is Python's
  start and natmap's import (about three quarters of it) plus one read: 71 ms
  in a quiet spell, 228-501 ms while other jobs loaded both cores (`python -c
  pass` 106 ms instead of 18 in the same minute). What was done for its
  start-up is `natmap port`'s (below). After it, 2026-11-30: 187 ms in a
  whole `make bench` at load 6-8 (`python -c pass` 58 ms), 129 ms in section
  8 alone (`BENCH_ONLY=scale`) right after, with a `make test` beside it.
  The same two runs measured `natmap port NAME` with 10,000 others at 1.65x
  and 0.79x with 10 (226 ms with 10, 178 with 10,000): both read the store
  and the same few rows, and the difference is the machine's, not the work.
- **New flows through a 65,535-port element >= 0.9x a single port.** It
  holds; the 0.50x-0.77x measured before was the method. Measured one rule
  set after the other, a round of 20,000 flows each, rates of the SAME rule
  set swung 50,000-200,000 a second between rounds while other jobs loaded
  the machine. Now both bindings are published at once and the sender
  alternates blocks of 100 new flows between them: the range on one host
  address (all 65,535 ports) against the single port on another, 1.01x,
  1.10x and 0.81x in three runs (median 1.01x); on every address
  (10000-65535 beside 9999) 0.85x-1.09x;
  two single ports measured the same way, where nothing differs, 0.92x-1.03x
  (0.92x a median of 15 rounds, the range 0.95x beside it): the method's
  spread under load is 10-20%. A system-wide `perf record` while flows pass shows the
  interval lookups at 0.1-0.2% of samples (`pipapo_get_avx2` 0.21% for an
  address's range, a concatenation; the lookup of the per-protocol map of
  an every-address range below 0.1%), `nft_do_chain` about 1% for either:
  the kernel's set backends are not the cost.
- **`natmap port` <= 2x (python start + kernel read), section 5.** The process
  is Python's start, natmap's import and about 6 ms of work. Done before: the
  nftables generation asked on a `_socket` socket (the `socket` module's enum
  classes cost 3-4 ms), the sub-parsers' prog given instead of derived by
  formatting a usage text (1-4 ms); it then measured 1.80x-2.21x in five runs.
  Done on 2026-11-30 (leanstart): `natmap port` and `natmap ls` in their plain
  forms are read without argparse (cli._plain_args: importing it and building
  the command's parser was 8-10 ms of CPU; anything else, help, -v, errors,
  is still argparse's, and tests hold both readings equal, on argv and on
  random tables through `main`), and natmap's import runs with the garbage
  collector off (its ~30 collections found nothing: 4-5 ms). Measured in turns
  against the code before (15 rounds, load 5.7): `natmap port` CPU 95 -> 87 ms
  at best, 114 -> 102 median; `natmap ls` 95 -> 88, 115 -> 103. The ratio
  then measured 2.06x in a whole `make bench` at load 6-8, and 1.82x, 1.88x
  and 1.63x in three runs of section 5 alone (`BENCH_ONLY=startup`, load
  4.6-5.2, a `make test` running beside it): it holds more often than not
  now, by a few ms, and a loaded machine still pushes it over. What is left
  is the import (about 40 ms quiet), mostly what natmap is made of: the
  dataclasses module and what it imports (inspect, ast, dis, tokenize: about
  10 ms), then about 1 ms a frozen dataclass for their generated methods,
  sqlite3, ctypes for setns. The engine's own modules (engine, guest, host,
  hoststate, locking) are 4-6 ms of it: a reader that skipped them would
  repeat the engine's trust of the store (the generation, the namespace's
  cookie, the backend check), the part that makes its answers the engine's;
  not done. A hand-written frozen-value class instead of dataclasses was tried
  before and rejected (the standard library's, and mypy's check of frozenness).
- **This run's machine.** A 2-vCPU VM; earlier runs of the day shared it
  with other engineers' test suites (see `python -c pass` in section 5
  against its quiet 18-36 ms), the runs of 20:28-20:58 UTC did not. Ratios of Python
  against libnftables' C moved from run to run by more than the code changed
  them (see the write-path figures above), and natmap's look at the
  namespace's iptables tables (for conflicts) can wait for the xtables lock
  other programs hold (seen once: 0.5 s).
"""


# --- the verdict -------------------------------------------------------------------------------


def targets(full: dict, inc: dict, tear: dict, path: dict, start: dict, mem: dict, kept: dict,
            sc: dict, rea: dict) -> None:
    out("## Targets")
    out()
    biggest = max(full)
    checks = [
        (f"full apply of {biggest:,} bindings <= 1.5x the in-process floor",
         full[biggest]["natmap"] / full[biggest]["floor"], 1.5),
        *incremental_checks(inc),
        ("`natmap port NAME` with 10,000 bindings <= 1.5x with 10", kept["port10000"] / kept["port10"], 1.5),
        ("`natmap watch`: flush to answer <= 100 ms", kept["watch"] * 1000, 100),
        ("unpublishing 1,000 ports <= 2x publishing them", tear["unpublish"] / tear["publish"], 2.0),
        ("nft new-flow rate at N=10,000 >= 0.9x N=1 (shown as N=1/N=10,000 <= 1.11)",
         path["nft"][1] / path["nft"][10000], 1 / 0.9),
        ("`natmap port` <= 2x (python start + kernel read)", start["port"] / (start["python"] + start["read"]), 2.0),
        ("peak RSS for 10,000 bindings < 150 MB", mem["rss_mb"], 150),
        ("processes left running == 0", mem["left"], 0),
        *scale_checks(sc),
        ("re-apply of an unchanged 10,000-endpoint file, a new process, <= 0.5 s", rea["reapply"], 0.5),
    ]
    out("| target | measured | limit | holds |")
    out("|---|---|---|---|")
    for name, value, limit in checks:
        out(f"| {name} | {value:.2f} | {limit:.2f} | {'yes' if value <= limit else 'NO'} |")
    out()
    out(SCALE_NOTES)


def incremental_checks(inc: dict) -> list[tuple[str, float, float]]:
    """Section 2's targets: (name, measured, limit)."""
    return [
        ("one more port with 10,000 present <= 1.5x with 10 present",
         inc[10000]["add"] / inc[10]["add"], 1.5),
        ("one more port with 10,000 present <= 2 ms", inc[10000]["add"] * 1000, 2.0),
        ("one more port with 10,000 present, store included, <= 1.5 ms", inc[10000]["add"] * 1000, 1.5),
    ]


USAGE = """usage: bench.py  (as root: `make bench`; takes no arguments)

Runs every section in sandbox namespaces and rewrites bench/RESULTS.md,
keeping its CNI section (`make bench-cni`, bench/cni_bench.py, writes only
that one). BENCH_ONLY=full|incremental|startup|scale|reapply runs one
section and prints it and its target lines, writing no file; BENCH_QUICK=1
takes fewer repeats. bench/reapply_bench.py also runs alone."""
SECTIONS = ("full", "incremental", "startup", "scale", "reapply")


def _check_usage(argv: list[str]) -> None:
    """Print the usage for -h/--help and refuse anything else before the
    bench starts: it takes minutes and rewrites RESULTS.md."""
    if argv in (["-h"], ["--help"]):
        raise SystemExit(print(USAGE))
    if argv:
        raise SystemExit(f"{USAGE}\n\nbench.py: takes no arguments, got {' '.join(argv)!r}")
    only = os.environ.get("BENCH_ONLY")
    if only is not None and only not in SECTIONS:
        raise SystemExit(f"{USAGE}\n\nbench.py: BENCH_ONLY={only!r} is none of {', '.join(SECTIONS)}")


def main() -> None:
    _check_usage(sys.argv[1:])
    if os.geteuid() != 0:
        raise SystemExit("the benchmarks run in network namespaces: run them as root (make bench)")
    started = time.monotonic()
    out(f"# natmap benchmarks, {datetime.date.today().isoformat()}")
    out()
    out(f"Machine: {platform.node()}, {os.cpu_count()} vCPU, Linux {platform.release()}, "
        f"Python {platform.python_version()}, nftables {_version(['nft', '--version'])}, "
        f"iptables {_version(['iptables-legacy', '--version'])}. "
        f"Medians of {REPEATS} runs unless said otherwise; ratios are from this one run.")
    out()
    with Sandbox(subnet="172.30.0.0/16", subnet6=None) as sb:
        if os.environ.get("BENCH_ONLY") == "scale":  # one section, for working on it
            for name, value, limit in scale_checks(scale(sb)):
                out(f"| {name} | {value:.2f} | {limit:.2f} | {'yes' if value <= limit else 'NO'} |")
            return
        if os.environ.get("BENCH_ONLY") == "incremental":  # section 2 alone, with its targets
            inc = incremental(sb)
            for name, value, limit in incremental_checks(inc):
                out(f"| {name} | {value:.2f} | {limit:.2f} | {'yes' if value <= limit else 'NO'} |")
            return
        if os.environ.get("BENCH_ONLY") == "startup":  # section 5 alone, with its target
            start = startup(sb)
            ratio = start["port"] / (start["python"] + start["read"])
            out(f"| `natmap port` <= 2x (python start + kernel read) | {ratio:.2f} | 2.00 | "
                f"{'yes' if ratio <= 2 else 'NO'} |")
            return
        if os.environ.get("BENCH_ONLY") == "full":  # section 1 alone, with its target
            full = full_apply(sb)
            ratio = full[max(full)]["natmap"] / full[max(full)]["floor"]
            out(f"| full apply of {max(full):,} bindings <= 1.5x the in-process floor | {ratio:.2f} | 1.50 | "
                f"{'yes' if ratio <= 1.5 else 'NO'} |")
            return
        if os.environ.get("BENCH_ONLY") == "reapply":
            reapply_section(sb, out)
            return
        full = full_apply(sb)
        inc = incremental(sb)
        tear = teardown(sb)
        path = packet_path(sb)
        start = startup(sb)
        mem = memory(sb)
        kept = store(sb)
        sc = scale(sb)
        rea = reapply_section(sb, out)
        targets(full, inc, tear, path, start, mem, kept, sc, rea)
    out(f"Whole run: {time.monotonic() - started:.0f} s.")
    RESULTS.write_text("\n".join(report) + "\n" + _cni_section())
    print(f"\nwritten to {RESULTS}")


def _cni_section() -> str:
    """bench/cni_bench.py's section of RESULTS.md (between its markers), kept
    as it is: `make bench` does not measure podman, `make bench-cni` does."""
    old = RESULTS.read_text() if RESULTS.exists() else ""
    begin, end = old.find("<!-- cni_bench begin -->"), old.find("<!-- cni_bench end -->")
    return "" if begin < 0 or end < begin else "\n" + old[begin:end] + "<!-- cni_bench end -->\n"


def _version(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True).stdout.split()[1]
    except (OSError, IndexError):
        return "?"


if __name__ == "__main__":
    main()

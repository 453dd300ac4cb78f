"""Issue 12: the desired state lives on disk (natmap's store); the kernel is
checked against it, from any process. Each numbered case of the issue, with
its right outcome, and the crash at every step of a change. Root only."""

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import natmap
from helpers import delete_behind_natmaps_back

NATMAP = str(Path(sys.executable).with_name("natmap"))


def cli(sandbox, backend, *args):
    return subprocess.run([NATMAP, *args, "--backend", backend, "--netns", sandbox.host.name],
                          capture_output=True, text=True)


def flush(sandbox, backend):
    if backend == "nft":
        sandbox.host.run(["nft", "flush", "ruleset"], check=True)
    else:
        for tool in ("iptables-legacy", "ip6tables-legacy"):
            for table in ("nat", "filter", "raw"):
                sandbox.host.run([tool, "-t", table, "-F"], check=True)
                sandbox.host.run([tool, "-t", table, "-X"])  # fails if a writer re-jumped meanwhile


@pytest.fixture
def web(sandbox):
    container = sandbox.container("web01")
    container.serve(5000)
    return container


def test_case1_a_new_process_after_a_flush_reports_the_table_gone_and_restore_brings_it_back(
        sandbox, nm, backend, web):
    nm.publish(web.endpoint(), ["8080:5000"])
    flush(sandbox, backend)
    result = cli(sandbox, backend, "check")
    assert result.returncode == 1
    assert "missing: port web01 5000/tcp -> 0.0.0.0:8080" in result.stderr
    if backend == "nft":
        assert "the table is gone from the kernel" in result.stderr
    assert cli(sandbox, backend, "restore").returncode == 0
    client = sandbox.client("client1")
    assert client.request(sandbox.outside_ip, 8080) == "web01 192.0.2.2"
    assert cli(sandbox, backend, "check").returncode == 0


def test_case2_repair_never_deletes_what_another_process_published(sandbox, nm, backend, web):
    db = sandbox.container("db01")
    db.serve(5432)
    nm.publish(web.endpoint(), ["8080:5000"])
    other = natmap.NatMap(netns=sandbox.host.name, backend=backend)  # "process B"
    other.publish(db.endpoint(), ["5432:5432"])
    delete_behind_natmaps_back(sandbox, backend, nm.port("web01", 5000)[0])
    nm.repair()
    client = sandbox.client("client1")
    assert client.request(sandbox.outside_ip, 8080) == "web01 192.0.2.2"
    assert client.request(sandbox.outside_ip, 5432) == "db01 192.0.2.2"
    assert not nm.check()


def test_case3_and_4_a_write_repairs_the_drift_it_finds_and_never_absorbs_it(sandbox, nm, backend, web):
    nm.publish(web.endpoint(), ["8080:5000"])
    victim = nm.port("web01", 5000)[0]
    delete_behind_natmaps_back(sandbox, backend, victim)
    assert victim in nm.check().missing
    # reads are verified: nft's generation says the kernel changed; iptables is always read
    assert victim not in nm.port("web01") and victim not in nm.bindings()
    db = sandbox.container("db01")
    db.serve(5432)
    nm.publish(db.endpoint(), ["5432:5432"])  # finds the drift and repairs it in the same transaction
    assert not nm.check()
    client = sandbox.client("client1")
    assert client.request(sandbox.outside_ip, 8080) == "web01 192.0.2.2"
    # publishing the same binding again really makes it answer
    delete_behind_natmaps_back(sandbox, backend, victim)
    assert nm.publish(web.endpoint(), ["8080:5000"])
    assert client.request(sandbox.outside_ip, 8080) == "web01 192.0.2.2"


def test_case5_a_changed_guard_verdict_and_a_foreign_chain_are_drift(sandbox, nm, backend, web):
    nm.publish(web.endpoint(), ["127.0.0.1:5001:5000"])
    if backend == "nft":
        listing = sandbox.host.run(["nft", "-a", "list", "chain", "inet", "natmap", "localhost_guard"]).stdout
        handle = next(line.rsplit(" ", 1)[1] for line in listing.splitlines() if "127.0.0.0/8 drop" in line)
        sandbox.host.run(["nft", "replace", "rule", "inet", "natmap", "localhost_guard", "handle", handle,
                          "iifname", "!=", "lo", "ip", "daddr", "127.0.0.0/8", "accept"], check=True)
        sandbox.host.run(["nft", "add", "chain", "inet", "natmap", "intruder"], check=True)
        sandbox.host.run(["nft", "add", "map", "inet", "natmap", "extra", "{ type ipv4_addr : ipv4_addr ; }"],
                         check=True)
    else:
        sandbox.host.run(["iptables-legacy", "-t", "raw", "-R", "NATMAP-GUARD", "1", "-d", "127.0.0.0/8",
                          "!", "-i", "lo", "-j", "ACCEPT"], check=True)
    drift = nm.check()
    text = str(drift)
    if backend == "nft":
        assert "structure: rule localhost_guard #1 changed" in text
        assert "structure: chain intruder is not natmap's" in text
        assert "structure: map extra is not natmap's" in text
    else:
        assert "is missing or changed" in text and "NATMAP-GUARD is not natmap's" in text
    with pytest.raises(natmap.DriftError):
        nm.check(strict=True)
    nm.repair()
    assert not nm.check()


def test_case6_an_element_without_a_comment_breaks_nothing(sandbox, web):
    nm = natmap.NatMap(netns=sandbox.host.name)
    nm.publish(web.endpoint(), ["8080:5000"])
    sandbox.host.run(["nft", "add", "element", "inet", "natmap", "dnat4_any",
                      "{ tcp . 9999 : 172.30.0.9 . 80 }"], check=True)
    assert [b.host_port for b in nm.port("web01")] == [8080, 8080]
    assert len(nm.bindings()) == 2
    drift = nm.check()
    assert len(drift.foreign) == 1 and "dnat4_any" in drift.foreign[0]
    db = sandbox.container("db01")
    nm.publish(db.endpoint(), ["5432:5432"])  # a write leaves the foreign element to repair
    nm.unpublish("db01")
    assert nm.check().foreign
    nm.repair()
    assert not nm.check()
    nm.remove()
    assert sandbox.host.run(["nft", "list", "table", "inet", "natmap"]).returncode != 0


def test_case7_host_settings_are_state_checked_and_restored(sandbox, nm, backend, web):
    nm.publish(web.endpoint(), ["127.0.0.1:5001:5000"])
    sysctl = f"/proc/sys/net/ipv4/conf/{sandbox.bridge}/route_localnet"
    sandbox.host.run(["sh", "-c", f"echo 0 > {sysctl}"], check=True)
    assert sandbox.host.request("127.0.0.1", 5001, timeout=0.5) is None
    assert any("route_localnet is 0" in line for line in nm.check().host)
    nm.repair()
    assert sandbox.host.request("127.0.0.1", 5001) == f"web01 {sandbox.bridge_ip}"
    # a write ensures it as well, even one that changes nothing (a bridge re-created by a runtime)
    sandbox.host.run(["sh", "-c", f"echo 0 > {sysctl}"], check=True)
    nm.publish(web.endpoint(), ["127.0.0.1:5001:5000"])
    assert sandbox.host.request("127.0.0.1", 5001) == f"web01 {sandbox.bridge_ip}"


def test_case7_a_read_only_proc_sys_fails_the_call_before_the_kernel_changes(sandbox, backend, web):
    publish = [NATMAP, "publish", "web01", "--ip", str(web.ip), "--bridge", sandbox.bridge,
               "-p", "127.0.0.1:5001:5000", "--backend", backend, "--netns", sandbox.host.name]
    # a private mount namespace with /proc/sys read-only: a container given only NET_ADMIN
    readonly = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                'mount --bind /proc/sys /proc/sys && mount -o remount,ro,bind /proc/sys && exec "$@"', "sh"]
    result = subprocess.run(readonly + publish, capture_output=True, text=True)
    assert result.returncode != 0 and "route_localnet" in result.stderr, result.stderr
    nm = natmap.NatMap(netns=sandbox.host.name, backend=backend)
    assert not nm.check()  # nothing applied, nothing recorded, nothing pending
    with pytest.raises(natmap.NotFoundError, match="No such endpoint"):
        nm.port("web01")
    assert subprocess.run(publish, capture_output=True).returncode == 0  # the retry really works
    assert sandbox.host.request("127.0.0.1", 5001) == f"web01 {sandbox.bridge_ip}"


@pytest.mark.parametrize("step", ["iptables-4-raw", "iptables-4-filter", "iptables-6-filter", "iptables-4-nat",
                                  "kernel-commit"])
def test_case8_iptables_a_half_made_table_is_seen_and_finished(sandbox, web, step):
    nm = natmap.NatMap(netns=sandbox.host.name, backend="iptables")
    env = {**os.environ, "NATMAP_CRASH_AT": step}
    # a first publish killed after one of its table commits
    result = subprocess.run([NATMAP, "publish", "web01", "--ip", str(web.ip), "--bridge", sandbox.bridge,
                             "-p", "8080:5000", "-p", "127.0.0.1:5001:5000", "--backend", "iptables",
                             "--netns", sandbox.host.name], env=env, capture_output=True, text=True)
    assert result.returncode == -signal.SIGKILL, result.stderr
    # the guard was committed before nat: nothing DNATs to 127/8 without it
    assert "-A NATMAP-GUARD -d 127.0.0.0/8 ! -i lo -j DROP" in \
        sandbox.host.run(["iptables-legacy-save", "-t", "raw"]).stdout or \
        "NATMAP-DNAT" not in sandbox.host.run(["iptables-legacy-save", "-t", "nat"]).stdout
    drift = nm.check()
    assert drift.interrupted and drift
    assert cli(sandbox, "iptables", "check").returncode == 1
    nm.isolate(sandbox.bridge)  # the next write finishes it: no duplicated rules
    saved = sandbox.host.run(["iptables-legacy-save", "-t", "filter"]).stdout
    assert saved.count("-A NATMAP-ISOLATION -j DROP") == 1
    assert not nm.check()
    client = sandbox.client("client1")
    assert client.request(sandbox.outside_ip, 8080) == "web01 192.0.2.2"
    nm.remove()
    assert "NATMAP" not in sandbox.host.run(["iptables-legacy-save"]).stdout


def test_case8_iptables_remove_removes_a_half_made_table(sandbox, web):
    env = {**os.environ, "NATMAP_CRASH_AT": "iptables-4-filter"}
    result = subprocess.run([NATMAP, "publish", "web01", "--ip", str(web.ip), "--bridge", sandbox.bridge,
                             "-p", "8080:5000", "--backend", "iptables", "--netns", sandbox.host.name],
                            env=env, capture_output=True, text=True)
    assert result.returncode == -signal.SIGKILL
    assert "NATMAP-FORWARD" in sandbox.host.run(["iptables-legacy-save"]).stdout
    nm = natmap.NatMap(netns=sandbox.host.name, backend="iptables")
    nm.remove()
    assert "NATMAP" not in sandbox.host.run(["iptables-legacy-save"]).stdout
    assert not nm.check()


STEPS = ["store-write", "kernel-commit", "host-route_localnet", "host-loopback6", "host-bridge-hooks",
         "store-commit"]


@pytest.mark.parametrize("step", STEPS)
def test_a_publish_killed_at_any_step_is_seen_and_finished(sandbox, backend, web, step):
    env = {**os.environ, "NATMAP_CRASH_AT": step}
    result = subprocess.run([NATMAP, "publish", "web01", "--ip", str(web.ip), "--ipv6", str(web.ipv6),
                             "--bridge", sandbox.bridge, "-p", "8080:5000", "-p", "127.0.0.1:5001:5000",
                             "--backend", backend, "--netns", sandbox.host.name],
                            env=env, capture_output=True, text=True)
    assert result.returncode == -signal.SIGKILL, result.stderr
    nm = natmap.NatMap(netns=sandbox.host.name, backend=backend)  # a new process's view
    drift = nm.check()
    assert drift.interrupted == (step != "store-commit")
    nm.repair()
    assert not nm.check()
    client = sandbox.client("client1")
    assert client.request(sandbox.outside_ip, 8080) == "web01 192.0.2.2"
    assert sandbox.host.request("127.0.0.1", 5001) == f"web01 {sandbox.bridge_ip}"


def test_the_store_files_and_modes(sandbox, web, natmap_state_dir):
    nm = natmap.NatMap(netns=sandbox.host.name)
    nm.publish(web.endpoint(), ["8080:5000"])
    path = Path(nm.state_path)
    assert path.parent == Path(natmap_state_dir) and path.name == f"netns-{sandbox.host.name}.natmap.nft.db"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    links = natmap.NatMap(netns=sandbox.host.name)
    db = sandbox.container("db01")
    links.publish(db.endpoint(), ["5432:5432"])
    links.link("web01", "db01", "db", target_env=["PGUSER=me"])
    assert "DB_ENV_PGUSER=me" in natmap.NatMap(netns=sandbox.host.name).links()[0].env


def test_a_damaged_store_is_one_clear_error_and_adopt_rebuilds_it(sandbox, web):
    nm = natmap.NatMap(netns=sandbox.host.name)
    nm.publish(web.endpoint(), ["8080:5000"])
    nm.close()
    Path(nm.state_path).write_bytes(b"this is not a database" * 100)
    for suffix in ("-wal", "-shm"):
        Path(nm.state_path + suffix).unlink(missing_ok=True)
    fresh = natmap.NatMap(netns=sandbox.host.name)
    with pytest.raises(natmap.StoreCorruptError, match="natmap adopt"):
        fresh.publish(web.endpoint(), ["8081:5000"])
    client = sandbox.client("client1")
    assert client.request(sandbox.outside_ip, 8080) == "web01 192.0.2.2"  # the kernel kept its rules
    result = cli(sandbox, "nft", "adopt")
    assert result.returncode == 0, result.stderr
    assert [b.host_port for b in natmap.NatMap(netns=sandbox.host.name).port("web01")] == [8080, 8080]


STRESS = os.environ.get("STRESS") == "1"


def eventually(condition, seconds=3.0):
    """Whether ``condition()`` comes true within ``seconds`` (asked every 20 ms)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_restore_after_a_simulated_reboot(sandbox, backend, web):
    nm = natmap.NatMap(netns=sandbox.host.name, backend=backend)
    nm.publish(web.endpoint(), ["8080:5000", "127.0.0.1:5001:5000"])
    # what a reboot takes: the rules and the settings natmap made
    flush(sandbox, backend)
    sandbox.host.run(["sh", "-c", f"echo 0 > /proc/sys/net/ipv4/conf/{sandbox.bridge}/route_localnet"], check=True)
    sandbox.host.run(["ip", "-6", "route", "del", "local", "::1", "dev", sandbox.bridge, "table", "local"])
    assert cli(sandbox, backend, "check").returncode == 1
    result = cli(sandbox, backend, "restore")
    assert result.returncode == 0 and "natmap (" in result.stdout, result.stderr
    client = sandbox.client("client1")
    assert client.request(sandbox.outside_ip, 8080) == "web01 192.0.2.2"
    assert sandbox.host.request("127.0.0.1", 5001) == f"web01 {sandbox.bridge_ip}"
    assert cli(sandbox, backend, "check").returncode == 0


PUBLISHER = textwrap.dedent("""
    import sys, natmap
    netns, backend, first, count, bridge = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    nm = natmap.NatMap(netns=netns, backend=backend)
    for n in range(first, first + count):
        endpoint = natmap.Endpoint(f"ep{n}", f"172.30.0.{n}", bridge)
        for attempt in range(20):
            try:
                nm.publish(endpoint, [f"{20000 + n}:80"])
                break
            except natmap.BackendError as exc:  # flushed again and again under natmap's own retries
                error = exc
        else:
            raise SystemExit(f"ep{n} was never published: {error}")
""")


REPAIRER = textwrap.dedent("""
    import sys, natmap
    nm = natmap.NatMap(netns=sys.argv[1], backend=sys.argv[2])
    for line in sys.stdin:  # one repair a line; ends when the test closes stdin
        try:
            nm.repair()
        except natmap.NotFoundError:
            pass  # no store yet: nothing published
        except natmap.BackendError:
            pass  # the ruleset flushed under its read: the next line repairs
""")


def test_two_publishers_a_flusher_and_a_repairer_lose_nothing(sandbox, backend):
    count = 40 if STRESS else 10
    procs = [subprocess.Popen([sys.executable, "-c", PUBLISHER, sandbox.host.name, backend, str(first),
                               str(count), sandbox.bridge]) for first in (10, 100)]
    repairer = subprocess.Popen([sys.executable, "-c", REPAIRER, sandbox.host.name, backend],
                                stdin=subprocess.PIPE, text=True)
    try:
        while any(p.poll() is None for p in procs):
            flush(sandbox, backend)  # this process is the flusher, a flush every 50 ms or so
            repairer.stdin.write("repair\n")
            repairer.stdin.flush()
            time.sleep(0.05)
    finally:
        repairer.stdin.close()
        assert repairer.wait(timeout=60) == 0
    assert [p.wait() for p in procs] == [0, 0]
    nm = natmap.NatMap(netns=sandbox.host.name, backend=backend)
    nm.repair()
    assert not nm.check()
    assert sorted(b.host_port for b in nm.bindings()) == sorted(
        20000 + n for first in (10, 100) for n in range(first, first + count))


def test_watch_repairs_every_flush_and_stops_on_sigterm(sandbox, web):
    nm = natmap.NatMap(netns=sandbox.host.name)
    nm.publish(web.endpoint(), ["8080:5000"])
    client = sandbox.client("client1")
    watcher = subprocess.Popen([NATMAP, "watch", "--netns", sandbox.host.name], stderr=subprocess.PIPE, text=True)
    try:
        assert "watching" in watcher.stderr.readline()
        for _ in range(100 if STRESS else 5):
            sandbox.host.run(["nft", "flush", "ruleset"], check=True)
            assert eventually(lambda: client.request(sandbox.outside_ip, 8080, timeout=0.5) == "web01 192.0.2.2")
        sandbox.host.run(["nft", "add", "element", "inet", "natmap", "dnat4_any",
                          "{ tcp . 9999 : 172.30.0.9 . 80 }"], check=True)
        assert eventually(lambda: not nm.check())
    finally:
        watcher.send_signal(signal.SIGTERM)
        assert watcher.wait(timeout=10) == 0
    assert "watch: repaired" in watcher.stderr.read()


def test_a_write_that_repairs_drift_says_so_on_stderr_with_v(sandbox, backend, web):
    nm = natmap.NatMap(netns=sandbox.host.name, backend=backend)
    nm.publish(web.endpoint(), ["8080:5000"])
    victim = nm.port("web01", 5000)[0]
    delete_behind_natmaps_back(sandbox, backend, victim)
    db = sandbox.container("db01")
    result = cli(sandbox, backend, "publish", "db01", "--ip", str(db.ip), "--bridge", sandbox.bridge,
                 "-p", "5432:5432", "-v")
    assert result.returncode == 0, result.stderr
    assert "natmap: drift repaired: missing port web01 5000/tcp -> 0.0.0.0:8080" in result.stderr.splitlines()
    assert not nm.check()


@pytest.mark.parametrize("family", [4, 6])
def test_an_unpublish_killed_before_cutting_its_flows_has_them_cut_by_the_next_call(sandbox, backend, web, family):
    nm = natmap.NatMap(netns=sandbox.host.name, backend=backend)
    web.serve(5353, "udp")
    nm.publish(web.endpoint(), ["5353:5353/udp"])
    client = sandbox.client("client1")
    flow = client.udp_socket(family)
    host, seen_as = (sandbox.outside_ip, "192.0.2.2") if family == 4 else (sandbox.outside_ip6, "2001:db8:2::2")
    assert client.request(host, 5353, "udp", sock=flow) == f"web01 {seen_as}"
    env = {**os.environ, "NATMAP_CRASH_AT": "kernel-commit"}
    result = subprocess.run([NATMAP, "unpublish", "web01", "--backend", backend, "--netns", sandbox.host.name],
                            env=env, capture_output=True, text=True)
    assert result.returncode == -signal.SIGKILL
    # the rules are gone, but the flow's conntrack entry still steers it to web01
    assert client.request(host, 5353, "udp", sock=flow) == f"web01 {seen_as}"
    assert natmap.NatMap(netns=sandbox.host.name, backend=backend).check().interrupted
    nm.repair()  # finishes the change, flows included
    assert client.request(host, 5353, "udp", sock=flow, timeout=0.5) is None
    assert not nm.check()
    flow.close()


def test_apply_makes_the_table_in_a_namespace_made_again_under_the_same_name(sandbox, backend, tmp_path):
    """`ip netns del X; ip netns add X`: the store (kept by name) outlives the
    namespace, the table does not; apply makes it again. (The new namespace
    may get the old one's nsfs inode and reach the recorded generation: the
    namespace's cookie in the stamp tells them apart, see test_reapply.py.)"""
    web = sandbox.container("web01")
    web.serve(5000)
    client = sandbox.client("client1")
    lab = tmp_path / "lab.toml"
    lab.write_text(f'[endpoints.web01]\nip = "{web.ip}"\nbridge = "{sandbox.bridge}"\npublish = ["8080:5000"]\n')
    assert cli(sandbox, backend, "apply", str(lab)).returncode == 0
    assert client.request(sandbox.outside_ip, 8080) == f"web01 {sandbox.outside.network_address + 2}"
    sandbox.host.close()
    subprocess.run(["ip", "netns", "del", sandbox.host.name], check=True)
    sandbox.start()  # the same name, a new namespace: its bridge and outside link again
    assert kernel_table(sandbox, backend) is None
    done = cli(sandbox, backend, "apply", str(lab))
    assert done.returncode == 0, done.stderr
    assert "8080" in (kernel_table(sandbox, backend) or "")
    assert cli(sandbox, backend, "check").returncode == 0

def kernel_table(sandbox, backend):
    """The table's text in the kernel, None if it is not there."""
    if backend == "nft":
        listed = sandbox.host.run(["nft", "list", "table", "inet", "natmap"], capture_output=True, text=True)
        return listed.stdout if listed.returncode == 0 else None
    listed = sandbox.host.run(["iptables-legacy-save", "-t", "nat"], capture_output=True, text=True).stdout
    return listed if "NATMAP" in listed else None


# Rows natmap never writes, put in by hand (the attacker's hand_edited_store.py):
# each is one line naming the damaged store with the adopt advice, from every
# command that reads it; the kernel keeps its rules, and `natmap adopt` rebuilds.
HAND_EDITS = {
    "pending not JSON": "INSERT OR REPLACE INTO meta VALUES ('pending', 'garbage')",
    "pending wrong shape": "INSERT OR REPLACE INTO meta VALUES ('pending', '[1,2]')",
    "pending missing key": "INSERT OR REPLACE INTO meta VALUES ('pending', '{\"endpoints\": []}')",
    "two endpoints on one host port": "INSERT INTO runs SELECT 'web02', host, proto, port, kind, container, "
                                      "container_port, n, count FROM runs",
    "endpoint name with a space": "UPDATE runs SET endpoint = 'web 01'",
    "a run over another": "INSERT INTO runs SELECT endpoint, host, proto, port - 1, kind, container, "
                          "container_port - 1, 3, 1 FROM runs",
    "version not a number": "UPDATE meta SET value = 'x' WHERE name = 'version'",
    "runs table dropped": "DROP TABLE runs",
}


@pytest.mark.parametrize("edit", list(HAND_EDITS))
def test_a_hand_edited_store_is_one_damaged_store_line_and_adopt_rebuilds_it(sandbox, backend, web, edit):
    import sqlite3

    nm = natmap.NatMap(netns=sandbox.host.name, backend=backend)
    nm.publish(web.endpoint(), ["8080:5000"])
    nm.close()
    db = sqlite3.connect(nm.state_path)
    db.executescript(HAND_EDITS[edit])
    db.close()
    web3 = ["web03", "--ip", "172.30.0.9", "--bridge", sandbox.bridge, "-p", "9999:80"]
    for argv in (["publish", *web3], ["unpublish", "web01"]) + ((["check"],) if "version" not in edit else ()):
        result = cli(sandbox, backend, *argv)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1, (argv, result.stderr)
        assert nm.state_path in lines[0] and "`natmap adopt` rebuilds the store" in lines[0], lines[0]
    client = sandbox.client("client1")
    assert client.request(sandbox.outside_ip, 8080) == "web01 192.0.2.2"  # the kernel kept its rules
    result = cli(sandbox, backend, "adopt")
    assert result.returncode == 0, result.stderr
    result = cli(sandbox, backend, "publish", *web3)
    assert result.returncode == 0, result.stderr
    assert [b.host_port for b in natmap.NatMap(netns=sandbox.host.name, backend=backend).port("web01")] == [8080] * 2
    assert client.request(sandbox.outside_ip, 8080) == "web01 192.0.2.2"


def test_a_store_of_a_newer_natmap_is_refused_and_adopt_leaves_it(sandbox, backend, web):
    import sqlite3

    nm = natmap.NatMap(netns=sandbox.host.name, backend=backend)
    nm.publish(web.endpoint(), ["8080:5000"])
    nm.close()
    db = sqlite3.connect(nm.state_path)
    db.execute("UPDATE meta SET value = 'natmap-store 3' WHERE name = 'format'")
    db.commit()
    db.close()
    for argv in (["check"], ["unpublish", "web01"], ["adopt"], ["adopt", "--force"]):
        result = cli(sandbox, backend, *argv)
        assert result.returncode == 1, (argv, result.stderr)
        assert result.stderr.strip() == (f"natmap: natmap's store {nm.state_path} was written by a newer natmap "
                                         "(format 3); this one reads format 2: use the newer natmap"), argv
    assert not os.path.exists(nm.state_path + ".damaged")  # not set aside as damaged
    db = sqlite3.connect(nm.state_path)
    assert db.execute("SELECT value FROM meta WHERE name = 'format'").fetchone() == ("natmap-store 3",)
    db.close()
    assert sandbox.client("client1").request(sandbox.outside_ip, 8080) == "web01 192.0.2.2"

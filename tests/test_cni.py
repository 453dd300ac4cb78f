"""natmap-cni's protocol: environment and stdin in, JSON and exit status out.
No root: the kernel side is a recording fake here (tests/kernel/test_kernel_cni.py
runs the same plugin against a kernel)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import natmap
from natmap import cni

ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c0ffee", "CNI_IFNAME": "eth0",
       "CNI_NETNS": "/run/netns/c0ffee", "CNI_PATH": "/opt/cni/bin"}
PREV = {"cniVersion": "1.0.0",
        "interfaces": [{"name": "cni0", "mac": "02:00:00:00:00:01"},
                       {"name": "veth1", "mac": "02:00:00:00:00:02"},
                       {"name": "eth0", "mac": "02:00:00:00:00:03", "sandbox": "/run/netns/c0ffee"}],
        "ips": [{"address": "10.1.0.5/16", "gateway": "10.1.0.1", "interface": 2},
                {"address": "fd00::5/64", "interface": 2}],
        "dns": {}}


class FakeNatMap:
    """Records what the plugin asks of natmap: one list of calls per transaction."""

    def __init__(self, fail=None, existing=()):
        self.transactions, self.fail, self.existing, self.closed = [], fail, list(existing), 0

    def __call__(self, table, backend, bridges=(), lock_dir=None, state_dir=None):
        self.table, self.backend, self.bridges = table, backend, list(bridges)
        self.lock_dir, self.state_dir = lock_dir, state_dir
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.closed += 1

    def close(self):
        self.closed += 1

    def transaction(self):
        calls = []
        self.transactions.append(calls)
        fake = self

        class Tx:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                pass

            def table(self):
                return fake

            def unpublish(self, name):
                calls.append(("unpublish", name))

            def publish(self, endpoint, specs, reserved=False):
                calls.append(("publish", endpoint, list(specs)))
                if fake.fail:
                    raise fake.fail

        return Tx()

    def unpublish(self, name):
        with self.transaction() as tx:
            tx.unpublish(name)

    def bindings(self):
        return self.existing


def call(conf=None, env=None, fake=None, **overrides):
    conf = {"cniVersion": "1.0.0", "name": "podman", "type": "natmap",
            "capabilities": {"portMappings": True}, "prevResult": PREV,
            "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]},
            **(conf or {})}
    for key, value in overrides.items():
        if value is None:
            conf.pop(key, None)
        else:
            conf[key] = value
    plugin = cni.Plugin(fake or FakeNatMap())
    status, out = cni.run({**ENV, **(env or {})}, json.dumps(conf).encode(), plugin)
    return status, json.loads(out) if out else None


def test_add_publishes_in_one_transaction_and_passes_prev_result_on():
    fake = FakeNatMap()
    status, out = call(fake=fake, runtimeConfig={"portMappings": [
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},  # repeated: once
        {"hostPort": 53, "containerPort": 53, "protocol": "UDP", "hostIP": "127.0.0.1"},
        {"hostPort": 9443, "containerPort": 443, "hostIP": "::1"}]})
    assert status == 0
    assert out == {**PREV, "cniVersion": "1.0.0"}
    name = cni.endpoint_name("podman", "c0ffee", "eth0")
    [[unpublish, (verb, endpoint, specs)]] = fake.transactions
    assert unpublish == ("unpublish", name) and verb == "publish"
    assert (endpoint.name, str(endpoint.ip), str(endpoint.ipv6), endpoint.bridge) == (name, "10.1.0.5", "fd00::5", "cni0")
    assert sorted(specs) == ["127.0.0.1:53:53/udp", "8080:80/tcp", "[::1]:9443:443/tcp"]
    assert (fake.table, fake.backend) == ("natmap", "nft")


def test_a_range_of_entries_is_one_spec():
    """podman sends -p 8080-9079:8080-9079 as 1,000 entries."""
    entries = [{"hostPort": p, "containerPort": p, "protocol": "tcp"} for p in range(8080, 9080)]
    entries += [{"hostPort": 7000, "containerPort": 70}, {"hostPort": 7001, "containerPort": 72}]
    fake = FakeNatMap()
    assert call(fake=fake, runtimeConfig={"portMappings": entries})[0] == 0
    assert sorted(fake.transactions[0][1][2]) == ["7000:70/tcp", "7001:72/tcp", "8080-9079:8080-9079/tcp"]


def test_a_host_ip_of_a_family_the_container_lacks_is_left_out():
    prev = {**PREV, "ips": PREV["ips"][:1]}
    fake = FakeNatMap()
    assert call(fake=fake, prevResult=prev, runtimeConfig={"portMappings": [
        {"hostPort": 80, "containerPort": 80, "hostIP": "::"},
        {"hostPort": 81, "containerPort": 80, "hostIP": "0.0.0.0"}]})[0] == 0
    assert fake.transactions[0][1][2] == ["0.0.0.0:81:80/tcp"]


def test_ips_of_other_interfaces_are_not_the_containers():
    prev = {**PREV, "ips": [{"address": "10.9.9.9/24", "interface": 0}, *PREV["ips"]]}
    fake = FakeNatMap()
    assert call(fake=fake, prevResult=prev)[0] == 0
    assert str(fake.transactions[0][1][1].ip) == "10.1.0.5"


def test_the_bridge_is_the_first_host_side_interface_or_the_named_one():
    fake = FakeNatMap()
    assert call(fake=fake)[0] == 0 and fake.transactions[0][1][1].bridge == "cni0"
    fake = FakeNatMap()
    assert call(fake=fake, conf={"bridge": "br-pods"})[0] == 0
    assert fake.transactions[0][1][1].bridge == "br-pods"


def test_an_ipv6_only_container_is_published_on_ipv6():
    """A prevResult with only IPv6 addresses (an IPv6-only network): a mapping
    without hostIP binds IPv6 only, one with an IPv4 hostIP is left out, as
    portmap and Docker bind where the container has an address."""
    fake = FakeNatMap()
    prev = {**PREV, "ips": [{"address": "fd00::5/64", "gateway": "fd00::1", "interface": 2}]}
    status, out = call(fake=fake, prevResult=prev, runtimeConfig={"portMappings": [
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
        {"hostPort": 8081, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"},
        {"hostPort": 8082, "containerPort": 80, "protocol": "udp", "hostIP": "::1"}]})
    assert status == 0 and out == {**prev, "cniVersion": "1.0.0"}
    [[_, (_, endpoint, specs)]] = fake.transactions
    assert (endpoint.ip, str(endpoint.ipv6)) == (None, "fd00::5")
    assert sorted(specs) == ["8080:80/tcp", "[::1]:8082:80/udp"]
    assert [str(net) for bridge in fake.bridges for net in bridge.subnets] == ["fd00::/64"]


def test_table_and_backend_from_the_config():
    fake = FakeNatMap()
    assert call(fake=fake, conf={"table": "k8s", "backend": "iptables"})[0] == 0
    assert (fake.table, fake.backend) == ("k8s", "iptables")


@pytest.mark.parametrize("command", ["ADD", "DEL"])
def test_lock_and_state_directories_from_the_config(command):
    fake = FakeNatMap()
    dirs = {"lockDir": "/run/natmap-pods", "stateDir": "/var/lib/natmap-pods"}
    assert call(fake=fake, conf=dirs, env={"CNI_COMMAND": command})[0] == 0
    assert (fake.lock_dir, fake.state_dir) == ("/run/natmap-pods", "/var/lib/natmap-pods")
    call(fake=fake)
    assert (fake.lock_dir, fake.state_dir) == (None, None)  # natmap's defaults (and its NATMAP_* variables)


def test_add_without_mappings_clears_the_attachment():
    fake = FakeNatMap()
    status, out = call(fake=fake, runtimeConfig=None)
    assert status == 0 and out["ips"] == PREV["ips"]
    assert fake.transactions == [[("unpublish", cni.endpoint_name("podman", "c0ffee", "eth0"))]]


def test_conflict_is_code_100_naming_the_owner():
    owner = "cni-abc123-deadbeef0000-eth0-12345678"
    fake = FakeNatMap(fail=natmap.ConflictError(f"0.0.0.0:8080/tcp conflicts with 0.0.0.0:8080/tcp of endpoint {owner!r}"))
    status, out = call(fake=fake)
    assert status == 1 and out["code"] == 100 and owner in out["msg"] and out["cniVersion"] == "1.0.0"


def test_other_natmap_errors_are_plugin_errors():
    status, out = call(fake=FakeNatMap(fail=natmap.BackendError("nft said no")))
    assert (status, out["code"], out["msg"]) == (1, 102, "nft said no")


def test_del_without_prev_result_and_netns():
    fake = FakeNatMap()
    assert call(fake=fake, env={"CNI_COMMAND": "DEL", "CNI_NETNS": ""}, prevResult=None) == (0, None)
    assert fake.transactions == [[("unpublish", cni.endpoint_name("podman", "c0ffee", "eth0"))]]


def test_gc_keeps_valid_attachments_and_other_networks():
    def binding(network, cid):
        return natmap.Binding(cni.endpoint_name(network, cid, "eth0"), "tcp", "0.0.0.0", 80, "10.1.0.9", 80)

    fake = FakeNatMap(existing=[binding("podman", "keep"), binding("podman", "gone"), binding("other", "x"),
                                natmap.Binding("web01", "tcp", "0.0.0.0", 81, "10.1.0.8", 80)])
    valid = [{"containerID": "keep", "ifname": "eth0"}]
    status, out = call(fake=fake, env={"CNI_COMMAND": "GC"}, conf={"cniVersion": "1.1.0",
                                                                    "cni.dev/valid-attachments": valid})
    assert (status, out) == (0, None)
    assert fake.transactions == [[("unpublish", cni.endpoint_name("podman", "gone", "eth0"))]]


def test_gc_accepts_libcnis_second_name():
    fake = FakeNatMap()
    assert call(fake=fake, env={"CNI_COMMAND": "GC"},
                conf={"cniVersion": "1.1.0", "cni.dev/attachments": []}) == (0, None)


def test_status_reports_natmap_unavailable_as_50():
    def broken(table, backend, bridges, **dirs):
        raise natmap.BackendError("the nft backend needs libnftables")

    plugin = cni.Plugin(broken)
    conf = json.dumps({"cniVersion": "1.1.0", "name": "podman", "type": "natmap"}).encode()
    status, out = cni.run({"CNI_COMMAND": "STATUS"}, conf, plugin)
    assert status == 1 and json.loads(out)["code"] == 50


@pytest.mark.parametrize("conf, env, code, words", [
    ({"cniVersion": "0.2.0"}, {}, 1, "unsupported cniVersion"),
    ({"cniVersion": "1.0.0"}, {"CNI_COMMAND": "GC"}, 1, "GC needs cniVersion 1.1.0"),
    ({"cniVersion": "1.0.0"}, {"CNI_COMMAND": "STATUS"}, 1, "STATUS needs"),
    ({"cniVersion": "0.3.1"}, {"CNI_COMMAND": "CHECK"}, 1, "CHECK needs"),
    ({"portMapings": []}, {}, 2, "unknown key 'portMapings'"),
    ({"snat": False}, {}, 2, "snat must be true"),
    ({"masqAll": True}, {}, 2, "masqAll must be false"),
    ({"conditionsV4": ["-d", "192.0.2.1"]}, {}, 2, "conditionsV4 is not supported"),
    ({"capabilities": {"portMappings": True, "bandwidth": True}}, {}, 2, "one capability"),
    ({}, {"CNI_CONTAINERID": ""}, 4, "CNI_CONTAINERID is not set"),
    ({}, {"CNI_CONTAINERID": "-bad"}, 4, "invalid CNI_CONTAINERID"),
    ({}, {"CNI_IFNAME": "a/b"}, 4, "invalid CNI_IFNAME"),
    ({}, {"CNI_NETNS": ""}, 4, "CNI_NETNS is not set"),
    ({}, {"CNI_COMMAND": "ATTACH"}, 4, "unknown CNI_COMMAND"),
    ({}, {"CNI_COMMAND": ""}, 4, "CNI_COMMAND is not set"),
    ({"prevResult": None}, {}, 7, "chained plugin"),
    ({"prevResult": {**PREV, "ips": []}}, {}, 7, "no IP address"),
    ({"prevResult": {**PREV, "interfaces": PREV["interfaces"][2:], "ips": [{"address": "10.1.0.5/16",
                                                                        "interface": 0}]}},
     {}, 7, "no host-side interface"),
    ({"bridge": 7}, {}, 7, "invalid bridge"),
    ({"runtimeConfig": {"portMappings": [{"hostPort": 0, "containerPort": 80}]}}, {}, 7, "invalid hostPort 0"),
    ({"runtimeConfig": {"portMappings": [{"hostPort": 80, "containerPort": 70000}]}}, {}, 7, "invalid containerPort"),
    ({"runtimeConfig": {"portMappings": [{"hostPort": 80, "containerPort": 80, "protocol": "icmp"}]}}, {}, 7,
     "invalid protocol"),
    ({"runtimeConfig": {"portMappings": [{"hostPort": 80, "containerPort": 80, "hostIP": "localhost"}]}}, {}, 7,
     "invalid hostIP"),
    ({"backend": "nftables"}, {}, 7, "invalid backend"),
    ({"lockDir": "run/natmap"}, {}, 7, "invalid lockDir"),
    ({"stateDir": ["/var/lib/natmap"]}, {}, 7, "invalid stateDir"),
    ({"stateDir": "/var/lib/\0natmap"}, {"CNI_COMMAND": "DEL"}, 7, "invalid stateDir"),
    ({"name": "bad name"}, {}, 7, "invalid network name"),
])
def test_errors_are_cni_error_json(conf, env, code, words):
    fake = FakeNatMap()
    status, out = call(conf=conf, env=env, fake=fake)
    assert status == 1 and out["code"] == code and words in out["msg"], out
    assert fake.transactions == []  # nothing was changed


def test_undecodable_stdin_is_code_6():
    status, out = cni.run(ENV, b"{not json", cni.Plugin(FakeNatMap()))
    assert status == 1 and json.loads(out)["code"] == 6


def test_version_lists_the_supported_versions():
    status, out = cni.run({"CNI_COMMAND": "VERSION"}, b'{"cniVersion": "1.0.0"}')
    assert status == 0
    assert json.loads(out) == {"cniVersion": "1.1.0",
                               "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]}


def test_the_executable_speaks_cni():
    plugin = Path(sys.executable).parent / "natmap-cni"
    done = subprocess.run([str(plugin)], input='{"cniVersion": "1.1.0"}', capture_output=True, text=True,
                          env={"CNI_COMMAND": "VERSION"})
    assert done.returncode == 0 and "1.1.0" in json.loads(done.stdout)["supportedVersions"]
    # run by hand, without CNI_COMMAND: it says what it is, without waiting for stdin
    by_hand = subprocess.Popen([str(plugin)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={})
    try:
        assert by_hand.wait(timeout=30) == 1
        assert json.loads(by_hand.stdout.read())["code"] == 4
    finally:
        by_hand.kill()
        by_hand.stdin.close()
        by_hand.stdout.close()


@given(st.text(min_size=1, max_size=200), st.text(min_size=1, max_size=15), st.text(min_size=1, max_size=50))
def test_endpoint_names_are_valid_and_deterministic(container_id, ifname, network):
    name = cni.endpoint_name(network, container_id, ifname)
    assert natmap.validate_name(name) == name
    assert name == cni.endpoint_name(network, container_id, ifname)
    assert name.startswith(cni.network_prefix(network))
    assert name != cni.endpoint_name(network, container_id + "x", ifname)


def test_endpoint_name_shows_the_short_id():
    cid = "3f741d6dcf8be17d6948b5ffa6978cc85d84f3cbcf1bdf10f0cd96ad13e45a8e"
    assert cni.endpoint_name("podman", cid, "eth0").startswith(cni.network_prefix("podman") + "3f741d6dcf8b-eth0-")


def test_an_unexpected_failure_is_still_cni_error_json():
    def crash(table, backend, bridges, **dirs):
        raise RuntimeError("netlink went away")

    plugin = cni.Plugin(crash)
    conf = {"cniVersion": "1.0.0", "name": "podman", "type": "natmap", "prevResult": PREV,
            "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80}]}}
    status, out = cni.run(ENV, json.dumps(conf).encode(), plugin)
    assert status == 1 and json.loads(out) == {"cniVersion": "1.0.0", "code": 102,
                                               "msg": "RuntimeError: netlink went away"}


def test_del_cleans_up_after_an_add_that_failed_on_its_mappings():
    bad = {"portMappings": [{"hostPort": 0, "containerPort": 80}]}
    assert call(runtimeConfig=bad)[1]["code"] == 7
    fake = FakeNatMap()
    assert call(fake=fake, env={"CNI_COMMAND": "DEL"}, runtimeConfig=bad) == (0, None)
    assert fake.transactions == [[("unpublish", cni.endpoint_name("podman", "c0ffee", "eth0"))]]


# --- hostile and malformed input: each kind of fault is CNI error JSON with its code, and nothing changes


def _mapping(**fields):
    return {"runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, **fields}]}}


@pytest.mark.parametrize("conf, code, words", [
    # wrong types where a runtime or an attacker could put them
    (_mapping(hostIP=5), 7, "invalid hostIP 5"),          # ip_address(5) would be 0.0.0.5
    (_mapping(hostIP=0), 7, "invalid hostIP 0"),          # falsy, but not "every address"
    (_mapping(hostIP=False), 7, "invalid hostIP False"),
    (_mapping(hostIP="fe80::1%eth0"), 7, "invalid hostIP"),
    (_mapping(hostIP="[::1]"), 7, "invalid hostIP"),
    (_mapping(hostPort=True), 7, "invalid hostPort True"),
    (_mapping(hostPort=8080.0), 7, "invalid hostPort"),
    (_mapping(hostPort="8080"), 7, "invalid hostPort"),
    (_mapping(protocol=6), 7, "invalid protocol"),
    ({"runtimeConfig": {"portMappings": {}}}, 7, "must be a list"),
    ({"runtimeConfig": []}, 7, "runtimeConfig must be an object"),
    ({"table": "a;b"}, 7, "invalid table"),
    ({"table": 5}, 7, "invalid table"),
    ({"cniVersion": None}, 1, "cniVersion is missing"),
    ({"cniVersion": 1}, 1, "unsupported cniVersion"),
    # the same host port twice in one request: not a conflict with the container itself
    ({"runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80},
                                         {"hostPort": 8080, "containerPort": 81}]}}, 7, "mapped twice"),
    ({"runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "hostIP": "127.0.0.1"},
                                         {"hostPort": 8080, "containerPort": 81, "hostIP": "0.0.0.0"}]}},
     7, "mapped twice"),
    # prevResult shapes that name no usable address
    ({"prevResult": {**PREV, "ips": [{"address": "10.1.0.5", "interface": 2}]}}, 7, "CIDR"),
    ({"prevResult": {**PREV, "ips": [{"address": 5, "interface": 2}]}}, 7, "invalid address"),
    ({"prevResult": {**PREV, "ips": [5]}}, 7, "invalid entry"),
    ({"prevResult": {**PREV, "ips": [{"address": "10.1.0.5/16", "interface": 7}]}}, 7, "names no interface"),
    ({"prevResult": {**PREV, "ips": [{"address": "10.1.0.5/16", "interface": "2"}]}}, 7, "names no interface"),
    ({"prevResult": {**PREV, "ips": [{"address": "10.1.0.5/16", "interface": True}]}}, 7, "names no interface"),
    ({"prevResult": {**PREV, "ips": [{"address": "10.1.0.5/16", "interface": 1}]}}, 7, "no IP address"),
])
def test_hostile_configurations_are_refused_with_their_code(conf, code, words):
    fake = FakeNatMap()
    status, out = call(conf=conf, fake=fake)
    assert status == 1 and out["code"] == code and words in out["msg"], out
    assert fake.transactions == []


@pytest.mark.parametrize("data", [b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
                                  b"\xff\xfe\x00", b"", b'{"cniVersion": "1.0.0", "x": ' + b"9" * 5000 + b"}"])
def test_stdin_that_breaks_the_json_reader_is_code_6(data):
    status, out = cni.run(ENV, data, cni.Plugin(FakeNatMap()))
    assert status == 1 and json.loads(out)["code"] == 6


def test_a_v4_mapped_host_ip_is_the_ipv4_address():
    fake = FakeNatMap()
    prev = {**PREV, "ips": PREV["ips"][:1]}  # no IPv6 address: still published, on 127.0.0.1
    assert call(conf=_mapping(hostIP="::ffff:127.0.0.1"), prevResult=prev, fake=fake)[0] == 0
    assert fake.transactions[0][1][2] == ["127.0.0.1:8080:80/tcp"]


@pytest.mark.parametrize("garbage", [5, [], {"ips": "x"}, {"ips": [{"address": 7}]}])
def test_del_gc_status_ignore_a_garbled_prev_result(garbage):
    fake = FakeNatMap()
    assert call(fake=fake, env={"CNI_COMMAND": "DEL"}, prevResult=garbage) == (0, None)
    assert fake.transactions == [[("unpublish", cni.endpoint_name("podman", "c0ffee", "eth0"))]]
    assert call(fake=FakeNatMap(), env={"CNI_COMMAND": "GC"}, prevResult=garbage,
                conf={"cniVersion": "1.1.0", "cni.dev/valid-attachments": []}) == (0, None)


def test_the_bridge_subnets_come_from_prev_result():
    """ADD hands natmap the bridge as prevResult describes it (no netlink query)."""
    fake = FakeNatMap()
    assert call(fake=fake)[0] == 0
    assert [(b.name, [str(n) for n in b.subnets]) for b in fake.bridges] == [("cni0", ["10.1.0.0/16", "fd00::/64"])]


def test_version_is_answered_without_importing_natmap():
    plugin = Path(sys.executable).parent / "natmap-cni"
    probe = ("import runpy, sys; sys.argv = [sys.argv[0]];"
             "\ntry: runpy.run_path(%r, run_name='__main__')\nexcept SystemExit: pass\n"
             "print('natmap' in sys.modules, file=sys.stderr)" % str(plugin))
    done = subprocess.run([sys.executable, "-c", probe], input="{}", capture_output=True, text=True,
                          env={"CNI_COMMAND": "VERSION"})
    assert json.loads(done.stdout)["supportedVersions"] == list(cni.SUPPORTED_VERSIONS)
    assert done.stderr.strip() == "False"


def test_the_documented_conflists_are_accepted():
    """What a runtime sends natmap's entry of each conflist in docs/cni.md, with a mapping: an ADD."""
    sys.path.insert(0, str(Path(__file__).parent / "kernel"))
    from podman_harness import documented_conflists

    conflists = documented_conflists()
    assert len(conflists) == 2  # podman's (also containerd's), and a Kubernetes node's
    for conflist in conflists:
        [entry] = [p for p in conflist["plugins"] if p["type"] == "natmap"]
        fake = FakeNatMap()
        conf = {"cniVersion": conflist["cniVersion"], "name": conflist["name"], **entry,
                "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]},
                "prevResult": PREV}
        status, out = cni.run(ENV, json.dumps(conf).encode(), cni.Plugin(fake))
        assert status == 0, out
        assert fake.table == entry.get("table", "natmap")


@pytest.mark.parametrize("prev, ip, ipv6", [
    # 0.3.x / 0.4.0: "version" in each ips entry; 0.3.x results may leave out "interface"
    ({"cniVersion": "0.4.0", "interfaces": PREV["interfaces"],
      "ips": [{"version": "4", "address": "10.1.0.5/16", "gateway": "10.1.0.1", "interface": 2}]},
     "10.1.0.5", "None"),
    ({"cniVersion": "0.3.1", "interfaces": PREV["interfaces"][:1],
      "ips": [{"version": "4", "address": "10.1.0.6/16"}, {"version": "6", "address": "fd00::6/64"}]},
     "10.1.0.6", "fd00::6"),
    # two addresses of a family on the interface: the first, as portmap takes it
    ({**PREV, "ips": [{"address": "10.1.0.7/16", "interface": 2}, *PREV["ips"]]}, "10.1.0.7", "fd00::5"),
    # two sandbox interfaces: CNI_IFNAME's (net1) only
    ({**PREV, "interfaces": [*PREV["interfaces"], {"name": "net1", "sandbox": "/run/netns/c0ffee"}],
      "ips": [*PREV["ips"], {"address": "10.2.0.9/24", "interface": 3}]}, "10.2.0.9", "None"),
])
def test_prev_result_shapes_of_every_version(prev, ip, ipv6):
    fake = FakeNatMap()
    ifname = "net1" if ip == "10.2.0.9" else "eth0"
    status, out = call(fake=fake, prevResult=prev, env={"CNI_IFNAME": ifname})
    assert status == 0, out
    endpoint = fake.transactions[0][1][1]
    assert (str(endpoint.ip), str(endpoint.ipv6)) == (ip, ipv6)


def test_a_held_table_lock_is_try_again_later_not_a_failure():
    from natmap import LockTimeoutError
    from natmap.cni import TRY_AGAIN_LATER, _natmap_error

    error = _natmap_error(LockTimeoutError("the table's lock was held for more than 30 s", 1234))
    assert error.code == TRY_AGAIN_LATER == 11


def test_the_runtimes_own_port_reservation_is_no_drift(tmp_path):
    """Rootful podman's conmon holds a socket on each published host port (its
    port reservation, bound after ADD): ADD publishes knowingly (as forced), so
    `natmap check` in any later process does not report it as shadowing."""
    import ipaddress

    from natmap.backends.base import FakeBackend
    from natmap.host import FakeHost, Listener
    from natmap.model import Bridge

    fake_backend = FakeBackend()
    host = FakeHost([Bridge("cni0", (ipaddress.ip_network("10.1.0.0/16"), ipaddress.ip_network("fd00::/64")))])

    def factory(table, backend=None, bridges=(), lock_dir=None, state_dir=None):
        return natmap.NatMap(table, backend=fake_backend, host=host, lock_dir=str(tmp_path), state_dir=str(tmp_path))

    status, _ = cni.run({**ENV}, json.dumps({
        "cniVersion": "1.0.0", "name": "podman", "type": "natmap", "capabilities": {"portMappings": True},
        "prevResult": PREV, "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80}]}}).encode(),
        cni.Plugin(factory))
    assert status == 0
    conmon = Listener(natmap.Protocol.TCP, ipaddress.ip_address("0.0.0.0"), 8080, False, 9)
    host.sockets.append(conmon)
    with factory("natmap", "nft") as nm:
        drift = nm.check()
    assert not drift.shadowing and not drift, str(drift)
    host.sockets.append(Listener(natmap.Protocol.TCP, ipaddress.ip_address("0.0.0.0"), 8081, False, 10))
    status, out = cni.run({**ENV}, json.dumps({  # a host service's port: refused, reserved or not
        "cniVersion": "1.0.0", "name": "podman", "type": "natmap", "capabilities": {"portMappings": True},
        "prevResult": PREV, "runtimeConfig": {"portMappings": [{"hostPort": 8081, "containerPort": 80}]}}).encode(),
        cni.Plugin(factory))
    assert status == 1 and "a host socket listens on 0.0.0.0:8081" in out


def test_run_by_hand_the_answer_stays_cni_json_and_stderr_points_at_the_docs():
    """natmap-cni --help by a person: stdout is still the CNI error (a runtime may parse it), stderr says
    what the program is and where it is documented; with CNI_COMMAND set, stderr stays quiet."""
    import io

    out, err = io.StringIO(), io.StringIO()
    assert cni.main({}, io.BytesIO(b""), out, err) == 1
    assert json.loads(out.getvalue())["code"] == 4
    assert err.getvalue().count("\n") == 1 and "see docs/cni.md" in err.getvalue()
    out, err = io.StringIO(), io.StringIO()
    assert cni.main({"CNI_COMMAND": "ATTACH"}, io.BytesIO(b"{}"), out, err) == 1
    assert json.loads(out.getvalue())["code"] == 4 and err.getvalue() == ""

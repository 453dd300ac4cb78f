"""What a Docker user sees (issue 15), as a real `natmap` process or API call in
the sandbox: the not-found rule, global options where Docker users type them,
the documented --json shapes, `apply` then `plan` empty against the kernel,
docker ps's PORTS, [::1] and br_netfilter. Root only."""

import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from hypothesis import HealthCheck, assume, given, settings

import natmap
from natmap import Config, ConflictError, NotFoundError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_reconcile import configs  # noqa: E402  (the strategy the model test uses)

ROOT = Path(__file__).resolve().parents[2]
NATMAP = str(Path(sys.executable).with_name("natmap"))


def run(*args, code=0):
    """``natmap ARGS`` as typed: global options wherever the caller put them."""
    result = subprocess.run([NATMAP, *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == code, (result.stdout, result.stderr)
    return result


def schemas():
    """Every command's schema from docs/json.md, with the shared definitions."""
    text = (ROOT / "docs" / "json.md").read_text()
    blocks = dict(re.findall(r"^### (\w+)\n.*?```json\n(.*?)```", text, flags=re.S | re.M))
    defs = json.loads(blocks.pop("definitions"))
    return {name: {"$schema": "https://json-schema.org/draft/2020-12/schema", "$defs": defs,
                   **json.loads(block)} for name, block in blocks.items()}


SCHEMAS = schemas()


def valid(command, text):
    data = json.loads(text)
    jsonschema.validate(data, SCHEMAS[command])
    return data


def test_a_fresh_namespace_lists_nothing_and_names_nothing(sandbox, backend):
    ns = sandbox.host.name
    assert run("--netns", ns, "--backend", backend, "ps").stdout == "ENDPOINT   ADDRESSES   PORTS\n"
    assert run("--netns", ns, "--backend", backend, "links").stdout == "SOURCE   TARGET   ALIAS   PORTS\n"
    assert valid("ls", run("--json", "--netns", ns, "ps").stdout)["endpoints"] == []
    missing = run("--netns", ns, "--backend", backend, "port", "nosuch", code=3)
    assert missing.stderr == "natmap: No such endpoint: nosuch\n" and missing.stdout == ""
    assert run("--netns", ns, "unpublish", "nosuch", code=3).stderr == "natmap: No such endpoint: nosuch\n"
    assert run("--netns", ns, "unlink", "web01", "db01", code=3).stderr == (
        "natmap: No such link: web01 is not linked to db01\n")
    error = valid("error", run("--json", "--netns", ns, "port", "nosuch", code=3).stderr)
    assert error["error"] == {"kind": "not_found", "message": "No such endpoint: nosuch",
                              "detail": "No such endpoint: nosuch"}
    with natmap.NatMap(netns=ns, backend=backend) as nm:
        assert nm.bindings() == [] and nm.links() == [] and nm.isolated() == []
        for call in (lambda: nm.port("nosuch"), lambda: nm.unpublish("nosuch"),
                     lambda: nm.unlink("web01", "db01")):
            with pytest.raises(NotFoundError):
                call()


def test_global_options_go_before_the_command_or_after_it(sandbox):
    web = sandbox.container("web01")
    ns = sandbox.host.name
    publish = ["publish", "web01", "--ip", str(web.ip), "--bridge", sandbox.bridge, "-p", "8080:5000"]
    made = run("--netns", ns, "--table", "lab", "-v", *publish)
    assert made.stdout == "5000/tcp -> 0.0.0.0:8080\n"
    assert "natmap: + port web01 5000/tcp -> 0.0.0.0:8080\n" in made.stderr  # -v before the command
    assert run("--netns", ns, "--table", "lab", "ls").stdout == run("ls", "--table", "lab", "--netns", ns).stdout
    assert "web01" in run("--table", "lab", "--netns", ns, "ps").stdout
    assert run("--netns", ns, "ps", "-q").stdout == ""  # table natmap holds nothing
    assert run("--netns", ns, "--table", "lab", "port", "web01", "5000").stdout == "0.0.0.0:8080\n"
    data = valid("port", run("--json", "--netns", ns, "--table", "lab", "port", "web01").stdout)
    assert [b["host_port"] for b in data["bindings"]] == [8080]
    help_text = run("--help").stdout
    for option in ("--table NAME", "--netns NAME", "--backend", "--json", "-v, --verbose", "-V, --version"):
        assert option in help_text
    assert "``" not in help_text


def test_every_commands_json_is_the_documented_shape(sandbox, tmp_path):
    ns = sandbox.host.name
    web, db = sandbox.container("web01"), sandbox.container("db01")

    def j(*args, code=0):
        return run("--json", "--netns", ns, *args, code=code)

    valid("publish", j("publish", "web01", "--ip", str(web.ip), "--ipv6", str(web.ipv6), "--bridge",
                       sandbox.bridge, "-p", "8080:5000", "--expose", "7000/udp", "-P").stdout)
    valid("publish", j("publish", "db01", "--ip", str(db.ip), "--bridge", sandbox.bridge, "-p", "5432").stdout)
    valid("port", j("port", "web01").stdout)
    valid("port", j("port", "web01", "5000").stdout)
    valid("ls", j("ls").stdout)
    valid("ls", j("ps", "-q").stdout)
    link = valid("link", j("link", "web01", "db01:db").stdout)["link"]
    assert link["ports"] == [{"port": 5432, "proto": "tcp"}] and link["target_ips"] == [str(db.ip)]
    valid("links", j("links").stdout)
    assert valid("tables", j("tables").stdout)["tables"] == [{"table": "natmap", "backend": "nft"}]
    valid("isolate", j("isolate", sandbox.bridge).stdout)
    assert valid("gateway", j("gateway", sandbox.bridge, "--mode", "nat-unprotected", "--trust", "lo").stdout) \
        == {"version": 1, "bridge": sandbox.bridge, "mode": "nat-unprotected", "mode_ipv4": "nat-unprotected",
            "mode_ipv6": "nat-unprotected", "trusted_interfaces": ["lo"]}
    assert valid("gateway", j("gateway", sandbox.bridge).stdout)["mode"] == "nat-unprotected"  # as it is
    assert valid("gateway", j("gateway").stdout)["gateways"] == [
        {"bridge": sandbox.bridge, "mode": "nat-unprotected", "mode_ipv4": "nat-unprotected",
         "mode_ipv6": "nat-unprotected", "trusted_interfaces": ["lo"]}]
    assert valid("gateway", j("gateway", sandbox.bridge, "--mode-ipv6", "routed").stdout)["mode"] is None
    valid("check", j("check").stdout)
    valid("unlink", j("unlink", "web01", "db01").stdout)
    valid("unpublish", j("unpublish", "web01").stdout)
    lab = tmp_path / "lab.toml"
    lab.write_text((ROOT / "examples" / "lab.toml").read_text())
    planned = valid("plan", j("plan", str(lab)).stdout)
    assert {item["kind"] for item in planned["add"]} >= {"binding", "link"}
    assert valid("apply", j("apply", str(lab)).stdout)["add"] == planned["add"]
    lab.write_text(lab.read_text() + '\n[endpoints.web09]\nip = "172.30.0.9"\nbridge = "natmap0"\nexpose = ["9000"]\n')
    listed = valid("ls", j("ps", "-f", str(lab)).stdout)["endpoints"]
    assert listed[-1] == {"endpoint": "web09", "addresses": ["172.30.0.9"], "bindings": [],
                          "exposed": [{"port": 9000, "proto": "tcp"}]}
    valid("spec", j("spec", "-p", "published=8000-8010,target=80", "--expose", "53/udp", "--link", "db01:db").stdout)
    valid("version", j("version").stdout)
    valid("help", j("help", "ps").stdout)
    valid("completion", j("completion", "zsh").stdout)
    for args, kind in ((["spec", "-p", "70000"], "bad_input"), (["apply", "/nonexistent.toml"], "bad_input"),
                       (["publish", "web09", "--ip", str(web.ip), "--bridge", sandbox.bridge, "-p", "5432"],
                        "conflict")):
        result = j(*args, code=1 if kind == "conflict" else 2)
        assert valid("error", result.stderr)["error"]["kind"] == kind


@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@given(config=configs(max_endpoints=3))
def test_apply_then_plan_is_empty_in_the_kernel(sandbox, config):
    # One namespace for every example: each apply starts from the one before.
    with natmap.NatMap(netns=sandbox.host.name) as nm:
        try:
            nm.apply(config)
        except ConflictError:
            assume(False)
        except natmap.NatmapError as exc:  # [::1] once a bridge was isolated: refused, docs/kernel.md
            assume("bridge-nf-call-ip6tables" not in str(exc))
            raise
        assert not nm.plan(config)
    with natmap.NatMap(netns=sandbox.host.name) as fresh:  # a new process reads the kernel
        assert not fresh.plan(config)
        assert not fresh.apply(config)


def test_apply_twice_prints_nothing_the_second_time(sandbox, tmp_path):
    lab = tmp_path / "lab.toml"
    lab.write_text(f"""
[endpoints.web01]
ip = "172.30.0.2"
ipv6 = "fd00:30::2"
bridge = "{sandbox.bridge}"
publish = ["::5000", "127.0.0.1::5000", "8080:80"]
expose = ["9000"]

[endpoints.web02]
ip = "172.30.0.3"
bridge = "{sandbox.bridge}"
links = ["web01:web"]
""")
    ns = sandbox.host.name
    first = run("--netns", ns, "apply", str(lab)).stdout
    assert "+ link web02 -> web01:web" in first
    assert run("--netns", ns, "apply", str(lab)).stdout == ""
    assert run("--netns", ns, "plan", str(lab)).stdout == ""
    ps = run("--netns", ns, "ps", "-f", str(lab)).stdout.splitlines()
    assert ps[1].split(None, 3)[3] == (
        "9000/tcp, 0.0.0.0:8080->80/tcp, [::]:8080->80/tcp, 0.0.0.0:32768->5000/tcp, "
        "127.0.0.1:32769->5000/tcp, [::]:32768->5000/tcp")
    assert ps[2].split() == ["web02", "172.30.0.3"]  # in the file, nothing published or exposed


def test_ps_shows_what_docker_ps_shows(sandbox):
    web = sandbox.container("web01")
    run("--netns", sandbox.host.name, "publish", "web01", "--ip", str(web.ip), "--bridge", sandbox.bridge,
        "-p", "9000-9002:8000-8002", "-p", "7000-7001:7000-7001/udp")
    assert run("--netns", sandbox.host.name, "ps").stdout.splitlines()[1].split(None, 2)[2] == (
        "0.0.0.0:7000-7001->7000-7001/udp, 0.0.0.0:9000->8000/tcp, 0.0.0.0:9001->8001/tcp, "
        "0.0.0.0:9002->8002/tcp")


def test_publish_returns_what_port_lists_and_a_self_conflict_names_one_endpoint(sandbox, nm, backend):
    web = sandbox.container("web01")
    made = nm.publish(web.endpoint(), ["9090:5000", "127.0.0.1::5000", "8080:80"])
    assert made == nm.port("web01")
    result = run("--netns", sandbox.host.name, "--backend", backend, "publish", "web02", "--ip", "172.30.0.9",
                 "--bridge", sandbox.bridge, "-p", "9000:80", "-p", "9000:81", code=1)
    assert result.stderr == ("natmap: 0.0.0.0:9000/tcp of endpoint 'web02' conflicts with itself: it cannot "
                             "forward to both container port 80 and 81\n")


def test_loopback6_and_bridged_ipv6_hooks_are_refused_or_explained(sandbox, nm, backend):
    # Only inside the sandbox's host namespace; isolate() would set it too.
    sandbox.host.run(["sysctl", "-qw", "net.bridge.bridge-nf-call-ip6tables=1"], check=True)
    web = sandbox.container("web01")
    web.serve(5000)
    with pytest.raises(natmap.NatmapError, match="publish on 127.0.0.1"):
        nm.publish(web.endpoint(), ["[::1]:5002:5000"])
    nm.publish(web.endpoint(), ["8080:5000", "8080:5000/udp"])
    # What the note says, for real: [::1] gets nothing, 127.0.0.1 and other IPv6 addresses answer.
    assert sandbox.host.request("::1", 8080, timeout=0.5) is None
    assert sandbox.host.request("127.0.0.1", 8080) == f"web01 {sandbox.bridge_ip}"
    drift = nm.check()
    assert not drift and len(drift.notes) == 1
    assert drift.notes[0].startswith("clients on [::1] get no answer from [::]:8080/tcp, [::]:8080/udp while "
                                     "bridged IPv6 passes")  # each port with its protocol
    assert "connect to 127.0.0.1" in drift.notes[0]
    checked = run("--netns", sandbox.host.name, "--backend", backend, "check")
    assert "note: clients on [::1] get no answer from [::]:8080/tcp, [::]:8080/udp while" in checked.stdout


def test_the_readme_quick_start_runs_as_written():
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"## Quick start\n.*?```python\n(.*?)```", readme, flags=re.S).group(1)
    printed = [line.split("# ", 1)[1] for line in code.splitlines() if line.strip().startswith("# 5000/")]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[:3] == printed


def test_dry_runs_show_what_the_real_run_then_does(sandbox, nm):
    web = sandbox.container("web01")
    endpoint = web.endpoint()
    assert "32768" in nm.preview(endpoint, ["::5000"])
    assert "32768" in nm.preview(endpoint, ["::5000"])  # the preview moved no cursor
    assert [b.host_port for b in nm.publish(endpoint, ["::5000"])] == [32768, 32768]
    config = Config.from_dict({"endpoints": {
        "web01": {"ip": str(web.ip), "ipv6": str(web.ipv6), "bridge": sandbox.bridge, "publish": ["::5000"]},
        "db01": {"ip": "172.30.0.9", "bridge": sandbox.bridge, "publish": ["::5432"]}}})
    planned = nm.plan(config)
    assert nm.plan(config) == planned
    assert nm.apply(config) == planned
    assert [b.host_port for b in nm.port("db01")] == [32769]

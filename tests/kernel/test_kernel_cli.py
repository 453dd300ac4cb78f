"""The `natmap` command as a user runs it (a real process), in the sandbox, and
the examples and `make demo` as they ship. Root only."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NATMAP = str(Path(sys.executable).with_name("natmap"))


def natmap(sb, *args, code=0):
    result = subprocess.run([NATMAP, *args, "--netns", sb.host.name], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == code, result.stderr
    return result


@pytest.fixture
def web(sandbox):
    return sandbox.container("web01")


def publish_web01(sb, web, *extra):
    return natmap(sb, "publish", "web01", "--ip", str(web.ip), "--ipv6", str(web.ipv6),
                  "--bridge", sb.bridge, *extra)


def test_publish_port_and_ps_print_dockers_formats(sandbox, web):
    made = publish_web01(sandbox, web, "-p", "127.0.0.1:5001:5000", "-p", "8080:5000",
                         "--expose", "5000", "--expose", "7000-7001/udp", "-P")
    assert made.stdout == ("5000/tcp -> 0.0.0.0:8080\n5000/tcp -> 127.0.0.1:5001\n5000/tcp -> [::]:8080\n"
                           "7000/udp -> 0.0.0.0:32768\n7000/udp -> [::]:32768\n"
                           "7001/udp -> 0.0.0.0:32769\n7001/udp -> [::]:32769\n")
    assert natmap(sandbox, "port", "web01", "5000").stdout == "0.0.0.0:8080\n127.0.0.1:5001\n[::]:8080\n"
    assert natmap(sandbox, "port", "web01", "7001/udp").stdout == "0.0.0.0:32769\n[::]:32769\n"
    assert natmap(sandbox, "port", "web01").stdout == made.stdout
    ps = natmap(sandbox, "ps").stdout.splitlines()
    assert ps[0].split() == ["ENDPOINT", "ADDRESSES", "PORTS"]
    assert ps[1].split(None, 3) == [  # docker/cli's order: container port, host IP, host port
        "web01", "172.30.0.2,", "fd00:30::2",
        "0.0.0.0:8080->5000/tcp, 127.0.0.1:5001->5000/tcp, [::]:8080->5000/tcp, 0.0.0.0:32768->7000/udp, "
        "[::]:32768->7000/udp, 0.0.0.0:32769->7001/udp, [::]:32769->7001/udp"]
    assert natmap(sandbox, "ls").stdout == natmap(sandbox, "ps").stdout


def test_a_port_that_is_not_published_is_dockers_error(sandbox, web):
    publish_web01(sandbox, web, "-p", "8080:5000")
    result = natmap(sandbox, "port", "web01", "9999", code=3)
    assert result.stderr == "natmap: No public port '9999/tcp' published for web01\n"
    assert result.stdout == ""


def test_verbose_logs_each_change_and_vv_each_transaction(sandbox, web):
    quiet = publish_web01(sandbox, web, "-p", "8080:5000")
    assert quiet.stderr == ""
    more = publish_web01(sandbox, web, "-p", "8080:5000", "-p", "9090:9000", "-vv").stderr.splitlines()
    assert sorted(more[:2]) == ["natmap: + port web01 9000/tcp -> 0.0.0.0:9090",
                                "natmap: + port web01 9000/tcp -> [::]:9090"]
    assert more[2].startswith("natmap: nft: one transaction, 0 deleted and 2 added, ")
    assert len(more) == 3
    assert natmap(sandbox, "port", "web01", "-v").stderr == ""  # reading changes nothing
    assert sorted(natmap(sandbox, "unpublish", "web01", "-v").stderr.splitlines()) == [
        "natmap: - port web01 5000/tcp -> 0.0.0.0:8080", "natmap: - port web01 5000/tcp -> [::]:8080",
        "natmap: - port web01 9000/tcp -> 0.0.0.0:9090", "natmap: - port web01 9000/tcp -> [::]:9090"]


def test_every_command_speaks_json(sandbox, web):
    data = json.loads(publish_web01(sandbox, web, "-p", "8080:5000", "--json").stdout)["bindings"]
    assert data[0] == {"endpoint": "web01", "proto": "tcp", "host_ip": "0.0.0.0", "host_port": 8080,
                       "container_ip": "172.30.0.2", "container_port": 5000}
    db = sandbox.container("db01")
    natmap(sandbox, "publish", "db01", "--ip", str(db.ip), "--bridge", sandbox.bridge, "-p", "5432:5432")
    assert len(json.loads(natmap(sandbox, "port", "web01", "--json").stdout)["bindings"]) == 2
    assert [e["endpoint"] for e in json.loads(natmap(sandbox, "ls", "--json").stdout)["endpoints"]] == [
        "db01", "web01"]
    link = json.loads(natmap(sandbox, "link", "web01", "db01:db", "--json").stdout)["link"]
    assert link["hosts_line"] == "172.30.0.3\tdb db01" and link["ports"] == [{"port": 5432, "proto": "tcp"}]
    assert json.loads(natmap(sandbox, "links", "--json").stdout)["links"][0]["alias"] == "db"
    assert json.loads(natmap(sandbox, "isolate", sandbox.bridge, "--json").stdout)["isolated"] is True
    assert json.loads(natmap(sandbox, "unlink", "web01", "db01", "--json").stdout)["link"]["target"] == "db01"
    assert len(json.loads(natmap(sandbox, "unpublish", "web01", "--json").stdout)["bindings"]) == 2
    error = natmap(sandbox, "port", "web01", "5000", "--json", code=3)
    assert json.loads(error.stderr)["error"]["kind"] == "not_found"


@pytest.mark.parametrize("args, code, first_line", [
    (["publish", "web01", "--ip", "172.30.0.2", "--bridge", "natmap0", "-p", "70000:80"], 2,
     "natmap: invalid port 70000 (must be 0-65535) in '70000:80'"),
    (["publish", "web01", "--ip", "172.30.0.2", "--bridge", "natmap0", "-p", "80/icmp"], 2,
     "natmap: invalid protocol 'icmp' (must be tcp, udp or sctp) in '80/icmp'"),
    (["publish", "web;01", "--ip", "172.30.0.2", "--bridge", "natmap0"], 2,
     "natmap: invalid endpoint name 'web;01' (use letters, digits, '_', '.', '-'; start with a letter "
     "or digit) in 'web;01'"),
    (["publish", "web01", "--ip", "10.9.9.9", "--bridge", "natmap0", "-p", "80"], 2,
     "natmap: 10.9.9.9 of endpoint 'web01' is in no subnet of bridge natmap0 (172.30.0.0/24, "
     "fd00:30::/64) in '10.9.9.9'"),
    (["publish", "web01", "--ip", "172.30.0.2", "--bridge", "nosuch0", "-p", "80"], 3,
     "natmap: no interface named 'nosuch0' in this network namespace"),
    (["port", "web01"], 3, "natmap: No such endpoint: web01"),
    (["isolate", "nonexist0"], 3, "natmap: no interface named 'nonexist0' in this network namespace"),
    (["gateway", "nosuchbr", "--mode", "nat-unprotected"], 3,
     "natmap: no interface named 'nosuchbr' in this network namespace"),
    (["isolate", "lo"], 2, "natmap: interface lo is not a bridge (a plain interface) in 'lo'"),
    (["apply", "/nonexistent.toml"], 2, "natmap: /nonexistent.toml: cannot read it: No such file or directory"),
])
def test_bad_input_gives_one_clear_line_and_the_documented_code(sandbox, args, code, first_line):
    result = natmap(sandbox, *args, code=code)
    lines = result.stderr.splitlines()
    assert lines[0] == first_line
    assert len(lines) in (1, 3)  # grammar errors add the input and a caret
    assert result.stdout == ""


def test_a_conflict_exits_1_and_names_both_owners(sandbox, web):
    publish_web01(sandbox, web, "-p", "8080:5000")
    db = sandbox.container("db01")
    result = natmap(sandbox, "publish", "db01", "--ip", str(db.ip), "--bridge", sandbox.bridge,
                    "-p", "8080:5432", code=1)
    assert result.stderr == ("natmap: 0.0.0.0:8080/tcp for endpoint 'db01' conflicts with "
                             "0.0.0.0:8080/tcp of endpoint 'web01'\n")


def test_apply_then_plan_shows_no_diff_and_edits_change_only_what_changed(sandbox, tmp_path):
    lab = tmp_path / "lab.toml"
    lab.write_text((ROOT / "examples" / "lab.toml").read_text())
    applied = natmap(sandbox, "apply", str(lab)).stdout.splitlines()
    assert "+ port db01 5432/tcp -> 0.0.0.0:32768" in applied
    assert "+ link web02 -> db01:web02Todb01" in applied and "+ isolate natmap0" in applied
    assert natmap(sandbox, "plan", str(lab)).stdout == ""
    before = natmap(sandbox, "ps").stdout
    # Edit: web01 gets one more port, web02 loses its link, db01 is untouched.
    lab.write_text(lab.read_text().replace('publish = ["127.0.0.1:5001:5000"]',
                                           'publish = ["127.0.0.1:5001:5000", "9090:5000"]')
                               .replace('links = ["db01:web02Todb01"]', ""))
    planned = natmap(sandbox, "plan", str(lab)).stdout
    assert planned.splitlines() == ["- link web02 -> db01:web02Todb01",
                                    "+ port web01 5000/tcp -> 0.0.0.0:9090",
                                    "+ port web01 5000/tcp -> [::]:9090"]
    assert natmap(sandbox, "apply", str(lab)).stdout == planned
    after = natmap(sandbox, "ps").stdout
    assert [l.split() for l in after.splitlines() if l.startswith(("db01", "web02"))] == \
        [l.split() for l in before.splitlines() if l.startswith(("db01", "web02"))]
    assert natmap(sandbox, "plan", str(lab)).stdout == ""
    # Removing an endpoint from the file removes it from the kernel.
    lab.write_text(lab.read_text().split("[endpoints.web02]")[0])
    assert natmap(sandbox, "apply", str(lab)).stdout.splitlines() == ["- port web02 5000/tcp -> 0.0.0.0:32769"]


def test_help_has_an_example_on_every_command():
    commands = ["publish", "port", "ls", "unpublish", "link", "unlink", "links", "tables", "isolate", "apply",
                "plan", "check", "spec", "version", "help", "completion"]
    for command in commands:
        result = subprocess.run([NATMAP, command, "--help"], capture_output=True, text=True, check=True)
        assert f"example:\n  natmap {command}" in result.stdout
    assert "Exit codes" in subprocess.run([NATMAP, "--help"], capture_output=True, text=True).stdout


def run_example(name, *args):
    return subprocess.run([sys.executable, str(ROOT / "examples" / name), *args], capture_output=True,
                          text=True, timeout=120, check=True).stdout


def test_make_demo_runs_the_tutorial():
    out = run_example("tutorial.py")
    assert "$ natmap publish web01 --ip 172.30.0.2 --bridge natmap0 --expose 5000 -P\n5000/tcp -> 0.0.0.0:32768\n" in out
    assert "web01      172.30.0.2   0.0.0.0:32768->5000/tcp\n" in out
    assert "$ curl http://192.0.2.1:32768/\nHello world!\n" in out
    assert "$ curl http://127.0.0.1:5001/        (on the host)\nHello world!\n" in out
    assert "(from the client outside)\nno answer" in out
    assert "$ natmap port web01 5000\n0.0.0.0:32768\n127.0.0.1:5001\n" in out
    assert "WEB02TODB01_PORT=tcp://172.30.0.3:5432" in out
    assert "web02 -> 172.30.0.3:5432: answered by db01" in out
    assert "web03 -> 172.30.0.3:5432: no answer" in out
    assert "table inet natmap {" in out


def test_the_mini_runtime_example_runs():
    assert run_example("mini_runtime.py").splitlines() == [
        "web01 8000/tcp -> 0.0.0.0:8080", "web01 8000/tcp -> [::]:8080",
        "web02 8000/tcp -> 0.0.0.0:32768", "web02 8000/tcp -> [::]:32768",
        "GET http://192.0.2.1:8080/ (web01): 200 OK", "GET http://192.0.2.1:32768/ (web02): 200 OK",
        "stopped web01: 0.0.0.0:8080, [::]:8080", "GET http://192.0.2.1:8080/ after stop: no answer"]


def test_adopt_force_refuses_another_programs_generation_chain(sandbox, tmp_path, monkeypatch):
    """Another program's chain of natmap's name with a marker-like rule and
    jumps from INPUT and FORWARD: `adopt --force` exits 1 and changes nothing."""
    for command in (["-N", "NATMAP-GENERATION"],
                    ["-A", "NATMAP-GENERATION", "-m", "comment", "--comment", "natmap-generation:evil", "-j", "ACCEPT"],
                    ["-I", "FORWARD", "-j", "NATMAP-GENERATION"], ["-I", "INPUT", "-j", "NATMAP-GENERATION"]):
        sandbox.host.run(["iptables-legacy", *command], check=True)
    before = sandbox.host.run(["iptables-legacy-save", "-t", "filter"]).stdout.splitlines()[1:-1]
    monkeypatch.setenv("NATMAP_STATE_DIR", str(tmp_path))  # no store: the case adopt --force is for
    result = natmap(sandbox, "--backend", "iptables", "adopt", "--force", code=1)
    assert "not provably natmap's" in result.stderr and "jumps to NATMAP-GENERATION" in result.stderr
    after = sandbox.host.run(["iptables-legacy-save", "-t", "filter"]).stdout.splitlines()[1:-1]
    assert [line for line in after if "NATMAP" in line] == [line for line in before if "NATMAP" in line]


def test_a_table_made_with_iptables_is_named_to_the_default_backend_and_remove_deletes_it(sandbox, web):
    """A newcomer's table made with --backend iptables: the default (nft) names
    the backend to use instead of showing it empty; remove deletes it."""
    ipt = ("--table", "ipt", "--backend", "iptables")
    publish_web01(sandbox, web, *ipt, "-p", "8080:5000")
    client = sandbox.client("client1")
    web.serve(5000)
    assert client.request(sandbox.outside_ip, 8080) == "web01 192.0.2.2"
    wrong = "natmap: No such table on the nft backend: ipt is on iptables (pass --backend iptables)\n"
    for args in (["ps"], ["port", "web01"], ["unpublish", "web01"], ["check"]):
        result = natmap(sandbox, "--table", "ipt", *args, code=3)
        assert (result.stdout, result.stderr) == ("", wrong)
    assert "web01" in natmap(sandbox, *ipt, "ps").stdout
    auto = natmap(sandbox, "--table", "ipt", "--backend", "auto", "port", "web01", "5000")
    assert auto.stdout == "0.0.0.0:8080\n[::]:8080\n"
    assert natmap(sandbox, *ipt, "remove").stdout == "removed table ipt (iptables)\n"
    assert client.request(sandbox.outside_ip, 8080, timeout=0.5) is None
    assert "NATMAP" not in sandbox.host.run(["iptables-legacy-save"]).stdout
    assert natmap(sandbox, "tables").stdout == "TABLE   BACKEND\n"
    assert natmap(sandbox, *ipt, "remove", code=3).stderr == "natmap: No such table: ipt (iptables)\n"

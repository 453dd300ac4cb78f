"""The `natmap` command's surface that needs no kernel: where options go,
version and help, help text, completion (issue 15, cases 4, 9, 10)."""

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from natmap import ConfigError, __version__
from natmap.cli import COMMANDS, _build, _parser, error_kind, main
from natmap.errors import ConflictError, NotFoundError, PrivilegeError, SpecError

NATMAP = str(Path(sys.executable).with_name("natmap"))


def run(*args):
    return subprocess.run([NATMAP, *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("argv, command, table, netns, json, verbose", [
    (["--json", "ps"], "ls", "natmap", None, True, 0),
    (["--table", "lab", "ls"], "ls", "lab", None, False, 0),
    (["--netns", "X", "port", "web01"], "port", "natmap", "X", False, 0),
    (["-v", "ps"], "ls", "natmap", None, False, 1),
    (["ps", "--json", "--table", "lab"], "ls", "lab", None, True, 0),
    (["--table=lab", "--json", "links", "-vv"], "links", "lab", None, True, 2),
    (["--table", "a", "ls", "--table", "b"], "ls", "b", None, False, 0),  # after the command wins
])
def test_global_options_are_read_before_and_after_the_command(argv, command, table, netns, json, verbose):
    args = _parser(argv).parse_args(argv)
    assert (args.command.name, args.table, args.netns, args.json, args.verbose) == (
        command, table, netns, json, verbose)


def test_only_the_asked_commands_parser_is_built():
    verbs = next(a for a in _parser(["--table", "lab", "port", "web01"])._actions
                 if isinstance(a, argparse._SubParsersAction))
    assert list(verbs.choices) == ["port"]


def test_a_commands_usage_names_natmap_and_the_command(capsys):
    """The sub-parsers' prog is given, not derived from the main usage: it must read the same."""
    with pytest.raises(SystemExit):
        _parser(["port"]).parse_args(["port"])
    assert "(see natmap port --help)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parser(["port", "--help"]).parse_args(["port", "--help"])
    assert capsys.readouterr().out.startswith("usage: natmap port [-h]")


@pytest.mark.parametrize("argv", [["-V"], ["--version"], ["version"]])
def test_the_version_three_ways(argv):
    result = run(*argv)
    assert (result.returncode, result.stdout) == (0, f"natmap {__version__}\n")


def test_help_lists_global_options_and_every_command_without_markup():
    main_help = run("help").stdout
    assert main_help == run("--help").stdout
    for text in ("--table NAME", "--netns NAME", "--json", "-v, --verbose", "-V, --version"):
        assert text in main_help
    for command in COMMANDS:
        assert command.name in main_help
        sub = run("help", command.name)
        assert sub.returncode == 0 and sub.stdout == run(command.name, "--help").stdout
        assert "``" not in sub.stdout and ":class:" not in sub.stdout
    assert "``" not in main_help


def test_every_argument_has_help():
    _, subs = _build(COMMANDS)
    for name, sub in subs.items():
        for action in sub._actions:
            assert action.help, f"natmap {name}: {action.dest} has no help"


@pytest.mark.parametrize("exc, kind, code", [
    (SpecError("bad", "x"), "bad_input", 2), (ConfigError("x.toml: cannot read it"), "bad_input", 2),
    (OSError(28, "No space left on device"), "failed", 1),
    (NotFoundError("No such endpoint: x"), "not_found", 3), (ConflictError("taken"), "conflict", 1),
    (PrivilegeError("publish"), "privilege", 4), (ValueError("bad"), "bad_input", 2),
])
def test_error_kinds_are_natmaps_names_not_python_classes(exc, kind, code):
    from natmap.cli import _exit_code

    assert (error_kind(exc), _exit_code(exc)) == (kind, code)


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_is_generated_from_the_parser(shell, tmp_path):
    result = run("completion", shell)
    assert result.returncode == 0
    script = result.stdout
    for command in COMMANDS:
        assert command.name in script
    assert "_natmap_endpoints" in script and "_natmap_tables" in script and "--netns" in script
    if shutil.which(shell):  # the script parses
        path = tmp_path / f"natmap.{shell}"
        path.write_text(script)
        assert subprocess.run([shell, "-n", str(path)], capture_output=True).returncode == 0


def test_spec_needs_no_kernel_and_reads_the_long_syntax_with_a_range(capsys):
    assert main(["spec", "-p", "published=8000-8010,target=80"]) == 0
    assert capsys.readouterr().out == "-p 8000-8010:80/tcp\n"


def test_a_reader_that_stops_early_gets_no_traceback(tmp_path):
    specs = tmp_path / "specs"  # output far beyond a pipe's buffer, so the write meets the closed pipe
    specs.write_text("".join(f"{port}:80/udp\n" for port in range(1, 20001)))
    natmap_cmd = shutil.which("natmap", path=str(Path(sys.executable).parent))
    result = subprocess.run(f"{natmap_cmd} spec --publish-file {specs} | head -c 5", shell=True,
                            capture_output=True, text=True, timeout=60)
    assert result.stdout == "-p 1:" and "Traceback" not in result.stderr and "Error" not in result.stderr


@pytest.mark.parametrize("redirect, why", [("> /dev/full", "No space left on device"),
                                            (">&-", "standard output is closed")])
@pytest.mark.parametrize("argv", [["version"], ["--json", "version"], ["spec", "-p", "80"]])
def test_an_answer_that_cannot_be_written_is_one_line_not_a_traceback(argv, redirect, why):
    natmap_cmd = shutil.which("natmap", path=str(Path(sys.executable).parent))
    result = subprocess.run(f"{natmap_cmd} {' '.join(argv)} {redirect}", shell=True,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    if "--json" in argv:  # the error as --json gives every error, on stderr
        assert json.loads(result.stderr)["error"]["message"] == f"writing the answer failed: {why}"
    else:
        assert result.stderr == f"natmap: writing the answer failed: {why}\n"


@pytest.mark.parametrize("argv, named", [
    (["--bogus"], "--bogus"), (["--json", "-x"], "-x"), (["--bogus=1"], "--bogus=1"), (["ps", "--bogus"], "--bogus"),
])
def test_an_unknown_option_is_named_before_or_after_the_command(argv, named, capsys):
    with pytest.raises(SystemExit) as exit:
        _parser(argv).parse_args(argv)
    assert exit.value.code == 2
    assert f"unrecognized arguments: {named}" in capsys.readouterr().err


# --- commands through the fakes (natmap.cli.NatMap made on a FakeBackend and a FakeHost) ----------


@pytest.fixture
def fake_cli(monkeypatch, tmp_path):
    """``main`` on fakes: one FakeBackend per (table, backend name), one FakeHost.
    Returns a function that runs ``natmap ARGS`` and gives (exit code, stdout, stderr)."""
    import ipaddress
    import json

    import natmap.cli as cli
    from natmap import NatMap
    from natmap.backends.base import FakeBackend
    from natmap.host import FakeHost
    from natmap.model import Bridge

    host = FakeHost([Bridge("natmap0", (ipaddress.ip_network("172.30.0.0/24"),))], interfaces={"eth1": (None, ())})
    backends = {}

    def factory(table="natmap", *, backend="nft", **_):
        fake = backends.get((table, backend))
        if fake is None:
            fake = backends[table, backend] = FakeBackend()
            fake.name = backend
        return NatMap(table, backend=fake, host=host, lock_dir=str(tmp_path), state_dir=str(tmp_path))

    monkeypatch.setattr(cli, "NatMap", factory)

    def natmap(*args, as_json=False):
        import io
        from contextlib import redirect_stderr, redirect_stdout

        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = main([*args, *(["--json"] if as_json else [])])
        return code, json.loads(out.getvalue()) if as_json and out.getvalue() else out.getvalue(), err.getvalue()

    natmap.host, natmap.backends = host, backends
    return natmap


def valid(command, text):
    """``text`` is of the shape docs/json.md gives ``command`` (the kernel surface test's schemas)."""
    sys.path.insert(0, str(Path(__file__).parent / "kernel"))
    from test_kernel_surface import valid as documented

    return documented(command, text)


def test_an_ipv6_only_endpoint_is_published_with_ipv6_alone_and_one_without_an_address_is_refused(fake_cli):
    """README and docs/cni.md: an endpoint has ip, ipv6 or both; --ipv6 alone is an IPv6-only one."""
    import ipaddress

    from natmap.model import Bridge

    fake_cli.host.bridges["natmap0"] = Bridge("natmap0", tuple(map(ipaddress.ip_network, (
        "172.30.0.0/24", "fd00:30::/64"))))
    code, out, err = fake_cli("publish", "web06", "--ipv6", "fd00:30::6", "--bridge", "natmap0", "-p", "8080:80")
    assert (code, out) == (0, "80/tcp -> [::]:8080\n"), err
    for address in ([], ["--ip", ""]):
        code, out, err = fake_cli("publish", "web07", *address, "--bridge", "natmap0", "-p", "8081:80")
        assert code == 2 and out == ""
        assert "publish needs the endpoint's address: --ip (IPv4), --ipv6 or both" in err


def test_gateway_force_takes_a_host_sockets_port_back_to_nat_as_publish_force(fake_cli):
    """The conflict's advice names --force: gateway has it, as publish does."""
    import ipaddress

    from natmap.host import Listener
    from natmap.model import Protocol

    fake_cli("publish", "web01", "--ip", "172.30.0.2", "--bridge", "natmap0", "-p", "8080:5000")
    fake_cli("gateway", "natmap0", "--mode", "routed")
    fake_cli.host.sockets.append(Listener(Protocol.TCP, ipaddress.ip_address("0.0.0.0"), 8080, False, 7))
    code, _, err = fake_cli("gateway", "natmap0", "--mode", "nat")
    assert code != 0 and "a host socket listens on 0.0.0.0:8080/tcp" in err and "--force" in err
    assert fake_cli("gateway", "natmap0", "--mode", "nat", "--force")[:2] == (0, "gateway natmap0 nat\n")
    assert fake_cli("port", "web01")[1] == "5000/tcp -> 0.0.0.0:8080\n"


def test_gateway_sets_each_ip_family_apart_and_prints_both(fake_cli):
    """Docker's common IPv6 setup: IPv4 NATed, IPv6 routed; a family no option names is nat."""
    assert fake_cli("gateway", "natmap0", "--mode-ipv4", "nat", "--mode-ipv6", "routed")[:2] == (
        0, "gateway natmap0 ipv4 nat ipv6 routed\n")
    code, shown = fake_cli("gateway", "natmap0", as_json=True)[:2]
    assert (code, shown) == (0, {"version": 1, "bridge": "natmap0", "mode": None, "mode_ipv4": "nat",
                                 "mode_ipv6": "routed", "trusted_interfaces": []})
    assert valid("gateway", json.dumps(shown))
    assert fake_cli("gateway", "natmap0", "--mode", "routed", "--mode-ipv4", "nat-unprotected")[:2] == (
        0, "gateway natmap0 ipv4 nat-unprotected ipv6 routed\n")  # one family's over --mode
    assert fake_cli("gateway", "natmap0", "--mode-ipv6", "nat-unprotected")[:2] == (
        0, "gateway natmap0 ipv4 nat ipv6 nat-unprotected\n")  # the whole setting: IPv4 back to nat
    assert fake_cli("gateway", "natmap0", "--mode-ipv6", "nat")[:2] == (0, "gateway natmap0 nat\n")
    assert fake_cli("gateway")[:2] == (0, "")
    code, _, error = fake_cli("gateway", "--mode-ipv6", "routed")  # which bridge: it does not guess
    assert code == 2 and "set one bridge's gateway modes: name the bridge" in error


def test_gateway_without_a_setting_prints_it_and_changes_nothing(fake_cli):
    assert fake_cli("gateway", "natmap0", "--mode", "routed", "--trust", "eth1")[:2] == (
        0, "gateway natmap0 routed trusted eth1\n")
    assert fake_cli("gateway", "natmap0")[:2] == (0, "gateway natmap0 routed trusted eth1\n")  # not reset
    assert fake_cli("gateway", "natmap0", as_json=True)[1] == {
        "version": 1, "bridge": "natmap0", "mode": "routed", "mode_ipv4": "routed", "mode_ipv6": "routed",
        "trusted_interfaces": ["eth1"]}
    assert fake_cli("gateway")[:2] == (0, "gateway natmap0 routed trusted eth1\n")
    assert fake_cli("gateway", as_json=True)[1] == {"version": 1, "gateways": [
        {"bridge": "natmap0", "mode": "routed", "mode_ipv4": "routed", "mode_ipv6": "routed",
         "trusted_interfaces": ["eth1"]}]}
    assert fake_cli("gateway", "natmap0", "--trust", "eth1")[:2] == (0, "gateway natmap0 nat trusted eth1\n")
    assert fake_cli("gateway", "natmap0", "--mode", "nat")[:2] == (0, "gateway natmap0 nat\n")
    assert fake_cli("gateway", "natmap0")[:2] == (0, "gateway natmap0 nat\n")  # the default, as it is
    assert fake_cli("gateway")[:2] == (0, "")  # no bridge outside the default
    valid("gateway", json.dumps(fake_cli("gateway", as_json=True)[1]))
    valid("gateway", json.dumps(fake_cli("gateway", "natmap0", as_json=True)[1]))
    code, _, err = fake_cli("gateway", "--mode", "routed")
    assert code == 2 and "name the bridge" in err


def test_json_tells_a_routed_binding_and_text_stays_dockers(fake_cli):
    publish = ["publish", "web01", "--ip", "172.30.0.2", "--bridge", "natmap0", "-p", "8080:5000"]
    assert fake_cli(*publish, as_json=True)[1]["bindings"][0].get("routed") is None  # nat: mapped
    fake_cli("gateway", "natmap0", "--mode", "routed")
    assert fake_cli("port", "web01")[1] == "5000/tcp -> 0.0.0.0:8080\n"
    for args in (["port", "web01"], ["port", "web01", "5000"]):
        assert [b["routed"] for b in fake_cli(*args, as_json=True)[1]["bindings"]] == [True]
    [listed] = fake_cli("ps", as_json=True)[1]["endpoints"]
    for command, args in (("port", ["port", "web01"]), ("ls", ["ps"]), ("check", ["check"])):
        valid(command, json.dumps(fake_cli(*args, as_json=True)[1]))  # docs/json.md's shapes
    assert [b["routed"] for b in listed["bindings"]] == [True]
    assert fake_cli("ps")[1].splitlines()[1].split(None, 2)[2] == (  # text marks it too, after Docker's column
        "0.0.0.0:8080->5000/tcp (routed, host port not mapped: 0.0.0.0:8080->5000/tcp)")
    fake_cli("unpublish", "web01")
    made = fake_cli(*publish, "-p", "9000-9001:9000-9001", as_json=True)[1]["bindings"]
    assert [b.get("routed") for b in made] == [True, True, True]
    fake_cli("gateway", "natmap0", "--mode", "nat")
    assert all("routed" not in b for b in fake_cli("port", "web01", as_json=True)[1]["bindings"])


def test_ps_f_shows_the_addresses_of_the_kernels_bindings_and_the_files_for_an_endpoint_without(fake_cli, tmp_path):
    lab = tmp_path / "lab.toml"
    lab.write_text('[endpoints.web01]\nip = "172.30.0.2"\nipv6 = "fd00:30::2"\nbridge = "natmap0"\n'
                   'expose = ["5000/tcp"]\n\n[endpoints.web09]\nip = "172.30.0.9"\nipv6 = "fd00:30::9"\n'
                   'bridge = "natmap0"\nexpose = ["9000"]\n')
    assert fake_cli("publish", "web01", "--ip", "172.30.0.2", "--bridge", "natmap0",  # IPv4 bindings only
                    "-p", "5001:5000")[:2] == (0, "5000/tcp -> 0.0.0.0:5001\n")
    code, out, _ = fake_cli("ps", "-f", str(lab))
    assert (code, out.splitlines()) == (0, [
        "ENDPOINT   ADDRESSES                PORTS",
        "web01      172.30.0.2               0.0.0.0:5001->5000/tcp",
        "web09      172.30.0.9, fd00:30::9   9000/tcp"])
    [web01, web09] = fake_cli("ps", "-f", str(lab), as_json=True)[1]["endpoints"]
    assert (web01["addresses"], web09["addresses"]) == (["172.30.0.2"], ["172.30.0.9", "fd00:30::9"])


def test_a_table_on_the_other_backend_is_named_not_shown_empty(fake_cli):
    publish = ["publish", "web01", "--ip", "172.30.0.2", "--bridge", "natmap0", "-p", "8080:5000"]
    assert fake_cli("--table", "ipt", "--backend", "iptables", *publish)[0] == 0
    for args in (["ps"], ["port", "web01"], ["unpublish", "web01"], ["check"], ["links"], ["adopt"], publish):
        code, out, err = fake_cli("--table", "ipt", *args)
        assert (code, out) == (3, ""), args
        assert err == ("natmap: No such table on the nft backend: ipt is on iptables (pass --backend iptables)\n")
    code, _, err = fake_cli("--table", "ipt", "check", as_json=True)
    assert code == 3 and json.loads(err)["error"]["kind"] == "not_found" and "adopt" not in err
    assert "web01" in fake_cli("--table", "ipt", "--backend", "iptables", "ps")[1]
    assert fake_cli("tables")[1].splitlines() == ["TABLE   BACKEND", "ipt     iptables"]


def test_remove_deletes_the_table_and_its_store(fake_cli):
    publish = ["publish", "web01", "--ip", "172.30.0.2", "--bridge", "natmap0", "-p", "8080:5000"]
    assert fake_cli("--table", "lab", *publish)[0] == 0
    assert fake_cli("--table", "lab", "remove")[:2] == (0, "removed table lab (nft)\n")
    assert fake_cli.backends["lab", "nft"].items is None  # gone from the kernel
    assert fake_cli("tables")[1] == "TABLE   BACKEND\n"
    code, _, err = fake_cli("--table", "lab", "remove")
    assert (code, err) == (3, "natmap: No such table: lab (nft)\n")
    assert fake_cli("--table", "lab", *publish)[0] == 0
    valid("remove", json.dumps(fake_cli("--table", "lab", "remove", as_json=True)[1]))


def test_a_commands_unknown_option_points_at_the_commands_help(capsys):
    """`natmap gateway br0 --bogus`: the options that exist are in `natmap gateway --help`."""
    with pytest.raises(SystemExit) as exit:
        _parser(["gateway", "br0", "--bogus"]).parse_args(["gateway", "br0", "--bogus"])
    assert exit.value.code == 2
    assert "unrecognized arguments: --bogus (see natmap gateway --help)" in capsys.readouterr().err


def test_gateway_and_unpublish_help_say_what_they_do(capsys):
    for argv in (["gateway", "--help"], ["unpublish", "--help"]):
        with pytest.raises(SystemExit):
            _parser(argv).parse_args(argv)
    out = " ".join(capsys.readouterr().out.split())
    assert "the host port is not mapped but stays the binding's key" in out
    assert "print the bindings removed" in out

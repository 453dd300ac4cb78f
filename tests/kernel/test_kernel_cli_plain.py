"""`natmap port` and `natmap ls` read without argparse print what argparse's
path prints, for random tables: the same output, errors and exit codes, on
both backends. Root only."""

import random

import pytest

import natmap
from natmap import cli


def publish_random(sb, nm, rng):
    """A few endpoints with random single ports, ranges, addresses and protocols; their names."""
    names = []
    for n in range(rng.randint(1, 4)):
        web = sb.container(f"web{n:02}")
        specs = set()
        for _ in range(rng.randint(1, 6)):
            port, proto = rng.randint(1, 9000), rng.choice(["tcp", "udp"])
            ip = rng.choice(["", "127.0.0.1:", "[::1]:", f"{sb.outside_ip}:"])
            width = rng.choice([0, 0, 3])
            host = 20000 + 100 * n + len(specs) * 10
            if width:
                specs.add(f"{ip}{host}-{host + width}:{port}-{port + width}/{proto}")
            else:
                specs.add(f"{ip}{host}:{port}/{proto}")
        endpoint = web.endpoint()
        nm.publish(endpoint, sorted(specs))
        names.append(endpoint.name)
    return names


def both_ways(monkeypatch, capsys, argv):
    """(exit code, stdout, stderr) of main(argv) on the plain path, then on argparse's."""
    taken = []

    def plain(rest):
        taken.append(rest)
        return real(rest)

    real = cli._plain_args
    monkeypatch.setattr(cli, "_plain_args", plain)
    first = cli.main(argv), *capsys.readouterr()
    monkeypatch.setattr(cli, "_plain_args", lambda rest: None)
    second = cli.main(argv), *capsys.readouterr()
    monkeypatch.setattr(cli, "_plain_args", real)
    assert taken and real(taken[0]) is not None, f"{argv} did not take the plain path"
    return first, second


@pytest.mark.parametrize("seed", range(3))
def test_plain_port_and_ls_print_what_argparses_path_prints(sandbox, backend, monkeypatch, capsys, seed):
    rng = random.Random(seed)
    with natmap.NatMap(netns=sandbox.host.name, backend=backend) as nm:
        names = publish_random(sandbox, nm, rng)
        bindings = nm.bindings()
    where = ["--netns", sandbox.host.name, "--backend", backend]
    lines = [["ls"], ["ps", "-q"], ["--json", "ls"], ["port", "nosuch"], ["--json", "port", "nosuch"],
             ["port", "bad name!"], ["--table", "other", "ls"], ["--table", "other", "port", names[0]]]
    for name in names:
        lines += [["port", name], ["--json", "port", name], ["port", name, "1/sctp"], ["port", name, "65535"]]
    for b in rng.sample(bindings, min(4, len(bindings))):
        lines += [["port", b.endpoint, str(b.container_port)],
                  ["port", b.endpoint, f"{b.container_port}/{b.proto.value}"]]
    outputs = []
    for argv in lines:
        plain, full = both_ways(monkeypatch, capsys, [*argv, *where])
        assert plain == full, argv
        outputs.append(plain)
    codes = {code for code, _, _ in outputs}
    assert {0, 2, 3} <= codes and all(out or err for _, out, err in outputs)  # answers and errors compared

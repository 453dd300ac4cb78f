"""Shell completion's table names (issue 15, case 10): `natmap tables` and
the `--table` completion list natmap's own tables only (marked as natmap's
in the kernel, on either backend, or kept in its store), never another
program's inet table, nor one that only borrows natmap's marker for another
name. Root only; bash runs inside the sandbox's namespace."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import natmap

NATMAP = str(Path(sys.executable).with_name("natmap"))
BIN = str(Path(sys.executable).parent)


@pytest.fixture
def tables(sandbox):
    """natmap tables lab (nft) and ipt (iptables), and two that are not natmap's."""
    web = sandbox.container("web01")
    for table, backend in (("lab", "nft"), ("ipt", "iptables")):
        with natmap.NatMap(table=table, backend=backend, netns=sandbox.host.name) as nm:
            nm.publish(web.endpoint(), ["8080:80" if backend == "nft" else "8081:80"])
    sandbox.host.run(["nft", "-f", "-"], check=True, input=(
        "add table inet foreign\n"
        'add table inet borrowed { comment "natmap v1 table=lab" ; }\n'))  # another name's marker
    return sandbox


def names(sb, *args):
    result = sb.host.run([NATMAP, "tables", *args], check=True)
    return result.stdout.splitlines()


def test_tables_lists_natmaps_tables_on_both_backends_and_the_stored_ones(tables):
    assert names(tables, "-q") == ["ipt", "lab"]
    assert [line.split() for line in names(tables)] == [["TABLE", "BACKEND"], ["ipt", "iptables"], ["lab", "nft"]]
    tables.host.run(["nft", "flush", "ruleset"], check=True)  # gone from the kernel, still natmap's
    assert names(tables, "-q") == ["ipt", "lab"]


def test_table_completion_offers_only_natmaps_tables(tables, tmp_path):
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    script = tmp_path / "natmap.bash"
    script.write_text(subprocess.run([NATMAP, "completion", "bash"], capture_output=True, text=True,
                                     check=True).stdout)
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    result = tables.host.run(["bash", "-c", f"source {script}; _natmap_tables ''"], env=env)
    assert sorted(result.stdout.split()) == ["ipt", "lab"], result.stderr
    result = tables.host.run(["bash", "-c", f"source {script}; _natmap_tables l"], env=env)
    assert result.stdout.split() == ["lab"], result.stderr

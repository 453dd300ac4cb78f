"""The README's `natmap` listing, typed top to bottom as a newcomer types it,
in a sandbox: every command succeeds, and prints what the listing shows under
it. Root only."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NATMAP = str(Path(sys.executable).with_name("natmap"))
ENDLESS = {"watch"}  # runs until stopped (a service): the listing only names it


def readme_listing() -> list[tuple[list[str], list[str]]]:
    """The README's console block under "The `natmap` command": each command's
    arguments (after `natmap`, the comment dropped) and the lines shown under it."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"^## The `natmap` command\n.*?^```console\n(.*?)^```", readme, re.S | re.M).group(1)
    steps: list[tuple[list[str], list[str]]] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            argv = shlex.split(line[2:], comments=True)
            assert argv[0] == "natmap", line
            steps.append((argv[1:], []))
        else:
            steps[-1][1].append(line)
    return steps


def test_the_readmes_command_listing_runs_in_order(sandbox):
    steps = readme_listing()
    # The host the listing supposes has an eth1 (`natmap gateway natmap0 --trust eth1`).
    sandbox.host.run(["ip", "link", "add", "eth1", "type", "veth", "peer", "name", "eth1peer"], check=True)
    assert len(steps) > 20 and any(argv[0] == "link" for argv, _ in steps)
    for argv, shown in steps:
        if argv[0] in ENDLESS:
            continue
        result = subprocess.run([NATMAP, "--netns", sandbox.host.name, *argv], capture_output=True, text=True,
                                timeout=60, cwd=ROOT)
        typed = shlex.join(["natmap", *argv])
        assert result.returncode == 0, f"{typed}: exit {result.returncode}\n{result.stdout}{result.stderr}"
        if shown:
            assert result.stdout.splitlines() == shown, typed


def test_check_where_natmap_was_never_used_says_so_and_adopt_makes_no_table(sandbox):
    def natmap(*argv):
        return subprocess.run([NATMAP, "--netns", sandbox.host.name, *argv], capture_output=True, text=True,
                              timeout=60)

    checked = natmap("check")
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.splitlines() == ["nothing stored and no natmap table in the kernel: nothing to check "
                                           "(nothing was published with this table here)"]
    adopted = natmap("adopt")
    assert adopted.returncode == 3 and "nothing to adopt" in adopted.stderr
    listed = natmap("tables", "-q")
    assert listed.returncode == 0 and listed.stdout == ""

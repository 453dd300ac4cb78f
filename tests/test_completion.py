"""The bash completion's functions take names as text: a name (anyone's:
endpoint and table names come from `natmap ps -q` / `natmap tables -q`)
is never expanded, run or globbed by the shell completing it."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

NATMAP = str(Path(sys.executable).with_name("natmap"))
HOSTILE = ["lab", "x$(touch {marker})", "y`touch {marker}`", "l*", "$HOME", "other"]


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
@pytest.mark.parametrize("function", ["_natmap_tables", "_natmap_endpoints"])
def test_bash_completion_offers_hostile_names_as_text_and_runs_nothing(tmp_path, function):
    marker = tmp_path / "pwned"
    names = [n.format(marker=marker) for n in HOSTILE]
    stub = tmp_path / "bin" / "natmap"  # what `natmap tables -q` and `natmap ps -q` print
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nprintf '%s\\n' " + " ".join(f"'{n}'" for n in names) + "\n")
    stub.chmod(0o755)
    script = tmp_path / "natmap.bash"
    script.write_text(subprocess.run([NATMAP, "completion", "bash"], capture_output=True, text=True,
                                     check=True).stdout)
    env = {**os.environ, "PATH": f"{stub.parent}:{os.environ['PATH']}"}

    def complete(word):
        done = subprocess.run(["bash", "-c", f'source {script}; {function} "$1"', "bash", word],
                              capture_output=True, text=True, env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        return done.stdout.splitlines()

    assert complete("") == names
    assert complete("l") == ["lab", "l*"]
    assert complete("l*") == ["l*"]  # the word is a prefix, not a pattern
    assert complete("x$") == [names[1]]
    assert complete("$") == ["$HOME"]
    assert not marker.exists()

"""What importing natmap loads: the promises its start-up time rests on
(`natmap port` as a process is measured against `python -c pass`)."""

import subprocess
import sys

KERNEL_LIBRARIES = {"pyroute2", "iptc", "nftables"}


def loaded_by(statement: str) -> set[str]:
    code = f"{statement}\nimport sys\nprint(' '.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return {name.split(".")[0] for name in out.split()}


def test_import_natmap_loads_no_kernel_library():
    assert not loaded_by("import natmap") & KERNEL_LIBRARIES


def test_the_command_line_loads_nothing_a_read_does_not_use():
    # Each of these cost `natmap port` one to three milliseconds of about forty.
    unused = {"typing", "logging", "socket", "shutil", "tomllib", "subprocess", "signal"}
    assert not loaded_by("import natmap.cli") & (KERNEL_LIBRARIES | unused)

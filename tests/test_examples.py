"""Every example runs as it is."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_parse_specs_example_prints_canonical_specs_and_an_error():
    result = subprocess.run([sys.executable, str(EXAMPLES / "parse_specs.py")],
                            capture_output=True, text=True, timeout=60, check=True)
    lines = result.stdout.splitlines()
    assert any(line.endswith("-> 127.0.0.1:5001:5000/tcp  (host 127.0.0.1, host ports 5001, "
                             "container 5000/tcp)") for line in lines)
    assert "5000/tcp" in lines
    assert "link to db01 as web02Todb01" in lines
    assert "invalid port 70000 (must be 0-65535) in '70000:80'" in lines
    assert lines[-1].strip() == "^^^^^"


@pytest.mark.parametrize("argv, code", [
    (["spec", "-p", "127.0.0.1::5000", "--expose", "53/UDP", "--link", "/db01:/web02/db"], 0),
    (["spec", "-p", "80/icmp"], 2),
])
def test_cli_spec_command(argv, code):
    result = subprocess.run([sys.executable, "-m", "natmap", *argv],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == code
    if code == 0:
        assert result.stdout.splitlines() == [
            "-p 127.0.0.1::5000/tcp", "--expose 53/udp", "--link db01:db"]
    else:
        assert result.stderr.splitlines()[0] == (
            "natmap: invalid protocol 'icmp' (must be tcp, udp or sctp) in '80/icmp'")
        assert result.stderr.splitlines()[-1] == "       ^^^^"


def _block_with(document: str, text: str) -> str:
    """The one ```python block of ``document`` (relative to the project) that contains ``text``."""
    blocks = re.findall(r"^```python\n(.*?)^```", (EXAMPLES.parent / document).read_text(), re.S | re.M)
    (block,) = [b for b in blocks if text in b]
    return block


def test_the_readmes_program_on_the_fakes_runs_as_written(tmp_path):
    # No root, no kernel: a newcomer copies it and sees the binding it prints.
    code = _block_with("README.md", "FakeHost([bridge])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["5000/tcp -> 0.0.0.0:8080"]


def test_the_backends_docs_fake_natmap_publishes(tmp_path):
    code = _block_with("docs/backends.md", "def fake_natmap") + f"""
with fake_natmap({str(tmp_path / 'locks')!r}, {str(tmp_path / 'state')!r}) as nm:
    web = natmap.Endpoint("web01", "172.30.0.2", bridge="natmap0", ipv6="fd00:30::2")
    print(*nm.publish(web, ["8080:80"]))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0.0.0.0:8080", "[::]:8080"]

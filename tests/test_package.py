"""natmap installs as a library: the sdist is the whole project, the wheel
installs into a fresh virtual environment without a C compiler (python-iptables,
which needs one, is the `iptables` extra), and asking for the iptables backend
without that extra says how to get it.

Installing fetches pyroute2 and pip-nftables from the package index (or
pip's cache): about 15-25 s in all. Skipped, saying so, only when neither the
network nor the cache can provide them.
"""

import email
import json
import os
import re
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

import natmap

ROOT = Path(__file__).resolve().parent.parent
NO_COMPILER = {"CC": "/bin/false", "CXX": "/bin/false", "LDSHARED": "/bin/false"}
# Fail fast when offline instead of pip's long default timeout on every retry.
PIP_QUICK = {"PIP_DEFAULT_TIMEOUT": "15", "PIP_RETRIES": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
_OFFLINE = re.compile(r"NewConnectionError|Temporary failure in name resolution|Network is unreachable|"
                      r"Max retries exceeded|ConnectTimeout|ReadTimeout|No route to host")


def _run(argv, **env):
    """Run a step of building or installing; skip the test if it failed only
    because the package index is out of reach and pip's cache cannot stand in."""
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=300,
                            env={**os.environ, **PIP_QUICK, **env})
    output = result.stdout + result.stderr
    if result.returncode != 0 and _OFFLINE.search(output):
        pytest.skip(f"no network and no pip cache for: {' '.join(map(str, argv))}")
    assert result.returncode == 0, output
    return result


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """The sdist and the wheel, the wheel built from the sdist (as pip would),
    with this environment's setuptools (the test extra's): an isolated build
    would install setuptools twice over, 20 s more."""
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, ROOT], **NO_COMPILER)
    (sdist,), (wheel,) = out.glob("natmap-*.tar.gz"), out.glob("natmap-*.whl")
    return sdist, wheel


def _project_files(*folders):
    for folder in folders:
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                yield path.relative_to(ROOT).as_posix()


def test_the_sdist_is_the_whole_project(dist):
    sdist, _ = dist
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    wanted = {"LICENSE", "README.md", "Makefile", "setup.cfg", "pyproject.toml", "natmap/py.typed", "natmap_cni.py",
              *_project_files("natmap", "docs", "examples", "tests", "bench")}
    assert "tests/kernel/conftest.py" in wanted and "docs/kernel.md" in wanted
    assert not wanted - names, f"missing from the sdist: {sorted(wanted - names)}"
    assert not [name for name in names if name.endswith(".pyc")]


def test_the_wheel_declares_what_an_installer_needs(dist):
    _, wheel = dist
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = email.message_from_string(whl.read(info).decode())
    assert "natmap/py.typed" in names
    assert any(re.fullmatch(r"natmap-[^/]+\.dist-info/(licenses/)?LICENSE", n) for n in names)
    assert metadata["Version"] == natmap.__version__ and metadata["License"] == "Apache-2.0"
    requires = metadata.get_all("Requires-Dist")
    assert [r for r in requires if "iptables" in r] == ['python-iptables>=1.0; extra == "iptables"']
    classifiers = set(metadata.get_all("Classifier"))
    assert {"Typing :: Typed", "Programming Language :: Python :: 3.11", "Programming Language :: Python :: 3.12",
            "Programming Language :: Python :: 3.13", "Operating System :: POSIX :: Linux"} <= classifiers
    # The licence is said once, as an SPDX expression (PEP 639): setuptools deprecates
    # licence classifiers and warns on every build that has one.
    assert not [c for c in classifiers if c.startswith("License ::")]
    assert any(c.startswith("Development Status ::") for c in classifiers)
    assert metadata.get_all("Project-URL")
    assert Path(ROOT / "LICENSE").read_text().split()[:3] == ["Apache", "License", "Version"]


def test_the_wheel_installs_without_a_compiler_and_runs(dist, tmp_path):
    _, wheel = dist
    env = tmp_path / "venv"
    venv.create(env, with_pip=False)  # a fresh environment; this pip installs into it
    python = env / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "-q", wheel], **NO_COMPILER)

    installed = _run([sys.executable, "-m", "pip", "--python", python, "list", "--format=freeze"]).stdout
    assert "python-iptables" not in installed.lower() and "natmap==" in installed
    version = subprocess.run([env / "bin" / "natmap", "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.strip() == f"natmap {natmap.__version__}"
    imported = subprocess.run([python, "-c", "import natmap; print(natmap.__file__)"],
                              capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert imported.returncode == 0, imported.stderr
    assert Path(imported.stdout.strip()).is_relative_to(env)  # the installed copy, not this checkout
    cni = subprocess.run([env / "bin" / "natmap-cni"], input="{}", capture_output=True, text=True, timeout=60,
                         env={"CNI_COMMAND": "VERSION"}, cwd=tmp_path)
    assert cni.returncode == 0 and "1.1.0" in json.loads(cni.stdout)["supportedVersions"], cni.stderr

    # The README's promise: the user's own code passes `mypy --strict` against the
    # installed natmap (py.typed), found the way the user's Python finds it.
    (tmp_path / "app.py").write_text("import natmap\n\nprint(natmap.PortSpec.parse('8080:80').container_ports)\n")
    typed = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--python-executable",
                            python, "app.py"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert typed.returncode == 0, typed.stdout + typed.stderr

    # What a user without the extra sees when asking for the iptables backend.
    asked = subprocess.run([python, "-c", "import natmap; natmap.NatMap(backend='iptables')"],
                           capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert asked.returncode != 0
    assert asked.stderr.splitlines()[-1] == ("natmap.errors.BackendError: the iptables backend needs "
                                             "python-iptables: pip install 'natmap[iptables]' "
                                             "(from a clone: pip install '.[iptables]')")


WITHOUT = """
import sys
for module in sys.argv[2:]:
    sys.modules[module] = None  # as if not installed: importing it raises ModuleNotFoundError
import natmap
try:
    natmap.NatMap(backend=sys.argv[1])
except natmap.BackendError as exc:
    print(exc)
"""


@pytest.mark.parametrize("backend, missing, says", [
    ("iptables", ["iptc"], "the iptables backend needs python-iptables: pip install 'natmap[iptables]' "
                           "(from a clone: pip install '.[iptables]')"),
    ("auto", ["iptc", "nftables"], "the iptables backend needs python-iptables: pip install 'natmap[iptables]' "
                                   "(from a clone: pip install '.[iptables]'); the nft backend is not usable here"),
])
def test_the_iptables_backend_without_its_extra_names_the_extra(backend, missing, says):
    # Fails before any kernel call: nothing is read or changed.
    result = subprocess.run([sys.executable, "-c", WITHOUT, backend, *missing],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == says

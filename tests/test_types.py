"""natmap ships py.typed, so its annotations are a promise: `mypy --strict`
accepts natmap itself, every example, and the code the README and docs show a
user, exactly as written. One mypy run checks all three (about 3 s cold)."""

import re
from pathlib import Path

import pytest
from mypy import api

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "natmap"
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))

# The context the prose gives a fragment: natmap imported, `nm` a NatMap
# (the docs' fragments use both without saying so again). A block that
# imports anything is a whole program, run as it stands: it gets no prelude,
# so one that forgets `import natmap` fails here as it would for a reader.
PRELUDE = "import natmap\nnm: natmap.NatMap\n"


def prelude(code: str) -> str:
    return "" if re.search(r"^(import|from) ", code, re.M) else PRELUDE
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
_ERROR = re.compile(r"^(?P<path>[^:\n]+):(?P<line>\d+): (?P<rest>error: .*)$", re.M)


def python_blocks(document: Path) -> list[tuple[int, str]]:
    """The ```python blocks of a Markdown file: (line of the block's first code line, code)."""
    text = document.read_text()
    return [(text.count("\n", 0, m.start()) + 2, m.group(1)) for m in _BLOCK.finditer(text)]


@pytest.fixture(scope="module")
def mypy_errors(tmp_path_factory):
    """Run `mypy --strict` once over natmap, the examples and the documents'
    blocks; return its errors as (file as the reader knows it, line, message)."""
    tmp = tmp_path_factory.mktemp("typed")
    snippets: dict[Path, tuple[Path, int]] = {}  # snippet file -> (document, first code line)
    for document in DOCUMENTS:
        module = re.sub(r"\W", "_", str(document.relative_to(ROOT)))  # docs/links.md: docs_links_md
        for first_line, code in python_blocks(document):
            path = tmp / f"{module}_line{first_line}.py"
            path.write_text(prelude(code) + code)
            snippets[path.resolve()] = (document, first_line - prelude(code).count("\n"))
    out, err, status = api.run([
        "--strict", "--config-file", str(ROOT / "setup.cfg"), "--cache-dir", str(tmp / "cache"),
        "--no-color-output", "--no-error-summary", "--show-absolute-path",
        str(PACKAGE), *map(str, EXAMPLES), *map(str, snippets)])
    assert status in (0, 1) and not err, f"mypy did not run: {err}{out}"
    errors = []
    for m in _ERROR.finditer(out):
        path, line = Path(m["path"]).resolve(), int(m["line"])
        if path in snippets:
            document, first_line = snippets[path]
            path, line = document, first_line + line - 1
        errors.append((path, line, m["rest"]))
    assert status == 0 or errors, out  # mypy failed without a single error line: show why
    return errors


def _lines(errors):
    return "\n".join(f"{path.relative_to(ROOT)}:{line}: {message}" for path, line, message in errors)


def test_the_documents_have_python_blocks_to_check():
    assert len(python_blocks(ROOT / "README.md")) >= 2  # the quick start and the sandbox
    assert EXAMPLES


def test_natmap_passes_mypy_strict(mypy_errors):
    own = [e for e in mypy_errors if e[0].is_relative_to(PACKAGE)]
    assert not own, "\n" + _lines(own)


def test_the_readme_docs_and_examples_pass_mypy_strict_as_written(mypy_errors):
    theirs = [e for e in mypy_errors if not e[0].is_relative_to(PACKAGE)]
    assert not theirs, "\n" + _lines(theirs)


# --- what the annotations promise, at run time ------------------------------------


def test_an_endpoint_takes_text_or_values_and_holds_values():
    from ipaddress import IPv4Address, IPv6Address

    import natmap

    from_text = natmap.Endpoint("web01", "172.30.0.2", "natmap0", ipv6="fd00:30::2", expose=["5000", "53/udp"])
    from_values = natmap.Endpoint("web01", IPv4Address("172.30.0.2"), "natmap0", ipv6=IPv6Address("fd00:30::2"),
                                  expose=iter([natmap.PortSpec.parse_exposed("5000/tcp"), "53/udp"]))
    assert from_text == from_values and hash(from_text) == hash(from_values)
    assert type(from_text.ip) is IPv4Address and type(from_text.ipv6) is IPv6Address
    assert [str(p) for p in from_text.expose] == ["5000/tcp", "53/udp"]
    assert natmap.Endpoint("web01", "172.30.0.2", "natmap0", expose="5000").expose == from_text.expose[:1]
    assert natmap.Endpoint("web01", "172.30.0.2", "natmap0").ipv6 is None
    with pytest.raises(AttributeError):
        from_text.ip = IPv4Address("172.30.0.3")  # type: ignore[misc]


def test_bindings_sort_with_their_sort_key():
    import natmap

    made = [natmap.Binding("web01", "tcp", "0.0.0.0", port, "172.30.0.2", 80) for port in (10000, 9000)]
    assert [b.host_port for b in sorted(made, key=natmap.Binding.sort_key)] == [9000, 10000]


def test_a_sandbox_has_no_host_before_it_starts():
    import natmap

    with pytest.raises(natmap.SandboxError, match="not started"):
        natmap.Sandbox().host


def test_a_gateway_mode_is_a_literal_mypy_checks(tmp_path):
    """natmap.GatewayMode: a misspelt mode is mypy's error, not only a SpecError at run time."""
    code = tmp_path / "modes.py"
    code.write_text("import natmap\nnm: natmap.NatMap\nnm.set_gateway('natmap0', 'routed')\n"
                    "nm.set_gateway('natmap0', mode_ipv6='rooted')\n"
                    "mode: natmap.GatewayMode = natmap.Gateway('natmap0').mode_ipv4\n")
    out, err, status = api.run(["--strict", "--config-file", str(ROOT / "setup.cfg"), "--cache-dir",
                                str(tmp_path / "cache"), "--no-color-output", "--no-error-summary", str(code)])
    errors = [line for line in out.splitlines() if ": error:" in line]
    assert len(errors) == 1 and "modes.py:4:" in errors[0] and "'rooted'" in errors[0], out + err


def test_trusted_interfaces_is_the_gateways_field_and_trusted_its_alias():
    import natmap

    gateway = natmap.Gateway("natmap0", "routed", ["eth1"])
    assert gateway.trusted_interfaces == gateway.trusted == ("eth1",)
    assert natmap.Gateway("natmap0", "routed", trusted=["eth1"]) == gateway
    assert natmap.Gateway.trusted.fset is None  # read-only: the value is frozen

"""Random use from many sides at once, and random input to the command.

- Random sequences of publish/unpublish/link/check/repair from several
  threads (sharing one NatMap) and several processes on one table: no crash,
  no wait past the lock timeout, and the kernel holds exactly what the calls
  reported.
- Random argv and random TOML thrown at the command: it succeeds, or says
  one natmap error (one line; a grammar error adds the input and a caret).

Root only, in the sandbox. STRESS=1 (make stress) runs many more examples.
"""

import contextlib
import io
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import natmap
from natmap import netns
from natmap.cli import main, wants_json

STRESS = os.environ.get("STRESS") == "1"
LOCK_TIMEOUT = 20  # seconds: no call may wait longer than this
HERE = Path(__file__).resolve().parent


# --- many threads and processes on one table -------------------------------------------------

def endpoint(worker, k):
    return natmap.Endpoint(f"w{worker}e{k}", f"172.30.{worker + 1}.{k + 2}", "natmap0")


def run_ops(nm, worker, ops):
    """Do ``ops`` as worker ``worker``; return what the calls reported: the
    bindings and links the worker's endpoints have now."""
    bindings, links = set(), set()
    for op in ops:
        try:
            if op[0] == "publish":
                made = nm.publish(endpoint(worker, op[1]), [op[2].format(base=20000 + 100 * worker)])
                bindings |= {key(b) for b in made}
            elif op[0] == "unpublish":
                name = endpoint(worker, op[1]).name
                removed = {key(b) for b in nm.unpublish(name)}
                assert removed == {b for b in bindings if b[0] == name}, (removed, bindings)
                bindings -= removed
                links = {pair for pair in links if name not in pair}
            elif op[0] == "link":
                source, target = endpoint(worker, op[1]).name, endpoint(worker, op[2]).name
                made = nm.link(source, target)
                links.add((made.source, made.target))
            elif op[0] == "check":
                nm.check()
            else:
                nm.repair()
        except (natmap.ConflictError, natmap.NotFoundError):
            pass  # refused, and so changed nothing: what the test checks at the end
    return sorted(bindings), sorted(links)


def key(b):
    return (b.endpoint, b.proto.value, str(b.host_ip), b.host_port, str(b.container_ip), b.container_port)


OP = st.one_of(
    st.tuples(st.just("publish"), st.integers(0, 2),
              st.sampled_from(["{base}:80", "{base}-{base}:81", "80", "53/udp", "127.0.0.1::8080"])),
    st.tuples(st.just("unpublish"), st.integers(0, 2)),
    st.tuples(st.just("link"), st.integers(0, 2), st.integers(1, 2)).map(lambda op: (op[0], op[1], (op[1] + op[2]) % 3)),
    st.tuples(st.just("check")),
)
REPAIR = st.tuples(st.just("repair"))

WORKER = """
import json, sys
sys.path.insert(0, {here!r})
import natmap
from test_kernel_fuzz import run_ops
nm = natmap.NatMap(netns=sys.argv[1], backend=sys.argv[2], lock_timeout={timeout})
print(json.dumps(run_ops(nm, int(sys.argv[3]), json.loads(sys.argv[4]))))
"""


@pytest.fixture(scope="module")
def wide():
    with natmap.Sandbox(subnet="172.30.0.0/16", subnet6=None) as sb:
        yield sb


@pytest.mark.parametrize("backend", ["nft", "iptables"])
@settings(max_examples=30 if STRESS else 3, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_threads_and_processes_on_one_table_lose_nothing(wide, backend, data):
    processes = data.draw(st.sampled_from([0, 2]), label="processes")
    ops = st.lists(st.one_of(OP, REPAIR) if processes == 0 else OP, min_size=1, max_size=8 if STRESS else 5)
    plans = data.draw(st.lists(ops, min_size=2 + processes, max_size=2 + processes), label="plans")
    shared = natmap.NatMap(netns=wide.host.name, backend=backend, lock_timeout=LOCK_TIMEOUT)
    with contextlib.suppress(natmap.NatmapError):
        shared.remove()
    started = time.monotonic()
    children = [subprocess.Popen([sys.executable, "-c", WORKER.format(here=str(HERE), timeout=LOCK_TIMEOUT),
                                  wide.host.name, backend, str(w), json.dumps(plans[w])],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for w in range(2, 2 + processes)]
    reported, faults = {}, []

    def thread(w):
        try:
            reported[w] = run_ops(shared, w, plans[w])
        except Exception as exc:  # noqa: BLE001  (any fault fails the test)
            faults.append(exc)

    threads = [threading.Thread(target=thread, args=(w,)) for w in range(2)]
    for t in threads:
        t.start()
    for w, child in enumerate(children, start=2):
        out, err = child.communicate(timeout=300)
        assert child.returncode == 0, err
        reported[w] = json.loads(out)
    for t in threads:
        t.join(timeout=300)
        assert not t.is_alive(), "a thread hangs"
    assert faults == []
    assert time.monotonic() - started < 300
    fresh = natmap.NatMap(netns=wide.host.name, backend=backend)
    kernel = sorted(key(b) for b in fresh.bindings())  # none when the table is not made yet
    kernel_links = sorted((link.source, link.target) for link in fresh.links())
    assert kernel == sorted(tuple(b) for w in reported for b in reported[w][0])
    assert kernel_links == sorted(tuple(pair) for w in reported for pair in reported[w][1])
    host_sides = [(b[1], b[2], b[3]) for b in kernel]
    assert len(host_sides) == len(set(host_sides))  # no port given twice


# --- random input to the command ------------------------------------------------------------

TOKENS = st.sampled_from([
    "publish", "port", "ls", "ps", "unpublish", "link", "unlink", "links", "tables", "isolate", "apply", "plan", "check",
    "spec", "web01", "db01", "natmap0", "nosuch0", "-p", "-P", "--publish", "--expose", "--ip", "--ipv6",
    "--bridge", "--table", "--backend", "nft", "iptables", "auto", "--json", "-v", "--env", "--open",
    "--lock-timeout", "--publish-file", "--link", "--", "172.30.0.2", "fd00:30::2", "8080:80", "80/udp",
    "127.0.0.1:5001:5000", "[::1]::80", "99999", "0", "-1", "nan", "inf", "1e400", "db01:db", "A=1",
    "flush", "lab1", "{toml}", "{bad}", "/nonexistent", "/etc/hostname", "", " ", "\x00", "é", "-pp",
])
ARGV = st.lists(st.one_of(TOKENS, st.text(max_size=12)), max_size=12)


def _is_natmap_error(stderr, as_json):
    if as_json:
        reported = json.loads(stderr)  # one JSON object, nothing else
        return (isinstance(reported, dict) and set(reported) == {"version", "error"}
                and {"kind", "message"} <= set(reported["error"]))
    lines = stderr.splitlines()
    return (bool(lines) and lines[0].startswith("natmap: ") and len(lines) in (1, 3)
            and all(line.startswith("    ") for line in lines[1:]))


def run_main(argv):
    """main(argv) in this thread: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # --help, --version, and argparse's errors
            code = exc.code
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def quiet_log():
    log = logging.getLogger("natmap")
    handlers, level = list(log.handlers), log.level
    yield
    log.handlers[:], log.level = handlers, level


@settings(max_examples=1000 if STRESS else 60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(argv=ARGV)
def test_random_argv_gives_success_or_one_natmap_error(wide, tmp_path_factory, quiet_log, argv):
    files = tmp_path_factory.mktemp("argv")
    (files / "good.toml").write_text('[endpoints.web01]\nip = "172.30.0.2"\nbridge = "natmap0"\n'
                                     'publish = ["8080:80"]\n')
    (files / "bad.toml").write_bytes(b"[endpoints.web01]\npublish = [\"99999\"]\n\xff")
    argv = [t.replace("{toml}", str(files / "good.toml")).replace("{bad}", str(files / "bad.toml"))
            for t in argv]
    argv = [t for t in argv if not t.startswith("--n")]  # never --netns(-path): this namespace only
    with netns.entered(wide.host.name):
        code, out, err = run_main(argv + ["--lock-timeout", "5"] if "--" not in argv else argv)
    if code == 0:
        assert "Traceback" not in err
    else:
        assert "Traceback" not in err and _is_natmap_error(err, wants_json(argv)), err


def _toml_value(depth=3):
    scalars = st.one_of(st.text(max_size=20), st.integers(-(2 ** 63), 2 ** 63 - 1), st.booleans(),
                        st.floats(allow_nan=False), st.sampled_from(["172.30.0.2", "natmap0", "8080:80", "80"]))
    return st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                        max_leaves=12)


def _toml(value, at=""):
    """Python values as TOML text (inline tables and arrays, json's string escapes)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value) if not isinstance(value, float) or value == value else "nan"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + "}"


DOCUMENT = st.one_of(
    st.dictionaries(st.sampled_from(["endpoints", "bridges", "other"]),
                    st.dictionaries(st.sampled_from(["web01", "db01", "natmap0", "a b"]),
                                    st.one_of(_toml_value(), st.dictionaries(
                                        st.sampled_from(["ip", "bridge", "publish", "expose", "links",
                                                         "publish_all", "isolate", "ipv6", "x"]),
                                        _toml_value(), max_size=6)), max_size=3), max_size=3)
    .map(lambda doc: "\n".join(f"{k} = {_toml(v)}" for k, v in doc.items()).encode()),
    st.binary(max_size=200),
    st.integers(1, 20000).map(lambda n: b"x = " + b"[" * n + b"]" * n),
)


@settings(max_examples=1000 if STRESS else 60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(document=DOCUMENT, as_json=st.booleans())
def test_random_toml_gives_success_or_one_natmap_error(wide, tmp_path_factory, quiet_log, document, as_json):
    path = tmp_path_factory.mktemp("toml") / "lab.toml"
    path.write_bytes(document)
    with netns.entered(wide.host.name):
        code, out, err = run_main(["plan", str(path), "--lock-timeout", "5"] + (["--json"] if as_json else []))
    assert "Traceback" not in err
    assert code == 0 or _is_natmap_error(err, as_json), err
    if code != 0 and not as_json and code == 2:
        assert str(path) in err or "endpoints" in err or "bridges" in err or "invalid" in err, err

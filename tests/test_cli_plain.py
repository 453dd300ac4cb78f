"""`natmap port` and `natmap ls` read without argparse (cli._plain_args):
the same arguments argparse gives, or argparse itself reads them (issue 16's
start-up targets: a `natmap port` process is mostly Python's start)."""

import contextlib
import io
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from natmap.cli import _parser, _plain_args

# Words a command line of these commands may hold, good and bad.
COMMANDS = ["port", "ls", "ps", "links", "publish", "help"]
FLAGS = ["--table", "--table=lab", "--table=", "--netns", "--netns=ns1", "--netns-path", "--backend",
         "--backend=iptables", "--backend=bogus", "--lock-timeout", "--lock-timeout=0.5", "--lock-timeout=x",
         "--json", "--json=1", "-q", "--quiet", "-q=1", "-f", "--file", "--file=lab.toml", "-flab.toml", "-v", "-vv",
         "--verbose", "-h", "--help", "-V", "--tab", "--js", "--", "-x", "-1", "-", "-p", "--publish=80"]
VALUES = ["web01", "lab", "nft", "iptables", "auto", "bogus", "5", "1e3", "nan", " 5", "5000", "5000/tcp",
          "53/udp", "", "/proc/1/ns/net", "x y"]
# the words of the plain forms, drawn as often again: most lines then take _plain_args's path
PLAIN = ["--json", "--table", "--table=lab", "lab", "web01", "5000/tcp", "-q", "--netns", "ns1", "--backend", "auto"]
WORDS = st.one_of(st.sampled_from(PLAIN), st.sampled_from(COMMANDS + FLAGS + VALUES))


def argparse_reads(argv):
    """vars() of argparse's Namespace for ``argv``, or "exit" where argparse exits (an error, help)."""
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        try:
            return vars(_parser(argv).parse_args(argv))
        except SystemExit:
            return "exit"


@settings(max_examples=600, deadline=None)
@given(st.lists(WORDS, max_size=7), st.sampled_from(["port", "ls", "ps"]), st.integers(0, 7))
def test_plain_args_are_argparses_or_none(words, command, at):
    argv = [*words[:at], command, *words[at:]]
    plain = _plain_args(argv)
    if plain is not None:
        assert vars(plain) == argparse_reads(argv), argv


# whole options (a flag and its value), for lines shaped as users write them
OPTIONS = st.sampled_from([["--json"], ["--table", "lab"], ["--table=lab"], ["--netns", "ns1"], ["--backend", "auto"],
                           ["--backend=bogus"], ["--lock-timeout", "2"], ["--netns-path", "/x"], ["-q"], ["--quiet"],
                           ["-f", "lab.toml"], ["-v"], ["--tab", "lab"], ["--table"]])


@settings(max_examples=300, deadline=None)
@given(st.lists(OPTIONS, max_size=3), st.sampled_from(["port", "ls", "ps"]),
       st.lists(st.sampled_from(["web01", "5000/tcp", "53", ""]), max_size=3), st.lists(OPTIONS, max_size=3))
def test_plain_args_of_whole_options_are_argparses_or_none(before, command, positionals, after):
    argv = [*(w for o in before for w in o), command, *positionals, *(w for o in after for w in o)]
    plain = _plain_args(argv)
    if plain is not None:
        assert vars(plain) == argparse_reads(argv), argv


@pytest.mark.parametrize("argv", [
    ["port", "web01"],
    ["port", "web01", "5000/tcp"],
    ["--netns", "ns1", "port", "web01", "5000"],
    ["--table=lab", "--json", "port", "web01"],
    ["port", "web01", "--table", "lab", "--backend", "iptables"],
    ["--netns-path", "/proc/1/ns/net", "--lock-timeout", "2.5", "port", "web01"],
    ["ls"],
    ["ps", "-q"],
    ["--json", "ls", "--quiet", "--table", "a", "--table", "b"],
    ["ls", "-f", "examples/lab.toml"],
])
def test_the_plain_forms_are_read_without_argparse(argv):
    plain = _plain_args(argv)
    assert plain is not None and vars(plain) == argparse_reads(argv)


@pytest.mark.parametrize("argv", [
    ["port"], ["port", "a", "b", "c"], ["ls", "extra"], ["-q", "ls"], ["port", "web01", "-h"], ["-v", "port", "a"],
    ["--tab", "lab", "port", "a"], ["--backend", "bogus", "ls"], ["--lock-timeout", "x", "ls"], ["port", "--", "a"],
    ["links"], ["publish", "web01"], [],
])
def test_anything_else_is_left_to_argparse(argv):
    assert _plain_args(argv) is None


def test_a_plain_port_imports_no_argparse():
    code = ("import sys\nfrom natmap.cli import _plain_args\n"
            "assert _plain_args(['--netns', 'ns1', 'port', 'web01'])\nprint('argparse' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"

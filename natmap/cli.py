"""The ``natmap`` command.

So far it reads specs: ``natmap spec -p 8080:80 --expose 5000 --link db01:db``
prints each in canonical form, or the error with a caret and exit code 2.
Publishing commands come with the engine.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__
from .errors import SpecError
from .spec import LinkSpec, PortSpec

EXIT_SPEC_ERROR = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="natmap", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"natmap {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    spec = commands.add_parser(
        "spec", help="check specs and print them in canonical form",
        epilog="example: natmap spec -p 127.0.0.1:5001:5000 -p '[::1]::80/udp' --expose 5000 --link db01:db",
    )
    spec.add_argument("-p", "--publish", action="append", default=[], metavar="SPEC")
    spec.add_argument("--expose", action="append", default=[], metavar="PORT[/PROTO]")
    spec.add_argument("--link", action="append", default=[], metavar="NAME[:ALIAS]")
    return parser


def _spec_command(args: argparse.Namespace) -> None:
    for text in args.publish:
        print(f"-p {PortSpec.parse(text)}")
    for text in args.expose:
        print(f"--expose {PortSpec.parse_exposed(text)}")
    for text in args.link:
        print(f"--link {LinkSpec.parse(text)}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        _spec_command(args)
    except SpecError as exc:
        print(f"natmap: {exc}", file=sys.stderr)
        return EXIT_SPEC_ERROR
    return 0

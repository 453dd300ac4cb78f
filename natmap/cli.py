"""The ``natmap`` command: Docker's port publishing and links, in Docker's words.

Exit codes: 0 done; 1 the change failed (a conflict, the kernel refused);
2 bad input (a spec, a name, a file, the command line); 3 nothing found (no
such port, no table yet); 4 not privileged (natmap needs CAP_NET_ADMIN).
Errors go to stderr in one line (grammar errors add the input with a caret
under the fault); with ``--json`` as a JSON object.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence

from . import __version__
from .backends import BACKENDS
from .engine import NatMap
from .errors import NatmapError, NotFoundError, SpecError
from .links import Link
from .model import Binding, Bindings, Change, Endpoint, describe, natural_key
from .spec import LinkSpec, PortSpec, format_ip

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (2 ms of a `natmap` command)
if TYPE_CHECKING:
    from typing import Any

    Output = tuple[Any, list[str]]  # (what --json prints, the lines to print otherwise)

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_NOT_FOUND, EXIT_PRIVILEGE = 0, 1, 2, 3, 4


# --- Docker's text forms -------------------------------------------------------------


def ps_ports(bindings: Iterable[Binding]) -> str:
    """``docker ps``'s PORTS column: ``0.0.0.0:32768->5000/tcp, [::]:32768->5000/tcp``;
    consecutive ports that map one to one are shown as one range, as Docker does."""
    entries = []
    groups: dict[tuple, list[Binding]] = {}
    for b in bindings:
        groups.setdefault((b.host_ip.version, b.host_ip, b.proto), []).append(b)
    for (_, host_ip, proto), members in sorted(groups.items(), key=lambda kv: (kv[0][0], str(kv[0][1]), kv[0][2])):
        members.sort(key=lambda b: b.container_port)
        run = [members[0]]
        for b in members[1:] + [None]:  # type: ignore[list-item]
            last = run[-1]  # a port, or a same-port range (count ports)
            if b is not None and (b.host_port, b.container_port) == (last.last_port + 1, last.container_port + last.count):
                run.append(b)
                continue
            host = _span(run[0].host_port, last.last_port)
            container = _span(run[0].container_port, last.container_port + last.count - 1)
            entries.append(f"{format_ip(host_ip)}:{host}->{container}/{proto.value}")
            if b is not None:
                run = [b]
    return ", ".join(sorted(entries, key=natural_key))


def _span(start: int, end: int) -> str:
    return str(start) if start == end else f"{start}-{end}"


def _binding_json(b: Binding) -> dict[str, Any]:
    return {"endpoint": b.endpoint, "proto": b.proto.value, "host_ip": str(b.host_ip),
            "host_port": b.host_port, "container_ip": str(b.container_ip),
            "container_port": b.container_port}


def _link_json(link: Link) -> dict[str, Any]:
    return {"source": link.source, "target": link.target, "alias": link.alias,
            "ports": [f"{port}/{proto.value}" for port, proto in link.ports],
            "hosts_line": link.hosts_line, "env": link.env}


def _change_output(change: Change) -> Output:
    lines = [f"- {describe(i)}" for i in change.delete] + [f"+ {describe(i)}" for i in change.add]
    return ({"delete": [describe(i) for i in change.delete],
             "add": [describe(i) for i in change.add]}, lines)


# --- the commands ----------------------------------------------------------------------


def cmd_publish(nm: NatMap, args: argparse.Namespace) -> Output:
    endpoint = Endpoint(args.name, args.ip, args.bridge, ipv6=args.ipv6, expose=tuple(args.expose))
    made = nm.publish(endpoint, PortSpec.parse_many(args.publish), publish_all=args.publish_all)
    made.sort(key=Binding.sort_key)
    return [_binding_json(b) for b in made], [b.port_line() for b in made]


def cmd_port(nm: NatMap, args: argparse.Namespace) -> Output:
    bindings = nm.port(args.name, args.port)
    if args.port is None:
        return [_binding_json(b) for b in bindings], [b.port_line() for b in bindings]
    if not bindings:
        spec = PortSpec.parse_exposed(args.port)
        raise NotFoundError(f"No public port '{spec.container_ports}/{spec.proto.value}' published for {args.name}")
    return [_binding_json(b) for b in bindings], [str(b) for b in bindings]


def cmd_ls(nm: NatMap, args: argparse.Namespace) -> Output:
    by_endpoint: dict[str, list[Binding]] = {}
    bindings = nm.bindings()
    for b in bindings.held if isinstance(bindings, Bindings) else bindings:  # ranges unexpanded
        by_endpoint.setdefault(b.endpoint, []).append(b)
    rows = [(name, ", ".join(sorted({str(b.container_ip) for b in bs}, key=natural_key)), ps_ports(bs))
            for name, bs in sorted(by_endpoint.items())]
    data = [{"endpoint": n, "addresses": a.split(", "), "ports": p,
             "bindings": [_binding_json(one) for b in by_endpoint[n] for one in b.expand()]}
            for n, a, p in rows] if args.json else []
    return data, _columns([("ENDPOINT", "ADDRESSES", "PORTS"), *rows])


def cmd_unpublish(nm: NatMap, args: argparse.Namespace) -> Output:
    removed = nm.unpublish(args.name)
    return [_binding_json(b) for b in removed], [b.port_line() for b in removed]


def cmd_link(nm: NatMap, args: argparse.Namespace) -> Output:
    target = LinkSpec.parse(args.target)
    link = nm.link(args.source, target.name, target.alias, target_env=args.env)
    return _link_json(link), [link.hosts_line.replace("\t", " "), *link.env]


def cmd_unlink(nm: NatMap, args: argparse.Namespace) -> Output:
    link = nm.unlink(args.source, args.target)
    if link is None:
        raise NotFoundError(f"{args.source} is not linked to {args.target}")
    return _link_json(link), [str(link)]


def cmd_links(nm: NatMap, args: argparse.Namespace) -> Output:
    links = nm.links()
    rows = [(l.source, l.target, l.alias, ", ".join(f"{p}/{proto.value}" for p, proto in l.ports))
            for l in links]
    return [_link_json(l) for l in links], _columns([("SOURCE", "TARGET", "ALIAS", "PORTS"), *rows])


def cmd_isolate(nm: NatMap, args: argparse.Namespace) -> Output:
    (nm.unisolate if args.open else nm.isolate)(args.bridge)
    return {"bridge": args.bridge, "isolated": not args.open}, []


def cmd_apply(nm: NatMap, args: argparse.Namespace) -> Output:
    from .config import Config  # tomllib: only for the commands that read files

    return _change_output(nm.apply(Config.load(args.file)))


def cmd_plan(nm: NatMap, args: argparse.Namespace) -> Output:
    from .config import Config

    return _change_output(nm.plan(Config.load(args.file)))


def cmd_check(nm: NatMap, args: argparse.Namespace) -> Output:
    drift = nm.check()
    data = {"drift": bool(drift), "remembered": drift.remembered, "structure": list(drift.structure)}
    if drift:
        raise DriftFound(str(drift), data)
    return data, [str(drift)]


class DriftFound(NatmapError):
    """``natmap check`` found the table not as natmap made it."""

    def __init__(self, text: str, data: dict[str, Any]) -> None:
        super().__init__(text)
        self.data = data


def cmd_spec(nm: NatMap | None, args: argparse.Namespace) -> Output:
    lines = ([f"-p {PortSpec.parse(t)}" for t in args.publish]
             + [f"--expose {PortSpec.parse_exposed(t)}" for t in args.expose]
             + [f"--link {LinkSpec.parse(t)}" for t in args.link])
    return lines, lines


def _columns(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["   ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


# --- the parser ----------------------------------------------------------------------


def _arg(*flags: str, **options: Any) -> tuple[tuple[str, ...], dict[str, Any]]:
    return flags, options


_COMMON = [
    _arg("--table", default="natmap", help="natmap's table (default: natmap)"),
    _arg("--backend", default="nft", choices=BACKENDS, help="packet filter backend: nft (default), iptables, or auto"),
    _arg("--netns", help="work inside this network namespace (ip netns add NAME)"),
    _arg("--json", action="store_true", help="machine-readable output"),
    _arg("-v", "--verbose", action="count", default=0, help="log each change to stderr (-vv: and each kernel batch)"),
]
_SPECS = _arg("-p", "--publish", action="append", default=[], metavar="SPEC",
              help="[IP:][HOST_PORT:]CONTAINER_PORT[/PROTO], as docker run -p")
_EXPOSE = _arg("--expose", action="append", default=[], metavar="PORT[/PROTO]")

# name, function, help, example, aliases, arguments
_COMMANDS: list[tuple[str, Callable[..., Output], str, str, tuple[str, ...], list]] = [
    ("publish", cmd_publish, "publish an endpoint's ports (docker run -p/-P)",
     "natmap publish web01 --ip 172.30.0.2 --bridge natmap0 -p 127.0.0.1:5001:5000 -p 8080:5000 --expose 5000 -P",
     (), [_arg("name"), _arg("--ip", required=True, help="the endpoint's IPv4 address"),
          _arg("--ipv6", help="the endpoint's IPv6 address, if it has one"),
          _arg("--bridge", required=True, help="the bridge the endpoint is on"), _SPECS, _EXPOSE,
          _arg("-P", "--publish-all", action="store_true", help="publish every exposed port")]),
    ("port", cmd_port, "list an endpoint's bindings (docker port)", "natmap port web01 5000/tcp",
     (), [_arg("name"), _arg("port", nargs="?", metavar="PORT[/PROTO]")]),
    ("ls", cmd_ls, "list endpoints with their PORTS (docker ps)", "natmap ls", ("ps",), []),
    ("unpublish", cmd_unpublish, "remove every binding and link of an endpoint", "natmap unpublish web01",
     (), [_arg("name")]),
    ("link", cmd_link, "link SOURCE to TARGET (docker run --link TARGET:ALIAS); both must be published: "
     "their addresses and published ports are read from the table", "natmap link web02 db01:web02Todb01",
     (), [_arg("source"), _arg("target", metavar="TARGET[:ALIAS]"),
          _arg("--env", action="append", default=[], metavar="NAME=VALUE",
               help="the target's environment, for the link's _ENV_ variables")]),
    ("unlink", cmd_unlink, "remove the link from SOURCE to TARGET", "natmap unlink web02 db01",
     (), [_arg("source"), _arg("target")]),
    ("links", cmd_links, "list the links", "natmap links", (), []),
    ("isolate", cmd_isolate, "close inter-container traffic on a bridge (--icc=false)", "natmap isolate natmap0",
     (), [_arg("bridge"), _arg("--open", action="store_true", help="open it again instead")]),
    ("apply", cmd_apply, "make the table match a TOML file, in one transaction", "natmap apply examples/lab.toml",
     (), [_arg("file")]),
    ("plan", cmd_plan, "show what apply would change; change nothing", "natmap plan examples/lab.toml",
     (), [_arg("file")]),
    ("check", cmd_check, "check natmap's table in the kernel: its chains and rules are intact "
     "(exit 1 and the problems if not)", "natmap check", (), []),
    ("spec", cmd_spec, "check specs and print them in canonical form",
     "natmap spec -p 127.0.0.1:5001:5000 -p '[::1]::80/udp' --expose 5000 --link db01:db",
     (), [_SPECS, _EXPOSE, _arg("--link", action="append", default=[], metavar="NAME[:ALIAS]")]),
]


def _parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    """The parser for ``argv``: when it names a command, only that command's
    parser is built (building all twelve is a tenth of ``natmap port``'s time)."""
    parser = argparse.ArgumentParser(
        prog="natmap", formatter_class=_Formatter,
        description="Docker-style port publishing and links on nftables, without Docker.",
        epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--version", action="version", version=f"natmap {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = [c for c in _COMMANDS if argv and argv[0] in (c[0], *c[4])] or _COMMANDS
    for name, func, help, example, aliases, arguments in wanted:
        sub = commands.add_parser(name, help=help, description=help, aliases=list(aliases),
                                  epilog=f"example:\n  {example}", formatter_class=_Formatter)
        for flags, options in arguments + _COMMON:
            sub.add_argument(*flags, **options)
        sub.set_defaults(func=func)
    return parser


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Help as written, as wide as the terminal. The width comes from os:
    argparse would ask shutil, whose import (it loads the compression
    modules) costs more than the rest of a ``natmap port``'s parsing."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=_terminal_width() - 2)


def _terminal_width() -> int:
    try:
        return int(os.environ.get("COLUMNS", "")) or os.get_terminal_size(sys.__stdout__.fileno()).columns
    except (ValueError, OSError, AttributeError):
        return 80


def _exit_code(exc: BaseException) -> int:
    if isinstance(exc, PermissionError):
        return EXIT_PRIVILEGE
    if isinstance(exc, (SpecError, ValueError, TypeError, OSError)):
        return EXIT_BAD_INPUT
    if isinstance(exc, NotFoundError):
        return EXIT_NOT_FOUND
    return EXIT_FAILED


def _log_to_stderr(verbosity: int) -> None:
    """natmap's own log (not other libraries') to stderr, each line marked as natmap's."""
    import logging  # only with -v: the library logs only once logging is imported

    log = logging.getLogger("natmap")
    log.setLevel(logging.INFO if verbosity == 1 else logging.DEBUG)
    if not log.handlers:  # main() may run more than once in a process
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("natmap: %(message)s"))
        log.addHandler(handler)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser(argv).parse_args(argv)
    if args.verbose:
        _log_to_stderr(args.verbose)
    try:
        if args.func is cmd_spec:
            data, lines = cmd_spec(None, args)
        else:
            with NatMap(table=args.table, backend=args.backend, netns=args.netns) as nm:
                data, lines = args.func(nm, args)
    except (NatmapError, ValueError, TypeError, OSError) as exc:
        code = _exit_code(exc)
        if args.json:
            print(json.dumps({"error": str(exc).splitlines()[0], "kind": type(exc).__name__,
                              "detail": str(exc)}), file=sys.stderr)
        else:
            print(f"natmap: {exc}", file=sys.stderr)
        return code
    if args.json:
        print(json.dumps(data, indent=2))
    elif lines:
        print("\n".join(lines))
    return EXIT_OK


def run() -> None:
    """The ``natmap`` command: the console script and ``python -m natmap``."""
    code = main()
    # The process ends now. Its last garbage collections would walk every object
    # importing natmap made, a fifth of a `natmap port`'s time, to free memory
    # the kernel takes back anyway: hand them all to the permanent generation.
    gc.freeze()
    sys.exit(code)

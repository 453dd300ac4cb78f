"""The ``natmap`` command: Docker's port publishing and links, in Docker's words.

Global options (--table, --netns, --netns-path, --backend, --lock-timeout,
--json, -v) go before the command, as with docker, git and kubectl, or after it.

Exit codes: 0 done; 1 the change failed (a conflict, the kernel refused, the
table's lock was held too long; natmap check: drift found); 2 bad input (a
spec, a name, a file, the command line); 3 not found (no such endpoint, port,
link, interface or table, or the table is on the other backend); 4 not
privileged (natmap needs CAP_NET_ADMIN); 130 interrupted (Ctrl-C). Listing
commands (ps, links) find nothing to list on a fresh host, and that is not
an error. Errors go to
stderr in one line (grammar errors add the input with a caret under the
fault); with --json as one JSON object (docs/json.md).
"""

from __future__ import annotations

import errno
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace as Namespace  # what _plain_args gives: argparse's Namespace, without argparse

from . import __version__
from .backends import BACKENDS
from .engine import NatMap
from .errors import (BackendError, CommandLineError, ConfigError, ConflictError, DriftError, NatmapError,
                     NotFoundError, PrivilegeError, SpecError)
from .links import Link
from .model import (GATEWAY_MODES, Binding, Bindings, Bridge, Change, Drift, Endpoint, Gateway, Isolation, Item,
                    RoutedBinding, assert_never, describe, natural_key)
from .spec import LinkSpec, PortSpec, ip_text

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (2 ms of a `natmap` command)
if TYPE_CHECKING:
    import argparse  # at run time only when a parser is built: not for `natmap port` and `ls` (_plain_args)
    from typing import Any, NoReturn

    Output = tuple[Any, list[str]]  # (what --json prints, the lines to print otherwise)
    Argument = tuple[tuple[str, ...], dict[str, Any]]  # (flags, add_argument's options)

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_NOT_FOUND, EXIT_PRIVILEGE = 0, 1, 2, 3, 4
EXIT_INTERRUPTED = 130  # as a shell reports SIGINT

# The version of the --json shapes (docs/json.md): every document carries it.
JSON_VERSION = 1


# --- --json: the shapes docs/json.md describes --------------------------------------------


def _document(**fields: Any) -> dict[str, Any]:
    return {"version": JSON_VERSION, **fields}


def _binding_json(b: Binding) -> dict[str, Any]:
    return {"endpoint": b.endpoint, "proto": b.proto.value, "host_ip": ip_text(b.host_ip),
            "host_port": b.host_port, "container_ip": ip_text(b.container_ip),
            "container_port": b.container_port, **({"routed": True} if isinstance(b, RoutedBinding) else {})}


def _link_json(link: Link) -> dict[str, Any]:
    return {"source": link.source, "target": link.target, "alias": link.alias,
            "source_ips": [str(ip) for ip in link.source_ips],
            "target_ips": [str(ip) for ip in link.target_ips],
            "ports": [{"port": port, "proto": proto.value} for port, proto in link.ports],
            "hosts_line": link.hosts_line, "env": link.env}


def _item_json(item: Item) -> dict[str, Any]:
    match item:
        case Binding():  # a same-port range is one item: count ports from host_port on
            return {"kind": "binding", **_binding_json(item), **({"count": item.count} if item.count > 1 else {})}
        case Link():
            return {"kind": "link", "source": item.source, "target": item.target, "alias": item.alias,
                    "ports": [{"port": port, "proto": proto.value} for port, proto in item.ports]}
        case Isolation():
            return {"kind": "isolation", "bridge": item.bridge}
        case Gateway():
            return {"kind": "gateway", **_gateway_json(item)}
        case Bridge():
            return {"kind": "bridge", "name": item.name, "subnets": [str(net) for net in item.subnets]}
        case _:
            assert_never(item)


def _spec_json(spec: PortSpec) -> dict[str, Any]:
    return {"spec": str(spec), "host_ip": None if spec.host_ip is None else str(spec.host_ip),
            "host_ports": None if spec.host_ports is None else [spec.host_ports.start, spec.host_ports.end],
            "container_ports": [spec.container_ports.start, spec.container_ports.end],
            "proto": spec.proto.value}


def _change_output(change: Change) -> Output:
    lines = [f"- {describe(i)}" for i in change.delete] + [f"+ {describe(i)}" for i in change.add]
    return (_document(delete=[_item_json(i) for i in change.delete], add=[_item_json(i) for i in change.add]),
            lines)


# Error kinds: stable names, whatever class raised (docs/json.md).
_ERROR_KINDS: list[tuple[type[BaseException], str]] = [
    (PrivilegeError, "privilege"), (PermissionError, "privilege"), (SpecError, "bad_input"),
    (NotFoundError, "not_found"), (ConflictError, "conflict"), (BackendError, "backend"),
    (DriftError, "drift"), (CommandLineError, "bad_input"), (ValueError, "bad_input"), (TypeError, "bad_input"),
]


def error_kind(exc: BaseException) -> str:
    """The stable ``kind`` of an error in --json output."""
    return next((kind for cls, kind in _ERROR_KINDS if isinstance(exc, cls)), "failed")


def _error_json(exc: BaseException) -> dict[str, Any]:
    text = str(exc)
    return _document(error={"kind": error_kind(exc), "message": text.splitlines()[0], "detail": text})


# --- the commands ----------------------------------------------------------------------


def cmd_publish(nm: NatMap, args: argparse.Namespace) -> Output:
    if not args.ip and not args.ipv6:
        raise CommandLineError("publish needs the endpoint's address: --ip (IPv4), --ipv6 or both "
                               "(see natmap publish --help)")
    endpoint = Endpoint(args.name, args.ip or None, args.bridge, ipv6=args.ipv6, expose=tuple(args.expose))
    specs = _publish_specs(args)
    made = nm.publish(endpoint, specs, publish_all=args.publish_all, force=args.force)
    return _document(bindings=[_binding_json(b) for b in made]), [b.port_line() for b in made]


def cmd_port(nm: NatMap, args: argparse.Namespace) -> Output:
    bindings = nm.port(args.name, args.port)
    lines = [b.port_line() for b in bindings] if args.port is None else [str(b) for b in bindings]
    return _document(endpoint=args.name, bindings=[_binding_json(b) for b in bindings]), lines


def cmd_ls(nm: NatMap, args: argparse.Namespace) -> Output:
    from .docker_format import ps_ports

    by_endpoint: dict[str, list[Binding]] = {}
    bindings = nm.bindings()
    for b in bindings.held if isinstance(bindings, Bindings) else bindings:  # ranges unexpanded
        by_endpoint.setdefault(b.endpoint, []).append(b)
    exposed: dict[str, tuple[PortSpec, ...]] = {}
    known: dict[str, set[str]] = {}  # the file's addresses of its endpoints: shown for one with no binding
    if args.file:  # the file knows what is exposed without a binding (docker compose -f FILE ps)
        from .config import Config

        for entry in Config.load(args.file).endpoints:
            endpoint = entry.endpoint
            exposed[endpoint.name] = endpoint.expose
            known[endpoint.name] = {str(ip) for ip in (endpoint.ip, endpoint.ipv6) if ip}
            by_endpoint.setdefault(endpoint.name, [])
    names = sorted(by_endpoint)
    if args.quiet:
        return _document(names=names), names
    data, rows = [], [("ENDPOINT", "ADDRESSES", "PORTS")]
    for name in names:
        held = by_endpoint[name]
        addresses = sorted({str(b.container_ip) for b in held} or known.get(name, set()), key=natural_key)
        bound = {(port, b.proto) for b in held if exposed.get(name)
                 for port in range(b.container_port, b.container_port + b.count)}
        unbound = [{"port": port, "proto": spec.proto.value} for spec in exposed.get(name, ())
                   for port in spec.container_ports if (port, spec.proto) not in bound]
        if args.json:  # one a port: a same-port range expanded only here
            data.append({"endpoint": name, "addresses": addresses,
                         "bindings": [_binding_json(one) for b in held for one in b.expand()], "exposed": unbound})
        ports = ps_ports(held, exposed.get(name, ()))
        routed = [b for b in held if isinstance(b, RoutedBinding)]
        if routed:  # listed as docker ps would, but their host port takes no traffic: say which
            ports += f" (routed, host port not mapped: {ps_ports(routed, ())})"
        rows.append((name, ", ".join(addresses), ports))
    return _document(endpoints=data), _columns(rows)


def cmd_unpublish(nm: NatMap, args: argparse.Namespace) -> Output:
    removed = nm.unpublish(args.name)
    return _document(endpoint=args.name, bindings=[_binding_json(b) for b in removed]), \
        [b.port_line() for b in removed]


def cmd_link(nm: NatMap, args: argparse.Namespace) -> Output:
    target = LinkSpec.parse(args.target)
    link = nm.link(args.source, target.name, target.alias, target_env=args.env)
    return _document(link=_link_json(link)), [link.hosts_line.replace("\t", " "), *link.env]


def cmd_unlink(nm: NatMap, args: argparse.Namespace) -> Output:
    link = nm.unlink(args.source, args.target)
    return _document(link=_link_json(link)), [str(link)]


def cmd_links(nm: NatMap, args: argparse.Namespace) -> Output:
    links = nm.links()
    rows = [(l.source, l.target, l.alias, ", ".join(f"{p}/{proto.value}" for p, proto in l.ports))
            for l in links]
    return _document(links=[_link_json(l) for l in links]), _columns([("SOURCE", "TARGET", "ALIAS", "PORTS"), *rows])


def cmd_tables(nm: NatMap, args: argparse.Namespace) -> Output:
    tables = nm.tables()
    data = _document(tables=[{"table": table, "backend": backend} for table, backend in tables])
    if args.quiet:  # what shell completion offers for --table
        return data, list(dict.fromkeys(table for table, _ in tables))
    return data, _columns([("TABLE", "BACKEND"), *tables])


def cmd_remove(nm: NatMap, args: argparse.Namespace) -> Output:
    if (nm.table_name, nm.backend_name) not in nm.tables():
        raise NotFoundError(f"No such table: {nm.table_name} ({nm.backend_name})")
    nm.remove()
    return (_document(table=nm.table_name, backend=nm.backend_name, removed=True),
            [f"removed table {nm.table_name} ({nm.backend_name})"])


def _on_its_backend(nm: NatMap) -> None:
    """Raise NotFoundError, naming the backend to use, if the table is not on
    ``nm``'s backend (no store, no kernel marker there) but on the other one:
    else the command would show it empty, and call its endpoints unknown."""
    if os.path.exists(nm.state_path):  # stored here: this backend's (the common case, no kernel asked)
        return
    where = sorted({backend for table, backend in nm.tables() if table == nm.table_name})
    if where and nm.backend_name not in where:
        raise NotFoundError(f"No such table on the {nm.backend_name} backend: {nm.table_name} is on "
                            f"{' and '.join(where)} (pass --backend {where[0]})")


def cmd_isolate(nm: NatMap, args: argparse.Namespace) -> Output:
    (nm.unisolate if args.open else nm.isolate)(args.bridge)
    return _document(bridge=args.bridge, isolated=not args.open), []


def cmd_gateway(nm: NatMap, args: argparse.Namespace) -> Output:
    """Set the bridge's gateway modes if --mode, --mode-ipv4, --mode-ipv6 or
    --trust is given (they make the whole setting: a family no option names
    is nat); else print its setting, or (no bridge) every bridge's that is not
    the default."""
    if args.mode is None and args.mode_ipv4 is None and args.mode_ipv6 is None and args.trust is None:
        # no setting given: change nothing
        gateways = nm.gateways()
        if args.bridge is None:
            return _document(gateways=[_gateway_json(g) for g in gateways]), [describe(g) for g in gateways]
        gateway = next((g for g in gateways if g.bridge == args.bridge), None) or Gateway(args.bridge)
    elif args.bridge is None:
        raise CommandLineError("--mode, --mode-ipv4, --mode-ipv6 and --trust set one bridge's gateway modes: "
                               "name the bridge")
    else:
        gateway = nm.set_gateway(args.bridge, args.mode, args.trust or (), mode_ipv4=args.mode_ipv4,
                                 mode_ipv6=args.mode_ipv6, force=args.force)
    return _document(**_gateway_json(gateway)), [describe(gateway)]


def _gateway_json(gateway: Gateway) -> dict[str, Any]:
    """``mode``: both families' one mode, null when they differ (then see ``mode_ipv4`` / ``mode_ipv6``)."""
    return {"bridge": gateway.bridge, "mode": gateway.mode, "mode_ipv4": gateway.mode_ipv4,
            "mode_ipv6": gateway.mode_ipv6, "trusted_interfaces": list(gateway.trusted)}


def cmd_apply(nm: NatMap, args: argparse.Namespace) -> Output:
    return _change_output(nm.apply(args.file))  # a path: an unchanged file is not parsed again


def cmd_plan(nm: NatMap, args: argparse.Namespace) -> Output:
    from .config import Config

    return _change_output(nm.plan(Config.load(args.file)))


def cmd_check(nm: NatMap, args: argparse.Namespace) -> Output:
    drift = nm.check()
    data = _drift_json(drift)
    if drift:
        raise DriftError(str(drift), data)
    return data, [str(drift)]


def _drift_json(drift: Drift) -> dict[str, Any]:
    return _document(drift=bool(drift), remembered=drift.remembered, table_missing=drift.table_missing,
                     missing=[_item_json(i) for i in drift.missing],
                     unexpected=[_item_json(i) for i in drift.unexpected], structure=list(drift.structure),
                     notes=list(drift.notes), shadowing=list(drift.shadowing), conflicts=list(drift.conflicts),
                     foreign=list(drift.foreign),
                     host=list(drift.host), interrupted=drift.interrupted)


def cmd_repair(nm: NatMap, args: argparse.Namespace) -> Output:
    drift = nm.repair()
    return (_document(repaired=bool(drift), drift=_drift_json(drift)),
            [f"repaired: {line}" for line in str(drift).splitlines() if drift] or ["nothing to repair"])


def cmd_restore(nm: NatMap, args: argparse.Namespace) -> Output:
    tables, lines = [], []
    for table, backend in nm.stored_tables():
        with NatMap(table=table, backend=backend, netns=args.netns) as each:
            drift = each.repair()
        tables.append({"table": table, "backend": backend, "restored": bool(drift), "drift": str(drift)})
        lines.append(f"{table} ({backend}): {'restored' if drift else 'intact'}")
    return _document(tables=tables), lines or ["no natmap table is stored for this namespace"]


def cmd_adopt(nm: NatMap, args: argparse.Namespace) -> Output:
    items = nm.adopt(force=args.force)
    return (_document(adopted=[_item_json(i) for i in items], store=nm.state_path),
            [f"adopted {len(items)} items from the kernel into {nm.state_path}"])


def cmd_watch(nm: NatMap, args: argparse.Namespace) -> Output:
    import signal

    if not args.verbose:
        _log_to_stderr(1)  # each repair is a line on stderr
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: nm.stop_watching())
    nm.watch(ready=lambda: print(f"natmap: watching table {nm.table_name}", file=sys.stderr, flush=True))
    return _document(stopped=True), []


def _publish_specs(args: argparse.Namespace) -> list[PortSpec]:
    """The ``-p`` values, then the ``--publish-file``'s specs (one a line; blank
    lines and ``#`` comments skipped), parsed; a bad one is named by where it
    is: ``-p value 2 of 3`` or ``FILE line 5``."""
    count = len(args.publish)
    places = [f"-p value {i + 1} of {count}" if count > 1 else "-p value" if args.publish_file else ""
              for i in range(count)]
    texts = list(args.publish)
    if args.publish_file is not None:
        path = args.publish_file
        try:
            with open(path, encoding="utf-8") as specs:
                lines = [line.split("#", 1)[0].strip() for line in specs]
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read it: {exc.strerror or exc}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
        numbered = [(number, line) for number, line in enumerate(lines, 1) if line]
        texts += [line for _, line in numbered]
        places += [f"{path} line {number}" for number, _ in numbered]
    return PortSpec.parse_many(texts, places=places)


def cmd_spec(args: argparse.Namespace) -> Output:
    publish = _publish_specs(args)
    expose = [PortSpec.parse_exposed(t) for t in args.expose]
    links = [LinkSpec.parse(t) for t in args.link]
    lines = [f"-p {s}" for s in publish] + [f"--expose {s}" for s in expose] + [f"--link {s}" for s in links]
    return _document(publish=[_spec_json(s) for s in publish], expose=[_spec_json(s) for s in expose],
                     link=[{"link": str(l), "name": l.name, "alias": l.alias} for l in links]), lines


def cmd_version(args: argparse.Namespace) -> Output:
    return _document(natmap=__version__), [f"natmap {__version__}"]


def cmd_help(args: argparse.Namespace) -> Output:
    if args.topic is None:
        text = _build(COMMANDS)[0].format_help()
    else:
        wanted = [c for c in COMMANDS if args.topic in (c.name, *c.aliases)]
        if not wanted:
            raise SpecError("no such command (natmap help lists them)", args.topic)
        text = _build(wanted)[1][args.topic].format_help()
    return _document(help=text), [text.rstrip("\n")]


def cmd_completion(args: argparse.Namespace) -> Output:
    from .completion import script

    text = script(_build(COMMANDS)[0], args.shell)
    return _document(shell=args.shell, script=text), [text.rstrip("\n")]


def _columns(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["   ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


# --- the parser ----------------------------------------------------------------------


def _arg(*flags: str, **options: Any) -> tuple[tuple[str, ...], dict[str, Any]]:
    return flags, options


# Accepted before the command (docker --host ..., git -C ...) and after it.
GLOBAL_OPTIONS = [
    _arg("--table", default="natmap", metavar="NAME", help="natmap's table (default: natmap)"),
    _arg("--backend", default="nft", choices=BACKENDS, help="packet filter backend: nft (default), iptables, or auto"),
    _arg("--netns", metavar="NAME", help="work inside this network namespace (a name, as ip netns add NAME makes it)"),
    _arg("--netns-path", metavar="PATH", help="work inside the network namespace this file is "
         "(/proc/PID/ns/net, a bind mount); not with --netns"),
    _arg("--lock-timeout", type=float, default=30.0, metavar="SECONDS",
         help="give up waiting for another process's lock of the table after this long (default: 30)"),
    _arg("--json", action="store_true", help="machine-readable output (docs/json.md)"),
    _arg("-v", "--verbose", action="count", default=0,
         help="log each change, and whom a change waits for, to stderr (-vv: and each kernel batch)"),
]
_VALUED = {flag for flags, options in GLOBAL_OPTIONS if options.get("metavar") or options.get("choices")
           for flag in flags}
_SPECS = _arg("-p", "--publish", action="append", default=[], metavar="SPEC",
              help="[IP:][HOST_PORT:]CONTAINER_PORT[/PROTO], or the long form target=PORT,published=PORT[-PORT],"
                   "protocol=PROTO,host_ip=IP; as docker run -p")
_SPEC_FILE = _arg("--publish-file", metavar="FILE",
                  help="more -p specs, one a line ('#' starts a comment): for thousands of them")
_EXPOSE = _arg("--expose", action="append", default=[], metavar="PORT[/PROTO]",
               help="a port (or range) the endpoint serves: -P publishes it, links open it")
_NAME = _arg("name", help="the endpoint (container) name")


@dataclass(frozen=True)
class Command:
    """One ``natmap`` command. Adding a command is adding one of these to COMMANDS."""

    name: str
    func: Callable[..., Output]
    help: str
    example: str
    arguments: list[Argument] = field(default_factory=list)
    aliases: tuple[str, ...] = ()
    kernel: bool = True  # runs with a NatMap (func(nm, args)); else func(args)


COMMANDS: list[Command] = [
    Command("publish", cmd_publish, "publish an endpoint's ports (docker run -p/-P)",
            "natmap publish web01 --ip 172.30.0.2 --bridge natmap0 -p 127.0.0.1:5001:5000 -p 8080:5000 "
            "--expose 5000 -P",
            [_NAME, _arg("--ip", help="the endpoint's IPv4 address (an IPv6-only endpoint gives --ipv6 alone)"),
             _arg("--ipv6", help="the endpoint's IPv6 address, if it has one (--ip, --ipv6 or both)"),
             _arg("--bridge", required=True, help="the bridge the endpoint is on"), _SPECS, _SPEC_FILE, _EXPOSE,
             _arg("-P", "--publish-all", action="store_true", help="publish every exposed port"),
             _arg("--force", action="store_true",
                  help="take host ports a host socket listens on, knowingly (else a conflict, as Docker's "
                       "'address already in use')")]),
    Command("port", cmd_port, "list an endpoint's bindings (docker port's exact lines, so a routed binding, "
            "whose host port is not mapped, is not marked: ls and --json mark it)", "natmap port web01 5000/tcp",
            [_NAME, _arg("port", nargs="?", metavar="PORT[/PROTO]",
                         help="only this container port (no /PROTO: tcp); prints the host side only")]),
    Command("ls", cmd_ls, "list endpoints with docker ps's PORTS column (routed bindings, whose host port is "
            "not mapped, named again after it)", "natmap ls -f examples/lab.toml",
            [_arg("-q", "--quiet", action="store_true", help="only the endpoint names"),
             _arg("-f", "--file", metavar="FILE",
                  help="a declarative file: also list its endpoints' exposed ports that have no binding")],
            aliases=("ps",)),
    Command("unpublish", cmd_unpublish, "remove every binding and link of an endpoint, and print the "
            "bindings removed (as natmap port does)",
            "natmap unpublish web01", [_NAME]),
    Command("link", cmd_link, "link SOURCE to TARGET (docker run --link TARGET:ALIAS); both must be published: "
            "their addresses and published ports are read from the table", "natmap link web02 db01:web02Todb01",
            [_arg("source", help="the endpoint that may reach the target"),
             _arg("target", metavar="TARGET[:ALIAS]", help="the endpoint it may reach, and its alias there"),
             _arg("--env", action="append", default=[], metavar="NAME=VALUE",
                  help="the target's environment, for the link's _ENV_ variables")]),
    Command("unlink", cmd_unlink, "remove the link from SOURCE to TARGET", "natmap unlink web02 db01",
            [_arg("source", help="the linked endpoint"), _arg("target", help="the endpoint it is linked to")]),
    Command("links", cmd_links, "list the links", "natmap links"),
    Command("tables", cmd_tables, "list natmap's tables in the namespace: those the kernel holds with "
            "natmap's marker (either backend) and those natmap's store keeps", "natmap tables",
            [_arg("-q", "--quiet", action="store_true", help="only the table names")]),
    Command("remove", cmd_remove, "delete the table and every binding and link in it (one transaction), "
            "and natmap's store of it", "natmap --table lab remove"),
    Command("isolate", cmd_isolate, "close inter-container traffic on a bridge (--icc=false)",
            "natmap isolate natmap0",
            [_arg("bridge", help="the bridge"), _arg("--open", action="store_true", help="open it again instead")]),
    Command("gateway", cmd_gateway, "set how routed traffic reaches a bridge's containers (Docker 28's "
            "gateway modes, per IP family): nat drops it unless published or from a trusted interface; "
            "nat-unprotected lets it pass; routed: no NAT, only the published container ports and ICMP (the "
            "host port is not mapped but stays the binding's key: two routed endpoints still conflict on it). Without a --mode option or --trust, print the bridge's setting (no bridge: "
            "every bridge not in the default nat mode)",
            "natmap gateway natmap0 --mode-ipv4 nat --mode-ipv6 routed --trust eth1",
            [_arg("bridge", nargs="?", help="the bridge"),
             _arg("--mode", choices=GATEWAY_MODES,
                  help="both IP families' gateway mode (a family no option names: nat)"),
             _arg("--mode-ipv4", choices=GATEWAY_MODES,
                  help="the IPv4 gateway mode, over --mode (Docker's gateway_mode_ipv4)"),
             _arg("--mode-ipv6", choices=GATEWAY_MODES,
                  help="the IPv6 gateway mode, over --mode (Docker's gateway_mode_ipv6)"),
             _arg("--trust", action="append", metavar="INTERFACE",
                  help="a host interface whose routed traffic may reach the containers (repeatable; "
                       "those not given are no longer trusted)"),
             _arg("--force", action="store_true",
                  help="going back to nat: take host ports a host socket listens on, knowingly (as publish "
                       "--force; else a conflict)")]),
    Command("apply", cmd_apply, "make the table match a TOML file, in one transaction",
            "natmap apply examples/lab.toml", [_arg("file", help="the declarative file (README: Declarative files)")]),
    Command("plan", cmd_plan, "show what apply would change; change nothing", "natmap plan examples/lab.toml",
            [_arg("file", help="the declarative file")]),
    Command("check", cmd_check, "compare the kernel and host with natmap's store: items, chains, rules, "
            "host settings, and no binding shadows a host socket (exit 1 and the differences if they differ)",
            "natmap check"),
    Command("repair", cmd_repair, "make the kernel and host match natmap's store (one transaction); "
            "print what was repaired", "natmap repair"),
    Command("restore", cmd_restore, "repair every natmap table stored for this namespace (at boot, after "
            "nft flush ruleset)", "natmap restore"),
    Command("adopt", cmd_adopt, "rebuild natmap's store from the kernel (a lost or damaged store)", "natmap adopt",
            [_arg("--force", action="store_true",
                  help="take the kernel's state even over a whole store that says otherwise, and natmap's "
                       "chains whose marker was deleted by hand if every rule in them is natmap's")]),
    Command("watch", cmd_watch, "repair natmap's table as soon as nftables change (until SIGTERM/SIGINT)",
            "natmap watch"),
    Command("spec", cmd_spec, "check specs and print them in canonical form",
            "natmap spec -p 127.0.0.1:5001:5000 -p '[::1]::80/udp' --expose 5000 --link db01:db",
            [_SPECS, _SPEC_FILE, _EXPOSE, _arg("--link", action="append", default=[], metavar="NAME[:ALIAS]",
                                   help="a --link value")], kernel=False),
    Command("version", cmd_version, "print natmap's version", "natmap version", kernel=False),
    Command("help", cmd_help, "show the help of natmap or of one command", "natmap help ps",
            [_arg("topic", nargs="?", metavar="COMMAND", help="the command")], kernel=False),
    Command("completion", cmd_completion, "print a shell completion script (README: Shell completion)",
            "natmap completion bash > /etc/bash_completion.d/natmap",
            [_arg("shell", choices=("bash", "zsh"), help="the shell")], kernel=False),
]


def _command_of(argv: Sequence[str]) -> str | None:
    """The command ``argv`` names: its first word that is neither a global
    option nor a global option's value."""
    takes_value = False
    for arg in argv:
        if takes_value:
            takes_value = False
        elif arg in _VALUED:
            takes_value = True
        elif not arg.startswith("-"):
            return arg
    return None


_PLAIN = ("port", "ls")  # the reads _plain_args takes: a process each, where start-up is the cost


def _plain_args(argv: Sequence[str]) -> Namespace | None:
    """``argv`` read without argparse when it is a plain ``natmap port`` or
    ``natmap ls``: the attributes argparse would give (the test holds them
    equal), or None for anything else (another command, help, -v, an
    abbreviated or unknown option, a value that starts with ``-``, ``--``, an
    error), which argparse reads. Importing argparse and building the
    command's parser is a tenth of a ``natmap port``.

    Read as argparse reads it: global options before or after the command,
    the command's own after it; ``--name=value`` or ``--name value``; a
    repeated option's last value; a value converted by its ``type`` and
    checked against its ``choices``; the positionals in one run."""
    name = _command_of(argv)
    command = next((c for c in COMMANDS if name in (c.name, *c.aliases)), None)
    if command is None or command.name not in _PLAIN:
        return None
    options: dict[str, tuple[bool, str, dict[str, Any]]] = {}  # flag -> (the command's?, dest, its options)
    values: dict[str, Any] = {"command": command}
    positionals: list[tuple[str, dict[str, Any]]] = []
    for own, arguments in ((False, GLOBAL_OPTIONS), (True, command.arguments)):
        for flags, spec in arguments:
            if not flags[0].startswith("-"):
                positionals.append((flags[0], spec))
                continue
            long = [f for f in flags if f.startswith("--")]  # argparse's dest: the first long flag's
            dest = spec.get("dest") or (long or flags)[0].lstrip("-").replace("-", "_")
            for flag in flags:
                options[flag] = (own, dest, spec)
            values[dest] = spec.get("default", False if spec.get("action") == "store_true" else None)
    given: list[str] = []
    last = -1  # where the last of them is in argv
    seen_command = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith("-"):
            if not seen_command:
                seen_command = True  # _command_of's word: the command, or one of its aliases
            elif given and last != i - 2:
                return None  # argparse takes the positionals of a run at once: an option between ends them
            else:
                given.append(arg)
                last = i - 1
            continue
        flag, eq, text = arg.partition("=")
        if flag not in options or (eq and not flag.startswith("--")):
            return None  # -h, -v, --help, an abbreviation, -qVALUE, ...: argparse's
        own, dest, spec = options[flag]
        if own and not seen_command:
            return None  # a command's option before the command: argparse's error
        if spec.get("action") not in (None, "store_true"):
            return None  # -v's count
        if spec.get("action") == "store_true":
            if eq:
                return None
            values[dest] = True
            continue
        if not eq:
            if i == len(argv) or argv[i].startswith("-"):
                return None
            text, i = argv[i], i + 1
        try:
            value = spec.get("type", str)(text)
        except ValueError:
            return None
        if "choices" in spec and value not in spec["choices"]:
            return None
        values[dest] = value
    required = [p for p in positionals if p[1].get("nargs") != "?"]
    if not len(required) <= len(given) <= len(positionals):
        return None
    for (dest, spec), value in zip(positionals, [*given, *[None] * (len(positionals) - len(given))]):
        values[dest] = value
    return Namespace(**values)


def _parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    """The parser for ``argv``: when it names a command, only that command's
    parser is built (building them all is a tenth of ``natmap port``'s time)."""
    name = _command_of(argv)
    wanted = [c for c in COMMANDS if name in (c.name, *c.aliases)]
    if name == "help":  # natmap help CMD: CMD's parser is built by cmd_help
        wanted = [c for c in COMMANDS if c.name == "help"]
    parser = _build(wanted or COMMANDS)[0]
    if name is None:  # argparse would say the command is missing, not name the option it does not know
        _, unknown = parser.parse_known_args([*argv, "version"])
        if unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return parser


def _build(commands: list[Command]) -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    import argparse

    _Parser, _Formatter = _parser_classes()
    parser = _Parser(
        prog="natmap", formatter_class=_Formatter,
        description="Docker-style port publishing and links on nftables, without Docker.",
        epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("-V", "--version", action="version", version=f"natmap {__version__}")
    for flags, options in GLOBAL_OPTIONS:
        parser.add_argument(*flags, **options)
    # prog given: what argparse would derive (the parser has no positionals) without
    # formatting a usage text for it, a tenth of a `natmap port`'s own work.
    verbs = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", prog="natmap")
    subs: dict[str, argparse.ArgumentParser] = {}
    for command in commands:
        sub = verbs.add_parser(command.name, help=command.help, description=command.help,
                               aliases=list(command.aliases), epilog=f"example:\n  {command.example}",
                               formatter_class=_Formatter)
        for flags, options in command.arguments:
            sub.add_argument(*flags, **options)
        group = sub.add_argument_group("global options (also accepted before the command)")
        for flags, options in GLOBAL_OPTIONS:
            # SUPPRESS: a global option given before the command is not reset by the subparser's default.
            group.add_argument(*flags, **{**options, "default": argparse.SUPPRESS})
        sub.set_defaults(command=command)
        for alias in command.aliases:
            subs[alias] = sub
        subs[command.name] = sub
    return parser, subs


def _parser_classes() -> tuple[type[argparse.ArgumentParser], type[argparse.HelpFormatter]]:
    """natmap's parser and help formatter, made on first use: importing
    argparse is for the commands :func:`_plain_args` does not read."""
    import argparse

    class _Parser(argparse.ArgumentParser):
        """argparse, its errors in natmap's form: one line (``--json``: one JSON object), exit 2."""

        def error(self, message: str, prog: str | None = None) -> NoReturn:
            _report(CommandLineError(f"{message} (see {prog or self.prog} --help)"), _JSON_ARGV[0])
            sys.exit(EXIT_BAD_INPUT)

        def parse_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                       namespace: argparse.Namespace | None = None) -> argparse.Namespace:
            # argparse reports a subcommand's unknown option from the top parser;
            # the help that lists the command's options is the subcommand's own
            parsed, unknown = self.parse_known_args(args, namespace)
            if unknown:
                command = getattr(parsed, "command", None)
                self.error(f"unrecognized arguments: {' '.join(unknown)}",
                           f"{self.prog} {command.name}" if command is not None else None)
            return parsed

    class _Formatter(argparse.RawDescriptionHelpFormatter):
        """Help as written, as wide as the terminal. The width comes from os:
        argparse would ask shutil, whose import (it loads the compression
        modules) costs more than the rest of a ``natmap port``'s parsing."""

        def __init__(self, prog: str) -> None:
            super().__init__(prog, width=_terminal_width() - 2)

    return _Parser, _Formatter


_JSON_ARGV = [False]  # whether the argv being parsed asks for --json (main sets it)


def _terminal_width() -> int:
    try:
        return int(os.environ.get("COLUMNS", "")) or os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
    except (ValueError, OSError, AttributeError):
        return 80


def _exit_code(exc: BaseException) -> int:
    if isinstance(exc, PermissionError):
        return EXIT_PRIVILEGE
    if isinstance(exc, NotFoundError):  # before OSError: FileNotFoundError is bad input, LookupError is not
        return EXIT_NOT_FOUND
    if isinstance(exc, (SpecError, CommandLineError, ValueError, TypeError)):
        return EXIT_BAD_INPUT
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


def _report(exc: BaseException, as_json: bool) -> None:
    """The error on stderr: ``natmap: MESSAGE`` on one line (a grammar error
    adds the input and a caret under the fault; drift lists what differs), or
    one JSON object (docs/json.md)."""
    text = str(exc)
    if not isinstance(exc, (SpecError, DriftError)):  # others' messages (nft's) may span lines
        text = " ".join(line.strip() for line in text.splitlines() if line.strip())
    if as_json:
        print(json.dumps(_error_json(exc)), file=sys.stderr)
        if isinstance(exc, DriftError):
            print(json.dumps(exc.data, indent=2))
    else:
        print(f"natmap: {text or type(exc).__name__}", file=sys.stderr)


def _pull_specs(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """argv without its ``-p``/``--publish`` options, and their values in order.
    argparse takes time quadratic in the number of options (20,000 -p: a
    minute); this is linear, and argparse sees one ``-p`` at most."""
    rest: list[str] = []
    specs: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest += argv[i:]
            break
        if arg in ("-p", "--publish") and i + 1 < len(argv):
            specs.append(argv[i + 1])
            i += 2
            continue
        if arg.startswith("--publish="):
            specs.append(arg[len("--publish="):])
        elif arg.startswith("-p") and not arg.startswith("--") and len(arg) > 2:
            specs.append(arg[2:])
        else:
            rest.append(arg)
        i += 1
    return rest, specs


def wants_json(argv: Sequence[str]) -> bool:
    """Whether ``argv`` asks for ``--json`` (before any ``--``): known before argparse is."""
    return "--json" in argv[:argv.index("--")] if "--" in argv else "--json" in argv


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _JSON_ARGV[0] = wants_json(argv)
    rest, specs = _pull_specs(argv)
    if specs:  # argparse still says whether this command takes -p at all
        at = rest.index("--") if "--" in rest else len(rest)
        rest[at:at] = ["-p", specs[0]]
    args = _plain_args(rest) or _parser(rest).parse_args(rest)
    if specs:
        args.publish = specs
    if args.verbose:
        _log_to_stderr(args.verbose)
    command: Command = args.command
    try:
        if not command.kernel:
            data, lines = command.func(args)
        else:
            with NatMap(table=args.table, backend=args.backend, netns=args.netns, netns_path=args.netns_path,
                        lock_timeout=args.lock_timeout) as nm:
                if command.name not in ("tables", "restore"):  # those list every table, on either backend
                    _on_its_backend(nm)
                data, lines = command.func(nm, args)
    except (NatmapError, ValueError, TypeError) as exc:
        _report(exc, args.json)
        return _exit_code(exc)
    except (OSError, RecursionError, MemoryError) as exc:  # a fault natmap did not foresee: still one line
        _report(exc, args.json)
        return EXIT_FAILED
    except KeyboardInterrupt:  # Ctrl-C, say while waiting for a lock
        _report(NatmapError("interrupted"), args.json)
        return EXIT_INTERRUPTED
    try:
        if sys.stdout is None:  # started with stdout closed (`natmap ps >&-`): the answer has nowhere to go
            raise OSError(errno.EBADF, "standard output is closed")
        if args.json:
            print(json.dumps(data, indent=2))
        elif lines:
            print("\n".join(lines))
        sys.stdout.flush()
    except BrokenPipeError:  # `natmap ps | head -1`: the reader had enough, which is no error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to flush at exit
    except OSError as exc:  # the answer could not be written (a full disk, a closed descriptor): one line
        if sys.stdout is not None:  # the unwritten rest goes nowhere, not to a traceback at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        _report(NatmapError(f"writing the answer failed: {exc.strerror or exc}"), args.json)
        return EXIT_FAILED
    return EXIT_OK


def run() -> None:
    """The ``natmap`` command: the console script and ``python -m natmap``."""
    import gc

    from .store import exit_without_close, leave_open_until_exit

    # What importing natmap made lives as long as the process: frozen, the
    # command's first collection does not walk it all as young (as natmap-cni).
    gc.freeze()
    leave_open_until_exit()
    code = main()
    # The process ends now, without the store's close (its checkpoint's fsyncs)
    # and without the last garbage collections, which would walk every object
    # importing natmap made, a fifth of a `natmap port`'s time, to free memory
    # the kernel takes back anyway.
    exit_without_close(code)

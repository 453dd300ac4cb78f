"""natmap as a CNI plugin: the ``portMappings`` capability, published through natmap.

Container runtimes that speak CNI (podman's CNI backend, containerd and
nerdctl, CRI-O and so Kubernetes ``hostPort``, Nomad, ``cnitool``) call the
plugin named in a conflist's ``"type"`` as an executable: the command in
``CNI_COMMAND``, the attachment in ``CNI_CONTAINERID``/``CNI_IFNAME``/
``CNI_NETNS``, the network configuration as JSON on stdin; the answer is JSON
on stdout, an error is CNI error JSON on stdout and a non-zero exit
(containernetworking/cni SPEC.md, versions 0.3.0 to 1.1.0; the
``runtimeConfig.portMappings`` shape is in its CONVENTIONS.md).

It is a chained plugin, like the stock ``portmap`` it replaces: the plugin
before it (``bridge`` with ``host-local``) made the interfaces and addresses,
and ``prevResult`` says which. Each ADD is one natmap transaction: the
attachment's old bindings out, its mappings in, checked against every other
binding in the namespace, so a port another container holds is an error
naming that container, not a silent takeover ("last write wins" in portmap).

The attachment's natmap endpoint is named ``cni-<net>-<id>-<ifname>-<hash>``:
``<net>`` a short hash of the network's name (so GC of one network cannot
touch another's bindings in a shared table), ``<id>`` the first 12 characters
of ``CNI_CONTAINERID`` (what ``podman ps`` shows), ``<hash>`` a hash of the
whole container ID and interface name (so long IDs that share a prefix stay
apart). See :func:`endpoint_name`.

A plugin process makes one natmap transaction and ends, so it uses natmap
through its host seam (:class:`CniHost`), which takes what the runtime
already said from ``prevResult`` and skips what only a long-lived NatMap
needs: pyroute2, which natmap asks the kernel through, costs 130-170 ms to
import, more than all the rest of an ADD, so the guest checks' questions go
through :mod:`natmap.nlquery` instead.
``main`` is the ``natmap-cni`` console script (``natmap_cni.console``, which
answers VERSION before natmap is imported at all).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from natmap import (Binding, Bridge, ConflictError, Endpoint, LockTimeoutError, NatMap, NatmapError, NotFoundError,
                    Protocol, SpecError, Transaction, __version__)
from natmap.backends.nft import validate_table
from natmap.host import Session
from natmap_cni import SUPPORTED_VERSIONS, version_answer  # the executable's entry, which answers VERSION

try:  # the C module of hashlib's SHA-256: importing hashlib loads OpenSSL, a tenth of a plugin process
    from _sha256 import sha256 as _sha256  # type: ignore[import-not-found]
except ImportError:  # a Python without it (3.12 renamed it): hashlib's, the same digest
    from hashlib import sha256 as _sha256

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (every plugin process would)
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import IO, Any

    from natmap import Link, RoutedBinding
    from natmap.host import DirectCut, Isolated

__all__ = ["CniError", "NetConf", "Plugin", "PortMapping", "SUPPORTED_VERSIONS", "endpoint_name", "main",
           "network_prefix", "run"]

_CHECK_SINCE = "0.4.0"       # CHECK came with spec 0.4.0
_GC_SINCE = "1.1.0"          # GC and STATUS came with 1.1.0

# Well-known error codes (SPEC.md "Well-known Error Codes"); 100+ are this plugin's own.
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
UNDECODABLE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
PLUGIN_NOT_AVAILABLE = 50
PORT_CONFLICT = 100          # a host port another endpoint holds (natmap.ConflictError)
CHECK_FAILED = 101           # CHECK: the kernel's bindings differ from what ADD published
NATMAP_FAILED = 102          # any other natmap error (the kernel refused, no privilege, ...)

# The keys of a network configuration this plugin reads; any other is refused
# (SPEC.md lets plugins refuse unknown fields). ``args`` is the runtime's, to ignore.
_KEYS = frozenset({"cniVersion", "cniVersions", "name", "type", "args", "capabilities", "runtimeConfig",
                   "prevResult", "table", "backend", "bridge", "snat", "masqAll", "conditionsV4", "conditionsV6",
                   "lockDir", "stateDir",
                   # GC's list of live attachments; libcni sends it under both names (cni#1101)
                   "cni.dev/valid-attachments", "cni.dev/attachments"})
_BACKENDS = ("nft", "iptables", "auto")
_PROTOCOLS = ("tcp", "udp", "sctp")
# CNI_CONTAINERID (SPEC.md): alphanumerics, then also underscore, dot, hyphen.
_CONTAINER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*\Z")


class CniError(Exception):
    """A failure as CNI reports it: ``code`` (SPEC.md's well-known codes, or
    this plugin's 100+), ``msg`` one line, ``details`` more if there is."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details

    def json(self, cni_version: str) -> dict[str, Any]:
        out: dict[str, Any] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out


# --- the configuration -----------------------------------------------------------


@dataclass(frozen=True)
class PortMapping:
    """One ``runtimeConfig.portMappings`` entry (CONVENTIONS.md):
    ``{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"}``."""

    host_port: int
    container_port: int
    protocol: str = "tcp"
    host_ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None

    @classmethod
    def from_json(cls, entry: object) -> PortMapping:
        """Read one entry; raise :class:`CniError` (code 7) naming what is wrong."""
        if not isinstance(entry, dict):
            raise CniError(INVALID_CONFIG, f"a portMappings entry must be an object, not {entry!r}")
        unknown = set(entry) - {"hostPort", "containerPort", "protocol", "hostIP"}
        if unknown:
            raise CniError(INVALID_CONFIG, f"unknown key {sorted(unknown)[0]!r} in portMappings entry {entry}")
        ports: list[int] = []
        for key in ("hostPort", "containerPort"):
            port = entry.get(key)
            # portmap refuses 0 as well: a runtime names the host port; natmap
            # could assign one, but the result has no place to tell it.
            if type(port) is not int or not 0 < port < 65536:
                raise CniError(INVALID_CONFIG, f"invalid {key} {port!r} (must be 1-65535) in {entry}")
            ports.append(port)
        protocol = entry.get("protocol") or "tcp"
        if not isinstance(protocol, str) or protocol.lower() not in _PROTOCOLS:
            raise CniError(INVALID_CONFIG, f"invalid protocol {protocol!r} (tcp, udp or sctp) in {entry}")
        text = entry.get("hostIP")
        host_ip = None
        if text not in (None, ""):  # runtimes send "" for every address, as portmap reads it
            try:
                if not isinstance(text, str) or "%" in text:  # no zone: a host IP is the host's own
                    raise ValueError(text)
                host_ip = ipaddress.ip_address(text)
            except ValueError:
                raise CniError(INVALID_CONFIG, f"invalid hostIP {text!r} in {entry} (an IPv4 or "
                               "IPv6 address, such as \"127.0.0.1\")") from None
            if isinstance(host_ip, ipaddress.IPv6Address) and host_ip.ipv4_mapped:
                host_ip = host_ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1, as natmap reads it
        return cls(ports[0], ports[1], protocol.lower(), host_ip)

    def overlaps(self, other: PortMapping) -> bool:
        """Whether both take the same host port on some address (and protocol)."""
        if (self.protocol, self.host_port) != (other.protocol, other.host_port):
            return False
        if self.host_ip is None or other.host_ip is None:
            return True
        return self.host_ip.version == other.host_ip.version and (
            self.host_ip == other.host_ip or self.host_ip.is_unspecified or other.host_ip.is_unspecified)

    def spec(self, through: PortMapping | None = None) -> str:
        """The mapping as a natmap ``-p`` spec: ``[::1]:8080:80/tcp``; with
        ``through``, the range from this mapping to that one: ``8080-8089:80-89/tcp``."""
        ip = "" if self.host_ip is None else (
            f"[{self.host_ip}]:" if self.host_ip.version == 6 else f"{self.host_ip}:")
        host, container = str(self.host_port), str(self.container_port)
        if through is not None and through != self:
            host, container = f"{host}-{through.host_port}", f"{container}-{through.container_port}"
        return f"{ip}{host}:{container}/{self.protocol}"


@dataclass(frozen=True)
class NetConf:
    """The plugin's network configuration (stdin), read and checked.

    ``table`` and ``backend`` choose where natmap publishes (defaults ``natmap``
    and ``nft``); ``bridge`` names the host's bridge when the first host-side
    interface in ``prevResult`` is not it. ``lockDir`` and ``stateDir`` (absolute
    paths) are natmap's ``lock_dir`` and ``state_dir``, for every command of the
    network whatever environment the runtime passes (podman's cleanup process
    passes none of its own); unset, natmap's defaults (docs/cni.md). portmap's
    ``snat`` (default true) and ``masqAll`` (default false) are accepted at
    the values natmap's behaviour matches, and ``conditionsV4``/``conditionsV6``
    only empty: natmap has no free-form match; a mapping's ``hostIP`` limits
    the addresses.
    """

    cni_version: str
    network: str
    table: str = "natmap"
    backend: str = "nft"
    bridge: str | None = None
    mappings: tuple[PortMapping, ...] = ()
    prev_result: dict[str, Any] | None = None
    valid_attachments: tuple[tuple[str, str], ...] | None = None
    lock_dir: str | None = None
    state_dir: str | None = None

    @classmethod
    def parse(cls, data: bytes | str | object, *, deleting: bool = False) -> NetConf:
        """Read stdin's JSON (or what :func:`decode` made of it); raise
        :class:`CniError` with code 6 (not JSON), 1 (an unsupported
        version), 2 (an unknown or unsupported key) or 7. ``deleting``:
        neither the mappings nor ``prevResult`` are needed and neither is
        read, so that DEL cleans up after an ADD that failed on them."""
        conf = decode(data) if isinstance(data, (bytes, str)) else data
        if not isinstance(conf, dict):
            raise CniError(UNDECODABLE, "the network configuration must be a JSON object")
        version = conf.get("cniVersion")
        if version is None:
            raise CniError(INCOMPATIBLE_VERSION, "cniVersion is missing from the network configuration",
                           f"natmap-cni supports {', '.join(SUPPORTED_VERSIONS)}")
        if version not in SUPPORTED_VERSIONS:
            raise CniError(INCOMPATIBLE_VERSION, f"unsupported cniVersion {version!r}",
                           f"natmap-cni supports {', '.join(SUPPORTED_VERSIONS)}")
        unknown = sorted(set(conf) - _KEYS)
        if unknown:
            raise CniError(UNSUPPORTED_FIELD, f"unknown key {unknown[0]!r} in natmap's plugin configuration",
                           "known keys: " + ", ".join(sorted(_KEYS)))
        _check_portmap_options(conf)
        name = conf.get("name")
        if not isinstance(name, str) or not _CONTAINER_ID.match(name):
            raise CniError(INVALID_CONFIG, f"invalid network name {name!r}")
        table = conf.get("table", "natmap")
        try:
            validate_table(table)
        except SpecError as exc:
            raise CniError(INVALID_CONFIG, f"invalid table {table!r}: {exc.message}") from None
        backend = conf.get("backend", "nft")
        if backend not in _BACKENDS:
            raise CniError(INVALID_CONFIG, f"invalid backend {backend!r} (choose {', '.join(_BACKENDS)})")
        bridge = conf.get("bridge")
        if bridge is not None and not isinstance(bridge, str):
            raise CniError(INVALID_CONFIG, f"invalid bridge {bridge!r} (an interface name)")
        prev = None if deleting else conf.get("prevResult")
        if prev is not None and not isinstance(prev, dict):
            raise CniError(INVALID_CONFIG, "prevResult must be an object")
        mappings = () if deleting else _mappings(conf.get("runtimeConfig"))
        return cls(version, name, table, backend, bridge, mappings, prev, _attachments(conf),
                   _directory(conf, "lockDir"), _directory(conf, "stateDir"))


def _directory(conf: Mapping[str, Any], key: str) -> str | None:
    """``lockDir``/``stateDir``: an absolute path, or None where the key is absent."""
    path = conf.get(key)
    if path is not None and (not isinstance(path, str) or not path.startswith("/") or "\0" in path):
        raise CniError(INVALID_CONFIG, f"invalid {key} {path!r} (an absolute path, such as \"/run/natmap\")")
    return path


def decode(data: bytes | str) -> object:
    """stdin's JSON; :class:`CniError` code 6 if it is not JSON (or nests
    deeper than Python's recursion limit)."""
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise CniError(UNDECODABLE, f"the network configuration is not JSON: {str(exc)[:200]}") from None


def _check_portmap_options(conf: Mapping[str, Any]) -> None:
    """portmap's options, at the values natmap's own behaviour has; other values
    are refused (code 2) rather than silently ignored."""
    if conf.get("snat", True) is not True:
        raise CniError(UNSUPPORTED_FIELD, "snat must be true: natmap always masquerades localhost "
                       "and hairpin connections, which is what portmap's snat does")
    if conf.get("masqAll", False) is not False:
        raise CniError(UNSUPPORTED_FIELD, "masqAll must be false: natmap keeps the client's source "
                       "address on published ports (it masquerades only localhost and hairpin)")
    for key in ("conditionsV4", "conditionsV6"):
        if conf.get(key):
            raise CniError(UNSUPPORTED_FIELD, f"{key} is not supported: natmap matches no free-form "
                           "iptables conditions; limit the addresses with each mapping's hostIP")
    capabilities = conf.get("capabilities", {})
    if not isinstance(capabilities, dict) or set(capabilities) - {"portMappings"}:
        raise CniError(UNSUPPORTED_FIELD, "natmap-cni has one capability: "
                       f"{{\"portMappings\": true}}, not {capabilities!r}")


def _mappings(runtime_config: object) -> tuple[PortMapping, ...]:
    """``runtimeConfig.portMappings``, without repeats (a runtime may send one
    per family); other runtimeConfig keys are the runtime's and ignored."""
    if runtime_config is None:
        return ()
    if not isinstance(runtime_config, dict):
        raise CniError(INVALID_CONFIG, "runtimeConfig must be an object")
    entries = runtime_config.get("portMappings")
    if entries is None:
        return ()
    if not isinstance(entries, list):
        raise CniError(INVALID_CONFIG, "runtimeConfig.portMappings must be a list")
    mappings = tuple(dict.fromkeys(PortMapping.from_json(entry) for entry in entries))
    by_port: dict[tuple[str, int], list[PortMapping]] = {}
    for m in mappings:
        same = by_port.setdefault((m.protocol, m.host_port), [])
        for other in same:
            if m.overlaps(other):  # natmap would call it a conflict with the container itself
                raise CniError(INVALID_CONFIG, f"host port {m.host_port}/{m.protocol} is mapped twice in "
                               f"portMappings: to {other.container_port} and to {m.container_port}")
        same.append(m)
    return mappings


def _attachments(conf: Mapping[str, Any]) -> tuple[tuple[str, str], ...] | None:
    """GC's ``cni.dev/valid-attachments``: (containerID, ifname) pairs, or None if absent."""
    entries = conf.get("cni.dev/valid-attachments", conf.get("cni.dev/attachments"))
    if entries is None:
        return None
    if not isinstance(entries, list):
        raise CniError(INVALID_CONFIG, "cni.dev/valid-attachments must be a list")
    pairs = []
    for entry in entries:
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str)
                                                  for k in ("containerID", "ifname")):
            raise CniError(INVALID_CONFIG, f"invalid attachment {entry!r} (containerID and ifname strings)")
        pairs.append((entry["containerID"], entry["ifname"]))
    return tuple(pairs)


# --- names and addresses -----------------------------------------------------------


def _digest(*parts: str, size: int) -> str:
    return str(_sha256("\0".join(parts).encode()).hexdigest()[:size])


def network_prefix(network: str) -> str:
    """The start every endpoint name of ``network`` shares: ``cni-<6 hex>-``."""
    return f"cni-{_digest(network, size=6)}-"


def endpoint_name(network: str, container_id: str, ifname: str) -> str:
    """The natmap endpoint of one attachment: ``cni-<net>-<id12>-<ifname>-<hash8>``.

    Deterministic (DEL and GC find it again from the same three values), at
    most 47 characters and within natmap's name rules (``validate_name``);
    characters natmap does not allow in the readable parts become ``_``.
    """
    readable = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{container_id[:12]}-{ifname[:15]}")
    return f"{network_prefix(network)}{readable}-{_digest(container_id, ifname, size=8)}"


@dataclass(frozen=True)
class Attachment:
    """Where the previous plugin put the container: the host-side bridge, the
    container's addresses on the interface ``CNI_IFNAME``, and their subnets
    (which the bridge plugin's gateway addresses on the bridge share)."""

    bridge: str
    ip: ipaddress.IPv4Address | None
    ipv6: ipaddress.IPv6Address | None
    subnets: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    def endpoint(self, name: str) -> Endpoint:
        """The attachment as the natmap endpoint ``name``."""
        return Endpoint(name, self.ip, self.bridge, ipv6=self.ipv6)


def attachment_of(prev: Mapping[str, Any], ifname: str, bridge: str | None = None) -> Attachment:
    """Read ``prevResult``: the container's first IPv4 and IPv6 address (one
    may be absent, not both; as portmap chooses them: skipping ``ips`` whose ``interface`` is not the
    sandbox interface ``ifname``), and the host-side bridge: ``bridge`` if the
    configuration names it, else the first interface without a ``sandbox``
    (the bridge plugin lists its bridge first, then the host's veth). Raise
    :class:`CniError` (code 7).

    Both shapes of result are read: 0.3.x/0.4.0's ``ips`` entries carry a
    ``version`` ("4"/"6") and may lack ``interface``; 1.x's have neither
    ``version`` nor need it. An address is CIDR text (``10.88.0.5/16``), as
    the specification has it: its prefix gives the bridge's subnet.
    """
    interfaces = prev.get("interfaces") or []
    ips = prev.get("ips") or []
    if not isinstance(interfaces, list) or not isinstance(ips, list):
        raise CniError(INVALID_CONFIG, "prevResult's interfaces and ips must be lists")
    found: dict[int, ipaddress.IPv4Interface | ipaddress.IPv6Interface] = {}
    for entry in ips:
        if not isinstance(entry, dict):
            raise CniError(INVALID_CONFIG, f"invalid entry in prevResult's ips: {entry!r}")
        index = entry.get("interface")
        if index is not None:
            if type(index) is not int or not 0 <= index < len(interfaces):
                raise CniError(INVALID_CONFIG, f"prevResult's ips entry {entry!r} names no interface "
                               f"of the {len(interfaces)} in prevResult")
            iface = interfaces[index]
            if not isinstance(iface, dict) or iface.get("name") != ifname or not iface.get("sandbox"):
                continue
        address = entry.get("address")
        try:
            if not isinstance(address, str) or "/" not in address:
                raise ValueError(address)
            interface = ipaddress.ip_interface(address)
        except ValueError:
            raise CniError(INVALID_CONFIG, f"invalid address in prevResult's ips: {entry!r} "
                           "(CIDR text, such as \"10.88.0.5/16\")") from None
        found.setdefault(interface.version, interface)
    if not found:
        raise CniError(INVALID_CONFIG, f"prevResult gives no IP address for interface {ifname!r}; "
                       "natmap publishes to a container's IPv4 and IPv6 addresses")
    if bridge is None:
        hosts: list[str] = [i["name"] for i in interfaces
                            if isinstance(i, dict) and not i.get("sandbox") and isinstance(i.get("name"), str)]
        if not hosts:
            raise CniError(INVALID_CONFIG, "prevResult names no host-side interface; natmap-cni follows "
                           "the bridge plugin in a conflist (or name the bridge: \"bridge\": \"cni0\")")
        bridge = hosts[0]
    ipv4, ipv6 = found.get(4), found.get(6)
    return Attachment(bridge, None if ipv4 is None else ipaddress.IPv4Address(ipv4.ip),
                      None if ipv6 is None else ipaddress.IPv6Address(ipv6.ip),
                      tuple(i.network for i in found.values()))


# --- the commands --------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One invocation: the command, its environment (SPEC.md "Parameters") and stdin."""

    command: str
    conf: NetConf
    container_id: str = ""
    ifname: str = ""
    netns: str = ""

    @property
    def endpoint(self) -> str:
        return endpoint_name(self.conf.network, self.container_id, self.ifname)


def _env(environ: Mapping[str, str], key: str) -> str:
    value = environ.get(key, "")
    if not value:
        raise CniError(INVALID_ENVIRONMENT, f"{key} is not set")
    return value


def _read_call(command: str, conf: NetConf, environ: Mapping[str, str]) -> Call:
    if command in ("GC", "STATUS"):
        if conf.cni_version != _GC_SINCE:
            raise CniError(INCOMPATIBLE_VERSION, f"{command} needs cniVersion {_GC_SINCE}, "
                           f"not {conf.cni_version}")
        return Call(command, conf)
    if command == "CHECK" and _version(conf.cni_version) < _version(_CHECK_SINCE):
        raise CniError(INCOMPATIBLE_VERSION, f"CHECK needs cniVersion {_CHECK_SINCE} or later")
    container_id = _env(environ, "CNI_CONTAINERID")
    if not _CONTAINER_ID.match(container_id):
        raise CniError(INVALID_ENVIRONMENT, f"invalid CNI_CONTAINERID {container_id!r}")
    ifname = _env(environ, "CNI_IFNAME")
    if len(ifname) > 15 or ifname in (".", "..") or re.search(r"[/:\s]", ifname):
        raise CniError(INVALID_ENVIRONMENT, f"invalid CNI_IFNAME {ifname!r}")
    netns = environ.get("CNI_NETNS", "")
    if command != "DEL" and not netns:  # DEL must work when the namespace is gone
        raise CniError(INVALID_ENVIRONMENT, "CNI_NETNS is not set")
    return Call(command, conf, container_id, ifname, netns)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


# --- natmap for one command ------------------------------------------------------


class CniHost(Session):
    """natmap's host (:class:`natmap.host.Session`) as a plugin process sees
    it: what ``prevResult`` already says is not asked again, and pyroute2 is
    imported only for the rare changes below.

    - :meth:`bridge`: the bridges ``prevResult`` describes (name -> subnets
      of the container's addresses, where the bridge plugin puts its gateway
      addresses) when the interface is there; any other is asked of the kernel;
    - :meth:`forget_flows`: nothing to forget (an ADD of TCP ports, a DEL
      of a container no tracked connection answers from, as
      ``/proc/net/nf_conntrack`` shows) opens no conntrack socket;
    - the bridge's kind and addresses, whether a bridge has its ``::1``
      route, the host sockets and the other natmap tables are Session's
      questions to :mod:`natmap.nlquery`, on the standard library's netlink
      sockets: importing pyroute2 would cost three times the rest of an ADD.

    The rest (``/proc/sys`` reads and writes, and the rare changes through
    netlink: the ``::1`` route of a new IPv6 bridge, conntrack cleanup) is Session's.
    """

    def __init__(self, bridges: Iterable[Bridge] = ()) -> None:
        super().__init__()
        self._known = {b.name: b for b in bridges}

    def bridge(self, name: str) -> Bridge:
        known = self._known.get(name)
        # /proc/sys/net is the calling thread's namespace's (/sys/class/net is the mounter's).
        if known is not None and os.path.isdir(f"/proc/sys/net/ipv4/conf/{name}"):
            return known
        return super().bridge(name)  # UnknownInterfaceError if it is not there

    def forget_flows(self, removed: Iterable[Binding] = (), links: Iterable[Link] = (),
                     added: Iterable[Binding] = (), isolated: Iterable[Isolated] = (),
                     routed: Iterable[RoutedBinding] = (), direct: Iterable[DirectCut] = ()) -> int:
        removed, links, isolated, routed = list(removed), list(links), list(isolated), list(routed)
        direct = list(direct)
        added = [b for b in added if b.proto is not Protocol.TCP]  # Session skips these too
        if isolated or routed or direct:  # natmap-cni isolates, routes, protects no bridge; else Session cuts
            return super().forget_flows(removed, links, added, isolated, routed, direct)
        if not (removed or links or added):
            return 0
        tracked = _tracked()
        if tracked is not None:
            # A flow of a removed binding answers from its container's address;
            # a stale one of an added binding goes to its host port.
            removed = [b for b in removed if f"src={_proc_ip(b.container_ip)} " in tracked]
            added = [b for b in added if b.count > 1 or f"dport={b.host_port} " in tracked]  # a range: Session's
            if not (removed or links or added):
                return 0
        return super().forget_flows(removed, links, added)


def _tracked() -> str | None:
    """The namespace's conntrack table as ``/proc/net/nf_conntrack`` shows it
    (None where the kernel has no such file). Only a filter: which flows to
    delete pyroute2 decides, on its netlink dump."""
    try:
        with open("/proc/net/nf_conntrack") as f:
            return f.read()
    except OSError:
        return None


def _proc_ip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """An address as /proc/net/nf_conntrack prints it (the kernel's %pI4 / %pI6: IPv6 unabbreviated)."""
    return ip.exploded if ip.version == 6 else str(ip)


def one_command_natmap(table: str, backend: str, bridges: Iterable[Bridge] = (), *,
                       lock_dir: str | None = None, state_dir: str | None = None) -> NatMap:
    """The NatMap of one plugin command: natmap's ``backend`` and :class:`CniHost`
    knowing ``bridges``; ``lock_dir`` and ``state_dir`` as NatMap takes them
    (None: its defaults). As every natmap process, it trusts its store while
    nftables' generation is the one natmap's last commit left (nothing else
    changed the ruleset since), and reads the kernel otherwise."""
    return NatMap(table=table, backend=backend, host=CniHost(bridges), lock_dir=lock_dir, state_dir=state_dir)


class Plugin:
    """The commands, on natmap's API. ``natmap_factory(table=, backend=,
    bridges=, lock_dir=, state_dir=)`` makes the :class:`natmap.NatMap` for one command (a seam for
    tests; by default :func:`one_command_natmap`). Each command makes one
    NatMap and one transaction on it."""

    def __init__(self, natmap_factory: Callable[..., Any] | None = None) -> None:
        self._factory = natmap_factory or one_command_natmap

    def natmap(self, conf: NetConf, where: Attachment | None = None) -> Any:
        bridges = () if where is None else (
            Bridge(where.bridge, tuple(sorted(set(where.subnets), key=lambda n: (n.version, n)))),)
        return self._factory(table=conf.table, backend=conf.backend, bridges=bridges,
                             lock_dir=conf.lock_dir, state_dir=conf.state_dir)

    def add(self, call: Call) -> dict[str, Any]:
        """Publish the mappings (one transaction, replacing the attachment's
        old bindings); return ``prevResult``, passed through."""
        prev = call.conf.prev_result
        if prev is None:
            raise CniError(INVALID_CONFIG, "no prevResult: natmap-cni is a chained plugin "
                           "(put it after bridge in a conflist)")
        if call.conf.mappings:
            where = attachment_of(prev, call.ifname, call.conf.bridge)
            endpoint = where.endpoint(call.endpoint)
            specs = _specs(call.conf.mappings, endpoint)
            with self.natmap(call.conf, where) as nm, nm.transaction() as tx:
                _forget(tx, call.endpoint)
                # reserved: the runtime holds a socket on each published port once ADD is
                # done (podman's conmon): natmap check does not call that one shadowing
                tx.publish(endpoint, specs, reserved=True)
        else:
            self.delete(call)  # a repeated ADD without mappings leaves none behind
        return {**prev, "cniVersion": call.conf.cni_version}

    def delete(self, call: Call) -> None:
        """Unpublish the attachment's bindings; nothing to do is success."""
        with self.natmap(call.conf) as nm:
            try:
                nm.unpublish(call.endpoint)
            except NotFoundError:  # no such endpoint (or no table yet): DEL is idempotent
                pass

    def check(self, call: Call) -> None:
        """Raise :class:`CniError` (101) unless the kernel holds exactly the
        bindings ADD would publish for this attachment now (one dry
        transaction: the kernel's table, read once under the lock), and
        natmap's chains and rules that forward them are whole."""
        prev = call.conf.prev_result
        if prev is None:
            raise CniError(INVALID_CONFIG, "CHECK needs prevResult")
        where = attachment_of(prev, call.ifname, call.conf.bridge) if call.conf.mappings else None
        with self.natmap(call.conf, where) as nm:
            # natmap's own chains and rules first: bindings in maps nothing reads forward nothing
            drift = nm.check()
            broken = drift.structure
            if broken:
                raise CniError(CHECK_FAILED, f"natmap's table {call.conf.table} is damaged", "; ".join(broken))
            dry = Transaction(nm, dry_run=True)  # what ADD would publish; nothing applied
            with dry:
                # natmap's store of the attachment, as far as the kernel holds it, and what
                # the kernel holds in its name that natmap did not write
                have = set(dry.table().of(call.endpoint)).difference(drift.missing)
                have |= {b for b in drift.unexpected if isinstance(b, Binding) and b.endpoint == call.endpoint}
                _forget(dry, call.endpoint)
                want: set[Any] = set()
                if where is not None:
                    endpoint = where.endpoint(call.endpoint)
                    want = set(dry.publish(endpoint, _specs(call.conf.mappings, endpoint)))
        if have != want:
            missing = sorted(f"{b}->{b.container_port}/{b.proto.value}" for b in want - have)
            extra = sorted(f"{b}->{b.container_port}/{b.proto.value}" for b in have - want)
            raise CniError(CHECK_FAILED, f"the bindings of {call.endpoint} differ in the kernel",
                           f"missing: {', '.join(missing) or 'none'}; unexpected: {', '.join(extra) or 'none'}")

    def gc(self, call: Call) -> None:
        """Unpublish every endpoint of this network whose attachment is not in
        ``cni.dev/valid-attachments`` (one transaction, which also reads the table)."""
        valid = call.conf.valid_attachments
        if valid is None:
            raise CniError(INVALID_CONFIG, "GC needs cni.dev/valid-attachments")
        keep = {endpoint_name(call.conf.network, cid, ifname) for cid, ifname in valid}
        prefix = network_prefix(call.conf.network)
        with self.natmap(call.conf) as nm, nm.transaction() as tx:
            stale = {b.endpoint for b in tx.table().bindings()
                     if b.endpoint.startswith(prefix) and b.endpoint not in keep}
            for name in sorted(stale):
                tx.unpublish(name)

    def status(self, call: Call) -> None:
        """Ready when natmap's backend loads here (libnftables or python-iptables)."""
        try:
            self.natmap(call.conf).close()
        except NatmapError as exc:
            raise CniError(PLUGIN_NOT_AVAILABLE, f"natmap cannot work here: {exc}") from exc


def _specs(mappings: tuple[PortMapping, ...], endpoint: Endpoint) -> list[str]:
    """The mappings as natmap specs, leaving out those whose hostIP's family the
    container has no address of (portmap forwards those nowhere either).

    Runtimes send a range (``podman run -p 8080-9079:8080-9079``) as one entry
    a port; consecutive entries become one range spec again, which natmap
    reads much faster than a thousand specs.
    """
    usable = sorted((m for m in mappings
                     if m.host_ip is None or endpoint.address(m.host_ip.version) is not None),
                    key=lambda m: (str(m.host_ip), m.protocol, m.host_port))
    runs: list[list[PortMapping]] = []
    for m in usable:
        last = runs[-1][-1] if runs else None
        if (last is not None and (m.host_ip, m.protocol) == (last.host_ip, last.protocol)
                and m.host_port == last.host_port + 1 and m.container_port == last.container_port + 1):
            runs[-1].append(m)
        else:
            runs.append([m])
    return [run[0].spec(through=run[-1]) for run in runs]


def _forget(tx: Transaction, endpoint: str) -> None:
    """Unpublish ``endpoint`` in ``tx`` if it has bindings: an attachment's
    first ADD has none (natmap names a missing endpoint a NotFoundError)."""
    try:
        tx.unpublish(endpoint)
    except NotFoundError:
        pass


def _natmap_error(exc: Exception) -> CniError:
    """natmap's errors as CNI errors (the one boundary where they are translated)."""
    if isinstance(exc, LockTimeoutError):  # another process holds the table: the runtime may retry
        return CniError(TRY_AGAIN_LATER, str(exc))
    if isinstance(exc, ConflictError):
        return CniError(PORT_CONFLICT, str(exc))
    if isinstance(exc, SpecError):
        return CniError(INVALID_CONFIG, exc.message, str(exc))
    return CniError(NATMAP_FAILED, str(exc).splitlines()[0] if str(exc) else type(exc).__name__, str(exc))


def run(environ: Mapping[str, str], stdin: bytes, plugin: Plugin | None = None) -> tuple[int, str]:
    """One invocation: the exit status and what goes to stdout (JSON or nothing)."""
    command = environ.get("CNI_COMMAND", "")
    version = "1.1.0"
    try:
        if command == "VERSION":
            return 0, version_answer()
        if command not in ("ADD", "DEL", "CHECK", "GC", "STATUS"):
            raise CniError(INVALID_ENVIRONMENT, f"unknown CNI_COMMAND {command!r}" if command
                           else f"CNI_COMMAND is not set (natmap-cni {__version__} is a CNI plugin: "
                                "a container runtime runs it)")
        data = decode(stdin)
        if isinstance(data, dict) and data.get("cniVersion") in SUPPORTED_VERSIONS:
            version = data["cniVersion"]  # errors from here on in the caller's version
        conf = NetConf.parse(data, deleting=command in ("DEL", "GC", "STATUS"))
        version = conf.cni_version
        call = _read_call(command, conf, environ)
        plugin = plugin or Plugin()
        try:
            if command == "ADD":
                return 0, json.dumps(plugin.add(call))
            {"DEL": plugin.delete, "CHECK": plugin.check, "GC": plugin.gc, "STATUS": plugin.status}[command](call)
        except CniError:
            raise
        except NatmapError as exc:
            raise _natmap_error(exc) from exc
        except OSError as exc:
            raise CniError(IO_FAILURE, str(exc)) from exc
        except Exception as exc:  # a runtime reads stdout as JSON, whatever went wrong
            raise CniError(NATMAP_FAILED, f"{type(exc).__name__}: {exc}") from exc
        return 0, ""
    except CniError as exc:
        return 1, json.dumps(exc.json(version))


def main(environ: Mapping[str, str] | None = None, stdin: IO[bytes] | None = None,
         stdout: IO[str] | None = None, stderr: IO[str] | None = None) -> int:
    """The ``natmap-cni`` executable: read env and stdin, print the answer, exit with its status."""
    environ = os.environ if environ is None else environ
    # Without CNI_COMMAND nobody is feeding stdin (someone ran it by hand): do not wait for it.
    data = (stdin or sys.stdin.buffer).read() if environ.get("CNI_COMMAND") else b""
    status, out = run(environ, data)
    if out:
        print(out, file=stdout or sys.stdout)
    if not environ.get("CNI_COMMAND"):  # a human (natmap-cni --help): stdout stays the CNI answer
        print(_HUMAN_HINT, file=stderr or sys.stderr)
    return status


_HUMAN_HINT = ("natmap-cni: a CNI plugin, run by a container runtime with CNI_COMMAND and the network "
               "configuration on stdin; see docs/cni.md (the natmap command is for people)")


def console() -> None:
    sys.exit(main())

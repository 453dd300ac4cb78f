"""Throw-away network-namespace topologies, for tests, demos and your own
integration tests::

    with natmap.sandbox.Sandbox() as sb:
        web = sb.container("web01")            # 172.30.0.2, fd00:30::2 on bridge natmap0
        client = sb.client("client1")          # 192.0.2.2 on the host's outside link
        web.serve(5000)                        # a TCP echo server in web01
        nm = natmap.NatMap(netns=sb.host.name)
        nm.publish(web.endpoint(), ["8080:5000"])
        client.request(sb.outside_ip, 8080)    # -> "web01 192.0.2.2"

The "host" is a namespace of its own with the bridge and the forwarding
sysctls; containers hang off the bridge (with hairpin mode on their bridge
port, as a runtime's bridge driver sets it); clients sit on a second bridge,
the host's "outside" link. Everything lives in namespaces the sandbox made,
and :meth:`Sandbox.close` (or leaving the ``with`` block, error or not)
deletes them, natmap's lock and state files for them, and stops the
processes it started. It never configures the
root namespace: every ``ip`` command it runs names one of its own namespaces.
"""

from __future__ import annotations

import glob
import ipaddress
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar, cast

from .errors import SandboxError
from .locking import forget_namespace
from .netns import entered, identity
from .model import Endpoint
from .spec import IPAddress, PortSpec, Protocol

__all__ = ["Sandbox", "Namespace", "Container", "SandboxError"]

T = TypeVar("T")
_SOCK_TYPE = {Protocol.TCP: socket.SOCK_STREAM, Protocol.UDP: socket.SOCK_DGRAM,
              Protocol.SCTP: socket.SOCK_STREAM}
_IPPROTO = {Protocol.TCP: socket.IPPROTO_TCP, Protocol.UDP: socket.IPPROTO_UDP,
            Protocol.SCTP: socket.IPPROTO_SCTP}


def _ip_batch(netns: str, commands: Sequence[str]) -> None:
    """Run ``ip`` commands inside ``netns`` in one process (``ip -n NS -b -``)."""
    result = subprocess.run(["ip", "-n", netns, "-b", "-"], input="\n".join(commands) + "\n",
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SandboxError(f"ip -n {netns}: {result.stderr.strip()}")


class Namespace:
    """One network namespace of the sandbox."""

    def __init__(self, name: str, label: str) -> None:
        self.name = name      # the real namespace name (ip netns list)
        self.label = label    # the short name it was given
        self._processes: list[subprocess.Popen[Any]] = []
        self._stop = threading.Event()
        self._servers: list[threading.Thread] = []

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.label} ({self.name})>"

    def run(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """Run a command inside the namespace and wait for it."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run(["ip", "netns", "exec", self.name, *argv], **kwargs)

    def spawn(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a command inside the namespace; it is stopped when the sandbox closes."""
        process = subprocess.Popen(["ip", "netns", "exec", self.name, *argv], **kwargs)
        self._processes.append(process)
        return process

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` on a thread of its own inside the namespace; return its result."""
        outcome: dict[str, Any] = {}

        def inside() -> None:
            try:
                with entered(self.name):
                    outcome["value"] = fn(*args, **kwargs)
            except BaseException as exc:  # handed to the caller below
                outcome["error"] = exc

        worker = threading.Thread(target=inside, name=f"netns-{self.label}")
        worker.start()
        worker.join()
        if "error" in outcome:
            raise outcome["error"]
        return cast(T, outcome["value"])

    def serve(self, port: int, proto: Protocol | str = Protocol.TCP, *, family: int = 6) -> None:
        """An echo-like server on ``port`` (every address; ``family=6`` is dual-stack).

        Each request is answered with ``"<label> <client address>"``, so a test
        sees which namespace answered and what source address it saw.
        """
        proto = Protocol(proto)
        ready = threading.Event()
        failure: list[BaseException] = []

        def loop() -> None:
            try:
                with entered(self.name):
                    sock = _listen(port, proto, family)
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                return
            ready.set()
            with sock:
                while not self._stop.is_set():
                    _answer_one(sock, proto, self.label)

        thread = threading.Thread(target=loop, name=f"serve-{self.label}-{port}", daemon=True)
        thread.start()
        ready.wait()
        if failure:
            raise SandboxError(f"cannot serve {port}/{proto} in {self.label}: {failure[0]}")
        self._servers.append(thread)

    def request(self, host: str | IPAddress, port: int, proto: Protocol | str = Protocol.TCP, *,
                payload: bytes = b"hello", timeout: float = 2.0,
                sock: socket.socket | None = None) -> str | None:
        """Send ``payload`` from this namespace; the answer, or ``None`` if none came."""
        return self.call(_request, host, port, Protocol(proto), payload, timeout, sock)

    def udp_socket(self, family: int = 4) -> socket.socket:
        """A UDP socket made inside this namespace (keep it to reuse one flow)."""
        af = socket.AF_INET if family == 4 else socket.AF_INET6
        return self.call(socket.socket, af, socket.SOCK_DGRAM)

    def stop_processes(self) -> None:
        """Stop the processes :meth:`spawn` started here (only those, by their handle)."""
        for process in self._processes:
            if process.poll() is None:
                process.kill()
            process.wait()
        self._processes.clear()

    def close(self) -> None:
        self._stop.set()
        self.stop_processes()
        for thread in self._servers:
            thread.join(timeout=2)


class Container(Namespace):
    """A namespace attached to the sandbox bridge, like a container."""

    def __init__(self, name: str, label: str, ip: ipaddress.IPv4Address,
                 ipv6: ipaddress.IPv6Address | None, bridge: str) -> None:
        super().__init__(name, label)
        self.ip, self.ipv6, self.bridge = ip, ipv6, bridge

    def endpoint(self, expose: Iterable[str | PortSpec] = (), *, ipv6: bool = True) -> Endpoint:
        """This container as a natmap :class:`Endpoint` (named after its label)."""
        return Endpoint(self.label, self.ip, self.bridge,
                        ipv6=self.ipv6 if ipv6 else None, expose=expose)


class Sandbox:
    """A host namespace with a bridge, containers on it and clients outside."""

    def __init__(self, *, bridge: str = "natmap0", subnet: str = "172.30.0.0/24",
                 subnet6: str | None = "fd00:30::/64", outside: str = "192.0.2.0/24",
                 outside6: str = "2001:db8:2::/64") -> None:
        self.bridge = bridge
        self.subnet = ipaddress.IPv4Network(subnet)
        self.subnet6 = ipaddress.IPv6Network(subnet6) if subnet6 else None
        self.outside = ipaddress.IPv4Network(outside)
        self.outside6 = ipaddress.IPv6Network(outside6)
        self.tag = secrets.token_hex(3)
        self._host: Namespace | None = None
        self.namespaces: list[Namespace] = []
        self._next = {"inside": 2, "outside": 2}
        self._state_dir: str | None = None  # made by this sandbox, removed with it
        self._lock_dir: str | None = None   # likewise

    def __enter__(self) -> Sandbox:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def host(self) -> Namespace:
        """The host namespace (where natmap runs); :class:`SandboxError` before
        :meth:`start` (or ``with``)."""
        if self._host is None:
            raise SandboxError("the sandbox is not started: use `with Sandbox() as sb:` or sb.start()")
        return self._host

    @property
    def bridge_ip(self) -> ipaddress.IPv4Address:
        return self.subnet.network_address + 1

    @property
    def bridge_ip6(self) -> ipaddress.IPv6Address | None:
        return self.subnet6.network_address + 1 if self.subnet6 else None

    @property
    def outside_ip(self) -> ipaddress.IPv4Address:
        """The host's address on the outside link: where clients connect to."""
        return self.outside.network_address + 1

    @property
    def outside_ip6(self) -> ipaddress.IPv6Address:
        return self.outside6.network_address + 1

    def start(self) -> None:
        """Make the host namespace, its bridge, the outside link and the sysctls."""
        if not os.environ.get("NATMAP_STATE_DIR"):  # never /var/lib/natmap for a sandbox
            self._state_dir = os.environ["NATMAP_STATE_DIR"] = tempfile.mkdtemp(prefix="natmap-sandbox-")
        if not os.environ.get("NATMAP_LOCK_DIR"):  # nor /run/natmap: a sandbox leaves nothing behind
            self._lock_dir = os.environ["NATMAP_LOCK_DIR"] = tempfile.mkdtemp(prefix="natmap-sandbox-locks-")
        self._host = self._namespace("host")
        commands = [
            "link set lo up",
            f"link add {self.bridge} type bridge",
            f"addr add {self.bridge_ip}/{self.subnet.prefixlen} dev {self.bridge}",
            f"link set {self.bridge} up",
            "link add nmout type bridge",
            f"addr add {self.outside_ip}/{self.outside.prefixlen} dev nmout",
            f"addr add {self.outside_ip6}/{self.outside6.prefixlen} dev nmout nodad",
            "link set nmout up",
        ]
        if self.subnet6:
            commands.insert(3, f"addr add {self.bridge_ip6}/{self.subnet6.prefixlen} dev {self.bridge} nodad")
        _ip_batch(self.host.name, commands)
        self.host.call(_host_sysctls)

    def container(self, label: str) -> Container:
        """A namespace on the bridge with the next free addresses, hairpin on."""
        n = self._take("inside")
        ip = self.subnet.network_address + n
        ipv6 = self.subnet6.network_address + n if self.subnet6 else None
        ns = Container(self._real_name(label), label, ip, ipv6, self.bridge)
        self._create(ns)
        self._attach(ns, n, self.bridge, f"{ip}/{self.subnet.prefixlen}",
                     f"{ipv6}/{self.subnet6.prefixlen}" if self.subnet6 else None,
                     self.bridge_ip, self.bridge_ip6, hairpin=True)
        return ns

    def client(self, label: str) -> Namespace:
        """A namespace on the host's outside link, routing through the host."""
        n = self._take("outside")
        ns = Namespace(self._real_name(label), label)
        self._create(ns)
        self._attach(ns, 100 + n, "nmout", f"{self.outside.network_address + n}/{self.outside.prefixlen}",
                     f"{self.outside6.network_address + n}/{self.outside6.prefixlen}",
                     self.outside_ip, self.outside_ip6, hairpin=False)
        return ns

    def close(self) -> None:
        """Stop what the sandbox started and delete its namespaces and natmap's
        state files for them. Safe to call twice."""
        for ns in reversed(self.namespaces):
            ns.close()
            try:
                inode = identity(ns.name)
            except OSError:  # never made, or deleted already
                inode = None
            subprocess.run(["ip", "netns", "del", ns.name], capture_output=True)
            state_dir = os.environ.get("NATMAP_STATE_DIR")
            for path in glob.glob(f"{state_dir}/netns-{ns.name}.*") if state_dir else ():
                os.remove(path)
            lock_dir = os.environ.get("NATMAP_LOCK_DIR")  # the sandbox's own, or the caller's
            if lock_dir and inode is not None:
                forget_namespace(lock_dir, inode)
        self.namespaces.clear()
        if self._state_dir is not None:
            if os.environ.get("NATMAP_STATE_DIR") == self._state_dir:
                del os.environ["NATMAP_STATE_DIR"]
            shutil.rmtree(self._state_dir, ignore_errors=True)
            self._state_dir = None
        if self._lock_dir is not None:
            if os.environ.get("NATMAP_LOCK_DIR") == self._lock_dir:
                del os.environ["NATMAP_LOCK_DIR"]
            shutil.rmtree(self._lock_dir, ignore_errors=True)
            self._lock_dir = None

    # --- building ------------------------------------------------------------------

    def _take(self, side: str) -> int:
        n = self._next[side]
        self._next[side] += 1
        return n

    def _real_name(self, label: str) -> str:
        return f"nm{self.tag}-{label}"

    def _namespace(self, label: str) -> Namespace:
        ns = Namespace(self._real_name(label), label)
        self._create(ns)
        return ns

    def _create(self, ns: Namespace) -> None:
        result = subprocess.run(["ip", "netns", "add", ns.name], capture_output=True, text=True)
        if result.returncode != 0:
            raise SandboxError(f"ip netns add {ns.name}: {result.stderr.strip()}")
        self.namespaces.append(ns)
        ns.call(_no_dad)

    def _attach(self, ns: Namespace, n: int, bridge: str, addr4: str, addr6: str | None,
                gateway4: object, gateway6: object, *, hairpin: bool) -> None:
        port = f"v{self.tag}{n}"
        host_side = [
            f"link add {port} type veth peer name eth0 netns {ns.name}",
            f"link set {port} master {bridge}",
            f"link set {port} up",
        ]
        if hairpin:  # lets a container reach its own published port (DESIGN.md §3)
            host_side.append(f"link set {port} type bridge_slave hairpin on")
        _ip_batch(self.host.name, host_side)
        inside = ["link set lo up", f"addr add {addr4} dev eth0", "link set eth0 up",
                  f"route add default via {gateway4}"]
        if addr6 and gateway6:
            inside[2:2] = [f"addr add {addr6} dev eth0 nodad"]
            inside.append(f"route add default via {gateway6}")
        _ip_batch(ns.name, inside)


def _write_sysctls(values: dict[str, str]) -> None:
    for path, value in values.items():
        try:
            with open(f"/proc/sys/{path}", "w") as f:
                f.write(value)
        except FileNotFoundError:
            if "bridge" not in path:  # no br_netfilter: nothing to set
                raise


def _no_dad() -> None:
    """No duplicate address detection: it holds new IPv6 addresses (link-local
    ones too) for a second or two, and the first packets with them."""
    _write_sysctls({"net/ipv6/conf/all/accept_dad": "0", "net/ipv6/conf/default/accept_dad": "0"})


def _host_sysctls() -> None:
    """Forwarding on; bridged IPv4 through the IP hooks, as on a Docker host.

    Bridged IPv6 stays out of them (``bridge-nf-call-ip6tables=0``), which
    ``[::1]`` bindings need (see ``host.bridged_ipv6_hooked``).
    """
    _write_sysctls({"net/ipv4/ip_forward": "1", "net/ipv6/conf/all/forwarding": "1",
                    "net/bridge/bridge-nf-call-iptables": "1",
                    "net/bridge/bridge-nf-call-ip6tables": "0"})


def _listen(port: int, proto: Protocol, family: int) -> socket.socket:
    af = socket.AF_INET6 if family == 6 else socket.AF_INET
    sock = socket.socket(af, _SOCK_TYPE[proto], _IPPROTO[proto])
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if af == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::" if af == socket.AF_INET6 else "0.0.0.0", port))
    if proto is not Protocol.UDP:
        sock.listen(64)
    sock.settimeout(0.2)
    return sock


def _answer_one(sock: socket.socket, proto: Protocol, label: str) -> None:
    """Answer one request, or return after a short wait so the loop can stop."""
    try:
        if proto is Protocol.UDP:
            _, peer = sock.recvfrom(2048)
            sock.sendto(f"{label} {_peer_ip(peer)}".encode(), peer)
            return
        conn, peer = sock.accept()
    except (TimeoutError, OSError):
        return
    with conn:
        conn.settimeout(2)
        try:
            conn.recv(2048)
            conn.sendall(f"{label} {_peer_ip(peer)}".encode())
        except OSError:
            pass


def _peer_ip(peer: tuple[Any, ...]) -> str:
    ip = ipaddress.ip_address(peer[0])
    mapped = ip.ipv4_mapped if ip.version == 6 else None
    return str(mapped or ip)


def _request(host: str | IPAddress, port: int, proto: Protocol, payload: bytes, timeout: float,
             sock: socket.socket | None) -> str | None:
    address = ipaddress.ip_address(str(host).strip("[]"))
    af = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    own = sock is None
    sock = sock or socket.socket(af, _SOCK_TYPE[proto], _IPPROTO[proto])
    sock.settimeout(timeout)
    try:
        if proto is Protocol.UDP:
            sock.sendto(payload, (str(address), port))
            return sock.recvfrom(2048)[0].decode()
        sock.connect((str(address), port))
        sock.sendall(payload)
        return sock.recv(2048).decode() or None
    except OSError:
        return None
    finally:
        if own:
            sock.close()

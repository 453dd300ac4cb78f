"""A tiny "container runtime": processes in network namespaces, their ports
published with natmap, each start and stop one kernel transaction.

It uses the sandbox for the namespaces (a real runtime has its own); the
natmap calls are the ones a runtime makes. Run as root:
.venv/bin/python examples/mini_runtime.py
"""

import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address

import natmap
from natmap.sandbox import Container, Namespace, Sandbox


@dataclass
class Running:
    container: Container
    endpoint: natmap.Endpoint
    bindings: list[natmap.Binding] = field(default_factory=list)


class MiniRuntime:
    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.nm = natmap.NatMap(netns=sandbox.host.name)
        self.running: dict[str, Running] = {}

    def run(self, name: str, argv: Sequence[str], *, publish: Iterable[str] = (), expose: Iterable[str] = (),
            publish_all: bool = False, links: Iterable[str] = ()) -> list[natmap.Binding]:
        """docker run --name NAME -p ... --expose ... [-P] --link ... ARGV"""
        container = self.sandbox.container(name)
        container.spawn(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        endpoint = container.endpoint(expose=expose)
        with self.nm.transaction() as tx:  # ports and links: one kernel transaction
            bindings = tx.publish(endpoint, publish, publish_all=publish_all)
            for spec in links:
                link = natmap.LinkSpec.parse(spec)
                tx.link(endpoint, self.running[link.name].endpoint, link.alias)
        self.running[name] = Running(container, endpoint, bindings)
        return bindings

    def stop(self, name: str) -> list[natmap.Binding]:
        """docker rm -f NAME: its bindings, links and conntrack entries go with it."""
        running = self.running.pop(name)
        removed = self.nm.unpublish(name)
        running.container.stop_processes()
        return removed


def wait_for(ns: Namespace, host: IPv4Address, port: int) -> bool:
    for _ in range(100):
        if ns.request(host, port, payload=b"GET / HTTP/1.0\r\n\r\n", timeout=0.2):
            return True
        time.sleep(0.02)
    return False


def main() -> None:
    with Sandbox() as sb:
        runtime = MiniRuntime(sb)
        client = sb.client("client1")
        server = [sys.executable, "-m", "http.server", "8000", "--bind", "0.0.0.0"]
        for binding in runtime.run("web01", server, publish=["8080:8000"]):
            print("web01", binding.port_line())
        for binding in runtime.run("web02", server, expose=["8000"], publish_all=True):
            print("web02", binding.port_line())
        assigned = runtime.nm.port("web02", 8000)[0].host_port
        for name, port in (("web01", 8080), ("web02", assigned)):
            ok = wait_for(client, sb.outside_ip, port)
            print(f"GET http://{sb.outside_ip}:{port}/ ({name}):", "200 OK" if ok else "no answer")
        print("stopped web01:", ", ".join(str(b) for b in runtime.stop("web01")))
        print(f"GET http://{sb.outside_ip}:8080/ after stop:",
              "200 OK" if client.request(sb.outside_ip, 8080, timeout=0.5) else "no answer")


if __name__ == "__main__":
    main()

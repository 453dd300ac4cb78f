"""The Docker tutorial natmap started from ("port mapping and container
interconnection"), for real and without Docker: `make demo` runs this.

Every step runs the `natmap` command inside a throw-away sandbox (network
namespaces this script makes and removes; the host's own network is never
touched). Run as root: .venv/bin/python examples/tutorial.py
"""

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from ipaddress import IPv4Address
from pathlib import Path

from natmap.sandbox import Container, Namespace, Sandbox

NATMAP = str(Path(sys.executable).with_name("natmap"))

# training/webapp's "python app.py", as small as it gets.
WEBAPP = """
import http.server, socket, sys
class Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6  # and IPv4 through the same socket
class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"Hello world!\\n"
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args): pass
Server(("::", int(sys.argv[1])), Hello).serve_forever()
"""


def say(text: str) -> None:
    print(f"\n# {text}")


def natmap(sb: Sandbox, *args: str, show: bool = True) -> str:
    """Run `natmap ARGS` in the sandbox's host namespace, show it as a shell would."""
    if show:
        print(f"$ natmap {' '.join(args)}")
    result = subprocess.run([NATMAP, *args, "--netns", sb.host.name], capture_output=True, text=True)
    output = (result.stdout + result.stderr).rstrip()
    if show and output:
        print(output)
    if result.returncode != 0:
        raise SystemExit(f"natmap {' '.join(args)} failed with exit code {result.returncode}")
    return result.stdout


def http_get(ns: Namespace, host: str | IPv4Address, port: int | str) -> str:
    """GET / from inside a namespace: the body, or what went wrong."""
    url = f"http://{'[%s]' % host if ':' in str(host) else host}:{port}/"

    def get() -> str:
        try:
            body: bytes = urllib.request.urlopen(url, timeout=1).read()
            return body.decode().strip()
        except OSError as exc:
            return f"no answer ({getattr(exc, 'reason', exc)})"
    return ns.call(get)


def start_webapp(container: Container, port: int) -> None:
    container.spawn([sys.executable, "-c", WEBAPP, str(port)])
    for _ in range(100):  # up in well under a second
        if container.request("127.0.0.1", port, payload=b"GET / HTTP/1.0\r\n\r\n", timeout=0.2):
            return
        time.sleep(0.02)
    raise SystemExit(f"the web app in {container.label} did not start")


def main() -> None:
    if os.geteuid() != 0:
        raise SystemExit("the demo makes network namespaces: run it as root (sudo make demo)")
    started = time.monotonic()
    print("natmap demo: Docker's port mapping and container links, without Docker.")
    print("A sandbox: a host namespace with bridge natmap0 (172.30.0.1/24), containers on it,")
    print("and a client on the host's outside link (192.0.2.2 -> host 192.0.2.1).")
    print("Every `natmap` command below runs in the sandbox host (natmap --netns ...).")
    with Sandbox() as sb:
        web01, db01, web02, web03 = (sb.container(n) for n in ("web01", "db01", "web02", "web03"))
        client = sb.client("client1")

        say("docker run -d -P training/webapp: web01 serves on port 5000; -P maps it to a free host port")
        start_webapp(web01, 5000)
        natmap(sb, "publish", "web01", "--ip", str(web01.ip), "--bridge", sb.bridge,
               "--expose", "5000", "-P")
        say("docker ps -l: the PORTS column")
        natmap(sb, "ps")
        port = natmap(sb, "port", "web01", "5000", show=False).split()[0].rsplit(":", 1)[1]
        say(f"a client outside the host asks the host's address on the assigned port {port}")
        print(f"$ curl http://{sb.outside_ip}:{port}/")
        print(http_get(client, sb.outside_ip, port))

        say("docker run -d -p 127.0.0.1:5001:5000: only the host's own loopback may reach it")
        natmap(sb, "publish", "web01", "--ip", str(web01.ip), "--bridge", sb.bridge,
               "-p", "127.0.0.1:5001:5000")
        print("$ curl http://127.0.0.1:5001/        (on the host)")
        print(http_get(sb.host, "127.0.0.1", 5001))
        print(f"$ curl http://{sb.outside_ip}:5001/   (from the client outside)")
        print(http_get(client, sb.outside_ip, 5001))

        say("docker port web01 5000")
        natmap(sb, "port", "web01", "5000")

        say("containers by name: db01, then web02 --link db01:web02Todb01, on a bridge closed to\n"
            "# inter-container traffic (--icc=false), so only the link lets web02 in")
        db01.serve(5432)
        natmap(sb, "isolate", sb.bridge)
        natmap(sb, "publish", "db01", "--ip", str(db01.ip), "--bridge", sb.bridge, "--expose", "5432", "-P")
        start_webapp(web02, 5000)
        natmap(sb, "publish", "web02", "--ip", str(web02.ip), "--bridge", sb.bridge, "--expose", "5000", "-P")
        say("the link: the hosts line and environment Docker would give web02")
        hosts_line = natmap(sb, "link", "web02", "db01:web02Todb01").splitlines()[0]
        alias_ip = hosts_line.split()[0]
        say(f"web02 reaches db01 at web02Todb01 ({alias_ip}); web03, not linked, cannot")
        for container in (web02, web03):
            answer = container.request(alias_ip, 5432, timeout=0.5)
            print(f"{container.label} -> {alias_ip}:5432: "
                  + (f"answered by {answer.split()[0]}" if answer else "no answer"))
        natmap(sb, "ps")

        say("the rules natmap made: one nftables table, maps keyed on address, protocol and port")
        print("$ nft list table inet natmap")
        print(sb.host.run([shutil.which("nft") or "nft", "list", "table", "inet", "natmap"]).stdout.rstrip())

        say("tear down: the sandbox removes its namespaces, and every rule with them")
    print(f"\ndone in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()

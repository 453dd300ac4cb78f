"""How natmap's cost grows with the number of bindings (nft backend, in-process).

Prints: one transaction publishing N bindings (endpoints x 40 ports), and the
cost of publishing / unpublishing one more port with 10 and with N present.
Runs in a sandbox namespace; needs root.
Usage: python bench/engine_scale.py [N] [nft|iptables]
"""

import ipaddress
import statistics
import sys
import time

import natmap
from natmap.sandbox import Sandbox

PORTS_PER_ENDPOINT = 40


def endpoints(count, bridge):
    base = ipaddress.IPv4Address("172.30.1.0")
    return [natmap.Endpoint(f"ep{i}", base + i, bridge) for i in range(count)]


def publish_all(nm, eps):
    with nm.transaction() as tx:
        for i, ep in enumerate(eps):
            first = 10000 + i * PORTS_PER_ENDPOINT
            tx.publish(ep, [f"{first}-{first + PORTS_PER_ENDPOINT - 1}:1-{PORTS_PER_ENDPOINT}"])


def one_more(nm, bridge, rounds=30):
    extra = natmap.Endpoint("extra", "172.30.200.1", bridge)
    add, remove = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        nm.publish(extra, ["60000:80"])
        add.append(time.perf_counter() - t)
        t = time.perf_counter()
        nm.unpublish("extra")
        remove.append(time.perf_counter() - t)
    return statistics.median(add), statistics.median(remove)


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    backend = sys.argv[2] if len(sys.argv) > 2 else "nft"
    print(f"backend {backend}")
    with Sandbox(subnet="172.30.0.0/16", subnet6=None) as sb:
        small = natmap.NatMap(table="small", netns=sb.host.name, backend=backend)
        publish_all(small, endpoints(1, sb.bridge)[:1])
        small.unpublish("ep0")
        small.publish(natmap.Endpoint("ten", "172.30.0.9", sb.bridge), [f"{p}:{p}" for p in range(1, 11)])

        big = natmap.NatMap(table="big", netns=sb.host.name, backend=backend)
        big.publish(natmap.Endpoint("warm", "172.30.0.10", sb.bridge), ["1:1"])  # creates the table
        eps = endpoints(n // PORTS_PER_ENDPOINT, sb.bridge)
        t = time.perf_counter()
        publish_all(big, eps)
        full = time.perf_counter() - t
        assert len(big.bindings()) == n + 1

        add10, del10 = one_more(small, sb.bridge)
        addn, deln = one_more(big, sb.bridge)
        print(f"publish {n} bindings ({len(eps)} endpoints x {PORTS_PER_ENDPOINT}) in one transaction: {full * 1000:.0f} ms")
        print(f"publish one more port: {add10 * 1000:.2f} ms with 10 present, {addn * 1000:.2f} ms with {n} present "
              f"(ratio {addn / add10:.2f})")
        print(f"unpublish it again:    {del10 * 1000:.2f} ms with 10 present, {deln * 1000:.2f} ms with {n} present "
              f"(ratio {deln / del10:.2f})")


if __name__ == "__main__":
    main()

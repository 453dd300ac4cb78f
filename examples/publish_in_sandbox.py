"""Publish a container's port in a throw-away sandbox and prove it with traffic.

Run as root: .venv/bin/python examples/publish_in_sandbox.py
"""

import natmap
from natmap.sandbox import Sandbox

with Sandbox() as sb:
    web = sb.container("web01")
    client = sb.client("client1")
    web.serve(5000)

    with natmap.NatMap(netns=sb.host.name) as nm:
        endpoint = web.endpoint(expose=["5000/tcp"])
        assigned = nm.publish(endpoint, publish_all=True)[0].host_port   # -P
        nm.publish(endpoint, ["127.0.0.1:5001:5000"])                      # -p
        for binding in nm.port("web01"):
            print(binding.port_line())
        print("from outside:", client.request(sb.outside_ip, assigned))
        print("from the host's loopback:", sb.host.request("127.0.0.1", 5001))
        print("127.0.0.1 binding from outside:", client.request(sb.outside_ip, 5001, timeout=0.5))
        nm.unpublish("web01")
        print("after unpublish:", client.request(sb.outside_ip, assigned, timeout=0.5))

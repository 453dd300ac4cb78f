"""Read Docker-style -p, --expose and --link values the way Docker reads them.

Run: .venv/bin/python examples/parse_specs.py
"""

import natmap

for text in ["127.0.0.1:5001:5000", "8080:5000", "::1:80:80", "[::1]::53/udp",
             "8000-8010:80", "published=8443,target=443,host_ip=127.0.0.1"]:
    spec = natmap.PortSpec.parse(text)
    host = "every address" if spec.host_ip is None else spec.host_ip
    ports = "assigned" if spec.host_ports is None else spec.host_ports
    print(f"{text!r:50} -> {spec}  (host {host}, host ports {ports}, "
          f"container {spec.container_ports}/{spec.proto})")

print(natmap.PortSpec.parse_exposed("5000"))
link = natmap.LinkSpec.parse("db01:web02Todb01")
print(f"link to {link.name} as {link.alias}")

try:
    natmap.PortSpec.parse("70000:80")
except natmap.SpecError as error:
    print(error)

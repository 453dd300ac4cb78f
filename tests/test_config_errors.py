"""Issue 14, case 8: whatever a declarative file holds, one NatmapError that
names the file (and, inside it, the key path)."""

import pytest

import natmap
from natmap.config import Config


def load(tmp_path, content):
    path = tmp_path / "lab.toml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path, Config.load(path)


@pytest.mark.parametrize("content, kind, message", [
    ("x = " + "[" * 5000 + "]" * 5000, natmap.ConfigError, "arrays or tables nested too deeply"),
    ("[endpoints]\nweb01 = " + "[" * 400 + "]" * 400, natmap.SpecError, "endpoints.web01 must be a table"),
    ("[bridges]\nnatmap0 = 5\n", natmap.SpecError, "bridges.natmap0 must be a table"),
    ("[bridges.\"a;b\"]\n", natmap.SpecError, "bridges.a;b: invalid interface name"),
    (b"# caf\xe9\n", natmap.ConfigError, r"not UTF-8 text \(byte 5 is 0xe9\)"),
    ("x = = 1", natmap.ConfigError, r"not valid TOML: Invalid value \(at line 1, column 5\)"),
    ('[endpoints.web01]\nip = "172.30.0.2"\nbridge = "natmap0"\npublish = ["80", "81", "99999:80"]\n',
     natmap.SpecError, r"endpoints.web01.publish\[2\]: invalid port 99999 \(must be 0-65535\) in '99999:80'"),
    ('[endpoints.web01]\nip = "172.30.0.2"\nbridge = "natmap0"\nexpose = ["80", 5]\n',
     natmap.SpecError, r"endpoints.web01.expose\[1\] has the wrong type \(integer, expected string\)"),
    ('[endpoints.web01]\nip = "172.30.0.2"\nbridge = "natmap0"\nlinks = ["db01:a b"]\n',
     natmap.SpecError, r"endpoints.web01.links\[0\]: "),
    ('[endpoints.web01]\nbridge = "natmap0"\n', natmap.SpecError,
     r"endpoints.web01 needs an address: ip = ... \(IPv4\), ipv6 = ... or both"),
    ('[endpoints.web01]\nip = "1.2.3"\nbridge = "natmap0"\n', natmap.SpecError, "endpoints.web01: invalid ip"),
    ('[endpoints.web01]\nip = "172.30.0.2"\nbridge = "natmap0"\npublish = "80"\n',
     natmap.SpecError, r"endpoints.web01.publish has the wrong type \(string, expected array\)"),
    ("[bridges.natmap0]\ngateway_mode_ipv4 = 3\n",
     natmap.SpecError, r"bridges.natmap0.gateway_mode_ipv4 has the wrong type \(integer, expected string\)"),
])
def test_each_fault_is_one_natmap_error_naming_the_file_and_place(tmp_path, content, kind, message):
    with pytest.raises(kind, match=message) as info:
        load(tmp_path, content)
    assert str(info.value).startswith(f"{tmp_path / 'lab.toml'}: ")
    assert len(str(info.value).splitlines()) in (1, 3)  # a grammar error: the input and a caret


def test_a_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(natmap.ConfigError, match="nosuch.toml: cannot read it: No such file or directory"):
        Config.load(tmp_path / "nosuch.toml")
    with pytest.raises(natmap.ConfigError, match="cannot read it: Is a directory"):
        Config.load(tmp_path)


def test_a_good_file_still_loads(tmp_path):
    _, config = load(tmp_path, '[bridges.natmap0]\nisolate = true\n[endpoints.web01]\nip = "172.30.0.2"\n'
                               'bridge = "natmap0"\npublish = ["8080:80"]\n')
    assert config.isolated == {"natmap0"} and config.endpoints[0].publish[0].container_ports.start == 80


def test_an_ipv6_only_endpoint_gives_ipv6_alone(tmp_path):
    """README and docs/cni.md promise IPv6-only endpoints; the file takes them as the API does."""
    _, config = load(tmp_path, '[endpoints.web06]\nipv6 = "fd00:30::6"\nbridge = "natmap0"\npublish = ["8080:80"]\n')
    [endpoint] = config.endpoints
    assert endpoint.endpoint.ip is None and str(endpoint.endpoint.ipv6) == "fd00:30::6"

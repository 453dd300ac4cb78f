"""podman with its CNI backend, boxed in for tests and benchmarks.

What this machine needs (found by trying, issue 17): podman 4.3 reads
``network_backend = "cni"``, the CNI config and plugin directories,
``cgroup_manager = "cgroupfs"`` and ``events_logger = "file"`` from the
``containers.conf`` that ``CONTAINERS_CONF`` names; it runs under ``nsenter
--net`` (``ip netns exec`` remounts /sys, and runc then finds no cgroup
mount); ``--runtime runc``; root, runroot and storage in a temporary
directory; ``--rootfs`` with a static busybox (no image pull); ulimits below
this VM's hard limits.

Everything podman and the CNI plugins write lands in the harness's own places:
podman runs in a network namespace the caller made (the sandbox's "host") and
in a mount namespace this harness holds open, with fresh tmpfs on ``/run``
(the containers' network namespaces, runc's and libpod's state) and
``/var/lib`` (host-local's leases, libcni's result cache); natmap's lock and
state directories are named in the conflist (the test run's lock directory,
the harness's state directory), so no call of the plugin, whatever its
environment, writes /run/natmap or /var/lib/natmap. Closing
removes the containers, stops the holder (only that process, by its PID),
which takes those mounts with it, and deletes the temporary directory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CNI_DIR = "/usr/lib/cni"
NEEDED = ("podman", "runc", "busybox", "nsenter", "unshare")
NETWORK = "natmaptest"
SUBNET, GATEWAY = "10.89.7.0/24", "10.89.7.1"
BRIDGE = "cnibr7"
ULIMITS = ("--ulimit", "nproc=1024:1024", "--ulimit", "nofile=1024:1024")


DOCS = Path(__file__).resolve().parents[2] / "docs" / "cni.md"


def documented_conflists() -> list[dict]:
    """The conflists docs/cni.md shows, in its order (podman's first), as a newcomer copies them."""
    blocks = re.findall(r"```json\n(.*?)```", DOCS.read_text(), flags=re.S)
    return [conf for conf in map(json.loads, blocks) if "plugins" in conf]


def missing() -> str | None:
    """Why podman cannot run here at all, or None."""
    if os.geteuid() != 0:
        return "needs root"
    absent = [tool for tool in NEEDED if shutil.which(tool) is None]
    absent += [f"{CNI_DIR}/{p}" for p in ("bridge", "host-local", "portmap") if not os.path.exists(f"{CNI_DIR}/{p}")]
    if absent:
        return f"missing {', '.join(absent)} (make test installs podman containernetworking-plugins busybox-static runc)"
    return None


def natmap_cni() -> str:
    """The ``natmap-cni`` console script of the Python running the tests."""
    path = Path(sys.executable).parent / "natmap-cni"
    return str(path) if path.exists() else shutil.which("natmap-cni") or "natmap-cni"


class Podman:
    """podman in ``host_netns``, publishing through ``plugin`` ("natmap" or "portmap");
    ``executable`` is the natmap-cni to install (default: :func:`natmap_cni`)."""

    def __init__(self, host_netns: str, plugin: str = "natmap", *, backend: str = "nft",
                 table: str = "natmap", executable: str | None = None) -> None:
        self.host_netns, self.plugin, self.backend, self.table = host_netns, plugin, backend, table
        self.executable = executable or natmap_cni()
        self.tmp = Path(tempfile.mkdtemp(prefix="natmap-podman-"))
        self.env = {**os.environ, "CONTAINERS_CONF": str(self.tmp / "containers.conf")}
        # natmap's directories in the conflist, not the environment: podman's cleanup
        # process (conmon's exit command) runs the plugin's DEL with an environment
        # of its own, and a DEL on another store than the ADD's would remove nothing.
        self.lock_dir = os.environ.get("NATMAP_LOCK_DIR") or str(self.tmp / "natmap-locks")
        self.state_dir = str(self.tmp / "natmap-state")
        self._holder: subprocess.Popen[str] | None = None

    def __enter__(self) -> Podman:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        tmp = self.tmp
        for d in ("rootfs/bin", "net", "plugins", "root", "runroot", "natmap-state"):
            (tmp / d).mkdir(parents=True)
        os.makedirs(self.lock_dir, mode=0o700, exist_ok=True)
        shutil.copy(shutil.which("busybox"), tmp / "rootfs/bin/busybox")
        (tmp / "rootfs/index.html").write_text("natmap web\n")
        for name in ("bridge", "host-local", "portmap", "loopback"):
            (tmp / "plugins" / name).symlink_to(f"{CNI_DIR}/{name}")
        # docs/cni.md's install step: natmap-cni under the name the conflist's "type" gives
        (tmp / "plugins/natmap").symlink_to(self.executable)
        (tmp / "net" / f"{NETWORK}.conflist").write_text(json.dumps(self.conflist(), indent=1))
        (tmp / "containers.conf").write_text(
            "[network]\n"
            'network_backend = "cni"\n'
            f'network_config_dir = "{tmp}/net"\n'
            f'cni_plugin_dirs = ["{tmp}/plugins"]\n'
            "[engine]\n"
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f'tmp_dir = "{tmp}/libpod"\n')
        # The holder: a mount namespace with its own /run and /var/lib, alive while it sleeps.
        self._holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c",
             "mount -t tmpfs natmap-test /run && mkdir /run/netns && "
             "mount -t tmpfs natmap-test /var/lib && echo ready && exec sleep infinity"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if self._holder.stdout.readline().strip() != "ready":
            raise RuntimeError(f"cannot make podman's mount namespace: {self._holder.stderr.read()}")

    def conflist(self) -> dict:
        publisher = {"type": "natmap", "capabilities": {"portMappings": True}, "backend": self.backend,
                     "table": self.table, "lockDir": self.lock_dir, "stateDir": self.state_dir}
        if self.plugin == "portmap":
            publisher = {"type": "portmap", "capabilities": {"portMappings": True}}
        return {"cniVersion": "0.4.0", "name": NETWORK, "plugins": [
            {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False, "hairpinMode": True,
             "ipam": {"type": "host-local", "routes": [{"dst": "0.0.0.0/0"}],
                      "ranges": [[{"subnet": SUBNET, "gateway": GATEWAY}]]}},
            publisher]}

    def podman(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        assert self._holder is not None
        argv = ["nsenter", f"--mount=/proc/{self._holder.pid}/ns/mnt", f"--net=/run/netns/{self.host_netns}",
                "podman", "--root", str(self.tmp / "root"), "--runroot", str(self.tmp / "runroot"),
                "--storage-driver", "vfs", "--runtime", "runc", *args]
        result = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args[:3])}... failed ({result.returncode}): "
                               f"{result.stderr.strip()[-2000:]}")
        return result

    def run(self, name: str, *publish: str) -> str:
        """``podman run -d`` a busybox httpd on port 80 with ``-p`` each of ``publish``; its full ID."""
        flags = [arg for spec in publish for arg in ("-p", spec)]
        result = self.podman("run", "-d", "--name", name, "--network", NETWORK, *flags, *ULIMITS,
                             "--rootfs", str(self.tmp / "rootfs"), "/bin/busybox", "httpd", "-f", "-p", "80",
                             "-h", "/")
        return result.stdout.strip().splitlines()[-1]

    def rm(self, name: str) -> None:
        self.podman("rm", "-f", "-t", "0", name)

    def close(self) -> None:
        if self._holder is not None:
            if self._holder.poll() is None:
                self.podman("rm", "-a", "-f", "-t", "0", check=False)
                self._holder.kill()
            self._holder.wait()
            self._holder = None
        shutil.rmtree(self.tmp, ignore_errors=True)

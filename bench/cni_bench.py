"""podman `run` + `rm` publishing through natmap-cni vs the stock portmap
(`make bench-cni`; root; outside `make test`).

For 1, 100 and 1,000 published ports (`-p 8080-9079:8080-9079` for 1,000),
each plugin in its own sandbox and podman harness (tests/kernel/podman_harness.py:
namespaces, mount namespace and temporary directories of its own), the two
plugins measured in turns, after one uncounted warm-up round. Prints medians
and ratios and writes them as the CNI section of bench/RESULTS.md (the rest
of the file is left as it is).

portmap needs about 48 s for one run with 1,000 ports here, so that size has
fewer rounds (ROUNDS_1000, default 2): the whole benchmark takes about 4 minutes.

natmap-cni runs as ``pip install natmap`` installs it (:func:`installed`): the
project's .venv has natmap in editable mode, whose import hook costs every
Python process of the venv about 15 ms before natmap's first line runs, a
cost no installed plugin pays.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import resource
import statistics
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "kernel"))

from podman_harness import CNI_DIR, NETWORK, ULIMITS, Podman, missing  # noqa: E402
from test_kernel_cni import mapping, prev_result  # noqa: E402

from natmap.sandbox import Sandbox  # noqa: E402

RESULTS = Path(__file__).with_name("RESULTS.md")
SIZES = (1, 100, 1000)
ROUNDS = {1: 7, 100: 5, 1000: int(os.environ.get("ROUNDS_1000", "2"))}
PLUGINS = ("natmap", "portmap")
BEGIN, END = "<!-- cni_bench begin -->", "<!-- cni_bench end -->"


def installed(where: Path) -> str:
    """natmap-cni as pip installs it, in a venv at ``where``: natmap's files in
    its site-packages, compiled, its dependencies (the project's .venv's
    site-packages) on the path, and the console script pip writes. The path
    of the script."""
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(where)], check=True)
    site = Path(subprocess.run([str(where / "bin/python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())
    shutil.copytree(root / "natmap", site / "natmap", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(root / "natmap_cni.py", site)
    (site / "natmap-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([str(where / "bin/python"), "-m", "compileall", "-q", str(site / "natmap"),
                    str(site / "natmap_cni.py")], check=True)
    script = where / "bin/natmap-cni"
    script.write_text(f"#!{where}/bin/python\nimport sys\nfrom natmap_cni import console\n"
                      "if __name__ == '__main__':\n    sys.exit(console())\n")
    script.chmod(0o755)
    return str(script)


def timed_round(pm: Podman, ports: int, name: str) -> tuple[float, float]:
    """One ``podman run -d -p`` with ``ports`` ports and its ``podman rm -f``: seconds each."""
    spec = "8080:80" if ports == 1 else f"8080-{8079 + ports}:8080-{8079 + ports}"
    started = time.perf_counter()
    pm.podman("run", "-d", "--name", name, "--network", NETWORK, "-p", spec, *ULIMITS,
              "--rootfs", str(pm.tmp / "rootfs"), "/bin/busybox", "httpd", "-f", "-p", "80", "-h", "/")
    ran = time.perf_counter()
    pm.podman("rm", "-f", "-t", "0", name)
    return ran - started, time.perf_counter() - ran


def cpu_seconds(argv: list[str], **kwargs) -> float:
    """User + system CPU seconds of one child process (less sensitive to a busy machine than wall time)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(argv, capture_output=True, check=True, **kwargs)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def plugin_cpu(sb: Sandbox, plugin: str, kind: str) -> dict[str, float]:
    """What one process of ``plugin`` (of ``"type"`` ``kind``: natmap or
    portmap) costs, by command: median CPU milliseconds of 5, 1 port, with the
    processes it starts (portmap's iptables); and, for comparison, an empty
    Python process and one that imports pyroute2."""
    web = sb.container("cpu01")
    conf = json.dumps({"cniVersion": "1.0.0", "name": "cpu", "type": kind, "capabilities": {"portMappings": True},
                       "runtimeConfig": {"portMappings": [mapping(7000)]},
                       "prevResult": prev_result(sb, web, "1.0.0")})
    # this environment, as a runtime passes its own: PATH for portmap's iptables, and the
    # sandbox's NATMAP_LOCK_DIR and NATMAP_STATE_DIR (never /run/natmap, /var/lib/natmap)
    assert os.environ.get("NATMAP_LOCK_DIR") and os.environ.get("NATMAP_STATE_DIR")
    env = {**os.environ, "CNI_CONTAINERID": "cpu01", "CNI_IFNAME": "eth0", "CNI_NETNS": f"/run/netns/{web.name}",
           "CNI_PATH": "/usr/lib/cni"}
    argv = ["nsenter", f"--net=/run/netns/{sb.host.name}", plugin]
    cpu: dict[str, list[float]] = {"VERSION": [], "ADD": [], "DEL": [], "python": [], "pyroute2": []}
    for _ in range(5):
        for command in ("VERSION", "ADD", "DEL"):
            cpu[command].append(cpu_seconds(argv, input=conf.encode(), env={**env, "CNI_COMMAND": command}))
        cpu["python"].append(cpu_seconds([sys.executable, "-S", "-c", "pass"]))
        cpu["pyroute2"].append(cpu_seconds([sys.executable, "-c", "import pyroute2"]))
    return {k: statistics.median(v) * 1000 for k, v in cpu.items()}


def cpu_line(natmap: dict[str, float], portmap: dict[str, float]) -> str:
    return (f"One plugin process, CPU (median of 5, 1 port, ms): natmap-cni VERSION {natmap['VERSION']:.0f}, "
            f"ADD {natmap['ADD']:.0f}, DEL {natmap['DEL']:.0f}; portmap (with its iptables processes) VERSION "
            f"{portmap['VERSION']:.0f}, ADD {portmap['ADD']:.0f}, DEL {portmap['DEL']:.0f}. An empty Python "
            f"process costs {natmap['python']:.0f}, one importing pyroute2 {natmap['pyroute2']:.0f}: natmap-cni "
            "asks its guest checks' netlink questions (host sockets, the bridge, other tables) without it "
            "(natmap/nlquery.py); a DEL (or a UDP ADD) imports it only when a tracked connection is to be "
            "forgotten. podman runs VERSION then ADD for `run`, VERSION then DEL for `rm`.")


def one_port_note(cpu: dict[str, dict[str, float]], start: float, end: float, slower: float) -> str:
    """Why the 1-port ratio is what it is (``slower``: natmap's run / portmap's), and what natmap-cni does about it."""
    used = {p: cpu[p]["VERSION"] + cpu[p]["ADD"] for p in cpu}
    stretch = max(1.0, (start + end) / 2 / (os.cpu_count() or 1))
    verdict = (f"The 1.3x holds in this run ({slower:.2f}x), with little to spare: the difference is CPU, so it "
               "grows with the machine's load." if slower <= 1.3 else
               f"The 1.3x is missed in this run ({slower:.2f}x): the difference is CPU, which the machine's "
               "load stretches (the load average is above).")
    return ("At 1 port a `podman run` is podman's own work plus the publisher's VERSION and ADD: "
            f"{used['natmap']:.0f} ms of CPU for natmap-cni, {used['portmap']:.0f} ms for portmap here; with "
            f"the machine's runnable load, a CPU millisecond took about {stretch:.1f} ms of wall time. "
            f"{verdict} What natmap-cni does to start fast: VERSION is answered before "
            "natmap is imported; the guest checks (host sockets, other tables, the bridge's addresses) ask the "
            "kernel through natmap/nlquery.py on the standard library's netlink sockets, not pyroute2; the "
            "iptables backend is imported only where the namespace's legacy filter table exists; nftables' "
            "generation is trusted as every natmap process trusts it, so an ADD reads no table (and builds no "
            "reference table in a scratch namespace) when nothing else changed the ruleset; importing natmap "
            "runs with the garbage collector off (its ~30 collections found nothing: 4-5 ms), and what it made "
            "is frozen (gc.freeze) before collection resumes, or the command's first collection would walk it "
            "all as young (2-3 ms); the process ends by os._exit with natmap's store left open, "
            "so SQLite's checkpoint on close (four fsyncs, 10-25 ms of wall time on this VM's disk) does not "
            "run, and without the last collections. What is left of an ADD (profiled 2026-11-30, installed "
            "layout) is Python's start (about 11 ms), "
            "importing natmap (about 39 ms: the dataclasses module and the inspect, ast, dis and tokenize it "
            "imports, about 8; the 18 frozen dataclasses of the model, specs and CNI values, whose six "
            "generated methods each (__init__, __repr__, __eq__, __hash__ and the frozen __setattr__ and __delattr__) "
            "dataclasses compiles at import, about 0.6 ms a class; re, enum, ipaddress, json, sqlite3 with "
            "datetime, ctypes, threading) and about 10 ms of the command's own work (the store's statements, "
            "the kernel commit as one JSON command, nlquery's questions, the table lock). Not done: a "
            "hand-written frozen-value class in place of dataclasses (rejected: the standard library's, and "
            "mypy's check of frozenness, are kept); dropping slots from the classes with few instances "
            "(measured: no difference); eq=False on the CNI values (they would stop comparing by value); one shared __repr__ in "
            "place of the 18 dataclasses compile (1.4 ms: own code where the standard library's serves).")


def main() -> None:
    load = os.getloadavg()
    why = missing()
    if why:
        sys.exit(f"podman cannot run here: {why}")
    lines = [f"## CNI plugin: podman run + rm, natmap-cni vs portmap ({datetime.date.today()})", "",
             "podman 4.3 (CNI backend), conflist bridge + host-local + the publisher, a busybox container "
             "from a local rootfs; whole `podman` commands, median seconds, the two plugins in turns "
             "after one warm-up round; natmap-cni installed as pip installs it (bench/cni_bench.py).", "",
             "| ports | rounds | natmap run | portmap run | portmap / natmap | natmap rm | portmap rm |",
             "|---|---|---|---|---|---|---|"]
    # the installed copy goes with its temporary directory, whatever happens
    with tempfile.TemporaryDirectory(prefix="natmap-cni-installed-") as venv, Sandbox() as sb1, Sandbox() as sb2, \
            Podman(sb1.host.name, "natmap", executable=installed(Path(venv) / "venv")) as natmap_pm, \
            Podman(sb2.host.name, "portmap") as portmap_pm:
        harness = {"natmap": natmap_pm, "portmap": portmap_pm}
        for plugin in PLUGINS:
            timed_round(harness[plugin], 1, "warmup")
        ratios: dict[int, float] = {}
        for ports in SIZES:
            runs: dict[str, list[float]] = {p: [] for p in PLUGINS}
            rms: dict[str, list[float]] = {p: [] for p in PLUGINS}
            for i in range(ROUNDS[ports]):
                for plugin in PLUGINS if i % 2 == 0 else reversed(PLUGINS):
                    run, rm = timed_round(harness[plugin], ports, f"c{ports}x{i}")
                    runs[plugin].append(run)
                    rms[plugin].append(rm)
                    print(f"{ports:5} ports {plugin:8} run {run:7.3f} s  rm {rm:6.3f} s", flush=True)
            med = {p: statistics.median(runs[p]) for p in PLUGINS}
            ratios[ports] = med["portmap"] / med["natmap"]
            med_rm = {p: statistics.median(rms[p]) for p in PLUGINS}
            lines.append(f"| {ports} | {ROUNDS[ports]} | {med['natmap']:.2f} | {med['portmap']:.2f} | "
                         f"{med['portmap'] / med['natmap']:.2f}x | {med_rm['natmap']:.2f} | "
                         f"{med_rm['portmap']:.2f} |")
        cpu = {"natmap": plugin_cpu(sb1, natmap_pm.executable, "natmap"),
               "portmap": plugin_cpu(sb2, f"{CNI_DIR}/portmap", "portmap")}
        lines += ["", cpu_line(cpu["natmap"], cpu["portmap"])]
    lines += ["", "Load average (1 min) at the start and the end: "
              f"{load[0]:.1f} and {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (a shared machine: "
              "the ratios, measured in turns, are the point).",
              "", "Targets (issue 17): natmap's run at 1,000 ports at least 50x faster than portmap's "
              f"(measured {ratios[1000]:.1f}x: {'holds' if ratios[1000] >= 50 else 'missed'}); within 1.3x of "
              f"portmap's at 1 port (measured: natmap's run takes {1 / ratios[1]:.2f}x portmap's: "
              f"{'holds' if 1 / ratios[1] <= 1.3 else 'missed'}).",
              "", one_port_note(cpu, load[0], os.getloadavg()[0], 1 / ratios[1])]
    section = "\n".join([BEGIN, *lines, END])
    print("\n".join(lines))
    text = RESULTS.read_text() if RESULTS.exists() else ""
    if BEGIN in text and END in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: section, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()

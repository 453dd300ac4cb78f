"""A change whose process was killed after its kernel commit (NATMAP_CRASH_AT)
has its flows cut by the call that finishes it, as the uninterrupted change
cuts them, and before that call marks it done: a second kill after the mark
leaves nothing undone. Real traffic, both backends (the attacker trial's cases)."""

import os
import signal
import subprocess
import sys
from pathlib import Path

from test_kernel_routedcut import Flow, echo_server

NATMAP = str(Path(sys.executable).with_name("natmap"))


def killed(nm, sandbox, step, *argv):
    """``natmap ARGV`` on nm's table, killed at ``step`` as kill -9 would."""
    result = subprocess.run([NATMAP, *argv, "--backend", nm.backend_name, "--netns", sandbox.host.name],
                            env={**os.environ, "NATMAP_CRASH_AT": step}, capture_output=True, text=True)
    assert result.returncode == -signal.SIGKILL, result.stderr


def test_an_isolation_killed_after_its_commit_has_its_flows_cut_by_the_next_call(sandbox, nm):
    db, other = sandbox.container("db01"), sandbox.container("web03")
    db.serve(5432, "udp")
    nm.publish(db.endpoint(), ["5432:5432/udp"])
    nm.isolate(sandbox.bridge)
    nm.unisolate(sandbox.bridge)  # bridged traffic tracked from here on
    flow = other.udp_socket(4)
    assert other.request(db.ip, 5432, "udp", sock=flow)
    killed(nm, sandbox, "kernel-commit", "isolate", sandbox.bridge)
    assert other.request(db.ip, 5432, "udp", sock=flow)  # the rule is in, the flow not yet cut
    nm.repair()
    assert not other.request(db.ip, 5432, "udp", sock=flow, timeout=0.5)
    assert not nm.check()
    flow.close()


def test_a_udp_publish_killed_after_its_commit_has_the_stale_flow_taken_over_by_the_next_call(sandbox, nm):
    web, client = sandbox.container("web01"), sandbox.client("client1")
    web.serve(5353, "udp")
    nm.publish(sandbox.container("db01").endpoint(), ["1:1"])  # the table exists: its rules see the flow
    flow = client.udp_socket(4)
    assert not client.request(sandbox.outside_ip, 5353, "udp", sock=flow, timeout=0.3)  # unanswered: stale
    killed(nm, sandbox, "kernel-commit", "publish", "web01", "--ip", str(web.ip), "--bridge", sandbox.bridge,
           "-p", "5353:5353/udp")
    nm.repair()
    assert client.request(sandbox.outside_ip, 5353, "udp", sock=flow, timeout=1.0)
    flow.close()


def test_a_routed_unpublish_whose_recovery_is_killed_after_its_mark_has_cut_its_flows(sandbox, nm):
    web, client = sandbox.container("web01"), sandbox.client("client1")
    echo_server(web, 7000)
    nm.publish(web.endpoint(), ["8080:7000"])
    nm.set_gateway(sandbox.bridge, "routed")
    flow = Flow(client, web.ip, 7000)
    assert flow.ask() == "web01 answer:ping"
    killed(nm, sandbox, "kernel-commit", "unpublish", "web01")
    killed(nm, sandbox, "store-commit", "repair")  # finishes the change, cut included, then dies
    assert flow.ask(timeout=0.5) is None
    assert not nm.check()
    flow.close()

"""The ``natmap-cni`` executable's entry: VERSION answered before natmap is imported.

A container runtime asks a plugin for its VERSION before each ADD and DEL
(podman does), so this answer is on the path of every ``podman run`` and
``rm``; importing natmap for it would double the process's cost. Every other
command is :func:`natmap.cni.main`'s.
"""

from __future__ import annotations

import os
import sys

# The CNI specification versions natmap-cni speaks (natmap.cni reads them from here).
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")


def version_answer() -> str:
    """VERSION's answer (SPEC.md "VERSION"): the newest version, and every supported one."""
    quoted = ", ".join(f'"{v}"' for v in SUPPORTED_VERSIONS)
    return f'{{"cniVersion": "{SUPPORTED_VERSIONS[-1]}", "supportedVersions": [{quoted}]}}'


def console() -> None:
    """The console script ``natmap-cni``."""
    if os.environ.get("CNI_COMMAND") == "VERSION":
        sys.stdin.buffer.read()  # the runtime writes {"cniVersion": ...}; read it, as it expects
        print(version_answer())
        sys.exit(0)
    import gc

    gc.disable()  # the import makes no garbage to collect (see natmap/__init__.py)
    from natmap.cni import main
    from natmap.store import exit_without_close, leave_open_until_exit

    # What the import made lives as long as the process: frozen, the command's
    # collections do not walk those tens of thousands of objects again (the
    # first one after the import would take them all as young: 2-3 ms of an ADD).
    gc.freeze()
    gc.enable()
    leave_open_until_exit()
    status = main()
    # The process ends now, without a close of natmap's store (its checkpoint's
    # fsyncs: see leave_open_until_exit) and without the last collections, which
    # would walk every object the import made to free memory the kernel takes
    # back anyway. Nothing else is left to do at exit but flushing the answer.
    exit_without_close(status)

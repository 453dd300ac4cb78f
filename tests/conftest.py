"""Every test keeps natmap's state files in a temporary directory, removed
at the end: nothing writes /var/lib/natmap on the machine (the CLI processes
the tests start inherit NATMAP_STATE_DIR)."""

import os
import shutil
import tempfile

import pytest


@pytest.fixture(scope="session", autouse=True)
def natmap_state_dir():
    path = tempfile.mkdtemp(prefix="natmap-state-")
    old = os.environ.get("NATMAP_STATE_DIR")
    os.environ["NATMAP_STATE_DIR"] = path
    try:
        yield path
    finally:
        if old is None:
            os.environ.pop("NATMAP_STATE_DIR", None)
        else:
            os.environ["NATMAP_STATE_DIR"] = old
        shutil.rmtree(path, ignore_errors=True)

"""The lock directory: natmap takes nothing in it that is not its own. No root needed."""

import os

import pytest

from natmap import LockError
from natmap.locking import prepare_dir, sweep


def test_a_lock_dir_natmap_did_not_make_keeps_its_mode_and_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o755)  # whatever the umask took away
    with pytest.raises(LockError, match="mode 0700"):
        prepare_dir(str(shared))
    assert oct(os.stat(shared).st_mode & 0o777) == oct(0o755)  # never chmodded: it may be /run


def test_a_missing_lock_dir_is_made_private(tmp_path):
    prepare_dir(str(tmp_path / "locks"))
    assert os.stat(tmp_path / "locks").st_mode & 0o777 == 0o700


def test_the_sweep_removes_only_files_named_as_natmap_names_its_locks(tmp_path):
    locks = tmp_path / "locks"
    prepare_dir(str(locks))
    others = ["my-app-state.lock", "backup-2026-11-30.lock", "notes.txt", "1-2-bad-name.lock"]
    for name in others:
        (locks / name).write_text("someone else's")
    gone = ["1-2-natmap.lock", "1-2.lock"]  # a namespace (dev 1, inode 2) that does not exist
    for name in gone:
        (locks / name).write_text("")
    sweep(str(locks))
    assert sorted(os.listdir(locks)) == sorted(others)

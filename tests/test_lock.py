"""The run directory's lock: held by a live process, refused to a second one, gone with a killed one."""

import os
import signal

import pytest

from conftest import hold_in_another_process
from pseudolabel.core.errors import PseudoError
from pseudolabel.core.store import RunLock, atomic_write_json


def test_a_second_holder_is_refused_with_the_holders_pid_and_a_killed_holder_frees_it(tmp_path):
    proc = hold_in_another_process(tmp_path)
    try:
        assert RunLock(tmp_path).holder() == f"pid {proc.pid}, pseudo run"
        with pytest.raises(PseudoError, match=rf"in use by another process \(pid {proc.pid}, pseudo run\)"):
            RunLock(tmp_path).acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert RunLock(tmp_path).holder() is None  # the kernel dropped the lock with the process
    with RunLock(tmp_path) as lock:  # and it is taken over at once
        assert RunLock(tmp_path).holder() == f"pid {os.getpid()}, pseudo run"
    assert lock._fh is None and RunLock(tmp_path).holder() is None


def test_no_lock_file_means_nobody_holds_it(tmp_path):
    assert RunLock(tmp_path / "never").holder() is None


def test_run_files_are_readable_by_the_group_as_open_would_make_them(tmp_path):
    mask = os.umask(0o022)
    os.umask(mask)
    atomic_write_json(tmp_path / "a.json", {"x": 1})
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~mask


def test_a_full_disk_while_writing_names_the_file_and_leaves_the_old_one(tmp_path, monkeypatch):
    import errno

    from pseudolabel.cli.commands import _os_error

    target = tmp_path / "metrics.json"
    atomic_write_json(target, {"round": 0})

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")  # as a write on a full disk: no file named

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as caught:
        atomic_write_json(target, {"round": 1})
    assert caught.value.filename == str(target) and caught.value.errno == errno.ENOSPC
    assert target.read_text().strip().replace(" ", "").replace("\n", "") == '{"round":0}'  # the old file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary left behind
    message = _os_error(caught.value)
    assert message.startswith(f"{target}: No space left on device") and "run the same command to resume" in message


def test_a_damaged_array_of_the_run_is_a_one_line_error_naming_it(tmp_path):
    import numpy as np

    from pseudolabel.core.store import atomic_write_npy, load_npy

    path = tmp_path / "unmask_preds.npy"
    atomic_write_npy(path, np.zeros((4, 3), np.float32))
    path.write_bytes(path.read_bytes()[:90])
    with pytest.raises(PseudoError, match=rf"{path}: cannot be read .*delete the folder it is in to recompute it"):
        load_npy(path)
    with pytest.raises(PseudoError, match=rf"{tmp_path / 'none.npy'}: not found"):
        load_npy(tmp_path / "none.npy")

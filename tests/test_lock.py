"""The run directory's lock: held by a live process, refused to a second one, gone with a killed one."""

import os
import signal
import subprocess
import sys

import pytest

from pseudolabel.errors import PseudoError
from pseudolabel.store import RunLock, atomic_write_json

HOLD = "import sys, time; from pseudolabel.store import RunLock; lock = RunLock(sys.argv[1]).acquire('pseudo run'); " \
       "print('held', flush=True); time.sleep(600)"


def hold_in_another_process(folder):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


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

"""The run directory under faults: a real full disk, runs side by side sharing round 0 and the
feature cache, and the same input files named by relative or absolute paths."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading

import pytest
from typer.testing import CliRunner

from conftest import FAST, hold_in_another_process, run_args
from pseudolabel.cli.commands import app
from pseudolabel.rounds.config import round0_key
from pseudolabel.core.store import RunLock, computing

runner = CliRunner()
SMALL = ["--folds", "2", "--epochs", "1"]  # after FAST: the last value of an option wins


def test_a_folder_computed_by_another_process_is_waited_for_and_taken_when_it_ends(tmp_path):
    holder = hold_in_another_process(tmp_path)
    told, taken = [], threading.Event()

    def compute():
        with computing(tmp_path, "pseudo run", told.append):
            taken.set()

    worker = threading.Thread(target=compute)
    try:
        worker.start()
        assert not taken.wait(1.0)  # waits while the other process holds it
        assert told == [f"pid {holder.pid}, pseudo run"]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert taken.wait(10.0)  # the killed holder's lock is taken at once
    worker.join()
    assert RunLock(tmp_path).holder() is None  # released after computing


@pytest.fixture(scope="module")
def relative_run(tiny_data, tiny_encoder, tmp_path_factory):
    """A round-0 run made with input paths relative to the data folder."""
    root = tmp_path_factory.mktemp("runs")
    cwd = os.getcwd()
    os.chdir(tiny_data["train"].parent)
    try:
        result = runner.invoke(app, ["run", "--train", "train.csv", "--test", "test.csv", "--unlabeled",
                                     "unlabeled.csv", "--encoder", str(tiny_encoder), "--run-dir", str(root / "r"),
                                     *FAST, *SMALL, "--rounds", "0"], catch_exceptions=False)
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output
    return root / "r"


@pytest.mark.slow
def test_relative_and_absolute_paths_to_the_same_files_are_the_same_run(relative_run, tiny_data, tiny_encoder,
                                                                         monkeypatch):
    config = json.loads((relative_run / "config.json").read_text())
    assert config["config"]["train"] == str(tiny_data["train"])  # recorded absolute
    result = runner.invoke(app, run_args(tiny_data, tiny_encoder, relative_run, *SMALL, "--rounds", "0"))
    assert result.exit_code == 0, result.output
    assert "made with other options" not in result.output and "round 0: finished earlier, reused" in result.output

    # a run recorded before paths were made absolute (relative paths, their hash, round 0 under their key)
    # continues from the folder it was started in, and keeps its round 0
    relative = {**config["config"], "train": "train.csv", "test": "test.csv", "unlabeled": "unlabeled.csv"}
    from pseudolabel.rounds.config import results_hash

    old_key = round0_key(relative, config["recipe"], config["encoder"]["sha256"])
    stage = (relative_run / "round_0").resolve()
    os.replace(stage, stage.with_name(f"round0-{old_key}"))
    (relative_run / "round_0").unlink()
    os.symlink(f"../.stages/round0-{old_key}", relative_run / "round_0")
    config.update(config=relative, hash=results_hash(relative, config["recipe"]))
    (relative_run / "config.json").write_text(json.dumps(config))
    monkeypatch.chdir(tiny_data["train"].parent)
    result = runner.invoke(app, ["run", "--train", "train.csv", "--test", "test.csv", "--unlabeled", "unlabeled.csv",
                                 "--encoder", str(tiny_encoder), "--run-dir", str(relative_run), *FAST,
                                 *SMALL, "--rounds", "0"])
    assert result.exit_code == 0, result.output
    assert "round 0: finished earlier, reused" in result.output
    assert (relative_run / "round_0").resolve() == stage  # the stage moved to the absolute paths' key
    assert json.loads((relative_run / "config.json").read_text())["config"]["train"] == str(tiny_data["train"])


@pytest.mark.slow
def test_a_run_beside_one_computing_the_shared_round_0_waits_for_it(relative_run, tiny_data, tiny_encoder):
    holder = hold_in_another_process(relative_run / "round_0")  # as a sibling training round 0 holds it
    sibling = relative_run.parent / "sibling"
    proc = subprocess.Popen([sys.executable, "-m", "pseudolabel",
                             *run_args(tiny_data, tiny_encoder, sibling, *SMALL, "--rounds", "0")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "COLUMNS": "1000"})
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "waiting for it" in line:
                break
        assert f"and pid {holder.pid}, pseudo run is computing it: waiting for it" in lines[-1], "".join(lines)
        assert proc.poll() is None  # it waits
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, "".join(lines) + out
    assert "round 0: finished earlier, reused" in out  # computed once, by the holder's run


FULL_DISK = """
set -u
mount -t tmpfs -o size=290k tmpfs "$MNT" || exit 99
python -m pseudolabel "$@"; echo "rc=$?"
mount -o remount,size=2500k "$MNT"
python -m pseudolabel "$@"; echo "rc=$?"
ls -a "$MNT/r/round_0/fold_0"
mount -o remount,size=64m "$MNT"
python -m pseudolabel "$@"; echo "rc=$?"
"""


@pytest.mark.slow
def test_a_really_full_or_read_only_disk_is_one_line_naming_the_file_and_the_same_command_resumes(tiny_data, tiny_encoder,
                                                                                      tmp_path):
    """A real tmpfs (in a private mount namespace): full while caching features, then while saving
    a fold's head weights (HDF5's own error), then enlarged: the same command finishes the run. And
    a read-only one."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {mnt}"],
                           capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {probe.stderr.decode(errors='replace').strip()}")
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", FULL_DISK, "sh",
                           *run_args(tiny_data, tiny_encoder, mnt / "r", *SMALL, "--rounds", "0")],
                          capture_output=True, text=True, env={**os.environ, "MNT": str(mnt), "COLUMNS": "400"},
                          timeout=600)
    out, err = proc.stdout, proc.stderr
    assert out.count("rc=1") == 2 and out.rstrip().endswith("rc=0"), out + err
    errors = [line for line in err.splitlines() if line.strip()]
    assert len(errors) == 2, err  # one line each, no traceback (h5py's finalizers included)
    # the cache is refused up front, or the disk fills while it is written (which one depends on a few KiB
    # of the run directory's own files): either way one line naming the cache entry
    assert "/features/labeled-" in errors[0]
    assert ("features.npy: No space left on device" in errors[0]
            or "the feature cache needs" in errors[0] and "is free" in errors[0]), errors[0]
    assert errors[1].startswith(f"error: {mnt}/r/round_0/fold_0/head.weights.h5: No space left on device")
    assert "run the same command to resume" in errors[1]
    fold_listing = out.split("rc=1")[2]
    assert "head.weights.h5" not in fold_listing and "DONE" not in fold_listing  # nothing half-written kept
    assert "stop reason: max_rounds" in out

    read_only = subprocess.run(["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o ro,size=64k tmpfs "$MNT" && '
                                'exec python -m pseudolabel "$@"', "sh",
                                *run_args(tiny_data, tiny_encoder, mnt / "r", *SMALL, "--rounds", "0")],
                               capture_output=True, text=True, env={**os.environ, "MNT": str(mnt), "COLUMNS": "400"},
                               timeout=600)
    assert read_only.returncode == 1 and read_only.stderr.strip() == f"error: {mnt}/r: Read-only file system", \
        read_only.stderr


def test_a_fatal_error_exits_1_even_where_a_finalizer_would_crash(tmp_path):
    """After a failed HDF5 write the interpreter's finalizers can crash (exit 139): the console script leaves
    with the error's exit code without running them. A finalizer that crashes stands in for HDF5's here."""
    script = ("import atexit, faulthandler, sys; atexit.register(faulthandler._sigsegv); "
              "sys.argv = ['pseudo', 'run', '--folds', '1', '--run-dir', sys.argv[1]]; "
              "from pseudolabel.cli import main; main()")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "r")], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
    assert done.stderr.strip() == "error: folds must be >= 2, got 1", done.stderr
    assert not (tmp_path / "r").exists()
    # a success still runs the finalizers (and so the crashing one): only fatal errors skip them
    ok = subprocess.run([sys.executable, "-c", script.replace("'run', '--folds', '1', '--run-dir', sys.argv[1]",
                                                              "'--help'")],
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == -11, ok.returncode

"""Kill a real `pseudo run` (SIGKILL) in the middle of round 1, resume it, compare with an uninterrupted run."""

import json
import os
import shlex
import signal
import subprocess
import sys
import pytest
import time

import numpy as np

from typer.testing import CliRunner

from conftest import REPO, run_args
from pseudolabel.cli.commands import app

runner = CliRunner()

TOLERANCE = 1e-4  # largest difference allowed between resumed and uninterrupted predictions


def start(args, log):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "130"}
    return subprocess.Popen([sys.executable, "-m", "pseudolabel", *args], cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_sigkill_mid_round_then_resume(tiny_data, tiny_encoder, tmp_path):
    extra = ["--rounds", "1", "--strategy", "top-k", "--top-k", "20", "--force"]
    killed_dir = tmp_path / "killed"
    with open(tmp_path / "killed.log", "wb") as log:
        proc = start(run_args(tiny_data, tiny_encoder, killed_dir, *extra), log)
        deadline = time.time() + 600
        while not (killed_dir / "round_0" / "fold_0" / "DONE").exists():
            assert proc.poll() is None, (tmp_path / "killed.log").read_text()
            assert time.time() < deadline
            time.sleep(0.02)
        # while it runs: the run directory is locked against a second run, and report says who holds it
        second = runner.invoke(app, run_args(tiny_data, tiny_encoder, killed_dir, *extra))
        assert second.exit_code == 1 and f"in use by another process (pid {proc.pid}, pseudo run)" in second.output
        state = json.loads(runner.invoke(app, ["report", "--run-dir", str(killed_dir), "--json"]).output)
        assert state["running"] is True and state["finished"] is False and state["holder"].startswith(f"pid {proc.pid}")
        marker = killed_dir / "round_1" / "fold_0" / "DONE"
        # the fold's line comes just after its DONE: a machine under load may not have printed it yet
        while not (marker.exists() and "round 1 fold 0: " in (tmp_path / "killed.log").read_text()):
            assert proc.poll() is None, (tmp_path / "killed.log").read_text()
            assert time.time() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (killed_dir / "round_1" / "DONE").exists()
    done_before = {p.parent.name: p.stat().st_mtime_ns for p in (killed_dir / "round_1").glob("fold_*/DONE")}
    weights_before = {name: (killed_dir / "round_1" / name / "head.weights.h5").stat().st_mtime_ns
                      for name in done_before}
    r0_before = (killed_dir / "round_0" / "unmask_preds.npy").stat().st_mtime_ns
    assert "fold_0" in done_before and len(done_before) < 3
    log = (tmp_path / "killed.log").read_text()  # a log file, not a terminal: a plain line per finished fold
    assert "round 0 fold 2: " in log and "round 1 fold 0: " in log and "validation macro-F1" in log

    # the killed run's lock went with it; report says how far it got and the command that resumes it
    report = runner.invoke(app, ["report", "--run-dir", str(killed_dir)])
    assert report.exit_code == 0 and "final output" not in report.output
    assert f"stopped before finishing: 1 round(s) finished of rounds 0-1; round 1: {len(done_before)} of 3 folds " \
           f"finished" in " ".join(report.output.split())
    state = json.loads(runner.invoke(app, ["report", "--run-dir", str(killed_dir), "--json"]).output)
    assert state["finished"] is False and state["running"] is False and state["final"] is None
    assert state["folds_finished_in_current_round"] == len(done_before)
    command = shlex.split(state["resume_command"])
    assert command[:2] == ["pseudo", "run"] and command[command.index("--run-dir") + 1] == str(killed_dir)

    resumed = subprocess.run([sys.executable, "-m", "pseudolabel", *command[1:]],
                             cwd=REPO, capture_output=True, text=True, env={**os.environ, "COLUMNS": "130"})
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    out = resumed.stdout
    assert "round 0: finished earlier, reused" in out
    for name in done_before:
        assert f"round 1 fold {int(name[-1])}: finished earlier, reused" in out
        assert (killed_dir / "round_1" / name / "head.weights.h5").stat().st_mtime_ns == weights_before[name]
        assert (killed_dir / "round_1" / name / "DONE").stat().st_mtime_ns == done_before[name]
    assert (killed_dir / "round_0" / "unmask_preds.npy").stat().st_mtime_ns == r0_before
    assert "reusing cached features" in out and "encode labeled" not in out
    assert (killed_dir / "round_1" / "DONE").is_file()

    clean_dir = tmp_path / "clean"
    clean = subprocess.run([sys.executable, "-m", "pseudolabel", *run_args(tiny_data, tiny_encoder, clean_dir, *extra)],
                           cwd=REPO, capture_output=True, text=True)
    assert clean.returncode == 0, clean.stderr
    for noise in ("Skipping variable loading", "triggered tf.function retracing"):  # TensorFlow's log lines
        assert noise not in clean.stdout + clean.stderr
    for name in ("round_0/oof_preds.npy", "round_1/pseudo_labels.npy", "round_1/oof_preds.npy",
                 "round_1/test_preds.npy", "round_1/unmask_preds.npy"):
        a = np.load(killed_dir / name, allow_pickle=False)
        b = np.load(clean_dir / name, allow_pickle=False)
        np.testing.assert_allclose(a, b, atol=TOLERANCE, err_msg=name)

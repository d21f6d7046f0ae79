"""Kill a real `pseudo run` (SIGKILL) in the middle of round 1, resume it, compare with an uninterrupted run."""

import os
import signal
import subprocess
import sys
import pytest
import time

import numpy as np

from conftest import REPO, run_args

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
        marker = killed_dir / "round_1" / "fold_0" / "DONE"
        while not marker.exists():
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

    resumed = subprocess.run([sys.executable, "-m", "pseudolabel", *run_args(tiny_data, tiny_encoder, killed_dir,
                                                                              *extra)],
                             cwd=REPO, capture_output=True, text=True, env={**os.environ, "COLUMNS": "130"})
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    out = resumed.stdout
    assert "round 0: finished earlier, reused" in out
    for name in done_before:
        assert f"round 1 fold {int(name[-1]) + 1}: finished earlier, reused" in out
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

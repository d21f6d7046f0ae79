"""`--executor ray` on a real local Ray cluster (127.0.0.1, 2 CPUs, started and stopped by each run): the
same numbers as `--executor local`, a fold whose worker is killed retried to the same numbers, a killed driver
resumed by either executor, the shared-storage check, and bad input in one line."""

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import REPO, run_args
from pseudolabel.cli.commands import app
from pseudolabel.core.errors import PseudoError

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray")  # the optional extra: pip install -e ".[ray]" (scripts/test.sh installs it)

runner = CliRunner()
EXTRA = ["--rounds", "1", "--folds", "3", "--strategy", "top-k", "--top-k", "20", "--force"]
RAY = ["--executor", "ray", "--fold-cpus", "1"]
ARRAYS = ["round_0/oof_preds.npy", "round_0/test_preds.npy", "round_0/unmask_preds.npy", "round_0/holdout_preds.npy",
          "round_1/oof_preds.npy", "round_1/test_preds.npy", "round_1/unmask_preds.npy", "final_test_preds.npy"]
# the runs these tests start carry a mark their Ray processes inherit: the tests see and kill those alone, never
# the processes of another Ray run on the same machine
MARK_NAME, MARK_VALUE = "PSEUDO_TEST_RAY", str(os.getpid())
MARK = f"{MARK_NAME}={MARK_VALUE}"
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", "RAY_ADDRESS": "", MARK_NAME: MARK_VALUE}


def same_run(a, b):
    for name in ARRAYS:
        # later rounds train and score length-grouped batches, whose shapes a process's traced functions meet in
        # another order than another process's: float rounding apart (about 1e-5), not more
        atol = 1e-5 if name.startswith("round_0/") else 1e-4
        np.testing.assert_allclose(np.load(a / name), np.load(b / name), rtol=0, atol=atol, err_msg=name)
    assert (a / "submission.csv").read_text() == (b / "submission.csv").read_text()


@pytest.fixture(scope="module")
def local_run(tiny_data, tiny_encoder, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "local"
    result = runner.invoke(app, run_args(tiny_data, tiny_encoder, run_dir, *EXTRA), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return run_dir


def start(args, log):
    return subprocess.Popen([sys.executable, "-m", "pseudolabel", *args], cwd=REPO, env=ENV, stdout=log,
                            stderr=subprocess.STDOUT)


def ray_processes(pattern: str = "ray::") -> set[int]:
    """PIDs of the Ray processes of the runs these tests started (workers are titled after their task:
    `ray::fold_task` while training), told from other runs' by the mark in their environment."""
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
    return {int(pid) for pid in found if _marked(int(pid))}


def _marked(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            return MARK.encode() in fh.read().split(b"\0")
    except OSError:  # ended meanwhile, or not ours to read
        return False


def fold_workers() -> set[int]:
    return ray_processes("ray::fold_task")


def test_a_killed_worker_is_retried_and_a_killed_driver_leaves_a_run_either_executor_resumes(
        local_run, tiny_data, tiny_encoder, tmp_path):
    """One Ray run: a fold worker of round 0 killed (its fold retried), then the driver killed once a fold of
    round 1 is done; the stopped run, copied, is resumed by each executor to the local run's numbers."""
    run_dir = tmp_path / "killed" / "run"
    before = ray_processes()
    with open(tmp_path / "run.log", "wb") as log:
        proc = start(run_args(tiny_data, tiny_encoder, run_dir, *EXTRA, *RAY), log)
        deadline, killed = time.time() + 1200, None  # a hang, not a slow machine
        while not list((run_dir / "round_1").glob("fold_*/DONE")):
            assert proc.poll() is None, (tmp_path / "run.log").read_text()
            assert time.time() < deadline, "no fold task seen" if killed is None else "no fold of round 1 done"
            workers = fold_workers() if killed is None else set()
            if workers:
                killed = min(workers)
                os.kill(killed, signal.SIGKILL)
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    out = (tmp_path / "run.log").read_text()
    assert killed is not None and (run_dir / "round_0" / "DONE").is_file(), out
    assert "executor ray: 2 CPUs" in out and "up to 2 folds at a time" in out, out
    assert "round 0: test, pool, holdout scored in 3 Ray task(s)" in out  # one chunk each at this size
    assert "round 1: 3 fold(s) submitted as Ray tasks" in out
    for split, rows, tasks in (("labeled", 90, 2), ("test", 20, 1), ("unlabeled", 60, 1)):  # 64-post batches
        assert any(line.startswith(f"· {split}-") and f": {rows} posts encoded in {tasks} Ray task(s)" in line
                   for line in out.splitlines()), out
    for i in range(3):  # one line per fold, the killed one's too (printed once, when its retry finished)
        assert sum(line.startswith(f"round 0 fold {i}: ") for line in out.splitlines()) == 1, out
    deadline = time.time() + 60
    while fold_workers() and time.time() < deadline:  # the workers of a dead driver stop training
        time.sleep(0.5)
    assert fold_workers() == set()
    for pid in ray_processes() - before:  # a SIGKILLed driver leaves its node's idle agents: `ray stop` ends them
        os.kill(pid, signal.SIGKILL)
    # the same stopped run twice (its shared stages beside it, linked relatively), resumed by each executor;
    # round 0 (the retried fold's included) and the finished fold of round 1 are the Ray run's own
    shutil.copytree(tmp_path / "killed", tmp_path / "killed-copy", symlinks=True)
    for resume_with, folder in (("local", run_dir), ("ray", tmp_path / "killed-copy" / "run")):
        args = run_args(tiny_data, tiny_encoder, folder, *EXTRA, *(RAY if resume_with == "ray" else []))
        with open(tmp_path / f"resume-{resume_with}.log", "wb") as log:
            assert start(args, log).wait(timeout=900) == 0, (tmp_path / f"resume-{resume_with}.log").read_text()
        assert "finished earlier, reused" in (tmp_path / f"resume-{resume_with}.log").read_text()
        same_run(folder, local_run)  # the same numbers as --executor local
    assert fold_workers() == set()  # the local Ray instance went with the run


def test_the_storage_check_names_what_the_driver_cannot_see(tmp_path):
    from pseudolabel.rounds.executor import PROBE, check_shared

    with pytest.raises(PseudoError, match="cannot read it: the run directory must be on storage every node mounts"):
        check_shared(tmp_path, "node-a", "token")
    (tmp_path / PROBE).mkdir()
    (tmp_path / PROBE / "token").write_text("node-b")
    with pytest.raises(PseudoError, match="another process writes the same run directory"):
        check_shared(tmp_path, "node-a", "token")
    assert not (tmp_path / PROBE / "token").exists()


def test_ray_options_that_cannot_work_are_one_line(tiny_data, tiny_encoder, tmp_path, monkeypatch):
    def fails(*extra, says):
        result = runner.invoke(app, run_args(tiny_data, tiny_encoder, tmp_path / "r", "--rounds", "0", *extra))
        assert result.exit_code == 1 and says in result.output and "Traceback" not in result.output, result.output

    fails("--executor", "spark", says="executor must be one of local, ray, got 'spark'")
    fails(*RAY, "--mode", "faithful", "--recipe", "seed", says="executor ray trains folds on cached features")
    fails(*RAY, "--stream", "test", says="executor ray trains folds on cached features")
    fails("--executor", "ray", "--fold-cpus", "0", says="fold-cpus must be")
    fails("--executor", "ray", "--fold-cpus", "64", says="fold-cpus 64 / fold-gpus 0: the Ray cluster has")
    monkeypatch.setitem(sys.modules, "ray", None)  # Ray not installed
    fails(*RAY, says='executor ray needs Ray: pip install -e ".[ray]"')


def test_predict_on_ray_actors_keeps_the_input_order_and_the_numbers(local_run, tiny_data, tmp_path):
    from conftest import read_rows

    local, on_ray = tmp_path / "local.csv", tmp_path / "ray.csv"
    args = ["predict", str(tiny_data["test"]), "--run-dir", str(local_run), "--chunk-rows", "7"]
    assert runner.invoke(app, [*args, "--out", str(local)]).exit_code == 0
    result = runner.invoke(app, [*args, "--out", str(on_ray), "--executor", "ray", "--concurrency", "2"])
    assert result.exit_code == 0, result.output
    a, b = read_rows(local), read_rows(on_ray)
    assert [r[:2] for r in a] == [r[:2] for r in b] and len(a) == 21  # ids in the input's order, same labels
    np.testing.assert_allclose(np.array([r[2:] for r in a[1:]], float), np.array([r[2:] for r in b[1:]], float),
                               rtol=0, atol=1e-5)  # length-grouped chunks: float rounding apart
    bad = runner.invoke(app, [*args, "--out", str(on_ray), "--executor", "dask"])
    assert bad.exit_code == 1 and "executor must be one of local, ray, got 'dask'" in bad.output

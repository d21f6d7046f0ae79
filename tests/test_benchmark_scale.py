"""benchmarks/scale.py runs end to end at a tiny size: two sizes of a real run, the per-post costs of a small
encoder, and the projection through --plan's cost model (its figures are not checked here)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import DATA, REPO, VOCAB


@pytest.mark.slow
def test_scale_runs_at_a_tiny_size(tmp_path, tiny_encoder):
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "scale.py"), "--sizes", "60:40,90:60", "--rounds", "1",
         "--max-len", "16", "--threads", "1", "--force", "--encoder", str(tiny_encoder),
         "--run-options=--epochs 1 --min-steps 0 --batch-size 16 --folds 2",
         "--train", str(DATA / "train.labeled.csv"), "--test", str(DATA / "test.csv"),
         "--unlabeled", str(DATA / "unlabeled.csv"), "--vocab", str(VOCAB), "--base-shape", "1:32", "--base-len", "16",
         "--base-posts", "32", "--work", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    table = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in out.splitlines() if line.startswith("| ")}
    for stage in ("features labeled", "round 0 train", "later rounds train", "later rounds score", "whole run",
                  "peak RSS", "disk"):
        assert stage in table, (stage, out)
        assert len(table[stage]) == 3  # two sizes and the fitted exponent
        float(table[stage][-1])
    assert table["whole run ÷ round 0"][-1].strip() == "–" and all(c.strip().endswith("×")
                                                                  for c in table["whole run ÷ round 0"][:-1])
    assert "| encode (frozen encoder) |" in out and "| train (head) |" in out
    assert "100,000 labeled / 10,000 test / 500,000 pool" in out
    assert "| round 2 |" in out and "| total |" in out and "GPU rates assumed" in out
    # 100,000 labeled posts: --student auto fine-tunes the later rounds, and their cost is estimated too
    assert "| tune (fine-tuned student) |" in out and "| tune_score (fine-tuned student) |" in out
    round2 = next(line for line in out.splitlines() if line.startswith("| round 2 |"))
    assert "fine-tuned student:" in round2 and "not estimated" not in round2, round2

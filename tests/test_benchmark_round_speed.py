"""benchmarks/round_speed.py runs end to end at a tiny size (its figures are not checked here)."""

from __future__ import annotations

import subprocess
import sys
import pytest

from conftest import REPO


@pytest.mark.slow
def test_round_speed_runs_at_a_tiny_size(tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "round_speed.py"), "--labeled", "60", "--test", "10",
         "--unlabeled", "20", "--layers", "1", "--hidden", "32", "--heads", "2", "--intermediate", "64",
         "--max-len", "16", "--folds", "2", "--score-rows", "40", "--tokenize-file", str(REPO / "data" / "unlabeled.csv"),
         "--tokenize-rows", "300"],
        capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "tokenization of 300 posts" in out and "pseudo tokenize (segments)" in out
    assert "ratio (a)/(b) = " in out and "(a)/(c) = " in out
    assert "encoder passes per distinct text over rounds 0 and 1: 1.00 (90 texts encoded, 90 distinct)" in out
    assert "recipe seed, 2 folds" in out and "scoring 40 cached pool rows with 2 heads" in out

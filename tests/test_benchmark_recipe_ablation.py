"""benchmarks/recipe_ablation.py runs end to end at a tiny size (its figures are not checked here)."""

from __future__ import annotations

import json
import subprocess
import sys
import pytest

from conftest import REPO


@pytest.mark.slow
def test_recipe_ablation_runs_at_a_tiny_size(tmp_path, tiny_data, tiny_encoder):
    out = tmp_path / "ablation.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "recipe_ablation.py"), "--train", str(tiny_data["train"]),
         "--encoder", str(tiny_encoder), "--rows", "60", "--max-len", "16", "--folds-used", "1",
         "--variants", "seed,default", "--cache", str(tmp_path / "cache"), "--json", str(out)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert [r["variant"] for r in rows] == ["linear probe (mean+max pool, LR)", "seed", "default"]
    for row in rows:
        assert row["scores"]["n"] == 12  # fold 1 of 5 of the 60 rows
        assert 0.0 <= row["scores"]["macro_f1"] <= 1.0
    assert "| default |" in done.stdout

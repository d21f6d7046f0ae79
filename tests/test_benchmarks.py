"""The benchmark scripts run end to end at a tiny size (their figures are not checked here)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO


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


def test_scarce_labels_runs_at_a_tiny_size(tmp_path, tiny_encoder):
    out = tmp_path / "scarce.json"
    variants = ["threshold 0.9 (reference)", "class-balanced soft +noise"]
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "scarce_labels.py"), "--train", str(REPO / "data" / "train.labeled.csv"),
         "--encoder", str(tiny_encoder), "--rows", "300", "--labeled-share", "0.3", "--max-len", "16",
         "--epochs", "2", "--batch-size", "16", "--min-steps", "0", "--folds", "3", "--rounds", "1", "--seeds", "0",
         "--variants", ",".join(variants), "--force", "--work", str(tmp_path / "work"), "--json", str(out)],
        capture_output=True, text=True, timeout=900, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    [entry] = json.loads(out.read_text())
    labeled, pool, evaluation = entry["sizes"]
    assert labeled + pool + evaluation == 300 and evaluation == 60
    assert set(entry["anchor"]) == {"supervised", "self-training 0.9", "self-training k_best"}
    first, second = (entry["variants"][v] for v in variants)
    assert first[0]["eval_f1"] == second[0]["eval_f1"]  # round 0 is shared by the variants of a seed
    assert first[0]["delivered"] and second[0]["delivered"]  # no holdout: pseudo rounds cannot be judged
    for rounds in (first, second):
        assert [r["round"] for r in rounds][0] == 0
        assert sum(r["delivered"] for r in rounds) == 1
        for r in rounds:
            assert 0.0 <= r["eval_f1"] <= 1.0
            if r["round"] >= 1 and r["n_pseudo"]:
                assert 0.0 <= r["precision"] <= 1.0
    assert "| class-balanced soft +noise |" in done.stdout

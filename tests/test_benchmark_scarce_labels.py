"""benchmarks/scarce_labels.py runs end to end at a tiny size (its figures are not checked here)."""

from __future__ import annotations

import json
import subprocess
import sys
import numpy as np
import pytest

from conftest import REPO, read_rows
from pseudolabel.core.store import load_npy
from pseudolabel.data.metrics import scores
from pseudolabel.data.posts import load_labeled, load_unlabeled


@pytest.mark.slow
def test_scarce_labels_runs_at_a_tiny_size(tmp_path, tiny_encoder):
    out = tmp_path / "scarce.json"
    variants = ["threshold 0.9 (reference)", "class-balanced soft +noise"]
    command = [sys.executable, str(REPO / "benchmarks" / "scarce_labels.py"), "--train",
               str(REPO / "data" / "train.labeled.csv"), "--encoder", str(tiny_encoder), "--rows", "300",
               "--labeled-per-class", "25", "--max-len", "16", "--epochs", "2", "--batch-size", "16", "--min-steps", "0",
               "--folds", "2", "--seeds", "0", "--force", "--work", str(tmp_path / "work"), "--json", str(out)]
    done = subprocess.run(command + ["--rounds", "1", "--variants", ",".join(variants)],
                          capture_output=True, text=True, timeout=900, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    [entry] = json.loads(out.read_text())
    labeled, pool, evaluation = entry["sizes"]
    assert labeled + pool + evaluation == 300 and evaluation == 60 and labeled == 75  # 25 of each class
    labels = [row[-1] for row in read_rows(tmp_path / "work" / "seed0" / "labeled.csv")[1:]]
    assert sorted(set(labels)) == ["-1", "0", "1"] and all(labels.count(c) == 25 for c in set(labels))
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
    assert "delivered - threshold 0.9 (reference)'s delivered" in done.stdout
    # --resume continues a variant's run (its rounds kept) and gives a new variant the seed's round 0
    kept = tmp_path / "work" / "seed0" / "threshold_0.9__reference" / "round_1" / "DONE"
    before = kept.stat().st_mtime_ns
    again = subprocess.run(command + ["--rounds", "2", "--resume", "--variants",
                                      "threshold 0.9 (reference),whole pool ensemble soft +co-teacher 0.5"],
                           capture_output=True, text=True, timeout=900, cwd=REPO)
    assert again.returncode == 0, again.stderr[-2000:]
    assert kept.stat().st_mtime_ns == before
    [entry2] = json.loads(out.read_text())
    resumed = entry2["variants"]["threshold 0.9 (reference)"]
    new = entry2["variants"]["whole pool ensemble soft +co-teacher 0.5"]
    assert [r["round"] for r in resumed] == [0, 1, 2] and resumed[:2] == first
    assert new[0]["eval_f1"] == first[0]["eval_f1"] and new[1]["n_pseudo"] == pool  # the whole pool, blended
    assert (tmp_path / "work" / "seed0" / "whole_pool_ensemble_soft__co-teacher_0.5" / "co_teacher" / "DONE").exists()
    assert 0.0 <= entry2["teacher_blend"] <= 1.0 and "| round 0 + TF-IDF + LR, even blend" in again.stdout
    # the variants share one round 0 and one feature cache through the seed folder's .stages/, no copies
    seed_dir = tmp_path / "work" / "seed0"
    links = [seed_dir / slug / "round_0" for slug in ("threshold_0.9__reference", "class-balanced_soft__noise",
                                                      "whole_pool_ensemble_soft__co-teacher_0.5")]
    assert all(link.is_symlink() for link in links)
    assert len({link.resolve() for link in links}) == 1 and links[0].resolve().parent == seed_dir / ".stages"
    assert (seed_dir / "threshold_0.9__reference" / "features").resolve() == seed_dir / ".stages" / "features"


@pytest.mark.slow
def test_full_labels_with_a_pool_file_compares_the_student_seed_by_seed(tmp_path, tiny_encoder):
    """--labeled-share 1 (every non-evaluation row labeled) with a pool from an unlabeled file: the sizes,
    no precision (the pool has no labels), and the student against the frozen head and fine-tuning alone."""
    out = tmp_path / "full.json"
    variants = ["default", "default +fine-tuned student", "fine-tuned round 0", "fine-tuned round 0 + student"]
    command = [sys.executable, str(REPO / "benchmarks" / "scarce_labels.py"), "--train",
               str(REPO / "data" / "train.labeled.csv"), "--encoder", str(tiny_encoder), "--rows", "200",
               "--labeled-share", "1", "--pool-file", str(REPO / "data" / "unlabeled.csv"), "--pool-rows", "40",
               "--max-len", "16", "--epochs", "1", "--batch-size", "16", "--min-steps", "0", "--folds", "2",
               "--rounds", "1", "--seeds", "0", "--force", "--work", str(tmp_path / "work"), "--json", str(out),
               "--variants", ",".join(variants)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    [entry] = json.loads(out.read_text())
    assert entry["sizes"] == [160, 40, 40]
    head, student, tuned, throughout = (entry["variants"][v] for v in variants)
    same = ("eval_f1", "oof_f1")
    assert [head[0][k] for k in same] == [student[0][k] for k in same] and len(tuned) == 1  # round 0 shared
    assert student[1]["n_pseudo"] == head[1]["n_pseudo"] and student[1]["mix"] == head[1]["mix"]
    assert head[1]["precision"] is None and student[1]["eval_f1"] != head[1]["eval_f1"]
    gain = 100 * (student[1]["eval_f1"] - head[1]["eval_f1"])
    assert f"| default +fine-tuned student, round 1 | default, round 1 | {gain:+.1f} | {gain:+.2f} |" in done.stdout
    assert "| fine-tuned round 0, round 0 | default, round 0 |" in done.stdout
    # fine-tuned throughout: its own round 0 (the holdout kept, unlike --rounds 0), its student against it, and
    # every round's fold ensemble against the supervised TF-IDF + LR of the same split
    assert len(throughout) == 2 and throughout[0]["eval_f1"] != head[0]["eval_f1"]
    gain = 100 * (throughout[1]["eval_f1"] - throughout[0]["eval_f1"])
    assert (f"| fine-tuned round 0 + student, round 1 | fine-tuned round 0 + student, round 0 | {gain:+.1f} | "
            f"{gain:+.2f} |") in done.stdout
    for name, rounds in zip(variants, (head, student, tuned, throughout)):
        for r in rounds:
            gain = 100 * (r["eval_f1"] - entry["anchor"]["supervised"])
            assert (f"| {name}, round {r['round']} | char TF-IDF + LR (supervised) | {gain:+.1f} | {gain:+.2f} |"
                    in done.stdout)
    # delivery_rules.py replays the default rule on the same runs and scores what the run delivered; the rules that
    # pick one candidate never beat the best candidate on the evaluation split (the rounds' mean is no candidate)
    seed_dir = tmp_path / "work" / "seed0"
    replay = [sys.executable, str(REPO / "benchmarks" / "delivery_rules.py"), "--train",
              str(REPO / "data" / "train.labeled.csv")]
    runs = {name: seed_dir / name.replace(" ", "_").replace("+", "_")
            for name in (variants[0], variants[1], variants[3])}
    done = subprocess.run(replay + [str(p) for p in runs.values()], capture_output=True, text=True, timeout=300,
                          cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    for name, run in runs.items():
        table = done.stdout.split(f"\n{run.name}: ")[1].split("\n\n")[0]
        values = {line.split(" | ")[0].lstrip("| "): float(line.split(" | ")[1]) for line in table.splitlines()[3:]}
        assert len(values) == 7
        assert values["rounds' mean, even blend (the default)"] == round(entry["delivered"][name]["eval_f1"], 4)
        picks = ("holdout (--deliver auto)", "holdout + OOF", "last round, even blend", "best on evaluation")
        assert max(values[rule] for rule in picks) == values["best on evaluation"]
    # --through-round 0: each run replayed as if it had stopped after round 0, whose rounds' mean is round 0's
    # fold ensemble blended evenly with the co-teacher's evaluation rows
    done = subprocess.run(replay + ["--through-round", "0", str(runs[variants[0]])], capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    table = done.stdout.split(f"\n{runs[variants[0]].name} (rounds up to 0): ")[1]
    values = {line.split(" | ")[0].lstrip("| "): float(line.split(" | ")[1]) for line in table.splitlines()[3:10]}
    first = runs[variants[0]]
    source = load_labeled(str(REPO / "data" / "train.labeled.csv"))
    truth = dict(zip(source.ids, source.labels))
    eval_labels = np.array([truth[i] for i in load_unlabeled(str(seed_dir / "eval.csv"), limit=None).ids])
    probs = 0.5 * load_npy(first / "round_0" / "test_preds.npy").mean(axis=0) + 0.5 * load_npy(
        first / "co_teacher" / "test_preds.npy")
    expected = scores(eval_labels, probs)["macro_f1"]
    assert values["rounds' mean, even blend (the default)"] == values["last round, even blend"] == round(expected, 4)
    # a run without a co-teacher (--rounds 0) has no blend to replay: one line, exit 1
    done = subprocess.run(replay + [str(seed_dir / "fine-tuned_round_0")], capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert done.returncode == 1 and "fine-tuned_round_0: no co-teacher predictions" in done.stderr
    assert "Traceback" not in done.stderr


def test_tables_average_over_the_seeds_that_reached_a_round(capsys):
    """A seed whose run stopped at round 0 (a collapsed round 0) leaves later rounds to the other seeds: the
    tables say how many seeds a mean is over and mark the missing seed, instead of printing nan."""
    import importlib.util
    from types import SimpleNamespace

    spec = importlib.util.spec_from_file_location("scarce_labels", REPO / "benchmarks" / "scarce_labels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def rounds(*f1s):
        return [{"round": k, "eval_f1": f, "oof_f1": f, "n_pseudo": 10 * k, "precision": 0.8 if k else None,
                 "mix": [k, k, k], "delivered": k == 0, "seconds": 10.0} for k, f in enumerate(f1s)]

    names = ["default", "uncertainty"]
    results = [{"seed": 0, "sizes": [90, 200, 100], "anchor": {"supervised": 0.6}, "teacher_blend": 0.65,
                "variants": {"default": rounds(0.60, 0.62), "uncertainty": rounds(0.60, 0.65)},
                "delivered": {n: {"eval_f1": 0.60} for n in names}},
               {"seed": 1, "sizes": [90, 200, 100], "anchor": {"supervised": 0.6}, "teacher_blend": 0.65,
                "variants": {"default": rounds(0.50), "uncertainty": rounds(0.50)},
                "delivered": {n: {"eval_f1": 0.50} for n in names}}]
    args = SimpleNamespace(train="train.csv", seeds="0,1", folds=5, max_len=16, epochs=None, encoder="enc")
    module.report(results, names, args, 1.0)
    out = capsys.readouterr().out
    assert "nan" not in out
    assert "| uncertainty | 1 | 0.6500 ± 0.0000 (1 of 2 seeds) | 0.8000 ± 0.0000 | 10 ± 0 | 1.00 |" in out
    assert "| uncertainty, round 1 | default, round 1 | +3.0, – | +3.00 | +3.0 |" in out

"""Pseudo-labels that cannot hurt: no class drift by default, soft targets, a noised student, best round."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import run_args
from pseudolabel.cli.commands import app
from pseudolabel.rounds.loop import RunConfig
from pseudolabel.rounds.selection import mix_drift, pseudo_targets
from pseudolabel.rounds.deliver import choose
from pseudolabel.rounds.select import counts_per_class, select


def _skewed_pool(n=3000, seed=0):
    """A pool whose confident predictions are mostly class 2 (the drift the issue measured)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, 3)) + np.array([0.0, -0.5, 1.5])
    p = np.exp(3 * logits)
    return p / p.sum(axis=1, keepdims=True)


def test_default_selection_keeps_the_mix_at_the_prior_on_a_skewed_pool():
    probs = _skewed_pool()
    prior = np.array([0.30, 0.17, 0.53])
    default = RunConfig(train="", test=None, unlabeled=None, encoder="", run_dir="")
    assert default.strategy == "class-balanced"
    chosen = counts_per_class(select(probs, default.strategy, 0.9, prior=prior))
    plain = counts_per_class(select(probs, "threshold", 0.9))
    assert sum(chosen) >= 100
    assert mix_drift(plain, prior) > 0.3  # thresholding alone drifts to the majority class
    assert mix_drift(chosen, prior) <= 0.02  # the stated bound: the prior up to rounding
    assert np.allclose(np.array(chosen) / sum(chosen), prior, atol=0.02)


def test_soft_targets_are_the_teachers_sharpened_probabilities():
    probs = np.array([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.5, 0.4, 0.1]])
    labels = probs.argmax(axis=1)
    rows = np.array([0, 1])
    hard = pseudo_targets(labels, rows, None)
    assert hard.tolist() == [[1, 0, 0], [0, 0, 1]]
    soft = pseudo_targets(labels, rows, probs)
    np.testing.assert_allclose(soft, probs[:2], rtol=1e-6)
    sharp = pseudo_targets(labels, rows, probs, sharpen=0.5)
    np.testing.assert_allclose(sharp.sum(axis=1), 1.0, rtol=1e-6)
    assert (sharp.max(axis=1) > soft.max(axis=1)).all()
    np.testing.assert_allclose(sharp[0], np.array([0.36, 0.09, 0.01]) / 0.46, rtol=1e-5)


@pytest.mark.slow
def test_run_with_soft_targets_and_a_noised_student_delivers_its_best_round(tiny_data, tiny_encoder, tmp_path):
    run_dir = tmp_path / "soft"
    result = CliRunner().invoke(app, run_args(tiny_data, tiny_encoder, run_dir, "--rounds", "1", "--threshold",
                                              "0.34", "--soft-targets", "--sharpen", "0.5", "--student-noise", "0.2",
                                              "--student-token-dropout", "0.1",
                                              "--holdout", "0.2", "--force"), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    fold = json.loads((run_dir / "round_1" / "fold_0" / "fold.json").read_text())
    assert fold["n_train_pseudo"] > 0 and fold["pseudo_targets"] == "soft"
    metrics = json.loads((run_dir / "round_1" / "metrics.json").read_text())
    assert metrics["recipe"].endswith("+noise0.2+tokdrop0.1")
    assert "noise" not in json.loads((run_dir / "round_0" / "metrics.json").read_text())["recipe"]
    final = json.loads((run_dir / "final.json").read_text())
    rounds = [json.loads((run_dir / f"round_{k}" / "metrics.json").read_text()) for k in (0, 1)]
    assert final["metric"] == "holdout"  # the fold ensemble's score on posts no fold trained on
    assert (final["round"], final["weight"]) == (choose(rounds)["round"], choose(rounds)["weight"])
    assert final["value"] >= rounds[0]["holdout"]["macro_f1"]
    delivered = (run_dir / "submission.csv").read_text()
    name = "submission_blend.csv" if final["weight"] > 0 else "submission.csv"
    assert delivered == (run_dir / f"round_{final['round']}" / name).read_text()
    assert len(list(csv.reader(delivered.splitlines()))) == 21
    assert "final output: round" in result.output
    report = json.loads(CliRunner().invoke(app, ["report", "--run-dir", str(run_dir), "--json"]).output)
    assert report["final"]["round"] == final["round"]


@pytest.mark.parametrize("args, message", [
    (["--sharpen", "0"], "sharpen must be > 0, got 0.0"),
    (["--student-noise", "-1"], "student-noise must be >= 0, got -1.0"),
    (["--student-token-dropout", "1"], "student-token-dropout must be in [0, 1), got 1.0"),
])
def test_bad_pseudo_options(tiny_data, tiny_encoder, tmp_path, args, message):
    result = CliRunner().invoke(app, run_args(tiny_data, tiny_encoder, tmp_path / "bad", *args))
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output


def test_the_defaults_of_pseudo_rounds():
    """Rounds >= 1 learn from the co-teacher blend over all the pool the prior allows, with a holdout
    that scores the delivered output (the rounds' mean); a round-0-only run keeps every labeled row for training."""
    common = dict(train="a.csv", test="b.csv", unlabeled="c.csv", encoder="e", run_dir="x")
    rounds = RunConfig(**common, rounds=2)
    assert (rounds.co_teacher, rounds.strategy, rounds.threshold, rounds.top_k) == (0.5, "class-balanced", None, None)
    assert rounds.holdout == 0.15 and rounds.deliver == "mean" and rounds.pseudo_source == "fold"
    assert RunConfig(**common).holdout == 0.0
    assert RunConfig(**common, rounds=2, holdout=0.0).holdout == 0.0

"""The co-teacher: a TF-IDF + logistic regression view whose pool predictions are blended into the
probabilities pseudo-labels are selected from."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import run_args
from pseudolabel.cli.commands import app
from pseudolabel.rounds.coteacher import tfidf_teacher
from pseudolabel.rounds.cv import HOLDOUT
from pseudolabel.data.posts import load_labeled, load_unlabeled
from pseudolabel.rounds.select import select
from pseudolabel.core.store import load_npy


def test_each_fold_model_learns_from_its_training_part_only(tiny_data):
    labeled = load_labeled(tiny_data["train"])
    pool = load_unlabeled(tiny_data["unlabeled"])
    folds = np.arange(len(labeled.labels)) % 3
    folds[:6] = HOLDOUT
    out, info = tfidf_teacher(labeled.texts, labeled.labels, folds, pool.texts)
    probs = out["pool"]
    assert probs.shape == (3, len(pool.texts), 3) and out["holdout"].shape == (3, 6, 3) and out["test"] is None
    np.testing.assert_array_equal(out["oof"][folds == HOLDOUT], 0.0)
    np.testing.assert_allclose(probs.sum(axis=2), 1.0, atol=1e-5)
    assert info["oof"]["n"] == len(labeled.labels) - 6 and info["vocabulary"] > 0
    # relabel fold 0's validation rows and the holdout: fold 0's model must not move, the others must
    changed = labeled.labels.copy()
    moved = (folds == 0) | (folds == HOLDOUT)
    changed[moved] = (changed[moved] + 1) % 3
    again = tfidf_teacher(labeled.texts, changed, folds, pool.texts)[0]["pool"]
    np.testing.assert_allclose(again[0], probs[0], atol=1e-6)
    assert np.abs(again[1] - probs[1]).max() > 1e-3 and np.abs(again[2] - probs[2]).max() > 1e-3


def test_without_a_holdout_and_with_a_test_file(tiny_data):
    """A run without a holdout (e.g. `--rounds 0`) still has a co-teacher; the test file is scored by a
    model refit on every labeled row."""
    labeled = load_labeled(tiny_data["train"])
    test = load_unlabeled(tiny_data["test"])
    folds = np.arange(len(labeled.labels)) % 3
    out, info = tfidf_teacher(labeled.texts, labeled.labels, folds, None, test.texts)
    assert out["holdout"].shape == (3, 0, 3) and out["pool"] is None and info["holdout"] is None
    assert out["test"].shape == (len(test.texts), 3) and info["oof"]["n"] == len(labeled.labels)
    np.testing.assert_allclose(out["test"].sum(axis=1), 1.0, atol=1e-5)
    flipped = tfidf_teacher(labeled.texts, (labeled.labels + 1) % 3, folds, None, test.texts)[0]["test"]
    assert np.abs(flipped - out["test"]).max() > 1e-3  # the refit model learns from the labels


@pytest.mark.slow
def test_run_selects_from_the_blend_and_select_uses_it_too(tiny_data, tiny_encoder, tmp_path):
    run_dir = tmp_path / "co"
    result = CliRunner().invoke(app, run_args(tiny_data, tiny_encoder, run_dir, "--rounds", "1", "--co-teacher",
                                              "0.5", "--threshold", "0.34", "--strategy", "threshold", "--force"),
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "co-teacher: OOF macro-F1" in result.output
    # the note names the rows each fold's model fits on: neither its own fold nor the holdout
    folds = load_npy(run_dir / "round_0" / "folds.npy")
    fits = sorted({int(((folds >= 0) & (folds != f)).sum()) for f in range(int(folds.max()) + 1)})
    shown = f"{fits[0]}" if len(fits) == 1 else f"{fits[0]}–{fits[-1]}"
    assert f"co-teacher: fitting TF-IDF + logistic regression per fold on {shown} of the {len(folds)} labeled" \
        in result.output
    head = load_npy(run_dir / "round_0" / "unmask_preds.npy")
    co = load_npy(run_dir / "co_teacher" / "pool_preds.npy")
    assert co.shape == head.shape and not np.allclose(co, head, atol=1e-2)
    blend = 0.5 * head + 0.5 * co
    labels = load_npy(run_dir / "round_1" / "pseudo_labels.npy")
    for fold in range(3):  # fold source: fold k's head with fold k's co-teacher
        np.testing.assert_array_equal(labels[fold], select(blend[fold], "threshold", 0.34))
    np.testing.assert_allclose(load_npy(run_dir / "round_1" / "pseudo_confidence.npy"), blend.max(axis=2),
                               atol=1e-6)
    assert json.loads((run_dir / "round_1" / "selection.json").read_text())["co_teacher"] == 0.5
    # `pseudo select` re-selects from the same blend (the co-teacher is computed once, then read back)
    again = CliRunner().invoke(app, ["select", "--run-dir", str(run_dir), "--round", "1", "--strategy", "threshold",
                                     "--threshold", "0.5", "--force"])
    assert again.exit_code == 0, again.output
    round1 = load_npy(run_dir / "round_1" / "unmask_preds.npy")
    blend1 = 0.5 * round1 + 0.5 * co
    written = load_npy(run_dir / "round_2" / "pseudo_labels.npy")
    for fold in range(3):
        np.testing.assert_array_equal(written[fold], select(blend1[fold], "threshold", 0.5))


def test_bad_co_teacher_share(tiny_data, tiny_encoder, tmp_path):
    result = CliRunner().invoke(app, run_args(tiny_data, tiny_encoder, tmp_path / "bad", "--co-teacher", "1.5"))
    assert result.exit_code == 1 and "co-teacher must be in [0, 1], got 1.5" in result.output
    assert "Traceback" not in result.output

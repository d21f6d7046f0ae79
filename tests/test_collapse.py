"""A head that learned nothing is marked collapsed, shown in red, and never feeds the selector."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import run_args
from pseudolabel.rounds import cv
from pseudolabel.core._tf import keras
from pseudolabel.cli.commands import app
from pseudolabel.data.metrics import collapse_reason, majority_macro_f1, scores

runner = CliRunner()


def test_collapse_rules():
    labels = np.array([0] * 30 + [1] * 10 + [2] * 60)
    assert collapse_reason(labels, np.full(100, 2)) == "(almost) never predicts class -1, 0"
    assert collapse_reason(labels, labels) is None
    # all classes predicted but no better than always saying the majority
    noisy = np.array([2] * 98 + [0, 1])
    assert collapse_reason(labels, noisy) is not None
    # a class predicted for a stray row or two (under 1% of rows) is still missing
    stray = np.full(1682, 2)
    stray[:11] = [0] + [1] * 10
    assert collapse_reason(np.repeat([0, 1, 2], [555, 295, 832]), stray) == "(almost) never predicts class -1, 0"
    rare = np.array([0] * 48 + [1] * 2 + [2] * 50)  # class 0 (label 0) has 2% of labels: may go unpredicted
    assert collapse_reason(rare, np.where(rare == 1, 2, rare)) is None
    assert majority_macro_f1(labels) == pytest.approx((2 * 0.6 / 1.6) / 3)


def one_class_head(max_len, hidden, recipe, compile=True):
    """A real, trainable head whose output is pinned to class 1 (label 1)."""
    feats = keras.Input((max_len, hidden))
    x = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling1D()(feats))
    out = keras.layers.Lambda(lambda t: 0.0 * t + np.array([0.1, 0.1, 0.8], np.float32))(x)
    model = keras.Model(feats, out)
    if compile:
        model.compile("adam", "categorical_crossentropy")
    return model


def test_forced_one_class_round_is_collapsed_and_refused(tiny_data, tiny_encoder, tmp_path, monkeypatch):
    monkeypatch.setattr(cv, "build_head", one_class_head)
    run_dir = tmp_path / "collapsed"
    result = runner.invoke(app, run_args(tiny_data, tiny_encoder, run_dir, "--rounds", "1", "--no-standardize"))
    assert result.exit_code == 0, result.output
    metrics = json.loads((run_dir / "round_0" / "metrics.json").read_text())
    assert metrics["collapsed"] and metrics["collapsed_folds"] == [0, 1, 2]
    assert metrics["oof"]["collapse_reason"] == "(almost) never predicts class -1, 0"
    assert "collapsed" in result.output and "stop reason: collapsed" in result.output
    assert not (run_dir / "round_1").exists()  # nothing was selected from it
    refused = runner.invoke(app, ["select", "--run-dir", str(run_dir), "--threshold", "0.5"])
    assert refused.exit_code == 1 and "round 0 collapsed" in refused.output and "--force" in refused.output
    forced = runner.invoke(app, ["select", "--run-dir", str(run_dir), "--threshold", "0.5", "--force"])
    assert forced.exit_code == 0 and (run_dir / "round_1" / "pseudo_labels.npy").is_file()


def test_scores_mark_collapse():
    labels = np.array([0, 1, 2, 2, 2, 1, 0, 2])
    probs = np.tile([0.2, 0.2, 0.6], (8, 1))
    s = scores(labels, probs)
    assert s["collapsed"] and s["predicted_per_class"] == {"-1": 0, "0": 0, "1": 8}

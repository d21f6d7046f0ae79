"""Scoring: every fold head's weights behind one model, each head predicting as it would alone."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

import pseudolabel.rounds.cv as cv
from conftest import ArrayFeatures
from pseudolabel.rounds.cv import FeatureSource, FoldHeads, predict
from pseudolabel.heads.model import RECIPES, build_head
from pseudolabel.core.progress import Progress


def test_fold_heads_behind_one_model_predict_as_each_head_alone(monkeypatch):
    """Scoring swaps every fold's weights into one model; each head's predictions stay its own."""
    monkeypatch.setattr(cv, "PREDICT_CHUNK", 8)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(21, 12, 6)).astype(np.float32)
    recipe = replace(RECIPES["default"], gru_units=4, dense_units=(8, 8))
    alone, weights = [], []
    for seed in range(3):
        cv.keras.utils.set_random_seed(seed)
        head = build_head(12, 6, recipe)
        alone.append(np.concatenate([head.predict_on_batch(x[i:i + 8]) for i in range(0, 21, 8)]))
        weights.append(head.get_weights())
    shared = FoldHeads(build_head(12, 6, recipe, compile=False), weights)
    got = predict(shared, FeatureSource(ArrayFeatures(x, np.full(21, 12))), Progress(), "t")
    assert got.shape == (3, 21, 3)
    for m in range(3):
        np.testing.assert_array_equal(got[m], alone[m])
    assert not np.allclose(got[0], got[1])  # the heads differ, so a missed swap would show

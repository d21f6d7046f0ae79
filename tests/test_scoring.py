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


def test_chunks_scored_apart_in_groups_equal_predict_with_dynamic_padding(monkeypatch):
    """What a Ray scoring task computes (cv.score_chunk over some of cv.score_chunks) is what predict gives,
    length-sorted chunks cut to their longest row included: grouping the chunks changes no number."""
    monkeypatch.setattr(cv, "PREDICT_CHUNK", 8)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(29, 16, 6)).astype(np.float32)
    lengths = rng.integers(2, 17, 29)
    recipe = replace(RECIPES["default"], gru_units=4, dense_units=(8, 8))
    heads = FoldHeads(build_head(16, 6, recipe, compile=False),
                      [build_head(16, 6, recipe).get_weights() for _ in range(2)])
    source = FeatureSource(ArrayFeatures(x, lengths))
    idx = np.arange(3, 29)
    whole = predict(heads, source, Progress(), "t", idx, dynamic=True)
    chunks = cv.score_chunks(source, idx, True)
    assert len(chunks) == 4 and sorted(np.concatenate(chunks).tolist()) == list(range(26))
    apart = np.zeros_like(whole)
    for group in np.array_split(np.arange(len(chunks)), 2):
        at = np.concatenate([chunks[i] for i in group])
        apart[:, at] = np.concatenate([cv.score_chunk(heads, source, idx[chunks[i]], True) for i in group], axis=1)
    np.testing.assert_array_equal(apart, whole)
    cut_elsewhere = cv.score_chunk(heads, source, idx[np.sort(np.concatenate(chunks[:2]))], True)
    assert not np.array_equal(cut_elsewhere, whole[:, np.sort(np.concatenate(chunks[:2]))])  # padding matters

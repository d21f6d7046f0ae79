"""One traced training head serves every fold of a round, and each fold trains as on a new head."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from conftest import ArrayFeatures
from pseudolabel.core._tf import keras
from pseudolabel.core.store import RoundFiles
from pseudolabel.rounds.cv import FeatureSource, FoldHeads, RoundPlan, TrainingHeads, load_heads, make_folds, predict, train_fold
from pseudolabel.heads.model import RECIPES, build_head, reset_random_layers
from pseudolabel.core.progress import Progress

# every random layer of the head switched on: feature noise, token dropout, SpatialDropout1D, Dropout
RECIPE = replace(RECIPES["default"], gru_units=8, dense_units=(16, 8), epochs=2, min_steps=0, batch_size=16,
                 precise_bn=64, feature_noise=0.3, token_dropout=0.2, spatial_dropout=0.2)


def make_plan(folder, recipe=RECIPE, heads=None) -> RoundPlan:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 30)
    lengths = rng.integers(3, 12, len(labels))
    x = rng.normal(size=(len(labels), 12, 6)).astype(np.float32) + labels[:, None, None] * 0.3
    return RoundPlan(round=0, files=RoundFiles(folder), mode="cached", recipe=recipe, max_len=12, hidden=6,
                     labels=labels,
                     folds=make_folds(labels, 3), labeled=FeatureSource(ArrayFeatures(x, lengths)), test=None,
                     unlabeled=None, heads=heads or TrainingHeads())


@pytest.mark.slow
def test_a_fold_on_the_reused_head_equals_the_fold_on_a_new_head(tmp_path):
    plan = make_plan(tmp_path / "together")
    records = [train_fold(plan, fold, Progress()) for fold in range(3)]
    head = plan.heads.kept.model
    plan.heads.release()
    assert plan.heads.kept is None

    alone = make_plan(tmp_path / "alone")
    record = train_fold(alone, 2, Progress())  # as a resumed run trains it: first fold of a new process
    assert alone.heads.kept.model is not head
    np.testing.assert_allclose(np.load(alone.files.path / "fold_2" / "valid_preds.npy"),
                               np.load(plan.files.path / "fold_2" / "valid_preds.npy"), rtol=0, atol=1e-6)
    assert record["history"] == records[2]["history"]
    alone.heads.release()


@pytest.mark.slow
def test_the_training_function_is_traced_once_per_recipe_not_per_fold(tmp_path):
    plan = make_plan(tmp_path / "run")
    counts = []
    for fold in range(3):
        train_fold(plan, fold, Progress())
        counts.append(plan.heads.kept.model.train_function.experimental_get_tracing_count())
    # the first fold traces (its first call twice, as it creates the optimizer's slots; then a shape
    # general enough for every batch); the folds after it trace nothing
    assert counts[0] == counts[1] == counts[2] <= 3

    # the round's scoring runs on the same model, each fold's saved weights swapped in; its
    # predictions are those of a new model with the same weights, up to float32 rounding (the
    # functions are traced for other shapes, measured 2e-6 apart)
    heads = load_heads(plan)
    assert heads.model is plan.heads.kept.model
    got = predict(heads, plan.labeled, Progress(), "score")
    paths = [plan.files.path / f"fold_{fold}" / "head.weights.h5" for fold in range(3)]
    alone = FoldHeads.load(build_head(12, 6, RECIPE, compile=False), paths)
    np.testing.assert_allclose(got, predict(alone, plan.labeled, Progress(), "score"), rtol=0, atol=2e-5)
    valid = np.load(plan.files.path / "fold_1" / "valid_idx.npy")
    np.testing.assert_allclose(got[1, valid], np.load(plan.files.path / "fold_1" / "valid_preds.npy"), atol=2e-5)
    assert counts[2] == plan.heads.kept.model.train_function.experimental_get_tracing_count()

    later = replace(make_plan(tmp_path / "run", heads=plan.heads), round=1)  # the next round, same recipe: the same model
    train_fold(later, 0, Progress())
    assert plan.heads.kept.model is heads.model
    other = make_plan(tmp_path / "other", replace(RECIPE, dropout=0.3), plan.heads)  # another recipe: a new head
    first = plan.heads.kept.model
    train_fold(other, 0, Progress())
    assert plan.heads.kept.model is not first
    plan.heads.release()


def test_a_reset_that_cannot_reach_a_random_layer_is_an_error(monkeypatch):
    """If tf_keras moved the generator, resetting must fail loudly, not do nothing."""
    model = build_head(12, 6, RECIPE)
    dropout = next(layer for layer in model.layers if isinstance(layer, keras.layers.SpatialDropout1D))
    monkeypatch.setattr(dropout, "_random_generator", object())
    with pytest.raises(RuntimeError, match="keeps no tf.random.Generator"):
        reset_random_layers(model, 1)


def test_random_layers_follow_the_seed_they_are_reset_to():
    model = build_head(12, 6, RECIPE)
    dropout = next(layer for layer in model.layers if isinstance(layer, keras.layers.SpatialDropout1D))
    x = np.ones((4, 12, 6), np.float32)

    def masks(seed):
        reset_random_layers(model, seed)
        return [dropout(x, training=True).numpy() for _ in range(2)]

    first, again, other = masks(5), masks(5), masks(6)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], first[1])  # the stream moves on within a fold
    assert not np.array_equal(first[0], other[0])  # and starts elsewhere for another seed


def test_token_dropout_drops_whole_positions_while_training_only():
    recipe = replace(RECIPE, feature_noise=0.0, token_dropout=0.25)
    model = build_head(40, 6, recipe)
    layer = model.get_layer("token_dropout")
    reset_random_layers(model, 0)
    x = np.random.default_rng(0).normal(size=(64, 40, 6)).astype(np.float32) + 3.0
    out = layer(x, training=True).numpy()
    dropped = (out == 0).all(axis=-1)
    kept = (out != 0).all(axis=-1)
    assert (dropped | kept).all()  # a position loses its whole feature vector or none of it
    assert 0.2 < dropped.mean() < 0.3
    np.testing.assert_allclose(out[kept], x[kept] / 0.75, rtol=1e-6)
    np.testing.assert_array_equal(layer(x, training=False).numpy(), x)

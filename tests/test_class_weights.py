"""Per-class decision weights (`--class-weights auto`): the search finds what a biased model needs, stays at 1
where nothing is gained, and its cross-fitted estimate does not flatter itself as the in-sample score does."""

import numpy as np
import pytest
from sklearn.metrics import f1_score

from pseudolabel.data.metrics import macro_f1_rows
from pseudolabel.rounds.class_weights import WEIGHT_GRID, class_weight_record, cross_fitted, search, weighted_labels


def biased(n=900, seed=0):
    """Probabilities that know the label but under-predict the neutral class."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    probs = rng.dirichlet(np.ones(3), n)
    probs[np.arange(n), labels] += 0.5
    probs[:, 1] *= 0.45
    return labels, probs / probs.sum(axis=1, keepdims=True)


def test_macro_f1_rows_is_sklearns_macro_f1_of_each_row():
    rng = np.random.default_rng(3)
    labels, predicted = rng.integers(0, 3, (4, 50)), rng.integers(0, 3, (4, 50))
    predicted[2] = 0  # a class never predicted scores 0
    want = [f1_score(y, p, labels=range(3), average="macro", zero_division=0) for y, p in zip(labels, predicted)]
    np.testing.assert_allclose(macro_f1_rows(labels, predicted), want)


def test_the_search_corrects_an_under_predicted_class_and_stays_at_1_where_nothing_is_gained():
    labels, probs = biased()
    weights = search(labels, probs)
    assert weights[1] == 1.0 and weights[0] < 1 and weights[2] < 1  # the neutral class gains against both others
    f1 = lambda w: f1_score(labels, weighted_labels(probs, w), average="macro")  # noqa: E731
    assert f1(weights) > f1(None) + 0.05
    assert (weighted_labels(probs, None) == probs.argmax(axis=1)).all()
    perfect = np.eye(3)[labels] * 0.9 + 0.05  # every weight in the grid labels these the same: no change
    assert search(labels, perfect).tolist() == [1.0, 1.0, 1.0]


def test_the_cross_fitted_estimate_does_not_flatter_itself():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 3, 300)
    noise = rng.dirichlet(np.ones(3), 300)  # no signal: any gain from weights is fitted to the rows
    in_sample = f1_score(labels, weighted_labels(noise, search(labels, noise)), average="macro")
    record = class_weight_record(labels, noise)
    assert record["parts"] == 5 and record["rows"] == 300 and record["estimate"] < in_sample
    assert record["unweighted"] == pytest.approx(f1_score(labels, noise.argmax(axis=1), average="macro"))
    real = class_weight_record(*biased())  # a real bias: the gain survives cross-fitting
    assert real["estimate"] > real["unweighted"] + 0.05 and real["leak_free"]
    fitted, parts = cross_fitted(np.array([0, 0, 0, 1, 1, 1, 2, 2]), np.full((8, 3), 1 / 3))
    assert parts == 2 and len(fitted) == 8  # the smallest class has 2 rows: 2 parts
    assert cross_fitted(np.array([0, 0, 1, 1, 2]), np.full((5, 3), 1 / 3))[1] == 1  # one row of a class: in-sample


def test_the_smallest_grid_weight_that_fixes_a_shy_class_is_found():
    """The negative class is under-predicted (0.4 against 0.6): the grid's first weight above 1.5 makes every
    row right; rows already right keep no weighting."""
    labels = np.array([0, 0, 1, 1, 2, 2])
    probs = np.array([[0.4, 0.6, 0.0], [0.4, 0.6, 0.0], [0.3, 0.7, 0.0], [0.1, 0.9, 0.0],
                      [0.0, 0.2, 0.8], [0.1, 0.1, 0.8]])
    weights = search(labels, probs)
    assert (weighted_labels(probs, weights) == labels).all() and (weighted_labels(probs, None) != labels).any()
    assert weights[1] == 1.0 and weights[2] == 1.0 and weights[0] == min(w for w in WEIGHT_GRID if w > 1.5)
    assert search(labels, np.eye(3)[labels]).tolist() == [1.0, 1.0, 1.0]

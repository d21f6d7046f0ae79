"""Selectors: boundaries, per-class thresholds, class balance, top-k, errors; calibration."""

import numpy as np
import pytest

from pseudolabel.rounds.calibrate import apply_temperature, expected_calibration_error, fit_temperature
from pseudolabel.core.errors import PseudoError
from pseudolabel.rounds.select import (NOT_SELECTED, class_balanced_mask, counts_per_class, per_class_mask, select,
                                sweep, threshold_mask, top_k_mask)

P = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8], [0.05, 0.05, 0.9], [0.34, 0.33, 0.33]])


def test_threshold_is_inclusive():
    assert threshold_mask(P, 0.9).tolist() == [True, False, False, True, False]
    assert threshold_mask(P, 0.90001).sum() == 0
    assert select(P, "threshold", 0.8).tolist() == [0, NOT_SELECTED, 2, 2, NOT_SELECTED]
    assert threshold_mask(P, 1.0).sum() == 0 and threshold_mask(np.eye(3), 1.0).all()


@pytest.mark.parametrize("bad", [0, -0.1, 1.2])
def test_threshold_out_of_range(bad):
    with pytest.raises(PseudoError, match=rf"threshold must be in \(0, 1\], got {bad}"):
        select(P, "threshold", bad)


def test_unknown_strategy():
    with pytest.raises(PseudoError, match="strategy must be one of threshold, per-class, class-balanced, uncertainty, top-k"):
        select(P, "greedy", 0.9)


def test_per_class_thresholds():
    mask = per_class_mask(P, [0.95, 0.6, 0.85])
    assert mask.tolist() == [False, True, False, True, False]


def test_top_k():
    assert top_k_mask(P, 2).tolist() == [True, False, False, True, False]
    assert select(P, "top-k", 0.9, top_k=3).tolist() == [0, NOT_SELECTED, 2, 2, NOT_SELECTED]


def test_class_balanced_keeps_the_prior_on_a_skewed_pool():
    rng = np.random.default_rng(0)
    # a pool that the model thinks is 80% positive
    logits = rng.normal(size=(2000, 3)) + np.array([0.0, -0.5, 1.8])
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    prior = np.array([0.30, 0.17, 0.53])
    mask = class_balanced_mask(probs, prior, cap=600)
    counts = np.bincount(probs[mask].argmax(axis=1), minlength=3)
    assert 0 < counts.sum() <= 600
    np.testing.assert_allclose(counts / counts.sum(), prior, atol=0.01)
    # within each class the most confident rows are taken
    conf = probs.max(axis=1)
    for c in range(3):
        chosen = conf[mask & (probs.argmax(axis=1) == c)]
        rest = conf[~mask & (probs.argmax(axis=1) == c)]
        if len(rest):  # a class short of candidates gives all it has
            assert chosen.min() >= rest.max()
    # plain thresholding drifts to the majority class on the same pool
    plain = np.bincount(probs[threshold_mask(probs, 0.6)].argmax(axis=1), minlength=3)
    assert plain[2] / plain.sum() > 0.7


def test_sweep_counts_and_precision():
    oof = np.array([[0.95, 0.03, 0.02], [0.1, 0.85, 0.05], [0.6, 0.3, 0.1]])
    rows = sweep(P, [0.5, 0.9], oof, np.array([0, 2, 0]))
    assert rows[0]["selected"] == 4 and rows[0]["per_class"] == [1, 1, 2]
    assert rows[1]["selected"] == 2 and rows[1]["oof_selected"] == 1 and rows[1]["oof_precision"] == 1.0
    assert rows[0]["oof_precision"] == pytest.approx(2 / 3)
    assert counts_per_class(select(P, "threshold", 0.5)) == [1, 1, 2]


def test_temperature_scaling_lowers_ece_on_held_back_rows():
    rng = np.random.default_rng(3)
    n = 4000
    labels = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3)) * 0.4
    logits[np.arange(n), labels] += 0.9
    true_probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(3, p=p) for p in true_probs])
    under = apply_temperature(true_probs, 3.0)  # a model whose confidence is too low, as focal loss makes
    fit, held = slice(0, 2000), slice(2000, None)
    t = fit_temperature(under[fit], labels[fit])
    assert 0.2 < t < 0.5  # undoes the softening by 3
    before = expected_calibration_error(under[held], labels[held])
    after = expected_calibration_error(apply_temperature(under[held], t), labels[held])
    assert after < before * 0.5

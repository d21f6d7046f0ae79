"""Scores of a set of predictions, and the check that a model learned something at all."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from .posts import N_CLASSES

MIN_CLASS_SHARE = 0.05  # a class with at least this share of labels must be predicted...
MIN_PREDICTED_SHARE = 0.01  # ...for at least this share of the rows (a handful of stray rows do not count)


def majority_macro_f1(labels: np.ndarray) -> float:
    """Macro-F1 of predicting the most frequent class for every row."""
    labels = np.asarray(labels)
    majority = np.bincount(labels, minlength=N_CLASSES).argmax()
    return float(f1_score(labels, np.full_like(labels, majority), labels=range(N_CLASSES), average="macro",
                          zero_division=0))


def collapse_reason(labels: np.ndarray, predicted: np.ndarray) -> str | None:
    """Why these predictions show a model that learned nothing, or None if they do not."""
    labels, predicted = np.asarray(labels), np.asarray(predicted)
    if len(labels) == 0:
        return None
    shares = np.bincount(labels, minlength=N_CLASSES) / len(labels)
    predicted_shares = np.bincount(predicted, minlength=N_CLASSES) / len(predicted)
    missing = [c for c in range(N_CLASSES)
               if shares[c] >= MIN_CLASS_SHARE and predicted_shares[c] < MIN_PREDICTED_SHARE]
    if missing:
        names = ", ".join(str(c - 1) for c in missing)
        return f"(almost) never predicts class {names}"
    macro = f1_score(labels, predicted, labels=range(N_CLASSES), average="macro", zero_division=0)
    if macro <= majority_macro_f1(labels) + 1e-9:
        return f"macro-F1 {macro:.3f} not above the majority-class baseline"
    return None


def resampled_macro_f1(labels: np.ndarray, predicted: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """(len(draws),): the macro-F1 of `predicted` against `labels` on each row of `draws` (row indices, one
    resample per row), as `scores` computes it (a class with neither support nor predictions scores 0)."""
    labels, predicted = np.asarray(labels), np.asarray(predicted)
    return macro_f1_rows(labels[draws], predicted[draws])


def macro_f1_rows(labels: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """(D,): the macro-F1 of each row of `predicted` (D, N) against the same row of `labels` (D, N), class
    indices, as `scores` computes it."""
    cells = np.asarray(labels) * N_CLASSES + np.asarray(predicted)  # a confusion-matrix cell per row and post
    offsets = np.arange(len(cells))[:, None] * N_CLASSES ** 2
    confusion = np.bincount((cells + offsets).ravel(), minlength=len(cells) * N_CLASSES ** 2)
    confusion = confusion.reshape(len(cells), N_CLASSES, N_CLASSES)
    hits = np.diagonal(confusion, axis1=1, axis2=2)
    denominator = confusion.sum(axis=1) + confusion.sum(axis=2)  # 2 TP + FP + FN, per class
    f1 = np.divide(2 * hits, denominator, out=np.zeros(hits.shape), where=denominator > 0)
    return f1.mean(axis=1)


def scores(labels: np.ndarray, probs: np.ndarray) -> dict:
    """Macro-F1, per-class F1 (keys -1/0/1), accuracy, confusion matrix, collapse verdict."""
    labels = np.asarray(labels)
    predicted = np.asarray(probs).argmax(axis=1)
    per_class = f1_score(labels, predicted, labels=range(N_CLASSES), average=None, zero_division=0)
    reason = collapse_reason(labels, predicted)
    return {
        "n": int(len(labels)),
        "macro_f1": float(f1_score(labels, predicted, labels=range(N_CLASSES), average="macro", zero_division=0)),
        "f1_per_class": {str(c - 1): float(f) for c, f in enumerate(per_class)},
        "accuracy": float(accuracy_score(labels, predicted)),
        "confusion": confusion_matrix(labels, predicted, labels=range(N_CLASSES)).tolist(),
        "predicted_per_class": {str(c - 1): int(n) for c, n in enumerate(np.bincount(predicted, minlength=N_CLASSES))},
        "collapsed": reason is not None,
        "collapse_reason": reason,
    }

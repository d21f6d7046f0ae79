"""Per-class decision weights (`--class-weights auto`): the delivered label of a post is argmax(p · w) of its
delivered probabilities p, with w = (w_-1, 1, w_1) searched for the best macro-F1 on every labeled post.

The estimation rows are what the run knows of its delivered output on labeled posts no model trained on: the
holdout, scored by the fold ensembles, and every other labeled post scored by the fold models that did not
train on it (OOF), each averaged over the delivered rounds and blended with the co-teacher as delivered
(`deliver.estimation_probs`). w_-1 and w_1 each take a value of WEIGHT_GRID (0.5 to 2, 13 steps, 1 among
them); the best macro-F1 wins, ties go to the weights nearest 1 (the smallest sum of |log w|), so weights
that change nothing stay at 1.

A weight searched on the same rows it is scored on flatters itself, so the estimate is cross-fitted: the rows
are cut into PARTS stratified parts; each part's labels come from weights searched on the other parts; the
macro-F1 of those labels over all rows is set beside the unweighted macro-F1 of the same rows. The weights
delivered are those searched on every row.
"""

from __future__ import annotations

import numpy as np

from ..core.constants import N_CLASSES
from ..data.metrics import macro_f1_rows

CLASS_WEIGHTS = ("none", "auto")
WEIGHT_GRID = np.exp(np.linspace(np.log(0.5), np.log(2.0), 13))
PARTS = 5
GRID = np.array([(low, 1.0, high) for low in WEIGHT_GRID for high in WEIGHT_GRID])  # (169, 3)
STEP = 13  # weight vectors scored at a time (memory: STEP x rows x 3 floats)


def weighted_labels(probs: np.ndarray, weights) -> np.ndarray:
    """Class indices argmax(p · w); `weights` None: argmax(p)."""
    probs = np.asarray(probs)
    return probs.argmax(axis=1) if weights is None else (probs * np.asarray(weights)[None, :]).argmax(axis=1)


def search(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """The weights of GRID with the best macro-F1 of argmax(p · w) on these rows; ties: the nearest to 1."""
    labels, probs = np.asarray(labels), np.asarray(probs)
    f1 = np.concatenate([macro_f1_rows(np.broadcast_to(labels, (len(part), len(labels))),
                                       (probs[None, :, :] * part[:, None, :]).argmax(axis=2))
                         for part in np.array_split(GRID, max(1, len(GRID) // STEP))])
    distance = np.abs(np.log(GRID)).sum(axis=1)
    return GRID[np.lexsort((distance, -np.round(f1, 12)))[0]]


def cross_fitted(labels: np.ndarray, probs: np.ndarray, parts: int = PARTS, seed: int = 0) -> tuple[np.ndarray, int]:
    """Each row's label from weights searched on the other parts, and the number of parts used (fewer where a
    class has fewer rows than PARTS; 1: too few rows to cross-fit, the in-sample labels)."""
    from sklearn.model_selection import StratifiedKFold

    labels, probs = np.asarray(labels), np.asarray(probs)
    counts = np.bincount(labels, minlength=N_CLASSES)
    parts = int(min(parts, counts[counts > 0].min())) if counts.any() else 0
    if parts < 2:
        return weighted_labels(probs, search(labels, probs)), 1
    out = np.empty(len(labels), np.int64)
    for rest, part in StratifiedKFold(parts, shuffle=True, random_state=seed).split(probs, labels):
        out[part] = weighted_labels(probs[part], search(labels[rest], probs[rest]))
    return out, parts


def class_weight_record(labels: np.ndarray, probs: np.ndarray, leak_free: bool = True) -> dict:
    """final.json's `class_weights`: the weights, and the cross-fitted estimate beside the unweighted score."""
    labels = np.asarray(labels)
    weights = search(labels, probs)
    fitted, parts = cross_fitted(labels, probs)
    plain = weighted_labels(probs, None)
    estimate, unweighted = (float(v) for v in macro_f1_rows(np.stack([labels, labels]), np.stack([fitted, plain])))
    return {"weights": [float(w) for w in weights], "rows": int(len(labels)), "parts": parts,
            "estimate": estimate, "unweighted": unweighted, "leak_free": bool(leak_free),
            "grid": [float(WEIGHT_GRID[0]), float(WEIGHT_GRID[-1]), len(WEIGHT_GRID)]}

"""Linear probe: how much sentiment a frozen encoder's features carry, without the head.

Mean- and max-pooled features over real tokens -> standardised -> logistic regression, scored
out of fold on the recipe's folds.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ..data.metrics import scores


def pooled(features, chunk: int = 512) -> np.ndarray:
    """(N, 2H): mean and max over each row's real tokens."""
    n, _, hidden = features.shape
    out = np.empty((n, 2 * hidden), np.float32)
    for start in range(0, n, chunk):
        idx = np.arange(start, min(n, start + chunk))
        x = features.rows(idx)
        real = (np.arange(x.shape[1])[None, :] < features.lengths[idx][:, None])[:, :, None]
        out[idx, :hidden] = (x * real).sum(axis=1) / np.maximum(real.sum(axis=1), 1)
        out[idx, hidden:] = np.where(real, x, -np.inf).max(axis=1)
    return out


def linear_probe(features, labels: np.ndarray, folds: np.ndarray, score_folds=None, seed: int = 0) -> dict:
    """OOF scores of logistic regression on pooled features, over `score_folds` (default: all folds)."""
    x = pooled(features)
    oof = np.zeros((len(labels), 3))
    score_folds = np.unique(folds[folds >= 0]) if score_folds is None else np.asarray(score_folds)
    used = np.isin(folds, score_folds)
    for fold in score_folds:
        train, valid = (folds >= 0) & (folds != fold), folds == fold
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0, random_state=seed))
        model.fit(x[train], labels[train])
        oof[valid] = model.predict_proba(x[valid])
    return scores(labels[used], oof[used])

"""Pseudo-label selection: pure numpy over `pred_probs` (N, K) fold-averaged probabilities.

Every selector returns a boolean mask over the rows; `select` turns a mask into labels
(-1 for rows not selected). Thresholds are inclusive: a row is selected when its maximum
probability is >= the threshold. Selection always uses the raw averaged probabilities unless a
calibration temperature is passed explicitly.
"""

from __future__ import annotations

import numpy as np

from ..core.errors import PseudoError

STRATEGIES = ("threshold", "per-class", "class-balanced", "uncertainty", "top-k")
NOT_SELECTED = -1
DEFAULT_THRESHOLD = 0.9  # of the threshold and per-class strategies when none is given


def _check_probs(pred_probs: np.ndarray) -> np.ndarray:
    pred_probs = np.asarray(pred_probs, dtype=np.float64)
    if pred_probs.ndim != 2:
        raise PseudoError(f"pred_probs must be 2-D (rows, classes), got shape {pred_probs.shape}")
    return pred_probs


def check_threshold(threshold: float, name: str = "threshold") -> float:
    if not (0.0 < float(threshold) <= 1.0):
        raise PseudoError(f"{name} must be in (0, 1], got {threshold}")
    return float(threshold)


def threshold_mask(pred_probs: np.ndarray, threshold: float) -> np.ndarray:
    """Rows whose maximum probability is >= threshold (inclusive)."""
    pred_probs = _check_probs(pred_probs)
    return pred_probs.max(axis=1) >= check_threshold(threshold)


def per_class_mask(pred_probs: np.ndarray, thresholds) -> np.ndarray:
    """Rows whose maximum probability is >= the threshold of their predicted class."""
    pred_probs = _check_probs(pred_probs)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if thresholds.shape != (pred_probs.shape[1],):
        raise PseudoError(f"per-class thresholds must be {pred_probs.shape[1]} values, got {thresholds.tolist()}")
    for t in thresholds:
        check_threshold(t, "per-class threshold")
    return pred_probs.max(axis=1) >= thresholds[pred_probs.argmax(axis=1)]


def class_balanced_mask(pred_probs: np.ndarray, prior, cap: int, uncertainty=None) -> np.ndarray:
    """Most confident rows per predicted class, in the proportions of `prior`, at most `cap` rows; given
    `uncertainty` (one value per row), the least uncertain rows per class instead (easy first, ties to
    the more confident).

    Class c gets round(total * prior[c]) rows, where total is `cap` lowered until every class has
    enough candidates, so the selected mix equals the prior up to rounding.
    """
    pred_probs = _check_probs(pred_probs)
    prior = np.asarray(prior, dtype=np.float64)
    if prior.shape != (pred_probs.shape[1],) or prior.min() < 0 or prior.sum() <= 0:
        raise PseudoError(f"prior must be {pred_probs.shape[1]} non-negative shares, got {prior.tolist()}")
    if cap < 0:
        raise PseudoError(f"cap must be >= 0, got {cap}")
    if uncertainty is not None:
        uncertainty = np.asarray(uncertainty, dtype=np.float64)
        if uncertainty.shape != (len(pred_probs),) or not np.isfinite(uncertainty).all():
            raise PseudoError(f"uncertainty must be {len(pred_probs)} finite values, got shape {uncertainty.shape}")
    prior = prior / prior.sum()
    predicted = pred_probs.argmax(axis=1)
    confidence = pred_probs.max(axis=1)
    available = np.bincount(predicted, minlength=len(prior))
    total = float(cap)
    for c, share in enumerate(prior):
        if share > 0:
            total = min(total, available[c] / share)
    mask = np.zeros(len(pred_probs), bool)
    for c, share in enumerate(prior):
        quota = int(np.floor(total * share + 1e-9))
        rows = np.flatnonzero(predicted == c)
        order = (np.argsort(-confidence[rows], kind="stable") if uncertainty is None
                 else np.lexsort((-confidence[rows], uncertainty[rows])))
        mask[rows[order[:quota]]] = True
    return mask


def top_k_mask(pred_probs: np.ndarray, k: int) -> np.ndarray:
    """The k rows of highest maximum probability."""
    pred_probs = _check_probs(pred_probs)
    if k < 0:
        raise PseudoError(f"top-k must be >= 0, got {k}")
    mask = np.zeros(len(pred_probs), bool)
    mask[np.argsort(-pred_probs.max(axis=1), kind="stable")[:k]] = True
    return mask


def select(
    pred_probs: np.ndarray,
    strategy: str = "threshold",
    threshold: float | None = None,
    *,
    class_thresholds=None,
    prior=None,
    top_k: int | None = None,
    uncertainty=None,
) -> np.ndarray:
    """Labels (class index, or NOT_SELECTED) of the rows the strategy selects.

    `threshold` None means DEFAULT_THRESHOLD for threshold and per-class; for class-balanced it
    means no confidence cap: every row the prior allows (the cap is `top_k`, else the rows over
    `threshold`, else all rows). `uncertainty` takes as many rows, per class, as class-balanced would,
    the least uncertain first (`uncertainty`: one value per row, e.g. BALD)."""
    pred_probs = _check_probs(pred_probs)
    if threshold is None and strategy not in ("class-balanced", "uncertainty"):
        threshold = DEFAULT_THRESHOLD
    if strategy == "threshold":
        mask = threshold_mask(pred_probs, threshold)
    elif strategy == "per-class":
        mask = per_class_mask(pred_probs, class_thresholds if class_thresholds is not None
                              else [threshold] * pred_probs.shape[1])
    elif strategy in ("class-balanced", "uncertainty"):
        if prior is None:
            raise PseudoError(f"{strategy} selection needs the labeled class prior")
        if strategy == "uncertainty" and uncertainty is None:
            raise PseudoError("uncertainty selection needs each row's uncertainty")
        if top_k is not None:
            cap = top_k
        elif threshold is not None:
            cap = int(threshold_mask(pred_probs, threshold).sum())
        else:
            cap = len(pred_probs)
        mask = class_balanced_mask(pred_probs, prior, cap, uncertainty if strategy == "uncertainty" else None)
    elif strategy == "top-k":
        if top_k is None:
            raise PseudoError("strategy top-k needs --top-k")
        mask = top_k_mask(pred_probs, top_k)
    else:
        raise PseudoError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    return np.where(mask, pred_probs.argmax(axis=1), NOT_SELECTED).astype(np.int64)


def counts_per_class(labels: np.ndarray, n_classes: int = 3) -> list[int]:
    labels = np.asarray(labels)
    return np.bincount(labels[labels != NOT_SELECTED], minlength=n_classes).tolist()


def sweep(pred_probs: np.ndarray, thresholds, oof_probs=None, oof_labels=None, uncertainty=None) -> list[dict]:
    """Per threshold: rows selected per class, (given OOF predictions) their OOF precision, and (given each
    row's uncertainty) the mean uncertainty of the rows selected."""
    pred_probs = _check_probs(pred_probs)
    rows = []
    for t in thresholds:
        mask = threshold_mask(pred_probs, t)
        entry = {"threshold": float(t), "selected": int(mask.sum()),
                 "per_class": np.bincount(pred_probs[mask].argmax(axis=1), minlength=pred_probs.shape[1]).tolist()}
        if uncertainty is not None:
            entry["uncertainty"] = float(np.mean(np.asarray(uncertainty)[mask])) if mask.any() else None
        if oof_probs is not None:
            oof_mask = threshold_mask(oof_probs, t)
            hits = (np.asarray(oof_probs)[oof_mask].argmax(axis=1) == np.asarray(oof_labels)[oof_mask])
            entry["oof_selected"] = int(oof_mask.sum())
            entry["oof_precision"] = float(hits.mean()) if oof_mask.any() else None
        rows.append(entry)
    return rows

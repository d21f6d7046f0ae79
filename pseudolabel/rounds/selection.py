"""From a finished round to the next round's pseudo-labels: the one path `pseudo run` and
`pseudo select` share.

    teacher probabilities (pool_probs: the round's pool predictions, blended with the co-teacher)
      -> the pure selector (select.py) -> the written selection (write_selection)

`select_from_round` returns what a selection would be; `write_selection` puts it where the next
round reads it (`read_selection`); `teacher_probs` gives the probabilities a written selection was
made from (the soft targets of a distillation round).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .calibrate import apply_temperature, fit_temperature
from .config import PSEUDO_SOURCES, UNCERTAINTY_WEIGHT, migrate
from ..core.constants import HOLDOUT, N_CLASSES
from .coteacher import blend
from ..data.posts import Posts, load_labeled, load_unlabeled
from ..core.errors import PseudoError
from .select import NOT_SELECTED, STRATEGIES, check_threshold, counts_per_class, select, sweep
from ..core.store import RunDir, RunLock, atomic_write_csv, atomic_write_json, atomic_write_npy, load_npy, read_json
from .uncertainty import confidence_weights, from_moments, moments, summary


def saved_options(run_dir: RunDir) -> dict:
    """The options a run was made with, in the current schema."""
    return migrate(run_dir.saved_config())["config"]


DRIFT_WARN = 0.15  # total-variation distance of the pseudo-label mix from the prior that earns a warning


def mix_drift(per_class, prior) -> float:
    """Total-variation distance between the pseudo-label class mix and the labeled prior (0 if empty)."""
    counts = np.asarray(per_class, dtype=np.float64)
    if counts.sum() == 0:
        return 0.0
    return float(0.5 * np.abs(counts / counts.sum() - np.asarray(prior) / np.sum(prior)).sum())


def pseudo_targets(labels: np.ndarray, rows: np.ndarray, probs: np.ndarray | None, sharpen: float = 1.0):
    """Training targets of the selected pool rows: one-hot labels, or the teacher's probabilities
    sharpened as p^(1/T) / sum (T = `sharpen`)."""
    if probs is None:
        return np.eye(N_CLASSES, dtype=np.float32)[labels[rows]]
    p = np.asarray(probs[rows], dtype=np.float64) ** (1.0 / sharpen)
    return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)


def changed_labels(prev: np.ndarray | None, labels: np.ndarray) -> int:
    """Pool rows selected in both rounds whose label differs (summed over folds' rows, fold-mean)."""
    if prev is None:
        return 0
    both = (prev != NOT_SELECTED) & (labels != NOT_SELECTED)
    return int(round(((prev != labels) & both).sum() / len(labels)))


def pool_probs(run_dir: RunDir, k: int, co_teacher: float) -> np.ndarray:
    """(F, N_pool, 3): round k's pool predictions, blended with the co-teacher's at that share."""
    return blend(load_npy(run_dir.round(k).unmask_preds), run_dir, co_teacher)


def pool_uncertainty(run_dir: RunDir, k: int, source: str) -> tuple[np.ndarray, np.ndarray, str]:
    """Round k's uncertainty of each pool post per fold: BALD (F, N_pool), the per-class variance (F, N_pool, 3),
    and what they are over. Without --mc-passes: the fold heads' disagreement (their pool predictions, the
    same for every fold; with source 'fold' a fold's choice of rows then sees the other folds' heads, its
    labels stay its own). With --mc-passes (`pool_mc.npy`): each fold's own passes (source 'fold'), or all
    folds' passes together (source 'mean'). The head's own predictions: the co-teacher adds the same to
    every member, so it is left out."""
    files = run_dir.round(k)
    if files.pool_mc.is_file():
        per_fold = load_npy(files.pool_mc)
        over = f"MC dropout, {'each fold its own passes' if source == 'fold' else 'every fold and pass'}"
        parts = ([from_moments(m) for m in per_fold] if source == "fold"
                 else [from_moments(per_fold.mean(axis=0))] * len(per_fold))
    else:
        unmask = load_npy(files.unmask_preds)
        over = f"the {len(unmask)} fold heads' disagreement"
        parts = [from_moments(moments(unmask))] * len(unmask)
    return np.stack([b for b, _ in parts]), np.stack([v for _, v in parts]), over


def pseudo_weights(run_dir: RunDir, k: int, labels: np.ndarray, weight: float | str,
                   source: str) -> float | list[np.ndarray]:
    """The sample weight of round k+1's pseudo rows: `weight` itself, or with `--pseudo-weight uncertainty` per
    fold one per selected row (in pool order), from round k's variance of the row's pseudo-label
    (`confidence_weights`: mean 1 per fold)."""
    if weight != UNCERTAINTY_WEIGHT:
        return weight
    variance = pool_uncertainty(run_dir, k, source)[1]
    out = []
    for f, fold_labels in enumerate(labels):
        selected = fold_labels != NOT_SELECTED
        label_var = variance[f][np.arange(len(fold_labels)), np.clip(fold_labels, 0, N_CLASSES - 1)]
        out.append(confidence_weights(label_var, selected)[selected].astype(np.float32))
    return out


def select_from_round(run_dir: RunDir, k: int, *, prior, strategy: str, threshold: float, top_k: int | None,
                      source: str, calibrate: bool, force: bool, class_thresholds=None):
    """Pseudo-labels for round k+1 from finished round k's pool predictions."""
    files = run_dir.round(k)
    if not files.is_done():
        raise PseudoError(f"{files.path}: round {k} is not finished (no DONE)")
    metrics = read_json(files.metrics)
    if metrics.get("collapsed") and not force:
        raise PseudoError(f"{files.path}: round {k} collapsed ({metrics['oof'].get('collapse_reason') or 'a fold collapsed'}); "
                          f"its pseudo-labels would be noise (--force to select anyway)")
    path = files.unmask_preds
    if not path.is_file():
        raise PseudoError(f"{path}: no pool predictions in round {k} (the run has no --unlabeled)")
    co_teacher = saved_options(run_dir)["co_teacher"]
    unmask = pool_probs(run_dir, k, co_teacher)
    temperature = 1.0
    if calibrate:
        oof = load_npy(files.oof_preds)
        folds = load_npy(run_dir.round(0).folds)
        labels = load_labeled(saved_options(run_dir)["train"]).labels
        keep = folds != HOLDOUT
        temperature = fit_temperature(oof[keep], labels[keep])
    probs = [unmask.mean(axis=0)] * len(unmask) if source == "mean" else list(unmask)
    probs = [apply_temperature(p, temperature) for p in probs]
    bald, _, over = pool_uncertainty(run_dir, k, source)
    labels = np.stack([select(p, strategy, threshold, prior=prior, top_k=top_k, class_thresholds=class_thresholds,
                              uncertainty=u) for p, u in zip(probs, bald)])
    confidence = np.stack([p.max(axis=1) for p in probs]).astype(np.float32)
    per_class = np.mean([counts_per_class(row) for row in labels], axis=0).round().astype(int).tolist()
    chosen = labels != NOT_SELECTED
    info = {"from_round": k, "strategy": strategy, "threshold": threshold, "top_k": top_k, "source": source,
            "temperature": temperature, "per_class": per_class,
            "uncertainty": {"over": over, "measure": "BALD (nats)", "pool": summary(bald.ravel()),
                            "selected": summary(bald[chosen])},
            "co_teacher": co_teacher,
            "n_selected": int(round(float((labels != NOT_SELECTED).sum(axis=1).mean())))}
    return labels, confidence, info


def read_selection(run_dir: RunDir, k: int) -> tuple[np.ndarray, np.ndarray, dict] | None:
    """Round k's written selection (labels (F, N_pool), confidence (F, N_pool), info), or None."""
    files = run_dir.round(k)
    if not files.pseudo_labels.is_file():
        return None
    return load_npy(files.pseudo_labels), load_npy(files.pseudo_confidence), read_json(files.selection)


def teacher_probs(run_dir: RunDir, k: int) -> np.ndarray:
    """(F, N_pool, 3): the probabilities round k+1's written selection was made from (per fold or
    fold mean, at its temperature)."""
    selection = read_json(run_dir.round(k + 1).selection)
    unmask = pool_probs(run_dir, k, selection.get("co_teacher", 0.0))
    if selection["source"] == "mean":
        unmask = np.repeat(unmask.mean(axis=0, keepdims=True), len(unmask), axis=0)
    return np.stack([apply_temperature(p, selection.get("temperature", 1.0)) for p in unmask])


def write_selection(run_dir: RunDir, k: int, labels: np.ndarray, confidence: np.ndarray, info: dict,
                    pool: Posts | None, raw: bool = False) -> None:
    """Write round k's selection: arrays, a readable CSV and selection.json (all atomic)."""
    files = run_dir.round(k)
    if files.is_done():
        raise PseudoError(f"{files.path}: round {k} is finished; its selection is not rewritten")
    if files.trained_folds():
        raise PseudoError(f"{files.path}: round {k} has trained folds; --restart the run to change its selection")
    atomic_write_npy(files.pseudo_labels, labels.astype(np.int8))
    atomic_write_npy(files.pseudo_confidence, confidence)
    same = all(np.array_equal(labels[0], row) for row in labels[1:])
    header = ["id", "text", "label", "confidence"] + ([] if same else ["fold"])
    rows = []
    for f in range(1 if same else len(labels)):
        for i in np.flatnonzero(labels[f] != NOT_SELECTED):
            row = [pool.ids[i] if pool else i, pool.texts[i] if pool else "", int(labels[f][i]) - 1,
                   f"{confidence[f][i]:.4f}"]
            rows.append(row if same else row + [f])
    atomic_write_csv(files.pseudo_labels_csv, header, rows, raw=raw)
    atomic_write_json(files.selection, info)


SWEEP = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99)


def reselect(run_dir: str | Path, *, round: int | None = None, strategy: str | None = None,
             threshold: float | None = None, top_k: int | None = None, source: str | None = None,
             calibrate: bool = False, force: bool = False, raw: bool = False) -> dict:
    """`pseudo select`: new pseudo-labels for the round after `round`, from its saved predictions.

    Options left None take the run's own (strategy, top-k, source; the threshold too unless
    another strategy or cap is asked for).

    Writes the selection where the next round reads it and returns what to show: counts per
    class next to the labeled prior, and a threshold sweep with the OOF precision at each.
    """
    rd = RunDir(run_dir)
    if not rd.exists():
        raise PseudoError(f"{rd.root}: not a run directory (no config.json)")
    saved = saved_options(rd)
    if threshold is None and strategy is None and top_k is None:
        threshold = saved.get("threshold", 0.9)
    strategy = strategy or saved.get("strategy", "class-balanced")
    top_k = top_k if top_k is not None or threshold is not None else saved.get("top_k")
    if threshold is not None:
        check_threshold(threshold)
    if strategy not in STRATEGIES:
        raise PseudoError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    finished = rd.finished_rounds()
    if not finished:
        raise PseudoError(f"{rd.root}: no finished round to select from")
    k = finished[-1] if round is None else round
    if k not in finished:
        raise PseudoError(f"round must be a finished round ({', '.join(map(str, finished))}), got {k}")
    source = source or saved["pseudo_source"]
    if source not in PSEUDO_SOURCES:
        raise PseudoError(f"source must be one of {', '.join(PSEUDO_SOURCES)}, got {source!r}")
    metrics = read_json(rd.round(k).metrics)
    prior = np.array(metrics["labeled_prior"])
    labels, confidence, info = select_from_round(rd, k, prior=prior, strategy=strategy, threshold=threshold,
                                                 top_k=top_k, source=source, calibrate=calibrate, force=force)
    pool = load_unlabeled(saved["unlabeled"], saved["unlabeled_limit"])
    if len(pool) != labels.shape[1]:
        raise PseudoError(f"{saved['unlabeled']}: has {len(pool)} rows now, round {k} scored {labels.shape[1]}")
    with RunLock(rd.root).acquire("pseudo select"):  # never beside a run writing the same directory
        raw = raw or rd.saved_config().get("invocation", {}).get("raw", False)  # the run's own, unless asked
        write_selection(rd, k + 1, labels, confidence, info, pool, raw=raw)
    unmask = load_npy(rd.round(k).unmask_preds).mean(axis=0)
    folds = load_npy(rd.round(0).folds)
    oof = load_npy(rd.round(k).oof_preds)
    human = load_labeled(saved["train"]).labels
    keep = folds != HOLDOUT
    temperature = info["temperature"]
    return {"round": k, "next_round": k + 1, "written": str(rd.round(k + 1).pseudo_labels_csv),
            "calibration": {key: metrics["oof"].get("calibration", {}).get(key)
                            for key in ("ece", "temperature", "ece_scaled")},
            "selection": info, "labeled_prior": prior.tolist(), "pool_rows": int(labels.shape[1]),
            "sweep": sweep(apply_temperature(unmask, temperature), SWEEP,
                           apply_temperature(oof[keep], temperature), human[keep],
                           uncertainty=pool_uncertainty(rd, k, "mean")[0][0])}

"""What one fold of a round trains on and what it writes: the fold's rows (human, monitor, validation,
pseudo-labeled, and the per-epoch sample of the training budget), the outcome of its fit, its record and
its finished folder. Shared by the head's folds (cv.py) and the fine-tuned student's (student_fold.py);
`plan` is a cv.RoundPlan.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import train_test_split

from ..core.constants import HOLDOUT, N_CLASSES
from ..core.errors import PseudoError
from ..data.metrics import scores
from ..core.store import atomic_write_json, atomic_write_npy


@dataclass
class FoldRows:
    """What one fold trains on: human rows (labeled indices), then pseudo rows (pool indices)."""

    human: np.ndarray  # labeled rows of the training part (the monitor slice taken out)
    valid: np.ndarray  # labeled rows of the fold's validation part
    monitor: np.ndarray  # labeled rows that choose the best epoch (early stopping), else empty
    pseudo: np.ndarray  # pool rows
    targets: np.ndarray  # (n_human + n_pseudo, 3)
    weights: np.ndarray  # (n_human + n_pseudo,) sample weights
    lengths: np.ndarray | None  # token counts of the training rows, with dynamic padding
    ratio: float | None = None  # pseudo rows per human row in each epoch (None: every pseudo row)
    monitor_every: str = "epoch"  # "human": the monitor looks every len(human) rows (cv._fit)

    @property
    def n_train(self) -> int:
        return len(self.targets)

    @property
    def n_epoch(self) -> int:
        """Training rows one epoch passes over: every human row and the sampled pseudo rows."""
        return len(self.human) + self.pseudo_per_epoch

    @property
    def pseudo_per_epoch(self) -> int:
        n_h, n_p = len(self.human), len(self.pseudo)
        return n_p if self.ratio is None else min(n_p, int(np.ceil(self.ratio * n_h)))

    @property
    def check_rows(self) -> int:
        """Training rows between two looks of the early-stopping monitor: an epoch, or with `--monitor-every
        human` in a later round as many as the fold's human rows (round 0's epoch)."""
        return len(self.human) if self.monitor_every == "human" and len(self.pseudo) else self.n_epoch

    def epoch(self, rng: np.random.Generator) -> np.ndarray:
        """Indices into the training rows (human, then pseudo) of one epoch: every human row and, under a
        ratio, a fresh sample of the pseudo rows (the generator is not drawn from when all of them train)."""
        n_h, take = len(self.human), self.pseudo_per_epoch
        if take == len(self.pseudo):
            return np.arange(self.n_train)
        return np.concatenate([np.arange(n_h), n_h + np.sort(rng.choice(len(self.pseudo), take, replace=False))])


def fold_seed(plan, fold: int) -> int:
    """The seed of fold `fold` of the round: its starting weights, row order and random layers."""
    return plan.seed * 1000 + plan.round * 10 + fold


def _monitor_split(plan, fold: int, human: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, monitor rows) of a fold's human part: a stratified `monitor_share` of it watches early
    stopping, at least one post per class (sklearn's count of that share, so larger folds split as always);
    not stratified where a class has a single post in the part."""
    n_monitor = max(int(np.ceil(plan.recipe.monitor_share * len(human))), N_CLASSES)
    if len(human) - n_monitor < N_CLASSES:
        raise PseudoError(f"fold {fold} trains on {len(human)} labeled posts: too few to keep {n_monitor} aside for "
                          f"early stopping; use fewer --folds, more labeled posts or --no-early-stopping")
    counts = np.bincount(plan.labels[human], minlength=N_CLASSES)
    stratify = plan.labels[human] if counts[counts > 0].min() >= 2 else None
    train, monitor = train_test_split(human, test_size=n_monitor, stratify=stratify, random_state=seed)
    return np.sort(train), np.sort(monitor)


def fold_rows(plan, fold: int, seed: int) -> FoldRows:
    human = np.flatnonzero((plan.folds != fold) & (plan.folds != HOLDOUT))
    monitor = np.zeros(0, np.int64)
    if plan.recipe.early_stopping:  # a slice of the training part, never the validation part
        human, monitor = _monitor_split(plan, fold, human, seed)
    pseudo = plan.pseudo.rows[fold] if plan.pseudo is not None else np.zeros(0, np.int64)
    pseudo_targets = (plan.pseudo.targets[fold].astype(np.float32) if plan.pseudo is not None
                      else np.zeros((0, N_CLASSES), np.float32))
    weight = plan.pseudo.weight if plan.pseudo is not None else 1.0  # one for every pseudo row, or per fold
    weights = np.concatenate([np.ones(len(human), np.float32),
                              np.broadcast_to(np.asarray(weight if np.isscalar(weight) else weight[fold], np.float32),
                                              (len(pseudo),))])
    lengths = None
    if plan.recipe.dynamic_padding:
        lengths = np.concatenate([plan.labeled.lengths(human),
                                  plan.pseudo.source.lengths(pseudo) if len(pseudo) else np.zeros(0, np.int64)])
    return FoldRows(human, np.flatnonzero(plan.folds == fold), monitor, pseudo,
                    np.concatenate([np.eye(N_CLASSES, dtype=np.float32)[plan.labels[human]], pseudo_targets]),
                    weights, lengths, plan.pseudo.ratio if plan.pseudo is not None else None,
                    plan.pseudo.monitor_every if plan.pseudo is not None else "epoch")


@dataclass
class Fit:
    history: list[dict]  # per epoch: loss, and the monitor's macro-F1 with early stopping
    best_epoch: int  # the epoch whose weights the fold keeps (the last without early stopping)


def fold_record(plan, fold: int, rows: FoldRows, fit: Fit, train_seconds: float,
                valid_probs: np.ndarray) -> dict:
    """fold.json of a trained fold (a head or a fine-tuned student), but its total seconds."""
    pseudo_targets = rows.targets[len(rows.human):]
    checks = {"rows_per_check": rows.check_rows} if rows.check_rows != rows.n_epoch else {}
    return {**checks, "fold": fold, "n_train_human": len(rows.human), "n_train_pseudo": len(rows.pseudo),
            "n_pseudo_per_epoch": rows.pseudo_per_epoch,
            "pseudo_targets": "soft" if len(rows.pseudo) and not np.isin(pseudo_targets, (0.0, 1.0)).all() else "hard",
            "n_valid": len(rows.valid), "n_monitor": len(rows.monitor), "epochs": len(fit.history),
            "best_epoch": fit.best_epoch, "history": fit.history, "train_seconds": train_seconds,
            "valid": scores(plan.labels[rows.valid], valid_probs)}


def finish_fold(files, rows: FoldRows, valid_probs: np.ndarray, record: dict, started: float) -> None:
    """Write a trained fold's validation predictions, rows and record, DONE last."""
    atomic_write_npy(files.valid_preds, valid_probs)
    atomic_write_npy(files.valid_idx, rows.valid)
    atomic_write_npy(files.train_idx, rows.human)
    record["seconds"] = time.time() - started
    atomic_write_json(files.record, record)
    files.mark_done()

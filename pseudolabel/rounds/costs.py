"""The cost model of a run: what each fold of each round trains and scores, times a cost per post.

`pseudo run --plan` multiplies it by the per-post costs it measures on this machine (`plan.measure_costs`);
a run's overall progress line uses it with `NOMINAL` relative costs and scales it by the seconds its
finished folds took, so the time left counts later rounds at their own size from the first fold on.
Epochs are the recipe's most (early stopping may end a fold sooner): absolute figures are upper bounds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.constants import HOLDOUT
from ..data.batching import padded_length
from .config import RunConfig


@dataclass
class Costs:
    """Seconds per post: the frozen encoder, the head's training and scoring steps, and where a round fine-tunes
    the encoder, the student's training and scoring steps (full-length posts) and its setup per fold."""

    encode: float
    train: float
    score: float
    tune_setup: float | None = None  # seconds, once per fold: the student built and its steps traced
    tune: float | None = None
    tune_score: float | None = None
    mc: float = 0.0  # seconds per pool post and fold: the run's --mc-passes over it (`cv.mc_moments`)


NOMINAL = Costs(encode=0.0, train=3.0, score=1.0)  # relative: a training step is about three forward passes


@dataclass
class RoundWork:
    """Round k's folds under the cost model: rows per epoch, most epochs, and seconds per fold."""

    per_epoch: list[int]
    epochs: list[int]
    seconds: list[float]


def selection_bound(config: RunConfig, n_pool: int) -> int:
    """The most pool posts a later round's selection can hold for one fold."""
    if config.strategy == "top-k" or (config.strategy == "class-balanced" and config.top_k):
        return min(n_pool, config.top_k or 0)
    return n_pool


def estimated(config: RunConfig, k: int) -> bool:
    """Whether the relative model of the progress line's time left (`NOMINAL`) covers round k: the head on
    cached features, not fine-tuned students or faithful mode, whose encoder passes it does not count
    (`pseudo run --plan` measures the student: `student_work`)."""
    return config.trainer(k) != "finetune" and config.mode != "faithful"


def length_share(lengths: np.ndarray, max_len: int) -> float:
    """The share of a full-length step that length-grouped batches cost: posts' token counts padded as
    batches are cut (`padded_length`), over the max length."""
    lengths = np.asarray(lengths)
    if not len(lengths):
        return 1.0
    return float(np.mean([padded_length(n, max_len) for n in lengths]) / max_len)


def round_work(config: RunConfig, recipe, k: int, costs: Costs, n_rows: dict, folds: np.ndarray,
               share: float = 1.0) -> RoundWork:
    """Round k trained with `recipe` on `n_rows` posts per split (labeled, test, unlabeled), `folds` a fold
    id per labeled row: each fold's epochs over its rows (a precise-BatchNorm pass each epoch where the
    recipe has one), its monitor and validation rows, its share of scoring test, pool and holdout, and with
    --mc-passes its passes over the pool. With dynamic padding every step costs `share` of a full-length one
    (`length_share`)."""
    scale = share if recipe.dynamic_padding else 1.0
    monitor_share = recipe.monitor_share if recipe.early_stopping else 0.0
    work = _work(config, k, n_rows, folds, monitor_share, recipe.epochs_for, recipe.precise_bn,
                 costs.train * scale, costs.score * scale)
    work.seconds = [seconds + n_rows["unlabeled"] * costs.mc * scale for seconds in work.seconds]
    return work


def student_work(config: RunConfig, k: int, costs: Costs, n_rows: dict, folds: np.ndarray,
                 share: float = 1.0) -> RoundWork:
    """Round k's folds fine-tuning the encoder (`student_fold.py`): the same rows as a head's under the
    training budget, the student's epochs and monitor slice, every step in batches cut to their longest post
    (`share` of a full-length one)."""
    ft = config.finetune(k)
    work = _work(config, k, n_rows, folds, ft.monitor_share, lambda n: ft.epochs, 0,
                 costs.tune * share, costs.tune_score * share)
    work.seconds = [seconds + costs.tune_setup for seconds in work.seconds]
    return work


def _work(config: RunConfig, k: int, n_rows: dict, folds: np.ndarray, monitor_share: float, epochs_for,
          precise_bn: int, train: float, score: float) -> RoundWork:
    n_folds = int(folds.max()) + 1
    scored = n_rows["test"] + n_rows["unlabeled"] + int((folds == HOLDOUT).sum())
    bound = selection_bound(config, n_rows["unlabeled"])
    out = RoundWork([], [], [])
    for fold in range(n_folds):
        human = int(((folds != fold) & (folds != HOLDOUT)).sum())
        monitor = int(np.ceil(human * monitor_share)) if monitor_share else 0  # as sklearn
        human -= monitor
        pseudo = 0 if k == 0 else (bound if config.pseudo_ratio is None
                                   else min(bound, int(np.ceil(config.pseudo_ratio * human))))
        n_epoch = human + pseudo
        n_ep = epochs_for(n_epoch)
        precise = min(n_epoch, precise_bn) if precise_bn else 0
        valid = int((folds == fold).sum())
        out.per_epoch.append(n_epoch)
        out.epochs.append(n_ep)
        out.seconds.append(n_ep * n_epoch * train + (valid + scored + n_ep * (monitor + precise)) * score)
    return out

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
    """Seconds per post: the frozen encoder, and the head's training and scoring steps."""

    encode: float
    train: float
    score: float


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
    """Whether round k's trainer is in the model (the head on cached features; not fine-tuned students or
    faithful mode, whose encoder passes it does not count)."""
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
    recipe has one), its monitor and validation rows, and its share of scoring test, pool and holdout.
    With dynamic padding every step costs `share` of a full-length one (`length_share`)."""
    if recipe.dynamic_padding:
        costs = Costs(costs.encode, costs.train * share, costs.score * share)
    n_folds = int(folds.max()) + 1
    scored = n_rows["test"] + n_rows["unlabeled"] + int((folds == HOLDOUT).sum())
    bound = selection_bound(config, n_rows["unlabeled"])
    out = RoundWork([], [], [])
    for fold in range(n_folds):
        human = int(((folds != fold) & (folds != HOLDOUT)).sum())
        monitor = int(np.ceil(human * recipe.monitor_share)) if recipe.early_stopping else 0  # as sklearn
        human -= monitor
        pseudo = 0 if k == 0 else (bound if config.pseudo_ratio is None
                                   else min(bound, int(np.ceil(config.pseudo_ratio * human))))
        n_epoch = human + pseudo
        n_ep = recipe.epochs_for(n_epoch)
        precise = min(n_epoch, recipe.precise_bn) if recipe.precise_bn else 0
        valid = int((folds == fold).sum())
        out.per_epoch.append(n_epoch)
        out.epochs.append(n_ep)
        out.seconds.append(n_ep * n_epoch * costs.train
                           + (valid + scored + n_ep * (monitor + precise)) * costs.score)
    return out

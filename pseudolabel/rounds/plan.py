"""`pseudo run --plan`: what a run will cost before anything trains, from this machine's measured cost per post.

It reads the inputs and the encoder as a run does (the same checks, nothing written), times a few warm
batches of the frozen encoder and of the recipe's head (training and scoring, with random weights and
inputs of the run's shape), and multiplies: rows per split and the feature cache's disk; per round the
rows each fold trains on per epoch (round 0: the fold's human-labeled part; later rounds: that plus the
training budget's sample of the selection, `--pseudo-ratio`), the epochs the recipe runs at most (early
stopping may end a fold sooner, so times are upper bounds), and the rows every fold scores.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .config import RunConfig
from ..core.constants import HOLDOUT
from ..data.posts import load_labeled, load_unlabeled
from ..encoding.encoder import find_encoder, load_tokenizer, quiet_transformers
from ..encoding.features import human_bytes
from .cv import make_folds
from .loop import check_inputs, student_recipe
from ..data.tokenize import tokenize

WARM_ROWS = 32  # rows per timed batch
TIMED_BATCHES = 3  # timed after one warm-up batch


@dataclass
class Costs:
    """Seconds per post on this machine: the frozen encoder, and the head's training and scoring steps."""

    encode: float
    train: float
    score: float


def _timed(step, batches: int = TIMED_BATCHES) -> float:
    step()  # warm-up: tracing and first allocations
    started = time.perf_counter()
    for _ in range(batches):
        step()
    return (time.perf_counter() - started) / batches


def measure_costs(config: RunConfig, files, texts: list[str], recipe) -> Costs:
    """Time the encoder on `texts` (a sample of the run's posts) and the head on random inputs of its shape."""
    from ..core._tf import keras
    from ..encoding.encoder import FrozenEncoder
    from ..heads.model import build_head

    tokens = tokenize(texts[:WARM_ROWS], load_tokenizer(files), config.max_len)
    encoder = FrozenEncoder(files)
    encode = _timed(lambda: encoder(tokens.input_ids, tokens.attention_mask)) / len(texts[:WARM_ROWS])
    model = build_head(config.max_len, encoder.hidden_size, recipe)
    rng = np.random.default_rng(0)
    batch = recipe.batch_size
    shapes = [[config.max_len if d is None else int(d) for d in t.shape[1:]] for t in model.inputs]
    inputs = [rng.standard_normal((batch, *shape)).astype(np.float32) for shape in shapes]
    x = inputs[0] if len(inputs) == 1 else inputs
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, batch)]
    train = _timed(lambda: model.train_on_batch(x, y)) / batch
    score = _timed(lambda: model.predict_on_batch(x)) / batch
    keras.backend.clear_session()
    return Costs(encode, train, score)


def selection_bound(config: RunConfig, n_pool: int) -> int:
    """The most pool posts a later round's selection can hold for one fold."""
    if config.strategy == "top-k" or (config.strategy == "class-balanced" and config.top_k):
        return min(n_pool, config.top_k or 0)
    return n_pool


def estimate(config: RunConfig, costs: Costs, n_rows: dict, folds: np.ndarray, hidden: int) -> list[dict]:
    """One row per stage: what it handles, its disk and its estimated seconds."""
    recipe0 = config.resolved_recipe()
    out = []
    cached = [s for s in ("labeled", "test", "unlabeled") if n_rows[s] and s not in config.stream]
    for split in ("labeled", "test", "unlabeled"):
        if n_rows[split]:
            disk = n_rows[split] * config.max_len * hidden * 2 if split in cached else 0
            out.append({"stage": f"features: {split}", "rows": f"{n_rows[split]:,}",
                        "disk": human_bytes(disk) if disk else "streamed", "seconds": n_rows[split] * costs.encode})
    n_folds = int(folds.max()) + 1
    scored = n_rows["test"] + n_rows["unlabeled"] + int((folds == HOLDOUT).sum())
    bound = selection_bound(config, n_rows["unlabeled"])
    for k in range(config.rounds + 1):
        recipe = student_recipe(recipe0, config, k)
        fold_seconds, per_epoch, epochs = 0.0, [], []
        for fold in range(n_folds):
            human = int(((folds != fold) & (folds != HOLDOUT)).sum())
            monitor = int(np.ceil(human * recipe.monitor_share)) if recipe.early_stopping else 0  # as sklearn
            human -= monitor
            pseudo = 0 if k == 0 else (bound if config.pseudo_ratio is None
                                       else min(bound, int(np.ceil(config.pseudo_ratio * human))))
            n_epoch = human + pseudo
            n_ep = recipe.epochs_for(n_epoch)
            per_epoch.append(n_epoch)
            epochs.append(n_ep)
            valid = int((folds == fold).sum())
            fold_seconds += (n_ep * n_epoch * costs.train
                             + (valid + scored + n_ep * monitor) * costs.score)
        if config.trainer(k) == "finetune" or config.mode == "faithful":
            shown = "fine-tuned student" if config.trainer(k) == "finetune" else "faithful mode"
            out.append({"stage": f"round {k}", "rows": f"{shown}: not estimated", "disk": "", "seconds": None})
            continue
        trains = f"{min(per_epoch):,}–{max(per_epoch):,}" if min(per_epoch) != max(per_epoch) else f"{per_epoch[0]:,}"
        selected = "" if k == 0 else f", selection ≤ {bound:,} per fold"
        out.append({"stage": f"round {k}", "rows": f"{n_folds} folds × ≤ {max(epochs)} epochs × {trains} rows{selected}",
                    "disk": "", "seconds": fold_seconds})
    return out


def plan_run(config: RunConfig, progress) -> tuple[list[dict], Costs]:
    """Read the run's inputs (checked as a run checks them), measure this machine and estimate each stage."""
    config.validate()
    quiet_transformers()
    files = find_encoder(config.encoder)
    labeled = load_labeled(config.train)
    test = load_unlabeled(config.test, None) if config.test else None
    pool = load_unlabeled(config.unlabeled, config.unlabeled_limit) if config.unlabeled else None
    for posts in (labeled, test, pool):
        for line in posts.notes() if posts is not None else []:
            progress.note(line)
    check_inputs(config, files, labeled.labels)
    n_rows = {"labeled": len(labeled), "test": len(test) if test else 0, "unlabeled": len(pool) if pool else 0}
    folds = make_folds(labeled.labels, config.folds, config.holdout, config.seed)
    sample = (pool or labeled).texts
    costs = measure_costs(config, files, list(sample), config.resolved_recipe())
    hidden = int(files.config_dict().get("hidden_size", 0))
    return estimate(config, costs, n_rows, folds, hidden), costs

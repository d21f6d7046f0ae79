"""One fold of a round whose student fine-tunes the encoder (finetune.py): trained on the fold's rows under
the round's training budget (rows.py), with early stopping on its monitor slice; it scores the fold's
validation part, the holdout, the test file and the pool with its own encoder and writes the fold's folder
as every round does (DONE last).
"""

from __future__ import annotations

import time

import numpy as np

from ..core._tf import keras
from ..data.batching import length_grouped, padded_length
from ..core.constants import HOLDOUT
from ..heads.finetune import FineTune, Student, drop_tokens
from ..data.metrics import scores
from ..heads.model import save_head_weights
from ..core.progress import Progress
from .rows import Fit, finish_fold, fold_record, fold_rows, fold_seed
from ..core.store import atomic_write_npy


def train_fold(plan, fold: int, progress: Progress) -> dict:
    """Fine-tune fold `fold` of the round and score its validation part, holdout, test file and pool;
    write its folder (DONE last) and return its record."""
    started = time.time()
    ft: FineTune = plan.finetune
    files = plan.files.fold(fold)
    seed = fold_seed(plan, fold)
    rng = np.random.default_rng(seed)
    rows = fold_rows(plan, fold, seed)  # the plan's recipe keeps a monitor slice (early stopping)
    labeled, pool = plan.tokens["labeled"], plan.tokens.get("unlabeled")
    n_h = len(rows.human)
    lengths = np.concatenate([labeled.lengths[rows.human],
                              pool.lengths[rows.pseudo] if len(rows.pseudo) else np.zeros(0, np.int32)])
    steps_per_epoch = -(-rows.n_epoch // ft.batch_size)
    student = Student(plan.encoder_files, ft, ft.epochs * steps_per_epoch, seed)
    task = f"round {plan.round} fold {fold} fine-tune"
    progress.start(task, ft.epochs * steps_per_epoch)
    best_score, best_weights, best_epoch, history = -1.0, None, 0, []
    for epoch in range(ft.epochs):
        losses = []
        rows_now = rows.epoch(rng)
        for part in (rows_now[b] for b in length_grouped(lengths[rows_now], ft.batch_size, rng)):
            from_h, from_p = part[part < n_h], part[part >= n_h] - n_h
            taken = np.concatenate([from_h, from_p + n_h])
            cut = padded_length(lengths[taken].max(), labeled.input_ids.shape[1])
            parts = [(labeled, rows.human[from_h])] + ([(pool, rows.pseudo[from_p])] if len(from_p) else [])
            ids = np.concatenate([tokens.input_ids[r, :cut] for tokens, r in parts])
            mask = np.concatenate([tokens.attention_mask[r, :cut] for tokens, r in parts])
            ids = drop_tokens(ids, mask, ft.token_dropout, plan.mask_id, rng)
            losses.append(student.train_on(ids, mask, rows.targets[taken], rows.weights[taken]))
            progress.advance(task)
        entry = {"epoch": epoch + 1, "loss": float(np.mean(losses))}
        history.append(entry)
        if len(rows.monitor):
            entry["monitor_macro_f1"] = scores(plan.labels[rows.monitor],
                                               student.predict(labeled, rows.monitor))["macro_f1"]
            if entry["monitor_macro_f1"] > best_score:
                best_score, best_weights, best_epoch = entry["monitor_macro_f1"], student.model.get_weights(), epoch + 1
            if epoch + 1 - best_epoch >= ft.patience:
                progress.advance(task, (ft.epochs - epoch - 1) * steps_per_epoch)
                break
    progress.finish(task)
    if best_weights is not None:
        student.model.set_weights(best_weights)
    train_seconds = time.time() - started

    valid_probs = student.predict(labeled, rows.valid, progress, f"round {plan.round} fold {fold} validate")
    scored = {"holdout": (labeled, np.flatnonzero(plan.folds == HOLDOUT)),
              "test": (plan.tokens.get("test"), None), "unmask": (pool, None)}
    files.path.mkdir(parents=True, exist_ok=True)
    for name, (tokens, idx) in scored.items():
        if tokens is None or (idx is not None and not len(idx)):
            continue
        shown = "pool" if name == "unmask" else name
        probs = student.predict(tokens, np.arange(len(tokens)) if idx is None else idx, progress,
                                f"round {plan.round} fold {fold} score {shown}")
        atomic_write_npy(files.preds(name), probs)
    save_head_weights(student.model, files.weights)
    record = {**fold_record(plan, fold, rows, Fit(history, best_epoch or len(history)), train_seconds, valid_probs),
              "student": ft.name, "encoder_rows": student.encoder_rows}
    finish_fold(files, rows, valid_probs, record, started)
    keras.backend.clear_session()
    return record

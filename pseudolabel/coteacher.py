"""A second view for the teacher: char n-gram TF-IDF + logistic regression on the same folds.

The head sees frozen encoder features; this model sees the characters. Their errors differ, so the
blend of the two is a better teacher than either (measured in `benchmarks/scarce_labels.py`), and
its pseudo-labels carry what the second view knows into the head's next round (co-training).

Fold f's model trains on fold f's training part only (never on its validation part or the
holdout), so with `--pseudo-source fold` the students' OOF scores stay leak-free. The
vectorizer's vocabulary and idf are fitted on the texts alone (labeled and pool), no labels.
Computed once per run and kept in `co_teacher/` of the run directory.
"""

from __future__ import annotations

import numpy as np

from .cv import HOLDOUT
from .data import load_labeled, load_unlabeled
from .errors import PseudoError
from .metrics import scores
from .model import N_CLASSES
from .store import RunDir, atomic_write_json, atomic_write_npy, is_done, load_npy, mark_done, read_json

FOLDER = "co_teacher"
MAX_FEATURES = 300_000


def tfidf_teacher(labeled_texts: list[str], labels: np.ndarray, folds: np.ndarray,
                  pool_texts: list[str]) -> tuple[np.ndarray, dict]:
    """(F, N_pool, 3) pool probabilities of one TF-IDF + LR model per fold, and their OOF scores."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), min_df=2, sublinear_tf=True,
                                 max_features=MAX_FEATURES, dtype=np.float32)
    x = vectorizer.fit_transform(list(labeled_texts) + list(pool_texts))
    x_labeled, x_pool = x[:len(labeled_texts)], x[len(labeled_texts):]
    fold_ids = sorted(set(folds.tolist()) - {HOLDOUT})
    pool = np.zeros((len(fold_ids), len(pool_texts), N_CLASSES), np.float32)
    oof = np.zeros((len(labels), N_CLASSES), np.float32)
    for i, fold in enumerate(fold_ids):
        train = (folds != fold) & (folds != HOLDOUT)
        model = LogisticRegression(max_iter=2000, C=4.0, class_weight="balanced")
        model.fit(x_labeled[train], labels[train])
        columns = model.classes_.astype(int)  # a class absent from the fold keeps probability 0
        pool[i][:, columns] = model.predict_proba(x_pool)
        valid = folds == fold
        oof[np.ix_(valid, columns)] = model.predict_proba(x_labeled[valid])
    evaluated = folds != HOLDOUT
    info = {"model": "char 1-3-gram TF-IDF + logistic regression", "vocabulary": len(vectorizer.vocabulary_),
            "oof": scores(labels[evaluated], oof[evaluated])}
    return pool, info


def co_teacher_probs(run_dir: RunDir, labeled=None, pool=None, progress=None) -> tuple[np.ndarray, dict]:
    """The run's co-teacher pool probabilities (F, N_pool, 3) and info, computed on first use.

    `labeled` and `pool` are the run's posts; without them they are read from the files the run
    was made with (as `pseudo select` does)."""
    folder = run_dir.root / FOLDER
    folds = load_npy(run_dir.round(0) / "folds.npy")
    if is_done(folder) and np.array_equal(load_npy(folder / "folds.npy"), folds):
        return load_npy(folder / "pool_preds.npy"), read_json(folder / "co_teacher.json")
    config = run_dir.saved_config()["config"]
    if labeled is None:
        labeled = load_labeled(config["train"])
    if pool is None:
        if not config.get("unlabeled"):
            raise PseudoError(f"{run_dir.root}: the co-teacher needs the run's unlabeled pool")
        pool = load_unlabeled(config["unlabeled"], config.get("unlabeled_limit"))
    if progress is not None:
        progress.note(f"co-teacher: fitting TF-IDF + logistic regression on {len(labeled.texts):,} labeled posts "
                      f"per fold, scoring {len(pool.texts):,} pool posts")
    probs, info = tfidf_teacher(labeled.texts, labeled.labels, folds, pool.texts)
    folder.mkdir(exist_ok=True)
    (folder / "DONE").unlink(missing_ok=True)
    atomic_write_npy(folder / "folds.npy", folds)
    atomic_write_npy(folder / "pool_preds.npy", probs)
    atomic_write_json(folder / "co_teacher.json", info)
    mark_done(folder)
    return probs, info


def blend(head: np.ndarray, run_dir: RunDir, weight: float) -> np.ndarray:
    """(1 - weight) * head + weight * co-teacher, fold by fold; `head` is (F, N_pool, 3)."""
    if weight <= 0:
        return head
    co, _ = co_teacher_probs(run_dir)
    if co.shape != head.shape:
        raise PseudoError(f"{run_dir.root / FOLDER}: co-teacher predictions of shape {co.shape}, the round's pool "
                          f"predictions are {head.shape}; --restart the run")
    return (1.0 - weight) * head + weight * co

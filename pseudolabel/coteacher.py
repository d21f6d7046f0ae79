"""A second view: char n-gram TF-IDF + logistic regression on the same folds as the head.

The head sees frozen encoder features; this model sees the characters. Their errors differ, so the
blend of the two is a better teacher than either, and a better delivered output (measured in
`benchmarks/scarce_labels.py`).

Fold f's model trains on fold f's training part only (never on its validation part or the
holdout), so with `--pseudo-source fold` the students' OOF scores stay leak-free, and the fold
models' mean on the holdout is an honest score of the blend. The delivered blend uses one more
model, refit on every labeled row, for the test file. The vectorizer's vocabulary and idf are
fitted on the texts alone (labeled and pool), no labels. Computed once per run and kept in
`co_teacher/` of the run directory. scikit-learn only: no TensorFlow is imported here.
"""

from __future__ import annotations

import numpy as np

from .constants import HOLDOUT, N_CLASSES
from .data import load_labeled, load_unlabeled
from .errors import PseudoError
from .metrics import scores
from .store import CoTeacherFiles, RunDir, atomic_write_json, atomic_write_npy, load_npy, read_json

MAX_FEATURES = 300_000
VERSION = 2  # co_teacher.json of version 1 held pool predictions only
ARRAYS = ("oof", "holdout", "pool", "test")  # <name>_preds.npy in the folder, where the run has the split


def _model():
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=2000, C=4.0, class_weight="balanced")


def _probs(model, x) -> np.ndarray:
    out = np.zeros((x.shape[0], N_CLASSES), np.float32)
    out[:, model.classes_.astype(int)] = model.predict_proba(x)  # a class absent from training keeps 0
    return out


def tfidf_teacher(labeled_texts: list[str], labels: np.ndarray, folds: np.ndarray, pool_texts: list[str] | None,
                  test_texts: list[str] | None = None) -> tuple[dict, dict]:
    """Predictions of one TF-IDF + LR model per fold, and of one refit on every labeled row.

    Returns ({"oof": (N_labeled, 3) (zeros on the holdout), "holdout": (F, N_holdout, 3),
    "pool": (F, N_pool, 3) or None, "test": (N_test, 3) of the refit model or None}, info)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), min_df=2, sublinear_tf=True,
                                 max_features=MAX_FEATURES, dtype=np.float32)
    x = vectorizer.fit_transform(list(labeled_texts) + list(pool_texts or []))
    x_labeled, x_pool = x[:len(labeled_texts)], x[len(labeled_texts):]
    fold_ids = sorted(set(folds.tolist()) - {HOLDOUT})
    holdout = folds == HOLDOUT
    out = {"oof": np.zeros((len(labels), N_CLASSES), np.float32),
           "holdout": np.zeros((len(fold_ids), int(holdout.sum()), N_CLASSES), np.float32),
           "pool": np.zeros((len(fold_ids), x_pool.shape[0], N_CLASSES), np.float32) if pool_texts else None,
           "test": None}
    for i, fold in enumerate(fold_ids):
        model = _model().fit(x_labeled[(folds != fold) & ~holdout], labels[(folds != fold) & ~holdout])
        valid = folds == fold
        out["oof"][valid] = _probs(model, x_labeled[valid])
        if holdout.any():
            out["holdout"][i] = _probs(model, x_labeled[holdout])
        if out["pool"] is not None:
            out["pool"][i] = _probs(model, x_pool)
    if test_texts:
        out["test"] = _probs(_model().fit(x_labeled, labels), vectorizer.transform(list(test_texts)))
    evaluated = ~holdout
    info = {"version": VERSION, "model": "char 1-3-gram TF-IDF + logistic regression",
            "vocabulary": len(vectorizer.vocabulary_), "oof": scores(labels[evaluated], out["oof"][evaluated]),
            "holdout": scores(labels[holdout], out["holdout"].mean(axis=0)) if holdout.any() else None,
            "test_model": f"refit on all {len(labels):,} labeled rows" if test_texts else None,
            "rows": {"labeled": len(labels), "pool": x_pool.shape[0], "test": len(test_texts or [])}}
    return out, info


def _cached(files: CoTeacherFiles, folds: np.ndarray, rows: dict) -> bool:
    if not files.is_done() or not np.array_equal(load_npy(files.folds), folds):
        return False
    info = read_json(files.record)
    return info.get("version") == VERSION and info.get("rows") == rows


def co_teacher_outputs(run_dir: RunDir, labeled=None, pool=None, test=None, progress=None) -> tuple[dict, dict]:
    """The run's co-teacher predictions (see `tfidf_teacher`) and info, computed on first use.

    `labeled`, `pool` and `test` are the run's posts; without them they are read from the files
    the run was made with (as `pseudo select` does)."""
    files = run_dir.co_teacher
    folds = load_npy(run_dir.round(0).folds)
    config = run_dir.saved_config()["config"]
    if labeled is None:
        labeled = load_labeled(config["train"])
    if pool is None and config.get("unlabeled"):
        pool = load_unlabeled(config["unlabeled"], config.get("unlabeled_limit"))
    if test is None and config.get("test"):
        test = load_unlabeled(config["test"], None)
    rows = {"labeled": len(labeled.texts), "pool": len(pool.texts) if pool else 0, "test": len(test.texts) if test else 0}
    if _cached(files, folds, rows):
        arrays = {name: load_npy(files.preds(name)) if files.preds(name).is_file() else None for name in ARRAYS}
        return arrays, read_json(files.record)
    if progress is not None:
        progress.note(f"co-teacher: fitting TF-IDF + logistic regression on {rows['labeled']:,} labeled posts per "
                      f"fold, scoring {rows['pool']:,} pool and {rows['test']:,} test posts")
    arrays, info = tfidf_teacher(labeled.texts, labeled.labels, folds, pool.texts if pool else None,
                                 test.texts if test else None)
    files.path.mkdir(exist_ok=True)
    files.done_marker.unlink(missing_ok=True)
    for stale in files.all_preds():
        stale.unlink()
    atomic_write_npy(files.folds, folds)
    for name, array in arrays.items():
        if array is not None:
            atomic_write_npy(files.preds(name), array)
    atomic_write_json(files.record, info)
    files.mark_done()
    return arrays, info


def blend(head: np.ndarray, run_dir: RunDir, weight: float) -> np.ndarray:
    """(1 - weight) * head + weight * co-teacher on the pool, fold by fold; `head` is (F, N_pool, 3)."""
    if weight <= 0:
        return head
    co = co_teacher_outputs(run_dir)[0]["pool"]
    if co is None or co.shape != head.shape:
        raise PseudoError(f"{run_dir.co_teacher.path}: co-teacher pool predictions of shape "
                          f"{None if co is None else co.shape}, the round's pool predictions are {head.shape}; "
                          f"--restart the run")
    return (1.0 - weight) * head + weight * co

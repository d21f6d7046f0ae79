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

import shutil
from pathlib import Path

import numpy as np

from ..core.constants import HOLDOUT, N_CLASSES
from ..data.posts import load_labeled, load_unlabeled
from ..core.errors import PseudoError
from ..data.metrics import scores
from ..core.store import (CoTeacherFiles, RunDir, atomic_write_json, atomic_write_npy, is_done, load_npy, mark_done,
                    read_json)

MAX_FEATURES = 300_000
VERSION = 2  # co_teacher.json of version 1 held pool predictions only
ARRAYS = ("oof", "holdout", "pool", "test")  # <name>_preds.npy in the folder, where the run has the split


def _model():
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=2000, C=4.0, class_weight="balanced")


def _vectorizer(vocabulary: list[str] | None = None):
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(analyzer="char", ngram_range=(1, 3), min_df=2, sublinear_tf=True,
                           max_features=MAX_FEATURES, dtype=np.float32, vocabulary=vocabulary)


class TextModel:
    """One TF-IDF + LR model that scores any text: the co-teacher refit on every labeled row, as the
    delivered blend uses it. Saved as plain files (the n-gram vocabulary as JSON, idf and the
    linear model's weights as .npy), loaded back into the same scikit-learn objects."""

    FILES = ("vocabulary.json", "idf.npy", "coef.npy", "intercept.npy", "classes.npy")

    def __init__(self, vectorizer, model):
        self.vectorizer, self.model = vectorizer, model

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """(N, 3) float32 probabilities, as the run computed the blend's test predictions."""
        return _probs(self.model, self.vectorizer.transform(list(texts)))

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "DONE").unlink(missing_ok=True)
        terms = [""] * len(self.vectorizer.vocabulary_)
        for term, i in self.vectorizer.vocabulary_.items():
            terms[i] = term
        atomic_write_json(folder / "vocabulary.json", terms)
        for name, array in (("idf", self.vectorizer.idf_), ("coef", self.model.coef_),
                            ("intercept", self.model.intercept_), ("classes", self.model.classes_)):
            atomic_write_npy(folder / f"{name}.npy", array)
        mark_done(folder)

    @classmethod
    def load(cls, folder: Path) -> "TextModel":
        folder = Path(folder)
        if not is_done(folder):
            raise PseudoError(f"{folder}: no finished co-teacher model here ({', '.join(cls.FILES)} and DONE)")
        terms = read_json(folder / "vocabulary.json")
        vectorizer = _vectorizer(vocabulary=terms)
        vectorizer.idf_ = load_npy(folder / "idf.npy")
        model = _model()
        model.coef_, model.intercept_ = load_npy(folder / "coef.npy"), load_npy(folder / "intercept.npy")
        model.classes_ = load_npy(folder / "classes.npy")
        if model.coef_.shape != (len(model.classes_), len(terms)):
            raise PseudoError(f"{folder}: coef.npy has shape {model.coef_.shape}, the vocabulary {len(terms)} terms")
        return cls(vectorizer, model)


def _probs(model, x) -> np.ndarray:
    out = np.zeros((x.shape[0], N_CLASSES), np.float32)
    out[:, model.classes_.astype(int)] = model.predict_proba(x)  # a class absent from training keeps 0
    return out


def tfidf_teacher(labeled_texts: list[str], labels: np.ndarray, folds: np.ndarray, pool_texts: list[str] | None,
                  test_texts: list[str] | None = None) -> tuple[dict, dict]:
    """Predictions of one TF-IDF + LR model per fold, and of one refit on every labeled row.

    Returns ({"oof": (N_labeled, 3) (zeros on the holdout), "holdout": (F, N_holdout, 3),
    "pool": (F, N_pool, 3) or None, "test": (N_test, 3) of the refit model or None}, info)."""
    out, info, _ = tfidf_views(labeled_texts, labels, folds, pool_texts, test_texts)
    return out, info


def fit_vectorizer(labeled_texts: list[str], pool_texts: list[str] | None):
    """The vocabulary and idf, fitted on the texts alone (labeled and pool), no labels; and the texts' rows."""
    vectorizer = _vectorizer()
    return vectorizer, vectorizer.fit_transform(list(labeled_texts) + list(pool_texts or []))


def refit(labeled_texts: list[str], labels: np.ndarray, pool_texts: list[str] | None) -> TextModel:
    """The co-teacher refit on every labeled row (the delivered blend's text model)."""
    vectorizer, x = fit_vectorizer(labeled_texts, pool_texts)
    return TextModel(vectorizer, _model().fit(x[:len(labeled_texts)], labels))


def tfidf_views(labeled_texts: list[str], labels: np.ndarray, folds: np.ndarray, pool_texts: list[str] | None,
                test_texts: list[str] | None = None) -> tuple[dict, dict, TextModel | None]:
    """`tfidf_teacher`, and with a test file the refit model that scored it."""
    vectorizer, x = fit_vectorizer(labeled_texts, pool_texts)
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
    whole = None
    if test_texts:
        whole = TextModel(vectorizer, _model().fit(x_labeled, labels))
        out["test"] = whole.predict_proba(test_texts)
    evaluated = ~holdout
    info = {"version": VERSION, "model": "char 1-3-gram TF-IDF + logistic regression",
            "vocabulary": len(vectorizer.vocabulary_), "oof": scores(labels[evaluated], out["oof"][evaluated]),
            "holdout": scores(labels[holdout], out["holdout"].mean(axis=0)) if holdout.any() else None,
            "test_model": f"refit on all {len(labels):,} labeled rows" if test_texts else None,
            "rows": {"labeled": len(labels), "pool": x_pool.shape[0], "test": len(test_texts or [])}}
    return out, info, whole


def _cached(files: CoTeacherFiles, folds: np.ndarray, rows: dict) -> bool:
    if not files.is_done() or not np.array_equal(load_npy(files.folds), folds):
        return False
    info = read_json(files.record)
    return info.get("version") == VERSION and info.get("rows") == rows


def _fit_rows(folds: np.ndarray) -> str:
    """How many labeled posts each fold's model fits on (every fold's but its own, the holdout never),
    in words: `570` or `569–571`."""
    trained = folds != HOLDOUT
    sizes = sorted({int((trained & (folds != f)).sum()) for f in set(folds[trained].tolist())})
    return f"{sizes[0]:,}" if len(sizes) == 1 else f"{sizes[0]:,}–{sizes[-1]:,}"


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
        progress.note(f"co-teacher: fitting TF-IDF + logistic regression per fold on {_fit_rows(folds)} of the "
                      f"{rows['labeled']:,} labeled posts, scoring {rows['pool']:,} pool and {rows['test']:,} test posts")
    arrays, info, whole = tfidf_views(labeled.texts, labeled.labels, folds, pool.texts if pool else None,
                                      test.texts if test else None)
    files.path.mkdir(exist_ok=True)
    files.done_marker.unlink(missing_ok=True)
    for stale in files.all_preds():
        stale.unlink()
    shutil.rmtree(files.refit, ignore_errors=True)
    atomic_write_npy(files.folds, folds)
    for name, array in arrays.items():
        if array is not None:
            atomic_write_npy(files.preds(name), array)
    atomic_write_json(files.record, info)
    if whole is not None:
        whole.save(files.refit)
    files.mark_done()
    return arrays, info


def refit_model(run_dir: RunDir, progress=None) -> TextModel:
    """The run's co-teacher refit on every labeled row: saved by the run when it had a test file,
    else fitted now from the files the run was made with (the same model: the fit is deterministic)."""
    files = run_dir.co_teacher
    if is_done(files.refit):
        return TextModel.load(files.refit)
    from .config import migrate

    config = migrate(run_dir.saved_config())["config"]
    labeled = load_labeled(config["train"])
    pool = load_unlabeled(config["unlabeled"], config.get("unlabeled_limit")) if config.get("unlabeled") else None
    if progress is not None:
        progress.note(f"co-teacher: refitting TF-IDF + logistic regression on all {len(labeled):,} labeled posts")
    whole = refit(labeled.texts, labeled.labels, pool.texts if pool else None)
    whole.save(files.refit)
    return whole


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

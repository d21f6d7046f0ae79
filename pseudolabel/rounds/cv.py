"""The folds of one round: train a head per fold, predict its validation part, score test and pool.

Inputs come as *sources*: objects with `rows(idx) -> list of model inputs` and `len()`. In the
`cached` mode they read encoder features from the on-disk cache; in the `faithful` mode
they are token ids and the encoder runs inside the model, as in the reference script.

Each fold is written to `round_<k>/fold_<i>/` (head weights, validation predictions, scores,
DONE last), so an interrupted round resumes at its first unfinished fold.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from sklearn.model_selection import StratifiedKFold, train_test_split

from ..core._tf import keras
from ..data.batching import length_grouped, padded_length
from ..core.constants import FOLD_SEED, HOLDOUT  # noqa: F401  (re-exported)
from ..core.errors import PseudoError
from ..data.metrics import scores
from ..heads.model import (N_CLASSES, PreciseBatchNorm, Recipe, build_faithful, build_head, mc_parts,
                    mc_sample, reset_optimizer, reset_random_layers, save_head_weights, set_standardization,
                    trace_for_any_shape)
from ..core.progress import Progress
from .rows import Fit, FoldRows, finish_fold, fold_record, fold_rows, fold_seed  # noqa: F401  (FoldRows re-exported)
from ..core.store import RoundFiles, atomic_write_npy, load_npy, read_json
from .uncertainty import moments

PREDICT_CHUNK = 512
_STAT_ROWS = 4096  # rows sampled for the standardisation statistics


def make_folds(labels: np.ndarray, n_folds: int = 5, holdout: float = 0.0, seed: int = 0) -> np.ndarray:
    """Fold id per labeled row; with `holdout` > 0 a stratified share gets HOLDOUT first."""
    labels = np.asarray(labels)
    if n_folds < 2:
        raise PseudoError(f"folds must be >= 2, got {n_folds}")
    if not 0.0 <= holdout < 0.5:
        raise PseudoError(f"holdout must be in [0, 0.5), got {holdout}")
    folds = np.full(len(labels), HOLDOUT, np.int64)
    rows = np.arange(len(labels))
    if holdout > 0:
        rows, _ = train_test_split(rows, test_size=holdout, stratify=labels, random_state=seed)
        rows = np.sort(rows)
    smallest = np.bincount(labels[rows], minlength=N_CLASSES)
    smallest = smallest[smallest > 0].min()
    if smallest < n_folds:
        raise PseudoError(f"folds must be <= the smallest class count ({smallest}), got {n_folds}")
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=FOLD_SEED)
    for i, (_, valid) in enumerate(splitter.split(rows, labels[rows])):
        folds[rows[valid]] = i
    return folds


# ---------------------------------------------------------------- sources


class FeatureSource:
    """Model inputs from encoder features (cached or streamed): [features] or [features, token mask]."""

    def __init__(self, features, with_mask: bool = False):
        self.features = features
        self.with_mask = with_mask

    def __len__(self) -> int:
        return len(self.features)

    def lengths(self, idx: np.ndarray) -> np.ndarray:
        return self.features.lengths[idx]

    def rows(self, idx: np.ndarray) -> list[np.ndarray]:
        x = self.features.rows(idx)
        if not self.with_mask:
            return [x]
        steps = np.arange(x.shape[1])[None, :]
        return [x, (steps < self.features.lengths[idx][:, None]).astype(np.float32)[:, :, None]]


class TokenSource:
    """Model inputs for the faithful model: [input_ids, attention_mask]."""

    def __init__(self, tokens):
        self.tokens = tokens

    def __len__(self) -> int:
        return len(self.tokens)

    def rows(self, idx: np.ndarray) -> list[np.ndarray]:
        return [self.tokens.input_ids[idx], self.tokens.attention_mask[idx].astype(np.int32)]


def _concat(parts: list[list[np.ndarray]]) -> list[np.ndarray]:
    parts = [p for p in parts if p is not None]
    if len(parts) == 1:
        return parts[0]
    return [np.concatenate(arrays) for arrays in zip(*parts)]


def _unwrap(inputs: list[np.ndarray]):
    return inputs[0] if len(inputs) == 1 else inputs


def _trim(inputs: list[np.ndarray], lengths: np.ndarray) -> list[np.ndarray]:
    """Dynamic padding: cut the time axis to the batch's longest row (rounded up, see padded_length)."""
    keep = padded_length(lengths.max() if len(lengths) else 1, inputs[0].shape[1])
    return [x[:, :keep] for x in inputs]


# ---------------------------------------------------------------- one round's plan


@dataclass
class Pseudo:
    """Pseudo-labeled pool rows that join the training part of every fold."""

    source: object  # a source over the unlabeled pool
    rows: list[np.ndarray]  # per fold: pool row indices
    targets: list[np.ndarray]  # per fold: (n, 3) target rows (one-hot or soft)
    weight: float | list[np.ndarray] = 1.0  # every pseudo row's, or per fold one per row (in `rows` order)
    ratio: float | None = None  # pseudo rows per human row in each epoch, a fresh sample (None: all of them)
    monitor_every: str = "epoch"  # early stopping looks every epoch, or every len(human) rows ("human")


@dataclass
class RoundPlan:
    round: int
    files: RoundFiles  # the round's folder
    mode: str  # "cached" or "faithful"
    recipe: Recipe
    max_len: int
    hidden: int
    labels: np.ndarray  # class index per labeled row
    folds: np.ndarray  # fold id per labeled row (HOLDOUT for the holdout)
    labeled: object  # source over the labeled rows
    test: object | None
    unlabeled: object | None
    seed: int = 0
    pseudo: Pseudo | None = None
    bert_factory: Callable[[], object] | None = None  # faithful mode: a fresh frozen TFBertModel
    heads: TrainingHeads = field(default_factory=lambda: TrainingHeads())  # the run's kept training head
    student: str = "head"  # "finetune": each fold fine-tunes the encoder (finetune.py)
    finetune: object | None = None  # finetune.FineTune, with student "finetune"
    tokens: dict | None = None  # split -> tokenize.Tokens, with student "finetune"
    encoder_files: object | None = None  # encoder.EncoderFiles, with student "finetune"
    mask_id: int = 103  # the vocabulary's [MASK] id (the student's token dropout)
    mc_passes: int = 0  # MC-dropout passes of each fold's head over the pool, written once the round is scored
    n_folds: int = field(init=False)

    def __post_init__(self):
        self.n_folds = int(self.folds.max()) + 1


def _head_key(plan: RoundPlan) -> tuple:
    return plan.max_len, plan.hidden, plan.recipe


def _new_model(plan: RoundPlan, compile: bool = True):
    if plan.mode == "faithful":
        return build_faithful(plan.bert_factory(), plan.max_len, plan.recipe, compile)
    return build_head(plan.max_len, plan.hidden, plan.recipe, compile)


@dataclass
class _TrainingHead:
    key: tuple
    model: object
    precise: PreciseBatchNorm | None


class TrainingHeads:
    """The cached mode's training head, kept for the next fold or round; owned by the run (one per
    `Run`, released when it ends) and handed to each round in its plan.

    One model per shape and recipe serves every fold (and every round with the same recipe), so
    Keras traces its training and predict functions once instead of once per fold (2-4 s a fold at
    bert-base size); `load_heads` scores with it too. Each fold gets exactly what a new model would
    have: the weights of a head built after seeding (built, never traced), a zeroed optimizer, and
    random layers restarted from the fold's seed (`reset_random_layers` raises if it cannot); a
    resumed run therefore trains the same folds as an uninterrupted one. Faithful mode builds a
    model per fold, as the reference script does.

    Seeding TensorFlow empties its kernel cache, and the kept head's functions are then set up again
    for every input shape they meet (about 0.7 s a shape for a tiny head): `prepare` builds the
    starting weights of all of a round's folds at once, so that happens once a round, not once a fold."""

    def __init__(self):
        self.kept: _TrainingHead | None = None
        self.starts: dict[tuple, list] = {}  # (shape and recipe, seed) -> a new head's weights

    def for_plan(self, plan: "RoundPlan") -> _TrainingHead | None:
        """The head kept from an earlier fold (or round) with the plan's shape and recipe."""
        key = _head_key(plan)
        return self.kept if plan.mode == "cached" and self.kept is not None and self.kept.key == key else None

    def prepare(self, plan: "RoundPlan", folds: list[int]) -> None:
        """Build the starting weights of `folds` now, each after seeding as `fold_model` would."""
        if plan.mode != "cached":
            return
        for fold in folds:
            seed = fold_seed(plan, fold)
            keras.utils.set_random_seed(seed)
            self.starts[(_head_key(plan), seed)] = _new_model(plan, compile=False).get_weights()

    def fold_model(self, plan: "RoundPlan", seed: int):
        """A compiled head with fresh weights for the fold with `seed`, and its precise-BN helper."""
        if plan.mode != "cached":  # a model per fold, as the reference script
            keras.utils.set_random_seed(seed)
            model = _new_model(plan)
            reset_random_layers(model, seed)
            return model, PreciseBatchNorm(model) if plan.recipe.precise_bn > 0 else None
        head = self.for_plan(plan)
        start = self.starts.pop((_head_key(plan), seed), None)
        if start is None:
            keras.utils.set_random_seed(seed)
            start = _new_model(plan, compile=False).get_weights()
        else:  # seeded in `prepare`; Python's and NumPy's global streams as if seeded here
            random.seed(seed)
            np.random.seed(seed)
        if head is None:
            head = self._keep(plan)
        head.model.set_weights(start)
        reset_optimizer(head.model)
        reset_random_layers(head.model, seed)
        return head.model, head.precise

    def _keep(self, plan: "RoundPlan") -> _TrainingHead:
        """A new training head for the plan's shape and recipe, its functions traced for any batch (once)."""
        self.release()
        model = _new_model(plan)
        precise = PreciseBatchNorm(model) if plan.recipe.precise_bn > 0 else None
        trace_for_any_shape(model)
        if precise is not None and precise.to_first is not None:
            trace_for_any_shape(precise.to_first, train=False)
        self.kept = _TrainingHead(_head_key(plan), model, precise)
        return self.kept

    def release(self) -> None:
        """Drop the kept head (a later fold with another shape or recipe builds a new one)."""
        if self.kept is not None:
            self.kept = None
            keras.backend.clear_session()


def _standardization(plan: RoundPlan, train_rows: np.ndarray, rng: np.random.Generator):
    """Per-dimension mean and std over the real tokens of (a sample of) the training rows."""
    sample = np.sort(rng.choice(train_rows, size=min(len(train_rows), _STAT_ROWS), replace=False))
    total = np.zeros(plan.hidden)
    square = np.zeros(plan.hidden)
    count = 0
    features = plan.labeled.features
    for start in range(0, len(sample), PREDICT_CHUNK):
        part = sample[start:start + PREDICT_CHUNK]
        x = features.rows(part).astype(np.float64)
        real = np.arange(x.shape[1])[None, :] < features.lengths[part][:, None]
        tokens = x[real]
        total += tokens.sum(axis=0)
        square += np.square(tokens).sum(axis=0)
        count += len(tokens)
    mean = total / count
    std = np.sqrt(np.maximum(square / count - mean ** 2, 0.0)) + 1e-3
    return mean, std


class FoldHeads:
    """The heads of a round's folds behind one Keras model: each head's weights are swapped in to
    predict, so the predict function is traced once for all heads instead of once per head.
    Predictions are those of the heads themselves (inference has no randomness)."""

    def __init__(self, model, weights: list[list[np.ndarray]] | None = None):
        self.model = model
        self.weights = weights  # None: the model's own weights, one head
        self._current = 0 if weights is None else None
        # several heads: swapped in through the layers alone (what save_head_weights wrote), without
        # the compiled loss and optimizer of a training model
        self._layers = None if weights is None else keras.Model(model.inputs, model.outputs)

    @classmethod
    def load(cls, model, paths) -> "FoldHeads":
        """The heads saved at `paths` (h5 weights of `model`'s architecture), in that order."""
        heads = cls(model, [])
        for path in paths:
            heads._layers.load_weights(str(path))
            heads.weights.append(heads._layers.get_weights())
        return heads

    def __len__(self) -> int:
        return 1 if self.weights is None else len(self.weights)

    def predict_on_batch(self, head: int, x) -> np.ndarray:
        if head != self._current:
            self._layers.set_weights(self.weights[head])
            self._current = head
        return self.model.predict_on_batch(x)


def predict(heads, source, progress: Progress, task: str, idx: np.ndarray | None = None,
            dynamic: bool = False) -> np.ndarray:
    """(len(heads), N, 3): every head on each chunk of rows, each chunk read once.

    `heads`: a FoldHeads, or a Keras model (one head). With `dynamic`, rows go in order of length
    and each chunk is cut to its longest row."""
    heads = heads if isinstance(heads, FoldHeads) else FoldHeads(heads)
    idx = np.arange(len(source)) if idx is None else np.asarray(idx)
    out = np.zeros((len(heads), len(idx), N_CLASSES), np.float32)
    progress.start(task, len(idx))
    for at in score_chunks(source, idx, dynamic):
        out[:, at] = score_chunk(heads, source, idx[at], dynamic)
        progress.advance(task, len(at))
    progress.finish(task)
    return out


def score_chunks(source, idx: np.ndarray, dynamic: bool) -> list[np.ndarray]:
    """Positions in `idx` of each chunk `predict` scores at once: in row order, or with `dynamic` in order of
    length (each chunk is then cut to its longest row, so where a chunk starts changes its numbers)."""
    order = np.argsort(source.lengths(idx), kind="stable") if dynamic else np.arange(len(idx))
    return [order[start:start + PREDICT_CHUNK] for start in range(0, len(idx), PREDICT_CHUNK)]


def score_chunk(heads: FoldHeads, source, rows: np.ndarray, dynamic: bool) -> np.ndarray:
    """(len(heads), len(rows), 3): every head on one chunk of `source`'s rows."""
    inputs = source.rows(rows)
    x = _unwrap(_trim(inputs, source.lengths(rows)) if dynamic else inputs)
    return np.stack([heads.predict_on_batch(m, x) for m in range(len(heads))])


def mc_moments(plan: RoundPlan, passes: int, progress: Progress) -> np.ndarray:
    """(F, N_pool, 7): the moments (`uncertainty.moments`) of `passes` MC-dropout passes of each fold's head
    over the pool, chunk by chunk as `predict` scores; each fold's dropout streams start from its seed, so a
    resumed round gets the same numbers."""
    model = build_head(plan.max_len, plan.hidden, plan.recipe, compile=False, mc_dropout=True)
    layers = keras.Model(model.inputs, model.outputs)  # loads what save_head_weights wrote
    parts = mc_parts(model)  # the deterministic part once a batch, the sampling part each pass
    source, dynamic = plan.unlabeled, plan.recipe.dynamic_padding
    idx = np.arange(len(source))
    out = np.zeros((plan.n_folds, len(idx), 2 * N_CLASSES + 1), np.float32)
    task = f"round {plan.round} MC dropout ({passes} passes a fold) on the pool"
    progress.start(task, plan.n_folds * len(idx))
    for fold in range(plan.n_folds):
        layers.load_weights(str(plan.files.fold(fold).weights))
        reset_random_layers(model, fold_seed(plan, fold))
        for at in score_chunks(source, idx, dynamic):
            inputs = source.rows(idx[at])
            x = _unwrap(_trim(inputs, source.lengths(idx[at])) if dynamic else inputs)
            out[fold, at] = moments(mc_sample(parts, x, passes))
            progress.advance(task, len(at))
    progress.finish(task)
    return out


def _batch_inputs(plan: RoundPlan, rows: FoldRows, order: np.ndarray):
    """Model inputs of training rows `order` (indices into human then pseudo), and their order."""
    n_h = len(rows.human)
    from_h, from_p = order[order < n_h], order[order >= n_h] - n_h
    parts = [plan.labeled.rows(rows.human[from_h]) if len(from_h) else None,
             plan.pseudo.source.rows(rows.pseudo[from_p]) if len(from_p) else None]
    taken = np.concatenate([from_h, from_p + n_h])
    inputs = _concat(parts)
    return _unwrap(_trim(inputs, rows.lengths[taken]) if rows.lengths is not None else inputs), taken


def _epoch_batches(rows: FoldRows, rng, batch: int, dynamic: bool) -> list[np.ndarray]:
    """One epoch's batches of training-row indices: a fresh sample (`FoldRows.epoch`), shuffled, or
    length-grouped with dynamic padding."""
    rows_now = rows.epoch(rng)
    if dynamic:
        return [rows_now[part] for part in length_grouped(rows.lengths[rows_now], batch, rng)]
    order = rows_now[rng.permutation(len(rows_now))]
    return [order[start:start + batch] for start in range(0, len(order), batch)]


def _fit(plan: RoundPlan, fold: int, rows: FoldRows, model, precise, rng, progress: Progress) -> Fit:
    """The recipe's epochs over the fold's rows, early stopping on the monitor slice if the recipe says.
    The monitor looks every `rows.check_rows` rows (an epoch, or in later rounds with `--monitor-every
    human` as many rows as the fold's human part: round 0's epoch), patience and the best counted in those
    checks; a check never spans two epochs."""
    recipe, dynamic, batch = plan.recipe, rows.lengths is not None, plan.recipe.batch_size
    steps_per_epoch = -(-rows.n_epoch // batch)
    epochs = recipe.epochs_for(rows.n_epoch)
    per_check = min(steps_per_epoch, -(-rows.check_rows // batch))
    n_checks = epochs * -(-steps_per_epoch // per_check)
    task = f"round {plan.round} fold {fold} train"
    progress.start(task, epochs * steps_per_epoch)
    best_score, best_weights, best_check, done = -1.0, None, 0, 0
    history, queue = [], []
    for check in range(n_checks):
        queue = queue or _epoch_batches(rows, rng, batch, dynamic)
        batches, queue = queue[:per_check], queue[per_check:]
        losses = []
        for part in batches:
            x, taken = _batch_inputs(plan, rows, part)
            losses.append(float(model.train_on_batch(x, rows.targets[taken], sample_weight=rows.weights[taken])))
            progress.advance(task)
        done += len(batches)
        entry = {"epoch": check + 1, "loss": float(np.mean(losses))}
        if precise is not None:  # BatchNorm statistics of the rows this check trained on
            trained = np.sort(np.concatenate(batches))
            sample = trained[np.sort(rng.choice(len(trained), size=min(len(trained), recipe.precise_bn),
                                                replace=False))]
            if dynamic:  # chunks of similar length, as predictions run
                sample = sample[np.argsort(rows.lengths[sample], kind="stable")]
            chunks = (sample[i:i + PREDICT_CHUNK] for i in range(0, len(sample), PREDICT_CHUNK))
            precise.update(_batch_inputs(plan, rows, chunk)[0] for chunk in chunks)
        history.append(entry)
        if not recipe.early_stopping:
            continue
        monitor_probs = predict(model, plan.labeled, Progress(), "", rows.monitor, dynamic)[0]
        entry["monitor_macro_f1"] = scores(plan.labels[rows.monitor], monitor_probs)["macro_f1"]
        if entry["monitor_macro_f1"] > best_score:
            best_score, best_weights, best_check = entry["monitor_macro_f1"], model.get_weights(), check + 1
        if check + 1 - best_check >= recipe.patience:
            progress.advance(task, epochs * steps_per_epoch - done)
            break
    progress.finish(task)
    if best_weights is not None:
        model.set_weights(best_weights)
    return Fit(history, best_check or len(history))


def train_fold(plan: RoundPlan, fold: int, progress: Progress) -> dict:
    """Train fold `fold` of the round, write its folder (DONE last), return its record."""
    started = time.time()
    files = plan.files.fold(fold)
    seed = fold_seed(plan, fold)
    rng = np.random.default_rng(seed)
    rows = fold_rows(plan, fold, seed)
    model, precise = plan.heads.fold_model(plan, seed)
    if plan.recipe.standardize:
        set_standardization(model, *_standardization(plan, rows.human, rng))
    fit = _fit(plan, fold, rows, model, precise, rng, progress)
    train_seconds = time.time() - started

    valid_probs = predict(model, plan.labeled, progress, f"round {plan.round} fold {fold} validate", rows.valid,
                          rows.lengths is not None)[0]
    record = fold_record(plan, fold, rows, fit, train_seconds, valid_probs)
    files.path.mkdir(parents=True, exist_ok=True)
    if plan.mode == "faithful":  # the script predicts test and pool with each fold's model
        for name, source in (("test", plan.test), ("unmask", plan.unlabeled)):
            if source is not None:
                probs = predict(model, source, progress, f"round {plan.round} fold {fold} {name}")[0]
                atomic_write_npy(files.preds(name), probs)
    save_head_weights(model, files.weights)
    finish_fold(files, rows, valid_probs, record, started)
    if plan.mode != "cached":
        keras.backend.clear_session()
    return record


def fold_damage(plan: RoundPlan, fold: int) -> str | None:
    """What is wrong with a finished fold's files (missing, truncated, not of this round's folds), or None."""
    files = plan.files.fold(fold)
    try:
        read_json(files.record)
        valid = load_npy(files.valid_idx)
        preds = load_npy(files.valid_preds)
        if not np.array_equal(valid, np.flatnonzero(plan.folds == fold)):
            return f"{files.valid_idx.name} is not the fold's validation part"
        if preds.shape != (len(valid), N_CLASSES):
            return f"{files.valid_preds.name} has shape {preds.shape}, the fold has {len(valid)} rows"
        for name, rows in per_fold_splits(plan).items():
            if load_npy(files.preds(name)).shape != (rows, N_CLASSES):
                return f"{files.preds(name).name} is not of the split's {rows} rows"
        with open(files.weights, "rb") as fh:
            if fh.read(8) != b"\x89HDF\r\n\x1a\n":
                return f"{files.weights.name} is not an HDF5 file"
    except (OSError, ValueError, PseudoError) as exc:  # missing or truncated
        return str(exc).splitlines()[0] or type(exc).__name__
    return None


def per_fold_splits(plan: RoundPlan) -> dict[str, int]:
    """Splits each fold model scores itself (faithful mode, fine-tuned students), and their rows."""
    if plan.mode != "faithful" and plan.student != "finetune":
        return {}
    splits = {"test": plan.test, "unmask": plan.unlabeled}
    out = {name: len(source) for name, source in splits.items() if source is not None}
    held = int((plan.folds == HOLDOUT).sum())
    if plan.student == "finetune" and held:
        out["holdout"] = held
    return out


def load_heads(plan: RoundPlan) -> FoldHeads:
    """Every fold's trained head of the round, behind one model: the training head when one is
    kept (its predict function is traced already), else a new one."""
    paths = [plan.files.fold(fold).weights for fold in range(plan.n_folds)]
    reused = plan.heads.for_plan(plan)
    return FoldHeads.load(reused.model if reused else _new_model(plan, compile=False), paths)


@dataclass
class RoundOutput:
    oof: np.ndarray  # (N_labeled, 3), zeros on holdout rows
    test: np.ndarray | None  # (folds, N_test, 3)
    unmask: np.ndarray | None  # (folds, N_unlabeled, 3)
    holdout: np.ndarray | None  # (folds, N_holdout, 3)
    folds: list[dict]
    seconds: dict


def train_one(plan: RoundPlan, fold: int, progress: Progress) -> dict:
    """Train fold `fold` with the round's trainer (the head, or the fine-tuned student); its record."""
    if plan.student == "finetune":
        from .student_fold import train_fold as fine_tune_fold

        return fine_tune_fold(plan, fold, progress)
    return train_fold(plan, fold, progress)


def score_source(plan: RoundPlan, name: str):
    """The source a round's scoring job `name` reads: test, the pool ("unmask"), or the labeled holdout."""
    return {"test": plan.test, "unmask": plan.unlabeled, "holdout": plan.labeled}[name]


class LocalFolds:
    """The folds of a round one after another in this process (`--executor local`)."""

    def train(self, plan: RoundPlan, folds: list[int], progress: Progress):
        """Yield (fold, record) as each fold of `folds` finishes (its folder written, DONE last)."""
        if plan.student != "finetune":
            plan.heads.prepare(plan, folds)
        for fold in folds:
            yield fold, train_one(plan, fold, progress)

    def score(self, plan: RoundPlan, jobs: list[tuple[str, np.ndarray | None]], progress: Progress) -> dict:
        """Every fold head of the round on each job's rows (None: all of its source's): {name: (F, N, 3)}."""
        heads, out = load_heads(plan), {}
        for name, idx in jobs:
            shown = "pool" if name == "unmask" else name  # unmask_preds.npy: the reference script's name
            out[name] = predict(heads, score_source(plan, name), progress, f"round {plan.round} score {shown}", idx,
                                plan.recipe.dynamic_padding)
        if plan.heads.for_plan(plan) is None:
            keras.backend.clear_session()
        return out


def run_folds(plan: RoundPlan, progress: Progress, executor=None) -> RoundOutput:
    """Train (or resume) every fold of the round, then score test, pool and holdout. `executor` trains
    the folds not finished yet (`LocalFolds` by default; `executor.RayFolds` on a Ray cluster)."""
    started = time.time()
    records, pending = {}, []
    for fold in range(plan.n_folds):
        files = plan.files.fold(fold)
        reused = files.is_done()
        if reused and (damaged := fold_damage(plan, fold)):
            progress.note(f"round {plan.round} fold {fold}: finished earlier but {damaged}; training it again")
            files.done_marker.unlink()
            reused = False
        if reused:
            progress.note(f"round {plan.round} fold {fold}: finished earlier, reused")
            records[fold] = read_json(files.record)
            progress.fold_finished(plan.round, fold, plan.n_folds, records[fold], True)
        else:
            pending.append(fold)
    for fold, record in (executor or LocalFolds()).train(plan, pending, progress):
        records[fold] = record
        progress.fold_finished(plan.round, fold, plan.n_folds, record, False)
    records = [records[fold] for fold in range(plan.n_folds)]
    train_seconds = time.time() - started

    oof = np.zeros((len(plan.labels), N_CLASSES), np.float32)
    for fold in range(plan.n_folds):
        files = plan.files.fold(fold)
        oof[load_npy(files.valid_idx)] = load_npy(files.valid_preds)

    started = time.time()
    holdout_rows = np.flatnonzero(plan.folds == HOLDOUT)
    out = {"test": None, "unmask": None, "holdout": None}
    for name in per_fold_splits(plan):
        out[name] = np.stack([load_npy(plan.files.fold(i).preds(name)) for i in range(plan.n_folds)])
    jobs = [(name, None) for name in ("test", "unmask") if score_source(plan, name) is not None and out[name] is None]
    if len(holdout_rows) and out["holdout"] is None:
        jobs.append(("holdout", holdout_rows))
    if jobs:
        out.update((executor or LocalFolds()).score(plan, jobs, progress))
    if plan.mc_passes and plan.unlabeled is not None and not plan.files.pool_mc.is_file():
        atomic_write_npy(plan.files.pool_mc, mc_moments(plan, plan.mc_passes, progress))
    return RoundOutput(oof, out["test"], out["unmask"], out["holdout"], records,
                       {"train": train_seconds, "score": time.time() - started})

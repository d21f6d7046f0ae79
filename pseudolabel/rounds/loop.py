"""A run: round 0 of the recipe, then pseudo-label rounds, resumable from its run directory.

    load files -> features (once) -> round 0 folds -> [select -> round r folds]* -> stop reason

Round r >= 1 selects pseudo-labels from round r-1's pool predictions (re-selected every round),
then trains every fold, with fresh weights, on its human-labeled training part plus the selected
pool rows. Folds are those of round 0; validation parts hold human-labeled rows only.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np

from .calibrate import calibration_report
from .config import OMITTED_AT_DEFAULT, SCHEMA, RunConfig, migrate, round0_key  # noqa: F401  (RunConfig re-exported)
from ..core.constants import VERSION
from .coteacher import co_teacher_outputs
from .cv import HOLDOUT, FeatureSource, Pseudo, RoundPlan, TokenSource, TrainingHeads, make_folds, run_folds
from ..data.posts import LABEL_VALUES, label_values, load_labeled, load_unlabeled
from .class_weights import class_weight_record
from .deliver import (blend_scores, blends_rounds, choose, delivered_holdout, estimation_probs, mean_scores,
                      usable_rounds, write_final)
from .costs import NOMINAL, estimated, length_share, round_work
from .executor import RayEncoder, make_executor
from ..encoding.encoder import EncoderFiles, FrozenEncoder, find_encoder, load_bert, load_tokenizer, quiet_transformers
from ..core.errors import PseudoError
from ..encoding.features import StreamedFeatures, cache_rows, features_for
from ..data.metrics import scores
from ..heads.model import N_CLASSES
from ..core.progress import Progress
from .select import NOT_SELECTED
from .selection import (DRIFT_WARN, changed_labels, mix_drift, pseudo_targets, pseudo_weights, read_selection,
                        select_from_round, teacher_probs, write_selection)
from ..core.store import (RunDir, RunLock, atomic_write_csv, atomic_write_json, atomic_write_npy, computing, load_npy,
                    read_json)
from ..data.tokenize import tokenize


@dataclass
class RunResult:
    run_dir: Path
    rounds: list[dict]
    stop_reason: str | None
    notes: list[str] = field(default_factory=list)
    encoder_rows: int = 0  # texts the frozen encoder ran over in this process
    final: dict | None = None  # what the run delivered (final.json)


def _prior(labels: np.ndarray) -> list[float]:
    return (np.bincount(labels, minlength=N_CLASSES) / len(labels)).tolist()


class Run:
    """One `pseudo run`: owns the loaded inputs, the lazy encoder and the run directory."""

    def __init__(self, config: RunConfig, progress: Progress | None = None, restart: bool = False):
        config.validate()
        self.config = config
        self.progress = progress or Progress()
        self.dir = RunDir(config.run_dir)
        self.recipe = config.resolved_recipe()
        self._encoder: FrozenEncoder | None = None
        self.heads = TrainingHeads()  # the training head kept across folds and rounds
        self.executor = None  # where folds train (executor.py), started when a round first trains
        self._tokenizer = None
        self._tokens: dict | None = None  # every split's token ids, for fine-tuned students
        quiet_transformers()
        self.files: EncoderFiles = find_encoder(config.encoder)
        self.labeled = load_labeled(config.train)
        config.resolve_student(len(self.labeled))
        self.test = load_unlabeled(config.test, None) if config.test else None
        self.pool = load_unlabeled(config.unlabeled, config.unlabeled_limit) if config.unlabeled else None
        for posts in (self.labeled, self.test, self.pool):
            for line in posts.notes() if posts is not None else []:
                self.progress.note(line)
        check_inputs(config, self.files, self.labeled.labels)  # before anything is written
        rows = {"train_rows": len(self.labeled), "test_rows": len(self.test) if self.test else 0,
                "unlabeled_rows": len(self.pool) if self.pool else 0}
        self.lock = RunLock(self.dir.root).acquire("pseudo run")  # released when execute ends
        try:
            prepare_run_dir(self.dir, config, self.recipe, self.files, rows, restart, self.progress)
        except BaseException:
            self.lock.release()
            raise
        if note := auto_student_note(config):
            self.progress.note(note)

    # ------------------------------------------------------------ lazy encoder and tokens

    def encoder(self) -> FrozenEncoder:
        if self._encoder is None:
            self._encoder = FrozenEncoder(self.files)
        return self._encoder

    def tokenize(self, texts: list[str], split: str):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.files)
        return tokenize(texts, self._tokenizer, self.config.max_len, self.progress, f"tokenize {split}")

    def all_tokens(self) -> dict:
        """Token ids of every split (fine-tuned students read posts, not features), tokenized once."""
        if self._tokens is None:
            splits = {"labeled": self.labeled, "test": self.test, "unlabeled": self.pool}
            self._tokens = {split: self.tokenize(posts.texts, split) for split, posts in splits.items() if posts}
        return self._tokens

    def sources(self) -> dict:
        """Every split's model inputs: the frozen encoder's cached features, or token ids where no round
        reads features (faithful mode; a run whose every round fine-tunes the encoder skips the frozen pass)."""
        splits = {"labeled": self.labeled, "test": self.test, "unlabeled": self.pool}
        fine_tuned = self.config.fine_tunes_throughout()
        out = {}
        for split, posts in splits.items():
            if posts is None:
                out[split] = None
            elif self.config.mode == "faithful" or fine_tuned:
                out[split] = TokenSource(self.all_tokens()[split])
            else:
                feats = features_for(split, posts.texts, cache_dir=self.dir.features,
                                     encoder_identity=self.files.identity, max_len=self.config.max_len,
                                     tokenize=lambda texts, s=split: self.tokenize(texts, s),
                                     encoder=partial(feature_encoder, self),
                                     stream=split in self.config.stream, progress=self.progress)
                out[split] = FeatureSource(feats, with_mask=self.recipe.zero_padding)
        return out

    # ------------------------------------------------------------ rounds

    def execute(self) -> RunResult:
        try:
            return self._execute()
        finally:
            self.heads.release()
            getattr(self.executor, "close", lambda: None)()
            self.lock.release()

    def _execute(self) -> RunResult:
        """Round 0, then per round: select -> train every fold -> record, until `stop_reason` says why not.
        A finished round (DONE) is read back instead of trained, so an interrupted run resumes."""
        atomic_write_json(self.dir.status_path, {"stop_reason": None, "running": True})
        folds, sources = run_folds_of(self.dir.round(0).folds, self.labeled.labels, self.config), self.sources()
        self.progress.plan(self.config.rounds + 1, self.config.folds, fold_work(self, folds, sources["labeled"]))
        history = History(first_selected=np.full(len(self.pool) if self.pool else 0, -1, np.int64))
        stop = None
        for k in range(self.config.rounds + 1):
            if k and (stop := stop_reason(self.config, history)):
                break
            with self.shared_round(k):
                if self.dir.round(k).is_done():
                    history.reuse(self.dir, k, with_pool=self.pool is not None)
                    self.progress.note(f"round {k}: finished earlier, reused")
                    self.progress.round_reused(k, self.config.folds)
                    continue
                pseudo, info = None, {}
                if k:
                    labels, info = self.selection(k)
                    if stop := stop_reason(self.config, history, labels):
                        break
                    pseudo = self.pseudo(labels, sources["unlabeled"], k)
                    history.select(k, labels, info)
                metrics = self.train_round(k, folds, sources, pseudo, info)
                self.record(k, metrics, history)
            self.progress.round_finished(history.rounds)
        stop = stop or stop_reason(self.config, history) or "max_rounds"
        final = deliver(self, history.rounds) if history.rounds else None
        atomic_write_json(self.dir.status_path, {"stop_reason": stop, "rounds_finished": len(history.rounds)})
        return RunResult(self.dir.root, history.rounds, stop, final=final,
                         encoder_rows=self._encoder.rows if self._encoder is not None else 0)

    def shared_round(self, k: int):
        """Round 0 lives in `.stages/`, shared with the runs beside this one made with the same options
        for it: it is computed under its own lock, and a run that finds another computing it waits."""
        if k:
            return contextlib.nullcontext()
        return computing(self.dir.round(0).path, "pseudo run", lambda holder: self.progress.note(
            f"round 0 is shared with a run beside this one ({self.dir.round(0).path.resolve()}), and {holder} is "
            f"computing it: waiting for it"))

    def selection(self, k: int) -> tuple[np.ndarray, dict]:
        """Round k's pseudo-labels (F, N_pool) and their record: the one written earlier (`pseudo
        select`, an interrupted run), else selected from round k-1 and written."""
        written = read_selection(self.dir, k)
        prev = read_json(self.dir.round(k - 1).metrics)
        if written is not None:
            labels, _, info = written
            self.progress.note(f"round {k}: using the selection written earlier ({info.get('strategy')}, "
                               f"threshold {info.get('threshold')})")
        else:
            if self.config.co_teacher > 0:
                co_info = self.co_teacher()[1]
                self.progress.note(f"co-teacher: OOF macro-F1 {co_info['oof']['macro_f1']:.4f} (the head's round "
                                   f"{k - 1}: {prev['oof']['macro_f1']:.4f}); share {self.config.co_teacher}")
            cfg = self.config
            labels, confidence, info = select_from_round(
                self.dir, k - 1, prior=np.array(prev["labeled_prior"]), strategy=cfg.strategy,
                threshold=cfg.threshold, top_k=cfg.top_k, source=cfg.pseudo_source, calibrate=cfg.calibrate,
                force=cfg.force)
            write_selection(self.dir, k, labels, confidence, info, self.pool, raw=self.config.raw)
        note_drift(k, info, prev["labeled_prior"], self.progress)
        return labels, info

    def pseudo(self, labels: np.ndarray, pool_source, k: int) -> Pseudo:
        """The selected pool rows of every fold with their targets (one-hot, or the teacher's soft ones)."""
        rows = [np.flatnonzero(fold_labels != NOT_SELECTED) for fold_labels in labels]
        teacher = teacher_probs(self.dir, k - 1) if self.config.soft_targets else None
        targets = [pseudo_targets(labels[f], rows[f], None if teacher is None else teacher[f], self.config.sharpen)
                   for f in range(len(labels))]
        source = selected_source(pool_source, np.concatenate(rows), self.dir, self.files.identity, self.progress)
        weight = pseudo_weights(self.dir, k - 1, labels, self.config.pseudo_weight, self.config.pseudo_source)
        return Pseudo(source, rows, targets, weight, self.config.pseudo_ratio, self.config.monitor_every)

    def record(self, k: int, metrics: dict, history: "History") -> None:
        """Write round k's record and mark it finished (DONE last)."""
        files = self.dir.round(k)
        if self.pool:
            atomic_write_npy(files.selected_round, history.first_selected)
        history.rounds.append(metrics)
        metrics["holdout_mean"] = holdout_mean(self, history.rounds)
        reason = stop_reason(self.config, history)  # only all_labeled is the round's own: a longer run goes on
        metrics["stop_reason"] = reason if reason == "all_labeled" else None
        atomic_write_json(files.metrics, metrics)
        files.mark_done()

    def co_teacher(self) -> tuple[dict, dict]:
        return co_teacher_outputs(self.dir, self.labeled, self.pool, self.test, self.progress)

    def train_round(self, k, folds, sources, pseudo, info) -> dict:
        """Train (or resume) every fold of round k, write the round's predictions, return its metrics."""
        started = time.time()
        files = self.dir.round(k)
        recipe = student_recipe(self.recipe, self.config, k)
        plan = RoundPlan(round=k, files=files, mode=self.config.mode, recipe=recipe,
                         max_len=self.config.max_len, hidden=int(self.files.config_dict().get("hidden_size", 0)),
                         labels=self.labeled.labels, folds=folds, labeled=sources["labeled"], test=sources["test"],
                         unlabeled=sources["unlabeled"], seed=self.config.seed, pseudo=pseudo, heads=self.heads,
                         bert_factory=partial(load_bert, self.files), mc_passes=self.config.mc_passes)
        if self.config.trainer(k) == "finetune":
            plan = fine_tuned_plan(plan, self.config.finetune(k), self.all_tokens(), self.files,
                                   self._tokenizer.mask_token_id)
            recipe = plan.recipe
        self.executor = self.executor or make_executor(self.config, self.dir.root, self.progress)
        out = run_folds(plan, self.progress, self.executor)
        labels = self.labeled.labels
        write_round_predictions(files, out, self.test.ids if self.test else None, raw=self.config.raw)
        co_holdout = self.co_teacher()[0]["holdout"] if out.holdout is not None else None
        return round_metrics(k, out, labels, folds, pseudo, info, co_holdout, recipe=recipe.name,
                             student=plan.student, mode=self.config.mode,
                             leak_free_oof=k == 0 or self.config.pseudo_source == "fold",
                             seconds=time.time() - started)


def auto_student_note(config: RunConfig) -> str | None:
    """What `--student auto` chose for the later rounds and why (None where it chose nothing: a given student, a
    continued run keeping its own, no later round)."""
    if not (config.rounds and config.student_reason):
        return None
    tuned = config.student == "finetune"
    trainer = "the fine-tuned student" if tuned else "the head on frozen features"
    cost = ("; each fold runs the encoder over its posts and the pool, much dearer than the head with a "
            "base-size encoder on a CPU: `pseudo run --plan` estimates it, --student head keeps the head"
            if tuned else "")
    return f"rounds >= 1 train {trainer} (--student auto: {config.student_reason}){cost}"


def holdout_mean(run: Run, rounds: list[dict]) -> dict | None:
    """The holdout scores of the usable rounds' mean, alone and blended (None without a holdout)."""
    if not rounds[0].get("holdout"):
        return None
    usable = usable_rounds(rounds)
    held = load_npy(run.dir.round(0).folds) == HOLDOUT
    return mean_scores(run.labeled.labels[held], [load_npy(run.dir.round(k).holdout_preds) for k in usable],
                       run.co_teacher()[0]["holdout"], usable)


def deliver(run: Run, rounds: list[dict]) -> dict:
    """The run's final output (deliver.py): the rounds' mean, or the round and blend best on the holdout."""
    choice = choose(rounds, run.config.deliver, holdout_mean(run, rounds),
                    blended=blends_rounds(run.config.rounds, run.config.co_teacher))
    co = run.co_teacher()[0] if choice["weight"] > 0 else {"test": None, "holdout": None}
    held = delivered_holdout(run.dir, choice, run.labeled.labels, co["holdout"])
    choice["interval"] = held["interval"] if held else None
    if held:
        choice["confusion"] = held["confusion"]  # on the holdout; rows: labeled -1/0/1, columns: delivered
    if run.config.class_weights == "auto":
        leak_free = all(m["leak_free"]["oof"] for m in rounds if m["round"] in choice["rounds"])
        choice["class_weights"] = class_weight_record(run.labeled.labels, estimation_probs(run.dir, choice, co),
                                                      leak_free)
    return write_final(run.dir, choice, run.test.ids if run.test else None, co["test"], raw=run.config.raw)


def feature_encoder(run: Run):
    """The frozen encoder of the feature pass: this process's, or with `--executor ray` one spread over Ray
    tasks (`executor.RayEncoder`; the cluster connected here is the one the folds use)."""
    if run.config.executor != "ray":
        return run.encoder()
    run.executor = run.executor or make_executor(run.config, run.dir.root, run.progress)
    return RayEncoder(run.executor, run.files, run.progress)


def fold_work(run: Run, folds: np.ndarray, labeled_source=None) -> list[list[float] | None]:
    """Each fold's relative cost per round under the cost model (`costs.round_work`), for the time left;
    length-grouped rounds cost by the labeled posts' token counts where `labeled_source` has them."""
    n_rows = {"labeled": len(run.labeled), "test": len(run.test) if run.test else 0,
              "unlabeled": len(run.pool) if run.pool else 0}
    lengths = getattr(labeled_source, "lengths", None)
    share = length_share(lengths(np.arange(n_rows["labeled"])), run.config.max_len) if lengths else 1.0
    return [round_work(run.config, student_recipe(run.recipe, run.config, k), k, NOMINAL, n_rows, folds, share).seconds
            if estimated(run.config, k) else None for k in range(run.config.rounds + 1)]


def selected_source(pool_source, rows: np.ndarray, run_dir: RunDir, identity: str, progress: Progress):
    """The pool source for training on selected rows: a streamed pool caches just those rows."""
    if not isinstance(getattr(pool_source, "features", None), StreamedFeatures):
        return pool_source
    subset = cache_rows(pool_source.features, rows, run_dir.features, "unlabeled", identity, progress)
    return FeatureSource(subset, with_mask=pool_source.with_mask)


def note_drift(k: int, info: dict, prior: list[float], progress: Progress) -> None:
    """Record how far round k's pseudo-label mix drifts from the labeled prior, and say so when it is far."""
    info["drift"] = mix_drift(info["per_class"], prior)
    if info["drift"] > DRIFT_WARN:
        mix = " / ".join(str(n) for n in info["per_class"])
        progress.note(f"round {k}: the pseudo-label mix -1/0/1 ({mix}) drifts from the labeled prior "
                      f"({' / '.join(f'{p:.2f}' for p in prior)}) by {info['drift']:.2f}; "
                      f"--strategy class-balanced keeps it at the prior")


def run_folds_of(path, labels: np.ndarray, config: RunConfig) -> np.ndarray:
    """The run's fold id per labeled row: read back from round 0's folds.npy, else made and written there."""
    if path.is_file():
        folds = load_npy(path)
        if len(folds) != len(labels):
            raise PseudoError(f"{path}: {len(folds)} rows, the train file has {len(labels)}")
        return folds
    folds = make_folds(labels, config.folds, config.holdout, config.seed)
    atomic_write_npy(path, folds)
    return folds


def fine_tuned_plan(plan: RoundPlan, finetune, tokens: dict, encoder_files: EncoderFiles, mask_id: int) -> RoundPlan:
    """A round's plan whose folds fine-tune the encoder: a monitor slice of the fold's training part chooses
    the student's epoch (none: the last epoch is kept); the student cuts its own batches."""
    recipe = replace(plan.recipe, name=finetune.name, early_stopping=finetune.monitor_share > 0,
                     monitor_share=finetune.monitor_share, dynamic_padding=False)
    return replace(plan, recipe=recipe, student="finetune", finetune=finetune, tokens=tokens,
                   encoder_files=encoder_files, mask_id=mask_id)


def write_round_predictions(files, out, test_ids, raw: bool = False) -> None:
    """A round's predictions: OOF, holdout, test (and its submission.csv), pool."""
    atomic_write_npy(files.oof_preds, out.oof)
    if out.holdout is not None:
        atomic_write_npy(files.holdout_preds, out.holdout)
    if out.test is not None:
        atomic_write_npy(files.test_preds, out.test)
        atomic_write_csv(files.submission, ["id", "y"],
                         zip(test_ids, label_values(out.test.mean(axis=0).argmax(axis=1)).tolist()), raw=raw)
    if out.unmask is not None:
        atomic_write_npy(files.unmask_preds, out.unmask)


def check_inputs(config: RunConfig, files: EncoderFiles, labels: np.ndarray) -> None:
    """What the options ask of the data and the encoder, checked before a run writes anything: every
    class present, enough rows of each class for the folds after the holdout, and no more tokens per
    post than the encoder has positions."""
    found = sorted(set(labels.tolist()))
    if len(found) < N_CLASSES:
        raise PseudoError(f"{config.train}: the labeled rows hold class(es) {', '.join(LABEL_VALUES[c] for c in found)}"
                          f" only (per class: {np.bincount(labels, minlength=N_CLASSES).tolist()}); all three of "
                          f"-1, 0, 1 are needed")
    make_folds(labels, config.folds, config.holdout, config.seed)  # raises if a class is too small for the folds
    layers = files.config_dict().get("num_hidden_layers")
    if "finetune" in (config.student, config.recipe) and layers and config.finetune_layers > layers:
        raise PseudoError(f"finetune-layers must be <= {layers}, the layers of the encoder {files.folder}, "
                          f"got {config.finetune_layers}")
    positions = files.config_dict().get("max_position_embeddings")
    if positions and config.max_len > positions:
        raise PseudoError(f"max-len must be <= {positions}, the positions of the encoder {files.folder}, "
                          f"got {config.max_len}")


def student_recipe(recipe, config: RunConfig, k: int):
    """Round 0 trains the recipe; later rounds' students may be noised (features, token positions) and cut
    their batches to the longest post."""
    if k >= 1 and config.student_dynamic_padding and not recipe.dynamic_padding:
        recipe = replace(recipe, name=f"{recipe.name}+dynpad", dynamic_padding=True)
    if k >= 1 and config.student_noise > 0:
        recipe = replace(recipe, name=f"{recipe.name}+noise{config.student_noise}", feature_noise=config.student_noise)
    if k >= 1 and config.student_token_dropout > 0:
        recipe = replace(recipe, name=f"{recipe.name}+tokdrop{config.student_token_dropout}",
                         token_dropout=config.student_token_dropout)
    return recipe


@dataclass
class History:
    """What the finished rounds of a run leave for the next: their metrics, the last selection, and
    the round each pool row was first selected in (-1: never)."""

    first_selected: np.ndarray
    rounds: list[dict] = field(default_factory=list)
    labels: np.ndarray | None = None  # the last round's pseudo-labels (F, N_pool)

    def reuse(self, run_dir: RunDir, k: int, with_pool: bool) -> None:
        files = run_dir.round(k)
        self.rounds.append(read_json(files.metrics))
        if with_pool:
            self.first_selected = load_npy(files.selected_round)
        self.labels = load_npy(files.pseudo_labels) if k >= 1 else None

    def select(self, k: int, labels: np.ndarray, info: dict) -> None:
        info["n_changed"] = changed_labels(self.labels, labels)
        any_fold = (labels != NOT_SELECTED).any(axis=0)
        self.first_selected = np.where((self.first_selected == -1) & any_fold, k, self.first_selected)
        self.labels = labels


def stop_reason(config: RunConfig, history: History, selection: np.ndarray | None = None) -> str | None:
    """Why the run stops after its finished rounds, or None to go on; `selection`: the next round's
    pseudo-labels, once selected.

    all_labeled: the last round trained on every pool row with hard labels, nothing is left to add
    (soft targets change every round, so a distillation run goes on); max_rounds: the rounds asked
    for are done; collapsed: the last round's predictions are degenerate (--force goes on);
    no_change: the next selection is empty, or equal to the last one with hard labels."""
    hard = not config.soft_targets
    if hard and history.labels is not None and (history.labels != NOT_SELECTED).all():
        return "all_labeled"
    if len(history.rounds) > config.rounds:
        return "max_rounds"
    if history.rounds and history.rounds[-1]["collapsed"] and not config.force:
        return "collapsed"
    if selection is not None:
        if not (selection != NOT_SELECTED).any():
            return "no_change"
        if hard and history.labels is not None and np.array_equal(selection, history.labels):
            return "no_change"
    return None


def round_metrics(k: int, out, labels: np.ndarray, folds: np.ndarray, pseudo: Pseudo | None, info: dict,
                  co_holdout: np.ndarray | None, *, recipe: str, mode: str, leak_free_oof: bool,
                  seconds: float, student: str = "head") -> dict:
    """metrics.json of round k from its fold outputs (`out`: cv.RoundOutput)."""
    evaluated, held = folds != HOLDOUT, folds == HOLDOUT
    oof = scores(labels[evaluated], out.oof[evaluated])
    oof["calibration"] = calibration_report(out.oof[evaluated], labels[evaluated])
    holdout = holdout_blend = None
    if out.holdout is not None:
        holdout = scores(labels[held], out.holdout.mean(axis=0))
        holdout_blend = blend_scores(labels[held], out.holdout, co_holdout)
    n_pseudo = [len(r) for r in pseudo.rows] if pseudo else [0] * len(out.folds)
    fold_collapsed = [f["valid"]["collapsed"] for f in out.folds]
    return {
        "round": k,
        "mode": mode,
        "recipe": recipe,
        "student": student,  # "finetune": the folds fine-tuned the encoder
        "encoder_rows": int(sum(f.get("encoder_rows", 0) for f in out.folds)),  # posts the folds ran it over
        "rows_human": int(np.mean([f["n_train_human"] for f in out.folds])),
        "n_pseudo": int(np.mean(n_pseudo)),
        "pseudo_per_class": dict(zip(LABEL_VALUES, info.get("per_class", [0, 0, 0]))),
        "labeled_prior": _prior(labels[evaluated]),
        "n_changed": info.get("n_changed", 0),
        "selection": {key: v for key, v in info.items() if key not in ("per_class", "n_changed")},
        "oof": oof,
        "holdout": holdout,
        "holdout_blend": holdout_blend,  # holdout macro-F1 of the blend with the co-teacher, per weight
        "leak_free": {"oof": leak_free_oof, "holdout": holdout is not None},
        "collapsed": bool(oof["collapsed"] or any(fold_collapsed)),
        "collapsed_folds": [i for i, c in enumerate(fold_collapsed) if c],
        "folds": out.folds,
        "seconds": {**out.seconds, "total": seconds},
        "stop_reason": None,
    }


def _follow_absolute_paths(run_dir: RunDir, recorded: dict, key: str, encoder_identity: str) -> None:
    """A run recorded with relative input paths keyed its shared round 0 by them: the stage is renamed
    to the key of the same paths made absolute, so the run (and its siblings) keep their round 0."""
    old = round0_key(recorded.get("config", {}), recorded.get("recipe", {}), encoder_identity)
    before, after = run_dir.stages / f"round0-{old}", run_dir.stages / f"round0-{key}"
    if old != key and before.is_dir() and not after.exists():
        os.replace(before, after)


def prepare_run_dir(run_dir: RunDir, config: RunConfig, recipe, files: EncoderFiles, rows: dict, restart: bool,
                    progress: Progress) -> None:
    """Create the run directory's config.json, or check that an existing run was made with the same
    options and encoder (a run continued without --holdout keeps its own); --restart removes its rounds."""
    resolved = config.results_dict()
    recipe_dict = recipe.to_dict()
    record = {"schema": SCHEMA, "config": resolved, "hash": config.results_hash(),
              "invocation": config.invocation(),
              "package": f"pseudolabel {VERSION}",
              "encoder": {"folder": str(files.folder), "sha256": files.identity,
                          "config": files.config_dict()},
              "recipe": recipe_dict, "data": rows}
    if run_dir.exists():
        raw = run_dir.saved_config()
        saved = migrate(raw)
        kept = saved.get("config", {}).get("holdout")
        kept_student = saved.get("config", {}).get("student", OMITTED_AT_DEFAULT["student"])
        own = []
        if not restart and not config.holdout_given and kept is not None and kept != config.holdout:
            config.holdout = kept  # e.g. `--rounds 0` first, `--rounds 2` later: round 0 is kept
            own.append(f"holdout {kept:g}")
        if not restart and not config.student_given and kept_student != config.student:
            config.student = kept_student  # e.g. a run made before --student auto, or the labels grew past it
            config.student_reason = None
            own.append(f"student {kept_student}")
        if own:
            config.validate()
            resolved = config.results_dict()
            record.update(config=resolved, hash=config.results_hash(), invocation=config.invocation())
            progress.note(f"{run_dir.root}: continuing with the run's own {' and '.join(own)}")
        if restart:
            for name in [*run_dir.round_names(), run_dir.CO_TEACHER]:
                run_dir.remove(name)
            progress.note(f"{run_dir.root}: starting over (earlier rounds removed, feature cache kept)")
        elif saved.get("hash") != record["hash"]:
            # options at their OMITTED_AT_DEFAULT value are left out of a record: compare them at that value
            before, now = {**OMITTED_AT_DEFAULT, **saved.get("config", {})}, {**OMITTED_AT_DEFAULT, **resolved}
            diffs = [f"{k} (saved {before.get(k)!r}, now {now.get(k)!r})" for k in {**now, **before}
                     if before.get(k) != now.get(k)]
            diffs += [f"recipe {recipe.name!r} {k} (saved {saved.get('recipe', {}).get(k)!r}, now {v!r})"
                      for k, v in recipe_dict.items() if saved.get("recipe", {}).get(k) != v and k != "name"]
            raise PseudoError(f"{run_dir.root}: made with other options: {'; '.join(diffs) or 'unknown'}; "
                              f"use the same options, another --run-dir, or --restart to start over")
        elif saved.get("encoder", {}).get("sha256") != files.identity:
            raise PseudoError(f"{run_dir.root}: made with another encoder checkpoint "
                              f"(saved {saved['encoder'].get('sha256', '?')[:12]}, now {files.identity[:12]}); "
                              f"use --restart to start over")
        if not restart:  # the same options (checked above)
            _follow_absolute_paths(run_dir, migrate(raw, absolute_paths=False), config.round0_key(files.identity),
                                   files.identity)
    atomic_write_json(run_dir.config_path, record)
    if config.mode == "cached":  # faithful mode keeps no features
        run_dir.share(run_dir.FEATURES, "features")  # keyed inside by encoder, texts and max length
    run_dir.share(run_dir.round(0).path.name, f"round0-{config.round0_key(files.identity)}")


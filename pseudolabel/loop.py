"""A run: round 0 of the recipe, then pseudo-label rounds, resumable from its run directory.

    load files -> features (once) -> round 0 folds -> [select -> round r folds]* -> stop reason

Round r >= 1 selects pseudo-labels from round r-1's pool predictions (re-selected every round),
then trains every fold, with fresh weights, on its human-labeled training part plus the selected
pool rows. Folds are those of round 0; validation parts hold human-labeled rows only.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from . import __version__
from .calibrate import apply_temperature, calibration_report, fit_temperature
from .coteacher import FOLDER as CO_TEACHER, blend, co_teacher_outputs
from .cv import HOLDOUT, FeatureSource, Pseudo, RoundPlan, TokenSource, make_folds, run_folds
from .data import LABEL_VALUES, Posts, label_values, load_labeled, load_unlabeled
from .deliver import blend_scores, check_deliver, choose, delivered_probs, submission_rows
from .encoder import EncoderFiles, FrozenEncoder, find_encoder, load_bert, load_tokenizer, quiet_transformers
from .errors import PseudoError
from .features import StreamedFeatures, cache_rows, features_for
from .metrics import scores
from .model import N_CLASSES, recipe as make_recipe
from .progress import Progress
from .select import NOT_SELECTED, STRATEGIES, check_threshold, counts_per_class, select, sweep
from .store import (RunDir, atomic_write_csv, atomic_write_json, atomic_write_npy, config_hash, is_done, load_npy,
                    mark_done, read_json)
from .tokenize import tokenize

MODES = ("cached", "faithful")
PSEUDO_SOURCES = ("mean", "fold")
STREAMABLE = ("test", "unlabeled")
RECIPE_OVERRIDES = ("epochs", "batch_size", "min_steps", "standardize", "spatial_dropout", "bn_momentum",
                    "precise_bn", "zero_padding", "early_stopping", "dynamic_padding")


# options added after run directories existed: left out of a run's record at these values, so a run that
# does not use them keeps the hash (and run directory) it had
ADDED_OPTIONS = {"student_token_dropout": 0.0, "co_teacher": 0.0}
DEFAULT_HOLDOUT = 0.15  # share of labeled rows held out when --rounds >= 1 and --holdout is not given


@dataclass
class RunConfig:
    train: str
    test: str | None
    unlabeled: str | None
    encoder: str
    run_dir: str
    rounds: int = 0
    folds: int = 5
    recipe: str = "default"
    # overrides of the recipe's fields (None: the recipe's own value)
    epochs: int | None = None
    batch_size: int | None = None
    min_steps: int | None = None
    standardize: bool | None = None
    spatial_dropout: float | None = None
    bn_momentum: float | None = None
    precise_bn: int | None = None
    zero_padding: bool | None = None
    early_stopping: bool | None = None
    dynamic_padding: bool | None = None
    max_len: int = 140
    seed: int = 0
    unlabeled_limit: int | None = 500_000
    mode: str = "cached"
    stream: tuple[str, ...] = ()  # splits recomputed each round instead of cached
    # class-balanced: no cap by default (every pool row the prior allows); threshold/per-class: 0.9
    threshold: float | None = None
    strategy: str = "class-balanced"  # the pseudo-label mix follows the labeled prior (no class drift)
    top_k: int | None = None
    pseudo_weight: float = 1.0
    pseudo_source: str = "fold"  # fold k learns from fold k's previous model: every round's OOF is leak-free
    soft_targets: bool = False  # train on the teacher's (sharpened) probabilities instead of hard labels
    sharpen: float = 1.0  # soft targets: temperature T of p^(1/T) (T < 1 sharpens)
    student_noise: float = 0.0  # rounds >= 1: std of Gaussian noise on the student's features while training
    student_token_dropout: float = 0.0  # rounds >= 1: share of the student's token positions dropped while training
    co_teacher: float = 0.5  # share of a TF-IDF + LR model in the probabilities pseudo-labels come from
    holdout: float | None = None  # None: DEFAULT_HOLDOUT when rounds >= 1, else 0
    deliver: str = "auto"  # auto | head | blend: what the run hands over (see deliver.py); not in the hash
    calibrate: bool = False  # fit a temperature on OOF predictions before selecting
    force: bool = False  # select from a collapsed round anyway

    def __post_init__(self):
        self.holdout_given = self.holdout is not None  # not a field: a run continues with its own holdout
        if self.holdout is None:
            self.holdout = DEFAULT_HOLDOUT if self.rounds > 0 else 0.0

    def validate(self) -> None:
        if self.rounds < 0:
            raise PseudoError(f"rounds must be >= 0, got {self.rounds}")
        if self.mode not in MODES:
            raise PseudoError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.strategy not in STRATEGIES:
            raise PseudoError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.pseudo_source not in PSEUDO_SOURCES:
            raise PseudoError(f"pseudo-source must be one of {', '.join(PSEUDO_SOURCES)}, got {self.pseudo_source!r}")
        if self.threshold is not None:
            check_threshold(self.threshold)
        check_deliver(self.deliver)
        if self.deliver == "blend" and not self.holdout:
            raise PseudoError("deliver blend chooses its weight on the labeled holdout: give --holdout (e.g. 0.15)")
        if self.pseudo_weight <= 0:
            raise PseudoError(f"pseudo-weight must be > 0, got {self.pseudo_weight}")
        if self.sharpen <= 0:
            raise PseudoError(f"sharpen must be > 0, got {self.sharpen}")
        if self.student_noise < 0:
            raise PseudoError(f"student-noise must be >= 0, got {self.student_noise}")
        if not 0 <= self.student_token_dropout < 1:
            raise PseudoError(f"student-token-dropout must be in [0, 1), got {self.student_token_dropout}")
        if not 0 <= self.co_teacher <= 1:
            raise PseudoError(f"co-teacher must be in [0, 1], got {self.co_teacher}")
        for split in self.stream:
            if split not in STREAMABLE:
                raise PseudoError(f"stream must name {' or '.join(STREAMABLE)}, got {split!r}")
        if self.rounds > 0 and not self.unlabeled:
            raise PseudoError("rounds >= 1 need an unlabeled pool (--unlabeled)")
        recipe = self.resolved_recipe()
        if self.mode == "faithful" and recipe.dynamic_padding:
            raise PseudoError("dynamic-padding works on cached features: use --mode cached")
        if self.mode == "faithful" and recipe.standardize:
            raise PseudoError("mode faithful keeps the encoder in the graph and cannot standardise its features: "
                              "use --recipe seed (or --no-standardize)")
        if recipe.epochs < 1 or recipe.batch_size < 1 or recipe.min_steps < 0:
            raise PseudoError(f"epochs and batch-size must be >= 1 and min-steps >= 0, got {recipe.epochs}, "
                              f"{recipe.batch_size}, {recipe.min_steps}")
        if recipe.precise_bn < 0:
            raise PseudoError(f"precise-bn must be >= 0 (rows; 0: off), got {recipe.precise_bn}")
        if not 0 <= recipe.spatial_dropout < 1 or not 0 < recipe.bn_momentum < 1:
            raise PseudoError(f"spatial-dropout must be in [0, 1) and bn-momentum in (0, 1), got "
                              f"{recipe.spatial_dropout}, {recipe.bn_momentum}")

    def results_hash(self) -> str:
        """Hash of everything that decides the run's numbers: the options and the resolved recipe."""
        return config_hash({"config": self.results_dict(), "recipe": self.resolved_recipe().to_dict()})

    def resolved_recipe(self):
        return make_recipe(self.recipe, **{name: getattr(self, name) for name in RECIPE_OVERRIDES})

    def results_dict(self) -> dict:
        """The options that decide a run's numbers (a run continues only with the same ones)."""
        out = asdict(self)
        for key in ("run_dir", "rounds", "force", "deliver"):
            out.pop(key)
        for key, default in ADDED_OPTIONS.items():  # run directories made before these options still resume
            if out[key] == default:
                del out[key]
        out["stream"] = sorted(out["stream"])
        return out


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
        self._tokenizer = None
        quiet_transformers()
        self.files: EncoderFiles = find_encoder(config.encoder)
        self.labeled = load_labeled(config.train)
        self.test = load_unlabeled(config.test, None) if config.test else None
        self.pool = load_unlabeled(config.unlabeled, config.unlabeled_limit) if config.unlabeled else None
        for posts in (self.labeled, self.test, self.pool):
            for line in posts.notes() if posts is not None else []:
                self.progress.note(line)
        self._prepare_dir(restart)

    # ------------------------------------------------------------ run directory

    def _prepare_dir(self, restart: bool) -> None:
        resolved = self.config.results_dict()
        recipe = self.recipe.to_dict()
        record = {"config": resolved, "hash": self.config.results_hash(),
                  "package": f"pseudolabel {__version__}",
                  "encoder": {"folder": str(self.files.folder), "sha256": self.files.identity,
                              "config": self.files.config_dict()},
                  "recipe": recipe,
                  "data": {"train_rows": len(self.labeled), "test_rows": len(self.test) if self.test else 0,
                           "unlabeled_rows": len(self.pool) if self.pool else 0}}
        if self.dir.exists():
            saved = self.dir.saved_config()
            kept = saved.get("config", {}).get("holdout")
            if not restart and not self.config.holdout_given and kept is not None and kept != self.config.holdout:
                self.config.holdout = kept  # e.g. `--rounds 0` first, `--rounds 2` later: round 0 is kept
                self.config.validate()
                resolved = self.config.results_dict()
                record.update(config=resolved, hash=self.config.results_hash())
                self.progress.note(f"{self.dir.root}: continuing with the run's own holdout {kept:g}")
            if restart:
                for path in [*self.dir.root.glob("round_*"), self.dir.root / CO_TEACHER]:
                    if path.exists():
                        shutil.rmtree(path)
                self.progress.note(f"{self.dir.root}: starting over (earlier rounds removed, feature cache kept)")
            elif saved.get("hash") != record["hash"]:
                before = saved.get("config", {})
                diffs = [f"{k} (saved {before.get(k)!r}, now {v!r})" for k, v in resolved.items() if before.get(k) != v]
                diffs += [f"recipe {self.recipe.name!r} {k} (saved {saved.get('recipe', {}).get(k)!r}, now {v!r})"
                          for k, v in recipe.items() if saved.get("recipe", {}).get(k) != v and k != "name"]
                raise PseudoError(f"{self.dir.root}: made with other options: {'; '.join(diffs) or 'unknown'}; "
                                  f"use the same options, another --run-dir, or --restart to start over")
            elif saved.get("encoder", {}).get("sha256") != self.files.identity:
                raise PseudoError(f"{self.dir.root}: made with another encoder checkpoint "
                                  f"(saved {saved['encoder'].get('sha256', '?')[:12]}, now {self.files.identity[:12]}); "
                                  f"use --restart to start over")
        atomic_write_json(self.dir.config_path, record)

    # ------------------------------------------------------------ lazy encoder and tokens

    def encoder(self) -> FrozenEncoder:
        if self._encoder is None:
            self._encoder = FrozenEncoder(self.files)
        return self._encoder

    def tokenize(self, texts: list[str], split: str):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.files)
        return tokenize(texts, self._tokenizer, self.config.max_len, self.progress, f"tokenize {split}")

    def sources(self) -> dict:
        splits = {"labeled": self.labeled, "test": self.test, "unlabeled": self.pool}
        out = {}
        for split, posts in splits.items():
            if posts is None:
                out[split] = None
            elif self.config.mode == "faithful":
                out[split] = TokenSource(self.tokenize(posts.texts, split))
            else:
                feats = features_for(split, posts.texts, cache_dir=self.dir.features,
                                     encoder_identity=self.files.identity, max_len=self.config.max_len,
                                     tokenize=lambda texts, s=split: self.tokenize(texts, s), encoder=self.encoder,
                                     stream=split in self.config.stream, progress=self.progress)
                out[split] = FeatureSource(feats, with_mask=self.recipe.zero_padding)
        return out

    def pseudo_source(self, pool_source, rows: np.ndarray):
        """The pool source for training on selected rows: a streamed pool caches just those rows."""
        if not isinstance(getattr(pool_source, "features", None), StreamedFeatures):
            return pool_source
        subset = cache_rows(pool_source.features, rows, self.dir.features, "unlabeled", self.files.identity,
                            self.progress)
        return FeatureSource(subset, with_mask=pool_source.with_mask)

    # ------------------------------------------------------------ rounds

    def folds(self) -> np.ndarray:
        path = self.dir.round(0) / "folds.npy"
        if path.is_file():
            folds = load_npy(path)
            if len(folds) != len(self.labeled):
                raise PseudoError(f"{path}: {len(folds)} rows, the train file has {len(self.labeled)}")
            return folds
        folds = make_folds(self.labeled.labels, self.config.folds, self.config.holdout, self.config.seed)
        atomic_write_npy(path, folds)
        return folds

    def selection(self, k: int, folds: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
        """(labels (F, N_pool), confidence (F, N_pool), info) for round k, written or reused."""
        labels, confidence, info = self._selection(k)
        prior = np.array(read_json(self.dir.round(k - 1) / "metrics.json")["labeled_prior"])
        info["drift"] = mix_drift(info["per_class"], prior)
        if info["drift"] > DRIFT_WARN:
            mix = " / ".join(str(n) for n in info["per_class"])
            self.progress.note(f"round {k}: the pseudo-label mix -1/0/1 ({mix}) drifts from the labeled prior "
                               f"({' / '.join(f'{p:.2f}' for p in prior)}) by {info['drift']:.2f}; "
                               f"--strategy class-balanced keeps it at the prior")
        return labels, confidence, info

    def _selection(self, k: int) -> tuple[np.ndarray, np.ndarray, dict]:
        folder = self.dir.round(k)
        if (folder / "pseudo_labels.npy").is_file():
            info = read_json(folder / "selection.json")
            self.progress.note(f"round {k}: using the selection written earlier ({info.get('strategy')}, "
                               f"threshold {info.get('threshold')})")
            return load_npy(folder / "pseudo_labels.npy"), load_npy(folder / "pseudo_confidence.npy"), info
        prev = read_json(self.dir.round(k - 1) / "metrics.json")
        if self.config.co_teacher > 0:
            _, co_info = self.co_teacher()
            self.progress.note(f"co-teacher: OOF macro-F1 {co_info['oof']['macro_f1']:.4f} (the head's round "
                               f"{k - 1}: {prev['oof']['macro_f1']:.4f}); share {self.config.co_teacher}")
        labels, confidence, info = select_from_round(
            self.dir, k - 1, prior=np.array(prev["labeled_prior"]), strategy=self.config.strategy,
            threshold=self.config.threshold, top_k=self.config.top_k, source=self.config.pseudo_source,
            calibrate=self.config.calibrate, force=self.config.force)
        write_selection(self.dir, k, labels, confidence, info, self.pool)
        return labels, confidence, info

    def execute(self) -> RunResult:
        cfg = self.config
        atomic_write_json(self.dir.root / "status.json", {"stop_reason": None, "running": True})
        folds = self.folds()
        sources = self.sources()
        rounds: list[dict] = []
        stop = None
        prior = _prior(self.labeled.labels[folds != HOLDOUT])
        first_selected = np.full(len(self.pool) if self.pool else 0, -1, np.int64)
        prev_labels = None
        for k in range(cfg.rounds + 1):
            folder = self.dir.round(k)
            if k >= 1:
                prev = rounds[-1]
                if prev["collapsed"] and not cfg.force:
                    stop = "collapsed"
                    self.progress.note(f"round {k - 1} collapsed: no pseudo-labels are built from it "
                                       f"(--force selects anyway)")
                    break
            if is_done(folder):
                metrics = read_json(folder / "metrics.json")
                rounds.append(metrics)
                first_selected = load_npy(folder / "selected_round.npy") if self.pool else first_selected
                prev_labels = load_npy(folder / "pseudo_labels.npy") if k >= 1 else None
                self.progress.note(f"round {k}: finished earlier, reused")
                if metrics.get("stop_reason"):
                    stop = metrics["stop_reason"]
                    break
                continue
            pseudo = None
            info = {}
            if k >= 1:
                labels, confidence, info = self.selection(k, folds)
                empty = not (labels != NOT_SELECTED).any()
                unchanged = prev_labels is not None and np.array_equal(labels, prev_labels)
                if empty or (unchanged and not cfg.soft_targets):
                    stop = "no_change"
                    self.progress.note(f"round {k}: the selection is {'empty' if empty else 'unchanged'}; stopping")
                    break
                rows = [np.flatnonzero(labels[f] != NOT_SELECTED) for f in range(len(labels))]
                teacher = self.teacher_probs(k - 1) if cfg.soft_targets else None
                targets = [pseudo_targets(labels[f], rows[f], None if teacher is None else teacher[f], cfg.sharpen)
                           for f in range(len(labels))]
                pseudo = Pseudo(self.pseudo_source(sources["unlabeled"], np.concatenate(rows)), rows, targets,
                                cfg.pseudo_weight)
                any_fold = (labels != NOT_SELECTED).any(axis=0)
                first_selected = np.where((first_selected == -1) & any_fold, k, first_selected)
                info["n_changed"] = _changed(prev_labels, labels)
                prev_labels = labels
            metrics = self.train_round(k, folds, sources, pseudo, prior, info)
            if self.pool:
                atomic_write_npy(folder / "selected_round.npy", first_selected)
            # with hard labels a round that selects the whole pool leaves nothing to add; soft targets are the
            # teacher's probabilities, which change every round, so a distillation run goes on
            if k >= 1 and not cfg.soft_targets and (prev_labels != NOT_SELECTED).all():
                metrics["stop_reason"] = stop = "all_labeled"
            atomic_write_json(folder / "metrics.json", metrics)
            mark_done(folder)
            rounds.append(metrics)
            self.progress.round_finished(rounds)
            if stop:
                break
        if stop is None:
            stop = "max_rounds"
        final = self.deliver(rounds) if rounds else None
        atomic_write_json(self.dir.root / "status.json", {"stop_reason": stop, "rounds_finished": len(rounds)})
        return RunResult(self.dir.root, rounds, stop, final=final,
                         encoder_rows=self._encoder.rows if self._encoder is not None else 0)

    def teacher_probs(self, k: int) -> np.ndarray:
        """(F, N_pool, 3): the probabilities round k's selection was made from (per fold or fold mean)."""
        unmask = pool_probs(self.dir, k, self.config.co_teacher)
        # the source of the selection written (`pseudo select --source` may differ from the run's)
        selection = read_json(self.dir.round(k + 1) / "selection.json")
        if selection.get("source", self.config.pseudo_source) == "mean":
            unmask = np.repeat(unmask.mean(axis=0, keepdims=True), len(unmask), axis=0)
        temperature = selection.get("temperature", 1.0)
        return np.stack([apply_temperature(p, temperature) for p in unmask])

    def co_teacher(self) -> tuple[dict, dict]:
        return co_teacher_outputs(self.dir, self.labeled, self.pool, self.test, self.progress)

    def deliver(self, rounds: list[dict]) -> dict:
        """The run's final output (deliver.py): the round and blend that score best on the holdout."""
        choice = choose(rounds, self.config.deliver)
        chosen = self.dir.round(choice["round"])
        if (chosen / "test_preds.npy").is_file():
            co_test = self.co_teacher()[0]["test"] if choice["weight"] > 0 else None
            probs = delivered_probs(choice, load_npy(chosen / "test_preds.npy"), co_test)
            if choice["weight"] > 0:
                atomic_write_csv(chosen / "submission_blend.csv", ["id", "y"], submission_rows(self.test.ids, probs))
            atomic_write_npy(self.dir.root / "final_test_preds.npy", probs)
            atomic_write_csv(self.dir.root / "submission.csv", ["id", "y"], submission_rows(self.test.ids, probs))
            choice["submission"] = str(self.dir.root / "submission.csv")
        atomic_write_json(self.dir.root / "final.json", choice)
        return choice

    def train_round(self, k, folds, sources, pseudo, prior, info) -> dict:
        started = time.time()
        folder = self.dir.round(k)
        recipe = self.recipe
        if k >= 1 and self.config.student_noise > 0:
            recipe = replace(recipe, name=f"{recipe.name}+noise{self.config.student_noise}",
                             feature_noise=self.config.student_noise)
        if k >= 1 and self.config.student_token_dropout > 0:
            recipe = replace(recipe, name=f"{recipe.name}+tokdrop{self.config.student_token_dropout}",
                             token_dropout=self.config.student_token_dropout)
        plan = RoundPlan(round=k, folder=folder, mode=self.config.mode, recipe=recipe,
                         max_len=self.config.max_len, hidden=int(self.files.config_dict().get("hidden_size", 0)),
                         labels=self.labeled.labels, folds=folds, labeled=sources["labeled"],
                         test=sources["test"], unlabeled=sources["unlabeled"], seed=self.config.seed,
                         pseudo=pseudo, bert_factory=lambda: load_bert(self.files))
        out = run_folds(plan, self.progress)
        evaluated = folds != HOLDOUT
        oof = scores(self.labeled.labels[evaluated], out.oof[evaluated])
        oof["calibration"] = calibration_report(out.oof[evaluated], self.labeled.labels[evaluated])
        atomic_write_npy(folder / "oof_preds.npy", out.oof)
        holdout = holdout_blend = None
        if out.holdout is not None:
            holdout = scores(self.labeled.labels[folds == HOLDOUT], out.holdout.mean(axis=0))
            atomic_write_npy(folder / "holdout_preds.npy", out.holdout)
            holdout_blend = blend_scores(self.labeled.labels[folds == HOLDOUT], out.holdout,
                                         self.co_teacher()[0]["holdout"])
        if out.test is not None:
            atomic_write_npy(folder / "test_preds.npy", out.test)
            atomic_write_csv(folder / "submission.csv", ["id", "y"],
                             zip(self.test.ids, label_values(out.test.mean(axis=0).argmax(axis=1)).tolist()))
        if out.unmask is not None:
            atomic_write_npy(folder / "unmask_preds.npy", out.unmask)
        n_pseudo = [len(r) for r in pseudo.rows] if pseudo else [0] * plan.n_folds
        fold_collapsed = [f["valid"]["collapsed"] for f in out.folds]
        return {
            "round": k,
            "mode": self.config.mode,
            "recipe": recipe.name,
            "rows_human": int(np.mean([f["n_train_human"] for f in out.folds])),
            "n_pseudo": int(np.mean(n_pseudo)),
            "pseudo_per_class": dict(zip(LABEL_VALUES, info.get("per_class", [0, 0, 0]))),
            "labeled_prior": prior,
            "n_changed": info.get("n_changed", 0),
            "selection": {k2: v for k2, v in info.items() if k2 not in ("per_class", "n_changed")},
            "oof": oof,
            "holdout": holdout,
            "holdout_blend": holdout_blend,  # holdout macro-F1 of the blend with the co-teacher, per weight
            "leak_free": {"oof": k == 0 or self.config.pseudo_source == "fold", "holdout": holdout is not None},
            "collapsed": bool(oof["collapsed"] or any(fold_collapsed)),
            "collapsed_folds": [i for i, c in enumerate(fold_collapsed) if c],
            "folds": out.folds,
            "seconds": {**out.seconds, "total": time.time() - started},
            "stop_reason": None,
        }


DRIFT_WARN = 0.15  # total-variation distance of the pseudo-label mix from the prior that earns a warning


def mix_drift(per_class, prior) -> float:
    """Total-variation distance between the pseudo-label class mix and the labeled prior (0 if empty)."""
    counts = np.asarray(per_class, dtype=np.float64)
    if counts.sum() == 0:
        return 0.0
    return float(0.5 * np.abs(counts / counts.sum() - np.asarray(prior) / np.sum(prior)).sum())


def pseudo_targets(labels: np.ndarray, rows: np.ndarray, probs: np.ndarray | None, sharpen: float = 1.0):
    """Training targets of the selected pool rows: one-hot labels, or the teacher's probabilities
    sharpened as p^(1/T) / sum (T = `sharpen`)."""
    if probs is None:
        return np.eye(N_CLASSES, dtype=np.float32)[labels[rows]]
    p = np.asarray(probs[rows], dtype=np.float64) ** (1.0 / sharpen)
    return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)


def _changed(prev: np.ndarray | None, labels: np.ndarray) -> int:
    """Pool rows selected in both rounds whose label differs (summed over folds' rows, fold-mean)."""
    if prev is None:
        return 0
    both = (prev != NOT_SELECTED) & (labels != NOT_SELECTED)
    return int(round(((prev != labels) & both).sum() / len(labels)))


# ---------------------------------------------------------------- selection (shared with `pseudo select`)


def pool_probs(run_dir: RunDir, k: int, co_teacher: float) -> np.ndarray:
    """(F, N_pool, 3): round k's pool predictions, blended with the co-teacher's at that share."""
    return blend(load_npy(run_dir.round(k) / "unmask_preds.npy"), run_dir, co_teacher)


def select_from_round(run_dir: RunDir, k: int, *, prior, strategy: str, threshold: float, top_k: int | None,
                      source: str, calibrate: bool, force: bool, class_thresholds=None):
    """Pseudo-labels for round k+1 from finished round k's pool predictions."""
    folder = run_dir.round(k)
    if not is_done(folder):
        raise PseudoError(f"{folder}: round {k} is not finished (no DONE)")
    metrics = read_json(folder / "metrics.json")
    if metrics.get("collapsed") and not force:
        raise PseudoError(f"{folder}: round {k} collapsed ({metrics['oof'].get('collapse_reason') or 'a fold collapsed'}); "
                          f"its pseudo-labels would be noise (--force to select anyway)")
    path = folder / "unmask_preds.npy"
    if not path.is_file():
        raise PseudoError(f"{path}: no pool predictions in round {k} (the run has no --unlabeled)")
    co_teacher = run_dir.saved_config()["config"].get("co_teacher", 0.0)
    unmask = pool_probs(run_dir, k, co_teacher)
    temperature = 1.0
    if calibrate:
        oof = load_npy(folder / "oof_preds.npy")
        folds = load_npy(run_dir.round(0) / "folds.npy")
        labeled = read_json(run_dir.config_path)["config"]["train"]
        labels = load_labeled(labeled).labels
        keep = folds != HOLDOUT
        temperature = fit_temperature(oof[keep], labels[keep])
    probs = [unmask.mean(axis=0)] * len(unmask) if source == "mean" else list(unmask)
    probs = [apply_temperature(p, temperature) for p in probs]
    labels = np.stack([select(p, strategy, threshold, prior=prior, top_k=top_k, class_thresholds=class_thresholds)
                       for p in probs])
    confidence = np.stack([p.max(axis=1) for p in probs]).astype(np.float32)
    per_class = np.mean([counts_per_class(row) for row in labels], axis=0).round().astype(int).tolist()
    info = {"from_round": k, "strategy": strategy, "threshold": threshold, "top_k": top_k, "source": source,
            "temperature": temperature, "per_class": per_class,
            "co_teacher": co_teacher,
            "n_selected": int(round(float((labels != NOT_SELECTED).sum(axis=1).mean())))}
    return labels, confidence, info


def write_selection(run_dir: RunDir, k: int, labels: np.ndarray, confidence: np.ndarray, info: dict,
                    pool: Posts | None) -> None:
    """Write round k's selection: arrays, a readable CSV and selection.json (all atomic)."""
    folder = run_dir.round(k)
    if is_done(folder):
        raise PseudoError(f"{folder}: round {k} is finished; its selection is not rewritten")
    if any(folder.glob("fold_*/DONE")):
        raise PseudoError(f"{folder}: round {k} has trained folds; --restart the run to change its selection")
    atomic_write_npy(folder / "pseudo_labels.npy", labels.astype(np.int8))
    atomic_write_npy(folder / "pseudo_confidence.npy", confidence)
    same = all(np.array_equal(labels[0], row) for row in labels[1:])
    header = ["id", "text", "label", "confidence"] + ([] if same else ["fold"])
    rows = []
    for f in range(1 if same else len(labels)):
        for i in np.flatnonzero(labels[f] != NOT_SELECTED):
            row = [pool.ids[i] if pool else i, pool.texts[i] if pool else "", int(labels[f][i]) - 1,
                   f"{confidence[f][i]:.4f}"]
            rows.append(row if same else row + [f])
    atomic_write_csv(folder / "pseudo_labels.csv", header, rows)
    atomic_write_json(folder / "selection.json", info)


SWEEP = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99)


def reselect(run_dir: str | Path, *, round: int | None = None, strategy: str | None = None,
             threshold: float | None = None, top_k: int | None = None, source: str | None = None,
             calibrate: bool = False, force: bool = False) -> dict:
    """`pseudo select`: new pseudo-labels for the round after `round`, from its saved predictions.

    Options left None take the run's own (strategy, top-k, source; the threshold too unless
    another strategy or cap is asked for).

    Writes the selection where the next round reads it and returns what to show: counts per
    class next to the labeled prior, and a threshold sweep with the OOF precision at each.
    """
    rd = RunDir(run_dir)
    if not rd.exists():
        raise PseudoError(f"{rd.root}: not a run directory (no config.json)")
    saved = rd.saved_config()["config"]
    if threshold is None and strategy is None and top_k is None:
        threshold = saved.get("threshold", 0.9)
    strategy = strategy or saved.get("strategy", "class-balanced")
    top_k = top_k if top_k is not None or threshold is not None else saved.get("top_k")
    if threshold is not None:
        check_threshold(threshold)
    if strategy not in STRATEGIES:
        raise PseudoError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    finished = rd.finished_rounds()
    if not finished:
        raise PseudoError(f"{rd.root}: no finished round to select from")
    k = finished[-1] if round is None else round
    if k not in finished:
        raise PseudoError(f"round must be a finished round ({', '.join(map(str, finished))}), got {k}")
    source = source or saved["pseudo_source"]
    if source not in PSEUDO_SOURCES:
        raise PseudoError(f"source must be one of {', '.join(PSEUDO_SOURCES)}, got {source!r}")
    metrics = read_json(rd.round(k) / "metrics.json")
    prior = np.array(metrics["labeled_prior"])
    labels, confidence, info = select_from_round(rd, k, prior=prior, strategy=strategy, threshold=threshold,
                                                 top_k=top_k, source=source, calibrate=calibrate, force=force)
    pool = load_unlabeled(saved["unlabeled"], saved["unlabeled_limit"])
    if len(pool) != labels.shape[1]:
        raise PseudoError(f"{saved['unlabeled']}: has {len(pool)} rows now, round {k} scored {labels.shape[1]}")
    write_selection(rd, k + 1, labels, confidence, info, pool)
    unmask = load_npy(rd.round(k) / "unmask_preds.npy").mean(axis=0)
    folds = load_npy(rd.round(0) / "folds.npy")
    oof = load_npy(rd.round(k) / "oof_preds.npy")
    human = load_labeled(saved["train"]).labels
    keep = folds != HOLDOUT
    temperature = info["temperature"]
    return {"round": k, "next_round": k + 1, "written": str(rd.round(k + 1) / "pseudo_labels.csv"),
            "calibration": {key: metrics["oof"].get("calibration", {}).get(key)
                            for key in ("ece", "temperature", "ece_scaled")},
            "selection": info, "labeled_prior": prior.tolist(), "pool_rows": int(labels.shape[1]),
            "sweep": sweep(apply_temperature(unmask, temperature), SWEEP,
                           apply_temperature(oof[keep], temperature), human[keep])}

"""The options of a run, stated once: their defaults, their constraints, and what they decide.

`RunConfig` holds a run's options; `CONSTRAINTS` states, per option, the values it may take (in the
manner of scikit-learn's parameter constraints) and `validate` checks them all, with one message
format. The CLI's `pseudo run` takes its defaults from here (a test checks that every option is
there with the same default). A run directory records its options with a schema version;
`migrate` brings a record of an older schema up to date, so a run made before an option existed
continues under the value it was made with.

No TensorFlow is imported here (the recipe is resolved on demand).
"""

from __future__ import annotations

import numbers
import os
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any

from .class_weights import CLASS_WEIGHTS
from .deliver import DELIVER
from ..core.errors import PseudoError
from ..heads.finetune import PRECISIONS, STUDENTS, FineTune
from .select import STRATEGIES
from ..core.store import config_hash

SCHEMA = 2  # 1: before --student-token-dropout and --co-teacher were recorded
MODES = ("cached", "faithful")
PSEUDO_SOURCES = ("mean", "fold")
STREAMABLE = ("test", "unlabeled")
EXECUTORS = ("local", "ray")
MONITOR_EVERY = ("epoch", "human")  # rounds >= 1: how many training rows between two looks of early stopping
RECIPE_OVERRIDES = ("epochs", "batch_size", "min_steps", "standardize", "spatial_dropout", "bn_momentum",
                    "precise_bn", "zero_padding", "early_stopping", "dynamic_padding")
DEFAULT_HOLDOUT = 0.15  # share of labeled rows held out when --rounds >= 1 and --holdout is not given
PATHS = ("train", "test", "unlabeled", "encoder")  # input files and folders: hashed as absolute paths
NOT_RESULTS = ("run_dir", "rounds", "force", "deliver", "class_weights", "raw", "executor", "ray_address",
               "fold_cpus", "fold_gpus")  # options that never change a round's numbers
# options that act from round 1 on: runs that differ only in these share round 0 (`round0_key`)
LATER_ROUNDS = ("threshold", "strategy", "top_k", "pseudo_weight", "pseudo_source", "soft_targets", "sharpen",
                "student_noise", "student_token_dropout", "co_teacher", "calibrate", "force", "student",
                "finetune_layers", "finetune_epochs", "finetune_lr", "finetune_precision", "finetune_monitor",
                "pseudo_ratio", "student_dynamic_padding", "monitor_every")
# round 0's too with --recipe finetune
FINETUNE_OPTIONS = ("finetune_layers", "finetune_epochs", "finetune_lr", "finetune_precision", "finetune_monitor")
FINETUNE_RECIPE = "finetune"  # --recipe finetune: round 0 fine-tunes the encoder (a supervised baseline)
RECIPE_NAMES = ("default", "seed", FINETUNE_RECIPE)
# options added after run directories existed: left out of the options a run is hashed by while at these
# values, so every earlier run keeps its hash, its default directory name and its shared round 0
OMITTED_AT_DEFAULT = {"student": "head", "finetune_layers": 0, "finetune_epochs": 3, "finetune_lr": 2e-4,
                      "finetune_precision": "float32", "finetune_monitor": 0.1,
                      "pseudo_ratio": None, "student_dynamic_padding": False, "monitor_every": "epoch",
                      "mc_passes": 0}
AUTO_STUDENT = "auto"  # --student auto: the trainer of rounds >= 1 chosen by the run's labeled posts (auto_student)
# --student auto fine-tunes from this many labeled posts on: with all 6,727 labels of the full-labels benchmark the
# student's run delivered 0.5 points more than the head's (three seeds), with 90 or 672 it delivered the same for
# 1.2-2.7x the time (benchmarks/results/finetuned-student.md); between those counts nothing was measured, so the
# switch sits near the count where the student was measured better
AUTO_STUDENT_LABELS = 5000
UNCERTAINTY_WEIGHT = "uncertainty"  # --pseudo-weight uncertainty: UST's -log(variance), mean 1 (rounds/uncertainty.py)


@dataclass(frozen=True)
class Interval:
    """low < / <= value < / <= high; None: unbounded on that side."""

    low: float | None
    high: float | None
    closed: str = "both"  # both | left | right | neither

    def holds(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
        left = self.closed in ("both", "left")
        right = self.closed in ("both", "right")
        return ((self.low is None or (value >= self.low if left else value > self.low))
                and (self.high is None or (value <= self.high if right else value < self.high)))

    def describe(self) -> str:
        left = self.closed in ("both", "left")
        right = self.closed in ("both", "right")
        if self.high is None:
            return f"{'>=' if left else '>'} {self.low:g}"
        if self.low is None:
            return f"{'<=' if right else '<'} {self.high:g}"
        return f"in {'[' if left else '('}{self.low:g}, {self.high:g}{']' if right else ')'}"


@dataclass(frozen=True)
class OneOf:
    values: tuple

    def holds(self, value) -> bool:
        return value in self.values

    def describe(self) -> str:
        return f"one of {', '.join(self.values)}"


# option -> the values it may take (None: the option may be left unset)
CONSTRAINTS: dict[str, tuple] = {
    "rounds": (Interval(0, None),),
    "recipe": (OneOf(RECIPE_NAMES),),
    "folds": (Interval(2, None),),
    "mode": (OneOf(MODES),),
    "max_len": (Interval(8, None),),
    "unlabeled_limit": (None, Interval(1, None)),
    "threshold": (None, Interval(0, 1, "right")),
    "strategy": (OneOf(STRATEGIES),),
    "top_k": (None, Interval(0, None)),
    "pseudo_weight": (Interval(0, None, "neither"), OneOf((UNCERTAINTY_WEIGHT,))),
    "mc_passes": (Interval(0, None),),
    "pseudo_ratio": (None, Interval(0, None, "neither")),
    "monitor_every": (OneOf(MONITOR_EVERY),),
    "pseudo_source": (OneOf(PSEUDO_SOURCES),),
    "sharpen": (Interval(0, None, "neither"),),
    "student_noise": (Interval(0, None),),
    "student_token_dropout": (Interval(0, 1, "left"),),
    "co_teacher": (Interval(0, 1),),
    "holdout": (None, Interval(0, 0.5, "left")),
    "deliver": (OneOf(DELIVER),),
    "class_weights": (OneOf(CLASS_WEIGHTS),),
    "student": (OneOf((*STUDENTS, AUTO_STUDENT)),),
    "finetune_layers": (Interval(0, None),),
    "finetune_epochs": (Interval(1, None),),
    "finetune_lr": (Interval(0, 1, "right"),),
    "finetune_precision": (OneOf(PRECISIONS),),
    "finetune_monitor": (Interval(0, 0.5, "left"),),
    "executor": (OneOf(EXECUTORS),),
    "fold_cpus": (Interval(1, None),),
    "fold_gpus": (Interval(0, None),),
}


# how the CLI spells an option's unset value, where it has a word for it
UNSET_SPELLING = {"pseudo_ratio": "'all'"}


def option_name(field: str) -> str:
    """The CLI's spelling of an option (`co_teacher` -> `co-teacher`)."""
    return field.replace("_", "-")


def check(field: str, value) -> None:
    """Raise a one-line PseudoError unless `value` satisfies the option's constraints."""
    rules = CONSTRAINTS[field]
    if value is None and None in rules:
        return
    stated = [rule for rule in rules if rule is not None]
    if value is not None and any(rule.holds(value) for rule in stated):
        return
    shown = repr(value) if isinstance(value, str) else value
    allowed = [r.describe() for r in stated] + ([UNSET_SPELLING[field]] if field in UNSET_SPELLING else [])
    raise PseudoError(f"{option_name(field)} must be {' or '.join(allowed)}, got {shown}")


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
    pseudo_weight: float | str = 1.0  # or "uncertainty": each pseudo row by how little the teacher's members vary
    # MC-dropout passes of each fold's head over the pool after every round (0: the folds' disagreement alone is
    # the uncertainty `--strategy uncertainty` and `--pseudo-weight uncertainty` use); cached mode, head only
    mc_passes: int = 0
    # rounds >= 1: each epoch passes over every human row of the fold and a fresh sample of this many pseudo
    # rows per human row (None: every pseudo row, every epoch); benchmarks/results/training-budget.md
    pseudo_ratio: float | None = 0.5
    pseudo_source: str = "fold"  # fold k learns from fold k's previous model: every round's OOF is leak-free
    soft_targets: bool = False  # train on the teacher's (sharpened) probabilities instead of hard labels
    sharpen: float = 1.0  # soft targets: temperature T of p^(1/T) (T < 1 sharpens)
    student_noise: float = 0.0  # rounds >= 1: std of Gaussian noise on the student's features while training
    student_token_dropout: float = 0.0  # rounds >= 1: share of the student's token positions dropped while training
    # rounds >= 1: the head's batches length-grouped, cut to their longest post (None: on in --mode cached)
    student_dynamic_padding: bool | None = None
    # rounds >= 1, the head: early stopping looks after every epoch ("epoch") or after every stretch of as many
    # rows as the fold's human-labeled part ("human": round 0's epoch, so patience costs what it costs there)
    monitor_every: str = "epoch"
    co_teacher: float = 0.5  # share of a TF-IDF + LR model in the probabilities pseudo-labels come from
    holdout: float | None = None  # None: DEFAULT_HOLDOUT when rounds >= 1, else 0 (a continued run: its own)
    deliver: str = "mean"  # mean | auto | head | blend: what the run hands over (see deliver.py); not in the hash
    class_weights: str = "none"  # none | auto: per-class decision weights of the delivered labels (class_weights.py)
    raw: bool = False  # CSV text cells as they came in, not made spreadsheet-safe (store.spreadsheet_safe)
    calibrate: bool = False  # fit a temperature on OOF predictions before selecting
    force: bool = False  # select from a collapsed round anyway
    # rounds >= 1: "head" (the recipe's head on frozen features), "finetune" (finetune.py) or "auto" (the student
    # from AUTO_STUDENT_LABELS labeled posts on, else the head; resolved when the labeled posts are counted)
    student: str = AUTO_STUDENT
    finetune_layers: int = 0  # fine-tuned students: the top N encoder layers train (0: all)
    finetune_epochs: int = 3
    finetune_lr: float = 2e-4  # peak learning rate of AdamW (linear warm-up and decay); benchmarks/README.md
    finetune_precision: str = "float32"  # or mixed precision (docs/gpu.md)
    finetune_monitor: float = 0.1  # share of a fold's training part that picks the epoch (0: the last is kept)
    executor: str = "local"  # where a round's folds train: this process, or Ray tasks (rounds/executor.py)
    ray_address: str | None = None  # --executor ray: the cluster (None: RAY_ADDRESS, else a local instance)
    fold_cpus: int = 1  # --executor ray: CPUs per fold task (its TensorFlow thread pool)
    fold_gpus: float = 0.0  # --executor ray: GPUs per fold task

    def __post_init__(self):
        for name in PATHS:  # the same file given as a relative or an absolute path is the same option
            setattr(self, name, absolute(getattr(self, name)))
        self.holdout_given = self.holdout is not None  # not a field: a run continues with its own holdout
        self.student_given = self.student != AUTO_STUDENT  # not a field: likewise its own trainer
        self.student_reason: str | None = None  # not a field: why --student auto chose what it did
        if self.holdout is None:
            self.holdout = DEFAULT_HOLDOUT if self.rounds > 0 else 0.0
        if self.student_dynamic_padding is None:  # cached features only: the faithful graph pads to max-len
            self.student_dynamic_padding = self.mode == "cached"

    @classmethod
    def from_saved(cls, options: dict, **given) -> "RunConfig":
        """A run's options as its config.json holds them (those at their OMITTED_AT_DEFAULT value left out:
        a default that changed since must not stand in for them), `given` on top."""
        return cls(**{**OMITTED_AT_DEFAULT, **options, **given})

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every option with a default, and that default."""
        return {f.name: f.default for f in fields(cls) if f.default is not MISSING}

    def validate(self) -> None:
        for name in CONSTRAINTS:
            check(name, getattr(self, name))
        for split in self.stream:
            if split not in STREAMABLE:
                raise PseudoError(f"stream must name {' or '.join(STREAMABLE)}, got {split!r}")
        if self.deliver == "blend" and not self.holdout:
            raise PseudoError("deliver blend chooses its weight on the labeled holdout: give --holdout (e.g. 0.15)")
        if self.rounds > 0 and not self.unlabeled:
            raise PseudoError("rounds >= 1 need an unlabeled pool (--unlabeled)")
        if self.executor == "ray" and (self.mode == "faithful" or self.stream):
            raise PseudoError("executor ray trains folds on cached features: it works in --mode cached without "
                              "--stream")
        if self.mode == "faithful" and self.student_dynamic_padding:
            raise PseudoError("student-dynamic-padding works on cached features: use --mode cached")
        if self.mc_passes and (self.mode == "faithful" or "finetune" in (self.student, self.recipe)):
            raise PseudoError("mc-passes samples the frozen head's dropout: it works in --mode cached with the head "
                              "(not --student finetune or --recipe finetune)")
        if self.mode == "faithful" and "finetune" in (self.student, self.recipe):
            raise PseudoError("fine-tuning the encoder (--student finetune, --recipe finetune) works in --mode cached")
        self._validate_recipe(self.resolved_recipe())

    def _validate_recipe(self, recipe) -> None:
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

    def resolved_recipe(self):
        """The head recipe of the rounds a head trains (with --recipe finetune: the default recipe's)."""
        from ..heads.model import recipe as make_recipe

        base = "default" if self.recipe == FINETUNE_RECIPE else self.recipe
        return make_recipe(base, **{name: getattr(self, name) for name in RECIPE_OVERRIDES})

    def resolve_student(self, labeled_rows: int) -> None:
        """`--student auto` made "head" or "finetune" for a run of `labeled_rows` labeled posts (`auto_student`;
        the reason kept in `student_reason`); a given student stays."""
        if self.student == AUTO_STUDENT:
            self.student, self.student_reason = auto_student(self, labeled_rows)

    def trainer(self, k: int) -> str:
        """What round k trains: "finetune" (the encoder with a light classifier) or "head"."""
        if k and self.student == AUTO_STUDENT:
            raise PseudoError("student auto is decided by the labeled posts: call resolve_student first")
        return "finetune" if (self.recipe == FINETUNE_RECIPE if k == 0 else self.student == "finetune") else "head"

    def fine_tunes_throughout(self) -> bool:
        """Every round fine-tunes the encoder: no round reads the frozen encoder's features."""
        return all(self.trainer(k) == "finetune" for k in range(self.rounds + 1))

    def finetune(self, k: int):
        """The fine-tuned student's settings for round k (rounds >= 1 add the student's token dropout)."""
        return FineTune(layers=self.finetune_layers, epochs=self.finetune_epochs, learning_rate=self.finetune_lr,
                        token_dropout=self.student_token_dropout if k >= 1 else 0.0,
                        precision=self.finetune_precision, monitor_share=self.finetune_monitor)

    def results_dict(self) -> dict:
        """The options that decide a run's numbers (a run continues only with the same ones)."""
        out = asdict(self)
        for key in NOT_RESULTS:
            out.pop(key)
        for key, default in OMITTED_AT_DEFAULT.items():
            if out[key] == default:
                del out[key]
        out["stream"] = sorted(out["stream"])
        return out

    def invocation(self) -> dict:
        """Every option of the run as given (the results' options and those that are not: rounds,
        run directory, delivery, --force), for the command that resumes it (`pseudo report`)."""
        out = asdict(self)
        out["stream"] = list(out["stream"])
        return out

    def results_hash(self) -> str:
        """Hash of everything that decides the run's numbers: the options and the resolved recipe."""
        return results_hash(self.results_dict(), self.resolved_recipe().to_dict())

    def round0_key(self, encoder_identity: str) -> str:
        """What round 0's numbers depend on, hashed (see `round0_key`)."""
        return round0_key(self.results_dict(), self.resolved_recipe().to_dict(), encoder_identity)


def auto_student(config: RunConfig, labeled_rows: int) -> tuple[str, str]:
    """What `--student auto` trains in rounds >= 1, and why: the head where only it applies (no later round, the
    faithful graph, MC dropout of the head, the reference recipe `seed` a reproduction keeps), else the fine-tuned
    student from AUTO_STUDENT_LABELS labeled posts on."""
    if config.rounds == 0:
        return "head", "no pseudo-label round"
    for applies, why in ((config.mode == "faithful", "--mode faithful trains the head"),
                         (config.recipe == "seed", "the reference recipe seed keeps the head"),
                         (config.mc_passes > 0, "--mc-passes samples the head's dropout")):
        if applies:
            return "head", why
    if labeled_rows >= AUTO_STUDENT_LABELS:
        return "finetune", f"{labeled_rows:,} labeled posts, at least {AUTO_STUDENT_LABELS:,}"
    return "head", f"{labeled_rows:,} labeled posts, under {AUTO_STUDENT_LABELS:,}"


def absolute(path: str | None) -> str | None:
    """`path` as an absolute, normalised path (links are not followed); None and '' stay as they are."""
    return os.path.abspath(path) if path else path


def results_hash(options: dict, recipe: dict) -> str:
    return config_hash({"schema": SCHEMA, "config": options, "recipe": recipe})


def round0_key(options: dict, recipe: dict, encoder_identity: str) -> str:
    """What round 0's numbers depend on, hashed: the options but those of later rounds, the resolved
    recipe and the encoder's content (the files by path, as the run's own hash)."""
    later = [k for k in LATER_ROUNDS if not (options.get("recipe") == FINETUNE_RECIPE and k in FINETUNE_OPTIONS)]
    options = {k: v for k, v in options.items() if k not in later}
    return config_hash({"schema": SCHEMA, "config": options, "recipe": recipe, "encoder": encoder_identity})


# schema 1 recorded neither option: runs made then used these values
_ADDED_IN_2 = {"student_token_dropout": 0.0, "co_teacher": 0.0}


def migrate(record: dict, absolute_paths: bool = True) -> dict:
    """A run directory's config.json record brought to the current schema (its hash recomputed).

    With `absolute_paths`, input paths recorded relative (before they were made absolute) are taken
    as relative to the working folder now, as the command that continues the run gives them."""
    schema = record.get("schema", 1)
    if schema > SCHEMA:
        raise PseudoError(f"config.json of schema {schema}, this package reads up to {SCHEMA}: upgrade pseudolabel")
    options = record.get("config", {})
    if schema < 2:
        options = {**_ADDED_IN_2, **options}
    if absolute_paths:
        options = {k: absolute(v) if k in PATHS else v for k, v in options.items()}
    if schema == SCHEMA and options == record.get("config", {}):
        return record
    return {**record, "schema": SCHEMA, "config": options, "hash": results_hash(options, record.get("recipe", {}))}

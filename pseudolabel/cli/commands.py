"""The `pseudo` command: thin typer commands (parse -> one library call -> render)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichBars, TextColumn, TimeElapsedColumn, \
    TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from ..rounds.config import AUTO_STUDENT_LABELS, UNCERTAINTY_WEIGHT, RunConfig
from ..core.errors import PseudoError
from ..core.progress import Progress

EXAMPLES = """[bold]Examples[/bold]

  [cyan]pseudo run --rounds 2[/cyan]                 round 0 and two pseudo-label rounds on the bundled sample

  [cyan]pseudo run --rounds 2 --train train.csv --test test.csv --unlabeled pool.csv --encoder models/bert-base-chinese[/cyan]

  [cyan]pseudo select --threshold 0.9[/cyan]         re-select the next round's pseudo-labels, no training

  [cyan]pseudo report --html run.html[/cyan]         the newest run's rounds, and a page of charts

  [cyan]pseudo predict posts.csv --out pred.csv[/cyan]  score new posts with what the newest run delivered

  [cyan]pseudo export --out my-model[/cyan]           a model folder to hand on (pseudo predict --model my-model)

  [cyan]pseudo run --help[/cyan]                     every option of a run, grouped, with its default"""

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="rich", epilog=EXAMPLES,
                  help="Semi-supervised pseudo-labeling for Chinese Weibo sentiment (-1/0/1).")
# Tables need about 120 columns; when output is not a terminal (a pipe, a log) do not wrap at 80.
_WIDTH = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 130
console = Console(width=_WIDTH)
errors = Console(stderr=True, width=_WIDTH)

REPO = Path(__file__).resolve().parents[2]


def _bundled(relative: str) -> str:
    """A bundled file: next to the package in a checkout, else relative to the working folder."""
    path = REPO / relative
    return str(path) if path.exists() else relative


DEFAULT_TRAIN = _bundled("data/train.labeled.csv")
DEFAULT_TEST = _bundled("data/test.csv")
DEFAULT_UNLABELED = _bundled("data/unlabeled.csv")
DEFAULT_ENCODER = _bundled("models/weibo-mlm-4l256")  # pretrained with `pseudo pretrain` (models/README.md)
DEFAULT_VOCAB = _bundled("models/bert-mini-random")  # the bert-base-chinese vocabulary


class _Remaining(TimeRemainingColumn):
    """Time left: the run's own estimate on the overall line, rich's on the others."""

    def render(self, task):
        if "eta" in task.fields:
            return Text(task.fields["eta"], style="progress.remaining")
        return super().render(task)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def fold_line(round: int, fold: int, n_folds: int, record: dict, reused: bool) -> str:
    """One finished fold in words: `round 1 fold 0: 4 epochs (best 3), monitor macro-F1 ..., 35 s`."""
    if reused:
        return f"round {round} fold {fold}: finished earlier (validation macro-F1 {record['valid']['macro_f1']:.4f})"
    best = record.get("best_epoch") or record.get("epochs")
    monitor = [e.get("monitor_macro_f1") for e in record.get("history", [])]
    shown = f", monitor macro-F1 {monitor[best - 1]:.4f}" if best and monitor and monitor[best - 1] is not None else ""
    per_epoch = record.get("n_pseudo_per_epoch", record["n_train_pseudo"])
    sampled = f" ({per_epoch} pseudo-labeled per epoch)" if per_epoch < record["n_train_pseudo"] else ""
    student = (f" ({record['student']}, the encoder over {record['encoder_rows']:,} posts)"
               if record.get("student") else "")
    epochs = (f"{record['epochs']} looks every {record['rows_per_check']:,} rows" if record.get("rows_per_check")
              else f"{record['epochs']} epochs")
    return (f"round {round} fold {fold}{student}: {epochs} (best {best}){shown}, validation macro-F1 "
            f"{record['valid']['macro_f1']:.4f}, {record['n_train_human']}+{record['n_train_pseudo']} rows{sampled}, "
            f"{record['seconds']:.0f} s")


def round_line(m: dict) -> str:
    """A finished round in words: its OOF and holdout macro-F1, best co-teacher blend, pseudo-labels, time."""
    from .report import best_blend

    holdout = f", holdout {m['holdout']['macro_f1']:.4f}" if m.get("holdout") else ""
    if (best := best_blend(m.get("holdout_blend"))) is not None:
        holdout += f" (with the co-teacher at {best[0]:.2f}: {best[1]:.4f})"
    pseudo = f", {m['n_pseudo']:,} pseudo-labeled per fold" if m["round"] else ""
    return (f"round {m['round']} finished: OOF macro-F1 {m['oof']['macro_f1']:.4f}{holdout}{pseudo}, "
            f"{m['seconds']['total']:.0f} s")


class ConsoleProgress(Progress):
    """The library's progress for a person. In a terminal: live bars, and an overall line (round r/R,
    folds done, elapsed, estimated time left). Elsewhere (a log file, a pipe, CI): no bars, one plain
    line per finished long task, fold and round, flushed at once. Notes and fold scores go to both."""

    def __init__(self, console: Console, live: bool | None = None):
        self.console = console
        self.live = console.is_terminal if live is None else live
        self.bars = RichBars(TextColumn("{task.description:<44}"), BarColumn(), MofNCompleteColumn(),
                             TimeElapsedColumn(), _Remaining(), console=console, transient=False)
        self.ids: dict[str, int] = {}
        self.started: dict[str, tuple[float, int]] = {}
        self.rounds = self.n_folds = self.done = 0
        self.work: list[list[float] | None] = []  # per round, each fold's relative cost (None: not modelled)
        self.left: set[tuple[int, int]] = set()  # (round, fold) not finished yet
        self.fold_seconds: list[tuple[float, float | None]] = []  # trained folds: seconds, relative cost

    def __enter__(self):
        if self.live:
            self.bars.start()
        return self

    def __exit__(self, *exc):
        if self.live:
            self.bars.stop()

    def _line(self, text: str, style: str | None = None) -> None:
        self.console.print(text, style=style, highlight=False, markup=False)
        if not self.live:
            self.console.file.flush()

    def start(self, task, total):
        self.started[task] = (time.time(), total)
        if not self.live:
            return
        if task in self.ids:
            self.bars.reset(self.ids[task], total=total)
        else:
            self.ids[task] = self.bars.add_task(task, total=total)

    def advance(self, task, steps=1):
        if self.live:
            self.bars.advance(self.ids[task], steps)

    def finish(self, task):
        if self.live:
            bar = self.ids.get(task)
            if bar is not None:
                self.bars.update(bar, completed=self.bars.tasks[bar].total)
        elif task in self.started and " fold " not in task:  # fold tasks: one line per fold instead
            began, total = self.started.pop(task)
            self._line(f"{task}: {total:,} done in {time.time() - began:.1f} s")

    def status(self, task, text):
        bar = self.ids.get(task)
        if self.live and bar is not None:
            self.bars.update(bar, description=f"{task} {text}")

    def note(self, message):
        self._line(f"· {message}", style="dim")

    # ---- the run's overall line

    def plan(self, rounds, folds, work=None):
        self.rounds, self.n_folds, self.done = rounds, folds, 0
        self.work = list(work) if work else [None] * rounds
        self.left = {(k, f) for k in range(rounds) for f in range(folds)}
        if self.live:
            self.ids["overall"] = self.bars.add_task("overall", total=rounds * folds, eta="")
        self._overall(0)

    def _overall(self, round):
        if not (self.live and "overall" in self.ids):
            return
        seconds = self.time_left()
        eta = f"~{_minutes(seconds)}" if seconds is not None else ""
        self.bars.update(self.ids["overall"], completed=self.done, eta=eta,
                         description=f"overall: round {round}/{self.rounds - 1}, "
                                     f"fold {self.done % self.n_folds}/{self.n_folds} of the round")

    def cost(self, round: int, fold: int) -> float | None:
        work = self.work[round] if round < len(self.work) else None
        return work[fold] if work is not None and fold < len(work) else None

    def time_left(self) -> float | None:
        """Seconds the unfinished folds will take: each fold's relative cost under the run's cost model times
        the seconds per unit the trained folds took (folds outside the model: the trained folds' mean)."""
        if not self.fold_seconds:
            return None
        modelled = [(s, c) for s, c in self.fold_seconds if c]
        rate = sum(s for s, _ in modelled) / sum(c for _, c in modelled) if modelled else None
        mean = sum(s for s, _ in self.fold_seconds) / len(self.fold_seconds)
        costs = [self.cost(k, f) for k, f in self.left]
        return sum(c * rate if c and rate else mean for c in costs)

    def fold_finished(self, round, fold, n_folds, record, reused=False):
        self.done += 1
        self.left.discard((round, fold))
        if not reused:
            self.fold_seconds.append((float(record.get("seconds", 0.0)), self.cost(round, fold)))
        self._line(fold_line(round, fold, n_folds, record, reused))
        self._overall(round + (fold + 1) // n_folds)

    def round_reused(self, round, n_folds):
        self.done += n_folds
        self.left -= {(round, f) for f in range(n_folds)}
        self._overall(round + 1)

    def round_finished(self, rounds):
        """One line per finished round; the round table itself is printed once, when the run ends."""
        self._line(round_line(rounds[-1]), style="bold")


def _os_error(exc: OSError) -> str:
    """A filesystem error in one line, naming the path (read-only, not a directory, permission, disk full)."""
    where = exc.filename or "a file of the run"
    hint = "; free space and run the same command to resume (finished folds are kept)" \
        if exc.errno == errno.ENOSPC else ""
    return f"{where}: {exc.strerror or exc}{hint}"


def _fail(message: str, code: int = 1):
    errors.print(f"[bold red]error:[/bold red] {escape(message)}", soft_wrap=True, highlight=False)
    raise typer.Exit(code)


@contextlib.contextmanager
def one_line_errors(interrupted: str):
    """The CLI's edge: the library's errors and filesystem errors as one line and exit 1; Ctrl-C as
    `interrupted` and exit 130."""
    try:
        yield
    except PseudoError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(_os_error(exc))
    except KeyboardInterrupt:
        _fail(interrupted, 130)


def _render_rounds(rounds, stop, title, choice, state=None):
    from .report import footer_lines, rounds_table

    console.print(rounds_table(rounds, title, width=console.width))
    for line in footer_lines(rounds, stop, choice, state):
        console.print(line)


_D = RunConfig.defaults()
_DATA, _RECIPE, _SELECT, _STUDENT, _DELIVER, _CONTROL = ("Data", "Encoder and recipe", "Pseudo-label selection",
                                                        "Student", "Delivery", "Run control")


def _opt(default, help: str, panel: str, *names: str):
    """A typer option in its help panel; `[default: ...]` in `help` is shown literally, not as markup."""
    return typer.Option(default, *names, help=help.replace("[", "\\["), rich_help_panel=panel)


def _weight(value) -> float | str:
    """--pseudo-weight: a number, or 'uncertainty'."""
    if isinstance(value, float) or str(value).strip().lower() != UNCERTAINTY_WEIGHT:
        return _ratio(value)
    return UNCERTAINTY_WEIGHT


def _ratio(value) -> float | None:
    """--pseudo-ratio: a number of pseudo-labeled posts per human one, or 'all'."""
    if value is None or isinstance(value, float):
        return value
    if str(value).strip().lower() == "all":
        return None
    try:
        return float(value)
    except ValueError:
        return value  # refused by the option's constraint, as a one-line error


@app.command()
def run(
    rounds: int = _opt(_D["rounds"], "Pseudo-label rounds after round 0 (2 -> rounds 0, 1, 2).", _CONTROL),
    train: str = _opt(DEFAULT_TRAIN, "Labeled CSV (competition layout, column 情感倾向).", _DATA),
    test: str = _opt(DEFAULT_TEST, "Test CSV to predict (submission.csv per round); '' for none.", _DATA),
    unlabeled: str = _opt(DEFAULT_UNLABELED, "Unlabeled pool CSV; '' for none (round 0 only).", _DATA),
    unlabeled_limit: int = _opt(_D["unlabeled_limit"], "Use the first N rows of the unlabeled pool.", _DATA),
    encoder: str = _opt(DEFAULT_ENCODER, "Local BERT checkpoint folder.", _RECIPE),
    run_dir: Optional[str] = _opt(None, "Run directory [default: runs/run-<config hash>].", _CONTROL),
    recipe: str = _opt(_D["recipe"], "Round 0's recipe: 'default' (the head, made to learn on small data), 'seed' "
                                     "(the reference script exactly) or 'finetune' (the encoder fine-tuned with a "
                                     "light classifier: a supervised baseline).", _RECIPE),
    mode: str = _opt(_D["mode"], "'cached': encoder features computed once; 'faithful': encoder inside the Keras "
                                 "graph as the reference script.", _RECIPE),
    folds: int = _opt(_D["folds"], "Cross-validation folds.", _RECIPE),
    epochs: Optional[int] = _opt(None, "Epochs per fold [default: the recipe's, 2].", _RECIPE),
    batch_size: Optional[int] = _opt(None, "Batch size [default: the recipe's, 128].", _RECIPE),
    min_steps: Optional[int] = _opt(None, "Train at least this many batches per fold (more epochs on small data) "
                                          "[default: the recipe's].", _RECIPE),
    standardize: Optional[bool] = _opt(None, "Z-score features with training-fold statistics [default: the "
                                             "recipe's].", _RECIPE, "--standardize/--no-standardize"),
    spatial_dropout: Optional[float] = _opt(None, "SpatialDropout1D rate on the features [default: the "
                                                  "recipe's].", _RECIPE),
    bn_momentum: Optional[float] = _opt(None, "BatchNormalization momentum [default: the recipe's].", _RECIPE),
    precise_bn: Optional[int] = _opt(None, "Recompute BatchNorm statistics in inference mode on this many "
                                           "training rows after each epoch (0: off) [default: the recipe's].",
                                     _RECIPE),
    zero_padding: Optional[bool] = _opt(None, "Zero the features at padding positions [default: the recipe's].",
                                        _RECIPE, "--zero-padding/--no-zero-padding"),
    early_stopping: Optional[bool] = _opt(None, "Keep the best epoch on a monitor slice of the training part "
                                                "[default: the recipe's].", _RECIPE,
                                          "--early-stopping/--no-early-stopping"),
    dynamic_padding: Optional[bool] = _opt(None, "Cut each head batch to its longest post (length-grouped "
                                                 "batches): faster, changes results (padding feeds the BiGRU and "
                                                 "capsules in the recipe).", _RECIPE,
                                           "--dynamic-padding/--no-dynamic-padding"),
    max_len: int = _opt(_D["max_len"], "Tokens per post (truncated/padded).", _RECIPE),
    seed: int = _opt(_D["seed"], "Seed of weight init, shuffling and the holdout split.", _RECIPE),
    threshold: Optional[float] = _opt(None, "Minimum max probability of a selected pool row (threshold, "
                                            "per-class: 0.9 if not given; class-balanced: a cap, none if not "
                                            "given).", _SELECT),
    strategy: str = _opt(_D["strategy"], "class-balanced (the mix follows the labeled prior; every pool row it "
                                         "allows unless --threshold or --top-k caps it) | uncertainty (as many, the "
                                         "least uncertain per class first) | threshold | per-class | top-k.",
                         _SELECT),
    top_k: Optional[int] = _opt(None, "Rows to select (top-k) or the cap (class-balanced).", _SELECT),
    co_teacher: float = _opt(_D["co_teacher"], "Blend the pool predictions pseudo-labels come from with a char "
                                               "n-gram TF-IDF + logistic regression teacher trained on the same "
                                               "folds; its share (0: off, 0.5: an even blend).", _SELECT),
    pseudo_weight: Optional[float] = typer.Option(
        _D["pseudo_weight"], parser=_weight, metavar="W|uncertainty", rich_help_panel=_SELECT,
        help="Sample weight of pseudo-labeled rows; 'uncertainty': each by how much the teacher's members agree on "
             "its label (UST's -log of the label's variance over them, scaled to mean 1)."),
    mc_passes: int = _opt(_D["mc_passes"], "MC-dropout passes of each fold's head over the pool after each round, "
                                           "for --strategy/--pseudo-weight uncertainty (0: the folds' disagreement "
                                           "alone).", _SELECT),
    pseudo_ratio: Optional[float] = typer.Option(
        _D["pseudo_ratio"], parser=_ratio, metavar="R|all", rich_help_panel=_STUDENT,
        help="Rounds >= 1: each epoch trains on every human-labeled post of the fold and a fresh sample of R "
             "pseudo-labeled posts per human one ('all': every pseudo-labeled post, every epoch)."),
    pseudo_source: str = _opt(_D["pseudo_source"], "'fold': fold k learns from fold k's previous model only "
                                                   "(leak-free OOF); 'mean': all folds' average.", _SELECT),
    soft_targets: bool = _opt(_D["soft_targets"], "Train on the teacher's probabilities instead of hard labels.",
                              _SELECT),
    sharpen: float = _opt(_D["sharpen"], "Soft targets: temperature T of p^(1/T) (T < 1 sharpens).", _SELECT),
    student_noise: float = _opt(_D["student_noise"], "Rounds >= 1: std of Gaussian noise on the student's "
                                                     "standardised features while training (a noised student).",
                                _SELECT),
    student_token_dropout: float = _opt(_D["student_token_dropout"], "Rounds >= 1: share of token positions whose "
                                        "features the student loses while training (word dropout).", _SELECT),
    student_dynamic_padding: Optional[bool] = _opt(None, "Rounds >= 1: the head's batches length-grouped and cut "
                                                   "to their longest post [default: on in --mode cached].", _STUDENT),
    monitor_every: str = _opt(_D["monitor_every"], "Rounds >= 1, the head: early stopping looks after every epoch "
                                                   "('epoch') or after every stretch of as many posts as the "
                                                   "fold's human-labeled part ('human': round 0's epoch; patience "
                                                   "and the best counted in those).", _STUDENT),
    student: str = _opt(_D["student"], "Rounds >= 1: 'head' (the recipe's head on frozen features), 'finetune' "
                                       "(each fold fine-tunes the encoder on its human + pseudo-labeled posts; the "
                                       "encoder runs again over every post) or 'auto' (finetune from "
                                       f"{AUTO_STUDENT_LABELS:,} labeled posts on, else head; head in --mode "
                                       "faithful, with --recipe seed or --mc-passes).", _STUDENT),
    finetune_layers: int = _opt(_D["finetune_layers"], "Fine-tuning: the top N encoder layers train (0: all, "
                                                       "embeddings too).", _STUDENT),
    finetune_epochs: int = _opt(_D["finetune_epochs"], "Fine-tuning: epochs (the best on a monitor slice of the "
                                                       "training part is kept; --finetune-monitor).", _STUDENT),
    finetune_lr: float = _opt(_D["finetune_lr"], "Fine-tuning: peak learning rate of AdamW (linear warm-up over "
                                                 "10% of the steps, then linear decay).", _STUDENT),
    finetune_precision: str = _opt(_D["finetune_precision"], "Fine-tuning: float32, mixed_float16 (GPUs) or "
                                                             "mixed_bfloat16; see docs/gpu.md.", _STUDENT),
    finetune_monitor: float = _opt(_D["finetune_monitor"], "Fine-tuning: share of each fold's training part that "
                                                           "picks the best epoch (0: every post trains, the last "
                                                           "epoch is kept).", _STUDENT),
    calibrate: bool = _opt(_D["calibrate"], "Temperature-scale probabilities on OOF rows before selecting.",
                           _SELECT),
    holdout: Optional[float] = _opt(None, "Share of labeled rows held out before round 0, for scoring (and "
                                          "with --deliver auto, choosing) what is delivered only [default: 0.15 "
                                          "with --rounds >= 1, else 0; a continued run keeps its own].", _DELIVER),
    deliver: str = _opt(_D["deliver"], "What submission.csv holds: 'mean' (every usable round's fold ensemble "
                                       "averaged, blended evenly with the co-teacher unless --co-teacher 0; no "
                                       "choice, the holdout only estimates it), 'auto' (the round and co-teacher "
                                       "blend best on the holdout), 'head' (the best round's fold heads), 'blend' "
                                       "(the best blend).",
                        _DELIVER),
    class_weights: str = _opt(_D["class_weights"], "'auto': label posts argmax(p · w), per-class weights w searched "
                                                   "for the best macro-F1 on every labeled post (holdout and OOF), "
                                                   "with a cross-fitted estimate; 'none': argmax(p).", _DELIVER),
    raw: bool = _opt(_D["raw"], "CSV files (submission.csv, pseudo_labels.csv) with ids and texts as they came "
                                "in; by default a cell a spreadsheet would run as a formula (= + - @, a tab "
                                "first) gets a leading '.", _DELIVER),
    stream: str = _opt("", "Comma-separated splits (test, unlabeled) to recompute each round instead of caching "
                           "their features on disk.", _CONTROL),
    force: bool = _opt(_D["force"], "Select pseudo-labels even from a collapsed round.", _CONTROL),
    executor: str = _opt(_D["executor"], "Where a round's folds train: 'local' (one after another here) or 'ray' "
                                         "(each fold a Ray task; pip install -e \".[ray]\"; docs/scale-out.md).",
                         _CONTROL),
    ray_address: Optional[str] = _opt(None, "--executor ray: the cluster's address [default: RAY_ADDRESS, else a "
                                            "local Ray instance started and stopped by the run].", _CONTROL),
    fold_cpus: int = _opt(_D["fold_cpus"], "--executor ray: CPUs per fold task (its TensorFlow threads).", _CONTROL),
    fold_gpus: float = _opt(_D["fold_gpus"], "--executor ray: GPUs per fold task.", _CONTROL),
    restart: bool = _opt(False, "Start the run directory over (the feature cache is kept).", _CONTROL),
    plan: bool = _opt(False, "Print the rows, disk and estimated time of each stage (measured on a few warm "
                             "batches of this machine), then exit without training or writing.", _CONTROL),
):
    """Round 0 of the recipe, then pseudo-label rounds; resumes an interrupted run in the same run directory."""
    options = dict(locals())  # the parameters above, named as RunConfig's fields
    options.pop("restart")
    options.pop("plan")
    from ..data.posts import load_labeled
    from ..rounds.loop import Run

    options.update(test=test or None, unlabeled=unlabeled or None, run_dir="",
                   stream=tuple(s.strip() for s in stream.split(",") if s.strip()))
    config = RunConfig(**options)
    try:
        if not run_dir:  # the default directory is named by the options' hash: --student auto decided first
            config.resolve_student(len(load_labeled(config.train)))
        config.run_dir = run_dir or f"runs/run-{config.results_hash()[:8]}"
    except PseudoError as exc:
        _fail(str(exc))
    if plan:
        with one_line_errors("interrupted"):
            _print_plan(config)
        return
    with one_line_errors(f"interrupted; finished folds are kept: run the same command to resume ({config.run_dir})"):
        with ConsoleProgress(console) as progress:
            job = Run(config, progress, restart=restart)
            console.print(f"[bold]run[/bold] {config.run_dir} · encoder {job.files.describe()} · "
                          f"recipe {'finetune' if config.trainer(0) == 'finetune' else job.recipe.name} · "
                          f"mode {config.mode}")
            result = job.execute()
    _render_rounds(result.rounds, result.stop_reason, f"run {result.run_dir}", result.final)


def _print_plan(config: RunConfig) -> None:
    from ..rounds.plan import plan_run

    with ConsoleProgress(console) as progress:
        stages, costs = plan_run(config, progress)
    table = Table(title=f"plan of {config.run_dir} (nothing trained or written)")
    for column in ("stage", "rows", "disk", "estimated time"):
        table.add_column(column, justify="left" if column in ("stage", "rows") else "right")
    known = [s["seconds"] for s in stages if s["seconds"] is not None]
    for s in stages:
        table.add_row(s["stage"], s["rows"], s["disk"], "-" if s["seconds"] is None else _duration(s["seconds"]))
    table.add_row("total", "", "", ("≤ " if known else "") + _duration(sum(known)))
    console.print(table)
    tuned = ("" if costs.tune is None else f", fine-tuning {costs.tune * 1e3:.2f} ms, the student's scoring "
                                           f"{costs.tune_score * 1e3:.2f} ms (and {costs.tune_setup:.0f} s a fold "
                                           f"to build it)")
    tuned += f", {config.mc_passes} MC-dropout passes {costs.mc * 1e3:.3f} ms" if config.mc_passes else ""
    console.print(f"measured here per post: encoder {costs.encode * 1e3:.2f} ms, head training "
                  f"{costs.train * 1e3:.3f} ms, head scoring {costs.score * 1e3:.3f} ms{tuned}; epochs are the "
                  f"recipe's most (early stopping may end a fold sooner), so round times are upper bounds")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


@app.command("select")
def select_cmd(
    threshold: Optional[float] = typer.Option(None, help="Minimum max probability (inclusive); with "
                                              "class-balanced, the cap [default: the run's]."),
    run_dir: Optional[str] = typer.Option(None, help="Run directory [default: the newest under runs/]."),
    round: Optional[int] = typer.Option(None, "--round", help="Finished round to select from [default: last]."),
    strategy: Optional[str] = typer.Option(None, help="class-balanced | uncertainty | threshold | per-class | "
                                                      "top-k [default: the run's]."),
    top_k: Optional[int] = typer.Option(None, help="Rows to select (top-k) or the cap (class-balanced) "
                                                   "[default: the run's]."),
    source: Optional[str] = typer.Option(None, help="mean | fold [default: the run's]."),
    calibrate: bool = typer.Option(False, help="Temperature-scale on OOF rows before selecting."),
    force: bool = typer.Option(False, help="Select even from a collapsed round."),
    raw: bool = typer.Option(False, "--raw", help="pseudo_labels.csv with ids and texts as they came in "
                                                  "[default: the run's; else spreadsheet-safe]."),
):
    """Re-select pseudo-labels from a finished round without training; the next `pseudo run` uses them."""
    from ..rounds.selection import reselect
    from ..core.store import latest_run

    try:
        shown = reselect(run_dir or latest_run(), round=round, strategy=strategy, threshold=threshold, top_k=top_k,
                         source=source, calibrate=calibrate, force=force, raw=raw)
    except PseudoError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(_os_error(exc))
    info = shown["selection"]
    counts = Table(title=f"selection from round {shown['round']} for round {shown['next_round']} "
                         f"(strategy {info['strategy']}, threshold {info['threshold']}, source {info['source']}"
                         f"{', temperature %.2f' % info['temperature'] if info['temperature'] != 1 else ''})",
                   title_justify="left")
    for column in ("class", "selected", "share", "labeled prior"):
        counts.add_column(column, justify="right")
    total = max(1, sum(info["per_class"]))
    for label, n, p in zip(("-1", "0", "1"), info["per_class"], shown["labeled_prior"]):
        counts.add_row(label, str(n), f"{n / total:.2f}", f"{p:.2f}")
    counts.add_row("all", f"{info['n_selected']} of {shown['pool_rows']}", "", "")
    console.print(counts)
    sweep = Table(title="threshold sweep (fold-mean pool predictions; precision on OOF rows; uncertainty: mean BALD "
                        "of the rows over the threshold)", title_justify="left")
    for column in ("threshold", "selected", "-1 / 0 / 1", "OOF rows", "OOF precision", "uncertainty"):
        sweep.add_column(column, justify="right")
    for row in shown["sweep"]:
        precision = "–" if row["oof_precision"] is None else f"{row['oof_precision']:.3f}"
        spread = "–" if row["uncertainty"] is None else f"{row['uncertainty']:.4f}"
        sweep.add_row(f"{row['threshold']:.2f}", str(row["selected"]), " / ".join(map(str, row["per_class"])),
                      str(row["oof_selected"]), precision, spread)
    console.print(sweep)
    spread = info["uncertainty"]
    if spread["selected"]["mean"] is not None:
        console.print(f"uncertainty ({spread['measure']}, {spread['over']}): the selected rows' mean "
                      f"{spread['selected']['mean']:.4f}, 90th percentile {spread['selected']['p90']:.4f}; the "
                      f"pool's mean {spread['pool']['mean']:.4f}")
    cal = shown["calibration"]
    if cal.get("ece") is not None:
        console.print(f"OOF calibration of round {shown['round']}: ECE {cal['ece']:.3f}; temperature "
                      f"{cal['temperature']:.2f} would give ECE {cal['ece_scaled']:.3f} (--calibrate applies it)")
    console.print(f"written: {shown['written']}")


@app.command()
def report(
    run_dir: Optional[str] = typer.Option(None, help="Run directory [default: the newest under runs/]."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for machines."),
    html: Optional[Path] = typer.Option(None, "--html", help="Also write a self-contained HTML page of charts "
                                                             "to this file.", dir_okay=False),
):
    """The per-round table of a run, how far an unfinished run got and how to resume it."""
    from .report import final_choice, final_line, load_rounds, report_json, run_state, state_lines
    from ..core.store import latest_run

    try:
        path = run_dir or str(latest_run())
        rounds, stop = load_rounds(path)
        state = run_state(path, rounds, stop)
        resume = resume_command(state["invocation"])
        if as_json:
            sys.stdout.write(json.dumps(report_json(path, resume), indent=2, ensure_ascii=False) + "\n")
            return
        choice = final_choice(path, rounds)
        lines = state_lines(state, resume)
        if html is not None and rounds:
            from .htmlreport import write_html

            charts = write_html(path, rounds, [final_line(choice, rounds).plain, *lines],
                                choice if choice and choice.get("written", True) else None, html)
    except PseudoError as exc:
        _fail(str(exc))
    if not rounds:
        console.print(f"{path}: no finished round yet")
        for line in lines:
            console.print(line, style="yellow", markup=False, highlight=False)
        return
    _render_rounds(rounds, stop, f"run {path}", choice, lines)
    if html is not None:
        console.print(f"written: {html} ({charts} charts)")


@app.command()
def predict(
    files: list[Path] = typer.Argument(..., help="CSV file(s) of posts: column 微博中文内容 or text (or a single "
                                                 "column); ids from 微博id or id, else row numbers.", dir_okay=False),
    out: Path = typer.Option(..., "--out", help="Where to write id, y (-1/0/1), p_-1, p_0, p_1.", dir_okay=False),
    run_dir: Optional[str] = typer.Option(None, help="Run directory whose delivered output predicts [default: the "
                                                     "newest under runs/]."),
    model: Optional[str] = typer.Option(None, "--model", help="An exported model folder (pseudo export) instead "
                                                              "of a run directory."),
    round: Optional[int] = typer.Option(None, "--round", min=0, help="Predict with this finished round's fold heads "
                                                                     "alone [default: what the run delivered]."),
    encoder: Optional[str] = typer.Option(None, help="The encoder's folder, if it moved since training (its content "
                                                     "is checked)."),
    format: str = typer.Option("csv", "--format", help="csv | jsonl."),
    chunk_rows: int = typer.Option(4096, min=1, help="Posts read, tokenized and scored at a time (memory stays "
                                                     "flat however long the file)."),
    raw: bool = typer.Option(False, "--raw", help="Write ids as they came in; by default an id a spreadsheet "
                                                  "would run as a formula (= + - @ first) gets a leading '."),
    executor: str = typer.Option("local", help="local | ray: Ray Data map_batches over a pool of actors, each "
                                               "holding the model (docs/scale-out.md)."),
    ray_address: Optional[str] = typer.Option(None, help="--executor ray: the cluster [default: RAY_ADDRESS, "
                                                         "else a local instance]."),
    concurrency: int = typer.Option(2, min=1, help="--executor ray: actors scoring at once."),
    actor_cpus: int = typer.Option(1, min=1, help="--executor ray: CPUs per actor (its TensorFlow threads)."),
    actor_gpus: float = typer.Option(0.0, min=0.0, help="--executor ray: GPUs per actor."),
):
    """Score new posts with what a run delivered (or an exported model); streams files of any size."""
    from ..delivery.predict import load_model
    from ..core.store import latest_run

    with one_line_errors(f"interrupted; {out} was not written"):
        if model and (run_dir or round is not None):
            raise PseudoError("give --model or --run-dir (with --round), not both")
        if executor not in ("local", "ray"):
            raise PseudoError(f"executor must be one of local, ray, got {executor!r}")
        source = model or run_dir or latest_run()
        with ConsoleProgress(console) as progress:
            loaded = load_model(source, round=round, encoder=encoder, progress=progress)
            scoring = None
            if executor == "ray":
                from ..delivery.ray_predict import RayScoring

                scoring = RayScoring(source, round, encoder, ray_address, concurrency, actor_cpus, actor_gpus,
                                     progress)
            try:
                done = loaded.predict_files(files, out, format, chunk_rows, raw=raw, scoring=scoring)
            finally:
                getattr(scoring, "close", lambda: None)()
    what = done["what"]
    mix = " / ".join(str(n) for n in done["per_class"].values())
    console.print(f"written: {done['out']} · {done['rows']:,} posts · {what} of {done['source']} · "
                  f"predicted -1 / 0 / 1: {mix}", highlight=False)


@app.command()
def export(
    out: str = typer.Option(..., "--out", help="The model folder to write (new or empty, or an earlier export)."),
    run_dir: Optional[str] = typer.Option(None, help="Run directory [default: the newest under runs/]."),
    round: Optional[int] = typer.Option(None, "--round", min=0, help="Export this finished round's fold heads alone "
                                                                     "[default: what the run delivered]."),
    copy_encoder: bool = typer.Option(True, "--copy-encoder/--reference-encoder",
                                      help="Copy the encoder into the folder, or only record its content hash (the "
                                           "folder is then used with `pseudo predict --model DIR --encoder ENC`)."),
    saved_model: bool = typer.Option(False, "--saved-model", help="Also a TensorFlow SavedModel of the fold heads "
                                                                  "and encoder for TF Serving (token ids in, "
                                                                  "probabilities out; the blend's text model is "
                                                                  "not inside)."),
):
    """A self-contained model folder of what a run delivered: fold heads, co-teacher, recipe, model card."""
    from ..delivery.delivered import export as write_export
    from ..core.store import latest_run

    with one_line_errors(f"interrupted; {out} is not a model until an export finishes (model.json is written last)"):
        with ConsoleProgress(console) as progress:
            folder = write_export(run_dir or latest_run(), out, copy_encoder=copy_encoder, round=round,
                                  saved_model=saved_model, progress=progress)
    console.print(f"written: {folder} (model.json, README.md model card)")
    use = f"pseudo predict posts.csv --model {folder} --out predictions.csv"
    if not copy_encoder:  # the folder records where the encoder is, but loading never reads it from there
        use += f" --encoder {shlex.quote(json.loads((folder / 'model.json').read_text())['encoder']['folder'])}"
    console.print(f"use it: {use}")


def resume_command(invocation: dict) -> str | None:
    """The `pseudo run` command that continues a run, from the options it recorded (those at the
    command's defaults left out); None for a run that recorded none."""
    if not invocation:
        return None
    parts = ["pseudo", "run"]
    for param in typer.main.get_command(app).commands["run"].params:
        if param.name not in invocation or param.name == "restart":
            continue
        value = invocation[param.name]
        if param.name in ("test", "unlabeled") and value is None:
            value = ""
        elif param.name == "stream":
            value = ",".join(value)
        if value is None or value == param.default:
            continue
        if param.is_flag:
            parts.append(param.opts[0] if value else param.secondary_opts[0])
        else:
            parts += [param.opts[0], shlex.quote(f"{value:g}" if isinstance(value, float) else str(value))]
    return " ".join(parts)


@app.command()
def pretrain(
    corpus: list[str] = typer.Argument(..., help="CSV file(s) with a text column (labels are never read)."),
    out: str = typer.Option(..., help="Output encoder folder (also holds the checkpoint to resume from)."),
    init: Optional[str] = typer.Option(None, help="Continue from this encoder folder instead of a fresh config."),
    vocab: Optional[str] = typer.Option(DEFAULT_VOCAB, help="vocab.txt (or an encoder folder) for a fresh "
                                                              "config; ignored with --init."),
    layers: int = typer.Option(4, help="Fresh config: transformer layers."),
    hidden: int = typer.Option(256, help="Fresh config: hidden size."),
    heads: int = typer.Option(4, help="Fresh config: attention heads."),
    intermediate: int = typer.Option(1024, help="Fresh config: feed-forward size."),
    dropout: float = typer.Option(0.1, help="Dropout of the encoder during pretraining."),
    max_len: int = typer.Option(128, help="Tokens per post (longer posts are truncated)."),
    batch_size: int = typer.Option(64, help="Posts per step (batches are grouped by length)."),
    steps: Optional[int] = typer.Option(None, help="Optimizer steps [default: 2000, or from --epochs]."),
    epochs: Optional[float] = typer.Option(None, help="Passes over the corpus (sets --steps)."),
    lr: float = typer.Option(5e-4, help="Peak learning rate (AdamW)."),
    warmup: float = typer.Option(0.06, help="Share of the steps with linear warm-up (then linear decay)."),
    mask_prob: float = typer.Option(0.15, help="Share of tokens predicted (80% [MASK], 10% random, 10% kept)."),
    eval_rows: int = typer.Option(1000, help="Posts held out for the MLM loss at checkpoints."),
    checkpoint_every: int = typer.Option(200, help="Steps between checkpoints (and held-out evaluations)."),
    corpus_limit: Optional[int] = typer.Option(None, help="Read only the first N rows of each corpus file."),
    seed: int = typer.Option(0, help="Seed of initialisation, batch order and masks."),
    threads: int = typer.Option(0, help="CPU threads for TensorFlow (0: all)."),
    restart: bool = typer.Option(False, help="Discard the checkpoint in --out and start over."),
):
    """Masked-language-model training of an encoder on unlabeled posts; resumes from its checkpoint."""
    from ..encoding.pretrain import PretrainConfig, count_steps, pretrain as run_pretrain

    if threads:
        from ..core._tf import tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    try:
        if steps is not None and epochs is not None:
            raise PseudoError("give --steps or --epochs, not both")
        if epochs is not None:
            steps = count_steps(corpus, epochs, batch_size, eval_rows, corpus_limit)
        config = PretrainConfig(layers=layers, hidden=hidden, heads=heads, intermediate=intermediate,
                                dropout=dropout, max_len=max_len, batch_size=batch_size,
                                steps=steps if steps is not None else 2000, learning_rate=lr, warmup=warmup,
                                mask_prob=mask_prob, seed=seed, eval_rows=eval_rows,
                                checkpoint_every=checkpoint_every, corpus_limit=corpus_limit)
        with ConsoleProgress(console) as progress:
            record = run_pretrain(corpus, out, config, vocab=vocab, init=init, restart=restart, progress=progress)
    except PseudoError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _fail(f"interrupted; run the same command to resume from the last checkpoint in {out}", 130)
    held = [e["loss"] for e in record["eval_loss"] if e["loss"] is not None]
    console.print(f"encoder written to {out} · {record['steps_done']} steps · {record['seconds'] / 60:.1f} min"
                  + (f" · held-out MLM loss {held[0]:.3f} -> {held[-1]:.3f}" if held else ""))
    console.print(f"use it: pseudo run --encoder {out}")


def main():
    """The console script and `python -m pseudolabel`. A fatal error leaves with its exit code at once,
    without the interpreter's finalizers: after a failed HDF5 write (a full disk) they can crash, which
    would turn exit 1 into a segmentation fault. Every file was already written whole or not at all, and
    the run directory's lock goes with the process."""
    try:
        app()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if code:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            os._exit(code)
        raise

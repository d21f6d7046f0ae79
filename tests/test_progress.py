"""The overall progress line's time left: each unfinished fold's cost under the run's cost model
(`rounds.costs`, the one `--plan` uses) times the seconds per unit the trained folds took."""

import io
from dataclasses import replace

import numpy as np
from rich.console import Console

from pseudolabel.cli.commands import ConsoleProgress
from pseudolabel.rounds.config import RunConfig
from pseudolabel.rounds.cv import make_folds
from pseudolabel.rounds.loop import Run, fold_work


def _record(seconds: float) -> dict:
    return {"seconds": seconds, "epochs": 3, "best_epoch": 2, "history": [], "n_train_human": 40,
            "n_train_pseudo": 0, "valid": {"macro_f1": 0.5}}


def _progress(live: bool = False) -> ConsoleProgress:
    return ConsoleProgress(Console(file=io.StringIO(), force_terminal=live, width=120), live=live)


def test_time_left_counts_later_rounds_at_their_own_cost_from_the_first_fold_on():
    progress = _progress()
    progress.plan(2, 2, [[1.0, 1.0], [3.0, 3.0]])
    assert progress.time_left() is None  # nothing measured yet
    progress.fold_finished(0, 0, 2, _record(10.0))
    assert progress.time_left() == 10.0 * (1 + 3 + 3)  # not 3 folds x 10 s
    progress.fold_finished(0, 1, 2, _record(30.0))
    assert progress.time_left() == 20.0 * (3 + 3)  # 40 s for 2 units


def test_folds_outside_the_model_take_the_mean_and_a_reused_round_is_not_left():
    progress = _progress()
    progress.plan(3, 2, [[1.0, 1.0], None, [2.0, 2.0]])  # round 1: fine-tuned, not modelled
    progress.round_reused(0, 2)
    progress.fold_finished(1, 0, 2, _record(50.0))
    assert progress.time_left() == 50.0 * 3  # no modelled fold measured: the mean for each of the three left
    progress.fold_finished(1, 1, 2, _record(70.0))
    progress.fold_finished(2, 0, 2, _record(20.0))
    assert progress.time_left() == 20.0  # 10 s a unit, 2 units left


def test_the_overall_line_shows_the_models_estimate():
    progress = _progress(live=True)
    with progress:
        progress.plan(2, 2, [[1.0, 1.0], [4.0, 4.0]])
        progress.fold_finished(0, 0, 2, _record(10.0))
        task = progress.bars.tasks[progress.ids["overall"]]
        assert task.fields["eta"] == "~2 min"  # 10 s x (1 + 4 + 4) = 90 s


def test_a_run_hands_the_progress_each_folds_cost_per_round(tiny_data, tiny_encoder, tmp_path):
    def config(name, **options):
        return RunConfig(train=str(tiny_data["train"]), test=str(tiny_data["test"]),
                         unlabeled=str(tiny_data["unlabeled"]), encoder=str(tiny_encoder),
                         run_dir=str(tmp_path / name), rounds=2, folds=3, max_len=32, **options)

    run = Run(config("ratio", pseudo_ratio=2.0))
    try:
        folds = make_folds(run.labeled.labels, 3, 0.15, 0)
        work = fold_work(run, folds)
    finally:
        run.lock.release()
    assert len(work) == 3 and all(len(w) == 3 for w in work)
    assert all(later > first for later, first in zip(work[1], work[0]))  # twice the rows per epoch at most
    assert np.allclose(work[1], work[2])
    run = Run(config("student", student="finetune"))
    try:
        work = fold_work(run, folds)
    finally:
        run.lock.release()
    assert work[0] is not None and work[1] is None and work[2] is None


def test_length_grouped_rounds_cost_the_share_of_full_length_their_posts_pad_to():
    from pseudolabel.rounds.costs import NOMINAL, length_share, round_work

    assert length_share(np.array([3, 20, 140]), 140) == (16 + 32 + 140) / 3 / 140  # padded as batches are cut
    assert length_share(np.zeros(0, np.int64), 140) == 1.0
    config = RunConfig(train="a", test=None, unlabeled=None, encoder="e", run_dir="r", rounds=1,
                       student_dynamic_padding=True)
    folds = make_folds(np.arange(300) % 3, 5, 0.15, 0)
    n_rows = {"labeled": 300, "test": 100, "unlabeled": 500}
    recipe = config.resolved_recipe()
    full = round_work(config, recipe, 1, NOMINAL, n_rows, folds, 0.25).seconds
    grouped = round_work(config, replace(recipe, dynamic_padding=True), 1, NOMINAL, n_rows, folds, 0.25).seconds
    assert np.allclose(np.array(grouped) * 4, full)

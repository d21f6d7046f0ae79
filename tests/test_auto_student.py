"""`--student auto` (the default): rounds >= 1 fine-tune the encoder from AUTO_STUDENT_LABELS labeled posts on,
train the head below that, and keep the head where only it applies; decided before the run is named, kept by a
continued run."""

import json

import numpy as np
import pytest

from conftest import read_rows, run_args, write_rows
from test_rounds import invoke
from pseudolabel.core.constants import HOLDOUT
from pseudolabel.core.errors import PseudoError
from pseudolabel.core.progress import Recorder
from pseudolabel.rounds.config import AUTO_STUDENT_LABELS, RunConfig, auto_student
from pseudolabel.rounds.costs import Costs, student_work
from pseudolabel.rounds.loop import Run

COMMON = dict(train="a.csv", test=None, unlabeled="c.csv", encoder="enc", run_dir="x", rounds=2)


@pytest.fixture(scope="module")
def many_labels(tiny_data, tmp_path_factory):
    """A train file of exactly AUTO_STUDENT_LABELS labeled posts: the sample's posts again under new ids."""
    header, *rows = read_rows(tiny_data["train"])
    posts = [[f"auto-{i}", *rows[i % len(rows)][1:]] for i in range(AUTO_STUDENT_LABELS)]
    return write_rows(tmp_path_factory.mktemp("many") / "train.csv", [header] + posts)


@pytest.mark.parametrize("options, labeled, trainer, why", [
    ({}, AUTO_STUDENT_LABELS, "finetune", f"{AUTO_STUDENT_LABELS:,} labeled posts, at least"),
    ({}, AUTO_STUDENT_LABELS - 1, "head", f"{AUTO_STUDENT_LABELS - 1:,} labeled posts, under"),
    ({"rounds": 0}, 10 * AUTO_STUDENT_LABELS, "head", "no pseudo-label round"),
    ({"mode": "faithful", "recipe": "seed"}, 10 * AUTO_STUDENT_LABELS, "head", "--mode faithful"),
    ({"recipe": "seed"}, 10 * AUTO_STUDENT_LABELS, "head", "the reference recipe seed"),
    ({"mc_passes": 10}, 10 * AUTO_STUDENT_LABELS, "head", "--mc-passes"),
    ({"recipe": "finetune"}, AUTO_STUDENT_LABELS, "finetune", "labeled posts, at least"),
])
def test_auto_follows_the_labeled_posts_and_keeps_the_head_where_only_it_applies(options, labeled, trainer, why):
    config = RunConfig(**{**COMMON, **options})
    assert config.student == "auto" and not config.student_given
    got, reason = auto_student(config, labeled)
    assert got == trainer and why in reason
    config.resolve_student(labeled)
    assert config.student == trainer and config.student_reason == reason
    config.validate()  # what auto chose is always a valid run
    assert config.trainer(1) == trainer


def test_a_given_student_stays_and_an_undecided_one_trains_nothing():
    given = RunConfig(**COMMON, student="head")
    given.resolve_student(10 * AUTO_STUDENT_LABELS)
    assert given.student == "head" and given.student_reason is None and given.student_given
    with pytest.raises(PseudoError, match="student auto is decided by the labeled posts"):
        RunConfig(**COMMON).trainer(1)
    with pytest.raises(PseudoError, match="student must be one of head, finetune, auto, got 'teacher'"):
        RunConfig(**COMMON, student="teacher").validate()


def test_auto_names_the_run_as_the_student_it_chose_so_earlier_runs_keep_their_names(
        tiny_data, tiny_encoder, many_labels, tmp_path, monkeypatch):
    """Without --run-dir the run is named by its options' hash: auto is decided first, so a run under the
    threshold is the run `--student head` made (and made before auto existed), one over it `--student finetune`'s."""
    monkeypatch.chdir(tmp_path)
    for train, chosen in ((tiny_data["train"], "head"), (many_labels, "finetune")):
        args = run_args(tiny_data, tiny_encoder, "x", "--rounds", "1", "--plan")
        args[args.index("--train") + 1] = str(train)
        at = args.index("--run-dir")
        del args[at:at + 2]
        result = invoke(*args)
        assert result.exit_code == 0, result.output
        same = _config(tiny_data, tiny_encoder, train, "", student=chosen, epochs=2, batch_size=16, min_steps=0)
        said = " ".join(result.output.split())
        assert f"plan of runs/run-{same.results_hash()[:8]}" in said, said
        round1 = next(line for line in result.output.splitlines() if line.startswith("│ round 1"))
        assert ("fine-tuned student" in round1) == (chosen == "finetune"), round1
        assert round1.rstrip(" │").endswith(" s") and "not estimated" not in round1  # the student's time too
        assert ("fine-tuning" in said and "a fold to build it" in said) == (chosen == "finetune"), said
    assert not (tmp_path / "runs").exists()  # --plan writes nothing


def test_the_students_cost_is_its_setup_per_fold_and_its_epochs_over_the_training_budgets_rows():
    """A student fold of round 1: 60 human-labeled training posts, 6 of them its monitor slice, half a pseudo-labeled
    post per remaining human one each epoch (--pseudo-ratio 0.5), --finetune-epochs 2; it scores its 30 validation
    posts, the 10 holdout posts, the pool and the test file once, and its monitor slice every epoch."""
    folds = np.array([0, 1, 2] * 30 + [HOLDOUT] * 10)
    n_rows = {"labeled": len(folds), "test": 20, "unlabeled": 1000}
    config = RunConfig(**COMMON, student="finetune", finetune_epochs=2)
    train_only = student_work(config, 1, Costs(0, 0, 0, tune_setup=5.0, tune=1.0, tune_score=0.0), n_rows, folds)
    assert train_only.per_epoch == [54 + 27] * 3 and train_only.epochs == [2] * 3
    assert train_only.seconds == [5.0 + 2 * 81] * 3
    score_only = student_work(config, 1, Costs(0, 0, 0, tune_setup=0.0, tune=0.0, tune_score=1.0), n_rows, folds)
    assert score_only.seconds == [30 + 10 + 1000 + 20 + 2 * 6] * 3
    halved = student_work(config, 1, Costs(0, 0, 0, tune_setup=0.0, tune=1.0, tune_score=1.0), n_rows, folds, 0.5)
    assert halved.seconds == [(2 * 81 + 1072) * 0.5] * 3  # length-grouped batches: every step at that share


def _config(tiny_data, tiny_encoder, train, run_dir, **options) -> RunConfig:
    return RunConfig(train=str(train), test=str(tiny_data["test"]), unlabeled=str(tiny_data["unlabeled"]),
                     encoder=str(tiny_encoder), run_dir=str(run_dir), rounds=1, max_len=24, folds=3, **options)


def test_a_continued_run_keeps_its_own_student_and_a_given_other_one_is_refused(tiny_data, tiny_encoder,
                                                                                many_labels, tmp_path):
    run_dir = tmp_path / "run"
    made = Run(_config(tiny_data, tiny_encoder, many_labels, run_dir, student="head"), Recorder())
    made.lock.release()  # the directory is made; nothing trained
    assert "student" not in json.loads((run_dir / "config.json").read_text())["config"]  # the head: as before auto

    notes = Recorder()
    again = Run(_config(tiny_data, tiny_encoder, many_labels, run_dir), notes)
    again.lock.release()
    assert again.config.student == "head"
    assert any("continuing with the run's own student head" in line for line in notes.notes), notes.notes
    assert not any("--student auto" in line for line in notes.notes)  # what auto would choose is not what trains

    with pytest.raises(PseudoError, match=r"made with other options: student \(saved 'head', now 'finetune'\);"):
        Run(_config(tiny_data, tiny_encoder, many_labels, run_dir, student="finetune"), Recorder())

    fresh = Recorder()
    new = Run(_config(tiny_data, tiny_encoder, many_labels, tmp_path / "new"), fresh)
    new.lock.release()
    assert json.loads((tmp_path / "new" / "config.json").read_text())["config"]["student"] == "finetune"
    assert any(f"rounds >= 1 train the fine-tuned student (--student auto: {AUTO_STUDENT_LABELS:,} labeled posts"
               in line for line in fresh.notes), fresh.notes
    # the head given to a run the student made: named as a difference (an option left out of the record at its
    # default is compared at that default)
    with pytest.raises(PseudoError, match=r"made with other options: student \(saved 'finetune', now 'head'\);"):
        Run(_config(tiny_data, tiny_encoder, many_labels, tmp_path / "new", student="head"), Recorder())


@pytest.mark.slow
def test_a_plain_run_with_many_labels_fine_tunes_its_later_round(tiny_data, tiny_encoder, many_labels, tmp_path):
    """What a user gets from `pseudo run --rounds 1` with AUTO_STUDENT_LABELS labels: round 1's folds fine-tune
    the encoder, the report says so, and the run delivers."""
    args = ["run", "--train", str(many_labels), "--test", str(tiny_data["test"]), "--unlabeled",
            str(tiny_data["unlabeled"]), "--encoder", str(tiny_encoder), "--run-dir", str(tmp_path / "run"),
            "--max-len", "16", "--epochs", "1", "--batch-size", "32", "--min-steps", "0", "--folds", "2",
            "--rounds", "1", "--finetune-epochs", "1", "--strategy", "top-k", "--top-k", "20"]
    planned = invoke(*args, "--plan")
    assert planned.exit_code == 0, planned.output
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert "rounds >= 1 train the fine-tuned student (--student auto" in " ".join(result.output.split())
    report = json.loads(invoke("report", "--run-dir", str(tmp_path / "run"), "--json").output)
    assert [r["student"] for r in report["rounds"]] == ["head", "finetune"]
    metrics = json.loads((tmp_path / "run" / "round_1" / "metrics.json").read_text())
    assert metrics["student"] == "finetune" and metrics["encoder_rows"] > 0
    # what --plan said each student fold trains per epoch is what it trained
    line = next(x for x in planned.output.splitlines() if x.startswith("│ round 1"))
    said = sorted({int(n.replace(",", "")) for n in line.split("×")[2].split("rows")[0].strip().split("–")})
    trained = sorted({f["n_train_human"] + f["n_pseudo_per_epoch"] for f in metrics["folds"]})
    assert said == trained, (line, trained)
    assert (tmp_path / "run" / "final.json").is_file()

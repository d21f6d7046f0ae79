"""`--student finetune` and `--recipe finetune` on a tiny encoder: the student's encoder weights move
and the encoder on disk does not; fold k never trains on its validation part; an interrupted round
resumes to the same numbers; soft targets reach the loss; a collapsed student is detected."""

import json

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import read_rows, run_args
from test_predict import predictions
from pseudolabel.cli.commands import app
from pseudolabel.core.constants import HOLDOUT
from pseudolabel.encoding.encoder import find_encoder
from pseudolabel.heads.finetune import FineTune, Student, drop_tokens
from pseudolabel.data.metrics import scores

runner = CliRunner()
STUDENT = ["--student", "finetune", "--finetune-epochs", "2", "--finetune-lr", "1e-4", "--folds", "2",
           "--epochs", "1"]
# the module's student run: round 0 cuts its head batches (--dynamic-padding), which a student round's fold
# models never do; --force: round 0's head may collapse at this size, and round 1 must run all the same
STUDENT_RUN = ["--rounds", "1", "--dynamic-padding", "--force", *STUDENT]


def _word_embeddings(path) -> np.ndarray:
    """The one (vocabulary, hidden) array of a weights file: the encoder's word embeddings."""
    found = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: found.append(obj[()]) if isinstance(obj, h5py.Dataset)
                     and obj.ndim == 2 and obj.shape[0] > 20000 else None)
    assert len(found) == 1, [a.shape for a in found]
    return found[0]


@pytest.fixture(scope="module")
def student_run(tiny_data, tiny_encoder, tmp_path_factory):
    identity = find_encoder(tiny_encoder).identity
    run_dir = tmp_path_factory.mktemp("runs") / "ft"
    result = runner.invoke(app, run_args(tiny_data, tiny_encoder, run_dir, *STUDENT_RUN))
    assert result.exit_code == 0, result.output
    assert json.loads((run_dir / "config.json").read_text())["recipe"]["dynamic_padding"] is True
    assert find_encoder(tiny_encoder).identity == identity  # the encoder on disk is never written
    return run_dir, result


@pytest.mark.slow
def test_the_student_fine_tunes_its_own_encoder_on_its_folds_training_part(student_run, tiny_encoder):
    run_dir, result = student_run
    metrics = json.loads((run_dir / "round_1" / "metrics.json").read_text())
    assert metrics["student"] == "finetune" and metrics["recipe"].startswith("finetune(")
    assert json.loads((run_dir / "round_0" / "metrics.json").read_text())["student"] == "head"
    original = _word_embeddings(tiny_encoder / "tf_model.h5")
    folds = np.load(run_dir / "round_0" / "folds.npy")
    for fold in range(2):
        files = run_dir / "round_1" / f"fold_{fold}"
        moved = _word_embeddings(files / "head.weights.h5")
        assert moved.shape == original.shape and not np.allclose(moved, original)  # the student's encoder trained
        train, valid = np.load(files / "train_idx.npy"), np.load(files / "valid_idx.npy")
        assert not set(train) & set(valid) and not set(train) & set(np.flatnonzero(folds == HOLDOUT))
        np.testing.assert_array_equal(valid, np.flatnonzero(folds == fold))
        record = json.loads((files / "fold.json").read_text())
        assert record["n_train_pseudo"] > 0 and record["encoder_rows"] > 0 and record["n_monitor"] > 0
        for name, rows in (("test", 20), ("unmask", 60), ("holdout", int((folds == HOLDOUT).sum()))):
            assert np.load(files / f"{name}_preds.npy").shape == (rows, 3)
    assert metrics["encoder_rows"] == sum(f["encoder_rows"] for f in metrics["folds"])
    assert np.load(run_dir / "round_1" / "unmask_preds.npy").shape == (2, 60, 3)
    assert "(finetune(layers=all,epochs=2,lr=0.0001), the encoder over" in " ".join(result.output.split())
    # the report shows which rounds fine-tuned, how many posts their folds encoded, and the time per fold
    report = json.loads(runner.invoke(app, ["report", "--run-dir", str(run_dir), "--json"]).output)["rounds"]
    assert [r["student"] for r in report] == ["head", "finetune"]
    assert report[1]["encoder_rows"] == metrics["encoder_rows"] and report[0]["encoder_rows"] == 0
    assert report[1]["seconds_per_fold"] == pytest.approx(np.mean([f["seconds"] for f in metrics["folds"]]))
    from rich.console import Console

    from pseudolabel.cli.report import load_rounds, rounds_table

    console = Console(width=300, record=True)
    console.print(rounds_table(load_rounds(run_dir)[0]))
    assert "fine-tuned" in console.export_text()  # the posts encoded: in --json (above) and the HTML page
    # a collapsed student is detected as any round: from its own out-of-fold predictions
    from pseudolabel.data.posts import load_labeled

    oof = np.load(run_dir / "round_1" / "oof_preds.npy")
    evaluated = folds != HOLDOUT
    labels = load_labeled(json.loads((run_dir / "config.json").read_text())["config"]["train"]).labels
    collapsed = scores(labels[evaluated], oof[evaluated])["collapsed"] or any(
        f["valid"]["collapsed"] for f in metrics["folds"])
    assert metrics["collapsed"] == bool(collapsed)
    final = json.loads((run_dir / "final.json").read_text())
    round0_collapsed = json.loads((run_dir / "round_0" / "metrics.json").read_text())["collapsed"]
    if metrics["collapsed"] and not round0_collapsed:
        assert final["round"] == 0  # a collapsed round is never delivered while another is not


@pytest.mark.slow
def test_a_student_round_interrupted_after_a_fold_resumes_to_the_same_numbers(student_run, tiny_data, tiny_encoder):
    run_dir, _ = student_run
    r1 = run_dir / "round_1"
    before = np.load(r1 / "oof_preds.npy"), np.load(r1 / "unmask_preds.npy")
    (r1 / "DONE").unlink()
    (r1 / "fold_1" / "DONE").unlink()  # fold 0 finished, fold 1 not
    result = runner.invoke(app, run_args(tiny_data, tiny_encoder, run_dir, *STUDENT_RUN))
    assert result.exit_code == 0, result.output
    assert "round 1 fold 0: finished earlier" in result.output
    np.testing.assert_allclose(np.load(r1 / "oof_preds.npy"), before[0], atol=1e-5)
    np.testing.assert_allclose(np.load(r1 / "unmask_preds.npy"), before[1], atol=1e-5)


def test_soft_targets_reach_the_students_loss_linearly(tiny_encoder):
    from pseudolabel.encoding.encoder import load_tokenizer
    from pseudolabel.data.tokenize import tokenize

    files = find_encoder(tiny_encoder)
    student = Student(files, FineTune(dropout=0.0), steps=4, seed=0)
    tokens = tokenize(["今天很开心", "太难了，不想说话", "一般般吧"], load_tokenizer(files), 16)
    ids, mask = tokens.input_ids, tokens.attention_mask.astype(np.int32)
    weights = np.ones(3, np.float32)

    def loss(targets):
        return float(student.loss_step(ids, mask, np.asarray(targets, np.float32), weights))

    hard_a, hard_b = np.eye(3, dtype=np.float32)[[0, 0, 0]], np.eye(3, dtype=np.float32)[[1, 1, 1]]
    soft = 0.3 * hard_a + 0.7 * hard_b
    assert loss(soft) == pytest.approx(0.3 * loss(hard_a) + 0.7 * loss(hard_b), rel=1e-5)
    assert loss(soft) != pytest.approx(loss(hard_a), rel=1e-3)
    # pseudo-label weights scale their rows' part of the loss
    heavy = float(student.loss_step(ids, mask, hard_a, np.array([2.0, 1.0, 1.0], np.float32)))
    assert heavy != pytest.approx(loss(hard_a), rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_a_mixed_precision_student_learns_and_keeps_float32_weights_and_outputs(tiny_encoder, precision):
    """Mixed precision computes in 16 bits (mixed_float16 with a scaled loss) and keeps float32 variables,
    probabilities and saved weights; it fits a small batch like the float32 student. (Its speed is a
    GPU matter and is not measured here.)"""
    from pseudolabel.core._tf import keras
    from pseudolabel.encoding.encoder import load_tokenizer
    from pseudolabel.data.tokenize import tokenize

    files = find_encoder(tiny_encoder)
    tokens = tokenize(["今天很开心", "太难了，不想说话", "一般般吧", "好想哭"], load_tokenizer(files), 16)
    ids, mask = tokens.input_ids, tokens.attention_mask.astype(np.int32)
    targets, weights = np.eye(3, dtype=np.float32)[[0, 1, 2, 1]], np.ones(4, np.float32)
    student = Student(files, FineTune(precision=precision, learning_rate=1e-3, warmup=0.0), steps=30, seed=0)
    assert keras.mixed_precision.global_policy().name == "float32"  # the policy does not leak past the student
    assert student.bert.bert.encoder.layer[0].compute_dtype == precision.split("_")[1]
    first = float(student.loss_step(ids, mask, targets, weights))
    for _ in range(30):
        student.train_on(ids, mask, targets, weights)
    assert float(student.loss_step(ids, mask, targets, weights)) < 0.5 * first
    probs = student.predict_step(ids, mask).numpy()
    assert probs.dtype == np.float32 and np.allclose(probs.sum(axis=1), 1, atol=1e-3)
    assert {v.dtype.name for v in student.model.weights} == {"float32"}


def test_token_dropout_masks_real_tokens_only():
    rng = np.random.default_rng(0)
    ids = np.array([[101, 5, 6, 7, 102, 0, 0]] * 200, np.int32)
    mask = (ids != 0).astype(np.int8)
    dropped = drop_tokens(ids, mask, 0.5, 103, rng)
    assert (dropped[:, [0, 4, 5, 6]] == ids[:, [0, 4, 5, 6]]).all()  # [CLS], [SEP] and padding kept
    share = (dropped[:, 1:4] == 103).mean()
    assert 0.4 < share < 0.6
    assert drop_tokens(ids, mask, 0.0, 103, rng) is ids


def test_finetune_options_are_checked_before_anything_is_written(tiny_data, tiny_encoder, tmp_path):
    for extra, says in ((["--student", "teacher"], "student must be one of head, finetune"),
                        (["--finetune-epochs", "0"], "finetune-epochs must be >= 1"),
                        (["--finetune-lr", "0"], "finetune-lr must be in (0, 1]"),
                        (["--finetune-precision", "half"], "finetune-precision must be one of float32"),
                        (["--finetune-monitor", "0.5"], "finetune-monitor must be in [0, 0.5)"),
                        (["--student", "finetune", "--finetune-layers", "3"], "finetune-layers must be <= 2"),
                        (["--student", "finetune", "--mode", "faithful", "--recipe", "seed"],
                         "works in --mode cached")):
        result = runner.invoke(app, run_args(tiny_data, tiny_encoder, tmp_path / "r", "--rounds", "1", *extra))
        assert result.exit_code == 1 and says in " ".join(result.output.split()), result.output
        assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_a_run_that_fine_tunes_in_every_round_skips_the_frozen_feature_pass(tiny_data, tiny_encoder, tmp_path):
    """--recipe finetune --student finetune: round 0 fine-tunes too, and no round reads frozen features, so
    none are computed or cached (nor does --plan count them); both rounds write what every round writes, and
    what the run delivered predicts its test file again. --finetune-monitor 0: no monitor slice, every training
    post of a fold trains and the last epoch is kept. (--top-k, --force: round 0 may collapse at this size, and
    a class-balanced selection from it can be empty.)"""
    run_dir = tmp_path / "runs" / "all-ft"
    args = run_args(tiny_data, tiny_encoder, run_dir, "--rounds", "1", "--recipe", "finetune", "--strategy",
                    "top-k", "--top-k", "30", "--force", "--finetune-monitor", "0", *STUDENT)
    planned = runner.invoke(app, [*args, "--plan"])
    assert planned.exit_code == 0, planned.output
    assert "features:" not in planned.output and "│ round 0 │ fine-tuned encoder:" in planned.output
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "recipe finetune · mode cached" in " ".join(result.output.split())
    assert not any((run_dir / "features").iterdir())  # the frozen encoder never ran
    folds = np.load(run_dir / "round_0" / "folds.npy")
    original = _word_embeddings(tiny_encoder / "tf_model.h5")
    for k in (0, 1):
        metrics = json.loads((run_dir / f"round_{k}" / "metrics.json").read_text())
        assert metrics["student"] == "finetune" and metrics["encoder_rows"] > 0
        assert np.load(run_dir / f"round_{k}" / "test_preds.npy").shape == (2, 20, 3)
        moved = _word_embeddings(run_dir / f"round_{k}" / "fold_0" / "head.weights.h5")
        assert not np.allclose(moved, original)
        assert metrics["recipe"] == "finetune(layers=all,epochs=2,lr=0.0001,monitor=0)"
        for fold in range(2):
            record = json.loads((run_dir / f"round_{k}" / f"fold_{fold}" / "fold.json").read_text())
            assert record["n_monitor"] == 0 and record["best_epoch"] == 2 == len(record["history"])
            assert record["n_train_human"] == int(((folds != fold) & (folds != HOLDOUT)).sum())
    assert json.loads((run_dir / "round_1" / "metrics.json").read_text())["n_pseudo"] > 0
    assert (run_dir / "final.json").is_file() and (run_dir / "submission.csv").is_file()
    out = tmp_path / "pred.csv"  # both rounds' fine-tuned folds and the co-teacher, as delivered
    predicted = runner.invoke(app, ["predict", str(tiny_data["test"]), "--run-dir", str(run_dir), "--out", str(out)])
    assert predicted.exit_code == 0, predicted.output
    labels, probs = predictions(out)
    assert labels == read_rows(run_dir / "submission.csv")[1:]
    np.testing.assert_allclose(probs, np.load(run_dir / "final_test_preds.npy"), atol=1e-5)


@pytest.mark.slow
def test_a_fine_tuned_round_predicts_and_exports_as_it_scored_its_test_file(student_run, tiny_data, tmp_path):
    """`load_model`, `pseudo export` and `pseudo predict --model` on a student round: its fold models (each
    its own encoder) averaged give the round's own test predictions."""
    from pseudolabel import load_model
    from pseudolabel.data.posts import load_unlabeled

    run_dir, _ = student_run
    expected = np.load(run_dir / "round_1" / "test_preds.npy").mean(axis=0)
    model = load_model(run_dir, round=1)
    assert model.info["student"] == "finetune" and model.info["folds"] == 2 and not model.info["dynamic_padding"]
    np.testing.assert_allclose(model.predict_proba(load_unlabeled(tiny_data["test"], None).texts), expected, atol=1e-5)

    out, pred = tmp_path / "model", tmp_path / "pred.csv"
    result = runner.invoke(app, ["export", "--run-dir", str(run_dir), "--round", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "fine-tuned copy of the encoder" in (out / "README.md").read_text()
    result = runner.invoke(app, ["predict", str(tiny_data["test"]), "--model", str(out), "--out", str(pred)])
    assert result.exit_code == 0, result.output
    rows = [line.split(",") for line in pred.read_text(encoding="utf-8").splitlines()[1:]]
    np.testing.assert_allclose(np.array([[float(v) for v in r[2:]] for r in rows]), expected, atol=1e-5)

    result = runner.invoke(app, ["export", "--run-dir", str(run_dir), "--round", "1", "--out", str(tmp_path / "sm"),
                                 "--saved-model"])
    assert result.exit_code == 1 and "fine-tuned the encoder per fold" in " ".join(result.output.split())
    assert len(result.output.strip().splitlines()) <= 3 and "Traceback" not in result.output

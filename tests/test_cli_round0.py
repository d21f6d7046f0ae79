"""`pseudo run --rounds 0` end to end on tiny real CSVs and a tiny BERT, in both modes, and its errors."""

import json
import warnings

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import read_rows, run_args, write_rows
from pseudolabel.cli.commands import app
from pseudolabel.rounds.cv import FOLD_SEED

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def cached_run(tiny_data, tiny_encoder, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "r0"
    result = invoke(*run_args(tiny_data, tiny_encoder, run_dir, "--rounds", "0"))
    assert result.exit_code == 0, result.output
    return run_dir, result


@pytest.mark.slow
def test_round0_layout_and_metrics(cached_run, tiny_data):
    from sklearn.model_selection import StratifiedKFold

    from pseudolabel.data.posts import load_labeled

    run_dir, result = cached_run
    r0 = run_dir / "round_0"
    for name in ("folds.npy", "oof_preds.npy", "test_preds.npy", "unmask_preds.npy", "metrics.json",
                 "submission.csv", "DONE"):
        assert (r0 / name).is_file(), name
    labels = load_labeled(tiny_data["train"]).labels
    folds = np.load(r0 / "folds.npy", allow_pickle=False)
    want = np.empty(len(labels), int)
    for i, (_, valid) in enumerate(StratifiedKFold(3, shuffle=True, random_state=FOLD_SEED).split(labels, labels)):
        want[valid] = i
    np.testing.assert_array_equal(folds, want)
    test = np.load(r0 / "test_preds.npy", allow_pickle=False)
    unmask = np.load(r0 / "unmask_preds.npy", allow_pickle=False)
    oof = np.load(r0 / "oof_preds.npy", allow_pickle=False)
    assert test.shape == (3, 20, 3) and unmask.shape == (3, 60, 3) and oof.shape == (90, 3)
    np.testing.assert_allclose(oof.sum(axis=1), 1.0, rtol=1e-4)
    metrics = json.loads((r0 / "metrics.json").read_text())
    pred = oof.argmax(axis=1)
    assert metrics["oof"]["accuracy"] == pytest.approx(float((pred == labels).mean()))
    assert np.array(metrics["oof"]["confusion"]).sum() == 90
    assert metrics["leak_free"]["oof"] is True
    rows = read_rows(r0 / "submission.csv")
    assert rows[0] == ["id", "y"] and len(rows) == 21 and {r[1] for r in rows[1:]} <= {"-1", "0", "1"}
    assert "OOF" in result.output and "stop reason: max_rounds" in result.output


@pytest.mark.slow
def test_saved_heads_reproduce_the_round_and_hold_no_optimizer_state(cached_run):
    """Each fold's head file loads back (all heads behind one model) to the round's test predictions."""
    import h5py

    from pseudolabel.rounds.cv import FeatureSource, FoldHeads, predict
    from pseudolabel.encoding.features import CachedFeatures
    from pseudolabel.heads.model import Recipe, build_head
    from pseudolabel.core.progress import Progress

    run_dir, _ = cached_run
    saved = json.loads((run_dir / "config.json").read_text())
    paths = sorted((run_dir / "round_0").glob("fold_*/head.weights.h5"))
    assert len(paths) == 3
    for path in paths:
        with h5py.File(path) as f:
            names = []
            f.visit(names.append)
        assert names and not any(n.startswith("optimizer/") for n in names), names
    features = CachedFeatures(next((run_dir / "features").glob("test-*")))
    hidden = saved["encoder"]["config"]["hidden_size"]
    heads = FoldHeads.load(build_head(saved["config"]["max_len"], hidden, Recipe.from_dict(saved["recipe"]),
                                      compile=False), paths)
    got = predict(heads, FeatureSource(features), Progress(), "t")
    # up to float32 rounding: the run scored on its training model, whose functions are traced for
    # other batch shapes than this new model's (measured 3e-6 apart)
    np.testing.assert_allclose(got, np.load(run_dir / "round_0" / "test_preds.npy", allow_pickle=False), atol=2e-5)


@pytest.mark.slow
def test_second_run_reuses_everything(cached_run, tiny_data, tiny_encoder):
    run_dir, _ = cached_run
    before = (run_dir / "round_0" / "oof_preds.npy").stat().st_mtime_ns
    result = invoke(*run_args(tiny_data, tiny_encoder, run_dir, "--rounds", "0"))
    assert result.exit_code == 0
    assert "round 0: finished earlier, reused" in result.output
    assert (run_dir / "round_0" / "oof_preds.npy").stat().st_mtime_ns == before


@pytest.mark.slow
def test_damaged_folds_and_features_of_an_unfinished_round_are_recomputed(cached_run, tiny_data, tiny_encoder,
                                                                          tmp_path):
    """A truncated fold file or a deleted feature file is recomputed with a note, not a traceback."""
    import shutil

    run_dir, _ = cached_run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir.parent, copy, symlinks=True)  # the run and the .stages its links point into
    damaged = copy / run_dir.name
    (damaged / "round_0" / "DONE").unlink()  # an interrupted round 0: its folds are read back
    valid = damaged / "round_0" / "fold_1" / "valid_preds.npy"
    valid.write_bytes(valid.read_bytes()[:100])
    [features] = (damaged / "features").glob("test-*/features.npy")
    features.unlink()
    result = invoke(*run_args(tiny_data, tiny_encoder, damaged, "--rounds", "0"))
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "round 0 fold 1: finished earlier but" in out and "training it again" in out
    assert "round 0 fold 0: finished earlier, reused" in out and "round 0 fold 2: finished earlier, reused" in out
    assert "damaged cache entry" in out and "recomputing it" in out
    np.testing.assert_allclose(np.load(valid, allow_pickle=False),
                               np.load(run_dir / "round_0" / "fold_1" / "valid_preds.npy", allow_pickle=False),
                               atol=2e-5)  # the fold's own seed: the same head again
    assert (damaged / "round_0" / "DONE").is_file()


@pytest.mark.slow
def test_features_reused_by_a_new_round0(cached_run, tiny_data, tiny_encoder):
    """A restart keeps the feature cache: the encoder is not run again."""
    from pseudolabel.rounds.loop import Run, RunConfig
    from pseudolabel.core.progress import Recorder

    run_dir, _ = cached_run
    config = RunConfig(train=str(tiny_data["train"]), test=str(tiny_data["test"]),
                       unlabeled=str(tiny_data["unlabeled"]), encoder=str(tiny_encoder), run_dir=str(run_dir),
                       folds=3, max_len=24, epochs=2, batch_size=16, min_steps=0)
    recorder = Recorder()
    result = Run(config, recorder, restart=True).execute()
    assert result.encoder_rows == 0
    assert sum("reusing cached features" in n for n in recorder.notes) == 3


@pytest.mark.slow
def test_faithful_mode_end_to_end(tiny_data, tiny_encoder, tmp_path):
    from pseudolabel.heads.model import faithful_encoder_rows

    run_dir = tmp_path / "faithful"
    before = faithful_encoder_rows()
    with warnings.catch_warnings(record=True) as caught:  # the filters in force, as a user's run has them
        result = invoke(*run_args(tiny_data, tiny_encoder, run_dir, "--rounds", "0", "--mode", "faithful",
                                  "--recipe", "seed"))
    assert result.exit_code == 0, result.output
    assert not [w for w in caught if "seed_generator" in str(w.message)]  # transformers' note, once per fold
    # the script's protocol: per fold, 2 epochs over the training part, then its validation part, test, pool
    assert faithful_encoder_rows() - before == 3 * (2 * 60 + 30 + 20 + 60)
    assert np.load(run_dir / "round_0" / "test_preds.npy").shape == (3, 20, 3)
    assert not (run_dir / "features").exists()  # the encoder ran inside the graph, nothing cached
    metrics = json.loads((run_dir / "round_0" / "metrics.json").read_text())
    assert metrics["mode"] == "faithful" and metrics["recipe"].startswith("seed(")


@pytest.mark.slow
def test_faithful_mode_scores_a_holdout_with_its_saved_heads(tiny_data, tiny_encoder, tmp_path):
    """The holdout is scored after training, by the fold heads loaded back (encoder in the graph)."""
    run_dir = tmp_path / "faithful-holdout"
    result = invoke(*run_args(tiny_data, tiny_encoder, run_dir, "--rounds", "0", "--mode", "faithful",
                              "--recipe", "seed", "--holdout", "0.2"))
    assert result.exit_code == 0, result.output
    holdout = np.load(run_dir / "round_0" / "holdout_preds.npy", allow_pickle=False)
    assert holdout.shape == (3, 18, 3)
    np.testing.assert_allclose(holdout.sum(axis=2), 1.0, rtol=1e-4)
    assert not np.allclose(holdout[0], holdout[1])  # each fold's own head, not one head three times
    metrics = json.loads((run_dir / "round_0" / "metrics.json").read_text())
    assert metrics["leak_free"]["holdout"] is True and metrics["holdout"]["n"] == 18


def one_line_error(result, *fragments):
    assert result.exit_code == 1, result.output
    lines = [l for l in result.output.strip().splitlines() if l.strip()]
    assert len(lines) == 1, result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.output


def test_cli_bad_inputs(tiny_data, tiny_encoder, tmp_path):
    base = dict(tiny_data)
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    header, *rows = read_rows(tiny_data["train"])
    no_text = write_rows(tmp_path / "notext.csv", [header[:3] + header[4:]] + [r[:3] + r[4:] for r in rows])
    no_label = write_rows(tmp_path / "nolabel.csv", [header[:-1]] + [r[:-1] for r in rows])
    junk = write_rows(tmp_path / "junk.csv", [header] + [r[:-1] + ["x"] for r in rows])
    binary = tmp_path / "binary.csv"
    binary.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8)))
    cases = [
        ({"train": tmp_path / "missing.csv"}, ["missing.csv", "file not found"]),
        ({"train": empty}, ["empty.csv", "file is empty"]),
        ({"train": no_text}, ["notext.csv", "微博中文内容"]),
        ({"train": no_label}, ["nolabel.csv", "情感倾向"]),
        ({"train": junk}, ["junk.csv", "no usable label"]),
        ({"unlabeled": empty}, ["empty.csv", "file is empty"]),
        ({"test": binary}, ["binary.csv", "unreadable encoding, expected UTF-8, UTF-8 with BOM or GB18030"]),
    ]
    for change, fragments in cases:
        data = {**base, **change}
        one_line_error(invoke(*run_args(data, tiny_encoder, tmp_path / "bad")), *fragments)
    one_line_error(invoke(*run_args(base, tmp_path / "noenc", tmp_path / "bad")), "encoder folder not found")
    one_line_error(invoke(*run_args(base, tiny_encoder, tmp_path / "bad", "--mode", "gpu")),
                   "mode must be one of cached, faithful, got 'gpu'")
    one_line_error(invoke(*run_args(base, tiny_encoder, tmp_path / "bad", "--recipe", "best")),
                   "recipe must be one of")
    one_line_error(invoke(*run_args(base, tiny_encoder, tmp_path / "bad", "--threshold", "1.2")),
                   "threshold must be in (0, 1], got 1.2")
    one_line_error(invoke(*run_args(base, tiny_encoder, tmp_path / "bad", "--unlabeled-limit", "0")),
                   "unlabeled-limit must be >= 1, got 0")


def test_inputs_the_options_cannot_use_are_refused_before_anything_is_written(tiny_data, tiny_encoder, tmp_path):
    header, *rows = read_rows(tiny_data["train"])
    one_class = write_rows(tmp_path / "one.csv", [header] + [r for r in rows if r[-1] == "1"])
    two_classes = write_rows(tmp_path / "two.csv", [header] + [r for r in rows if r[-1] != "0"])
    few = write_rows(tmp_path / "few.csv", [header] + [r for r in rows if r[-1] != "0"] +
                     [r for r in rows if r[-1] == "0"][:2])
    cases = [
        ({"train": one_class}, [], ["one.csv", "hold class(es) 1 only", "all three of -1, 0, 1 are needed"]),
        ({"train": two_classes}, [], ["two.csv", "hold class(es) -1, 1 only"]),
        ({"train": few}, [], ["folds must be <= the smallest class count (2), got 3"]),
        ({}, ["--max-len", "100000"], ["max-len must be <= 64, the positions of the encoder", "got 100000"]),
        ({}, ["--folds", "1"], ["folds must be >= 2, got 1"]),
        ({}, ["--holdout", "0.99"], ["holdout must be in [0, 0.5), got 0.99"]),
        ({}, ["--max-len", "0"], ["max-len must be >= 8, got 0"]),
    ]
    for change, options, fragments in cases:
        run_dir = tmp_path / "never"
        one_line_error(invoke(*run_args({**tiny_data, **change}, tiny_encoder, run_dir, *options)), *fragments)
        assert not run_dir.exists()  # the corrected command is not refused as "made with other options"


def test_a_filesystem_error_is_one_line_naming_the_path(tiny_data, tiny_encoder, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    one_line_error(invoke(*run_args(tiny_data, tiny_encoder, blocker / "run")), str(blocker / "run"),
                   "Not a directory")
    one_line_error(invoke(*run_args(tiny_data, tiny_encoder, "/proc/pseudo-run")), "/proc/pseudo-run")

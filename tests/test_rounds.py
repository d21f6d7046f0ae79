"""Pseudo-label rounds: invariants over rounds, `pseudo select`, `pseudo report`, stop reasons."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import read_rows, run_args
from pseudolabel.cli import app
from pseudolabel.data import load_labeled, load_unlabeled
from pseudolabel.select import NOT_SELECTED, select

pytestmark = pytest.mark.slow  # every test here is a CLI run or reads one

runner = CliRunner()
SELECT = ["--co-teacher", "0", "--strategy", "top-k", "--top-k", "20", "--force"]  # the head's own view


def invoke(*args):
    return runner.invoke(app, list(args), catch_exceptions=False)


def load(path):
    return np.load(path, allow_pickle=False)


@pytest.fixture(scope="module")
def two_rounds(tiny_data, tiny_encoder, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "mean"
    result = invoke(*run_args(tiny_data, tiny_encoder, run_dir, "--rounds", "2", "--holdout", "0.2",
                              "--pseudo-source", "mean", *SELECT))
    assert result.exit_code == 0, result.output
    return run_dir, result


@pytest.fixture(scope="module")
def fold_source(tiny_data, tiny_encoder, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "fold"
    result = invoke(*run_args(tiny_data, tiny_encoder, run_dir, "--rounds", "1", "--pseudo-source", "fold", *SELECT))
    assert result.exit_code == 0, result.output
    return run_dir


def test_three_rounds_and_table(two_rounds):
    run_dir, result = two_rounds
    for k in range(3):
        assert (run_dir / f"round_{k}" / "DONE").is_file()
    assert "stop reason: max_rounds" in result.output
    assert "not leak-free" in result.output  # mean-source rounds 1, 2 are marked


def test_folds_fixed_and_validation_parts_human_only(two_rounds, tiny_data):
    run_dir, _ = two_rounds
    folds = load(run_dir / "round_0" / "folds.npy")
    labels = load_labeled(tiny_data["train"]).labels
    assert (folds == -1).sum() == 18  # 20% holdout, stratified
    assert np.bincount(labels[folds == -1], minlength=3).tolist() == [6, 6, 6]
    pool_ids = set(load_unlabeled(tiny_data["unlabeled"]).ids)
    human_ids = set(load_labeled(tiny_data["train"]).ids)
    for k in range(3):
        for i in range(3):
            fold = run_dir / f"round_{k}" / f"fold_{i}"
            valid = load(fold / "valid_idx.npy")
            train = load(fold / "train_idx.npy")
            np.testing.assert_array_equal(valid, np.flatnonzero(folds == i))  # same folds every round
            assert not set(valid) & set(train) and not set(train) & set(np.flatnonzero(folds == -1))
            record = json.loads((fold / "fold.json").read_text())
            assert record["n_valid"] == len(valid)
            assert record["n_train_pseudo"] == (20 if k else 0)
        if k:
            rows = read_rows(run_dir / f"round_{k}" / "pseudo_labels.csv")
            assert rows[0] == ["id", "text", "label", "confidence"] and len(rows) == 21
            assert {r[0] for r in rows[1:]} <= pool_ids and not {r[0] for r in rows[1:]} & human_ids


def test_human_labels_never_change(two_rounds, tiny_data):
    run_dir, _ = two_rounds
    labels = load_labeled(tiny_data["train"]).labels
    folds = load(run_dir / "round_0" / "folds.npy")
    truth = np.bincount(labels[folds >= 0], minlength=3)
    for k in range(3):
        metrics = json.loads((run_dir / f"round_{k}" / "metrics.json").read_text())
        np.testing.assert_array_equal(np.array(metrics["oof"]["confusion"]).sum(axis=1), truth)
        assert metrics["holdout"]["n"] == 18 and metrics["leak_free"]["holdout"] is True
        assert metrics["leak_free"]["oof"] is (k == 0)


def test_selection_follows_previous_round_and_first_selected_record(two_rounds):
    run_dir, _ = two_rounds
    first = None
    for k in (1, 2):
        unmask = load(run_dir / f"round_{k - 1}" / "unmask_preds.npy")
        want = select(unmask.mean(axis=0), "top-k", 0.9, top_k=20)
        got = load(run_dir / f"round_{k}" / "pseudo_labels.npy")
        assert got.shape == (3, 60)
        for row in got:
            np.testing.assert_array_equal(row, want)
        record = load(run_dir / f"round_{k}" / "selected_round.npy")
        if first is None:
            assert set(np.unique(record)) <= {-1, 1} and (record == 1).sum() == 20
        else:
            assert (record[first == 1] == 1).all()  # the round a row was first selected never moves
            assert ((record == 2) == ((got[0] != NOT_SELECTED) & (first == -1))).all()
        first = record
    m2 = json.loads((run_dir / "round_2" / "metrics.json").read_text())
    prev, cur = load(run_dir / "round_1" / "pseudo_labels.npy")[0], load(run_dir / "round_2" / "pseudo_labels.npy")[0]
    both = (prev != NOT_SELECTED) & (cur != NOT_SELECTED)
    assert m2["n_changed"] == int(((prev != cur) & both).sum())


def test_fold_source_uses_only_that_folds_model(fold_source):
    unmask = load(fold_source / "round_0" / "unmask_preds.npy")
    got = load(fold_source / "round_1" / "pseudo_labels.npy")
    for k in range(3):
        np.testing.assert_array_equal(got[k], select(unmask[k], "top-k", 0.9, top_k=20))
    metrics = json.loads((fold_source / "round_1" / "metrics.json").read_text())
    assert metrics["leak_free"]["oof"] is True
    rows = read_rows(fold_source / "round_1" / "pseudo_labels.csv")
    assert rows[0][-1] == "fold" and len(rows) == 1 + 3 * 20


def test_report_json_reproduces_the_run(two_rounds):
    run_dir, _ = two_rounds
    out = json.loads(invoke("report", "--run-dir", str(run_dir), "--json").output)
    assert out["stop_reason"] == "max_rounds" and [r["round"] for r in out["rounds"]] == [0, 1, 2]
    for r in out["rounds"]:
        metrics = json.loads((run_dir / f"round_{r['round']}" / "metrics.json").read_text())
        assert r["oof_macro_f1"] == metrics["oof"]["macro_f1"]
        assert r["holdout_macro_f1"] == metrics["holdout"]["macro_f1"]
        assert set(r) >= {"round", "oof_macro_f1", "oof_f1_per_class", "holdout_macro_f1", "leak_free", "n_pseudo",
                          "pseudo_per_class", "n_changed", "seconds"}
    assert out["rounds"][1]["n_pseudo"] == 20 and sum(out["rounds"][1]["pseudo_per_class"].values()) == 20
    text = invoke("report", "--run-dir", str(run_dir)).output
    assert "stop reason: max_rounds" in text and f"{out['rounds'][0]['oof_macro_f1']:.4f}" in text


def test_select_command_writes_what_the_next_round_uses(tiny_data, tiny_encoder, tmp_path):
    run_dir = tmp_path / "sel"
    assert invoke(*run_args(tiny_data, tiny_encoder, run_dir, "--rounds", "0", "--co-teacher", "0")).exit_code == 0
    result = invoke("select", "--run-dir", str(run_dir), "--strategy", "threshold", "--threshold", "0.34", "--force")
    assert result.exit_code == 0, result.output
    assert "threshold sweep" in result.output and "OOF precision" in result.output
    written = load(run_dir / "round_1" / "pseudo_labels.npy")
    unmask = load(run_dir / "round_0" / "unmask_preds.npy")  # the default source: each fold's own model
    for fold in range(3):
        np.testing.assert_array_equal(written[fold], select(unmask[fold], "threshold", 0.34))
    n = int((written[0] != NOT_SELECTED).sum())  # fold 0's rows
    assert n > 0
    cont = invoke(*run_args(tiny_data, tiny_encoder, run_dir, "--rounds", "1", "--co-teacher", "0", "--force"))
    assert cont.exit_code == 0, cont.output
    assert "using the selection written earlier" in cont.output
    assert "continuing with the run's own holdout 0" in cont.output  # not refused as "other options"
    record = json.loads((run_dir / "round_1" / "fold_0" / "fold.json").read_text())
    assert record["n_train_pseudo"] == n


def test_select_refuses_bad_input_and_collapsed_rounds(tiny_data, tiny_encoder, tmp_path, two_rounds):
    run_dir, _ = two_rounds
    bad = invoke("select", "--run-dir", str(run_dir), "--threshold", "1.5")
    assert bad.exit_code == 1 and "threshold must be in (0, 1], got 1.5" in bad.output
    bad = invoke("select", "--run-dir", str(run_dir), "--strategy", "best")
    assert bad.exit_code == 1 and "strategy must be one of" in bad.output
    bad = invoke("select", "--run-dir", str(tmp_path / "none"))
    assert bad.exit_code == 1 and "not a run directory" in bad.output
    done = invoke("select", "--run-dir", str(run_dir), "--round", "1", "--force")
    assert done.exit_code == 1 and "round 2 is finished" in done.output


def test_empty_selection_stops_with_no_change(tiny_data, tiny_encoder, tmp_path):
    run_dir = tmp_path / "empty"
    result = invoke(*run_args(tiny_data, tiny_encoder, run_dir, "--rounds", "2", "--threshold", "1.0", "--force"))
    assert result.exit_code == 0, result.output
    assert "stop reason: no_change" in result.output
    assert (run_dir / "round_0" / "DONE").is_file() and not (run_dir / "round_1" / "DONE").exists()
    assert json.loads(invoke("report", "--run-dir", str(run_dir), "--json").output)["stop_reason"] == "no_change"


def test_changed_options_refuse_to_continue(two_rounds, tiny_data, tiny_encoder):
    run_dir, _ = two_rounds
    result = invoke(*run_args(tiny_data, tiny_encoder, run_dir, "--rounds", "2", "--holdout", "0.2", *SELECT[:-1],
                              "--pseudo-weight", "0.5"))
    assert result.exit_code == 1
    assert "pseudo_weight (saved 1.0, now 0.5)" in result.output and "--restart" in result.output


def test_changed_recipe_refuses_to_continue(two_rounds, tiny_data, tiny_encoder, monkeypatch):
    """A run made under other recipe settings (e.g. an older default) does not silently continue."""
    from dataclasses import replace

    from pseudolabel import model

    run_dir, _ = two_rounds
    monkeypatch.setitem(model.RECIPES, "default", replace(model.RECIPES["default"], learning_rate=0.01))
    result = invoke(*run_args(tiny_data, tiny_encoder, run_dir, "--rounds", "2", "--holdout", "0.2",
                              "--pseudo-source", "mean", *SELECT))
    assert result.exit_code == 1
    assert "learning_rate (saved 0.0003, now 0.01)" in result.output


def test_whole_pool_stops_with_hard_labels_and_goes_on_with_soft_targets(tiny_data, tiny_encoder, tmp_path):
    """Selecting every pool row ends a hard-label run; a soft-target (distillation) run trains every round."""
    whole = ["--rounds", "2", "--strategy", "top-k", "--top-k", "1000", "--force"]
    hard = invoke(*run_args(tiny_data, tiny_encoder, tmp_path / "hard", *whole))
    assert hard.exit_code == 0, hard.output
    assert "stop reason: all_labeled" in hard.output
    assert (tmp_path / "hard" / "round_1" / "DONE").is_file() and not (tmp_path / "hard" / "round_2").exists()

    soft_dir = tmp_path / "soft"
    soft = invoke(*run_args(tiny_data, tiny_encoder, soft_dir, *whole, "--soft-targets"))
    assert soft.exit_code == 0, soft.output
    assert "stop reason: max_rounds" in soft.output
    assert (soft_dir / "round_2" / "DONE").is_file()
    for k in (1, 2):  # every pool row, with the previous round's fold probabilities as targets
        assert (load(soft_dir / f"round_{k}" / "pseudo_labels.npy") != NOT_SELECTED).all()
        record = json.loads((soft_dir / f"round_{k}" / "fold_0" / "fold.json").read_text())
        assert record["n_train_pseudo"] == 60 and record["pseudo_targets"] == "soft"


def test_runs_that_differ_in_later_rounds_share_round_0(tiny_data, tiny_encoder, tmp_path):
    """Sibling run directories whose round-0 options agree share one round 0 (and one feature
    cache) under .stages/: the second run trains no round-0 fold; --restart leaves the other's."""
    first = invoke(*run_args(tiny_data, tiny_encoder, tmp_path / "a", "--rounds", "1", *SELECT))
    assert first.exit_code == 0, first.output
    second = invoke(*run_args(tiny_data, tiny_encoder, tmp_path / "b", "--rounds", "1", "--co-teacher", "0.5",
                              *SELECT[2:]))
    assert second.exit_code == 0, second.output
    assert "round 0: finished earlier, reused" in second.output
    a0, b0 = tmp_path / "a" / "round_0", tmp_path / "b" / "round_0"
    assert a0.is_symlink() and b0.is_symlink() and a0.resolve() == b0.resolve()
    assert a0.resolve().parent == tmp_path / ".stages"
    assert (tmp_path / "a" / "round_1").resolve() != (tmp_path / "b" / "round_1").resolve()
    other = invoke(*run_args(tiny_data, tiny_encoder, tmp_path / "c", "--rounds", "1", "--holdout", "0.2", *SELECT))
    assert other.exit_code == 0 and (tmp_path / "c" / "round_0").resolve() != a0.resolve()  # another holdout
    again = invoke(*run_args(tiny_data, tiny_encoder, tmp_path / "b", "--rounds", "1", "--co-teacher", "0.5",
                             *SELECT[2:], "--restart"))
    assert again.exit_code == 0, again.output
    assert (a0 / "DONE").is_file() and (tmp_path / "a" / "round_1" / "DONE").is_file()

"""Runs with other round options: fold-source selection, `pseudo select` then a run, stop reasons, shared round 0."""

import json

import numpy as np
import pytest

from conftest import read_rows, run_args
from test_lock import hold_in_another_process
from test_rounds import SELECT, invoke, load
from pseudolabel.rounds.select import NOT_SELECTED, select

pytestmark = pytest.mark.slow  # every test here is a CLI run or reads one


@pytest.fixture(scope="module")
def fold_source(tiny_data, tiny_encoder, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "fold"
    result = invoke(*run_args(tiny_data, tiny_encoder, run_dir, "--rounds", "1", "--pseudo-source", "fold", *SELECT))
    assert result.exit_code == 0, result.output
    return run_dir


def test_fold_source_uses_only_that_folds_model(fold_source):
    unmask = load(fold_source / "round_0" / "unmask_preds.npy")
    got = load(fold_source / "round_1" / "pseudo_labels.npy")
    for k in range(3):
        np.testing.assert_array_equal(got[k], select(unmask[k], "top-k", 0.9, top_k=20))
    metrics = json.loads((fold_source / "round_1" / "metrics.json").read_text())
    assert metrics["leak_free"]["oof"] is True
    rows = read_rows(fold_source / "round_1" / "pseudo_labels.csv")
    assert rows[0][-1] == "fold" and len(rows) == 1 + 3 * 20


def test_select_command_writes_what_the_next_round_uses(tiny_data, tiny_encoder, tmp_path):
    run_dir = tmp_path / "sel"
    assert invoke(*run_args(tiny_data, tiny_encoder, run_dir, "--rounds", "0", "--co-teacher", "0")).exit_code == 0
    held = hold_in_another_process(run_dir)  # a run writing the directory: select does not write beside it
    try:
        refused = invoke("select", "--run-dir", str(run_dir), "--strategy", "threshold", "--threshold", "0.34",
                         "--force")
    finally:
        held.kill()
        held.wait()
    assert refused.exit_code == 1 and f"in use by another process (pid {held.pid}" in refused.output
    assert not (run_dir / "round_1" / "pseudo_labels.npy").exists()
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


def test_empty_selection_stops_with_no_change(tiny_data, tiny_encoder, tmp_path):
    run_dir = tmp_path / "empty"
    result = invoke(*run_args(tiny_data, tiny_encoder, run_dir, "--rounds", "2", "--threshold", "1.0", "--force"))
    assert result.exit_code == 0, result.output
    assert "stop reason: no_change" in result.output
    assert (run_dir / "round_0" / "DONE").is_file() and not (run_dir / "round_1" / "DONE").exists()
    assert json.loads(invoke("report", "--run-dir", str(run_dir), "--json").output)["stop_reason"] == "no_change"


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
    other = invoke(*run_args(tiny_data, tiny_encoder, tmp_path / "c", "--rounds", "0", "--holdout", "0.2"))
    assert other.exit_code == 0 and (tmp_path / "c" / "round_0").resolve() != a0.resolve()  # another holdout
    again = invoke(*run_args(tiny_data, tiny_encoder, tmp_path / "b", "--rounds", "1", "--co-teacher", "0.5",
                             *SELECT[2:], "--restart"))
    assert again.exit_code == 0, again.output
    assert (a0 / "DONE").is_file() and (tmp_path / "a" / "round_1" / "DONE").is_file()

"""The training budget of rounds >= 1 (--pseudo-ratio): every human row each epoch, a fresh sample of the
pseudo rows, the full pass kept as 'all', and a run's identity across the option."""

import json
import math

import numpy as np
import pytest

from conftest import run_args
from test_rounds import SELECT, invoke
from pseudolabel.rounds.config import RunConfig, check
from pseudolabel.rounds.cv import FoldRows
from pseudolabel.core.errors import PseudoError

COMMON = dict(train="a.csv", test="b.csv", unlabeled="c.csv", encoder="models/weibo-mlm-4l256", run_dir="x")


@pytest.fixture(scope="module")
def beside(tmp_path_factory):
    """One folder for this file's later-round runs: as siblings they share round 0 and the feature cache
    (.stages), so each trains only its own round 1."""
    return tmp_path_factory.mktemp("budget-runs")


def _rows(n_human: int, n_pseudo: int, ratio) -> FoldRows:
    n = n_human + n_pseudo
    return FoldRows(np.arange(n_human) * 3, np.arange(5), np.zeros(0, np.int64), np.arange(n_pseudo) + 1000,
                    np.zeros((n, 3), np.float32), np.ones(n, np.float32), None, ratio)


def test_each_epoch_takes_every_human_row_and_a_fresh_sample_of_ratio_pseudo_rows_per_human_one():
    rows = _rows(40, 300, 0.5)
    assert rows.pseudo_per_epoch == 20 and rows.n_epoch == 60 and rows.n_train == 340
    rng = np.random.default_rng(0)
    epochs = [rows.epoch(rng) for _ in range(4)]
    for order in epochs:
        assert len(order) == 60 and len(set(order.tolist())) == 60
        np.testing.assert_array_equal(order[:40], np.arange(40))  # every human row, every epoch
        assert ((order[40:] >= 40) & (order[40:] < 340)).all()
    samples = [set(order[40:].tolist()) for order in epochs]
    assert len({frozenset(s) for s in samples}) == 4  # a fresh sample each epoch
    assert len(set().union(*samples)) > 20
    assert _rows(7, 300, 1.5).pseudo_per_epoch == math.ceil(1.5 * 7)


def test_the_full_pass_and_a_ratio_above_the_pool_train_every_row_without_drawing_from_the_generator():
    for rows in (_rows(40, 30, None), _rows(40, 30, 2.0)):
        rng = np.random.default_rng(3)
        before = rng.bit_generator.state
        np.testing.assert_array_equal(rows.epoch(rng), np.arange(70))
        assert rng.bit_generator.state == before and rows.n_epoch == 70
    assert _rows(40, 0, 1.0).n_epoch == 40  # round 0: no pseudo rows


def test_the_full_pass_keeps_the_hash_of_runs_made_before_the_option_and_round_0_is_shared():
    full, default, half = (RunConfig(**COMMON, pseudo_ratio=r) for r in (None, 1.0, 0.5))
    assert "pseudo_ratio" not in full.results_dict() and default.results_dict()["pseudo_ratio"] == 1.0
    assert len({full.results_hash(), default.results_hash(), half.results_hash()}) == 3
    assert len({c.round0_key("enc") for c in (full, default, half)}) == 1


def test_later_rounds_default_to_half_a_pseudo_post_per_human_one_in_length_grouped_batches_where_cached():
    plain = RunConfig(**COMMON)
    assert plain.pseudo_ratio == 0.5 and plain.student_dynamic_padding is True
    faithful = RunConfig(**COMMON, mode="faithful", recipe="seed")
    assert faithful.student_dynamic_padding is False  # the faithful graph pads every post to max-len
    faithful.validate()
    with pytest.raises(PseudoError, match="student-dynamic-padding works on cached features: use --mode cached"):
        RunConfig(**COMMON, mode="faithful", recipe="seed", student_dynamic_padding=True).validate()


def test_a_saved_run_keeps_the_values_its_config_json_leaves_out_though_the_defaults_changed():
    before = RunConfig(**COMMON, pseudo_ratio=None, student_dynamic_padding=False)  # made before the options
    saved = before.results_dict()
    assert "pseudo_ratio" not in saved and "student_dynamic_padding" not in saved
    again = RunConfig.from_saved(saved, run_dir="x")
    assert again.pseudo_ratio is None and again.student_dynamic_padding is False
    assert again.results_hash() == before.results_hash() != RunConfig(**COMMON).results_hash()


@pytest.mark.parametrize("value, message", [
    (0.0, "pseudo-ratio must be > 0 or 'all', got 0.0"),
    ("lots", "pseudo-ratio must be > 0 or 'all', got 'lots'"),
])
def test_a_bad_ratio_is_a_one_line_error(value, message, tiny_data, tiny_encoder, tmp_path):
    with pytest.raises(PseudoError) as info:
        check("pseudo_ratio", value)
    assert str(info.value) == message
    result = invoke(*run_args(tiny_data, tiny_encoder, tmp_path / "r", "--pseudo-ratio", str(value)))
    assert result.exit_code == 1 and result.output.strip() == f"error: {message}", result.output
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
@pytest.mark.parametrize("ratio", ["0.2", "all"])
def test_a_later_round_records_the_pseudo_rows_it_trained_on_per_epoch(ratio, tiny_data, tiny_encoder, tmp_path,
                                                                       beside):
    run_dir = beside / f"ratio-{ratio}"
    result = invoke(*run_args(tiny_data, tiny_encoder, run_dir, "--rounds", "1", "--pseudo-ratio", ratio, *SELECT))
    assert result.exit_code == 0, result.output
    saved = json.loads((run_dir / "config.json").read_text())["config"]
    assert saved.get("pseudo_ratio") == (0.2 if ratio == "0.2" else None)
    for fold in range(3):
        record = json.loads((run_dir / "round_1" / f"fold_{fold}" / "fold.json").read_text())
        n_h, n_p = record["n_train_human"], record["n_train_pseudo"]
        assert n_p == 20  # --top-k 20 per fold
        assert record["n_pseudo_per_epoch"] == (math.ceil(0.2 * n_h) if ratio == "0.2" else n_p) < n_p + (ratio == "all")
    sampled = [line for line in result.output.splitlines() if "pseudo-labeled per epoch" in line]
    assert len(sampled) == (3 if ratio == "0.2" else 0), result.output  # each round-1 fold's line says so
    round0 = json.loads((run_dir / "round_0" / "fold_0" / "fold.json").read_text())
    assert round0["n_pseudo_per_epoch"] == 0
    if ratio == "0.2":  # what --plan said each fold trains per epoch is what the run trained
        planned = invoke(*run_args(tiny_data, tiny_encoder, tmp_path / "p", "--rounds", "1", "--pseudo-ratio", ratio,
                                   *SELECT, "--plan"))
        line = next(x for x in planned.output.splitlines() if x.startswith("│ round 1"))
        said = [int(n) for n in line.split("×")[2].split("rows")[0].strip().split("–")]
        trained = [json.loads((run_dir / "round_1" / f"fold_{f}" / "fold.json").read_text()) for f in range(3)]
        trained = sorted({r["n_train_human"] + r["n_pseudo_per_epoch"] for r in trained})
        assert said == [trained[0], trained[-1]] if len(trained) > 1 else said == trained


def test_plan_prints_each_stage_from_measured_costs_and_writes_nothing(tiny_data, tiny_encoder, tmp_path):
    run_dir = tmp_path / "r"
    result = invoke(*run_args(tiny_data, tiny_encoder, run_dir, "--rounds", "1", "--pseudo-ratio", "0.5", "--plan"))
    assert result.exit_code == 0, result.output
    assert not run_dir.exists() and not (tmp_path / ".stages").exists()
    out = result.output
    said = " ".join(out.split())  # the console wraps the heading where the temporary path makes it long
    assert "nothing trained or written" in said and "measured here per post: encoder" in said
    for stage in ("features: labeled", "features: test", "features: unlabeled", "round 0", "round 1", "total"):
        assert stage in out, stage
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in out.splitlines() if line.count("│") == 5}
    assert rows["features: labeled"] == "90" and rows["features: unlabeled"] == "60"
    # 90 labeled rows, 15% holdout, 3 folds, a monitor slice: round 1 adds ceil(0.5 x human) rows per epoch
    def per_epoch(stage):
        return [int(n) for n in rows[stage].split("×")[2].split("rows")[0].strip().split("–")]

    assert per_epoch("round 1") == [h + math.ceil(0.5 * h) for h in per_epoch("round 0")]
    assert rows["round 1"].endswith("selection ≤ 60 per fold")


def test_plan_checks_the_inputs_as_a_run_does(tiny_data, tiny_encoder, tmp_path):
    bad = tmp_path / "train.csv"
    bad.write_text("微博id,微博中文内容\n1,x\n", encoding="utf-8")
    args = run_args(tiny_data, tiny_encoder, tmp_path / "r", "--plan")
    args[args.index("--train") + 1] = str(bad)
    result = invoke(*args)
    assert result.exit_code == 1 and result.output.strip().startswith(f"error: {bad}"), result.output


def test_monitor_every_human_looks_every_round_0_epoch_of_rows_in_later_rounds_only():
    assert _rows(40, 300, 1.0).check_rows == 80  # an epoch: every human row and as many pseudo rows
    looks = FoldRows(**{**_rows(40, 300, 1.0).__dict__, "monitor_every": "human"})
    assert looks.check_rows == 40 and looks.n_epoch == 80
    round0 = FoldRows(**{**_rows(40, 0, 1.0).__dict__, "monitor_every": "human"})
    assert round0.check_rows == round0.n_epoch == 40  # round 0 has no pseudo rows: its epoch


def test_monitor_every_keeps_the_hash_at_epoch_shares_round_0_and_refuses_other_words():
    epoch, human = (RunConfig(**COMMON, monitor_every=m) for m in ("epoch", "human"))
    assert "monitor_every" not in epoch.results_dict() and human.results_dict()["monitor_every"] == "human"
    assert epoch.results_hash() != human.results_hash() and epoch.round0_key("e") == human.round0_key("e")
    with pytest.raises(PseudoError) as info:
        check("monitor_every", "batch")
    assert str(info.value) == "monitor-every must be one of epoch, human, got 'batch'"


@pytest.mark.slow
def test_a_later_round_under_monitor_every_human_records_its_looks(tiny_data, tiny_encoder, beside):
    run_dir = beside / "monitor-human"
    result = invoke(*run_args(tiny_data, tiny_encoder, run_dir, "--rounds", "1", "--pseudo-ratio", "2",
                              "--monitor-every", "human", "--epochs", "2", *SELECT))
    assert result.exit_code == 0, result.output
    for fold in range(3):
        record = json.loads((run_dir / "round_1" / f"fold_{fold}" / "fold.json").read_text())
        n_h, per_epoch = record["n_train_human"], record["n_pseudo_per_epoch"]
        assert record["rows_per_check"] == n_h < n_h + per_epoch
        # the recipe's steps at most (its epochs, or enough for --min-steps), cut into looks of n_h rows
        assert 1 <= record["best_epoch"] <= record["epochs"] == len(record["history"])
        assert f"round 1 fold {fold}: {record['epochs']} looks every {n_h} rows" in result.output
        assert "rows_per_check" not in json.loads((run_dir / "round_0" / f"fold_{fold}" / "fold.json").read_text())

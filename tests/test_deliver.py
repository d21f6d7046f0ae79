"""The delivery rules: the rounds' mean (the default, no choice), or the round and co-teacher blend that score
best on the holdout; never the test rows."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import read_rows, run_args, write_rows
from pseudolabel.cli.commands import app
from pseudolabel.rounds.deliver import (blend_scores, blends_rounds, choose, delivered_probs, describe,
                                       holdout_interval, mean_scores)
from pseudolabel.core.errors import PseudoError
from pseudolabel.data.metrics import resampled_macro_f1, scores


def _round(k, oof=0.6, holdout=None, blend=None, collapsed=False, leak_free=True, mean=None):
    return {"round": k, "oof": {"macro_f1": oof}, "leak_free": {"oof": leak_free, "holdout": holdout is not None},
            "holdout": {"macro_f1": holdout} if holdout is not None else None, "holdout_blend": blend,
            "collapsed": collapsed, "holdout_mean": mean}


def test_the_default_delivers_the_usable_rounds_mean_blended_evenly_without_a_choice():
    mean = {"rounds": [0, 2], "macro_f1": {"0.0": 0.61, "0.5": 0.64}}
    rounds = [_round(0, holdout=0.60, blend={"0.5": 0.70}), _round(1, holdout=0.66, collapsed=True),
              _round(2, holdout=0.58, mean=mean)]
    choice = choose(rounds)
    assert (choice["rounds"], choice["round"], choice["weight"], choice["output"]) == ([0, 2], 2, 0.5, "blend")
    # scored, not chosen: the better single candidates on the holdout (round 0's blend 0.70) do not matter
    assert choice["value"] == 0.64 and choice["gain"] == pytest.approx(0.04) and choice["candidates"] == []
    assert describe(choice) == "the mean of rounds 0, 2 blended evenly with the co-teacher"
    assert "no optimism from" in choice["reason"]
    # a record of another set of rounds (the run went on) is not this output's score
    stale = choose(rounds[:2] + [_round(2, holdout=0.58, mean={"rounds": [0, 1, 2], "macro_f1": {"0.5": 0.9}})])
    assert stale["value"] is None and stale["metric"] is None
    # round 0 alone (--rounds 0): its heads, the recipe's output; a run asked for pseudo-label rounds that
    # stopped after round 0 (collapsed) still blends it with the co-teacher
    only = [_round(0, holdout=0.60, collapsed=True, mean={"rounds": [0], "macro_f1": {"0.0": 0.60, "0.5": 0.65}})]
    alone = choose(only, blended=False)
    assert (alone["rounds"], alone["weight"], alone["value"]) == ([0], 0.0, 0.60)
    stopped = choose(only, blended=True)
    assert (stopped["rounds"], stopped["weight"], stopped["value"]) == ([0], 0.5, 0.65)
    assert describe(stopped) == "round 0 blended with the co-teacher at 0.50"
    assert blends_rounds(2, 0.5) and not blends_rounds(0, 0.5) and not blends_rounds(2, 0.0)
    assert choose([_round(0, 0.60)])["reason"] is None
    # without a holdout: the same output, no estimate of it
    blind = choose([_round(0, 0.60), _round(1, 0.63), _round(2, 0.61)])
    assert (blind["rounds"], blind["weight"], blind["metric"], blind["value"]) == ([0, 1, 2], 0.5, None, None)
    assert "--holdout 0.15 gives one" in blind["reason"] and blind["oof_gain"] == pytest.approx(0.03)


def test_the_rounds_mean_scores_against_an_independent_computation():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 120)
    preds = [rng.dirichlet(np.ones(3), size=(3, 120)).astype(np.float32) for _ in range(2)]
    co = rng.dirichlet(np.ones(3), size=(3, 120))
    got = mean_scores(labels, preds, co, [0, 1])
    mean = (preds[0].mean(0) + preds[1].mean(0)) / 2
    assert got["rounds"] == [0, 1]
    assert got["macro_f1"]["0.0"] == pytest.approx(scores(labels, mean)["macro_f1"])
    assert got["macro_f1"]["0.5"] == pytest.approx(scores(labels, 0.5 * mean + 0.5 * co.mean(0))["macro_f1"])
    test = [rng.dirichlet(np.ones(3), size=(3, 9)) for _ in range(3)]
    test_co = rng.dirichlet(np.ones(3), size=9)
    np.testing.assert_allclose(delivered_probs({"rounds": [0, 1, 2], "weight": 0.5}, test, test_co),
                               0.5 * np.mean([t.mean(0) for t in test], axis=0) + 0.5 * test_co, rtol=1e-6)


def test_without_a_holdout_the_choosing_rules_deliver_round_0_whatever_the_oof_says():
    choice = choose([_round(0, 0.60), _round(1, 0.63), _round(2, 0.61)], "auto")
    assert (choice["round"], choice["weight"], choice["metric"]) == (0, 0.0, None)
    assert "--holdout" in choice["reason"] and choice["oof_gain"] == pytest.approx(0.03)
    assert choose([_round(0, 0.60), _round(1, 0.70, leak_free=False)], "auto")["oof_gain"] is None
    assert choose([_round(0, 0.60)], "auto")["reason"] is None


def test_a_better_round_wins_and_a_worse_one_is_refused():
    assert choose([_round(0, holdout=0.60), _round(1, holdout=0.58), _round(2, holdout=0.55)], "auto")["round"] == 0
    better = choose([_round(0, holdout=0.60), _round(1, holdout=0.63), _round(2, holdout=0.61)], "auto")
    assert better["round"] == 1 and better["gain"] == pytest.approx(0.03) and better["round0"] == 0.60
    assert choose([_round(0, holdout=0.60), _round(1, holdout=0.60)], "auto")["round"] == 0  # ties: the earlier round
    assert choose([_round(0, holdout=0.60), _round(1, holdout=0.70, collapsed=True)], "auto")["round"] == 0
    # the holdout decides, not the (here optimistic) OOF
    assert choose([_round(0, 0.70, holdout=0.60), _round(1, 0.90, holdout=0.59)], "auto")["round"] == 0


def test_the_blend_competes_with_the_heads_by_deliver_mode():
    rounds = [_round(0, holdout=0.60, blend={"0.25": 0.62, "0.5": 0.64, "0.75": 0.61}),
              _round(1, holdout=0.63, blend={"0.25": 0.65, "0.5": 0.66, "0.75": 0.62})]
    auto = choose(rounds, "auto")
    assert (auto["round"], auto["weight"], auto["output"]) == (1, 0.5, "blend")
    assert auto["value"] == 0.66 and auto["gain"] == pytest.approx(0.06) and len(auto["candidates"]) == 8
    head = choose(rounds, "head")
    assert (head["round"], head["weight"], head["output"]) == (1, 0.0, "head")
    blend = choose([_round(0, holdout=0.70, blend={"0.5": 0.64})], "blend")
    assert (blend["round"], blend["weight"]) == (0, 0.5)  # blend mode never delivers the head alone
    # a blend that does not beat the head is not delivered in auto mode
    assert choose([_round(0, holdout=0.70, blend={"0.25": 0.69, "0.5": 0.64})], "auto")["weight"] == 0.0
    with pytest.raises(PseudoError, match="deliver must be one of mean, auto, head, blend, got 'best'"):
        choose(rounds, "best")


def test_blend_scores_against_an_independent_computation():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 200)
    head = rng.dirichlet(np.ones(3), size=(3, 200))
    co = rng.dirichlet(np.ones(3), size=(3, 200))
    co[:, np.arange(200), labels] += 0.5  # the co-teacher knows something
    got = blend_scores(labels, head, co)
    for w in (0.25, 0.5, 0.75):
        mixed = [(1 - w) * head[f] + w * co[f] for f in range(3)]
        want = scores(labels, np.mean(mixed, axis=0))["macro_f1"]
        assert got[str(w)] == pytest.approx(want)
    assert got["0.75"] > scores(labels, head.mean(axis=0))["macro_f1"]
    choice = {"round": 0, "weight": 0.25}
    test_head, test_co = rng.dirichlet(np.ones(3), size=(3, 10)), rng.dirichlet(np.ones(3), size=10)
    np.testing.assert_allclose(delivered_probs(choice, test_head, test_co), 0.75 * test_head.mean(0) + 0.25 * test_co,
                               rtol=1e-6)


def test_resampled_macro_f1_is_the_macro_f1_of_each_resample():
    rng = np.random.default_rng(1)
    labels, predicted = rng.integers(0, 3, 40), rng.integers(0, 3, 40)
    draws = rng.integers(0, 40, size=(30, 40))
    draws[0] = np.flatnonzero(labels != 2)[0]  # one row over and over: classes without support or predictions
    got = resampled_macro_f1(labels, predicted, draws)
    want = [scores(labels[d], np.eye(3)[predicted[d]])["macro_f1"] for d in draws]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_the_bootstrap_interval_is_seeded_holds_the_estimate_and_narrows_with_more_posts():
    rng = np.random.default_rng(2)

    def outputs(n, right):  # probabilities whose argmax is the label on a share `right` of the rows
        labels = rng.integers(0, 3, n)
        predicted = np.where(rng.random(n) < right, labels, rng.integers(0, 3, n))
        return labels, np.eye(3)[predicted] * 0.8 + 0.1

    labels, better = outputs(90, 0.8)
    worse = np.eye(3)[np.where(rng.random(90) < 0.5, labels, rng.integers(0, 3, 90))]
    first = holdout_interval(labels, better, worse)
    assert first == holdout_interval(labels, better, worse) != holdout_interval(labels, better, worse, seed=1)
    assert first["draws"] == 1000 and first["rows"] == 90 and first["level"] == 0.95
    low, high = first["value"]
    assert low < scores(labels, better)["macro_f1"] < high
    gain = scores(labels, better)["macro_f1"] - scores(labels, worse)["macro_f1"]
    assert first["gain"][0] < gain < first["gain"][1]
    same = holdout_interval(labels, better, better)
    assert same["gain"] == [0.0, 0.0] and same["gain_covers_zero"]
    wide = holdout_interval(*outputs(60, 0.6), np.full((60, 3), 1 / 3))["value"]
    narrow = holdout_interval(*outputs(2000, 0.6), np.full((2000, 3), 1 / 3))["value"]
    assert narrow[1] - narrow[0] < (wide[1] - wide[0]) / 3


@pytest.mark.slow
def test_the_choice_never_looks_at_the_test_rows(tiny_data, tiny_encoder, tmp_path):
    """Two runs that differ only in their test file (other posts, other order) choose the same round
    and weight from the same holdout scores; only the delivered predictions differ."""
    header, *test = read_rows(tiny_data["test"], "gb18030")
    other = write_rows(tmp_path / "other_test.csv", [header] + test[::-1][:12], "gb18030")
    finals, blends = [], []
    for name, test_file in (("a", tiny_data["test"]), ("b", other)):
        run_dir = tmp_path / name
        data = {**tiny_data, "test": test_file}
        result = CliRunner().invoke(app, run_args(data, tiny_encoder, run_dir, "--rounds", "1", "--holdout", "0.2",
                                                  "--force", "--deliver", "auto"), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert "final output: round" in result.output
        final = json.loads((run_dir / "final.json").read_text())
        finals.append({k: final[k] for k in ("round", "weight", "value", "round0", "candidates", "interval")})
        interval = final["interval"]  # the holdout's 18 posts resampled: the same in both runs
        assert interval["rows"] == 18 and interval["value"][0] <= interval["value"][1]
        assert "over 1,000 bootstrap draws of the 18 holdout posts" in " ".join(result.output.split()) \
            or (final["round"], final["weight"]) == (0, 0.0)
        blends.append([json.loads((run_dir / f"round_{k}" / "metrics.json").read_text())["holdout_blend"]
                       for k in (0, 1)])
        delivered = np.load(run_dir / "final_test_preds.npy", allow_pickle=False)
        assert delivered.shape == (len(read_rows(test_file, "gb18030")) - 1, 3)
        labels = [row[1] for row in read_rows(run_dir / "submission.csv")[1:]]
        assert labels == [str(v) for v in (delivered.argmax(axis=1) - 1)]
    assert finals[0] == finals[1] and blends[0] == blends[1]
    assert all(set(b) == {"0.25", "0.5", "0.75"} for b in blends[0])
    report = json.loads(CliRunner().invoke(app, ["report", "--run-dir", str(tmp_path / "a"), "--json"]).output)
    assert report["final"]["weight"] == finals[0]["weight"] and report["final"]["interval"] == finals[0]["interval"]
    assert report["rounds"][1]["holdout_blend_macro_f1"] == blends[0][1]


@pytest.mark.slow
def test_deliver_blend_needs_a_holdout(tiny_data, tiny_encoder, tmp_path):
    result = CliRunner().invoke(app, run_args(tiny_data, tiny_encoder, tmp_path / "r", "--deliver", "blend"))
    assert result.exit_code == 1 and "deliver blend chooses its weight on the labeled holdout" in result.output
    assert not (tmp_path / "r").exists()

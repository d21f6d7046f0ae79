"""Uncertainty-aware selection: BALD over an ensemble's members, UST's weights, easy-first per class,
MC-dropout passes of the head, and a run that selects and weighs by them."""

import json

import numpy as np
import pytest

from conftest import run_args
from pseudolabel.core.errors import PseudoError
from pseudolabel.heads.model import build_head, mc_parts, mc_sample, recipe, reset_random_layers
from pseudolabel.rounds.select import NOT_SELECTED, class_balanced_mask, counts_per_class, select, sweep
from pseudolabel.rounds.selection import pool_probs, pool_uncertainty, pseudo_weights
from pseudolabel.core.store import RunDir
from pseudolabel.rounds.config import RunConfig
from pseudolabel.rounds.costs import Costs, round_work
from pseudolabel.rounds.cv import make_folds
from pseudolabel.rounds.uncertainty import bald, confidence_weights, entropy, from_moments, moments
from test_rounds import invoke, load


def _members(seed, m=5, n=40):
    rng = np.random.default_rng(seed)
    return rng.dirichlet([0.5, 0.5, 0.5], size=(m, n))


def test_bald_is_zero_when_members_agree_and_grows_with_their_disagreement():
    same = np.repeat(_members(0, m=1), 4, axis=0)
    assert np.allclose(bald(same), 0.0)
    sure_but_split = np.array([[[0.98, 0.01, 0.01]], [[0.01, 0.98, 0.01]]])
    unsure_together = np.array([[[0.34, 0.33, 0.33]], [[0.34, 0.33, 0.33]]])
    assert bald(sure_but_split)[0] > 0.6 > bald(unsure_together)[0]  # not the same as low confidence
    members = _members(1)
    direct = entropy(members.mean(axis=0)) - entropy(members).mean(axis=0)
    assert np.allclose(bald(members), direct) and (bald(members) >= 0).all()


def test_moments_of_equal_groups_average_into_the_whole_ensembles_figures():
    members = _members(2, m=12)
    pooled = np.mean([moments(members[i:i + 4]) for i in range(0, 12, 4)], axis=0)
    b, var = from_moments(pooled)
    assert np.allclose(b, bald(members))
    assert np.allclose(var, members.var(axis=0))
    with pytest.raises(PseudoError, match=r"moments must be \(rows, 2 x classes \+ 1\), got shape \(40, 6\)"):
        from_moments(pooled[:, :6])
    with pytest.raises(PseudoError, match="ensemble members must be"):
        bald(members[0])


def test_confidence_weights_favour_low_variance_and_average_one():
    variance = np.array([1e-6, 1e-3, 0.05, 0.2, 0.01])
    selected = np.array([True, True, True, True, False])
    w = confidence_weights(variance, selected)
    assert w[4] == 0 and np.isclose(w[selected].mean(), 1.0)
    assert w[0] > w[1] > w[2] > w[3] > 0
    assert np.allclose(confidence_weights(np.full(3, 0.01), np.ones(3, bool)), 1.0)
    assert confidence_weights(variance, np.zeros(5, bool)).sum() == 0


def test_uncertainty_takes_as_many_rows_per_class_as_class_balanced_the_least_uncertain_first():
    rng = np.random.default_rng(3)
    probs = rng.dirichlet([1, 1, 1], size=300)
    spread = rng.uniform(0, 1, size=300)
    prior = [0.2, 0.3, 0.5]
    easy = select(probs, "uncertainty", 0.6, prior=prior, uncertainty=spread)
    confident = select(probs, "class-balanced", 0.6, prior=prior)
    assert counts_per_class(easy) == counts_per_class(confident) and (easy != NOT_SELECTED).sum() > 0
    for c in range(3):  # every row taken is less uncertain than every row of its class left out
        candidates = probs.argmax(axis=1) == c
        taken, left = candidates & (easy == c), candidates & (easy == NOT_SELECTED)
        assert spread[taken].max() <= spread[left].min()
    assert not np.array_equal(easy, confident)
    # ties go to the more confident row
    tied = class_balanced_mask(np.array([[0.6, 0.2, 0.2], [0.9, 0.05, 0.05]]), [1, 0, 0], 1, np.zeros(2))
    assert tied.tolist() == [False, True]
    with pytest.raises(PseudoError, match="uncertainty selection needs each row's uncertainty"):
        select(probs, "uncertainty", prior=prior)
    with pytest.raises(PseudoError, match="uncertainty must be 300 finite values"):
        select(probs, "uncertainty", prior=prior, uncertainty=spread[:10])
    table = sweep(probs, [0.5, 0.99], uncertainty=spread)
    over = probs.max(axis=1) >= 0.5
    assert np.isclose(table[0]["uncertainty"], spread[over].mean()) and table[1]["uncertainty"] is None


def test_mc_dropout_head_samples_its_dropout_and_keeps_batchnorm_in_inference():
    head_recipe = recipe("seed", epochs=1)
    plain = build_head(16, 8, head_recipe, compile=False)
    mc = build_head(16, 8, head_recipe, compile=False, mc_dropout=True)
    mc.set_weights(plain.get_weights())
    x = np.random.default_rng(4).normal(size=(6, 16, 8)).astype(np.float32)
    first, second = mc.predict_on_batch(x), mc.predict_on_batch(x)
    assert not np.allclose(first, second)  # dropout on: each pass differs
    assert np.allclose(plain.predict_on_batch(x), plain.predict_on_batch(x))
    assert np.allclose(first.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("name, options, cut_after", [
    ("default", {}, "re_lu"),  # dropout after the first dense layer: the BiGRU and the capsule once a batch
    ("default", {"token_dropout": 0.2}, "standardize"),  # word dropout right after standardising
    ("seed", {}, None),  # spatial dropout on the features themselves: no part before it
    ("default", {"token_dropout": 0.2, "zero_padding": True}, None),  # the mask enters after the dropout
])
def test_mc_passes_run_the_head_before_its_first_dropout_once_and_equal_the_whole_heads(name, options, cut_after):
    mc = build_head(16, 8, recipe(name, **options), compile=False, mc_dropout=True)
    rng = np.random.default_rng(5)
    x = rng.normal(size=(6, 16, 8)).astype(np.float32)
    x = [x, (rng.random((6, 16, 1)) < 0.8).astype(np.float32)] if len(mc.inputs) > 1 else x
    reset_random_layers(mc, 7)
    whole = np.stack([mc.predict_on_batch(x) for _ in range(3)])
    reset_random_layers(mc, 7)
    trunk, tail = mc_parts(mc)
    assert (trunk is None) == (cut_after is None)
    if trunk is not None:
        assert trunk.layers[-1].name.startswith(cut_after)
        assert not {layer.name for layer in trunk.layers[1:]} & {layer.name for layer in tail.layers[1:]}
    parts = mc_sample((trunk, tail), x, 3)
    assert np.array_equal(parts, whole)  # the same passes, number for number
    assert not np.allclose(parts[0], parts[1])  # and they do sample


def test_the_plan_counts_each_folds_mc_passes_over_the_pool(tiny_data, tiny_encoder, tmp_path):
    config = RunConfig(train="a", test=None, unlabeled=None, encoder="e", run_dir="r", rounds=1, mc_passes=10)
    folds = make_folds(np.arange(300) % 3, 5, 0.15, 0)
    n_rows = {"labeled": 300, "test": 0, "unlabeled": 500}
    recipe0 = config.resolved_recipe()
    assert round_work(config, recipe0, 0, Costs(0.0, 0.0, 0.0, mc=2.0), n_rows, folds).seconds == [1000.0] * 5
    assert round_work(config, recipe0, 0, Costs(0.0, 0.0, 0.0), n_rows, folds).seconds == [0.0] * 5
    result = invoke(*run_args(tiny_data, tiny_encoder, tmp_path / "r", "--rounds", "1", "--mc-passes", "3",
                              "--plan"))
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    measured = float(said.split("3 MC-dropout passes ")[1].split(" ms")[0])
    assert measured > 0 and not (tmp_path / "r").exists()


@pytest.fixture(scope="module")
def uncertain_run(tiny_data, tiny_encoder, tmp_path_factory):
    """One round of uncertainty selection with UST weights, on two MC-dropout passes a fold."""
    run_dir = tmp_path_factory.mktemp("runs") / "ust"
    result = invoke(*run_args(tiny_data, tiny_encoder, run_dir, "--rounds", "1", "--strategy", "uncertainty",
                              "--pseudo-weight", "uncertainty", "--mc-passes", "2", "--top-k", "30"))
    assert result.exit_code == 0, result.output
    return run_dir, result.output


def test_a_run_selects_the_least_uncertain_posts_and_weighs_them(uncertain_run):
    run_dir, output = uncertain_run
    rd = RunDir(run_dir)
    mc = load(rd.round(0).pool_mc)
    assert mc.shape == (3, 60, 7) and load(rd.round(1).pool_mc).shape == (3, 60, 7)
    assert "round 0 MC dropout (2 passes a fold) on the pool" in output
    info = json.loads(rd.round(1).selection.read_text())
    assert info["strategy"] == "uncertainty" and info["uncertainty"]["over"] == "MC dropout, each fold its own passes"
    labels = load(rd.round(1).pseudo_labels)
    spread = pool_uncertainty(rd, 0, "fold")[0]
    blended = pool_probs(rd, 0, 0.5)  # what selection reads: the heads blended with the co-teacher
    assert (labels != NOT_SELECTED).sum(axis=1).max() > 0 and (labels != NOT_SELECTED).sum(axis=1).max() <= 30
    for f in range(3):  # each fold took the least uncertain of its own passes, per class
        predicted = blended[f].argmax(axis=1)
        for c in range(3):
            taken, left = labels[f] == c, (predicted == c) & (labels[f] == NOT_SELECTED)
            if taken.any() and left.any():
                assert spread[f][taken].max() <= spread[f][left].min()
    weights = pseudo_weights(rd, 0, labels, "uncertainty", "fold")
    for f in range(3):
        record = json.loads(rd.round(1).fold(f).record.read_text())
        assert len(weights[f]) == record["n_train_pseudo"]
        if len(weights[f]) > 1:
            assert np.isclose(weights[f].mean(), 1.0) and weights[f].std() > 0  # not every row alike
    assert pseudo_weights(rd, 0, labels, 0.5, "fold") == 0.5


def test_the_passes_are_the_same_when_a_round_is_scored_again(uncertain_run, tiny_data, tiny_encoder):
    run_dir, _ = uncertain_run
    rd = RunDir(run_dir)
    before = load(rd.round(1).pool_mc)
    for name in ("DONE", "metrics.json", "pool_mc.npy"):  # as if stopped while scoring round 1
        (rd.round(1).path / name).unlink()
    result = invoke(*run_args(tiny_data, tiny_encoder, run_dir, "--rounds", "1", "--strategy", "uncertainty",
                              "--pseudo-weight", "uncertainty", "--mc-passes", "2", "--top-k", "30"))
    assert result.exit_code == 0, result.output
    assert "round 1 MC dropout (2 passes a fold) on the pool" in result.output
    assert np.array_equal(load(rd.round(1).pool_mc), before)


def test_select_shows_the_uncertainty_beside_the_sweep(uncertain_run):
    run_dir, _ = uncertain_run
    result = invoke("select", "--run-dir", str(run_dir), "--round", "1", "--strategy", "uncertainty")
    assert result.exit_code == 0, result.output
    assert "uncertainty" in result.output and "BALD" in result.output
    assert "the selected rows' mean" in result.output and "MC dropout" in result.output


@pytest.mark.parametrize("extra, message", [
    (["--pseudo-weight", "heavy"], "pseudo-weight must be > 0 or one of uncertainty, got 'heavy'"),
    (["--mc-passes", "-1"], "mc-passes must be >= 0, got -1"),
    (["--mc-passes", "2", "--mode", "faithful", "--recipe", "seed"], "mc-passes samples the frozen head's dropout"),
    (["--mc-passes", "2", "--student", "finetune"], "mc-passes samples the frozen head's dropout"),
])
def test_bad_uncertainty_options_are_one_line_errors(tiny_data, tiny_encoder, tmp_path, extra, message):
    result = invoke(*run_args(tiny_data, tiny_encoder, tmp_path / "bad", "--rounds", "1", *extra))
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1

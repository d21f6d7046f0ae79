"""The run's options stated once: the CLI agrees with RunConfig, constraints give one-line errors,
and a run directory of an older schema continues under the values it was made with."""

import json

import pytest
import typer.main

from pseudolabel.cli.commands import app
from pseudolabel.rounds.config import CONSTRAINTS, SCHEMA, RunConfig, check, migrate
from pseudolabel.core.errors import PseudoError

COMMON = dict(train="a.csv", test="b.csv", unlabeled="c.csv", encoder="models/weibo-mlm-4l256", run_dir="x")


def _run_params() -> dict:
    command = typer.main.get_command(app).commands["run"]
    return {p.name: p for p in command.params}


def test_every_option_of_pseudo_run_is_a_config_field_with_its_default():
    params = _run_params()
    defaults = RunConfig.defaults()
    assert set(params) - {"restart", "plan"} == {f for f in RunConfig.__dataclass_fields__}
    cli_only = {"train", "test", "unlabeled", "encoder"}  # bundled files in a checkout
    shown_as = {"stream": "", "run_dir": None}  # the CLI's spelling of () and of "derive from the hash"
    for name, default in defaults.items():
        want = shown_as.get(name, default)
        if name not in cli_only:
            assert params[name].default == want, name
    for name in CONSTRAINTS:  # every constrained option is one a user can give
        assert name in params


@pytest.mark.parametrize("field, value, message", [
    ("co_teacher", 1.5, "co-teacher must be in [0, 1], got 1.5"),
    ("threshold", 0.0, "threshold must be in (0, 1], got 0.0"),
    ("holdout", 0.5, "holdout must be in [0, 0.5), got 0.5"),
    ("folds", 1, "folds must be >= 2, got 1"),
    ("max_len", 4, "max-len must be >= 8, got 4"),
    ("pseudo_weight", 0, "pseudo-weight must be > 0 or one of uncertainty, got 0"),
    ("deliver", "best", "deliver must be one of mean, auto, head, blend, got 'best'"),
    ("recipe", "best", "recipe must be one of default, seed, finetune, got 'best'"),
    ("strategy", None, "strategy must be one of threshold, per-class, class-balanced, uncertainty, top-k, got None"),
])
def test_a_value_outside_its_constraint_is_a_one_line_error(field, value, message):
    with pytest.raises(PseudoError) as info:
        check(field, value)
    assert str(info.value) == message
    with pytest.raises(PseudoError, match="must be"):
        RunConfig(**COMMON, **{field: value}).validate()


def test_values_inside_their_constraints_pass():
    for field, value in [("co_teacher", 0.0), ("co_teacher", 1.0), ("threshold", None), ("threshold", 1.0),
                         ("holdout", 0.0), ("top_k", 0), ("unlabeled_limit", None), ("deliver", "blend")]:
        check(field, value)
    RunConfig(**COMMON, rounds=2).validate()


def test_a_run_of_schema_1_continues_under_the_values_it_was_made_with():
    """Schema 1 did not record --co-teacher or --student-token-dropout: its runs used 0 for both.
    Migrated, such a record has the hash of today's config with those values, and only those."""
    then = RunConfig(**COMMON, co_teacher=0.0, threshold=0.9)
    recipe = then.resolved_recipe().to_dict()
    options = then.results_dict()
    old = {"config": {k: v for k, v in options.items() if k not in ("co_teacher", "student_token_dropout")},
           "hash": "written-by-schema-1", "recipe": recipe}
    new = migrate(json.loads(json.dumps(old)))
    assert new["schema"] == SCHEMA and new["hash"] == then.results_hash()
    assert new["config"]["co_teacher"] == 0.0 and new["config"]["student_token_dropout"] == 0.0
    assert new["hash"] != RunConfig(**COMMON, threshold=0.9).results_hash()  # today's default co-teacher differs
    assert migrate(new) is new  # the current schema is left as it is
    with pytest.raises(PseudoError, match="schema 99"):
        migrate({**new, "schema": 99})


def test_delivery_and_round_count_do_not_change_the_hash():
    base = RunConfig(**COMMON, holdout=0.15)
    assert RunConfig(**COMMON, holdout=0.15, deliver="head").results_hash() == base.results_hash()
    assert RunConfig(**COMMON, holdout=0.15, rounds=3).results_hash() == base.results_hash()
    assert RunConfig(**COMMON, holdout=0.15, co_teacher=0.3).results_hash() != base.results_hash()


def test_round_0_is_keyed_by_the_options_that_change_it():
    base = RunConfig(**COMMON, rounds=2)
    later = dict(threshold=0.5, strategy="top-k", top_k=9, pseudo_weight=0.5, pseudo_source="mean", soft_targets=True,
                 sharpen=0.5, student_noise=0.1, student_token_dropout=0.1, co_teacher=0.0, calibrate=True)
    assert RunConfig(**COMMON, rounds=1, **later).round0_key("enc") == base.round0_key("enc")
    for changed in (dict(holdout=0.1), dict(max_len=64), dict(epochs=3), dict(seed=1), dict(recipe="seed"),
                    dict(folds=4), dict(unlabeled_limit=10)):
        assert RunConfig(**COMMON, rounds=2, **changed).round0_key("enc") != base.round0_key("enc"), changed
    assert base.round0_key("other encoder") != base.round0_key("enc")


def test_the_fine_tuning_options_keep_earlier_runs_hashes_and_share_round_0_unless_round_0_fine_tunes():
    base = RunConfig(**COMMON, rounds=1)
    assert "finetune_monitor" not in base.results_dict()  # at its default: runs made before it keep their hash
    for changed in (dict(student="finetune"), dict(finetune_monitor=0.0), dict(finetune_epochs=4)):
        other = RunConfig(**COMMON, rounds=1, **changed)
        assert other.results_hash() != base.results_hash(), changed
        assert other.round0_key("enc") == base.round0_key("enc"), changed  # the student rounds only
    tuned = RunConfig(**COMMON, rounds=1, recipe="finetune")
    assert RunConfig(**COMMON, rounds=1, recipe="finetune", finetune_monitor=0.0).round0_key("enc") != \
        tuned.round0_key("enc")  # --recipe finetune: round 0 fine-tunes with them

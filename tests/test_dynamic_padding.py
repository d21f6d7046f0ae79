"""Opt-in dynamic padding: batches cut to their longest post, rows back in their order, a real run."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import ArrayFeatures, run_args
from pseudolabel.data.batching import padded_length
from pseudolabel.cli.commands import app
from pseudolabel.rounds.cv import FeatureSource, predict
from pseudolabel.heads.model import RECIPES, build_head
from pseudolabel.core.progress import Progress


def test_padded_length_rounds_up_and_caps():
    assert padded_length(1, 140) == 16 and padded_length(16, 140) == 16 and padded_length(17, 140) == 32
    assert padded_length(139, 140) == 140 and padded_length(140, 140) == 140


def test_dynamic_predictions_come_back_in_row_order(monkeypatch):
    import pseudolabel.rounds.cv as cv

    monkeypatch.setattr(cv, "PREDICT_CHUNK", 8)
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 60, 30)
    x = rng.normal(size=(30, 64, 6)).astype(np.float32)
    model = build_head(64, 6, replace(RECIPES["default"], gru_units=4, dense_units=(8, 8), dynamic_padding=True))
    source = FeatureSource(ArrayFeatures(x, lengths))
    got = predict(model, source, Progress(), "t", np.arange(30), dynamic=True)[0]
    order = np.argsort(lengths, kind="stable")
    for start in range(0, 30, 8):
        chunk = order[start:start + 8]
        keep = padded_length(lengths[chunk].max(), 64)
        np.testing.assert_allclose(got[chunk], model.predict_on_batch(x[chunk][:, :keep]), rtol=1e-5, atol=1e-6)
    full = predict(model, source, Progress(), "t", np.arange(30), dynamic=False)[0]
    assert not np.allclose(got, full, atol=1e-4)  # padding feeds the head: the numbers change


@pytest.mark.slow
def test_run_with_dynamic_padding(tiny_data, tiny_encoder, tmp_path):
    run_dir = tmp_path / "dyn"
    result = CliRunner().invoke(app, run_args(tiny_data, tiny_encoder, run_dir, "--rounds", "0",
                                              "--dynamic-padding"), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    config = json.loads((run_dir / "config.json").read_text())
    assert config["recipe"]["dynamic_padding"] is True
    assert np.load(run_dir / "round_0" / "test_preds.npy").shape == (3, 20, 3)
    bad = CliRunner().invoke(app, run_args(tiny_data, tiny_encoder, tmp_path / "f", "--mode", "faithful",
                                           "--recipe", "seed", "--dynamic-padding"))
    assert bad.exit_code == 1 and "dynamic-padding works on cached features" in bad.output


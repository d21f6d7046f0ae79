"""`pseudo pretrain`: MLM steps learn, the output is an encoder folder, --init continues, resume is exact."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import VOCAB

from pseudolabel.cli.commands import app
from pseudolabel.encoding.encoder import FrozenEncoder, find_encoder, load_tokenizer, read_card
from pseudolabel.encoding.pretrain import (MaskedLM, PretrainConfig, epoch_batches, keras_schedule, learning_rate_at,
                                  mask_batch, pretrain, token_lists)
from pseudolabel.data.tokenize import tokenize

TINY = dict(layers=2, hidden=64, heads=2, intermediate=128, max_len=32, batch_size=8, eval_rows=10,
            checkpoint_every=4)
TINY_ARGS = ["--layers", "2", "--hidden", "64", "--heads", "2", "--intermediate", "128", "--max-len", "32",
             "--batch-size", "8", "--eval-rows", "10", "--checkpoint-every", "4"]


def _tokenizer():
    from pseudolabel.encoding.encoder import EncoderFiles

    return load_tokenizer(EncoderFiles(VOCAB.parent, VOCAB, VOCAB, VOCAB, ""))


def test_mask_batch_masks_only_real_tokens_in_the_usual_proportions():
    tok = _tokenizer()
    ids = token_lists(["今天的天气真好，我们去公园散步吧" * 3] * 64, tok, 40)
    special = set(tok.all_special_ids)
    batch = mask_batch(ids, special, tok.mask_token_id, len(tok.get_vocab()), 0.15, np.random.default_rng(0))
    flat_in = batch["input_ids"].ravel()
    original = np.concatenate([np.pad(x, (0, batch["input_ids"].shape[1] - len(x))) for x in ids])
    assert np.array_equal(original[batch["positions"]], batch["labels"])
    assert not np.isin(batch["labels"], list(special)).any()
    share = len(batch["labels"]) / (batch["attention_mask"].sum() - 2 * len(ids))
    assert 0.12 < share < 0.18
    masked = np.mean(flat_in[batch["positions"]] == tok.mask_token_id)
    assert 0.72 < masked < 0.88
    untouched = np.setdiff1d(np.arange(len(flat_in)), batch["positions"])
    assert np.array_equal(flat_in[untouched], original[untouched])


def test_batches_are_length_grouped_and_cover_the_epoch_once():
    lengths = np.random.default_rng(0).integers(5, 120, 1000)
    batches = epoch_batches(lengths, 10, seed=0, epoch=0)
    rows = np.concatenate(batches)
    assert sorted(rows.tolist()) == list(range(1000))
    spread = np.mean([lengths[b].max() - lengths[b].min() for b in batches])
    assert spread < 10  # a random batch of 10 spans about 90 tokens
    assert [b.tolist() for b in batches] == [b.tolist() for b in epoch_batches(lengths, 10, seed=0, epoch=0)]
    assert [b.tolist() for b in batches] != [b.tolist() for b in epoch_batches(lengths, 10, seed=0, epoch=1)]


def test_learning_rate_warms_up_then_decays_to_zero():
    config = PretrainConfig(steps=100, warmup=0.1, learning_rate=1e-3)
    rates = [learning_rate_at(s, config) for s in range(100)]
    assert rates[9] == pytest.approx(1e-3)
    assert all(a < b for a, b in zip(rates[:9], rates[1:10]))
    assert all(a >= b for a, b in zip(rates[10:], rates[11:]))
    assert rates[-1] < 2e-5
    schedule = keras_schedule(config)  # what the optimizer uses
    np.testing.assert_allclose([float(schedule(s)) for s in range(100)], rates, rtol=1e-5, atol=1e-9)
    flat = PretrainConfig(steps=50, warmup=0.0, learning_rate=1e-3)
    np.testing.assert_allclose([float(keras_schedule(flat)(s)) for s in range(50)],
                               [learning_rate_at(s, flat) for s in range(50)], rtol=1e-5, atol=1e-9)


@pytest.mark.slow
def test_mlm_steps_lower_the_loss_on_a_fixed_batch():
    tok = _tokenizer()
    texts = ["疫情期间大家都要戴口罩，保护好自己和家人", "武汉加油！中国加油！", "今天又是宅在家里的一天，好无聊啊"] * 4
    batch = mask_batch(token_lists(texts, tok, 32), set(tok.all_special_ids), tok.mask_token_id,
                       len(tok.get_vocab()), 0.15, np.random.default_rng(1))
    lm = MaskedLM(PretrainConfig(**TINY, steps=30, learning_rate=2e-3, warmup=0.0, dropout=0.0), None,
                  len(tok.get_vocab()))
    before = lm.run(lm.eval_step, batch)
    for _ in range(30):
        lm.run(lm.train_step, batch)
    after = lm.run(lm.eval_step, batch)
    assert before > 9.0  # about log(21128) for a fresh model
    assert after < before - 2.0


@pytest.mark.slow
def test_cli_pretrain_writes_an_encoder_folder_that_pseudo_loads(tmp_path, tiny_data):
    out = tmp_path / "enc"
    result = CliRunner().invoke(app, ["pretrain", str(tiny_data["unlabeled"]), "--out", str(out), "--steps", "6",
                                      "--vocab", str(VOCAB), *TINY_ARGS])
    assert result.exit_code == 0, result.output
    assert "encoder written to" in result.output
    files = find_encoder(out)
    assert read_card(out)["weights"].startswith("pretrained")
    record = json.loads((out / "pretrain.json").read_text())
    assert record["steps_done"] == 6 and record["finished"]
    assert record["n_texts"] == 60 and record["corpus"][0]["rows"] == 60
    assert [e["step"] for e in record["eval_loss"]] == [0, 4, 6]
    assert all(np.isfinite(e["loss"]) for e in record["eval_loss"])
    encoder = FrozenEncoder(files)
    tokens = tokenize(["疫情期间大家都要戴口罩"], load_tokenizer(files), 16)
    feats = encoder(tokens.input_ids, tokens.attention_mask)
    assert feats.shape == (1, 16, 64) and np.isfinite(feats).all()


@pytest.mark.slow
def test_init_continues_from_an_existing_encoder(tmp_path, tiny_data, tiny_encoder):
    out = tmp_path / "cont"
    config = PretrainConfig(**{**TINY, "max_len": 32}, steps=1, learning_rate=1e-9, warmup=0.0)
    pretrain([str(tiny_data["unlabeled"])], out, config, init=str(tiny_encoder))
    tokens = tokenize(["武汉加油！中国加油！"], load_tokenizer(find_encoder(tiny_encoder)), 16)
    before = FrozenEncoder(find_encoder(tiny_encoder))(tokens.input_ids, tokens.attention_mask)
    after = FrozenEncoder(find_encoder(out))(tokens.input_ids, tokens.attention_mask)
    assert np.allclose(before, after, atol=1e-3)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 2 and cfg["hidden_size"] == 64
    fresh = tmp_path / "fresh"
    pretrain([str(tiny_data["unlabeled"])], fresh, config, vocab=str(VOCAB))
    other = FrozenEncoder(find_encoder(fresh))(tokens.input_ids, tokens.attention_mask)
    assert not np.allclose(before, other, atol=1e-2)


@pytest.mark.slow
def test_interrupted_pretraining_resumes_the_same_schedule(tmp_path, tiny_data):
    config = PretrainConfig(**TINY, steps=10, learning_rate=1e-3, dropout=0.0)
    corpus = [str(tiny_data["unlabeled"])]
    straight = pretrain(corpus, tmp_path / "straight", config, vocab=str(VOCAB))
    # interrupted after 6 steps: the checkpoint holds step 4; steps 5-6 are lost and redone
    partial = pretrain(corpus, tmp_path / "resumed", config, vocab=str(VOCAB), stop_after=6)
    assert partial["steps_done"] == 4 and not partial.get("finished")
    resumed = pretrain(corpus, tmp_path / "resumed", config, vocab=str(VOCAB))
    assert resumed["steps_done"] == 10 and resumed["finished"]
    assert [e["step"] for e in resumed["train_loss"]] == [e["step"] for e in straight["train_loss"]]
    for a, b in zip(straight["eval_loss"], resumed["eval_loss"]):
        assert a["step"] == b["step"] and a["loss"] == pytest.approx(b["loss"], abs=1e-4)
    tokens = tokenize(["今天又是宅在家里的一天"], _tokenizer(), 16)
    x = FrozenEncoder(find_encoder(tmp_path / "straight"))(tokens.input_ids, tokens.attention_mask)
    y = FrozenEncoder(find_encoder(tmp_path / "resumed"))(tokens.input_ids, tokens.attention_mask)
    assert np.allclose(x, y, atol=1e-4)


@pytest.mark.slow
def test_changed_settings_refuse_to_continue(tmp_path, tiny_data):
    corpus = [str(tiny_data["unlabeled"])]
    pretrain(corpus, tmp_path / "p", PretrainConfig(**TINY, steps=2), vocab=str(VOCAB))
    result = CliRunner().invoke(app, ["pretrain", *corpus, "--out", str(tmp_path / "p"), "--steps", "3",
                                      "--vocab", str(VOCAB), *TINY_ARGS])
    assert result.exit_code == 1
    assert "other settings (config.steps)" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("args, message", [
    (["--hidden", "65"], "--hidden (65) must be a multiple of --heads (2)"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--mask-prob", "1.5"], "--mask-prob must be in (0, 1)"),
    (["--vocab", "/nonexistent/vocab.txt"], "/nonexistent/vocab.txt: vocabulary file not found"),
    (["--init", "/nonexistent/enc"], "/nonexistent/enc: encoder folder not found"),
])
def test_bad_pretrain_options_are_one_line_errors(tmp_path, tiny_data, args, message):
    base = ["pretrain", str(tiny_data["unlabeled"]), "--out", str(tmp_path / "o"), "--layers", "2", "--heads", "2",
            "--hidden", "64", "--intermediate", "128", "--steps", "2"]
    result = CliRunner().invoke(app, base + args)
    assert result.exit_code == 1, result.output
    assert message in result.output and "Traceback" not in result.output


def test_missing_corpus_file_is_a_one_line_error(tmp_path):
    result = CliRunner().invoke(app, ["pretrain", str(tmp_path / "none.csv"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "none.csv" in result.output and "Traceback" not in result.output

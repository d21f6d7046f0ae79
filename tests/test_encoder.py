"""Encoder folders (both file layouts), bad checkpoints, and the feature cache."""

import shutil

import numpy as np
import pytest

from conftest import DATA, REPO, VOCAB
from pseudolabel.data.posts import load_labeled, load_unlabeled
from pseudolabel.encoding.encoder import FrozenEncoder, find_encoder, load_tokenizer, save_random_encoder
from pseudolabel.core.errors import PseudoError
from pseudolabel.encoding.features import CachedFeatures, features_for
from pseudolabel.core.progress import Recorder
from pseudolabel.data.tokenize import tokenize

TEXTS = load_unlabeled(DATA / "unlabeled.csv", limit=37).texts


def script_layout(src, dst):
    """The reference script's file names for the same checkpoint."""
    dst.mkdir()
    shutil.copy(src / "config.json", dst / "bert-base-chinese-config.json")
    shutil.copy(src / "tf_model.h5", dst / "bert-base-chinese-tf_model.h5")
    shutil.copy(src / "vocab.txt", dst / "bert-base-chinese-vocab.txt")
    return dst


def direct_features(folder, texts, max_len):
    """hidden_states[-2] from transformers itself, in inference mode."""
    from transformers import BertTokenizerFast, TFBertModel

    tok = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"))
    enc = tok(texts, max_length=max_len, padding="max_length", truncation=True, return_tensors="np")
    model = TFBertModel.from_pretrained(str(folder))
    out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                token_type_ids=np.zeros_like(enc["input_ids"]), output_hidden_states=True, training=False)
    return out.hidden_states[-2].numpy()


def test_both_layouts_and_safetensors_give_same_features(tiny_encoder, tmp_path):
    script = script_layout(tiny_encoder, tmp_path / "script")
    safe = save_random_encoder(tmp_path / "safe", VOCAB, layers=2, hidden=64, heads=2, intermediate=128,
                               max_positions=64, seed=1, safetensors=True)
    assert safe.weights.name == "model.safetensors"
    files = [find_encoder(tiny_encoder), find_encoder(script), safe]
    assert files[1].weights.name == "bert-base-chinese-tf_model.h5"
    assert files[0].identity == files[1].identity  # same bytes, same encoder: the cache is shared
    toks = tokenize(TEXTS[:5], load_tokenizer(files[1]), 16)
    outs = [FrozenEncoder(f)(toks.input_ids, toks.attention_mask) for f in files]
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-5)
    np.testing.assert_allclose(outs[0], outs[2], atol=1e-5)  # same seed, same weights


EDGE_CASES = ["", "   ", "[SEP] 你好 [cls]", "a\x0bb\x1cc\u200dd", "中\u0301文", "ＡＢＣ１２３", "ÉCOLE café",
              "丽\uf900豈", "http://t.cn/A6wX?x=1&y=2", "😀😀哈哈", "x" * 150, "\u3000全角\u00a0空格\t\n", "我" * 300,
              "@小明_123:回复@Ab-C：[哈哈][心]#武汉加油#…！？", "\ufeff开头"]


@pytest.mark.parametrize("max_len", [20, 140])
def test_tokenize_by_segments_equals_the_fast_tokenizer(max_len):
    """Every bundled post and the edge cases get exactly the ids of the fast tokenizer called whole, and of
    the reference script's per-row encode_plus."""
    tokenizer = load_tokenizer(find_encoder(REPO / "models" / "weibo-mlm-4l256"))
    texts = (load_unlabeled(DATA / "unlabeled.csv", limit=None).texts + load_labeled(DATA / "train.labeled.csv").texts
             + load_unlabeled(DATA / "test.csv", limit=None).texts + EDGE_CASES)
    toks = tokenize(texts, tokenizer, max_len)
    assert tokenizer._pseudo_segments.isolating  # the segment path ran
    whole = tokenizer(texts, max_length=max_len, padding="max_length", truncation=True, return_tensors="np")
    np.testing.assert_array_equal(toks.input_ids, whole["input_ids"])
    np.testing.assert_array_equal(toks.attention_mask, whole["attention_mask"])
    for i in [0, 5, 36] + list(range(len(texts) - len(EDGE_CASES), len(texts))):
        one = tokenizer.encode_plus(texts[i], max_length=max_len, padding="max_length", truncation=True)
        assert toks.input_ids[i].tolist() == one["input_ids"], repr(texts[i])


@pytest.mark.parametrize("missing, message", [
    ("config.json", "no config file"), ("tf_model.h5", "no weights file"), ("vocab.txt", "no vocabulary file")])
def test_missing_checkpoint_file(tiny_encoder, tmp_path, missing, message):
    folder = tmp_path / "enc"
    shutil.copytree(tiny_encoder, folder)
    (folder / missing).unlink()
    with pytest.raises(PseudoError, match=message) as info:
        find_encoder(folder)
    assert str(folder) in str(info.value)


def test_missing_folder(tmp_path):
    with pytest.raises(PseudoError, match="encoder folder not found"):
        find_encoder(tmp_path / "nope")


def test_corrupt_weights(tiny_encoder, tmp_path):
    folder = tmp_path / "enc"
    shutil.copytree(tiny_encoder, folder)
    data = (folder / "tf_model.h5").read_bytes()
    (folder / "tf_model.h5").write_bytes(data[: len(data) // 3])
    with pytest.raises(PseudoError) as info:
        FrozenEncoder(find_encoder(folder))
    message = str(info.value)
    assert "tf_model.h5" in message and str(folder) in message and "\n" not in message


def test_cached_features_equal_direct_call_and_are_reused(tiny_encoder, tmp_path):
    files = find_encoder(tiny_encoder)
    made = []

    def encoder():
        made.append(FrozenEncoder(files))
        return made[-1]

    def call(progress):
        return features_for("unlabeled", TEXTS, cache_dir=tmp_path, encoder_identity=files.identity, max_len=24,
                            tokenize=lambda t: tokenize(t, load_tokenizer(files), 24), encoder=encoder,
                            stream=False, progress=progress)

    first = call(Recorder())
    assert isinstance(first, CachedFeatures) and first.features.dtype == np.float16
    assert made[0].rows == len(TEXTS)
    want = direct_features(tiny_encoder, TEXTS, 24)
    np.testing.assert_allclose(first.rows(np.arange(len(TEXTS))), want, atol=2e-2, rtol=1e-2)
    recorder = Recorder()
    second = call(recorder)
    assert len(made) == 1  # the encoder was not even loaded the second time
    assert any("reusing cached features" in n for n in recorder.notes)
    np.testing.assert_array_equal(np.asarray(second.features), np.asarray(first.features))
    # another max length or other texts are another cache entry
    other = features_for("unlabeled", TEXTS[:-1], cache_dir=tmp_path, encoder_identity=files.identity, max_len=24,
                         tokenize=lambda t: tokenize(t, load_tokenizer(files), 24), encoder=encoder,
                         stream=False, progress=Recorder())
    assert len(made) == 2 and len(other) == len(TEXTS) - 1


def test_cached_rows_read_without_the_map_in_any_order(tmp_path):
    """Rows come back in the asked order, duplicates included, equal to the file's entries; the memory map
    is never touched (its pages would stay in the process's resident memory)."""
    rng = np.random.default_rng(0)
    entries = rng.normal(size=(50, 7, 5)).astype(np.float16)
    np.save(tmp_path / "features.npy", entries, allow_pickle=False)
    np.save(tmp_path / "lengths.npy", np.full(50, 7, np.int32), allow_pickle=False)
    index = rng.integers(0, 50, 80)  # 80 rows of a split onto 50 distinct texts
    np.save(tmp_path / "index.npy", index, allow_pickle=False)
    cached = CachedFeatures(tmp_path)
    cached.features = FailOnRead(cached.features)
    idx = np.array([5, 3, 3, 79, 0, 41, 42, 43, 44, 12])
    got = cached.rows(idx)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, entries[index[idx]].astype(np.float32))
    np.testing.assert_array_equal(cached.rows(np.arange(80)), entries[index].astype(np.float32))
    (tmp_path / "features.npy").write_bytes((tmp_path / "features.npy").read_bytes()[:-100])
    with pytest.raises(PseudoError, match="file ends early"):
        cached.rows(np.arange(80))


class FailOnRead:
    """A memory map stand-in that allows shape, dtype and offset but no reads of the data."""

    def __init__(self, mapped):
        self.shape, self.dtype, self.offset = mapped.shape, mapped.dtype, mapped.offset

    def __getitem__(self, key):
        raise AssertionError("read through the memory map")


def test_interrupted_encoding_resumes(tiny_encoder, tmp_path, monkeypatch):
    from pseudolabel.encoding import features as features_mod

    files = find_encoder(tiny_encoder)
    texts = [f"{i} {t}" for i, t in enumerate(TEXTS * 3)]  # 111 distinct texts: two batches of 64
    monkeypatch.setattr(features_mod, "_FLUSH_EVERY", 1)
    enc = FrozenEncoder(files)
    real = enc._forward
    calls = {"n": 0}

    def failing(ids, mask):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(ids, mask)

    enc._forward = failing
    args = dict(cache_dir=tmp_path, encoder_identity=files.identity, max_len=16,
                tokenize=lambda t: tokenize(t, load_tokenizer(files), 16), stream=False, progress=Recorder())
    with pytest.raises(KeyboardInterrupt):
        features_for("unlabeled", texts, encoder=lambda: enc, **args)
    enc._forward = real
    enc.rows = 0
    done = features_for("unlabeled", texts, encoder=lambda: enc, **args)
    assert enc.rows == len(texts) - 64  # only the unfinished rows were encoded again
    toks = tokenize(texts, load_tokenizer(files), 16)
    np.testing.assert_allclose(done.rows(np.arange(len(texts))), enc(toks.input_ids, toks.attention_mask), atol=2e-2)


def test_disk_check(tiny_encoder, tmp_path, monkeypatch):
    import shutil as shutil_mod
    from collections import namedtuple

    files = find_encoder(tiny_encoder)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil_mod, "disk_usage", lambda _: usage(10, 10, 1000))
    with pytest.raises(PseudoError, match="feature cache needs .* but only 1000 B is free"):
        features_for("unlabeled", TEXTS, cache_dir=tmp_path, encoder_identity=files.identity, max_len=24,
                     tokenize=lambda t: tokenize(t, load_tokenizer(files), 24), encoder=lambda: FrozenEncoder(files),
                     stream=False, progress=Recorder())

"""tools/pretrain_torch.py's framework-free parts: the token file and the weight shards round-trip exactly.

(Its PyTorch training step runs on a GPU machine; `assemble` checks the result through pseudo's own
loader against features the trainer saved, so a wrong weight mapping cannot pass silently.)
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from conftest import DATA, VOCAB

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "pretrain_torch.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("pretrain_torch", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["pretrain_torch"] = module
    spec.loader.exec_module(module)
    return module


def test_shards_split_large_tensors_and_merge_back_exactly(script, tmp_path, monkeypatch):
    monkeypatch.setattr(script, "SHARD_BYTES", 4096)
    rng = np.random.default_rng(0)
    state = {"embeddings.word_embeddings.weight": rng.normal(size=(300, 8)).astype(np.float32),  # 9,600 bytes
             "encoder.layer.0.output.dense.bias": rng.normal(size=8).astype(np.float32),
             "encoder.layer.0.output.dense.weight": rng.normal(size=(8, 8)).astype(np.float32)}
    shards = script._shards(state)
    assert len(shards) > 1
    assert all(sum(v.nbytes for v in shard.values()) <= 4096 for shard in shards)
    assert any("::part" in key for shard in shards for key in shard)
    for i, shard in enumerate(shards):
        save_file(shard, str(tmp_path / f"weights-{i:02d}.safetensors"))
    merged = script.merge_shards(tmp_path)
    assert sorted(merged) == sorted(state)
    for name, value in state.items():
        np.testing.assert_array_equal(merged[name], value)


def test_prepared_tokens_equal_pseudo_pretrain_tokens(script, tmp_path):
    from pseudolabel.encoding.encoder import EncoderFiles, load_tokenizer
    from pseudolabel.encoding.pretrain import load_corpus, token_lists

    corpus = str(DATA / "unlabeled.csv")
    out = tmp_path / "corpus.npz"
    script.prepare(argparse.Namespace(corpus=[corpus], vocab=str(VOCAB.parent), max_len=32, out=str(out)))
    ids, lengths, meta = script._read_tokens(str(out))
    texts, _ = load_corpus([corpus])
    expected = token_lists(texts, load_tokenizer(EncoderFiles(VOCAB.parent, VOCAB, VOCAB, VOCAB, "")), 32)
    assert len(ids) == len(expected) == len(lengths)
    assert all(np.array_equal(a, b) for a, b in zip(ids, expected))
    assert meta["max_len"] == 32 and meta["mask_id"] in meta["special"]

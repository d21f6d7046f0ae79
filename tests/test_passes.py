"""The frozen encoder runs once per distinct text for a whole run, and streamed splits once per round."""

import numpy as np
import pytest

from conftest import read_rows, write_rows
from pseudolabel.data.posts import load_labeled, load_unlabeled
from pseudolabel.rounds.loop import Run, RunConfig
from pseudolabel.core.progress import Recorder


def config(tiny_data, tiny_encoder, run_dir, **kw):
    base = dict(train=str(tiny_data["train"]), test=str(tiny_data["test"]), unlabeled=str(tiny_data["unlabeled"]),
                encoder=str(tiny_encoder), run_dir=str(run_dir), folds=3, max_len=24, epochs=2, batch_size=16,
                min_steps=0, rounds=2, strategy="top-k", top_k=15, force=True)
    return RunConfig(**{**base, **kw})


@pytest.mark.slow
def test_two_rounds_encode_each_distinct_text_once(tiny_data, tiny_encoder, tmp_path):
    # a pool with repeated posts, as reposts are on Weibo
    header, *rows = read_rows(tiny_data["unlabeled"])
    pool = write_rows(tmp_path / "pool.csv", [header] + rows + rows[:10])
    data = {**tiny_data, "unlabeled": pool}
    texts = (load_labeled(data["train"]).texts + load_unlabeled(data["test"]).texts
             + load_unlabeled(pool).texts)
    distinct_per_split = (len(set(load_labeled(data["train"]).texts)) + len(set(load_unlabeled(data["test"]).texts))
                          + len(set(load_unlabeled(pool).texts)))
    assert len(texts) > distinct_per_split
    result = Run(config(data, tiny_encoder, tmp_path / "run"), Recorder()).execute()
    assert [r["round"] for r in result.rounds] == [0, 1, 2]
    assert result.encoder_rows == distinct_per_split  # 1.0 pass per distinct text over three rounds
    unmask = np.load(tmp_path / "run" / "round_2" / "unmask_preds.npy")
    assert unmask.shape == (3, 70, 3)
    # repeated posts, same scores (up to float32 rounding: rows at other places of a batch take other
    # kernel paths, measured up to 3e-6 apart)
    np.testing.assert_allclose(unmask[:, 60:], unmask[:, :10], atol=2e-5)


@pytest.mark.slow
def test_streamed_pool_is_encoded_once_per_round(tiny_data, tiny_encoder, tmp_path):
    n_lab, n_test, n_pool = 90, 20, 60
    result = Run(config(tiny_data, tiny_encoder, tmp_path / "run", rounds=1, stream=("unlabeled",)),
                 Recorder()).execute()
    assert [r["round"] for r in result.rounds] == [0, 1]
    # labeled and test once; the pool once per round for scoring, plus the selected rows (the union of the
    # folds' top 15) once in round 1
    selected = int((np.load(tmp_path / "run" / "round_1" / "pseudo_labels.npy") != -1).any(axis=0).sum())
    assert 15 <= selected <= 45
    assert result.encoder_rows == n_lab + n_test + 2 * n_pool + selected
    assert not list((tmp_path / "run" / "features").glob("unlabeled-[0-9a-f]*[0-9a-f]"))
    assert len(list((tmp_path / "run" / "features").glob("unlabeled-rows-*"))) == 1

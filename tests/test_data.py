"""Reading the competition files: encodings, labels, ids, empty texts and every bad input."""

import numpy as np
import pytest

from conftest import DATA, SHARED, write_rows
from pseudolabel.data.posts import EMPTY_TEXT, load_labeled, load_unlabeled
from pseudolabel.core.errors import PseudoError

HEADER = ["微博id", "微博发布时间", "发布人账号", "微博中文内容", "微博图片", "微博视频", "情感倾向"]


def labeled_file(tmp_path, rows, name="train.csv", encoding="utf-8", header=HEADER):
    return write_rows(tmp_path / name, [header] + rows, encoding)


def test_labels_kept_as_strings_and_filtered(tmp_path):
    rows = [[" a1 ", "", "", "好", "", "", "1"], ["a2", "", "", "", "", "", "-1"], ["a3", "", "", "x", "", "", "0"],
            ["a4", "", "", "y", "", "", "10"], ["a5", "", "", "z", "", "", "-"], ["a6", "", "", "w", "", "", "1.0"],
            ["a1", "", "", "dup", "", "", "0"]]
    posts = load_labeled(labeled_file(tmp_path, rows))
    assert posts.ids == ["a1", "a2", "a3", "a1"]
    assert posts.labels.tolist() == [2, 0, 1, 1]
    assert posts.texts[1] == EMPTY_TEXT and posts.n_empty_text == 1
    assert posts.dropped_labels == {"10": 1, "-": 1, "1.0": 1}
    assert posts.duplicate_ids == 1
    notes = " ".join(posts.notes())
    assert "dropped 3 row(s)" in notes and "'10'" in notes and "duplicate" in notes


def test_utf8_bom_and_gb18030(tmp_path):
    rows = [["b1", "", "", "武汉加油", "", "", "1"], ["b2", "", "", "心疼", "", "", "-1"]]
    bom = tmp_path / "bom.csv"
    plain = labeled_file(tmp_path, rows, "plain.csv")
    bom.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    gb = labeled_file(tmp_path, rows, "gb.csv", "gb18030")
    for path, encoding in ((plain, "utf-8"), (bom, "utf-8-sig"), (gb, "gb18030")):
        posts = load_labeled(path)
        assert posts.encoding == encoding
        assert posts.texts == ["武汉加油", "心疼"] and posts.ids == ["b1", "b2"]


def test_real_gb18030_test_file_reports_replacements():
    path = SHARED / "nCov_10k_test.csv"
    if not path.is_file():
        path = DATA / "test.csv"  # the bundled sample keeps the published bytes, both bad ones included
    posts = load_unlabeled(path, None)
    assert posts.encoding == "gb18030"
    assert posts.n_replaced == 2
    assert any("2 undecodable" in note for note in posts.notes())
    assert all(i == i.strip() for i in posts.ids)
    assert EMPTY_TEXT in posts.texts  # the published file has empty texts


def test_unlabeled_limit(tmp_path):
    posts = load_unlabeled(DATA / "unlabeled.csv", limit=25)
    assert len(posts) == 25
    with pytest.raises(PseudoError, match="unlabeled limit must be >= 1, got 0"):
        load_unlabeled(DATA / "unlabeled.csv", limit=0)


@pytest.mark.parametrize("case, message", [
    ("missing", "file not found"),
    ("empty", "file is empty"),
    ("header_only", "header but no rows"),
    ("no_text", "missing column '微博中文内容'"),
    ("no_label", "missing column '情感倾向'"),
    ("no_usable_label", "no usable label, expected -1, 0 or 1"),
    ("binary", "unreadable encoding"),
])
def test_bad_labeled_inputs(tmp_path, case, message):
    path = tmp_path / "bad.csv"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "header_only":
        labeled_file(tmp_path, [], "bad.csv")
    elif case == "no_text":
        labeled_file(tmp_path, [["1", "", "", "", "", "1"]], "bad.csv",
                     header=[h for h in HEADER if h != "微博中文内容"])
    elif case == "no_label":
        labeled_file(tmp_path, [["1", "", "", "t", "", ""]], "bad.csv", header=HEADER[:-1])
    elif case == "no_usable_label":
        labeled_file(tmp_path, [["1", "", "", "t", "", "", "9"], ["2", "", "", "t", "", "", ""]], "bad.csv")
    elif case == "binary":
        path.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8)))
    with pytest.raises(PseudoError) as info:
        load_labeled(path)
    text = str(info.value)
    assert message in text and str(path) in text and "\n" not in text

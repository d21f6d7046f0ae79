"""Reading the competition's CSV files: encodings, columns, labels, ids and empty texts.

The three files share one layout (see the README): 微博id, 微博发布时间, 发布人账号, 微博中文内容,
微博图片, 微博视频 and, in the labeled file only, 情感倾向. Labels are kept as strings and only
'-1', '0' and '1' are used; they map to class indices 0, 1, 2.
"""

from __future__ import annotations

import codecs
import csv
import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.constants import LABEL_VALUES, N_CLASSES  # noqa: F401  (re-exported)
from ..core.errors import PseudoError

ID_COLUMN = "微博id"
TEXT_COLUMN = "微博中文内容"
LABEL_COLUMN = "情感倾向"
EMPTY_TEXT = "无"
DEFAULT_UNLABELED_LIMIT = 500_000
# More replacement characters than this share of the text means the file is not in a
# supported encoding, not a few damaged bytes.
_MAX_REPLACED_SHARE = 0.001


@dataclass
class Posts:
    """One loaded file: ids, texts and (for the labeled file) class indices, row order kept."""

    path: Path
    ids: list[str]
    texts: list[str]
    labels: np.ndarray | None = None  # int64 class indices 0..2, or None
    encoding: str = "utf-8"
    n_replaced: int = 0  # undecodable bytes replaced by U+FFFD
    n_empty_text: int = 0  # texts filled with EMPTY_TEXT
    dropped_labels: dict[str, int] = field(default_factory=dict)  # label value -> rows dropped
    duplicate_ids: int = 0  # rows whose id appeared earlier in the file

    def __len__(self) -> int:
        return len(self.texts)

    def notes(self) -> list[str]:
        """One-line remarks worth showing a user about how the file was read."""
        name = self.path.name
        out = []
        if self.n_replaced:
            out.append(f"{name}: {self.encoding}, {self.n_replaced} undecodable byte sequence(s) replaced")
        if self.dropped_labels:
            values = ", ".join(f"{v!r}×{n}" for v, n in sorted(self.dropped_labels.items()))
            out.append(f"{name}: dropped {sum(self.dropped_labels.values())} row(s) with label not in -1/0/1: {values}")
        if self.n_empty_text:
            out.append(f"{name}: {self.n_empty_text} empty text(s) filled with {EMPTY_TEXT!r}")
        if self.duplicate_ids:
            out.append(f"{name}: {self.duplicate_ids} duplicate id(s) (kept)")
        return out


def decode(path: Path) -> tuple[str, str, int]:
    """Return (text, encoding, n_replaced) for UTF-8, UTF-8 with BOM or GB18030 bytes."""
    if not path.is_file():
        raise PseudoError(f"{path}: file not found")
    raw = path.read_bytes()
    if not raw.strip():
        raise PseudoError(f"{path}: file is empty")
    if raw.startswith(b"\xef\xbb\xbf"):
        raw, encoding = raw[3:], "utf-8-sig"
    else:
        encoding = "utf-8"
    try:
        return raw.decode("utf-8"), encoding, 0
    except UnicodeDecodeError:
        if encoding == "utf-8-sig":
            raise PseudoError(f"{path}: starts with a UTF-8 byte-order mark but is not valid UTF-8") from None
    text = raw.decode("gb18030", errors="replace")
    n_replaced = text.count("\ufffd")
    if b"\x00" in raw or n_replaced > max(2, _MAX_REPLACED_SHARE * len(text)):
        raise PseudoError(
            f"{path}: unreadable encoding, expected UTF-8, UTF-8 with BOM or GB18030 "
            f"({n_replaced} undecodable sequences as GB18030)"
        )
    return text, "gb18030", n_replaced


def _read_table(path: Path, required: tuple[str, ...], nrows: int | None) -> tuple[pd.DataFrame, str, int]:
    text, encoding, n_replaced = decode(path)
    try:
        frame = pd.read_csv(
            io.StringIO(text), dtype=str, keep_default_na=False, nrows=nrows, quoting=csv.QUOTE_MINIMAL
        )
    except pd.errors.EmptyDataError:
        raise PseudoError(f"{path}: file is empty") from None
    except (pd.errors.ParserError, csv.Error) as exc:
        detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise PseudoError(f"{path}: not a readable CSV file ({detail})") from None
    frame.columns = [str(c).strip().lstrip("\ufeff") for c in frame.columns]
    for column in required:
        if column not in frame.columns:
            found = ", ".join(frame.columns[:8])
            raise PseudoError(f"{path}: missing column {column!r} (found: {found})")
    if len(frame) == 0:
        raise PseudoError(f"{path}: file has a header but no rows")
    return frame, encoding, n_replaced


def _posts(path: Path, frame: pd.DataFrame, encoding: str, n_replaced: int) -> Posts:
    texts = frame[TEXT_COLUMN].astype(str).tolist()
    empty = [i for i, t in enumerate(texts) if not t.strip()]
    for i in empty:
        texts[i] = EMPTY_TEXT
    if ID_COLUMN in frame.columns:
        ids = [s.strip() for s in frame[ID_COLUMN].astype(str).tolist()]
    else:
        ids = [str(i) for i in range(len(texts))]
    counts = Counter(ids)
    duplicates = sum(n - 1 for n in counts.values() if n > 1)
    return Posts(
        path=path,
        ids=ids,
        texts=texts,
        encoding=encoding,
        n_replaced=n_replaced,
        n_empty_text=len(empty),
        duplicate_ids=duplicates,
    )


def load_labeled(path: str | Path) -> Posts:
    """Read a labeled file; keep rows labeled '-1', '0' or '1' and map them to 0, 1, 2."""
    path = Path(path)
    frame, encoding, n_replaced = _read_table(path, (TEXT_COLUMN, LABEL_COLUMN), None)
    raw = frame[LABEL_COLUMN].astype(str).str.strip()
    keep = raw.isin(LABEL_VALUES).to_numpy()
    dropped = dict(Counter(raw[~keep].tolist()))
    if not keep.any():
        seen = ", ".join(repr(v) for v in list(dropped)[:5])
        raise PseudoError(f"{path}: column {LABEL_COLUMN!r} has no usable label, expected -1, 0 or 1 (found {seen})")
    frame = frame[keep].reset_index(drop=True)
    posts = _posts(path, frame, encoding, n_replaced)
    posts.labels = np.array([LABEL_VALUES.index(v) for v in raw[keep]], dtype=np.int64)
    posts.dropped_labels = dropped
    return posts


def load_unlabeled(path: str | Path, limit: int | None = DEFAULT_UNLABELED_LIMIT) -> Posts:
    """Read a file without labels (test or unlabeled pool), the first `limit` rows."""
    path = Path(path)
    if limit is not None and limit < 1:
        raise PseudoError(f"unlabeled limit must be >= 1, got {limit}")
    frame, encoding, n_replaced = _read_table(path, (TEXT_COLUMN,), limit)
    return _posts(path, frame, encoding, n_replaced)


def sniff_encoding(path: Path, block: int = 1 << 20) -> tuple[str, int]:
    """(encoding, undecodable sequences replaced) of a file, read in blocks (never whole): the rule of
    `decode` (UTF-8, UTF-8 with BOM, else GB18030 with few replacements), in bounded memory."""
    if not path.is_file():
        raise PseudoError(f"{path}: file not found")
    with open(path, "rb") as fh:
        head = fh.read(3)
        encoding = "utf-8-sig" if head == b"\xef\xbb\xbf" else "utf-8"
        fh.seek(0)
        for name in ((encoding,) if encoding == "utf-8-sig" else (encoding, "gb18030")):
            fh.seek(0)
            decoder = codecs.getincrementaldecoder(name)("strict" if name != "gb18030" else "replace")
            replaced = chars = 0
            nul = nonblank = False
            try:
                while chunk := fh.read(block):
                    nul = nul or b"\x00" in chunk
                    text = decoder.decode(chunk)
                    nonblank = nonblank or bool(text.strip())
                    replaced += text.count("\ufffd")
                    chars += len(text)
                text = decoder.decode(b"", final=True)
                nonblank = nonblank or bool(text.strip())
            except UnicodeDecodeError:
                if name == "utf-8-sig":
                    raise PseudoError(f"{path}: starts with a UTF-8 byte-order mark but is not valid UTF-8") from None
                continue
            if not nonblank:
                raise PseudoError(f"{path}: file is empty")
            if name == "gb18030" and (nul or replaced > max(2, _MAX_REPLACED_SHARE * chars)):
                raise PseudoError(f"{path}: unreadable encoding, expected UTF-8, UTF-8 with BOM or GB18030 "
                                  f"({replaced} undecodable sequences as GB18030)")
            return name, (replaced if name == "gb18030" else 0)
    raise AssertionError("unreachable: GB18030 decoding replaces, it does not fail")


TEXT_COLUMNS = (TEXT_COLUMN, "text")  # posts to predict: the competition's column, a plain one, or the only one


def iter_posts(path: str | Path, chunk_rows: int = 4096):
    """The posts of a file to predict, `chunk_rows` at a time (Posts without labels, ids kept), read
    in bounded memory. Texts, ids and empty texts as `load_unlabeled` reads them; a file whose text
    column is `text`, or which has a single column, works too (ids: `微博id` or `id`, else row numbers)."""
    path = Path(path)
    encoding, replaced = sniff_encoding(path)
    done = 0
    with open(path, encoding=encoding, errors="replace", newline="") as fh:
        try:
            reader = pd.read_csv(fh, dtype=str, keep_default_na=False, quoting=csv.QUOTE_MINIMAL,
                                 chunksize=chunk_rows)
            for frame in reader:
                frame.columns = [str(c).strip().lstrip("\ufeff") for c in frame.columns]
                text_column = next((c for c in TEXT_COLUMNS if c in frame.columns),
                                   frame.columns[0] if len(frame.columns) == 1 else None)
                if text_column is None:
                    raise PseudoError(f"{path}: no text column, expected {TEXT_COLUMN!r} or 'text' (or a single "
                                      f"column; found: {', '.join(frame.columns[:8])})")
                id_column = next((c for c in (ID_COLUMN, "id") if c in frame.columns and c != text_column), None)
                texts = frame[text_column].astype(str).tolist()
                empty = [i for i, t in enumerate(texts) if not t.strip()]
                for i in empty:
                    texts[i] = EMPTY_TEXT
                ids = ([v.strip() for v in frame[id_column].astype(str).tolist()] if id_column
                       else [str(done + i) for i in range(len(texts))])
                yield Posts(path=path, ids=ids, texts=texts, encoding=encoding,
                            n_replaced=replaced if done == 0 else 0, n_empty_text=len(empty))
                done += len(texts)
        except pd.errors.EmptyDataError:
            raise PseudoError(f"{path}: file is empty") from None
        except (pd.errors.ParserError, csv.Error) as exc:
            detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise PseudoError(f"{path}: not a readable CSV file ({detail})") from None
    if done == 0:
        raise PseudoError(f"{path}: file has a header but no rows")


def label_values(classes: np.ndarray) -> np.ndarray:
    """Class indices 0..2 -> the file's label values -1/0/1 (ints)."""
    return np.asarray(classes, dtype=np.int64) - 1

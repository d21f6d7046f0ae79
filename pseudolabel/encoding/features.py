"""Frozen-encoder features, computed once per text and kept on disk (float16 .npy, read and written
with plain file reads and writes so that resident memory does not grow with the cache).

A cache entry is keyed by the encoder's content hash, the maximum length and the texts, so a
later run over the same files reuses it and a changed file or encoder never does. An entry is
written in chunks with its progress recorded, so an interrupted encoding pass resumes where it
stopped; `DONE` is written last. A split may instead be streamed: its features are recomputed
batch by batch whenever they are needed (one encoder pass per text per use, no disk).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

from ..core.errors import PseudoError
from ..core.progress import Progress
from ..core.store import atomic_write_json, atomic_write_npy, computing, mark_done, naming
from ..data.tokenize import Tokens

ENCODE_BATCH = 64
_FLUSH_EVERY = 32  # batches between progress records


def texts_hash(texts: list[str]) -> str:
    digest = hashlib.sha256(str(len(texts)).encode())
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass"))
        digest.update(b"\x00")
    return digest.hexdigest()


def cache_key(encoder_identity: str, max_len: int, texts: list[str]) -> str:
    return hashlib.sha256(f"{encoder_identity}|{max_len}|{texts_hash(texts)}".encode()).hexdigest()[:20]


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


class CachedFeatures:
    """Features of one split, read from the cache on disk.

    The cache holds one entry per distinct text; `index.npy` maps each row of the split to its
    text's entry, so duplicate posts are encoded and stored once.
    """

    def __init__(self, folder: Path):
        self.folder = folder
        self.features = np.load(folder / "features.npy", mmap_mode="r", allow_pickle=False)
        self.entry_lengths = np.load(folder / "lengths.npy", allow_pickle=False)
        index_path = folder / "index.npy"
        self.index = (np.load(index_path, allow_pickle=False) if index_path.is_file()
                      else np.arange(len(self.entry_lengths)))
        self.lengths = self.entry_lengths[self.index]

    def __len__(self) -> int:
        return len(self.index)

    def __reduce__(self):
        """Sent to another process (a Ray task) as its folder: the receiver maps the same files."""
        return CachedFeatures, (self.folder,)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self),) + tuple(self.features.shape[1:])

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """float32 features of the given rows (the given order is kept).

        Entries are read with plain file reads into a buffer of this call, in runs of consecutive
        entries, not through the memory map: pages touched through a map count in the process's
        resident memory until it exits, so scoring a large pool would grow it with the pool."""
        entries = self.index[np.asarray(idx)]
        unique, inverse = np.unique(entries, return_inverse=True)
        buf = np.empty((len(unique),) + self.features.shape[1:], self.features.dtype)
        row_bytes = buf[0].nbytes if len(buf) else 0
        starts = np.concatenate([[0], np.nonzero(np.diff(unique) != 1)[0] + 1, [len(unique)]]).astype(int)
        with open(self.folder / "features.npy", "rb", buffering=0) as f:
            for a, b in zip(starts[:-1], starts[1:]):
                f.seek(self.features.offset + int(unique[a]) * row_bytes)
                view, done = memoryview(buf[a:b]).cast("B"), 0
                while done < len(view):
                    n = f.readinto(view[done:])
                    if not n:
                        raise PseudoError(f"{self.folder / 'features.npy'}: file ends early; delete the folder "
                                          f"to recompute the cache")
                    done += n
        out = np.empty((len(entries),) + buf.shape[1:], np.float32)
        out[:] = buf[inverse.reshape(-1)]
        return out


class StreamedFeatures:
    """Features recomputed from tokens batch by batch: no disk, one encoder pass per use."""

    def __init__(self, tokens: Tokens, encoder):
        self.tokens = tokens
        self.encoder = encoder
        self.lengths = tokens.lengths

    def __len__(self) -> int:
        return len(self.tokens)

    def rows(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx)
        parts = [self.encoder(self.tokens.input_ids[idx[s:s + ENCODE_BATCH]],
                              self.tokens.attention_mask[idx[s:s + ENCODE_BATCH]])
                 for s in range(0, len(idx), ENCODE_BATCH)]
        return np.concatenate(parts) if parts else np.zeros((0,) + self.tokens.input_ids.shape[1:] + (
            self.encoder.hidden_size,), np.float32)


class SubsetFeatures:
    """Cached features of some rows of a split, addressed by the split's own row indices."""

    def __init__(self, cached: CachedFeatures, split_rows: np.ndarray, lengths: np.ndarray):
        self.cached = cached
        self.split_rows = np.asarray(split_rows)
        self.lengths = lengths  # of the whole split

    def __len__(self) -> int:
        return len(self.lengths)

    def rows(self, idx: np.ndarray) -> np.ndarray:
        where = np.searchsorted(self.split_rows, idx)
        if not np.array_equal(self.split_rows[np.minimum(where, len(self.split_rows) - 1)], idx):
            raise IndexError("rows outside the cached subset")
        return self.cached.rows(where)


def cache_rows(streamed: StreamedFeatures, split_rows: np.ndarray, cache_dir: Path, split: str,
               encoder_identity: str, progress: Progress) -> SubsetFeatures:
    """Cache the features of some rows of a streamed split (e.g. the selected pseudo-labeled rows)."""
    split_rows = np.unique(np.asarray(split_rows))
    tokens = streamed.tokens.take(split_rows)
    digest = hashlib.sha256(encoder_identity.encode() + tokens.input_ids.tobytes() + split_rows.tobytes())
    folder = Path(cache_dir) / f"{split}-rows-{digest.hexdigest()[:20]}"
    cached = cached_or_none(folder, progress)
    if cached is None:
        meta = {"split": split, "encoder": encoder_identity, "rows": len(split_rows), "entries": len(split_rows),
                "max_len": int(tokens.input_ids.shape[1]), "hidden_size": streamed.encoder.hidden_size,
                "subset": True}
        with computing(folder, "pseudo run", lambda holder: progress.note(
                f"{split}: {holder} is caching the same rows ({folder}): waiting for it")):
            cached = cached_or_none(folder, progress) or encode_to_cache(folder, tokens, streamed.encoder, meta,
                                                                         progress, f"encode {split} (selected)")
    return SubsetFeatures(cached, split_rows, streamed.lengths)


def encode_to_cache(
    folder: Path,
    tokens: Tokens,
    encoder,
    meta: dict,
    progress: Progress,
    task: str,
    index: np.ndarray | None = None,
) -> CachedFeatures:
    """Run the encoder over `tokens` into `folder` (resuming a partial entry) and mark it DONE.

    `index` maps the split's rows to the rows of `tokens` (distinct texts); None: one to one.
    """
    n, max_len = tokens.input_ids.shape
    hidden = encoder.hidden_size
    need = n * max_len * hidden * 2
    folder.mkdir(parents=True, exist_ok=True)
    state_path = folder / "progress.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    features_path = folder / "features.npy"
    if state.get("shape") == [n, max_len, hidden] and features_path.is_file():
        done = int(state.get("rows_done", 0))
    else:
        free = shutil.disk_usage(folder).free
        if need > free:
            raise PseudoError(
                f"{folder}: the feature cache needs {human_bytes(need)} but only {human_bytes(free)} is free "
                f"(free space, or stream this split instead of caching it)"
            )
        with naming(features_path):
            created = np.lib.format.open_memmap(features_path, mode="w+", dtype=np.float16,
                                                shape=(n, max_len, hidden))
        del created  # the header and a file of full size; rows are written with file writes below
        atomic_write_npy(folder / "lengths.npy", tokens.lengths)
        done = 0
        atomic_write_json(state_path, {"shape": [n, max_len, hidden], "rows_done": 0})
    offset = np.load(features_path, mmap_mode="r", allow_pickle=False).offset
    progress.start(task, n)
    progress.advance(task, done)

    def advance(rows: int) -> None:
        progress.advance(task, rows)

    ranges = getattr(encoder, "encode_ranges", None)  # an encoder spread over workers (--executor ray)
    finished = (ranges or partial(_encode_here, encoder))(features_path, offset, tokens, done, advance)
    ended = {}  # start -> stop of ranges written and fsynced, beyond the rows done in order
    with naming(features_path):
        for start, stop in finished:
            ended[start] = stop
            while done in ended:  # what a resume may skip: the rows finished in order from the first
                done = ended.pop(done)
            atomic_write_json(state_path, {"shape": [n, max_len, hidden], "rows_done": done})
    progress.finish(task)
    if index is not None:
        atomic_write_npy(folder / "index.npy", np.asarray(index, np.int64))
    atomic_write_json(folder / "meta.json", meta)
    mark_done(folder)  # last, after fsync: an entry without it is not finished
    return CachedFeatures(folder)


def encode_rows(encoder, tokens: Tokens, features_path: Path, offset: int, start: int,
                advance: Callable[[int], None] = lambda rows: None) -> None:
    """Write the features of `tokens` as rows `start`... of the cache's features.npy, ENCODE_BATCH at a time,
    then fsync. File writes, not a writable memory map: a map's written pages stay in resident memory.
    Batches start at the same rows wherever the rows are cut into ranges of whole batches, so the numbers
    do not depend on the cut."""
    n, max_len = tokens.input_ids.shape
    row_bytes = max_len * encoder.hidden_size * 2
    with open(features_path, "r+b") as f:
        for first in range(0, n, ENCODE_BATCH):
            part = slice(first, first + ENCODE_BATCH)
            feats = encoder(tokens.input_ids[part], tokens.attention_mask[part])
            f.seek(offset + (start + first) * row_bytes)
            f.write(np.ascontiguousarray(feats, dtype=np.float16).tobytes())
            advance(len(feats))
        f.flush()
        os.fsync(f.fileno())


def _encode_here(encoder, features_path: Path, offset: int, tokens: Tokens, done: int, advance):
    """Encode the rows from `done` on in this process, yielding (start, stop) every _FLUSH_EVERY batches,
    each fsynced, so an interrupted pass resumes near where it stopped."""
    n, step = len(tokens), ENCODE_BATCH * _FLUSH_EVERY
    for start in range(done, n, step):
        stop = min(n, start + step)
        encode_rows(encoder, tokens.take(slice(start, stop)), features_path, offset, start, advance)
        yield start, stop


def cache_folder(cache_dir: Path, split: str, encoder_identity: str, max_len: int, texts: list[str]) -> Path:
    return Path(cache_dir) / f"{split}-{cache_key(encoder_identity, max_len, texts)}"


def damage(folder: Path) -> str | None:
    """Why a finished cache entry cannot be read as written (a file missing, truncated or of another
    shape than its meta.json says), or None if it is whole."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        features = np.load(folder / "features.npy", mmap_mode="r", allow_pickle=False)
        lengths = np.load(folder / "lengths.npy", allow_pickle=False)
        entries, rows = int(meta["entries"]), int(meta["rows"])
        if features.shape != (entries, int(meta["max_len"]), int(meta["hidden_size"])) or len(lengths) != entries:
            return f"features.npy {features.shape} / lengths.npy {lengths.shape} do not match meta.json"
        if entries != rows or (folder / "index.npy").exists():
            index = np.load(folder / "index.npy", allow_pickle=False)
            if len(index) != rows or (len(index) and (index.min() < 0 or index.max() >= entries)):
                return f"index.npy has {len(index)} rows for {rows}"
    except (OSError, ValueError, KeyError) as exc:  # missing file, truncated array ("mmap length ..."), bad JSON
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return None


def cached_or_none(folder: Path, progress: Progress | None = None) -> CachedFeatures | None:
    """The finished entry in `folder`, or None if there is none; a damaged one is noted and cleared
    for recomputing (its features come from the encoder again)."""
    if not (folder / "DONE").is_file():
        return None
    reason = damage(folder)
    if reason is None:
        return CachedFeatures(folder)
    if progress is not None:
        progress.note(f"{folder}: damaged cache entry ({reason}); recomputing it")
    for name in ("DONE", "progress.json", "features.npy", "lengths.npy", "index.npy"):
        (folder / name).unlink(missing_ok=True)
    return None


def distinct(texts: list[str]) -> tuple[list[str], np.ndarray]:
    """(distinct texts in first-seen order, index of each row's text among them)."""
    position: dict[str, int] = {}
    index = np.fromiter((position.setdefault(t, len(position)) for t in texts), np.int64, len(texts))
    return list(position), index


def features_for(
    split: str,
    texts: list[str],
    *,
    cache_dir: Path,
    encoder_identity: str,
    max_len: int,
    tokenize: Callable[[list[str]], Tokens],
    encoder: Callable[[], object],
    stream: bool,
    progress: Progress,
):
    """The features of one split: from the cache, computed into it once per distinct text, or streamed.

    `tokenize` and `encoder` are called only when needed, so a fully cached split loads neither
    the tokenizer nor the encoder.
    """
    if stream:
        return StreamedFeatures(tokenize(texts), encoder())
    folder = cache_folder(cache_dir, split, encoder_identity, max_len, texts)
    cached = cached_or_none(folder, progress)
    if cached is None:  # computed under the entry's lock: runs beside this one share the cache
        with computing(folder, "pseudo run", lambda holder: progress.note(
                f"{split}: {holder} is caching the same features ({folder}): waiting for it")):
            cached = cached_or_none(folder, progress) or _encode_split(split, texts, folder, encoder_identity,
                                                                       max_len, tokenize, encoder, progress)
    else:
        progress.note(f"{split}: reusing cached features {folder}")
    return cached


def _encode_split(split, texts, folder, encoder_identity, max_len, tokenize, encoder, progress) -> CachedFeatures:
    enc = encoder()
    unique, index = distinct(texts)
    toks = tokenize(unique)
    n = len(unique)
    repeated = f" ({len(texts) - n} repeated texts share an entry)" if n < len(texts) else ""
    progress.note(f"{split}: caching features of {n} posts{repeated}, "
                  f"{human_bytes(n * max_len * enc.hidden_size * 2)} in {folder}")
    meta = {"split": split, "encoder": encoder_identity, "max_len": max_len, "rows": len(texts), "entries": n,
            "hidden_size": enc.hidden_size, "texts_sha256": texts_hash(texts), "dtype": "float16"}
    return encode_to_cache(folder, toks, enc, meta, progress, f"encode {split}", index=index)

"""Frozen-encoder features, computed once per text and kept on disk (float16, memory-mapped).

A cache entry is keyed by the encoder's content hash, the maximum length and the texts, so a
later run over the same files reuses it and a changed file or encoder never does. An entry is
written in chunks with its progress recorded, so an interrupted encoding pass resumes where it
stopped; `DONE` is written last. A split may instead be streamed: its features are recomputed
batch by batch whenever they are needed (one encoder pass per text per use, no disk).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from .errors import PseudoError
from .progress import Progress
from .store import atomic_write_json
from .tokenize import Tokens

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
    """Features of one split, read from the memory-mapped cache in row batches."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.features = np.load(folder / "features.npy", mmap_mode="r", allow_pickle=False)
        self.lengths = np.load(folder / "lengths.npy", allow_pickle=False)

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.features.shape)

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """float32 features of the given rows (sorted reads are fastest; order is kept)."""
        idx = np.asarray(idx)
        order = np.argsort(idx, kind="stable")
        out = np.empty((len(idx),) + self.features.shape[1:], np.float32)
        out[order] = self.features[idx[order]]
        return out

    def batches(self, batch_size: int, idx: np.ndarray | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        idx = np.arange(len(self)) if idx is None else np.asarray(idx)
        for start in range(0, len(idx), batch_size):
            part = idx[start:start + batch_size]
            yield part, self.rows(part)


class StreamedFeatures:
    """Features recomputed from tokens batch by batch: no disk, one encoder pass per use."""

    def __init__(self, tokens: Tokens, encoder):
        self.tokens = tokens
        self.encoder = encoder
        self.lengths = tokens.lengths

    def __len__(self) -> int:
        return len(self.tokens)

    def batches(self, batch_size: int, idx: np.ndarray | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        idx = np.arange(len(self)) if idx is None else np.asarray(idx)
        step = min(batch_size, ENCODE_BATCH)
        for start in range(0, len(idx), step):
            part = idx[start:start + step]
            yield part, self.encoder(self.tokens.input_ids[part], self.tokens.attention_mask[part])


def encode_to_cache(
    folder: Path,
    tokens: Tokens,
    encoder,
    meta: dict,
    progress: Progress,
    task: str,
) -> CachedFeatures:
    """Run the encoder over `tokens` into `folder` (resuming a partial entry) and mark it DONE."""
    n, max_len = tokens.input_ids.shape
    hidden = encoder.hidden_size
    need = n * max_len * hidden * 2
    folder.mkdir(parents=True, exist_ok=True)
    state_path = folder / "progress.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    features_path = folder / "features.npy"
    if state.get("shape") == [n, max_len, hidden] and features_path.is_file():
        out = np.load(features_path, mmap_mode="r+", allow_pickle=False)
        done = int(state.get("rows_done", 0))
    else:
        free = shutil.disk_usage(folder).free
        if need > free:
            raise PseudoError(
                f"{folder}: the feature cache needs {human_bytes(need)} but only {human_bytes(free)} is free "
                f"(free space, or stream this split instead of caching it)"
            )
        out = np.lib.format.open_memmap(features_path, mode="w+", dtype=np.float16, shape=(n, max_len, hidden))
        np.save(folder / "lengths.npy", tokens.lengths, allow_pickle=False)
        done = 0
        atomic_write_json(state_path, {"shape": [n, max_len, hidden], "rows_done": 0})
    progress.start(task, n)
    progress.advance(task, done)
    batches = 0
    for start in range(done, n, ENCODE_BATCH):
        stop = min(n, start + ENCODE_BATCH)
        out[start:stop] = encoder(tokens.input_ids[start:stop], tokens.attention_mask[start:stop])
        progress.advance(task, stop - start)
        batches += 1
        if batches % _FLUSH_EVERY == 0 or stop == n:
            out.flush()
            atomic_write_json(state_path, {"shape": [n, max_len, hidden], "rows_done": stop})
    progress.finish(task)
    del out
    atomic_write_json(folder / "meta.json", meta)
    (folder / "DONE").write_text("ok\n")
    return CachedFeatures(folder)


def cache_folder(cache_dir: Path, split: str, encoder_identity: str, max_len: int, texts: list[str]) -> Path:
    return Path(cache_dir) / f"{split}-{cache_key(encoder_identity, max_len, texts)}"


def cached_or_none(folder: Path) -> CachedFeatures | None:
    return CachedFeatures(folder) if (folder / "DONE").is_file() else None


def features_for(
    split: str,
    texts: list[str],
    *,
    cache_dir: Path,
    encoder_identity: str,
    max_len: int,
    tokens: Callable[[], Tokens],
    encoder: Callable[[], object],
    stream: bool,
    progress: Progress,
):
    """The features of one split: from the cache, computed into it once, or streamed.

    `tokens` and `encoder` are called only when needed, so a fully cached split loads neither
    the tokenizer nor the encoder.
    """
    if stream:
        return StreamedFeatures(tokens(), encoder())
    folder = cache_folder(cache_dir, split, encoder_identity, max_len, texts)
    cached = cached_or_none(folder)
    if cached is not None:
        progress.note(f"{split}: reusing cached features {folder}")
        return cached
    enc = encoder()
    toks = tokens()
    n = len(texts)
    progress.note(f"{split}: caching features of {n} posts, "
                  f"{human_bytes(n * max_len * enc.hidden_size * 2)} in {folder}")
    meta = {"split": split, "encoder": encoder_identity, "max_len": max_len, "rows": n,
            "hidden_size": enc.hidden_size, "texts_sha256": texts_hash(texts), "dtype": "float16"}
    return encode_to_cache(folder, toks, enc, meta, progress, f"encode {split}")

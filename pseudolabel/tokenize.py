"""Batch WordPiece tokenization to a fixed length, as the recipe feeds the encoder."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import PseudoError
from .progress import Progress

DEFAULT_MAX_LEN = 140
_CHUNK = 4096


@dataclass
class Tokens:
    input_ids: np.ndarray  # (N, max_len) int32, padded with the pad id
    attention_mask: np.ndarray  # (N, max_len) int8, 1 on real tokens

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> np.ndarray:
        return self.attention_mask.sum(axis=1).astype(np.int32)

    def take(self, rows: np.ndarray | slice) -> "Tokens":
        return Tokens(self.input_ids[rows], self.attention_mask[rows])


def tokenize(texts: list[str], tokenizer, max_len: int = DEFAULT_MAX_LEN, progress: Progress | None = None,
             task: str = "tokenize") -> Tokens:
    """Encode `texts` in batches of the fast tokenizer (never one call per row)."""
    if max_len < 8:
        raise PseudoError(f"max_len must be >= 8, got {max_len}")
    progress = progress or Progress()
    ids = np.empty((len(texts), max_len), np.int32)
    mask = np.empty((len(texts), max_len), np.int8)
    progress.start(task, len(texts))
    for start in range(0, len(texts), _CHUNK):
        chunk = texts[start:start + _CHUNK]
        enc = tokenizer(chunk, max_length=max_len, padding="max_length", truncation=True,
                        return_token_type_ids=False, return_attention_mask=True, return_tensors="np")
        ids[start:start + len(chunk)] = enc["input_ids"]
        mask[start:start + len(chunk)] = enc["attention_mask"]
        progress.advance(task, len(chunk))
    progress.finish(task)
    return Tokens(ids, mask)

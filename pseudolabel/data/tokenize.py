"""Batch WordPiece tokenization to a fixed length, as the recipe feeds the encoder.

Two ways, the same ids: posts are cut into segments at whitespace and at the characters BERT's
pre-tokenizer always isolates (Chinese characters, punctuation); each distinct segment is tokenized
once by the fast (Rust) tokenizer and remembered, and a post's ids are its segments' ids joined.
Weibo posts repeat a few thousand characters and words, so almost every segment is a dictionary
hit. Which characters isolate is asked of the tokenizer itself, one character at a time, not assumed.
Posts that contain a special token's text, and tokenizers that are not BERT's WordPiece pipeline,
go through the fast tokenizer whole.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import chain

import numpy as np

from ..core.errors import PseudoError
from ..core.progress import Progress

DEFAULT_MAX_LEN = 140
_CHUNK = 4096
_PROBE = "a"  # a word character for asking how the tokenizer treats a character between two of them


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


class SegmentTokenizer:
    """Tokenizes posts by joining the remembered ids of their segments (see the module docstring)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.backend = tokenizer.backend_tokenizer
        self.cls, self.sep, self.pad = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
        self.isolating: set[str] = set()  # characters the pre-tokenizer always makes their own word
        self.spaces: set[str] = set()  # characters it splits at and drops
        self.seen: set[str] = set()
        self.ids: dict[str, list[int]] = {}  # segment -> its WordPiece ids
        self.pattern = re.compile(r"\S+")  # until the first characters are learned (all-empty posts)
        specials = sorted({str(t) for t in tokenizer.all_special_tokens} | set(tokenizer.get_added_vocab()), key=len)
        self.specials = re.compile("|".join(re.escape(s) for s in reversed(specials)), re.IGNORECASE)

    @staticmethod
    def applies_to(tokenizer) -> bool:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            return False
        kinds = (type(backend.normalizer).__name__, type(backend.pre_tokenizer).__name__, type(backend.model).__name__)
        return kinds == ("BertNormalizer", "BertPreTokenizer", "WordPiece")

    def _learn_characters(self, texts: list[str]) -> None:
        new = sorted(set(chain.from_iterable(texts)) - self.seen)
        if not new:
            return
        self.seen.update(new)
        words = [self.backend.pre_tokenizer.pre_tokenize_str(self.backend.normalizer.normalize_str(_PROBE + c + _PROBE))
                 for c in new]
        for c, pieces in zip(new, words):
            if len(pieces) == 3:
                self.isolating.add(c)
            elif len(pieces) == 2:
                self.spaces.add(c)
        self.pattern = re.compile(self._character_class(self.isolating) + "|"
                                  + "[^" + _escape(self.isolating | self.spaces) + "]+")

    @staticmethod
    def _character_class(chars: set[str]) -> str:
        return "[" + _escape(chars) + "]" if chars else "(?!)"

    def _learn_segments(self, segments: set[str]) -> None:
        new = [s for s in segments if s not in self.ids]
        if new:
            # the wrapper sets padding and truncation on the shared backend as each of its calls needs
            self.backend.no_padding()
            self.backend.no_truncation()
            for segment, enc in zip(new, self.backend.encode_batch(new, add_special_tokens=False)):
                self.ids[segment] = enc.ids

    def __call__(self, texts: list[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
        ids = np.full((len(texts), max_len), self.pad, np.int32)
        mask = np.zeros((len(texts), max_len), np.int8)
        whole = [i for i, text in enumerate(texts) if self.specials.search(text)]
        if whole:
            enc = self.tokenizer([texts[i] for i in whole], max_length=max_len, padding="max_length", truncation=True,
                                 return_token_type_ids=False, return_tensors="np")
            ids[whole], mask[whole] = enc["input_ids"], enc["attention_mask"]
        self._learn_characters(texts)
        split = [self.pattern.findall(text) for text in texts]
        self._learn_segments(set(chain.from_iterable(split)))
        skip = set(whole)
        known = self.ids
        for row, segments in enumerate(split):
            if row in skip:
                continue
            body = list(chain.from_iterable(known[s] for s in segments))[:max_len - 2]
            n = len(body) + 2
            ids[row, :n] = [self.cls, *body, self.sep]
            mask[row, :n] = 1
        return ids, mask


def _escape(chars: set[str]) -> str:
    return "".join(re.escape(c) for c in sorted(chars))  # escapes "-", "]", "^" and "\\" too


SEGMENTS_KEPT = 500_000  # remembered segments beyond which a long stream starts afresh


def forget_segments(tokenizer, keep: int = SEGMENTS_KEPT) -> None:
    """Drop what `tokenize` remembered for `tokenizer` once it holds more than `keep` segments, so a
    stream of any length tokenizes in bounded memory (the ids are the same either way)."""
    segmenter = getattr(tokenizer, "_pseudo_segments", None)
    if segmenter is not None and len(segmenter.ids) > keep:
        tokenizer._pseudo_segments = None


def tokenize(texts: list[str], tokenizer, max_len: int = DEFAULT_MAX_LEN, progress: Progress | None = None,
             task: str = "tokenize") -> Tokens:
    """Encode `texts` in batches (never one call per row); BERT WordPiece tokenizers by segments."""
    if max_len < 8:
        raise PseudoError(f"max_len must be >= 8, got {max_len}")
    progress = progress or Progress()
    segmenter = None
    if SegmentTokenizer.applies_to(tokenizer):
        segmenter = getattr(tokenizer, "_pseudo_segments", None)  # what it learned lives with the tokenizer
        if segmenter is None:
            segmenter = tokenizer._pseudo_segments = SegmentTokenizer(tokenizer)
    ids = np.empty((len(texts), max_len), np.int32)
    mask = np.empty((len(texts), max_len), np.int8)
    progress.start(task, len(texts))
    for start in range(0, len(texts), _CHUNK):
        chunk = texts[start:start + _CHUNK]
        if segmenter is not None:
            ids[start:start + len(chunk)], mask[start:start + len(chunk)] = segmenter(chunk, max_len)
        else:
            enc = tokenizer(chunk, max_length=max_len, padding="max_length", truncation=True,
                            return_token_type_ids=False, return_attention_mask=True, return_tensors="np")
            ids[start:start + len(chunk)] = enc["input_ids"]
            mask[start:start + len(chunk)] = enc["attention_mask"]
        progress.advance(task, len(chunk))
    progress.finish(task)
    return Tokens(ids, mask)

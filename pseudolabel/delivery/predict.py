"""Scoring new posts with what a run delivered: `load_model(path).predict_proba(texts)` and
`predict_files`, which streams CSV files of any size through it.

A round that fine-tuned the encoder (`--student finetune`, `--recipe finetune`) predicts with its fold
models, each its own encoder and classifier, averaged.

The model reproduces how the run scored its own test file: the encoder's features (rounded to
float16 where the run cached them), every fold head of each delivered round, their mean per round, the
rounds' mean (`--deliver mean`), and the blend with the co-teacher's refit text model when a blend was
delivered. A run made with
`--dynamic-padding` scored a file in chunks of PREDICT_CHUNK posts sorted by length, each cut to
its longest post; that cut changes a post's prediction (padding runs through the BiGRU), so each
file's lengths are read first and every post gets the cut the run would have given it.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..data.batching import padded_length
from ..core.constants import LABEL_VALUES, N_CLASSES
from ..rounds.class_weights import weighted_labels
from ..rounds.cv import PREDICT_CHUNK  # the run's scoring chunks: the cuts of dynamic padding follow from them
from ..data.posts import EMPTY_TEXT, iter_posts
from .delivered import load_spec
from .spec import ModelSpec, Part
from ..core.errors import PseudoError
from ..encoding.features import ENCODE_BATCH
from ..core.progress import Progress
from ..core.store import naming, spreadsheet_safe, written_aside

FILE_CHUNK = 4096  # rows read, tokenized and scored at a time
FORMATS = ("csv", "jsonl")
COLUMNS = ["id", "y", "p_-1", "p_0", "p_1"]


def cuts(lengths: np.ndarray, max_len: int, dynamic: bool) -> np.ndarray:
    """The time steps each post is scored with: `max_len`, or with dynamic padding the cut of its
    chunk when the file's posts are sorted by length (stable) and taken PREDICT_CHUNK at a time."""
    lengths = np.asarray(lengths)
    if not dynamic:
        return np.full(len(lengths), max_len, np.int64)
    order = np.argsort(lengths, kind="stable")
    out = np.empty(len(lengths), np.int64)
    for start in range(0, len(order), PREDICT_CHUNK):
        part = order[start:start + PREDICT_CHUNK]
        out[part] = padded_length(lengths[part].max(), max_len)
    return out


class LoadedPart:
    """One part of a delivered output, loaded: its fold heads (on the shared frozen encoder's features) or its
    fine-tuned fold models."""

    def __init__(self, part: Part, spec: ModelSpec, files):
        from ..rounds.cv import FoldHeads
        from ..heads.model import Recipe, build_head

        self.part, self.heads, self.students = part, None, None
        if part.student == "finetune":  # fold models with their own encoders: no frozen features, no heads
            from ..heads.finetune import FineTune, FoldStudents

            self.students = FoldStudents(files, FineTune(**part.finetune), part.heads)
            return
        # built with free time steps: the weights are those of any length, each chunk is cut as the run cut it
        self.recipe = replace(Recipe.from_dict(part.recipe), dynamic_padding=True)
        model = build_head(spec.max_len, spec.hidden, self.recipe, compile=False)
        with naming(Path(part.heads[0])):
            self.heads = FoldHeads.load(model, part.heads)


class DeliveredModel:
    """A run's delivered output (or one round's fold heads) as a model of texts."""

    def __init__(self, spec: ModelSpec, progress: Progress | None = None):
        from ..encoding.encoder import FrozenEncoder, load_tokenizer, quiet_transformers

        quiet_transformers()
        self.spec = spec
        self.progress = progress or Progress()
        files = spec.encoder()
        missing = [str(p) for p in spec.heads if not Path(p).is_file()]
        if missing or not all(p.heads for p in spec.parts):
            raise PseudoError(f"{missing[0] if missing else spec.source}: fold head weights not found")
        self.tokenizer = load_tokenizer(files)
        self.text_model = spec.text_model(self.progress) if spec.weight > 0 else None
        self.encoder = None
        if any(p.student != "finetune" for p in spec.parts):
            self.encoder = FrozenEncoder(files)
            if self.encoder.hidden_size != spec.hidden:
                raise PseudoError(f"{files.folder}: hidden size {self.encoder.hidden_size}, the heads expect "
                                  f"{spec.hidden}")
        self.parts = [LoadedPart(p, spec, files) for p in spec.parts]

    @property
    def info(self) -> dict:
        """What predicts: rounds, blend weight, folds, encoder hash, and the model card's scores."""
        s = self.spec
        return {"source": str(s.source), "round": s.round, "rounds": s.rounds, "weight": s.weight,
                "folds": len(s.parts[-1].heads), "student": s.parts[-1].student, "what": s.describe(),
                "output": "blend" if s.weight > 0 else "head", "max_len": s.max_len,
                "dynamic_padding": s.dynamic_padding, "encoder_sha256": s.encoder_sha256, "card": s.card}

    # ---------------------------------------------------------------- texts

    def tokens(self, texts: list[str]):
        from ..data.tokenize import forget_segments, tokenize

        tokens = tokenize([t if t.strip() else EMPTY_TEXT for t in texts], self.tokenizer, self.spec.max_len)
        forget_segments(self.tokenizer)  # what the tokenizer remembers stays bounded over a long file
        return tokens

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """(N, 3) probabilities of -1, 0, 1 for `texts`, scored as the run scored a file of them."""
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, N_CLASSES), np.float32)
        tokens = self.tokens(texts)
        return self.blend(texts, self.head_probs(tokens, cuts(tokens.lengths, self.spec.max_len,
                                                              self.spec.dynamic_padding)))

    def predict(self, texts: list[str]) -> np.ndarray:
        """Labels -1, 0, 1 for `texts` (argmax(p · w) where the run delivered per-class weights w)."""
        return self.labels(self.predict_proba(texts)) - 1

    def labels(self, probs: np.ndarray) -> np.ndarray:
        """Class indices of (N, 3) probabilities, as the run labeled its submission."""
        return weighted_labels(probs, self.spec.class_weights)

    def head_probs(self, tokens, steps: np.ndarray) -> np.ndarray:
        """(N, 3): each part's fold mean, averaged over the parts (as the run averaged its rounds). A part
        scored with dynamic padding cuts each post to `steps[i]` time steps, another to the maximum length
        (fine-tuned fold models: batches cut to their longest post, as the round scored). The encoder's
        features are computed once per chunk for every part cut alike."""
        means = [p.students.predict(tokens) if p.students is not None else None for p in self.parts]
        for dynamic in (True, False):
            group = [i for i, p in enumerate(self.parts) if p.heads is not None and p.part.dynamic_padding == dynamic]
            if group:
                cut = steps if dynamic else np.full(len(tokens), self.spec.max_len)
                for i, mean in zip(group, self._fold_means([self.parts[i] for i in group], tokens, cut)):
                    means[i] = mean
        return np.mean(means, axis=0)

    def _fold_means(self, parts: list[LoadedPart], tokens, steps: np.ndarray) -> list[np.ndarray]:
        """(N, 3) per part: the mean of its fold heads, each post cut to `steps[i]`."""
        out = [np.zeros((len(p.heads), len(tokens), N_CLASSES), np.float32) for p in parts]
        for cut in np.unique(steps):
            rows = np.flatnonzero(steps == cut)
            for start in range(0, len(rows), PREDICT_CHUNK):
                chunk = rows[start:start + PREDICT_CHUNK]
                feats, mask = self._features(tokens, chunk, int(cut))
                for part, probs in zip(parts, out):
                    x = [feats, mask] if part.recipe.zero_padding else feats
                    for m in range(len(part.heads)):
                        probs[m, chunk] = part.heads.predict_on_batch(m, x)
        return [probs.mean(axis=0) for probs in out]

    def _features(self, tokens, rows: np.ndarray, cut: int):
        ids, mask = tokens.input_ids[rows, :cut], tokens.attention_mask[rows, :cut]
        feats = np.concatenate([self.encoder(ids[s:s + ENCODE_BATCH], mask[s:s + ENCODE_BATCH])
                                for s in range(0, len(rows), ENCODE_BATCH)])
        if self.spec.feature_dtype == "float16":  # the heads saw features cached as float16
            feats = feats.astype(np.float16).astype(np.float32)
        return feats, mask.astype(np.float32)[:, :, None]

    def blend(self, texts: list[str], head: np.ndarray) -> np.ndarray:
        """The delivered output: the heads' mean, blended with the text model as the run delivered it."""
        if self.text_model is None:
            return head
        w = self.spec.weight
        return ((1.0 - w) * head + w * self.text_model.predict_proba(texts)).astype(np.float32)

    # ---------------------------------------------------------------- files

    def predict_files(self, paths: list[str | Path], out: str | Path, fmt: str = "csv",
                      chunk_rows: int = FILE_CHUNK, raw: bool = False, scoring=None) -> dict:
        """Score every post of `paths` into `out` (id, y, p_-1, p_0, p_1), streaming: `chunk_rows`
        posts are read, tokenized and scored at a time. The file appears whole or not at all. CSV ids
        are made spreadsheet-safe (`spreadsheet_safe`) unless `raw`. `scoring(path, steps, chunk_rows)`
        yields (ids, probabilities) in the file's order: `score_file` here, or `ray_predict.RayScoring`."""
        if fmt not in FORMATS:
            raise PseudoError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        paths = [Path(p) for p in paths]
        plans = [self._plan(path, chunk_rows) for path in paths]
        total = sum(len(steps) for steps in plans)
        task = "predict"
        self.progress.start(task, total)
        counts = np.zeros(N_CLASSES, np.int64)
        out = Path(out)
        with written_aside(out) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
            writer = _writer(fh, fmt, raw)
            for path, steps in zip(paths, plans):
                for ids, probs in (scoring or self.score_file)(path, steps, chunk_rows):
                    labels = self.labels(probs)
                    writer(ids, labels, probs)
                    counts += np.bincount(labels, minlength=N_CLASSES)
                    self.progress.advance(task, len(ids))
            fh.flush()
        self.progress.finish(task)
        return {"rows": int(total), "out": str(out), "per_class": dict(zip(LABEL_VALUES, counts.tolist())),
                "files": [str(p) for p in paths], **self.info}

    def score_file(self, path: Path, steps: np.ndarray, chunk_rows: int):
        """(ids, probabilities) of a file's posts, `chunk_rows` at a time, each cut to `steps`."""
        done = 0
        for posts in iter_posts(path, chunk_rows):
            tokens = self.tokens(posts.texts)
            yield posts.ids, self.blend(posts.texts, self.head_probs(tokens, steps[done:done + len(posts)]))
            done += len(posts)

    def _plan(self, path: Path, chunk_rows: int) -> np.ndarray:
        """A first pass over a file: its posts' cuts (their lengths, with dynamic padding), its notes."""
        lengths = []
        replaced = empty = 0
        for posts in iter_posts(path, chunk_rows):
            replaced += posts.n_replaced
            empty += posts.n_empty_text
            if self.spec.dynamic_padding:
                lengths.append(self.tokens(posts.texts).lengths.astype(np.int16))
            else:
                lengths.append(np.zeros(len(posts), np.int16))
        if replaced:
            self.progress.note(f"{path.name}: {replaced} undecodable byte sequence(s) replaced")
        if empty:
            self.progress.note(f"{path.name}: {empty} empty text(s) scored as {EMPTY_TEXT!r}")
        return cuts(np.concatenate(lengths), self.spec.max_len, self.spec.dynamic_padding)


def _writer(fh, fmt: str, raw: bool = False):
    import csv

    if fmt == "csv":
        rows = csv.writer(fh, lineterminator="\n")
        rows.writerow(COLUMNS)
        cell = (lambda i: i) if raw else spreadsheet_safe

        def write(ids, labels, probs):
            rows.writerows([cell(i), int(y) - 1, *(f"{p:.8f}" for p in row)] for i, y, row in zip(ids, labels, probs))
        return write

    def write_jsonl(ids, labels, probs):
        fh.writelines(json.dumps(dict(zip(COLUMNS, [i, int(y) - 1, *(round(float(p), 8) for p in row)])),
                                 ensure_ascii=False) + "\n" for i, y, row in zip(ids, labels, probs))
    return write_jsonl


def load_model(path: str | Path, round: int | None = None, encoder: str | Path | None = None,
               progress: Progress | None = None) -> DeliveredModel:
    """The model a run delivered (a run directory), one of its rounds (`round`), or an exported
    model folder (`pseudo export`); `encoder`: the encoder's folder if it moved."""
    return DeliveredModel(load_spec(path, round, encoder), progress)

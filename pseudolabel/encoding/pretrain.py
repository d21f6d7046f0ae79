"""Masked-language-model training of a BERT encoder on unlabeled posts (`pseudo pretrain`).

Starts from a fresh config (layers, hidden size, heads, a vocab.txt) or continues an existing
encoder folder (`init`). Labels are never read: only the text column of the corpus files.

The schedule is a pure function of the seed and the step: the batch order (length-grouped),
the masks and the learning rate of step `s` are the same whether the run went straight through
or resumed from a checkpoint. The output folder is an encoder folder that `pseudo run --encoder`
loads (config.json, tf_model.h5, vocab.txt, tokenizer files), plus `pretrain.json`, the record
of how it was trained, and `checkpoint/`, the TensorFlow checkpoint (weights + optimizer state)
it resumes from.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..data.batching import length_grouped
from ..data.posts import EMPTY_TEXT, load_unlabeled
from .encoder import CARD_NAME, TOKENIZER_EXTRAS, find_encoder, load_tokenizer, quiet_transformers
from ..core.errors import PseudoError
from ..core.progress import Progress
from ..core.store import atomic_write_json, read_json

RECORD_NAME = "pretrain.json"
CHECKPOINT_DIR = "checkpoint"
_GROUP = 50  # length-grouped batching: sort chunks of this many batches by length


@dataclass(frozen=True)
class PretrainConfig:
    layers: int = 4
    hidden: int = 256
    heads: int = 4
    intermediate: int = 1024
    dropout: float = 0.1
    max_len: int = 128
    batch_size: int = 64
    steps: int = 2000
    learning_rate: float = 5e-4
    warmup: float = 0.06  # share of the steps with a linear warm-up; then linear decay to zero
    weight_decay: float = 0.01
    mask_prob: float = 0.15
    seed: int = 0
    eval_rows: int = 1000  # distinct posts held out for the MLM loss at checkpoints
    checkpoint_every: int = 200
    corpus_limit: int | None = None  # rows read per corpus file

    def check(self) -> None:
        positive = ("layers", "hidden", "heads", "intermediate", "batch_size", "steps", "checkpoint_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise PseudoError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.hidden % self.heads:
            raise PseudoError(f"--hidden ({self.hidden}) must be a multiple of --heads ({self.heads})")
        if not 8 <= self.max_len <= 512:
            raise PseudoError(f"--max-len must be in [8, 512], got {self.max_len}")
        if not 0.0 < self.mask_prob < 1.0:
            raise PseudoError(f"--mask-prob must be in (0, 1), got {self.mask_prob}")
        if not 0.0 <= self.warmup < 1.0:
            raise PseudoError(f"--warmup must be in [0, 1), got {self.warmup}")
        if self.learning_rate <= 0:
            raise PseudoError(f"--lr must be > 0, got {self.learning_rate}")
        if not 0.0 <= self.dropout < 1.0:
            raise PseudoError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.eval_rows < 0:
            raise PseudoError(f"--eval-rows must be >= 0, got {self.eval_rows}")


# ---------------------------------------------------------------- corpus and schedule


def load_corpus(paths: list[str], limit: int | None = None) -> tuple[list[str], list[dict]]:
    """Distinct non-empty texts of the corpus files (in first-seen order) and a description per file."""
    if not paths:
        raise PseudoError("pretrain needs at least one corpus CSV")
    seen: dict[str, None] = {}
    described = []
    for path in paths:
        posts = load_unlabeled(path, limit)
        before = len(seen)
        for text in posts.texts:
            text = text.strip()
            if text and text != EMPTY_TEXT:
                seen.setdefault(text, None)
        described.append({"path": str(path), "rows": len(posts), "new_distinct_texts": len(seen) - before,
                          "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest()})
    texts = list(seen)
    if len(texts) < 2:
        raise PseudoError(f"{paths[0]}: the corpus has {len(texts)} distinct non-empty text(s), need at least 2")
    return texts, described


def split_corpus(n: int, eval_rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Training and held-out row indices (held-out: at most a fifth of the corpus)."""
    order = np.random.default_rng([seed, 7]).permutation(n)
    held = min(eval_rows, n // 5)
    return np.sort(order[held:]), np.sort(order[:held])


def token_lists(texts: list[str], tokenizer, max_len: int) -> list[np.ndarray]:
    """Token ids per text ([CLS] ... [SEP], truncated to max_len), batched through the fast tokenizer."""
    out = []
    for start in range(0, len(texts), 4096):
        enc = tokenizer(texts[start:start + 4096], max_length=max_len, truncation=True,
                        return_token_type_ids=False, return_attention_mask=False)
        out.extend(np.asarray(ids, np.int32) for ids in enc["input_ids"])
    return out


def count_steps(corpus: list[str], epochs: float, batch_size: int, eval_rows: int, limit: int | None) -> int:
    """Steps for `epochs` passes over the training part of the corpus."""
    if epochs <= 0:
        raise PseudoError(f"--epochs must be > 0, got {epochs}")
    texts, _ = load_corpus(corpus, limit)
    n_train = len(texts) - min(eval_rows, len(texts) // 5)
    return max(1, int(math.ceil(epochs * math.ceil(n_train / batch_size))))


def epoch_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The batches of one epoch (length-grouped), a pure function of seed and epoch."""
    return length_grouped(lengths, batch_size, np.random.default_rng([seed, 11, epoch]), _GROUP)


def mask_batch(ids: list[np.ndarray], special: set[int], mask_id: int, vocab_size: int, mask_prob: float,
               rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Pad a batch and mask it: `mask_prob` of the real non-special tokens are predicted; of those
    80% become [MASK], 10% a random token, 10% stay. Returns inputs, attention mask, the flat
    positions of the predicted tokens and their original ids."""
    width = max(len(x) for x in ids)
    input_ids = np.zeros((len(ids), width), np.int32)
    attention = np.zeros((len(ids), width), np.int32)
    for i, x in enumerate(ids):
        input_ids[i, :len(x)] = x
        attention[i, :len(x)] = 1
    candidate = (attention == 1) & ~np.isin(input_ids, list(special))
    chosen = candidate & (rng.random(input_ids.shape) < mask_prob)
    if not chosen.any():  # always predict at least one token
        rows, cols = np.nonzero(candidate)
        pick = rng.integers(len(rows))
        chosen[rows[pick], cols[pick]] = True
    labels = input_ids[chosen].copy()
    draw = rng.random(len(labels))
    replaced = input_ids[chosen]
    replaced = np.where(draw < 0.8, mask_id, replaced)
    random_ids = rng.integers(0, vocab_size, len(labels), dtype=np.int32)
    replaced = np.where((draw >= 0.8) & (draw < 0.9), random_ids, replaced)
    input_ids[chosen] = replaced
    positions = np.flatnonzero(chosen.ravel()).astype(np.int32)
    return {"input_ids": input_ids, "attention_mask": attention, "positions": positions, "labels": labels}


class Batches:
    """The masked batches of a pretraining: training step `s`'s batch (length-grouped epoch order,
    masks) is a pure function of the seed and `s`; the held-out batches are masked the same way at
    every checkpoint."""

    def __init__(self, ids: list[np.ndarray], lengths: np.ndarray, train_rows: np.ndarray, eval_rows: np.ndarray,
                 config: PretrainConfig, special: set[int], mask_id: int, vocab_size: int):
        self.ids, self.lengths, self.train_rows, self.eval_rows = ids, lengths, train_rows, eval_rows
        self.config, self.special, self.mask_id, self.vocab_size = config, special, mask_id, vocab_size
        self.per_epoch = len(epoch_batches(lengths[train_rows], config.batch_size, config.seed, 0))
        self._epoch: tuple[int, list[np.ndarray]] | None = None

    def _mask(self, rows: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return mask_batch([self.ids[r] for r in rows], self.special, self.mask_id, self.vocab_size,
                          self.config.mask_prob, rng)

    def train(self, step: int) -> dict[str, np.ndarray]:
        epoch, index = divmod(step, self.per_epoch)
        if self._epoch is None or self._epoch[0] != epoch:
            self._epoch = (epoch, epoch_batches(self.lengths[self.train_rows], self.config.batch_size,
                                                self.config.seed, epoch))
        rows = self.train_rows[self._epoch[1][index]]
        return self._mask(rows, np.random.default_rng([self.config.seed, 17, step]))

    def held_out(self):
        rng = np.random.default_rng([self.config.seed, 13])
        order = self.eval_rows[np.argsort(self.lengths[self.eval_rows], kind="stable")]
        for i in range(0, len(order), self.config.batch_size):
            yield self._mask(order[i:i + self.config.batch_size], rng)


def learning_rate_at(step: int, config: PretrainConfig) -> float:
    """Linear warm-up over `warmup` of the steps, then linear decay to zero (step counts from 0)."""
    warm = max(1, int(round(config.warmup * config.steps)))
    if config.warmup > 0 and step < warm:
        return config.learning_rate * (step + 1) / warm
    rest = max(1, config.steps - (warm if config.warmup > 0 else 0))
    done = step - (warm if config.warmup > 0 else 0)
    return config.learning_rate * max(0.0, 1.0 - done / rest)


# ---------------------------------------------------------------- model


def _build_model(config: PretrainConfig, init, vocab_size: int):
    from ..core._tf import tf  # noqa: F401  (sets the Keras environment first)
    from transformers import BertConfig, TFBertForMaskedLM
    from transformers.utils import logging as hf_logging

    from .encoder import _hf_view

    if init is not None:
        bert_config = BertConfig.from_json_file(str(init.config))
        bert_config.hidden_dropout_prob = config.dropout
        bert_config.attention_probs_dropout_prob = config.dropout
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            with tempfile.TemporaryDirectory() as tmp:
                model = TFBertForMaskedLM.from_pretrained(_hf_view(init, Path(tmp)), config=bert_config,
                                                          local_files_only=True,
                                                          use_safetensors=init.weights.suffix == ".safetensors")
        except Exception as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise PseudoError(f"{init.weights}: cannot load encoder weights ({detail[:200]})") from None
        finally:
            hf_logging.set_verbosity(verbosity)
        return model
    bert_config = BertConfig(vocab_size=vocab_size, hidden_size=config.hidden, num_hidden_layers=config.layers,
                             num_attention_heads=config.heads, intermediate_size=config.intermediate,
                             max_position_embeddings=max(512, config.max_len), hidden_dropout_prob=config.dropout,
                             attention_probs_dropout_prob=config.dropout)
    model = TFBertForMaskedLM(bert_config)
    model(model.dummy_inputs, training=False)
    return model


def keras_schedule(config: PretrainConfig):
    """`learning_rate_at` as a Keras schedule, evaluated by the optimizer from its step counter."""
    from ..core._tf import keras, tf

    warm = float(max(1, int(round(config.warmup * config.steps)))) if config.warmup > 0 else 0.0
    peak, total = float(config.learning_rate), float(config.steps)

    class WarmupLinear(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            step = tf.cast(step, tf.float32)
            up = peak * (step + 1.0) / max(warm, 1.0)
            down = peak * tf.maximum(0.0, 1.0 - (step - warm) / max(total - warm, 1.0))
            return tf.where(step < warm, up, down)

        def get_config(self):
            return {"peak": peak, "warmup": warm, "total": total}

    return WarmupLinear()


class MaskedLM:
    """A TFBertForMaskedLM with a training step whose loss covers the masked positions only."""

    def __init__(self, config: PretrainConfig, init, vocab_size: int):
        from ..core._tf import keras, tf

        keras.utils.set_random_seed(config.seed)
        self.model = _build_model(config, init, vocab_size)
        self.optimizer = keras.optimizers.AdamW(learning_rate=keras_schedule(config), weight_decay=config.weight_decay,
                                                beta_1=0.9, beta_2=0.999, epsilon=1e-6, clipnorm=1.0)
        self.optimizer.exclude_from_weight_decay(var_names=["LayerNorm", "layer_norm", "bias"])
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer, step=self.step)
        hidden = int(self.model.config.hidden_size)
        signature = [tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None, None], tf.int32),
                     tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.int32)]

        def masked_loss(input_ids, attention_mask, positions, labels, training):
            out = self.model.bert(input_ids=input_ids, attention_mask=attention_mask,
                                  token_type_ids=tf.zeros_like(input_ids), training=training)
            picked = tf.gather(tf.reshape(out[0], [-1, hidden]), positions)[None]
            logits = self.model.mlm(sequence_output=picked, training=training)[0]
            return tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True))

        @tf.function(input_signature=signature)
        def train_step(input_ids, attention_mask, positions, labels):
            with tf.GradientTape() as tape:
                loss = masked_loss(input_ids, attention_mask, positions, labels, True)
            variables = self.model.trainable_variables
            self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
            self.step.assign_add(1)
            return loss

        @tf.function(input_signature=signature)
        def eval_step(input_ids, attention_mask, positions, labels):
            return masked_loss(input_ids, attention_mask, positions, labels, False)

        self.train_step, self.eval_step = train_step, eval_step

    def run(self, fn, batch: dict) -> float:
        return float(fn(batch["input_ids"], batch["attention_mask"], batch["positions"], batch["labels"]))


# ---------------------------------------------------------------- the run


def _resolve_vocab(vocab: str | None, init) -> Path:
    if init is not None:
        return init.vocab
    if vocab is None:
        raise PseudoError("--vocab is required without --init (a vocab.txt, e.g. models/bert-mini-random/vocab.txt)")
    path = Path(vocab)
    if path.is_dir():
        return find_encoder(path).vocab
    if not path.is_file():
        raise PseudoError(f"{path}: vocabulary file not found")
    return path


def _tokenizer_for(vocab: Path):
    from .encoder import EncoderFiles

    return load_tokenizer(EncoderFiles(vocab.parent, vocab, vocab, vocab, ""))


def _encoder_only(model):
    """A TFBertModel holding the MLM model's encoder weights (the MLM head is not part of the encoder
    folder; it stays in the checkpoint). Its pooler is unused by `pseudo` and left as initialised."""
    from transformers import TFBertModel

    base = TFBertModel(model.config)
    base(base.dummy_inputs, training=False)
    trained = {v.name.split("/", 1)[1]: v for v in model.bert.weights}
    for variable in base.bert.weights:
        key = variable.name.split("/", 1)[1]
        if "pooler" not in key:
            variable.assign(trained[key])
    return base


def _write_encoder(out: Path, lm: MaskedLM, vocab: Path, card: dict) -> None:
    """The encoder folder's files, each written to a temporary folder first and renamed into place."""
    with tempfile.TemporaryDirectory(dir=out, prefix=".save-") as tmp:
        tmp = Path(tmp)
        _encoder_only(lm.model).save_pretrained(str(tmp), safe_serialization=False)
        shutil.copyfile(vocab, tmp / "vocab.txt")
        for name in TOKENIZER_EXTRAS:
            if name != "tokenizer.json" and (vocab.parent / name).is_file():
                shutil.copyfile(vocab.parent / name, tmp / name)
        (tmp / CARD_NAME).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
        for path in tmp.iterdir():
            path.replace(out / path.name)


def _command() -> str:
    """The command line as typed (`pseudo pretrain ...` rather than the console script's full path)."""
    args = ["pseudo", *sys.argv[1:]] if Path(sys.argv[0]).name == "pseudo" else sys.argv
    return " ".join(args)


def _previous_record(out: Path, settings: dict, restart: bool) -> dict | None:
    """The record of the pretraining already in `out` (None: none, or --restart); other settings refuse."""
    record_path = out / RECORD_NAME
    previous = read_json(record_path) if record_path.is_file() else None
    if previous is not None and not restart:
        changed = [k for k in settings if previous.get("settings", {}).get(k) != settings[k]]
        changed += [f"config.{k}" for k in settings["config"]
                    if previous.get("settings", {}).get("config", {}).get(k) != settings["config"][k]]
        changed = [c for c in changed if c != "config"]
        if changed:
            raise PseudoError(f"{out}: holds a pretraining with other settings ({', '.join(changed)}); "
                              f"use another --out or --restart")
    if restart and (out / CHECKPOINT_DIR).exists():
        shutil.rmtree(out / CHECKPOINT_DIR)
        previous = None
    out.mkdir(parents=True, exist_ok=True)
    return previous


def _steps(lm, batches, config: PretrainConfig, record: dict, start_step: int, stop_after: int | None,
           evaluate, save, progress: Progress, task: str) -> int:
    """Training steps from `start_step` to the end (or `stop_after` of them), logging the loss every
    20 steps and evaluating and saving at each checkpoint; returns the step reached."""
    step, window = start_step, []
    while step < config.steps:
        if stop_after is not None and step - start_step >= stop_after:
            break
        loss = lm.run(lm.train_step, batches.train(step))
        if not math.isfinite(loss):
            raise PseudoError(f"pretraining diverged at step {step + 1} (loss {loss}); lower --lr")
        window.append(loss)
        step += 1
        progress.advance(task)
        at_checkpoint = step % config.checkpoint_every == 0 or step == config.steps
        if step % 20 == 0 or at_checkpoint:
            record["train_loss"].append({"step": step, "loss": float(np.mean(window))})
            progress.status(task, f"loss {np.mean(window):.3f} lr {learning_rate_at(step - 1, config):.1e}")
            window = []
        if at_checkpoint:
            held = evaluate()
            record["eval_loss"].append({"step": step, "loss": held})
            if held is not None:
                progress.note(f"step {step}/{config.steps}: training loss {record['train_loss'][-1]['loss']:.3f}, "
                              f"held-out MLM loss {held:.3f}")
            save(step)
    return step


def _settings(config: PretrainConfig, corpus: list[str], init_files, vocab_path: Path) -> dict:
    """What decides a pretraining run's weights (a resume needs the same)."""
    return {"config": asdict(config), "corpus": [str(p) for p in corpus],
            "init": str(init_files.folder) if init_files else None,
            "init_identity": init_files.identity if init_files else None,
            "vocab_sha256": hashlib.sha256(vocab_path.read_bytes()).hexdigest()}


def _held_out_loss(lm, batches) -> float:
    """The masked-language-model loss over the held-out posts, per masked batch row."""
    total, count = 0.0, 0
    for batch in batches.held_out():
        total += lm.run(lm.eval_step, batch) * len(batch["labels"])
        count += len(batch["labels"])
    return total / count


def pretrain(corpus: list[str], out: str | Path, config: PretrainConfig, *, vocab: str | None = None,
             init: str | None = None, restart: bool = False, progress: Progress | None = None,
             stop_after: int | None = None) -> dict:
    """Train (or resume) and return the record. `stop_after` ends the run after that many steps of
    this call without saving, as an interruption would (a resume starts at the last checkpoint)."""
    from ..core._tf import tf

    progress = progress or Progress()
    config.check()
    quiet_transformers()
    out = Path(out)
    init_files = find_encoder(init) if init else None
    vocab_path = _resolve_vocab(vocab, init_files)
    settings = _settings(config, corpus, init_files, vocab_path)
    record_path = out / RECORD_NAME
    previous = _previous_record(out, settings, restart)

    tokenizer = _tokenizer_for(vocab_path)
    texts, described = load_corpus(corpus, config.corpus_limit)
    train_rows, eval_rows = split_corpus(len(texts), config.eval_rows, config.seed)
    progress.note(f"corpus: {len(texts):,} distinct posts from {len(corpus)} file(s); {len(eval_rows):,} held out")
    ids = token_lists(texts, tokenizer, config.max_len)
    lengths = np.array([len(x) for x in ids])
    special = set(tokenizer.all_special_ids)
    vocab_size = len(tokenizer.get_vocab())
    mask_id = tokenizer.mask_token_id

    lm = MaskedLM(config, init_files, vocab_size)
    manager = tf.train.CheckpointManager(lm.checkpoint, str(out / CHECKPOINT_DIR), max_to_keep=1)
    record = previous if previous is not None else {
        "settings": settings, "command": _command(), "corpus": described, "n_texts": len(texts),
        "n_train": len(train_rows), "n_eval": len(eval_rows), "steps_done": 0, "seconds": 0.0,
        "train_loss": [], "eval_loss": []}
    if manager.latest_checkpoint:
        lm.checkpoint.restore(manager.latest_checkpoint).expect_partial()
        progress.note(f"resumed at step {int(lm.step.numpy())} of {config.steps} from {manager.latest_checkpoint}")
    start_step = int(lm.step.numpy())
    record["train_loss"] = [e for e in record["train_loss"] if e["step"] <= start_step]
    record["eval_loss"] = [e for e in record["eval_loss"] if e["step"] <= start_step]

    batches = Batches(ids, lengths, train_rows, eval_rows, config, special, mask_id, vocab_size)

    def evaluate() -> float | None:
        return _held_out_loss(lm, batches) if len(eval_rows) else None

    if start_step == 0 and not record["eval_loss"]:
        record["eval_loss"].append({"step": 0, "loss": evaluate()})
    task = "pretrain (MLM)"
    progress.start(task, config.steps)
    progress.advance(task, start_step)
    started = time.time()
    seconds_before = float(record.get("seconds", 0.0))

    def save(step: int) -> None:
        manager.save(checkpoint_number=step)
        record["steps_done"] = step
        record["seconds"] = seconds_before + time.time() - started
        card = {"weights": "pretrained (masked-language-model)", "steps": step,
                "layers": int(lm.model.config.num_hidden_layers), "hidden": int(lm.model.config.hidden_size),
                "corpus": [d["path"] for d in described], "record": RECORD_NAME}
        _write_encoder(out, lm, vocab_path, card)
        atomic_write_json(record_path, record)

    step = _steps(lm, batches, config, record, start_step, stop_after, evaluate, save, progress, task)
    progress.finish(task)
    if step == config.steps:
        record["finished"] = True
        atomic_write_json(record_path, record)
    return record

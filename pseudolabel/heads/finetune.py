"""A student that fine-tunes the encoder: `--student finetune` (rounds >= 1) and `--recipe finetune`
(round 0 as a supervised fine-tuned baseline).

Per fold, the encoder (all layers, or its top `layers`) and a light classifier ([CLS] -> dropout ->
softmax) train on the fold's human-labeled training part plus its pseudo-labeled pool rows (hard
labels or the teacher's soft targets, weighted), with noise on the student: the encoder's dropout
on while training, and optionally a share of the real tokens replaced by [MASK]. AdamW with linear
warm-up and decay; batches grouped by length and cut to their longest post; the epoch with the best
macro-F1 on a monitor slice of the training part is kept. The fold then scores its validation
part, the holdout, the test file and the pool with its own encoder, so these rounds run the
encoder again over every post (counted in the fold's record). Everything a round writes is what
every round writes (`cv.run_folds` collects the folds' predictions), so selection, delivery and
reports work unchanged. A round's fold of this student: student_fold.py.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from types import SimpleNamespace

import numpy as np

from ..data.batching import padded_length
from ..core.constants import N_CLASSES
from ..core.errors import PseudoError
from ..core.progress import Progress

PREDICT_BATCH = 128
STUDENTS = ("head", "finetune")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")  # Keras dtype policies of a fine-tuned encoder


@dataclass(frozen=True)
class FineTune:
    layers: int = 0  # the top N transformer layers train (0: all of them and the embeddings)
    epochs: int = 3
    learning_rate: float = 2e-4
    batch_size: int = 32
    warmup: float = 0.1  # share of the steps with linear warm-up, then linear decay to 0
    weight_decay: float = 0.01
    dropout: float = 0.1  # before the classifier; the encoder keeps its own config's dropout
    token_dropout: float = 0.0  # share of real tokens replaced by [MASK] while training
    monitor_share: float = 0.1  # share of the training part that chooses the best epoch (0: the last is kept)
    patience: int = 2  # epochs without a better monitor score before stopping
    # a Keras dtype policy: float32, or float32 weights with 16-bit compute (mixed_float16 scales the loss,
    # for GPUs with float16 units; mixed_bfloat16 for GPUs/CPUs with bfloat16 units); docs/gpu.md
    precision: str = "float32"

    @property
    def name(self) -> str:
        return (f"finetune(layers={self.layers or 'all'},epochs={self.epochs},lr={self.learning_rate:g}"
                + (f",tokdrop={self.token_dropout:g}" if self.token_dropout else "")
                + (f",{self.precision}" if self.precision != "float32" else "")
                + (f",monitor={self.monitor_share:g}" if self.monitor_share != FineTune.monitor_share else "") + ")")

    def to_dict(self) -> dict:
        return asdict(self)


class Student:
    """One fold's fine-tuned encoder and classifier, with its compiled training and predict steps."""

    def __init__(self, encoder_files, ft: FineTune, steps: int, seed: int):
        from ..core._tf import keras

        if ft.precision not in PRECISIONS:
            raise PseudoError(f"precision must be one of {', '.join(PRECISIONS)}, got {ft.precision!r}")
        keras.utils.set_random_seed(seed)
        before = keras.mixed_precision.global_policy()
        keras.mixed_precision.set_global_policy(ft.precision)  # layers take the policy they are built under
        try:
            self._build(encoder_files, ft, steps, seed)
        finally:
            keras.mixed_precision.set_global_policy(before)
        self.encoder_rows = 0  # posts through the encoder (training and scoring)

    def _build(self, encoder_files, ft: FineTune, steps: int, seed: int) -> None:
        from ..core._tf import keras, tf
        from ..encoding.encoder import load_bert
        from ..encoding.pretrain import keras_schedule

        self.bert = load_bert(encoder_files)
        self.bert.trainable = True
        if getattr(self.bert.bert, "pooler", None) is not None:  # the classifier reads [CLS] of the last layer
            self.bert.bert.pooler.trainable = False
        layers = self.bert.bert.encoder.layer
        if ft.layers:
            if ft.layers > len(layers):
                raise PseudoError(f"finetune-layers must be <= the encoder's {len(layers)} layers, got {ft.layers}")
            self.bert.bert.embeddings.trainable = False
            for layer in layers[:len(layers) - ft.layers]:
                layer.trainable = False
        ids = keras.Input((None,), dtype=tf.int32, name="input_ids")
        mask = keras.Input((None,), dtype=tf.int32, name="attention_mask")
        out = self.bert(input_ids=ids, attention_mask=mask, token_type_ids=tf.zeros_like(ids))
        x = keras.layers.Dropout(ft.dropout, seed=seed)(out.last_hidden_state[:, 0])
        probs = keras.layers.Dense(N_CLASSES, activation="softmax", name="classifier", dtype="float32")(x)
        self.model = keras.Model([ids, mask], probs, name="finetune_student")
        schedule = keras_schedule(SimpleNamespace(learning_rate=ft.learning_rate, warmup=ft.warmup, steps=steps))
        self.optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=ft.weight_decay, epsilon=1e-6,
                                                clipnorm=1.0)
        self.optimizer.exclude_from_weight_decay(var_names=["LayerNorm", "layer_norm", "bias"])
        scaled = ft.precision == "mixed_float16"  # float16 gradients underflow without loss scaling
        optimizer = keras.mixed_precision.LossScaleOptimizer(self.optimizer) if scaled else self.optimizer
        loss_fn = keras.losses.CategoricalCrossentropy()
        ids_spec, target_spec = tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None, N_CLASSES], tf.float32)

        batch_spec = [ids_spec, ids_spec, target_spec, tf.TensorSpec([None], tf.float32)]

        def loss(input_ids, attention_mask, targets, weights, training):
            """Weighted cross-entropy with (soft) targets: linear in them, the mean over the batch."""
            return loss_fn(targets, self.model([input_ids, attention_mask], training=training), sample_weight=weights)

        @tf.function(input_signature=batch_spec)
        def train_step(input_ids, attention_mask, targets, weights):
            with tf.GradientTape() as tape:
                value = loss(input_ids, attention_mask, targets, weights, True)
                if scaled:
                    scaled_value = optimizer.get_scaled_loss(value)
            variables = self.model.trainable_variables
            if scaled:
                gradients = optimizer.get_unscaled_gradients(tape.gradient(scaled_value, variables))
            else:
                gradients = tape.gradient(value, variables)
            optimizer.apply_gradients(zip(gradients, variables))
            return value

        @tf.function(input_signature=batch_spec)
        def loss_step(input_ids, attention_mask, targets, weights):
            return loss(input_ids, attention_mask, targets, weights, False)

        @tf.function(input_signature=[ids_spec, ids_spec])
        def predict_step(input_ids, attention_mask):
            return self.model([input_ids, attention_mask], training=False)

        self.train_step, self.loss_step, self.predict_step = train_step, loss_step, predict_step

    def train_on(self, ids, mask, targets, weights) -> float:
        self.encoder_rows += len(ids)
        return float(self.train_step(ids, mask.astype(np.int32), targets, weights))

    def predict(self, tokens, idx: np.ndarray, progress: Progress | None = None, task: str = "") -> np.ndarray:
        """(len(idx), 3): rows in order of length, batches cut to their longest post."""
        idx = np.asarray(idx)
        out = np.zeros((len(idx), N_CLASSES), np.float32)
        lengths = tokens.lengths[idx]
        order = np.argsort(lengths, kind="stable")
        if progress is not None:
            progress.start(task, len(idx))
        for start in range(0, len(idx), PREDICT_BATCH):
            at = order[start:start + PREDICT_BATCH]
            cut = padded_length(lengths[at].max(), tokens.input_ids.shape[1])
            rows = idx[at]
            out[at] = self.predict_step(tokens.input_ids[rows, :cut],
                                        tokens.attention_mask[rows, :cut].astype(np.int32)).numpy()
            self.encoder_rows += len(rows)
            if progress is not None:
                progress.advance(task, len(rows))
        if progress is not None:
            progress.finish(task)
        return out


class FoldStudents:
    """A fine-tuned round's fold models, to score new posts with (`pseudo predict`): one model, each
    fold's weights swapped in, the folds' probabilities averaged as the round averaged them."""

    def __init__(self, encoder_files, ft: FineTune, paths):
        self.student = Student(encoder_files, ft, steps=1, seed=0)
        self.weights = []
        for path in paths:
            self.student.model.load_weights(str(path))
            self.weights.append(self.student.model.get_weights())

    def __len__(self) -> int:
        return len(self.weights)

    def predict(self, tokens) -> np.ndarray:
        """(len(tokens), 3): the mean of the folds' probabilities."""
        idx = np.arange(len(tokens))
        out = np.zeros((len(self.weights), len(tokens), N_CLASSES), np.float32)
        for fold, weights in enumerate(self.weights):
            self.student.model.set_weights(weights)
            out[fold] = self.student.predict(tokens, idx)
        return out.mean(axis=0)


def drop_tokens(ids: np.ndarray, mask: np.ndarray, share: float, mask_id: int, rng: np.random.Generator):
    """`ids` with a share of the real tokens, [CLS] and [SEP] excepted, replaced by [MASK]."""
    if share <= 0:
        return ids
    lengths = mask.sum(axis=1)
    steps = np.arange(ids.shape[1])[None, :]
    inner = (steps >= 1) & (steps < lengths[:, None] - 1)
    return np.where(inner & (rng.random(ids.shape) < share), mask_id, ids).astype(ids.dtype)

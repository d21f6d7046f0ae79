"""The classifier head of the recipe (BiGRU -> Capsule -> MLP) and the recipes that configure it.

`seed` is the reference script exactly. `default` is the same architecture with the smallest
changes that make it learn on small data and frozen features (see the README's ablation):
each change is a field of `Recipe` and can be switched on its own.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import os
import re
import sys
from dataclasses import asdict, dataclass, fields, replace

import numpy as np

from ..core._tf import keras, tf
from ..data.posts import N_CLASSES
from ..core.errors import PseudoError
from .layers import Capsule, Standardize
from .losses import FocalLoss
from ..core.store import written_aside



@dataclass(frozen=True)
class Recipe:
    name: str = "seed"
    spatial_dropout: float = 0.2
    gru_units: int = 256
    gru_activation: str = "sigmoid"
    num_capsule: int = 10
    dim_capsule: int = 16
    routings: int = 3
    dense_units: tuple[int, int] = (1000, 500)
    dropout: float = 0.2
    bn_momentum: float = 0.99
    precise_bn: int = 0  # recompute BatchNorm statistics on this many training rows after each epoch (0: off)
    standardize: bool = False  # z-score features with training-fold statistics over real tokens
    zero_padding: bool = False  # set features at padding positions to zero (after standardising)
    dynamic_padding: bool = False  # cut each batch to its longest post (length-grouped batches); cached mode
    feature_noise: float = 0.0  # std of Gaussian noise on the (standardised) features while training
    token_dropout: float = 0.0  # share of token positions whose whole feature vector is zeroed while training
    learning_rate: float = 1e-3
    batch_size: int = 128
    epochs: int = 2
    min_steps: int = 0  # train at least this many batches (more epochs on small data)
    early_stopping: bool = False  # keep the epoch with the best macro-F1 on a monitor slice of the training part
    monitor_share: float = 0.1  # share of the training part held back to monitor early stopping
    patience: int = 3  # early stopping: epochs without a better monitor score before stopping
    loss: str = "focal"  # "focal" (the recipe's) or "crossentropy"
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0

    def to_dict(self) -> dict:
        out = asdict(self)
        out["dense_units"] = list(self.dense_units)
        for key, default in _ADDED_FIELDS.items():  # run directories made before these fields still resume
            if out[key] == default:
                del out[key]
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "Recipe":
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        if "dense_units" in data:
            data["dense_units"] = tuple(data["dense_units"])
        return cls(**data)

    def epochs_for(self, n_rows: int) -> int:
        """Epochs to run for `n_rows` training rows: `epochs`, or more to reach `min_steps` batches."""
        steps_per_epoch = max(1, -(-n_rows // self.batch_size))
        return max(self.epochs, -(-self.min_steps // steps_per_epoch))


# fields added after run directories existed: left out of a recipe's record at these values, so the record
# (and the run's hash) of a recipe that does not use them is what it was
_ADDED_FIELDS = {"token_dropout": 0.0}

RECIPES = {
    "seed": Recipe(),
    # chosen by benchmarks/recipe_ablation.py (see the README): the two fixes of the known trap, a smaller
    # step size, more epochs (and a step floor for small data) guarded by early stopping on a slice of the
    # training part
    "default": Recipe(name="default", standardize=True, spatial_dropout=0.0, bn_momentum=0.9, learning_rate=3e-4,
                      epochs=10, min_steps=100, early_stopping=True, precise_bn=2048),
}


def recipe(name: str, **overrides) -> Recipe:
    if name not in RECIPES:
        raise PseudoError(f"recipe must be one of {', '.join(RECIPES)}, got {name!r}")
    base = RECIPES[name]
    chosen = {k: v for k, v in overrides.items() if v is not None and getattr(base, k) != v}
    if not chosen:
        return base
    label = ",".join(f"{k}={v}" for k, v in sorted(chosen.items()))
    return replace(base, name=f"{name}({label})", **chosen)


# Seeds of the head's random layers at build time; every fold resets them (reset_random_layers).
_RANDOM_SEEDS = {"feature_noise": 1, "spatial_dropout": 2, "dropout": 3, "token_dropout": 4}


def head_layers(x, recipe: Recipe, mask=None, mc_dropout: bool = False):
    """Apply the head to a (B, T, H) feature tensor; returns the softmax output. With `mc_dropout` the
    dropout layers drop in inference too (MC dropout); BatchNorm and the feature noise stay in inference.

    The random layers draw from a `tf.random.Generator` each (state in a variable), not from
    stateful random ops: their masks then follow from the seed set by `reset_random_layers` and
    the step, however often the training function is traced, so one traced head serves every fold.
    """
    def rng(name):
        return {"seed": _RANDOM_SEEDS[name], "rng_type": "stateful"}

    drop = {"training": True} if mc_dropout else {}

    if recipe.standardize:
        x = Standardize(name="standardize")(x)
    if recipe.feature_noise > 0:
        x = keras.layers.GaussianNoise(recipe.feature_noise, name="feature_noise", **rng("feature_noise"))(x)
    if recipe.token_dropout > 0:  # word dropout on the features: one mask value per (post, position)
        x = keras.layers.Dropout(recipe.token_dropout, noise_shape=(None, None, 1), name="token_dropout",
                                 **rng("token_dropout"))(x, **drop)
    if recipe.zero_padding and mask is not None:
        x = keras.layers.Multiply(name="zero_padding")([x, mask])
    if recipe.spatial_dropout > 0:
        x = keras.layers.SpatialDropout1D(recipe.spatial_dropout, **rng("spatial_dropout"))(x, **drop)
    x = keras.layers.Bidirectional(
        keras.layers.GRU(recipe.gru_units, activation=recipe.gru_activation, return_sequences=True))(x)
    x = Capsule(recipe.num_capsule, recipe.dim_capsule, recipe.routings, share_weights=True)(x)
    x = keras.layers.Flatten()(x)
    first, second = recipe.dense_units
    x = keras.layers.Dense(first)(x)
    x = keras.layers.BatchNormalization(momentum=recipe.bn_momentum)(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Dropout(recipe.dropout, **rng("dropout"))(x, **drop)
    x = keras.layers.Dense(second)(x)
    x = keras.layers.BatchNormalization(momentum=recipe.bn_momentum)(x)
    x = keras.layers.ReLU()(x)
    return keras.layers.Dense(N_CLASSES, activation="softmax")(x)


def mc_parts(model):
    """(trunk, tail) of an MC-dropout head: the part before its first dropout layer, which gives the same
    output on every pass (inference: BatchNorm's statistics, no noise), and the part from that layer on,
    which samples. MC passes then run the trunk once a batch and only the tail each pass: with the default
    recipe the BiGRU, the capsule and the first dense layer once, the rest each pass. The tail shares the
    head's layers, so its dropout draws from the same streams (`reset_random_layers` on the head) and the
    passes are the whole head's, number for number. trunk is None where the first dropout takes an input of the head, or
    where what follows it needs another input (the token mask): the whole head is the tail."""
    first = next((layer for layer in model.layers if isinstance(layer, keras.layers.Dropout)), None)
    if first is None:
        return None, model
    cut = first.input
    if any(cut is t for t in model.inputs):
        return None, model
    try:
        tail = keras.Model(cut, model.output, name="head_tail")
    except ValueError:  # the graph from the cut to the output needs another of the head's inputs
        return None, model
    return keras.Model(model.inputs if len(model.inputs) > 1 else model.inputs[0], cut, name="head_trunk"), tail


def mc_sample(parts, x, passes: int) -> np.ndarray:
    """(passes, B, classes): `passes` MC-dropout passes over batch `x` through `mc_parts`' (trunk, tail)."""
    trunk, tail = parts
    shared = x if trunk is None else trunk.predict_on_batch(x)
    return np.stack([tail.predict_on_batch(shared) for _ in range(passes)])


def reset_random_layers(model, seed: int) -> None:
    """Restart the random stream of each of the head's random layers from `seed` (and its place in
    the model): the masks of a fold are then a function of its seed and step alone.

    Raises if a random layer keeps no `tf.random.Generator` where tf_keras 2.x keeps it: a reset
    that silently did nothing would let a reused head's folds differ from new heads'."""
    for index, layer in enumerate(model.layers):
        if not isinstance(layer, (keras.layers.Dropout, keras.layers.GaussianNoise)):
            continue
        generator = getattr(getattr(layer, "_random_generator", None), "_generator", None)
        if not hasattr(generator, "reset_from_seed"):
            raise RuntimeError(f"layer {layer.name!r} ({type(layer).__name__}) keeps no tf.random.Generator at "
                               f"_random_generator._generator in this tf_keras ({keras.__version__}); the folds' "
                               f"random streams cannot be reset: use the pinned tf_keras (DESIGN.md)")
        generator.reset_from_seed(seed * 64 + index)


def reset_optimizer(model) -> None:
    """Zero the optimizer's step count and slots, as a freshly compiled model has them."""
    for variable in model.optimizer.variables:
        variable.assign(tf.zeros_like(variable))


def trace_for_any_shape(model, train: bool = True) -> None:
    """Trace `model`'s predict function (and with `train` its training function) once, for inputs of any
    batch size and length. Keras traces a function for the shapes of its first call, again for the next
    shapes and only then for any shape (1-3 s a trace for this head, on every new model); length-grouped
    batches and a short last batch meet several shapes at once.

    The training trace runs one step on a one-post batch of zero weight: it moves the optimizer's step,
    the BatchNorm statistics and the random layers' streams, so the caller sets weights, optimizer and
    random layers afresh afterwards (as `TrainingHeads.fold_model` does for every fold)."""
    specs = [tf.TensorSpec([None] * (len(t.shape) - 1) + [t.shape[-1]], t.dtype) for t in model.inputs]
    x_spec = specs[0] if len(specs) == 1 else tuple(specs)  # as Keras passes one input, or several
    x = tf.nest.map_structure(lambda spec: np.zeros([1] * (len(spec.shape) - 1) + [spec.shape[-1]],
                                                    spec.dtype.as_numpy_dtype), x_spec)

    def once(element, signature):
        return iter(tf.data.Dataset.from_generator(lambda: iter([element]), output_signature=signature))

    model.make_predict_function()(once((x,), (x_spec,)))
    if train:
        y_spec, w_spec = tf.TensorSpec([None, N_CLASSES], tf.float32), tf.TensorSpec([None], tf.float32)
        model.make_train_function()(once((x, np.zeros((1, N_CLASSES), np.float32), np.zeros(1, np.float32)),
                                         (x_spec, y_spec, w_spec)))


LOSSES = ("focal", "crossentropy")


def compile_model(model, recipe: Recipe):
    if recipe.loss not in LOSSES:
        raise PseudoError(f"loss must be one of {', '.join(LOSSES)}, got {recipe.loss!r}")
    loss = (FocalLoss(recipe.focal_alpha, recipe.focal_gamma) if recipe.loss == "focal"
            else keras.losses.CategoricalCrossentropy())
    model.compile(optimizer=keras.optimizers.Adam(recipe.learning_rate), loss=loss)
    return model


def build_head(max_len: int, hidden: int, recipe: Recipe, compile: bool = True, mc_dropout: bool = False):
    """The head over cached features: inputs (B, T, H) float32 [and (B, T, 1) mask if zero_padding].

    Uncompiled (`compile=False`) for prediction only: saved weights load without the optimizer state.
    `mc_dropout`: its dropout on in inference (`head_layers`), to sample the head's uncertainty."""
    steps = None if recipe.dynamic_padding else max_len
    feats = keras.Input((steps, hidden), name="features")
    inputs = [feats]
    mask = None
    if recipe.zero_padding:
        mask = keras.Input((steps, 1), name="token_mask")
        inputs.append(mask)
    model = keras.Model(inputs if len(inputs) > 1 else feats, head_layers(feats, recipe, mask, mc_dropout), name="head")
    return compile_model(model, recipe) if compile else model


def save_head_weights(model, path) -> None:
    """The layers' weights only: the optimizer's state (two Adam slots per weight) is not needed to
    predict, and would make the file three times larger.

    HDF5's own write errors (a full disk among them) come as an OSError or RuntimeError whose text
    spans lines, and the file objects left behind report the same failure again when freed: they
    become one OSError naming `path` (with the errno HDF5 saw), after those objects are collected."""
    failure = None
    with quiet_finalizers():
        try:
            # the temporary name keeps `.weights.h5`: that suffix makes tf_keras write its weights-only format
            with written_aside(path, suffix=".weights.h5") as tmp:
                keras.Model(model.inputs, model.outputs).save_weights(str(tmp), overwrite=True)
        except (OSError, RuntimeError) as exc:
            failure = hdf5_error(exc, path)
        if failure is not None:
            gc.collect()  # the failed file's objects, while their reports are silenced
    if failure is not None:
        raise failure


def hdf5_error(exc: BaseException, path) -> OSError:
    """An HDF5 failure as one OSError naming `path`: the errno it reports, else its first line."""
    text = str(exc)
    found = re.search(r"errno = (\d+)", text)
    code = int(found.group(1)) if found else getattr(exc, "errno", None)
    if code:
        return OSError(code, os.strerror(code), str(path))
    return OSError(errno.EIO, (text.splitlines() or [type(exc).__name__])[0][:200], str(path))


@contextlib.contextmanager
def quiet_finalizers():
    """Objects freed inside (HDF5 files after a failed write) do not print their "Exception ignored"
    reports; the failure itself is raised as one error."""
    hooks = sys.unraisablehook, sys.excepthook  # h5py's finalizers report through both
    sys.unraisablehook, sys.excepthook = (lambda unraisable: None), (lambda *exc_info: None)
    try:
        yield
    finally:
        sys.unraisablehook, sys.excepthook = hooks


_ENCODER_ROWS = []


def faithful_encoder_rows() -> int:
    """Texts the in-graph encoder of faithful models has run over in this process (fit and predict)."""
    return int(_ENCODER_ROWS[0].numpy()) if _ENCODER_ROWS else 0


class CountRows(keras.layers.Layer):
    """Identity that counts the rows passing through it (the faithful model's encoder passes)."""

    def call(self, inputs):
        if not _ENCODER_ROWS:
            with tf.init_scope():
                _ENCODER_ROWS.append(tf.Variable(0, dtype=tf.int64, trainable=False))
        counted = _ENCODER_ROWS[0].assign_add(tf.cast(tf.shape(inputs)[0], tf.int64))
        with tf.control_dependencies([counted]):
            return tf.identity(inputs)


def build_faithful(bert, max_len: int, recipe: Recipe, compile: bool = True):
    """The reference script's graph: the frozen encoder inside the model, features = hidden_states[-2].

    The encoder's weights are frozen but it runs in the training call, so its dropout is active
    during fit, as in the script.
    """
    input_ids = keras.Input((max_len,), dtype=tf.int32, name="input_ids")
    attention_mask = keras.Input((max_len,), dtype=tf.int32, name="attention_mask")
    bert.trainable = False
    out = bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=tf.zeros_like(input_ids),
               output_hidden_states=True)
    feats = CountRows(name="count_encoder_rows")(out.hidden_states[-2])
    mask = None
    if recipe.zero_padding:
        mask = tf.cast(attention_mask, feats.dtype)[:, :, None]
    model = keras.Model([input_ids, attention_mask], head_layers(feats, recipe, mask), name="faithful")
    return compile_model(model, recipe) if compile else model


def set_standardization(model, mean: np.ndarray, std: np.ndarray) -> None:
    layer = model.get_layer("standardize")
    layer.set_weights([mean.astype(np.float32), std.astype(np.float32)])


class PreciseBatchNorm:
    """Sets each BatchNormalization layer's statistics to the exact mean and variance of its inputs
    in inference mode over given training rows ("precise BN").

    The running averages that BatchNorm keeps during training lag behind the weights; in this head
    the capsule outputs vary little between posts, the first BatchNorm divides by that small spread,
    and a lag of a fraction of it flips most predictions (measured: whole validation folds predicted
    as one class with high confidence while the training loss kept falling). The layers from the
    first BatchNorm on must form a chain, as in `head_layers`.
    """

    def __init__(self, model):
        layers = model.layers
        norms = [i for i, layer in enumerate(layers) if isinstance(layer, keras.layers.BatchNormalization)]
        self.tail = layers[norms[0]:norms[-1] + 1] if norms else []  # first BatchNorm .. last BatchNorm
        self.to_first = keras.Model(model.inputs, layers[norms[0]].input) if norms else None

    def update(self, batches) -> None:
        """`batches`: an iterable of model inputs (the rows to take the statistics over)."""
        if self.to_first is None:
            return
        acts = np.concatenate([self.to_first.predict_on_batch(x) for x in batches])
        for layer in self.tail:
            if isinstance(layer, keras.layers.BatchNormalization):
                gamma, beta, _, _ = layer.get_weights()
                layer.set_weights([gamma, beta, acts.mean(axis=0), acts.var(axis=0)])
            acts = layer(acts, training=False).numpy()

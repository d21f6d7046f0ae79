"""The Capsule layer against a direct numpy implementation of the recipe, serialisation, focal loss."""

import numpy as np
import pytest

from pseudolabel.core._tf import keras, tf
from pseudolabel.heads.layers import EPSILON, Capsule, Standardize
from pseudolabel.heads.losses import FocalLoss


def numpy_capsule(x, W, n_caps, d_caps, routings):
    """The reference routing written out with numpy loops over the batch."""
    out_all = []
    for sample in x:  # (T, D)
        u_hat = sample @ W[0]  # (T, n*d)
        u_hat = u_hat.reshape(len(sample), n_caps, d_caps).transpose(1, 0, 2)  # (n, T, d)
        b = np.zeros((n_caps, len(sample)))
        for i in range(routings):
            c = np.exp(b) / np.exp(b).sum(axis=0, keepdims=True)  # softmax over the capsule axis
            s = (c[:, :, None] * u_hat).sum(axis=1)  # (n, d)
            out = s / np.sqrt((s ** 2).sum(axis=-1, keepdims=True) + EPSILON)
            if i < routings - 1:
                b = (out[:, None, :] * u_hat).sum(axis=-1)  # (n, T)
        out_all.append(out)
    return np.stack(out_all)


@pytest.mark.parametrize("routings", [1, 3])
def test_capsule_routing_equals_numpy(routings):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 7, 12)).astype(np.float32)
    layer = Capsule(num_capsule=4, dim_capsule=5, routings=routings)
    got = layer(x).numpy()
    W = layer.get_weights()[0]
    want = numpy_capsule(x.astype(np.float64), W.astype(np.float64), 4, 5, routings)
    assert got.shape == (3, 4, 5)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # the script's squash makes every capsule a unit vector
    np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, rtol=1e-4)


def test_capsule_config_round_trip():
    layer = Capsule(num_capsule=6, dim_capsule=8, routings=2, name="caps")
    config = layer.get_config()
    clone = Capsule.from_config(config)
    assert clone.get_config() == config
    restored = keras.layers.deserialize(keras.layers.serialize(layer))
    assert isinstance(restored, Capsule) and restored.routings == 2 and restored.num_capsule == 6


def test_head_save_load_predictions(tmp_path):
    from pseudolabel.heads.model import RECIPES, build_head, set_standardization

    model = build_head(10, 16, RECIPES["default"])
    set_standardization(model, np.full(16, 0.5), np.full(16, 2.0))
    x = np.random.default_rng(1).normal(size=(4, 10, 16)).astype(np.float32)
    before = model.predict_on_batch(x)
    path = tmp_path / "head.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert any(isinstance(layer, Capsule) for layer in loaded.layers)
    assert any(isinstance(layer, Standardize) for layer in loaded.layers)
    np.testing.assert_allclose(loaded.predict_on_batch(x), before, rtol=1e-5, atol=1e-6)


def _script_focal(y_true, y_pred, alpha=0.25, gamma=2.0):
    """The reference script's loss, as it is written: y_true enters ce and the weight, max over classes."""
    y_pred = y_pred + 1e-7
    ce = -y_true * np.log(y_pred)
    weight = (1 - y_pred) ** gamma * y_true
    return np.max(ce * weight * alpha, axis=-1)


def _soft_focal(target, probs, alpha=0.25, gamma=2.0):
    """The intended soft-target form, a loop over classes: sum_c y_c * alpha * (1 - p_c)^gamma * -log p_c."""
    total = 0.0
    for y, p in zip(target, probs):
        p = float(p) + 1e-7
        total += y * alpha * (1 - p) ** gamma * -np.log(p)
    return total


def test_focal_loss_is_the_recipes_on_hard_labels_and_linear_in_soft_targets():
    y_true = np.array([[1, 0, 0], [0, 0, 1], [0.2, 0.5, 0.3]], np.float32)
    y_pred = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.3, 0.3, 0.4]], np.float32)
    per_row = FocalLoss(reduction="none")(tf.constant(y_true), tf.constant(y_pred)).numpy()
    # one-hot rows: exactly the script's formula
    np.testing.assert_allclose(per_row[:2], _script_focal(y_true[:2].astype(np.float64), y_pred[:2].astype(np.float64)),
                               rtol=1e-5)
    assert per_row[0] == pytest.approx(0.25 * 0.09 * -np.log(0.7), rel=1e-5)
    # soft rows: the sum over classes, linear in the target (not y^2, not the max)
    assert per_row[2] == pytest.approx(_soft_focal(y_true[2], y_pred[2]), rel=1e-5)
    squared = np.sum(-y_true[2] * np.log(y_pred[2] + 1e-7) * (1 - y_pred[2]) ** 2 * y_true[2] * 0.25)
    assert abs(per_row[2] - squared) > 0.01
    # linearity: the loss of a mixed target is the mix of the one-hot losses
    one_hot = FocalLoss(reduction="none")(tf.constant(np.eye(3, dtype=np.float32)),
                                          tf.constant(np.repeat(y_pred[2:], 3, axis=0))).numpy()
    assert per_row[2] == pytest.approx(float(y_true[2] @ one_hot), rel=1e-5)
    mean = FocalLoss()(tf.constant(y_true), tf.constant(y_pred)).numpy()
    assert mean == pytest.approx(per_row.mean(), rel=1e-5)


def test_the_seed_recipe_is_the_reference_scripts():
    """Every setting of the reference script, read off the built model, not off the Recipe fields alone."""
    from pseudolabel.core.constants import FOLD_SEED
    from pseudolabel.rounds.loop import RunConfig
    from pseudolabel.heads.model import RECIPES, build_head

    seed = RECIPES["seed"]
    assert (seed.learning_rate, seed.batch_size, seed.epochs, seed.focal_alpha, seed.focal_gamma, seed.loss) == \
        (1e-3, 128, 2, 0.25, 2.0, "focal")
    assert (seed.standardize, seed.early_stopping, seed.min_steps, seed.precise_bn) == (False, False, 0, 0)
    config = RunConfig(train="a", test=None, unlabeled=None, encoder="e", run_dir="x")
    assert (config.max_len, config.folds, config.unlabeled_limit, FOLD_SEED) == (140, 5, 500_000, 99)
    model = build_head(140, 32, seed)
    by_type = lambda kind: [layer for layer in model.layers if isinstance(layer, kind)]  # noqa: E731
    (spatial,) = by_type(keras.layers.SpatialDropout1D)
    assert spatial.rate == 0.2
    (bigru,) = by_type(keras.layers.Bidirectional)
    assert bigru.forward_layer.units == 256 and bigru.forward_layer.return_sequences
    assert bigru.forward_layer.activation.__name__ == "sigmoid"
    (capsule,) = by_type(Capsule)
    assert (capsule.num_capsule, capsule.dim_capsule, capsule.routings, capsule.share_weights) == (10, 16, 3, True)
    dense = by_type(keras.layers.Dense)
    assert [d.units for d in dense] == [1000, 500, 3] and dense[-1].activation.__name__ == "softmax"
    assert [bn.momentum for bn in by_type(keras.layers.BatchNormalization)] == [0.99, 0.99]
    assert [d.rate for d in by_type(keras.layers.Dropout) if type(d) is keras.layers.Dropout] == [0.2]
    assert len(by_type(keras.layers.ReLU)) == 2 and not by_type(Standardize)
    assert isinstance(model.optimizer, keras.optimizers.Adam)
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(1e-3)
    assert isinstance(model.loss, FocalLoss) and (model.loss.alpha, model.loss.gamma) == (0.25, 2.0)
    assert model.output_shape == (None, 3) and model.input_shape == (None, 140, 32)


def test_precise_batchnorm_sets_the_inference_statistics_of_the_training_rows():
    from dataclasses import replace

    from pseudolabel.heads.model import RECIPES, PreciseBatchNorm, build_head

    recipe = replace(RECIPES["default"], gru_units=8, dense_units=(16, 8))
    model = build_head(12, 6, recipe)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 12, 6)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 64)]
    for _ in range(3):
        model.train_on_batch(x[:32], y[:32])
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    first_input = keras.Model(model.inputs, bns[0].input).predict_on_batch(x)
    assert not np.allclose(bns[0].get_weights()[2], first_input.mean(axis=0), atol=1e-3)  # lagging averages

    PreciseBatchNorm(model).update([x[:40], x[40:]])
    for bn in bns:
        inputs = keras.Model(model.inputs, bn.input).predict_on_batch(x)  # with the updated earlier layers
        assert np.allclose(bn.get_weights()[2], inputs.mean(axis=0), atol=1e-5)
        assert np.allclose(bn.get_weights()[3], inputs.var(axis=0), rtol=1e-3, atol=1e-6)

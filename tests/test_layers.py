"""The Capsule layer against a direct numpy implementation of the recipe, serialisation, focal loss."""

import numpy as np
import pytest

from pseudolabel._tf import keras, tf
from pseudolabel.layers import EPSILON, Capsule, Standardize
from pseudolabel.losses import FocalLoss


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
    from pseudolabel.model import RECIPES, build_head, set_standardization

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


def test_focal_loss_equals_hand_computation():
    y_true = np.array([[1, 0, 0], [0, 0, 1], [0.2, 0.5, 0.3]], np.float32)
    y_pred = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.3, 0.3, 0.4]], np.float32)
    p = y_pred.astype(np.float64) + 1e-7
    hand = np.sum(-y_true * np.log(p) * (1 - p) ** 2 * y_true * 0.25, axis=-1)
    per_row = FocalLoss(reduction="none")(tf.constant(y_true), tf.constant(y_pred)).numpy()
    np.testing.assert_allclose(per_row, hand, rtol=1e-5)
    # the recipe's max over classes, on its one-hot rows
    recipe = np.max(-y_true * np.log(p) * (1 - p) ** 2 * y_true * 0.25, axis=-1)
    np.testing.assert_allclose(per_row[:2], recipe[:2], rtol=1e-5)
    assert per_row[2] > recipe[2]  # a soft row: every class's term counts
    # first row by hand: 0.25 * 0.3^2 * -log(0.7)
    assert per_row[0] == pytest.approx(0.25 * 0.09 * -np.log(0.7), rel=1e-5)
    mean = FocalLoss()(tf.constant(y_true), tf.constant(y_pred)).numpy()
    assert mean == pytest.approx(hand.mean(), rel=1e-5)


def test_precise_batchnorm_sets_the_inference_statistics_of_the_training_rows():
    from dataclasses import replace

    from pseudolabel.model import RECIPES, PreciseBatchNorm, build_head

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

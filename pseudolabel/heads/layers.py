"""Keras layers of the head: the recipe's Capsule and a fixed feature standardisation."""

from __future__ import annotations

from ..core._tf import keras, tf

EPSILON = 1e-7  # keras.backend.epsilon(), as the recipe's squash uses


def squash(s, axis=-1):
    """The recipe's squash: s / sqrt(sum(s^2) + eps), a unit normalisation (not the paper's squash)."""
    return s / tf.sqrt(tf.reduce_sum(tf.square(s), axis=axis, keepdims=True) + EPSILON)


@keras.utils.register_keras_serializable(package="pseudolabel")
class Capsule(keras.layers.Layer):
    """Capsule layer with dynamic routing exactly as the reference script computes it.

    Input (B, T, D); output (B, num_capsule, dim_capsule). `u_hat = conv1d(x, W)` is reshaped to
    [B, num_capsule, T, dim_capsule]; routing starts from b = 0 and, each iteration, takes
    c = softmax(b) over the capsule axis, s = sum_T c * u_hat, out = squash(s), and (except
    after the last) replaces b with sum_d out * u_hat.
    """

    def __init__(self, num_capsule: int = 10, dim_capsule: int = 16, routings: int = 3,
                 share_weights: bool = True, **kwargs):
        super().__init__(**kwargs)
        if not share_weights:
            raise ValueError("share_weights must be True, got False (only shared weights are implemented)")
        if routings < 1:
            raise ValueError(f"routings must be >= 1, got {routings}")
        self.num_capsule = int(num_capsule)
        self.dim_capsule = int(dim_capsule)
        self.routings = int(routings)
        self.share_weights = share_weights

    def build(self, input_shape):
        input_dim = int(input_shape[-1])
        self.W = self.add_weight(name="capsule_kernel", shape=(1, input_dim, self.num_capsule * self.dim_capsule),
                                 initializer="glorot_uniform", trainable=True)
        super().build(input_shape)

    def call(self, inputs):
        u_hat = tf.nn.conv1d(inputs, self.W, stride=1, padding="VALID")  # (B, T, n*d)
        batch, steps = tf.shape(inputs)[0], tf.shape(inputs)[1]
        u_hat = tf.reshape(u_hat, (batch, steps, self.num_capsule, self.dim_capsule))
        u_hat = tf.transpose(u_hat, (0, 2, 1, 3))  # (B, n, T, d)
        b = tf.zeros_like(u_hat[:, :, :, 0])  # (B, n, T)
        outputs = None
        for i in range(self.routings):
            c = tf.nn.softmax(b, axis=1)  # over the capsule axis
            outputs = squash(tf.einsum("bnt,bntd->bnd", c, u_hat))
            if i < self.routings - 1:
                b = tf.einsum("bnd,bntd->bnt", outputs, u_hat)
        return outputs

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_capsule, self.dim_capsule)

    def get_config(self):
        config = super().get_config()
        config.update(num_capsule=self.num_capsule, dim_capsule=self.dim_capsule, routings=self.routings,
                      share_weights=self.share_weights)
        return config


@keras.utils.register_keras_serializable(package="pseudolabel")
class Standardize(keras.layers.Layer):
    """(x - mean) / std per feature dimension, with statistics fixed from the training fold."""

    def build(self, input_shape):
        dim = int(input_shape[-1])
        self.mean = self.add_weight(name="mean", shape=(dim,), initializer="zeros", trainable=False)
        self.std = self.add_weight(name="std", shape=(dim,), initializer="ones", trainable=False)
        super().build(input_shape)

    def call(self, inputs):
        return (inputs - self.mean) / self.std

"""The recipe's focal loss, for hard one-hot or soft probability targets.

The recipe takes the max over classes of alpha * (1 - p)^gamma * y * -log(p); for a one-hot row
only the true class's term is non-zero, so the max equals the sum. With soft targets (pseudo-label
probabilities) the max would keep one class's term only; the sum keeps them all, so it is used.
"""

from __future__ import annotations

from ._tf import keras, tf
from .layers import EPSILON


def focal(y_true, y_pred, alpha: float = 0.25, gamma: float = 2.0):
    """Per-row loss: sum over classes of alpha * (1 - p)^gamma * y * -log(p), p = y_pred + eps."""
    y_true = tf.cast(y_true, y_pred.dtype)
    y_pred = y_pred + EPSILON
    ce = -y_true * tf.math.log(y_pred)
    weight = tf.pow(1.0 - y_pred, gamma) * y_true
    return tf.reduce_sum(ce * weight * alpha, axis=-1)


@keras.utils.register_keras_serializable(package="pseudolabel")
class FocalLoss(keras.losses.Loss):
    def __init__(self, alpha: float = 0.25, gamma: float = 2.0, name: str = "focal_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.alpha = float(alpha)
        self.gamma = float(gamma)

    def call(self, y_true, y_pred):
        return focal(y_true, y_pred, self.alpha, self.gamma)

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "gamma": self.gamma}

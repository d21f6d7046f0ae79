"""The recipe's focal loss, for hard one-hot or soft probability targets.

The recipe computes ce = -y * log(p), w = (1 - p)^gamma * y and takes the max over classes of
alpha * ce * w: its terms carry y twice (y^2). For a one-hot row y^2 = y and only the true class's
term is non-zero, so the max equals the sum of alpha * (1 - p)^gamma * y * -log(p).

For soft targets (a teacher's probabilities) the intended form is that sum, linear in y: a
focal-weighted cross-entropy against the target distribution. The max would keep one class's
term only, and y^2 would square the teacher's probabilities (a hidden sharpening on top of
`--sharpen`). Hard labels give the recipe's loss exactly.
"""

from __future__ import annotations

from ..core._tf import keras, tf
from .layers import EPSILON


def focal(y_true, y_pred, alpha: float = 0.25, gamma: float = 2.0):
    """Per-row loss: sum over classes of alpha * (1 - p)^gamma * y * -log(p), p = y_pred + eps."""
    y_true = tf.cast(y_true, y_pred.dtype)
    y_pred = y_pred + EPSILON
    ce = -y_true * tf.math.log(y_pred)
    return tf.reduce_sum(alpha * tf.pow(1.0 - y_pred, gamma) * ce, axis=-1)


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

"""Import TensorFlow with the legacy Keras (tf_keras) the transformers TF classes need.

Every module that touches TensorFlow imports it from here, so the environment is set
before TensorFlow is first imported.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

__all__ = ["tf", "keras"]

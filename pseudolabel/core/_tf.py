"""Import TensorFlow with the legacy Keras (tf_keras) the transformers TF classes need.

Every module that touches TensorFlow imports it from here, so the environment is set before
TensorFlow is first imported. TensorFlow's C++ start-up lines (CUDA probing, oneDNN notice) are
written straight to file descriptor 2 before any setting can silence them; they are hidden during
the import (Python errors still propagate).
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _import_quietly():
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow
        import tf_keras
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    return tensorflow, tf_keras


tf, keras = _import_quietly()


class _DropRetracingNotes:
    """A new recipe or shape (and in faithful mode each fold) builds a new model whose functions
    are traced anew by design; TensorFlow's note that calls "triggered tf.function retracing" says
    nothing a user can act on."""

    def filter(self, record) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


tf.get_logger().addFilter(_DropRetracingNotes())

__all__ = ["tf", "keras"]

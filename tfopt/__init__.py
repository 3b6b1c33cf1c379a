"""tfopt: prune, distill and quantize tf_keras models while they train."""

# _keras must be imported first: it selects tf_keras before TensorFlow
# resolves `tf.keras`.
from tfopt import _keras, data, models  # noqa: F401 (_keras)
from tfopt._keras import keras

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "data",
    "keras",
    "models",
]

"""tfopt: prune, distill and quantize tf_keras models while they train."""

# _keras must be imported first: it selects tf_keras before TensorFlow
# resolves `tf.keras`.
from tfopt import _keras, data, devices, distribute, models  # noqa: F401 (_keras)
from tfopt._keras import keras
from tfopt.devices import configure_devices
from tfopt.distribute import get_strategy

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "configure_devices",
    "data",
    "devices",
    "distribute",
    "get_strategy",
    "keras",
    "models",
]

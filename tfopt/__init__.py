"""tfopt: prune, distill and quantize tf_keras models while they train."""

# _keras must be imported first: it selects tf_keras before TensorFlow
# resolves `tf.keras`.
from tfopt import _keras, data, devices, distribute, export, models, pruning  # noqa: F401
from tfopt._keras import keras
from tfopt.devices import configure_devices
from tfopt.distribute import get_strategy
from tfopt.export import load_model
from tfopt.pruning import PruningCallback, prune, sparsity_report, strip

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "configure_devices",
    "data",
    "devices",
    "distribute",
    "export",
    "get_strategy",
    "keras",
    "load_model",
    "models",
    "prune",
    "pruning",
    "PruningCallback",
    "sparsity_report",
    "strip",
]

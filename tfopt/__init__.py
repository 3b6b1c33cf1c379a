"""tfopt: prune, distill and quantize tf_keras models while they train."""

# _keras must be imported first: it selects tf_keras before TensorFlow
# resolves `tf.keras`.
from tfopt import (  # noqa: F401 (_keras first: it binds tf.keras to tf_keras)
    _keras,
    data,
    devices,
    distillation,
    distribute,
    export,
    models,
    pruning,
    quantization,
)
from tfopt._keras import keras
from tfopt.devices import configure_devices
from tfopt.distillation import DistillationSchedule, Distiller
from tfopt.distribute import get_strategy
from tfopt.export import (
    evaluate_tflite,
    export_saved_model,
    export_tflite,
    load_model,
)
from tfopt.pruning import PruningCallback, prune, sparsity_report, strip
from tfopt.quantization import quantize

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "configure_devices",
    "data",
    "devices",
    "distillation",
    "DistillationSchedule",
    "Distiller",
    "distribute",
    "evaluate_tflite",
    "export",
    "export_saved_model",
    "export_tflite",
    "get_strategy",
    "keras",
    "load_model",
    "models",
    "prune",
    "pruning",
    "PruningCallback",
    "quantization",
    "quantize",
    "sparsity_report",
    "strip",
]

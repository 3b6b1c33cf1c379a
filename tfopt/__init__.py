"""tfopt: prune, distill and quantize tf_keras models while they train.

The public names load on first use (PEP 562), so `tfopt.config` and
`tfopt.flags` (what a script needs to parse and check its flags) import
without TensorFlow: a mistyped flag is answered before TensorFlow's
seconds-long import.
"""

import importlib
import os
import sys

# What `tfopt._keras` does first, done here too so that `import tfopt`
# alone (as before the names were lazy) makes a later `tf.keras` tf_keras:
# TensorFlow reads the variable when it first resolves `tf.keras`.
os.environ["TF_USE_LEGACY_KERAS"] = "1"
if "tensorflow" in sys.modules:
    # Too late for the variable if `tf.keras` already resolved: `_keras`
    # warns about that now (TensorFlow is loaded anyway).
    importlib.import_module("tfopt._keras")

__version__ = "0.1.0"

_MODULES = ("data", "devices", "distillation", "distribute", "export", "models",
            "pruning", "quantization")
# Public name -> (module, attribute).
_NAMES = {
    "keras": ("tfopt._keras", "keras"),
    "configure_devices": ("tfopt.devices", "configure_devices"),
    "DistillationSchedule": ("tfopt.distillation", "DistillationSchedule"),
    "Distiller": ("tfopt.distillation", "Distiller"),
    "get_strategy": ("tfopt.distribute", "get_strategy"),
    "evaluate_tflite": ("tfopt.export", "evaluate_tflite"),
    "export_saved_model": ("tfopt.export", "export_saved_model"),
    "export_tflite": ("tfopt.export", "export_tflite"),
    "load_model": ("tfopt.export", "load_model"),
    "PruningCallback": ("tfopt.pruning", "PruningCallback"),
    "prune": ("tfopt.pruning", "prune"),
    "sparsity_report": ("tfopt.pruning", "sparsity_report"),
    "strip": ("tfopt.pruning", "strip"),
    "quantize": ("tfopt.quantization", "quantize"),
    "shrink": ("tfopt._channels", "shrink_zeroed"),
}

__all__ = ["__version__", *_MODULES, *_NAMES]


def __getattr__(name):
    if name in _MODULES:
        value = importlib.import_module(f"tfopt.{name}")
    elif name in _NAMES:
        module, attribute = _NAMES[name]
        value = getattr(importlib.import_module(module), attribute)
    else:
        raise AttributeError(f"module 'tfopt' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))

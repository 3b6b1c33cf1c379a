"""tfopt: prune, distill and quantize Keras models while they train.

The names that take a model serve tf_keras models (through TFMOT) and Keras
3 models (tfopt's own path) alike: `_front` picks by the model given.

The public names load on first use (PEP 562), so `tfopt.config` and
`tfopt.flags` (what a script needs to parse and check its flags) import
without TensorFlow: a mistyped flag is answered before TensorFlow's
seconds-long import.
"""

import importlib

__version__ = "0.1.0"

_MODULES = ("data", "devices", "distillation", "distribute", "export", "models",
            "pruning", "quantization")
# Public name -> (module, attribute).
_NAMES = {
    "keras": ("tfopt._keras", "keras"),
    "configure_devices": ("tfopt.devices", "configure_devices"),
    "DistillationSchedule": ("tfopt._front", "DistillationSchedule"),
    "Distiller": ("tfopt._front", "Distiller"),
    "get_strategy": ("tfopt.distribute", "get_strategy"),
    "evaluate_tflite": ("tfopt._tflite", "evaluate_tflite"),
    "export_saved_model": ("tfopt._front", "export_saved_model"),
    "export_tflite": ("tfopt._front", "export_tflite"),
    "load_model": ("tfopt._front", "load_model"),
    "PruningCallback": ("tfopt._front", "PruningCallback"),
    "prune": ("tfopt._front", "prune"),
    "sparsity_report": ("tfopt._front", "sparsity_report"),
    "strip": ("tfopt._front", "strip"),
    "quantize": ("tfopt._front", "quantize"),
    "shrink": ("tfopt._front", "shrink"),
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

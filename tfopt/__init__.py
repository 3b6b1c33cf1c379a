"""tfopt: prune, distill and quantize Keras models while they train.

The public names take tf_keras models (through TFMOT) and Keras 3 models
(tfopt's own code) alike and pick the implementation by the model given:

    tfopt/
      core/     no Keras: schedules, layer choice, sparsity, TFLite files,
                distillation losses, vocabularies, which Keras (`kerases`)
      keras2/   tf_keras through TFMOT        keras3/  Keras 3, tfopt's own
      pruning, distillation, quantization, export   the public front
      distribute, devices, data, models, callbacks
      job/      the main job: config, flags, pipeline, report

(`docs/architecture.md` has the whole map.) The public names load on first
use (PEP 562), so `tfopt.job.config` and `tfopt.job.flags` (what a script
needs to parse and check its flags) import without TensorFlow, and a Keras 3
program never loads tf_keras or TFMOT.
"""

import importlib
import sys

__version__ = "0.1.0"

_MODULES = (
    "callbacks",
    "channels",
    "core",
    "data",
    "devices",
    "distillation",
    "distribute",
    "export",
    "job",
    "keras2",
    "keras3",
    "models",
    "pruning",
    "quantization",
    "replicas",
)
# Public name -> (module, attribute).
_NAMES = {
    "keras": ("tfopt.keras2.binding", "keras"),
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
    "shrink": ("tfopt.channels", "shrink"),
}

__all__ = ["__version__", *_MODULES, *_NAMES]


# A program with Keras loaded reads tfopt's Keras 3 classes from a `.keras`
# file with plain `keras.saving.load_model` once tfopt is imported. Without
# Keras loaded, importing tfopt loads no TensorFlow (a script parses its
# flags first); the classes then register on first use.
if "keras" in sys.modules:
    importlib.import_module("tfopt.keras3.saving")


def __getattr__(name):
    if name in _MODULES:
        value = importlib.import_module(f"tfopt.{name}")
    elif name in _NAMES:
        module, attribute = _NAMES[name]
        value = getattr(importlib.import_module(module), attribute)
    elif name in ("config", "flags", "pipeline", "report"):  # old paths
        value = importlib.import_module(f"tfopt.{name}")
    else:
        raise AttributeError(f"module 'tfopt' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))

"""The names tfopt's choices are made of, shared by the library and the main
job: the library checks its arguments against them, and the job's flags and
`Config` offer exactly these (so a flag never offers what the library
refuses). Nothing here imports TensorFlow or a Keras."""

from typing import NamedTuple

STRATEGIES = (
    "auto",
    "default",
    "one_device",
    "mirrored",
    "multi_worker",
    "tpu",
    "parameter_server",
)
ALL_REDUCE = ("nccl", "hierarchical_copy", "reduction_to_one")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
DISTILLATION_LOSSES = ("kl", "mse")
PRUNE_STRUCTURES = ("weights", "channels")
PRUNE_MEASURES = ("channels", "params", "macs")
PRUNE_IMPORTANCES = ("l2", "bn_gamma", "taylor")
# `quantization=` of `export_tflite`, and what each means.
QUANTIZATIONS = {
    None: "float32 weights and activations",
    "dynamic": "int8 weights, float activations (no calibration data)",
    "float16": "float16 weights",
    "int8": "int8 weights and activations (QAT ranges or calibration data)",
}


class ExportFormat(NamedTuple):
    """An artifact the scripts can export."""

    name: str
    kind: str  # "tflite" or "saved_model"
    quantization: str | None  # for TFLite: a `QUANTIZATIONS` key
    filename: str  # under the run's export/ directory


EXPORTS = {
    f.name: f
    for f in (
        ExportFormat("saved_model", "saved_model", None, "saved_model"),
        ExportFormat("tflite", "tflite", None, "model_float32.tflite"),
        ExportFormat("tflite_int8", "tflite", "int8", "model_int8.tflite"),
        ExportFormat("tflite_float16", "tflite", "float16", "model_float16.tflite"),
    )
}
# The export names that are TFLite files, and their `quantization`.
TFLITE_FORMATS = {
    name: form.quantization for name, form in EXPORTS.items() if form.kind == "tflite"
}

"""Exporting and loading tf_keras models: TFLite files (float, dynamic,
float16, int8, sparse), SavedModels, and `load_model` for any tfopt/TFMOT
model. What TFLite files have in common with Keras 3's is in
`tfopt.core.tflite`.

Every write goes to a temporary file beside the target and is moved into
place, so a crash never leaves half a file, and an existing file is never
replaced unless `overwrite=True`.
"""

import os
import zipfile

import h5py
import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot

from tfopt.core import distill, files, tflite, xnnpack
from tfopt.core.tflite import Exported, disk_sizes, tflite_ops
from tfopt.keras2 import (
    binding,
    graph,
    pruning,
    selection,
)
from tfopt.keras2 import tfmot as _tfmot
from tfopt.keras2.binding import keras

__all__ = ["export_saved_model", "export_tflite", "load_model"]


# What `tfopt.export_tflite` checks its `model` with.
check_model = binding.check_model


def _deployable(model):
    """The model to ship: a Distiller's student, without pruning wrappers."""
    if isinstance(model, distill.DistillerSteps):  # either Keras's Distiller
        model = model.student
    return pruning.strip(model) if pruning.wrappers(model) else model


def export_tflite(
    model, path, *, quantization, representative_data, int8_io, overwrite, sparse
):
    """`tfopt.export_tflite` for a tf_keras model, its arguments checked (by
    the front, `tfopt.export`). A QAT model converts to int8 with the ranges
    it learned; a float one calibrates on `representative_data`."""
    model = _deployable(model)
    qat = selection.is_quantized(model)
    if quantization == "int8" and not qat and representative_data is None:
        raise ValueError(
            "`representative_data` is needed for quantization='int8' of a float "
            "model, to calibrate its activation ranges: pass a few batches of "
            "training data, or quantize the model with tfopt.quantize and "
            "fine-tune it first. Received: representative_data=None"
        )
    if qat and quantization == "int8":
        _check_ranges(model)
    data = tflite.convert(
        tf.lite.TFLiteConverter.from_keras_model(model),
        quantization,
        representative_data,
        int8_io,
        sparse,
    )
    eligibility = None
    if sparse:
        eligibility = xnnpack.eligibility(
            graph.flat(model).layers,
            "int8" if qat else quantization,
            tflite_ops(data).counts.get("DENSIFY", 0),
        )
    files.write_atomically(path, data, overwrite)
    return Exported(path, len(data), eligibility)


def _check_ranges(model):
    """Refuses a QAT model with a range that is not finite: training
    diverged, and the converter, handed a NaN range, can crash the process
    (EfficientNetB0 on [0, 1] images once died with a segmentation fault)."""
    for layer in graph.flat(model).layers:
        for weight in layer.non_trainable_weights:
            name = weight.name.split("/")[-1].split(":")[0]
            if name.endswith(("_min", "_max")) and not np.all(
                np.isfinite(weight.numpy())
            ):
                raise ValueError(
                    f"The quantization range {name!r} of layer {layer.name!r} is "
                    f"{weight.numpy()!r}: {tflite.DIVERGED}"
                )


def export_saved_model(model, path, *, overwrite=False):
    """`tfopt.export_saved_model` for a tf_keras model (pruning wrappers
    stripped, a Distiller's student), written to a staging directory first."""
    binding.check_model(model)
    path = tflite.check_path(path)
    tflite.refuse_overwrite(path, overwrite)
    deployed = _deployable(model)
    files.write_directory_atomically(
        path, lambda directory: deployed.save(directory, save_format="tf")
    )
    return Exported(path, disk_sizes(path)[0])


def _custom_objects():
    # Registration covers the .keras format; the legacy .h5 config names the
    # top-level model class without its "tfopt>" package.
    return {
        "PrunedModel": pruning.PrunedModel,
        "ChannelPrunedModel": pruning.ChannelPrunedModel,
    }


def load_model(path, *, compile=True, safe_mode=True):
    """`tfopt.load_model` for a file that is not a Keras 3 `.keras` archive: a
    tf_keras `.keras`, `.h5` or SavedModel directory, with TFMOT's wrappers,
    schedules and QAT layers and tfopt's classes in scope (no `prune_scope`
    or `quantize_scope` needed)."""
    path = tflite.check_load(
        path, compile, safe_mode, "a .keras/.h5 file or a SavedModel directory"
    )
    # tf_keras tries anything that is not a zip archive as HDF5 and says only
    # "file signature not found", without the path.
    unreadable = os.path.isfile(path) and not (
        zipfile.is_zipfile(path) or h5py.is_hdf5(path)
    )
    try:
        if unreadable:
            raise OSError("neither a .keras archive nor an HDF5 file")
        # TFMOT's QAT layer names load as tfopt's subclasses, which fix their
        # .keras round trip. A scope, since scopes take precedence over
        # `custom_objects` and quantize_scope names TFMOT's own classes.
        with (
            tfmot.sparsity.keras.prune_scope(),
            tfmot.quantization.keras.quantize_scope(),
            keras.utils.custom_object_scope(_tfmot.RAW_NAMES),
        ):
            return keras.models.load_model(
                path,
                custom_objects=_custom_objects(),
                compile=compile,
                safe_mode=safe_mode,
            )
    except (OSError, zipfile.BadZipFile) as err:
        raise OSError(
            f"{path!r} is truncated or not a Keras file ({err}); an interrupted "
            f"save or copy leaves such a file. Received: path={path!r}"
        ) from err

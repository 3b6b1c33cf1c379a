"""Exporting and loading Keras 3 models, side by side with
`tfopt.keras2.export` (tf_keras): `export_tflite` (float32, dynamic,
float16, int8 calibrated on representative data, optional int8 I/O;
built-in ops only) and `load_model` for the `.keras` files of tfopt's
Keras 3 models.

Keras 3's `model.quantize("int8")` is not used: it covers Dense, EinsumDense
and Embedding only (Conv2D is skipped), freezes int8 kernels, and a model
after it fails TFLite conversion. Post-training calibration through the
TFLite converter gives a file that is integer end to end instead.
"""

import functools
import math
import os
import tempfile
import zipfile

import keras
import numpy as np
import tensorflow as tf

from tfopt.core import distill, files, tflite, xnnpack
from tfopt.keras3 import fit, pruning, quantizers


def deployable(model):
    """What ships: a Distiller's student, pruning constraints stripped."""
    if isinstance(model, distill.DistillerSteps):  # either Keras's Distiller
        model = model.student
    if pruning.masked(model):
        model = pruning.strip(model)
    return model


def _known_dims(inputs):
    """The dimensions of `inputs` after the batch's, or None unless all are
    known and none is zero (where `-1` could not stand for the batch)."""
    dims = tuple(inputs.shape)[1:]
    return None if None in dims or not math.prod(dims) else dims


class _Flatten(keras.layers.Flatten):
    """Flatten to `(-1, n)` where `n` is known. Keras 3's own passes the
    batch size as a tensor, which the converter keeps as SHAPE,
    STRIDED_SLICE and PACK ops before the RESHAPE (tf_keras writes -1);
    with -1 the file has one RESHAPE of a constant shape."""

    def call(self, inputs):
        dims = _known_dims(inputs)
        if dims is None:
            return super().call(inputs)
        if self.data_format == "channels_first" and len(dims) > 1:
            inputs = keras.ops.transpose(inputs, (0, *range(2, len(dims) + 1), 1))
        return keras.ops.reshape(inputs, (-1, math.prod(dims)))


class _Reshape(keras.layers.Reshape):
    """Reshape to `(-1, *target)` where the input's shape is known (see
    `_Flatten`)."""

    def call(self, inputs):
        dims = _known_dims(inputs)
        if dims is None:
            return super().call(inputs)
        target = self.compute_output_shape(tuple(inputs.shape))[1:]
        if target == dims:
            # The identity: a copy, not `inputs` itself, so that a mask on
            # it stops here as at Keras's Reshape; the converter drops it.
            return keras.ops.copy(inputs)
        return keras.ops.reshape(inputs, (-1, *target))


_STATIC = {keras.layers.Flatten: _Flatten, keras.layers.Reshape: _Reshape}


def _static_reshapes(model):
    """`model` traced with `_Flatten` and `_Reshape` in place of Keras's
    (the other layers shared, weights and all). Only a plain Sequential or
    functional model is rebuilt: a subclass's own `call` would be lost."""
    if not (
        type(model) is keras.Sequential or type(model).__name__ == "Functional"
    ) or not any(type(layer) in _STATIC for layer in pruning.flat_layers(model)):
        return model

    def clone(layer):
        if isinstance(layer, keras.Model):
            return _static_reshapes(layer)
        static = _STATIC.get(type(layer))
        return layer if static is None else static.from_config(layer.get_config())

    # An uncompiled view: clone_model would re-compile a compiled model
    # (a new optimizer, and a failure on an unregistered custom loss).
    view = keras.Model(model.inputs, model.outputs, name=model.name)
    return keras.models.clone_model(view, clone_function=clone)


def _archive(model):
    """An ExportArchive of `model`'s inference call, as `model.export` and
    `TFLiteConverter.from_keras_model` make one, without their printout of
    every variable."""
    archive = keras.export.ExportArchive()
    traced = _static_reshapes(model)
    archive.track(traced)
    specs = [tf.TensorSpec(t.shape, t.dtype, name=t.name) for t in model.inputs]
    archive.add_endpoint(
        "serve",
        functools.partial(traced.__call__, training=False),
        specs if len(specs) == 1 else [specs],
    )
    return archive


def _convert(model, quantization, representative_data, int8_io, sparse):
    with tempfile.TemporaryDirectory(prefix="tfopt-") as directory:
        _archive(model).write_out(directory, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(directory)
        return tflite.convert(
            converter, quantization, representative_data, int8_io, sparse
        )


def check_model(model):
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a Keras 3 Model. Received: model={model!r}")
    served = model.student if isinstance(model, distill.DistillerSteps) else model
    if not getattr(served, "inputs", None):
        # No input signature to trace: Keras 3 keeps `inputs` for models
        # built on an Input only (not a subclassed model's `call`).
        raise TypeError(
            f"`model` ({type(served).__name__}) has no inputs to trace: export "
            "takes a Sequential or functional Keras 3 model built on an Input. "
            "Wrap a subclassed one, e.g. keras.Model(inputs, model(inputs)). "
            f"Received: model={model!r}"
        )


def _check_ranges(model):
    """Refuses a QAT model whose ranges the converter cannot use: a range
    that is not finite (the training diverged), or one no training batch
    has set (the [-6, 6] placeholder)."""
    # `.numpy()`, not float(): under MultiWorkerMirroredStrategy a Keras
    # variable holds a MirroredVariable, which float() refuses.
    for layer in pruning.flat_layers(model):
        if isinstance(layer, quantizers.QuantizeRange) and not layer.fixed:
            low, high = layer.range_min.numpy().item(), layer.range_max.numpy().item()
            if not (np.isfinite(low) and np.isfinite(high)):
                raise ValueError(
                    f"The quantization range of {layer.name!r} is [{low}, {high}]: "
                    f"{tflite.DIVERGED}"
                )
            if not layer.seen.numpy().item():
                raise ValueError(
                    f"The quantization range of {layer.name!r} was never learned: "
                    "a QAT model learns its ranges while it trains. Fine-tune it "
                    "(model.fit, one epoch is typical) before exporting it."
                )


def export_tflite(
    model, path, *, quantization, representative_data, int8_io, overwrite, sparse
):
    """`tfopt.export_tflite` for a Keras 3 model, its arguments checked (by
    the front, `tfopt.export`). A QAT model (`tfopt.quantize`) converts to
    int8 with the ranges it learned; a float one calibrates on
    `representative_data`."""
    model = deployable(model)
    qat = quantizers.quantization_aware(pruning.flat_layers(model))
    if quantization == "int8" and not qat and representative_data is None:
        raise ValueError(
            "`representative_data` is needed for quantization='int8' of a float "
            "model, to calibrate its activation ranges: pass a few batches of "
            "training data, or quantize the model with tfopt.quantize and "
            "fine-tune it first. Received: representative_data=None"
        )
    if qat and quantization == "int8":
        _check_ranges(model)
    data = _convert(model, quantization, representative_data, int8_io, sparse)
    eligibility = None
    if sparse:
        eligibility = xnnpack.eligibility(
            list(pruning.flat_layers(model)),
            "int8" if qat else quantization,
            tflite.tflite_ops(data).counts.get("DENSIFY", 0),
        )
    files.write_atomically(path, data, overwrite)
    return tflite.Exported(path, len(data), eligibility)


def export_saved_model(model, path, *, overwrite):
    """`tfopt.export_saved_model` for a Keras 3 model (pruning stripped, a
    Distiller's student): its inference call as a TensorFlow SavedModel
    (`serve` signature), written to a staging directory first."""
    check_model(model)
    path = tflite.check_path(path)
    tflite.refuse_overwrite(path, overwrite)
    archive = _archive(deployable(model))
    files.write_directory_atomically(
        path, lambda directory: archive.write_out(directory, verbose=False)
    )
    return tflite.Exported(path, tflite.disk_sizes(path)[0])


def _serving_model(path):
    """The `serve` function of an exported SavedModel as a Keras 3 model of
    one `TFSMLayer` (inference only: the SavedModel holds no training)."""
    layer = keras.layers.TFSMLayer(path, call_endpoint="serve")
    signature = tf.saved_model.load(path).signatures["serve"]
    specs = tf.nest.flatten(signature.structured_input_signature)
    inputs = [keras.Input(batch_shape=s.shape, dtype=s.dtype) for s in specs]
    outputs = layer(inputs[0] if len(inputs) == 1 else inputs)
    inputs = inputs[0] if len(inputs) == 1 else inputs  # as it is called
    return keras.Model(inputs, outputs, name=os.path.basename(path.rstrip("/")))


def load_model(path, *, compile=True, safe_mode=True):
    """Loads a Keras 3 `.keras` file, tfopt's pruned models (their
    `PruningMask` constraints) included; see `tfopt.load_model`."""
    path = tflite.check_load(path, compile, safe_mode, "a .keras file")
    if os.path.isdir(path):
        return _serving_model(path)
    try:
        model = keras.saving.load_model(path, compile=compile, safe_mode=safe_mode)
    except (OSError, zipfile.BadZipFile) as err:
        raise OSError(
            f"{path!r} is truncated or not a Keras file ({err}); an interrupted "
            f"save or copy leaves such a file. Received: path={path!r}"
        ) from err
    # A model loaded in a multi-worker strategy's scope trains and evaluates
    # there only with tfopt's fix of Keras 3.15's trainer.
    return fit.enable_multi_worker(pruning.guard(model))

"""Exporting and loading: TFLite files (float, dynamic, float16, int8),
SavedModels, `load_model` for any tfopt/TFMOT model, and `evaluate_tflite`
to check what an export really computes.

Every write goes to a temporary file beside the target and is moved into
place, so a crash never leaves half a file, and an existing file is never
replaced unless `overwrite=True`.
"""

import gzip
import os
import shutil
import tempfile
import time
import warnings
import zipfile
from typing import NamedTuple

import h5py
import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot

from tfopt import (
    _channel_pruning,  # registers ChannelPrunedModel, for load_model
    _checks,
    _flatten,
    _keras,
    _selection,
    _tfmot,
    _xnnpack,
    config,
    distillation,
    pruning,
)
from tfopt._keras import keras
from tfopt._xnnpack import SparseEligibility

__all__ = ["EXPORTS", "QUANTIZATIONS", "SparseEligibility", "TFLITE_FORMATS",
           "TFLiteOps", "disk_sizes", "evaluate_tflite", "export_saved_model",
           "export_tflite", "load_model", "tflite_ops"]

QUANTIZATIONS = {
    None: "float32 weights and activations",
    "dynamic": "int8 weights, float activations (no calibration data)",
    "float16": "float16 weights",
    "int8": "int8 weights and activations (QAT ranges or calibration data)",
}
# The artifacts the scripts can make: a SavedModel or a TFLite file per
# quantization (the flag names map to `export_tflite`'s `quantization`).
TFLITE_FORMATS = {name: form.quantization for name, form in config.EXPORTS.items()
                  if form.kind == "tflite"}
EXPORTS = tuple(config.EXPORTS)
# Calibration samples taken from `representative_data` for a float model.
_CALIBRATION_SAMPLES = 200


class Exported(NamedTuple):
    path: str
    size_bytes: int
    # With export_tflite(..., sparse=True): a `SparseEligibility`.
    sparse: object = None


class TFLiteOps(NamedTuple):
    """What a `.tflite` file computes, from `tflite_ops`."""

    counts: dict  # op name -> how many
    quantize: int  # QUANTIZE ops
    dequantize: int  # DEQUANTIZE ops
    float_ops: tuple  # the other ops with a float output: float islands
    requantize: int = 0  # QUANTIZE ops from int8 to int8 (a change of scale)


class TFLiteEvaluation(NamedTuple):
    accuracy: float
    examples: int
    mean_batch_latency_ms: float


def disk_sizes(path):
    """(bytes, gzip -9 bytes) of a file, or summed over a directory's files."""
    files = [path] if os.path.isfile(path) else [
        os.path.join(root, name) for root, _, names in os.walk(path) for name in names]
    size = packed = 0
    for name in files:
        with open(name, "rb") as file:
            content = file.read()
        size += len(content)
        packed += len(gzip.compress(content, compresslevel=9))
    return size, packed


def _check_path(path):
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`path` must be a path. Received: path={path!r}")
    return os.fspath(path)


def _refuse_overwrite(path, overwrite):
    _checks.check_bool(overwrite, "overwrite")
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(
            f"`path` already exists and tfopt never replaces a file unless "
            f"overwrite=True. Received: path={path!r}")


def _umask():
    # Python has no getter: set and restore at once (no file is created
    # meanwhile by this thread).
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_atomically(path, data, overwrite):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=directory, prefix=".tfopt-", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        # mkstemp makes the file 0600; give it the mode open() would have.
        os.chmod(tmp, 0o666 & ~_umask())
        if overwrite:
            os.replace(tmp, path)
        else:
            # link() fails if `path` appeared meanwhile: never clobber.
            os.link(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _deployable(model):
    """The model to ship: a Distiller's student, without pruning wrappers."""
    if isinstance(model, distillation.Distiller):
        model = model.student
    return pruning.strip(model) if pruning.wrappers(model) else model


def _representative(data):
    def samples():
        source = data() if callable(data) else data
        count = 0
        for element in source:
            batch = element[0] if isinstance(element, (tuple, list)) else element
            for sample in np.asarray(batch, np.float32):
                yield [sample[None]]
                count += 1
                if count >= _CALIBRATION_SAMPLES:
                    return
    return samples


def export_tflite(model, path, *, quantization=None, representative_data=None,
                  int8_io=False, overwrite=False, sparse=False):
    """Converts `model` to a TFLite file.

    Pruning wrappers are stripped first. A QAT model (`tfopt.quantize`)
    converts to int8 with the ranges it learned; a float model needs
    `representative_data` to calibrate int8.

    Args:
        model: A tf_keras model: plain, pruned or quantization-aware.
        path: The `.tflite` file to write.
        quantization: One of `QUANTIZATIONS`: `None` (float32), `dynamic`,
            `float16` or `int8`. Defaults to `None`.
        representative_data: Batches `x` or `(x, y)` (a `tf.data.Dataset` or a
            callable returning an iterable) to calibrate `int8` on a float
            model; up to 200 samples are used. Defaults to `None`.
        int8_io: Make the input and output tensors int8 too (with `int8`).
            Defaults to `False`.
        overwrite: Replace an existing file. Defaults to `False`.
        sparse: Store weights with at least 30% zeros in TFLite's sparse
            format (the converter's `EXPERIMENTAL_SPARSITY`), and report
            whether XNNPACK can run the file with its sparse kernels. They
            help float32 models on ARM and WebAssembly only: x86 CPUs with
            AVX turn them off and int8 never uses them, so there the file
            runs at dense speed (prune channels and `tfopt.shrink` for a
            faster model). Defaults to `False`.

    Returns:
        `Exported(path, size_bytes, sparse)`; `sparse` is a
        `SparseEligibility` (eligible, the reasons it is not, the zero
        fraction of the 1x1 convolutions, the sparse-encoded weights) when
        `sparse=True`, else None.

    Raises:
        TypeError: For an argument of the wrong type.
        ValueError: For an unknown `quantization`, `int8` on a float model
            without `representative_data`, or `int8_io` without `int8`.
        FileExistsError: If `path` exists and `overwrite` is False.

    Example:

    >>> import os, tempfile, tfopt
    >>> model = tfopt.models.build("tfmot_mnist", (8, 8), 10)
    >>> path = os.path.join(tempfile.mkdtemp(), "model.tflite")
    >>> tfopt.export_tflite(model, path, quantization="dynamic").size_bytes > 0
    True
    """
    _keras.check_model(model)
    path = _check_path(path)
    _checks.check_choice(quantization, "quantization", QUANTIZATIONS)
    _checks.check_bool(int8_io, "int8_io")
    _checks.check_bool(sparse, "sparse")
    if int8_io and quantization != "int8":
        raise ValueError(
            "`int8_io` needs quantization='int8'. "
            f"Received: int8_io=True, quantization={quantization!r}")
    if representative_data is not None and not (
        isinstance(representative_data, tf.data.Dataset)
        or callable(representative_data)
    ):
        raise TypeError(
            "`representative_data` must be a tf.data.Dataset or a callable "
            "returning batches, or None. "
            f"Received: representative_data={representative_data!r}")
    _refuse_overwrite(path, overwrite)
    model = _deployable(model)
    qat = _selection.is_quantized(model)
    if quantization == "int8" and not qat and representative_data is None:
        raise ValueError(
            "`representative_data` is needed for quantization='int8' of a float "
            "model, to calibrate its activation ranges: pass a few batches of "
            "training data, or quantize the model with tfopt.quantize and "
            "fine-tune it first. Received: representative_data=None")
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantization is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if sparse:
        converter.optimizations = [*converter.optimizations,
                                   tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantization == "int8" and representative_data is not None:
        converter.representative_dataset = _representative(representative_data)
    if int8_io:
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    with warnings.catch_warnings():
        # The converter asks for input statistics that a QAT model does not
        # need (its ranges are learned); the file is right without them.
        warnings.filterwarnings("ignore", "Statistics for quantized inputs")
        data = converter.convert()
    eligibility = None
    if sparse:
        flat = _flatten.flat(model)
        eligibility = _xnnpack.eligibility(
            flat, "int8" if qat else quantization,
            tflite_ops(data).counts.get("DENSIFY", 0))
    _write_atomically(path, data, overwrite)
    return Exported(path, len(data), eligibility)


def export_saved_model(model, path, *, overwrite=False):
    """Saves `model` (pruning wrappers stripped) as a TensorFlow SavedModel.

    Args:
        model: A tf_keras model.
        path: The SavedModel directory to create.
        overwrite: Replace an existing directory. Defaults to `False`.

    Returns:
        `Exported(path, size_bytes)`, the size summed over its files.

    Raises:
        TypeError: For an argument of the wrong type.
        FileExistsError: If `path` exists and `overwrite` is False.

    Example:

    >>> import os, tempfile, tfopt
    >>> model = tfopt.models.build("tfmot_mnist", (8, 8), 10)
    >>> path = os.path.join(tempfile.mkdtemp(), "saved")
    >>> os.path.isdir(tfopt.export_saved_model(model, path).path)
    True
    """
    _keras.check_model(model)
    path = _check_path(path)
    _refuse_overwrite(path, overwrite)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(dir=parent, prefix=".tfopt-")
    try:
        _deployable(model).save(os.path.join(staging, "model"), save_format="tf")
        if os.path.exists(path):  # overwrite=True: the old one goes with staging
            os.rename(path, os.path.join(staging, "previous"))
        os.rename(os.path.join(staging, "model"), path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Exported(path, disk_sizes(path)[0])


def _custom_objects():
    # Registration covers the .keras format; the legacy .h5 config names the
    # top-level model class without its "tfopt>" package.
    return {"PrunedModel": pruning.PrunedModel,
            "ChannelPrunedModel": _channel_pruning.ChannelPrunedModel}


def load_model(path, *, compile=True, safe_mode=True):
    """Loads a `.keras`, `.h5` or SavedModel file of any tfopt/TFMOT model.

    TFMOT's wrappers and schedules, and tfopt's own classes, are in scope, so
    a pruned or quantization-aware model loads without `prune_scope` or
    `quantize_scope`, and a pruned one trains on with `PruningCallback`
    where it stopped.

    Args:
        path: The file or SavedModel directory.
        compile: Restore the optimizer and loss too. Defaults to `True`.
        safe_mode: Refuse to run code stored in a `.keras` file (a `Lambda`
            layer's). Pass `False` only for files you trust. Defaults to
            `True`.

    Returns:
        The tf_keras model.

    Raises:
        TypeError: If `path` is not a path or `compile`/`safe_mode` not a bool.
        FileNotFoundError: If nothing exists at `path`.
        OSError: If the file is truncated or not a Keras file (the message
            names it).

    Example:

    >>> import os, tempfile, tfopt
    >>> model = tfopt.prune(tfopt.models.build("tfmot_mnist", (8, 8), 10), 0.5)
    >>> path = os.path.join(tempfile.mkdtemp(), "pruned.keras")
    >>> model.save(path)
    >>> type(tfopt.load_model(path)).__name__
    'PrunedModel'
    """
    path = _check_path(path)
    _checks.check_bool(compile, "compile")
    _checks.check_bool(safe_mode, "safe_mode")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"`path` must name a .keras/.h5 file or a SavedModel directory; "
            f"nothing exists there. Received: path={path!r}")
    # tf_keras tries anything that is not a zip archive as HDF5 and says only
    # "file signature not found", without the path.
    unreadable = os.path.isfile(path) and not (
        zipfile.is_zipfile(path) or h5py.is_hdf5(path))
    try:
        if unreadable:
            raise OSError("neither a .keras archive nor an HDF5 file")
        # TFMOT's QAT layer names load as tfopt's subclasses, which fix their
        # .keras round trip. A scope, since scopes take precedence over
        # `custom_objects` and quantize_scope names TFMOT's own classes.
        with tfmot.sparsity.keras.prune_scope(), \
                tfmot.quantization.keras.quantize_scope(), \
                keras.utils.custom_object_scope(_tfmot.RAW_NAMES):
            return keras.models.load_model(
                path, custom_objects=_custom_objects(), compile=compile,
                safe_mode=safe_mode)
    except (OSError, zipfile.BadZipFile) as err:
        raise OSError(
            f"{path!r} is truncated or not a Keras file ({err}); an interrupted "
            f"save or copy leaves such a file. Received: path={path!r}") from err


def _tflite_source(model):
    """`model` checked as the bytes of a .tflite file or an existing path."""
    if isinstance(model, bytes):
        return model
    model = _check_path(model)
    if not os.path.isfile(model):
        raise FileNotFoundError(
            f"`model` must be a .tflite file or its bytes; no file there. "
            f"Received: model={model!r}")
    return model


def _interpreter(model, num_threads=None):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # tf.lite.Interpreter is deprecated but still there
        Interpreter = tf.lite.Interpreter
    try:
        if isinstance(model, bytes):
            return Interpreter(model_content=model, num_threads=num_threads)
        return Interpreter(model_path=model, num_threads=num_threads)
    except ValueError as err:
        where = "the bytes given" if isinstance(model, bytes) else repr(model)
        raise ValueError(f"`model` is not a readable .tflite file ({err}): "
                         f"{where} is truncated or holds something else. "
                         f"Received: model={where}") from err


def _to_input(x, detail):
    if detail["dtype"] in (np.int8, np.uint8):
        scale, zero = detail["quantization"]
        limits = np.iinfo(detail["dtype"])
        return np.clip(np.round(x / scale + zero), limits.min, limits.max).astype(
            detail["dtype"])
    return x.astype(detail["dtype"])


def _from_output(y, detail):
    if detail["dtype"] in (np.int8, np.uint8):
        scale, zero = detail["quantization"]
        return (y.astype(np.float32) - zero) * scale
    return y


def evaluate_tflite(model, dataset):
    """Accuracy and latency of a TFLite model on `(x, label)` batches.

    Runs the LiteRT interpreter (`ai_edge_litert`) when installed, else
    `tf.lite.Interpreter`; int8 inputs and outputs are (de)quantized with the
    file's own scale and zero point.

    Args:
        model: The `.tflite` path, or its bytes.
        dataset: Batches `(x, label)`: a `tf.data.Dataset` or any iterable.

    Returns:
        `TFLiteEvaluation(accuracy, examples, mean_batch_latency_ms)`.

    Raises:
        TypeError: If `model` is neither bytes nor a path, or `dataset` not
            iterable.
        FileNotFoundError: If the path does not exist.

    Example:

    >>> import os, tempfile, tfopt
    >>> train, val, test, info = tfopt.data.load("digits", batch_size=64)
    >>> model = tfopt.models.build("tfmot_mnist", info.input_shape, 10)
    >>> path = os.path.join(tempfile.mkdtemp(), "m.tflite")
    >>> path = tfopt.export_tflite(model, path).path
    >>> tfopt.evaluate_tflite(path, test).examples
    359
    """
    model = _tflite_source(model)
    if not hasattr(dataset, "__iter__"):
        raise TypeError(
            "`dataset` must be an iterable of (x, label) batches. "
            f"Received: dataset={dataset!r}")
    interpreter = _interpreter(model)
    source, = interpreter.get_input_details()
    target = interpreter.get_output_details()[0]
    shape, correct, examples, seconds, batches = None, 0, 0, 0.0, 0
    for x, labels in dataset:
        x = np.asarray(x, np.float32)
        if x.shape != shape:
            interpreter.resize_tensor_input(source["index"], x.shape)
            interpreter.allocate_tensors()
            shape = x.shape
        interpreter.set_tensor(source["index"], _to_input(x, source))
        start = time.perf_counter()
        interpreter.invoke()
        seconds += time.perf_counter() - start
        logits = _from_output(interpreter.get_tensor(target["index"]), target)
        correct += int((logits.argmax(axis=-1) == np.asarray(labels)).sum())
        examples += len(x)
        batches += 1
    return TFLiteEvaluation(correct / max(examples, 1), examples,
                            1000 * seconds / max(batches, 1))


def _ops_details(interpreter):
    # The interpreter lists a model's ops only through this method (the
    # LiteRT and TensorFlow interpreters alike); there is no public one.
    return interpreter._get_ops_details()


def tflite_ops(model):
    """Counts the ops of a TFLite model and names its float compute ops.

    An int8 file is integer end to end when its only QUANTIZE and
    DEQUANTIZE ops are at the input and output and `float_ops` is empty;
    `requantize` counts the QUANTIZE ops that only change an int8 tensor's
    scale (e.g. before a CONCATENATION of inputs with different ranges).

    Args:
        model: The `.tflite` path, or its bytes.

    Returns:
        A `TFLiteOps`; `float_ops` holds "OP (output tensor name)" strings.

    Raises:
        TypeError: If `model` is neither bytes nor a path.
        FileNotFoundError: If the path does not exist.

    Example:

    >>> import os, tempfile, tfopt
    >>> model = tfopt.models.build("tfmot_mnist", (8, 8, 1), 10)
    >>> path = os.path.join(tempfile.mkdtemp(), "m.tflite")
    >>> ops = tfopt.export.tflite_ops(tfopt.export_tflite(model, path).path)
    >>> ops.quantize, ops.dequantize, ops.counts["CONV_2D"], bool(ops.float_ops)
    (0, 0, 1, True)
    """
    model = _tflite_source(model)
    interpreter = _interpreter(model)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    counts, islands, requantize = {}, [], 0
    for op in _ops_details(interpreter):
        name = op["op_name"]
        counts[name] = counts.get(name, 0) + 1
        inputs = [tensors[i] for i in op["inputs"] if i in tensors]
        requantize += name == "QUANTIZE" and inputs[0]["dtype"] != np.float32
        outputs = [tensors[i] for i in op["outputs"] if i in tensors]
        if name not in ("QUANTIZE", "DEQUANTIZE") and any(
            t["dtype"] == np.float32 for t in outputs
        ):
            islands.append(f"{name} ({outputs[0]['name']})")
    return TFLiteOps(counts, counts.get("QUANTIZE", 0), counts.get("DEQUANTIZE", 0),
                     tuple(islands), requantize)

"""TFLite files, whichever Keras made the model: the converter settings of
each quantization (built-in ops only), the refusal to replace a file
unless asked (the writing itself: `tfopt.core.files`), the LiteRT
interpreter, `evaluate_tflite` and `tflite_ops`. Nothing here imports a
Keras: `tfopt.keras2.export` (tf_keras) and `tfopt.keras3.export` (Keras 3)
hand it a converter.
"""

import gzip
import os
import re
import time
import warnings
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from tfopt.core import checks, vocab

QUANTIZATIONS = vocab.QUANTIZATIONS
# Why a QAT range that is NaN or infinite is refused (both Kerases): the
# converter, handed one, can crash the process.
DIVERGED = (
    "training diverged (a NaN or infinite loss) before it, so no int8 file "
    "can represent it. Fix the training (learning rate, input scaling) and "
    "quantize again."
)
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
    files = (
        [path]
        if os.path.isfile(path)
        else [
            os.path.join(root, name)
            for root, _, names in os.walk(path)
            for name in names
        ]
    )
    size = packed = 0
    for name in files:
        with open(name, "rb") as file:
            content = file.read()
        size += len(content)
        packed += len(gzip.compress(content, compresslevel=9))
    return size, packed


def check_path(path):
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`path` must be a path. Received: path={path!r}")
    return os.fspath(path)


def check_load(path, compile, safe_mode, kinds):
    """The checks on `load_model`'s arguments; `kinds` says what `path` may
    name. Returns `path` as a str."""
    path = check_path(path)
    checks.check_bool(compile, "compile")
    checks.check_bool(safe_mode, "safe_mode")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"`path` must name {kinds}; nothing exists there. Received: path={path!r}"
        )
    return path


def refuse_overwrite(path, overwrite):
    checks.check_bool(overwrite, "overwrite")
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(
            f"`path` already exists and tfopt never replaces a file unless "
            f"overwrite=True. Received: path={path!r}"
        )


def _model_input(batch):
    """`batch` as the converter and interpreter take it: floats as float32,
    integers (token ids for an `Embedding`) as they are."""
    values = np.asarray(batch)
    return (
        values if np.issubdtype(values.dtype, np.integer) else values.astype(np.float32)
    )


def _representative(data):
    def samples():
        source = data() if callable(data) else data
        count = 0
        for element in source:
            batch = element[0] if isinstance(element, (tuple, list)) else element
            for sample in _model_input(batch):
                yield [sample[None]]
                count += 1
                if count >= _CALIBRATION_SAMPLES:
                    return

    return samples


def check_export(path, quantization, representative_data, int8_io, sparse):
    """The checks on `export_tflite`'s arguments; returns `path` as a str."""
    path = check_path(path)
    checks.check_choice(quantization, "quantization", QUANTIZATIONS)
    checks.check_bool(int8_io, "int8_io")
    checks.check_bool(sparse, "sparse")
    if int8_io and quantization != "int8":
        raise ValueError(
            "`int8_io` needs quantization='int8'. "
            f"Received: int8_io=True, quantization={quantization!r}"
        )
    if representative_data is not None and not (
        isinstance(representative_data, tf.data.Dataset)
        or callable(representative_data)
    ):
        raise TypeError(
            "`representative_data` must be a tf.data.Dataset or a callable "
            "returning batches, or None. "
            f"Received: representative_data={representative_data!r}"
        )
    return path


def convert(converter, quantization, representative_data, int8_io, sparse):
    """The bytes of the file `converter` makes with these settings.

    Only TFLite's built-in ops are allowed (the converter's default, set
    here because Keras 3's own `export(format="litert")` adds Flex ops that
    need the TensorFlow runtime); a model that needs another op fails here
    with the converter's message, and a file that still holds a Flex or
    custom op is refused.
    """
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    # The converter's own record of its options and versions: no runtime
    # reads it, and it is 1% of a small int8 file gzipped.
    converter.exclude_conversion_metadata = True
    if quantization is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if sparse:
        converter.optimizations = [
            *converter.optimizations,
            tf.lite.Optimize.EXPERIMENTAL_SPARSITY,
        ]
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
        try:
            data = converter.convert()
        except Exception as err:  # the converter's ConverterError is not public
            found = re.search(r"TF Select ops: ([^\n]*)", str(err))
            if found is None:
                raise
            raise ValueError(_flex_message(found.group(1).split(", "))) from err
    foreign = sorted(
        {
            name
            for name in tflite_ops(data).counts
            if name.startswith("Flex") or name == "CUSTOM"
        }
    )
    if foreign:
        raise ValueError(_flex_message(foreign))
    return data


def _flex_message(ops):
    return (
        f"The model needs TensorFlow ops that TFLite has no built-in kernel "
        f"for: {sorted(ops)}. tfopt writes files of built-in ops only (a Flex "
        "op needs the TensorFlow-linked runtime, which phones and "
        "microcontrollers do not have): replace the layers that make them."
    )


def _tflite_source(model):
    """`model` checked as the bytes of a .tflite file or an existing path."""
    if isinstance(model, bytes):
        return model
    model = check_path(model)
    if not os.path.isfile(model):
        raise FileNotFoundError(
            f"`model` must be a .tflite file or its bytes; no file there. "
            f"Received: model={model!r}"
        )
    return model


def open_interpreter(model, num_threads=None):
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
        raise ValueError(
            f"`model` is not a readable .tflite file ({err}): "
            f"{where} is truncated or holds something else. "
            f"Received: model={where}"
        ) from err


def to_input(x, detail):
    if detail["dtype"] in (np.int8, np.uint8):
        scale, zero = detail["quantization"]
        limits = np.iinfo(detail["dtype"])
        return np.clip(np.round(x / scale + zero), limits.min, limits.max).astype(
            detail["dtype"]
        )
    return x.astype(detail["dtype"])


def from_output(y, detail):
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
            f"Received: dataset={dataset!r}"
        )
    interpreter = open_interpreter(model)
    (source,) = interpreter.get_input_details()
    target = interpreter.get_output_details()[0]
    shape, correct, examples, seconds, batches = None, 0, 0, 0.0, 0
    for x, labels in dataset:
        x = _model_input(x)
        if x.shape != shape:
            interpreter.resize_tensor_input(source["index"], x.shape)
            interpreter.allocate_tensors()
            shape = x.shape
        interpreter.set_tensor(source["index"], to_input(x, source))
        start = time.perf_counter()
        interpreter.invoke()
        seconds += time.perf_counter() - start
        logits = from_output(interpreter.get_tensor(target["index"]), target)
        correct += int((logits.argmax(axis=-1) == np.asarray(labels)).sum())
        examples += len(x)
        batches += 1
    return TFLiteEvaluation(
        correct / max(examples, 1), examples, 1000 * seconds / max(batches, 1)
    )


def ops_details(interpreter):
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
    interpreter = open_interpreter(model)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    counts, islands, requantize = {}, [], 0
    for op in ops_details(interpreter):
        name = op["op_name"]
        counts[name] = counts.get(name, 0) + 1
        inputs = [tensors[i] for i in op["inputs"] if i in tensors]
        requantize += name == "QUANTIZE" and inputs[0]["dtype"] != np.float32
        outputs = [tensors[i] for i in op["outputs"] if i in tensors]
        if name not in ("QUANTIZE", "DEQUANTIZE") and any(
            t["dtype"] == np.float32 for t in outputs
        ):
            islands.append(f"{name} ({outputs[0]['name']})")
    return TFLiteOps(
        counts,
        counts.get("QUANTIZE", 0),
        counts.get("DEQUANTIZE", 0),
        tuple(islands),
        requantize,
    )

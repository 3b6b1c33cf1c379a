"""Exporting and loading tf_keras models: TFLite files (float, dynamic,
float16, int8), SavedModels, and `load_model` for any tfopt/TFMOT model.
What TFLite files have in common with Keras 3's (`_k3_export`) is in
`_tflite`, `evaluate_tflite` and `tflite_ops` included.

Every write goes to a temporary file beside the target and is moved into
place, so a crash never leaves half a file, and an existing file is never
replaced unless `overwrite=True`.
"""

import os
import shutil
import tempfile
import zipfile

import h5py
import tensorflow as tf
import tensorflow_model_optimization as tfmot

from tfopt.core import tflite, vocab
from tfopt.core.tflite import (  # noqa: F401 (public names of this module)
    QUANTIZATIONS,
    Exported,
    TFLiteEvaluation,
    TFLiteOps,
    disk_sizes,
    evaluate_tflite,
    tflite_ops,
)
from tfopt.keras2 import (
    binding,
    distillation,
    graph,
    pruning,
    selection,
    xnnpack,
)
from tfopt.keras2 import tfmot as _tfmot
from tfopt.keras2.binding import keras
from tfopt.keras2.xnnpack import SparseEligibility

__all__ = [
    "EXPORTS",
    "QUANTIZATIONS",
    "SparseEligibility",
    "TFLITE_FORMATS",
    "TFLiteOps",
    "disk_sizes",
    "evaluate_tflite",
    "export_saved_model",
    "export_tflite",
    "load_model",
    "tflite_ops",
]

# The artifacts the scripts can make: a SavedModel or a TFLite file per
# quantization (the flag names map to `export_tflite`'s `quantization`).
TFLITE_FORMATS = vocab.TFLITE_FORMATS
EXPORTS = tuple(vocab.EXPORTS)


def _deployable(model):
    """The model to ship: a Distiller's student, without pruning wrappers."""
    if isinstance(model, distillation.Distiller):
        model = model.student
    return pruning.strip(model) if pruning.wrappers(model) else model


def export_tflite(
    model,
    path,
    *,
    quantization=None,
    representative_data=None,
    int8_io=False,
    overwrite=False,
    sparse=False,
):
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
    binding.check_model(model)
    path = tflite.check_export(path, quantization, representative_data, int8_io, sparse)
    tflite.refuse_overwrite(path, overwrite)
    model = _deployable(model)
    qat = selection.is_quantized(model)
    if quantization == "int8" and not qat and representative_data is None:
        raise ValueError(
            "`representative_data` is needed for quantization='int8' of a float "
            "model, to calibrate its activation ranges: pass a few batches of "
            "training data, or quantize the model with tfopt.quantize and "
            "fine-tune it first. Received: representative_data=None"
        )
    data = tflite.convert(
        tf.lite.TFLiteConverter.from_keras_model(model),
        quantization,
        representative_data,
        int8_io,
        sparse,
    )
    eligibility = None
    if sparse:
        flat = graph.flat(model)
        eligibility = xnnpack.eligibility(
            flat,
            "int8" if qat else quantization,
            tflite_ops(data).counts.get("DENSIFY", 0),
        )
    tflite.write_atomically(path, data, overwrite)
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
    binding.check_model(model)
    path = tflite.check_path(path)
    tflite.refuse_overwrite(path, overwrite)
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
    return {
        "PrunedModel": pruning.PrunedModel,
        "ChannelPrunedModel": pruning.ChannelPrunedModel,
    }


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

"""Shipping a model, of either Keras: TFLite files, SavedModels, and loading
what tfopt (or TFMOT, or either Keras) saved.

`export_tflite` goes to `tfopt.keras2.export` (tf_keras; QAT ranges, sparse
files) or `tfopt.keras3.export` (Keras 3; built-in ops only), by the model
given; TFLite files themselves are the same for both (`tfopt.core.tflite`:
`evaluate_tflite`, `tflite_ops`). `load_model` picks by the file.

The tf_keras names this module held before it served both Kerases are still
read from `tfopt.keras2.export` for one release; import them from there.
"""

import json
import os
import zipfile

from tfopt import legacy
from tfopt.core import tflite, vocab
from tfopt.core.kerases import Keras, require
from tfopt.core.tflite import (
    Exported,
    TFLiteEvaluation,
    TFLiteOps,
    disk_sizes,
    evaluate_tflite,
    tflite_ops,
)

__all__ = [
    "EXPORTS",
    "Exported",
    "QUANTIZATIONS",
    "TFLITE_FORMATS",
    "TFLiteEvaluation",
    "TFLiteOps",
    "disk_sizes",
    "evaluate_tflite",
    "export_saved_model",
    "export_tflite",
    "load_model",
    "tflite_ops",
]

QUANTIZATIONS = vocab.QUANTIZATIONS
TFLITE_FORMATS = vocab.TFLITE_FORMATS
EXPORTS = tuple(vocab.EXPORTS)


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
    """Converts `model` (either Keras) to a TFLite file of built-in ops.

    A Distiller exports its student; pruning is stripped first. A tf_keras
    QAT model (`tfopt.quantize`) converts to int8 with the ranges it
    learned; a float model needs `representative_data` to calibrate int8.
    Every write goes to a temporary file beside `path` and is moved into
    place, so a crash never leaves half a file.

    Args:
        model: A model of either Keras: plain, pruned, distilled or QAT.
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
    implementation = _implementation(model)
    implementation.check_model(model)
    path = tflite.check_export(path, quantization, representative_data, int8_io, sparse)
    tflite.refuse_overwrite(path, overwrite)
    return implementation.export_tflite(
        model,
        path,
        quantization=quantization,
        representative_data=representative_data,
        int8_io=int8_io,
        overwrite=overwrite,
        sparse=sparse,
    )


def _implementation(model):
    if Keras.of(model) is Keras.KERAS3:
        from tfopt.keras3 import export as implementation
    else:
        from tfopt.keras2 import export as implementation
    return implementation


def export_saved_model(model, path, *, overwrite=False):
    """Saves `model` (pruning stripped, a Distiller's student) as a
    TensorFlow SavedModel directory, for TF Serving, TF.js or the TFLite
    converter. A tf_keras model is saved whole (`model.save(...,
    save_format="tf")`); a Keras 3 model as its inference call, the
    `serve` signature (`keras.export.ExportArchive`, what
    `model.export(format="tf_saved_model")` writes), reloaded with
    `tf.saved_model.load`.

    Args:
        model: A model of either Keras.
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
    require("export_saved_model", model, "tfopt.export_saved_model")
    return _implementation(model).export_saved_model(model, path, overwrite=overwrite)


def _keras_version(path):
    # A `.keras` file names the Keras that wrote it in metadata.json.
    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read("metadata.json")).get("keras_version")
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


def _written_by_keras3(path):
    """A `.keras` file of Keras 3, or a SavedModel directory Keras 3's
    `ExportArchive` wrote (tf_keras's hold `keras_metadata.pb`)."""
    if not isinstance(path, (str, os.PathLike)):
        return False
    path = os.fspath(path)
    if path.endswith(".keras"):
        return Keras.from_version(_keras_version(path)) is Keras.KERAS3
    import h5py  # TensorFlow's dependency; only for HDF5 files

    if os.path.isfile(path) and h5py.is_hdf5(path):
        # A legacy HDF5 file names the Keras that wrote it in an attribute.
        with h5py.File(path, "r") as file:
            version = file.attrs.get("keras_version")
        version = version.decode() if isinstance(version, bytes) else version
        return Keras.from_version(version) is Keras.KERAS3
    return os.path.isfile(os.path.join(path, "saved_model.pb")) and not (
        os.path.isfile(os.path.join(path, "keras_metadata.pb"))
    )


def load_model(path, *, compile=True, safe_mode=True):
    """Loads a model saved by tfopt, TFMOT or either Keras.

    A `.keras` file written by Keras 3 loads as a Keras 3 model (tfopt's
    pruned and QAT ones included, their masks and schedules restored); a
    SavedModel directory a Keras 3 model was exported to as a Keras 3 model
    of its `serve` function, for inference (`keras.layers.TFSMLayer`);
    every other file (`.keras` of tf_keras, `.h5`, SavedModel directories) as a tf_keras
    model with TFMOT's and tfopt's classes in scope, so a pruned or
    quantization-aware model trains on with `PruningCallback` where it
    stopped.

    Args:
        path: The file or SavedModel directory.
        compile: Restore the optimizer and loss too. Defaults to `True`.
        safe_mode: Refuse to run code stored in a `.keras` file (a `Lambda`
            layer's). Pass `False` only for files you trust. Defaults to
            `True`.

    Returns:
        The model.

    Raises:
        TypeError: If `path` is not a path or `compile`/`safe_mode` not a bool.
        FileNotFoundError: If nothing exists at `path`.
        OSError: If the file is truncated or not a Keras file.

    Example:

    >>> import os, tempfile, tfopt
    >>> model = tfopt.prune(tfopt.models.build("tfmot_mnist", (8, 8), 10), 0.5)
    >>> path = os.path.join(tempfile.mkdtemp(), "pruned.keras")
    >>> model.save(path)
    >>> loaded = tfopt.load_model(path)  # with its masks and schedule
    >>> sum(row.pruned for row in tfopt.sparsity_report(loaded).rows)
    2
    """
    if _written_by_keras3(path):
        from tfopt.keras3 import export as implementation
    else:
        from tfopt.keras2 import export as implementation
    return implementation.load_model(path, compile=compile, safe_mode=safe_mode)


# The tf_keras name this module held before it served both Kerases.
__getattr__ = legacy.moved(__name__, {"SparseEligibility": "tfopt.core.xnnpack"})

"""Loading (and, with the QAT issue, exporting) tfopt and TFMOT models."""

import os

import tensorflow_model_optimization as tfmot

from tfopt import pruning
from tfopt._keras import keras


def _custom_objects():
    # Registration covers the .keras format; the legacy .h5 config names the
    # top-level model class without its "tfopt>" package.
    return {"PrunedModel": pruning.PrunedModel}


def load_model(path, *, compile=True):
    """Loads a `.keras`, `.h5` or SavedModel file of any tfopt/TFMOT model.

    TFMOT's wrappers and schedules, and tfopt's own classes, are in scope, so
    a pruned (or quantization-aware) model loads without `prune_scope`, and a
    pruned one trains on with `PruningCallback` where it stopped.

    Args:
        path: The file or SavedModel directory.
        compile: Restore the optimizer and loss too. Defaults to `True`.

    Returns:
        The tf_keras model.

    Raises:
        TypeError: If `path` is not a path or `compile` not a bool.
        FileNotFoundError: If nothing exists at `path`.

    Example:

    >>> import os, tempfile, tfopt
    >>> model = tfopt.prune(tfopt.models.build("tfmot_mnist", (8, 8), 10), 0.5)
    >>> path = os.path.join(tempfile.mkdtemp(), "pruned.keras")
    >>> model.save(path)
    >>> type(tfopt.load_model(path)).__name__
    'PrunedModel'
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`path` must be a path. Received: path={path!r}")
    if not isinstance(compile, bool):
        raise TypeError(f"`compile` must be a bool. Received: compile={compile!r}")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"`path` must name a .keras/.h5 file or a SavedModel directory; "
            f"nothing exists there. Received: path={os.fspath(path)!r}")
    with tfmot.sparsity.keras.prune_scope(), tfmot.quantization.keras.quantize_scope():
        return keras.models.load_model(
            path, custom_objects=_custom_objects(), compile=compile)

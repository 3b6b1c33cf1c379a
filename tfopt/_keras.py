"""The tf_keras binding that tfopt and TFMOT share, and the Keras 3 guard.

TFMOT 0.8 only accepts tf_keras (Keras 2) objects, while TensorFlow 2.16+
routes ``tf.keras`` to Keras 3 unless ``TF_USE_LEGACY_KERAS=1`` is set before
TensorFlow first resolves ``tf.keras``. TFMOT sets the variable itself at
import time; tfopt sets it here, explicitly and earlier, so that importing
tfopt first makes ``tf.keras`` and ``tfopt.keras`` the same module.
"""

import os
import warnings

# Must precede the TensorFlow import: ``tensorflow/__init__`` reads it to
# route ``from tensorflow.keras import ...`` and ``tf.keras`` reads it on
# first access.
os.environ["TF_USE_LEGACY_KERAS"] = "1"

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

_FIXES = (
    "tfopt and TFMOT only accept tf_keras (Keras 2) objects. Either build it "
    "with `from tfopt import keras` (or `import tf_keras as keras`), or set "
    "the environment variable TF_USE_LEGACY_KERAS=1 before importing "
    "TensorFlow so that `tf.keras` is tf_keras."
)


def _warn_if_tf_keras_is_keras3():
    # tf.keras resolves once per process: if the user touched it before
    # importing tfopt, it stays Keras 3 and models built with it will be
    # rejected later. Say so now, while the fix is cheap.
    version = str(getattr(tf.keras, "__version__", ""))
    if version.startswith("3."):
        warnings.warn(
            f"`tf.keras` already resolved to Keras {version} before tfopt was "
            "imported, so models built with `tf.keras` will be rejected. "
            "Build models with `from tfopt import keras`, or import tfopt "
            "(or set TF_USE_LEGACY_KERAS=1) before TensorFlow.",
            RuntimeWarning,
            stacklevel=3,
        )


_warn_if_tf_keras_is_keras3()


def _is_foreign_keras(obj):
    """True for objects of Keras 3 (the `keras` package), not of tf_keras."""
    return any(
        cls.__module__.split(".", 1)[0] == "keras" for cls in type(obj).__mro__
    )


def _describe(obj):
    name = getattr(obj, "name", None)
    kind = type(obj).__name__
    return f"{kind} {name!r}" if isinstance(name, str) else kind


def check_keras2(obj, arg):
    """Raises `TypeError` when `obj` is a Keras 3 model, layer or optimizer.

    Args:
        obj: Any object a user passed to tfopt.
        arg: The argument's name, quoted in the message.

    Raises:
        TypeError: If `obj` comes from Keras 3 rather than tf_keras.
    """
    if _is_foreign_keras(obj):
        raise TypeError(
            f"`{arg}` must be a tf_keras object, not a Keras 3 "
            f"{_describe(obj)} (class {type(obj).__module__}."
            f"{type(obj).__qualname__}). {_FIXES} Received: {arg}={obj!r}"
        )


def check_model(model, arg="model"):
    """Raises `TypeError` unless `model` is a tf_keras `Model`.

    Every public entry point that takes a model calls this first, so misuse
    fails in Python with a message rather than deep inside TFMOT.

    Args:
        model: The object received where a model is expected.
        arg: The argument's name, quoted in the message. Defaults to `model`.

    Returns:
        `model`, unchanged.

    Raises:
        TypeError: If `model` is a Keras 3 object or not a Keras model.
    """
    check_keras2(model, arg)
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"`{arg}` must be a tf_keras Model (build it with "
            f"`from tfopt import keras`). Received: {arg}={model!r} of type "
            f"{type(model).__module__}.{type(model).__qualname__}"
        )
    return model


def check_compile(optimizer, loss, metrics):
    """Raises `TypeError` for a Keras 3 optimizer, loss or metric given to
    the `compile` of a tfopt model (tf_keras would say only "Could not
    interpret optimizer identifier")."""
    check_keras2(optimizer, "optimizer")
    for item in loss.values() if isinstance(loss, dict) else [loss]:
        check_keras2(item, "loss")
    found = metrics.values() if isinstance(metrics, dict) else metrics or []
    for item in found:
        check_keras2(item, "metrics")


def frozen(model):
    """Names of `model`'s layers with weights when none of its weights is
    trainable (`model.trainable = False`, or every layer frozen); else []."""
    if model.trainable_weights or not model.weights:
        return []
    return [layer.name for layer in model.layers if layer.weights]


def frozen_message(model, arg, consequence):
    """What to tell a user whose `model` is frozen, and the `consequence`."""
    return (f"`{arg}` has no trainable variables (its layers {frozen(model)} are "
            f"frozen: trainable=False): {consequence}. Set `{arg}.trainable = "
            f"True` first. Received: {arg}={_describe(model)}")


# The `distribute_reduction_method` of tfopt's models, whose `train_step` and
# `test_step` return Keras metric results: already the same global value on
# every replica. tf_keras's "auto" SUMs such logs across workers under
# MultiWorkerMirroredStrategy (and across replicas for any value that is not
# a metric), so N workers would log N times the loss; "first" reports them
# as they are on every strategy. `predict` keeps concatenating.
SYNCED_LOGS = "first"

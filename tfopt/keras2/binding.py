"""The tf_keras binding that tfopt and TFMOT share, and the Keras 3 guard.

tf_keras loads only when a program engages it: reads
`tfopt.keras`, or hands tfopt a tf_keras model. A Keras 3 model never loads
it, nor TFMOT, so a program that only uses Keras 3 keeps `tf.keras` as
TensorFlow made it.

What engaging it does to `tf.keras`: TFMOT 0.8's import sets
``TF_USE_LEGACY_KERAS=1`` and then reads ``tf.keras``
(``tensorflow_model_optimization/python/core/keras/compat.py``). ``tf.keras``
is a lazy module that reads the variable once, on first use: if nothing
used it yet, it becomes tf_keras for the rest of the process; if the program
already used it (as Keras 3), it stays Keras 3 and TFMOT imports tf_keras
directly. tfopt sets the variable here too, before TFMOT, so that both
orders give a tf_keras program one Keras under both names. A program that
mixes both worlds and wants ``tf.keras`` to stay Keras 3 touches it first
(``tf.keras.Model``); ``import keras`` is Keras 3 whatever happens.
"""

import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tf_keras as keras  # noqa: E402

from tfopt.core.kerases import Keras

if getattr(sys.modules.get("tfopt.devices"), "requested_policy", None):
    # configure_devices(mixed_precision=...) ran before tf_keras loaded.
    keras.mixed_precision.set_global_policy(
        sys.modules["tfopt.devices"].requested_policy
    )

_FIXES = (
    "tfopt and TFMOT only accept tf_keras (Keras 2) objects here. Either build "
    "it with `from tfopt import keras` (or `import tf_keras as keras`), or "
    "build every model of this call with Keras 3 (`import keras`): tfopt "
    "takes both, one Keras per call."
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
    if Keras.of(obj) is Keras.KERAS3:
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
    return (
        f"`{arg}` has no trainable variables (its layers {frozen(model)} are "
        f"frozen: trainable=False): {consequence}. Set `{arg}.trainable = "
        f"True` first. Received: {arg}={_describe(model)}"
    )


# The `distribute_reduction_method` of tfopt's models, whose `train_step` and
# `test_step` return Keras metric results: already the same global value on
# every replica. tf_keras's "auto" SUMs such logs across workers under
# MultiWorkerMirroredStrategy (and across replicas for any value that is not
# a metric), so N workers would log N times the loss; "first" reports them
# as they are on every strategy. `predict` keeps concatenating.
SYNCED_LOGS = "first"


def per_example(loss):
    """A per-example version of the compiled hard-label `loss`."""
    loss = keras.losses.get(loss)
    if isinstance(loss, keras.losses.Loss):
        config = {**loss.get_config(), "reduction": "none"}
        return loss.__class__.from_config(config)
    return loss

"""The main job's models: the user's saved model, a `keras.applications`
architecture, a builder the user wrote, or a reference model (forms in
`tfopt.job.specs`), loaded or built as a classifier with logits out.

Saved models are read through `tf.io.gfile` (any TensorFlow file system:
`gs://` on a Cloud TPU, `ram://` in the tests) into a local copy, since
HDF5 and SavedModel readers want local files. Every failure a user can
cause (a file that is not a model, an unregistered custom layer, a builder
that cannot be imported, shapes that disagree with the data) is a
`ConfigError` of one line, raised before the run writes anything.
"""

import dataclasses
import hashlib
import importlib
import logging
import os
import re
import sys
import zipfile

import h5py
import numpy as np
import tensorflow as tf

from tfopt import export, models
from tfopt.core.kerases import Keras
from tfopt.job import files, specs
from tfopt.job.fields import ConfigError

_log = logging.getLogger("tfopt.job.pipeline")


def import_object(text, name):
    """The object `module.path:attribute` names; the current directory is
    searched too (as `python -m` does), where a user's own modules are."""
    module_name, _, attribute = text.partition(":")
    module = import_module(module_name, name, text)
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ConfigError(
            f"`{name}={text}`: module {module_name} has no {attribute!r}."
        ) from None


def import_module(module_name, name, text):
    """Imports the user's module, the current directory first (as `python -m`
    does) for the import only: the module stays in `sys.modules`."""
    added = os.getcwd() not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 - any failure of the user's import
        raise ConfigError(
            f"`{name}={text}` cannot be imported: {type(err).__name__}: {err}."
        ) from err
    finally:
        if added:
            sys.path.remove(os.getcwd())


def local_copy(path, scratch):
    """`path` itself if local, else a copy of the file or directory tree in
    `scratch` (one per path, made once), read through `tf.io.gfile`."""
    if "://" not in path:
        return path
    key = hashlib.sha1(path.encode()).hexdigest()[:16]
    target = os.path.join(
        scratch, "inputs", key, os.path.basename(path.rstrip("/")) or "model"
    )
    if os.path.exists(target):
        return target
    files.copy_tree(path, target)
    return target


def _exists(path, name):
    try:
        return tf.io.gfile.exists(path)
    except tf.errors.NotFoundError:
        return False
    except tf.errors.OpError as err:  # credentials, permissions, a bad scheme
        raise ConfigError(
            f"`{name}={path}` cannot be read: {type(err).__name__}: {err.message}"
        ) from None


def resolve(config, scratch):
    """`config` with `keras` set: a saved model's own Keras (refusing a
    different explicit one), else the one asked for, else 3."""
    spec = config.model_spec
    keras = config.keras
    if spec.is_file:
        path = saved_path(config.model, "model")
        own = _file_keras(local_copy(path, scratch), config.model, "model")
        if keras is not None and keras != own:
            raise ConfigError(
                f"`model={config.model}` was saved by "
                f"{Keras.from_version(own).label}; drop `keras={keras}` or set "
                f"`keras={own}`."
            )
        keras = own
    return dataclasses.replace(config, keras=keras or "3")


def saved_path(path, name):
    if not _exists(path, name):
        raise ConfigError(
            f"`{name}={path}` must be {specs.MODEL_FORMS}; nothing is at {path}."
        )
    return path


def _file_keras(local, text, name):
    """'2' or '3': the Keras that wrote the saved model at `local`."""
    if os.path.isdir(local):
        if not os.path.isfile(os.path.join(local, "saved_model.pb")):
            raise ConfigError(
                f"`{name}={text}` is a directory but not a SavedModel (no "
                "saved_model.pb)."
            )
        if not os.path.isfile(os.path.join(local, "keras_metadata.pb")):
            raise ConfigError(
                f"`{name}={text}` is a SavedModel without Keras layers (Keras "
                "3's model.export() or tf.saved_model.save): it can only "
                "serve, so it can be `teacher` but not compressed; save the "
                "model with model.save('model.keras') instead."
            )
        return "2"
    if not (zipfile.is_zipfile(local) or h5py.is_hdf5(local)):
        raise ConfigError(
            f"`{name}={text}` is not a Keras model file (.keras, .h5 or a "
            "SavedModel directory)."
        )
    return "3" if export._written_by_keras3(local) else "2"


def _register_custom_objects(config):
    if config.custom_objects:
        import_module(config.custom_objects, "custom_objects", config.custom_objects)


def load(config, text, name, scratch, *, serving=False, note=False):
    """The saved model at `text` (field `name`), with logits out. A
    SavedModel without Keras layers loads only when `serving` (a teacher)."""
    _register_custom_objects(config)
    local = local_copy(saved_path(text, name), scratch)
    if not serving or not os.path.isdir(local):
        _file_keras(local, text, name)
    try:
        model = export.load_model(local, compile=False)
    except OSError as err:
        raise ConfigError(
            f"`{name}={text}` is not a Keras model file (.keras, .h5 or a "
            "SavedModel directory)."
        ) from err
    except (TypeError, ValueError) as err:
        raise ConfigError(_load_failure(text, name, err)) from err
    return to_logits(model, text, note)


def _load_failure(text, name, err):
    message = str(err)
    found = re.search(
        r"(?:Could not locate class|Unknown (?:layer|object|class)[^:]*:)\s*'?(\w+)",
        message,
    )
    if found:
        return (
            f"`{name}={text}` uses the custom class {found[1]!r}, which is "
            "not registered: decorate it with "
            "@keras.saving.register_keras_serializable() in a module and pass "
            "that module as `custom_objects` (e.g. --custom_objects=my_layers)."
        )
    first = message.strip().splitlines()[0] if message.strip() else ""
    return f"`{name}={text}` could not be loaded: {type(err).__name__}: {first}"


def to_logits(model, text, note=False):
    """`model` with a final softmax removed: the job trains on logits and
    exports them (`note`: say so)."""
    last = model.layers[-1] if getattr(model, "layers", None) else None
    activation = getattr(getattr(last, "activation", None), "__name__", None)
    if last is None or not (
        activation == "softmax" or type(last).__name__ == "Softmax"
    ):
        return _serving_logits(model, text, note)
    keras = models.keras_module(Keras.of(model))
    if activation == "softmax" and type(last).__name__ != "Activation":
        # The layer computes logits, then the softmax: keep the first part.
        last.activation = keras.activations.linear
    else:  # a Softmax or Activation layer: the model up to its input
        inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
        model = keras.Model(inputs, last.input, name=model.name)
    if note:
        _log.info(
            "      %s ends in a softmax: tfopt trains and exports its logits", text
        )
    return model


def _serving_logits(model, text, note):
    """A SavedModel that serves probabilities (its softmax inside the
    graph) as a model of their logarithms: logits up to a constant, which
    distillation's softmax cancels."""
    if type(model.layers[-1]).__name__ != "TFSMLayer":
        return model
    import keras

    shape = [1 if d is None else d for d in model.inputs[0].shape]
    out = np.asarray(model(np.zeros(shape, np.float32)))
    if out.min() < 0 or abs(out.sum(-1) - 1).max() > 1e-3:
        return model
    if note:
        _log.info("      %s serves probabilities: tfopt uses their logarithms", text)
    logits = keras.ops.log(keras.ops.maximum(model.outputs[0], 1e-12))
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return keras.Model(inputs, logits, name=model.name)


def build(config, text, name, info, seed, scratch, *, shape=None):
    """A freshly initialized model of `text` (a reference name,
    applications:NAME or module:function) for `info`'s classes, with input
    `shape`, else `input_shape`, else the data's."""
    spec = specs.model(text, name)
    keras = models.keras_module(config.keras_api)
    keras.utils.set_random_seed(seed)
    if shape is None:
        shape = (
            specs.shape(config.input_shape) if config.input_shape else info.input_shape
        )
    if spec.kind == "reference":
        return models.build(
            spec.value, shape, info.num_classes, keras_version=config.keras_api.value
        )
    try:
        if spec.kind == "applications":
            if not hasattr(keras.applications, spec.value):
                raise ConfigError(
                    f"`{name}={text}` is not in {keras.__name__}.applications "
                    "(e.g. MobileNetV2, EfficientNetB0, ResNet50)."
                )
            model = getattr(keras.applications, spec.value)(
                input_shape=_with_channels(shape),
                weights=None,
                classes=info.num_classes,
                classifier_activation=None,
            )
        else:
            model = import_object(text, name)(_with_channels(shape), info.num_classes)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(
            f"`{name}={text}` cannot be built for input {_with_channels(shape)} "
            f"and {info.num_classes} classes: {str(err).splitlines()[0]}"
            + (
                " Set `input_shape` (images are resized to it)."
                if not (config.input_shape)
                else ""
            )
        ) from err
    if Keras.of(model) is not config.keras_api:
        raise ConfigError(
            f"`{name}={text}` returned a {Keras.of(model).label} model; set "
            f"`keras={Keras.of(model).value}` (or build a "
            f"{config.keras_api.label} one)."
        )
    if config.weights and name == "model":
        model.load_weights(local_copy(config.weights, scratch))
    return to_logits(model, text)


def _with_channels(shape):
    return tuple(shape) if len(shape) == 3 else (*shape, 1)


def check_fits(model, text, name, info):
    """Refuses a model whose classes disagree with the data's."""
    outputs = model.outputs if hasattr(model, "outputs") else None
    width = outputs[0].shape[-1] if outputs else None
    if width is not None and width != info.num_classes:
        raise ConfigError(
            f"`{name}={text}` outputs {width} classes, but `dataset` has "
            f"{info.num_classes}."
        )
    shape = model.inputs[0].shape if getattr(model, "inputs", None) else None
    if shape is None or len(shape) not in (3, 4):
        raise ConfigError(
            f"`{name}={text}` takes inputs of shape {shape}; the job feeds "
            "images (height, width, channels)."
        )

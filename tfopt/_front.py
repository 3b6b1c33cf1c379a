"""One API for both Keras worlds: the public names that take a model pick
the implementation from the model they are given.

| public name            | tf_keras (TFMOT)          | Keras 3 (`keras`)          |
| ---------------------- | ------------------------- | -------------------------- |
| prune, strip,          | `pruning`                 | `_k3_pruning`              |
| sparsity_report        |                           |                            |
| PruningCallback        | `pruning`                 | `_k3_callback`             |
| Distiller,             | `distillation`            | `_k3_distillation`         |
| DistillationSchedule   |                           |                            |
| export_tflite,         | `export`                  | `_k3_export` (TFLite files |
| load_model             |                           | are the same: `_tflite`)   |
| quantize, shrink,      | `quantization`,           | refused with the reason    |
| export_saved_model     | `_channels`, `export`     | (phase 2)                  |

A model is Keras 3 when its class comes from the `keras` package; anything
else (tf_keras objects, and wrong types, whose errors the tf_keras checks
word) goes the tf_keras way. The Keras 3 modules import neither tf_keras nor
TFMOT, and this module imports no Keras at all, so a program that only uses
Keras 3 never loads them, and `tf.keras` stays what TensorFlow made it.
Callbacks learn their model in `set_model`, so `PruningCallback` and
`DistillationSchedule` choose there.
"""

import importlib
import json
import os
import sys
import zipfile

KERAS3 = "keras3"
TF_KERAS = "tf_keras"


def world(obj):
    """`KERAS3` for an object of a Keras 3 class, else `TF_KERAS`."""
    for cls in type(obj).__mro__:
        if cls.__module__.split(".", 1)[0] == "keras":
            return KERAS3
    return TF_KERAS


def keras_of(model):
    """The Keras module of `model`: Keras 3, or tf_keras (imported then)."""
    from tfopt import models

    return models.keras_module(3 if world(model) == KERAS3 else 2)


def _impl(obj, modules, name):
    return getattr(importlib.import_module(modules[world(obj)]), name)


_PRUNING = {TF_KERAS: "tfopt.pruning", KERAS3: "tfopt._k3_pruning"}
_DISTILLATION = {TF_KERAS: "tfopt.distillation", KERAS3: "tfopt._k3_distillation"}
_EXPORT = {TF_KERAS: "tfopt.export", KERAS3: "tfopt._k3_export"}


def prune(model, target_sparsity, **options):
    """`tfopt.pruning.prune` for a tf_keras model (TFMOT's wrappers), the
    Keras 3 equivalent (`PruningMask` constraints) for a Keras 3 one: the
    same arguments, schedules and checks. See `tfopt.pruning.prune`."""
    return _impl(model, _PRUNING, "prune")(model, target_sparsity, **options)


def strip(model):
    """Removes pruning from `model` (tf_keras or Keras 3), keeping the
    zeros. See `tfopt.pruning.strip`."""
    return _impl(model, _PRUNING, "strip")(model)


def sparsity_report(model, *, m_by_n=(2, 4)):
    """Zeros of every prunable weight of `model` (tf_keras or Keras 3). See
    `tfopt._sparsity.sparsity_report`."""
    return _impl(model, _PRUNING, "sparsity_report")(model, m_by_n=m_by_n)


def export_tflite(model, path, **options):
    """Writes `model` (tf_keras or Keras 3) as a TFLite file. See
    `tfopt.export.export_tflite`; a Keras 3 model takes the same arguments
    (`sparse=True` aside) and its file holds built-in ops only."""
    return _impl(model, _EXPORT, "export_tflite")(model, path, **options)


def _keras_version(path):
    # A `.keras` file names the Keras that wrote it in metadata.json.
    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read("metadata.json")).get("keras_version", "")
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return ""


def load_model(path, *, compile=True, safe_mode=True):
    """Loads a model saved by tfopt, TFMOT or either Keras. A `.keras` file
    written by Keras 3 loads as a Keras 3 model (tfopt's pruned ones
    included); every other file goes through `tfopt.export.load_model`."""
    if (isinstance(path, (str, os.PathLike)) and str(path).endswith(".keras")
            and _keras_version(path).startswith("3.")):
        from tfopt import _k3_export

        return _k3_export.load_model(path, compile=compile, safe_mode=safe_mode)
    from tfopt import export

    return export.load_model(path, compile=compile, safe_mode=safe_mode)


def _tf_keras_only(name, module, attribute):
    def call(model, *args, **options):
        if world(model) == KERAS3:
            raise TypeError(
                f"`model` must be a tf_keras model: tfopt.{name} is not available "
                "for Keras 3 models yet (quantization-aware training and channel "
                "pruning for Keras 3 are the next phase). A Keras 3 model exports "
                "to int8 with tfopt.export_tflite(model, path, "
                "quantization='int8', representative_data=...). "
                f"Received: model={model!r}")
        return getattr(importlib.import_module(module), attribute)(
            model, *args, **options)

    call.__name__ = name
    call.__doc__ = (f"`tfopt.{module.split('.')[-1]}.{attribute}` for a "
                    "tf_keras model; a Keras 3 model is refused with the reason.")
    return call


quantize = _tf_keras_only("quantize", "tfopt.quantization", "quantize")
shrink = _tf_keras_only("shrink", "tfopt._channels", "shrink_zeroed")
export_saved_model = _tf_keras_only("export_saved_model", "tfopt.export",
                                    "export_saved_model")


class _ByModel(type):
    """Makes `Cls(..., student=model)` an instance of the class of the
    model's world, and `isinstance(x, Cls)` true for either."""

    def __call__(cls, *args, **kwargs):
        model = kwargs.get(cls._model_arg)
        return _impl(model, cls._modules, cls.__name__)(*args, **kwargs)

    def __instancecheck__(cls, obj):
        # Only loaded modules are asked: a Keras 3 program never loads tf_keras.
        return any(isinstance(obj, getattr(sys.modules[m], cls.__name__))
                   for m in cls._modules.values() if m in sys.modules)


class Distiller(metaclass=_ByModel):
    """A teacher–student model: `tfopt.distillation.Distiller` for tf_keras
    models, `tfopt._k3_distillation.Distiller` (a Keras 3 `Model` with the
    same arguments and guarantees) for Keras 3 ones, chosen by `student`."""

    _model_arg = "student"
    _modules = _DISTILLATION

    @classmethod
    def from_config(cls, config):
        """The Distiller of `get_config()`'s dict, of the Keras that wrote it
        (its `keras_version`; configs written before it was recorded are
        tf_keras ones)."""
        world = KERAS3 if config.get("keras_version", 2) == 3 else TF_KERAS
        target = importlib.import_module(cls._modules[world])
        return target.Distiller.from_config(config)


_HOOKS = ("on_batch_begin", "on_batch_end", "on_epoch_begin", "on_epoch_end",
          "on_train_batch_begin", "on_train_batch_end", "on_test_batch_begin",
          "on_test_batch_end", "on_predict_batch_begin", "on_predict_batch_end",
          "on_train_begin", "on_train_end", "on_test_begin", "on_test_end",
          "on_predict_begin", "on_predict_end")


class Callback:
    """A callback that either Keras's `fit` takes: the methods both
    CallbackLists call, as no-ops. tf_keras's reads `_supports_tf_logs` and
    `_implements_*_batch_hooks()` (after `set_model`), Keras 3's reads the
    hooks and `async_safe`; neither needs its own base class."""

    _supports_tf_logs = False
    # On backends with threads (not TensorFlow's), Keras 3 runs batch-end
    # hooks off the training loop when every callback allows it. tfopt's
    # callbacks do nothing at a Keras 3 batch end.
    async_safe = True

    def __init__(self):
        self.model = None
        self.params = {}

    def _overrides(self, *hooks):
        return any(getattr(type(self), h) is not getattr(Callback, h) for h in hooks)

    def _implements_train_batch_hooks(self):
        return self._overrides("on_batch_begin", "on_batch_end",
                               "on_train_batch_begin", "on_train_batch_end")

    def _implements_test_batch_hooks(self):
        return self._overrides("on_test_batch_begin", "on_test_batch_end")

    def _implements_predict_batch_hooks(self):
        return self._overrides("on_predict_batch_begin", "on_predict_batch_end")

    def set_params(self, params):
        self.params = params

    def set_model(self, model):
        self.model = model


def _no_op(self, *args, **kwargs):
    return None


for _hook in _HOOKS:
    setattr(Callback, _hook, _no_op)


class _Callback(Callback):
    """A callback for either Keras that makes the callback of its model's
    world in `set_model` (both `fit`s call it before any hook) and hands
    every hook to it. Attributes it lacks are read from that callback."""

    _modules = None

    def __init__(self, **settings):
        super().__init__()
        self._settings = settings
        self._impl = None

    def set_params(self, params):
        self.params = params
        if self._impl is not None:
            self._impl.set_params(params)

    def set_model(self, model):
        cls = _impl(model, self._modules, type(self).__name__)
        if not isinstance(self._impl, cls):
            self._impl = cls(**self._settings)
            self._impl.set_params(self.params)
        self._impl.set_model(model)
        self.model = model

    # tf_keras asks these after `set_model`: the answers of the callback made.
    @property
    def _supports_tf_logs(self):
        return getattr(self._impl, "_supports_tf_logs", False)

    def _implements_train_batch_hooks(self):
        return self._impl is None or self._impl._implements_train_batch_hooks()

    def _implements_test_batch_hooks(self):
        return self._impl is None or self._impl._implements_test_batch_hooks()

    def _implements_predict_batch_hooks(self):
        return self._impl is None or self._impl._implements_predict_batch_hooks()

    def __getattr__(self, name):
        impl = self.__dict__.get("_impl")
        if impl is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(impl, name)


def _forward(hook):
    def call(self, *args, **kwargs):
        if self._impl is not None:
            return getattr(self._impl, hook)(*args, **kwargs)
        return None

    call.__name__ = hook
    return call


for _hook in _HOOKS:
    setattr(_Callback, _hook, _forward(_hook))


class PruningCallback(_Callback):
    """Drives pruning during `fit`, for a tf_keras model (TFMOT's wrappers;
    see `tfopt.pruning.PruningCallback` for the arguments) or a Keras 3 one.

    Args:
        log_dir: Where to write TensorBoard summaries. Defaults to `None`.
        update_freq: `epoch`, `batch` or every N batches. Defaults to `epoch`.
        data: Batches for Taylor channel ranking (tf_keras). Defaults to `None`.
    """

    _modules = {TF_KERAS: "tfopt.pruning", KERAS3: "tfopt._k3_callback"}

    def __init__(self, log_dir=None, update_freq="epoch", data=None):
        from tfopt import _checks

        _checks.check_callback_output(log_dir, update_freq)
        if data is not None:
            import tensorflow as tf

            if not isinstance(data, tf.data.Dataset):
                raise TypeError("`data` must be a tf.data.Dataset of (x, y) "
                                f"batches or None. Received: data={data!r}")
        super().__init__(log_dir=log_dir, update_freq=update_freq, data=data)


class DistillationSchedule(_Callback):
    """Sets a Distiller's temperature and/or alpha at the start of each
    epoch, for either Keras; see `tfopt.distillation.DistillationSchedule`.

    Args:
        temperature: A callable `epoch -> T`, or a list. Defaults to `None`.
        alpha: The same for alpha. Defaults to `None`.
    """

    _modules = _DISTILLATION

    def __init__(self, temperature=None, alpha=None):
        from tfopt import _distill

        _distill.check_schedule_specs(temperature, alpha)
        super().__init__(temperature=temperature, alpha=alpha)

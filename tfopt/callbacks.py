"""Callbacks that either Keras's `fit` takes.

`Callback` is a base with the hooks both CallbackLists call, as no-ops (the
main job's epoch callbacks use it). `ByModel` is the base of the public
callbacks whose work depends on the Keras of the model (`PruningCallback`):
it makes the implementation of that Keras in
`set_model`, which both `fit`s call before any hook, and hands every hook
to it.
"""

from tfopt.core.kerases import Keras

_HOOKS = (
    "on_batch_begin",
    "on_batch_end",
    "on_epoch_begin",
    "on_epoch_end",
    "on_train_batch_begin",
    "on_train_batch_end",
    "on_test_batch_begin",
    "on_test_batch_end",
    "on_predict_batch_begin",
    "on_predict_batch_end",
    "on_train_begin",
    "on_train_end",
    "on_test_begin",
    "on_test_end",
    "on_predict_begin",
    "on_predict_end",
)


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
        return self._overrides(
            "on_batch_begin",
            "on_batch_end",
            "on_train_batch_begin",
            "on_train_batch_end",
        )

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


class ByModel(Callback):
    """A callback whose implementation depends on its model's Keras.

    Subclasses check their arguments in `__init__`, pass them to
    `super().__init__`, and define `implementation(keras)`: the class to
    make for a model of that `Keras`. Attributes this object lacks are read
    from the implementation made.
    """

    def __init__(self, **settings):
        super().__init__()
        self._settings = settings
        self._impl = None

    @staticmethod
    def implementation(keras):
        raise NotImplementedError

    def set_params(self, params):
        self.params = params
        if self._impl is not None:
            self._impl.set_params(params)

    def set_model(self, model):
        cls = self.implementation(Keras.of(model))
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
    setattr(ByModel, _hook, _forward(_hook))

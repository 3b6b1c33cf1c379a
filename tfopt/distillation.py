"""Teacher–student distillation, for tf_keras and Keras 3 models alike.

`Distiller(student=..., teacher=...)` makes the Distiller of the student's
Keras: `tfopt.keras2.distillation.Distiller` (a tf_keras `Model`) or
`tfopt.keras3.distillation.Distiller` (a Keras 3 `Model`), with the same
arguments, losses and guarantees (`tfopt.core.distill`); `isinstance(x,
tfopt.Distiller)` holds for both. `DistillationSchedule` is one callback
for either.
"""

import abc

from tfopt import callbacks, legacy
from tfopt.core import distill, vocab
from tfopt.core.kerases import Keras

__all__ = ["DISTILLATION_LOSSES", "DistillationSchedule", "Distiller"]

DISTILLATION_LOSSES = vocab.DISTILLATION_LOSSES


def _implementation(keras):
    if keras is Keras.KERAS3:
        from tfopt.keras3.distillation import Distiller
    else:
        from tfopt.keras2.distillation import Distiller
    return Distiller


class Distiller(abc.ABC):  # noqa: B024 (a front, never subclassed)
    """Trains `student` to match `teacher` and the labels.

    Loss = `alpha * hard + (1 - alpha) * T^2 * soft` (+ the weighted feature
    losses and the student's regularization losses), where `hard` is the
    compiled loss on the labels and `soft` the `distillation_loss` between
    teacher and student logits at temperature T. Every per-example term is
    averaged over the global batch, so results do not depend on the number
    of replicas. The teacher runs with `training=False` outside the gradient
    tape and its variables are not trained; the student runs once with
    `training=True`, so a pruned student's step advances once per batch.
    `evaluate` computes the same loss with the student in inference mode;
    `save` and the `tfopt.export_*` functions see the student alone. A
    teacher that ends in softmax (as `keras.applications` models do by
    default) is read as probabilities: their logarithms are its logits.

    Calling `Distiller(...)` returns the Distiller of `student`'s Keras (see
    the module docstring); its arguments are those of
    `tfopt.keras2.distillation.Distiller`.

    Args:
        student: The model to train (plain, pruned or QAT). Keyword-only, as
            is `teacher`.
        teacher: A built model of the same Keras, with the same output shape.
        temperature: Softening temperature T, > 0. Defaults to `4.0`.
        alpha: Weight of the hard-label loss, in [0, 1]. Defaults to `0.1`.
        distillation_loss: One of `DISTILLATION_LOSSES`: `kl` or `mse`.
            Defaults to `kl`.
        features: `(teacher_layer, student_layer, weight)` tuples adding
            `weight * MSE` between those layers' outputs. Defaults to `None`.
        cache_teacher: Reuse the teacher's logits per input in later epochs.
            Defaults to `False`.
        name: The model name. Defaults to `distiller`.

    Raises:
        TypeError, ValueError: For a bad argument, named with its value.
    """

    def __new__(cls, *args, student=None, **settings):
        distill.check_keywords(args)
        return _implementation(Keras.of(student))(student=student, **settings)

    @classmethod
    def __subclasshook__(cls, klass):
        # Both Kerases' Distillers are instances of this one, without this
        # module importing either Keras to say so.
        if cls is Distiller:
            return (
                issubclass(klass, distill.DistillerSteps)
                and getattr(klass, "KERAS", None) is not None
            )
        return NotImplemented

    @classmethod
    def from_config(cls, config):
        """The Distiller of `get_config()`'s dict, of the Keras that wrote it
        (its `keras_version`; configs without one are tf_keras ones)."""
        keras = Keras.from_version(config.get("keras_version"))
        return _implementation(keras).from_config(config)


class DistillationSchedule(callbacks.Callback):
    """Sets a Distiller's temperature and/or alpha at the start of each epoch.

    The values live in variables, so changing them does not retrace the
    training step. They are added to the epoch logs (`History`). It works
    in either Keras's `fit`.

    Args:
        temperature: A callable `epoch -> T`, or a list (its last value holds
            after it runs out). Defaults to `None` (unchanged).
        alpha: The same for alpha. Defaults to `None` (unchanged).

    Raises:
        TypeError: For a value that is neither None, a callable nor a list.
        ValueError: For an out-of-range value (at the epoch it is used).

    Example:

    >>> import tfopt
    >>> schedule = tfopt.DistillationSchedule(temperature=[8.0, 4.0, 2.0],
    ...                                       alpha=lambda epoch: 0.1 * epoch)
    """

    _CHECKS = {"temperature": distill.check_temperature, "alpha": distill.check_alpha}

    def __init__(self, temperature=None, alpha=None):
        super().__init__()
        for arg, spec in (("temperature", temperature), ("alpha", alpha)):
            if spec is None or callable(spec):
                continue
            if not isinstance(spec, (list, tuple)) or not spec:
                raise TypeError(
                    f"`{arg}` must be a callable epoch -> value, a non-empty "
                    f"list, or None. Received: {arg}={spec!r}"
                )
            for value in spec:
                self._CHECKS[arg](value, arg)
        self.temperature = temperature
        self.alpha = alpha

    def on_train_begin(self, logs=None):
        if not isinstance(self.model, Distiller):
            raise TypeError(
                "DistillationSchedule must be used in Distiller.fit. "
                f"Received: model={type(self.model).__name__}"
            )

    def on_epoch_begin(self, epoch, logs=None):
        for arg in ("temperature", "alpha"):
            spec = getattr(self, arg)
            if spec is None:
                continue
            value = spec(epoch) if callable(spec) else spec[min(epoch, len(spec) - 1)]
            self._CHECKS[arg](value, f"{arg} at epoch {epoch}")
            getattr(self.model, arg).assign(float(value))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["temperature"] = float(self.model.temperature.numpy())
            logs["alpha"] = float(self.model.alpha.numpy())


# The tf_keras name this module held before it served both Kerases.
__getattr__ = legacy.moved(__name__, {"per_example": "tfopt.keras2.binding"})

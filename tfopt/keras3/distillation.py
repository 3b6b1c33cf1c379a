"""Teacher–student distillation of Keras 3 models, side by side with
`tfopt.keras2.distillation` (tf_keras); the passes and losses are shared
(`tfopt.core.distill.DistillerSteps`).

Why not `keras.distillation`: in Keras 3.15 `LogitsDistillation()`'s default
loss (`"kl_divergence"`) is applied to raw logits, without the softmax, and
its `student_loss`/`distillation_loss` metrics track the loss already
scaled for the replicas (1/N of the value under N replicas). This
`Distiller` reduces every per-example loss by the global batch size, tracks
unscaled per-example values, and logs the same numbers on any strategy.
"""

import keras
import tensorflow as tf

from tfopt.core import distill
from tfopt.core.kerases import Keras
from tfopt.keras3 import fit, pruning

__all__ = ["Distiller"]


def _check_model(model, arg):
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"`{arg}` must be a Keras 3 Model (both models of a Distiller from the "
            f"same Keras). Received: {arg}={model!r} of type "
            f"{type(model).__module__}.{type(model).__qualname__}"
        )
    if not pruning.graph_model(model):
        raise TypeError(
            f"`{arg}` must be a Sequential or functional Keras 3 model: the "
            "Distiller checks its output shape and taps its layers; wrap a "
            f"subclassed one, e.g. keras.Model(inputs, {arg}(inputs)). "
            f"Received: {arg}={model!r}"
        )


def _output_shape(model):
    # A Sequential copied by clone_model has inputs but no `output` until called.
    return tuple(
        model.compute_output_spec(
            keras.KerasTensor((None, *model.inputs[0].shape[1:]))
        ).shape
    )


def per_example(loss):
    """A per-example version of the compiled hard-label `loss`."""
    loss = keras.losses.get(loss)
    if isinstance(loss, keras.losses.Loss):
        config = {**loss.get_config(), "reduction": None}
        return loss.__class__.from_config(config)
    return loss


@keras.saving.register_keras_serializable(package="tfopt")
class Distiller(distill.DistillerSteps, keras.Model):
    """`tfopt.Distiller` for Keras 3 models: the arguments, losses and
    guarantees of `tfopt.keras2.distillation.Distiller`."""

    def __init__(self, *args, student=None, teacher=None, **settings):
        distill.check_keywords(args)
        for arg, model in (("student", student), ("teacher", teacher)):
            _check_model(model, arg)
        if not student.trainable_weights:
            raise ValueError(
                "`student` has no trainable variables: distilling into it would "
                f"train nothing. Set `student.trainable = True` first. "
                f"Received: student={student.name!r}"
            )
        self._distill_init(
            keras,
            [_output_shape(m) for m in (student, teacher)],
            student,
            teacher,
            **settings,
        )
        # Built models make a built Distiller (its own variables and any
        # projections exist already): `save_weights` and `BackupAndRestore`
        # need one before the first `fit`.
        self.built = student.built and teacher.built
        fit.enable_multi_worker(self)
        pruning.guard(self, student)

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, **kwargs):
        """Compiles with the student's hard-label `loss` and `metrics`.

        XLA stays off unless `jit_compile` is given (teacher caching uses a
        hash table XLA cannot compile). Other keyword arguments go to
        `keras.Model.compile`.
        """
        distill.check_hard_loss(loss)
        self.hard_loss = per_example(loss)
        kwargs.setdefault("jit_compile", False)
        super().compile(optimizer=optimizer, metrics=metrics, **kwargs)

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    def _distill_logs(self, x, y, sample_weight, student_out, values):
        self._distill_track(values, sample_weight)
        logs = self.compute_metrics(x, y, student_out[0], sample_weight)
        # Keras's own `loss` tracker is never fed here; ours has the name.
        logs.update({m.name: m.result() for m in self._trackers})
        return logs

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        teacher_out = self._teacher_outputs(x)
        variables = self._student_variables()
        with tf.GradientTape() as tape:
            student_out, loss, values = self._distill_losses(
                x, y, sample_weight, teacher_out, training=True
            )
            scaled = self.optimizer.scale_loss(loss)  # mixed precision
        self.optimizer.apply(tape.gradient(scaled, variables), variables)
        return self._distill_logs(x, y, sample_weight, student_out, values)

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        student_out, _, values = self._distill_losses(
            x, y, sample_weight, self._teacher_outputs(x), training=False
        )
        return self._distill_logs(x, y, sample_weight, student_out, values)

    def save(self, filepath, *args, **kwargs):
        """Saves the student alone (what is deployed), pruning included."""
        return self.student.save(filepath, *args, **kwargs)

    KERAS = Keras.KERAS3
    _serialize_model = staticmethod(keras.saving.serialize_keras_object)

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config.pop("keras_version", None)
        student = keras.saving.deserialize_keras_object(config.pop("student"))
        teacher = keras.saving.deserialize_keras_object(config.pop("teacher"))
        return cls(student=student, teacher=teacher, **config)

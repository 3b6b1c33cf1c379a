"""Teacher–student distillation that stays right under every strategy.

`Distiller` is a tf_keras `Model` whose `train_step` runs the teacher in
inference mode outside the gradient tape, the student once in training mode,
and reduces every per-example loss by the global batch size (and the
student's regularization losses by the replica count), so the same global
batch gives the same student on one replica or many. `evaluate`, `predict`,
`save` and the `tfopt.export_*` functions see the student alone.
"""

import tensorflow as tf

from tfopt.core import distill
from tfopt.core.kerases import Keras
from tfopt.keras2 import binding, pruning, selection
from tfopt.keras2.binding import keras

__all__ = ["Distiller"]


@keras.utils.register_keras_serializable(package="tfopt")
class Distiller(distill.DistillerSteps, keras.Model):
    """The tf_keras Distiller (`tfopt.Distiller` documents its loss and
    arguments): the shared step of `tfopt.core.distill`, tf_keras model checks,
    and a config that names its Keras. The teacher is left as given (still
    trainable if it was); `student_loss` and `distillation_loss` are logged."""

    distribute_reduction_method = binding.SYNCED_LOGS

    def __init__(self, *args, student=None, teacher=None, **settings):
        distill.check_keywords(args)
        for arg, model in (("student", student), ("teacher", teacher)):
            binding.check_model(model, arg)
            selection.check_graph_model(
                model,
                "distillation",
                arg,
                hint=(
                    "The Distiller checks its output shape and taps its layers: "
                    f"wrap it, e.g. keras.Model(inputs, {arg}(inputs))."
                ),
            )
        if binding.frozen(student):
            raise ValueError(
                binding.frozen_message(
                    student, "student", "distilling into it would train nothing"
                )
            )
        self._distill_init(
            keras,
            (tuple(student.output_shape), tuple(teacher.output_shape)),
            student,
            teacher,
            **settings,
        )

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, **kwargs):
        """Compiles with the student's hard-label `loss` and `metrics`.

        Other keyword arguments go to `keras.Model.compile`.
        """
        distill.check_hard_loss(loss)
        binding.check_compile(optimizer, loss, metrics)
        self.hard_loss = binding.per_example(loss)
        super().compile(optimizer=optimizer, metrics=metrics, **kwargs)

    @property
    def metrics(self):
        # Keras resets these each epoch; the trackers are also sub-layers, so
        # super() lists them too.
        ids = {id(m) for m in self._trackers}
        return self._trackers + [m for m in super().metrics if id(m) not in ids]

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    def train_step(self, data):
        pruning.require_callback(self.student, self)
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        teacher_out = self._teacher_outputs(x)
        with tf.GradientTape() as tape:
            student_out, loss, values = self._distill_losses(
                x, y, sample_weight, teacher_out, training=True
            )
        self.optimizer.minimize(loss, self._student_variables(), tape=tape)
        return self._distill_logs(y, sample_weight, student_out, values)

    def test_step(self, data):
        # The same loss as in training (so `val_loss` compares with `loss`),
        # with the student in inference mode.
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        student_out, _, values = self._distill_losses(
            x, y, sample_weight, self._teacher_outputs(x), training=False
        )
        return self._distill_logs(y, sample_weight, student_out, values)

    def _distill_logs(self, y, sample_weight, student_out, values):
        self._distill_track(values, sample_weight)
        self.compiled_metrics.update_state(y, student_out[0], sample_weight)
        return {m.name: m.result() for m in self.metrics}

    def save(self, filepath, *args, **kwargs):
        """Saves the student alone (what is deployed); see `keras.Model.save`.

        `ModelCheckpoint` goes through here too. `save_weights` and
        `BackupAndRestore` still checkpoint the whole Distiller for resuming.
        """
        return self.student.save(filepath, *args, **kwargs)

    KERAS = Keras.TF_KERAS
    _serialize_model = staticmethod(keras.layers.serialize)

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config.pop("keras_version", None)
        student = keras.layers.deserialize(config.pop("student"), custom_objects)
        teacher = keras.layers.deserialize(config.pop("teacher"), custom_objects)
        return cls(student=student, teacher=teacher, **config)

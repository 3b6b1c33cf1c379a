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
    """Trains `student` to match `teacher` and the labels.

    Loss = `alpha * hard + (1 - alpha) * T^2 * soft` (+ the weighted feature
    losses and the student's regularization losses), where `hard` is the
    compiled loss on the labels and `soft` the `distillation_loss` between
    teacher and student logits at temperature T. Every per-example term is
    averaged over the global batch, so results do not depend on the number
    of replicas. The teacher runs with `training=False` outside the gradient
    tape and its variables are not trained (the model itself is left as it
    is: still trainable if it was); the student runs once with
    `training=True`, so a pruned student's step advances once per batch.
    `evaluate` (and validation) compute the same loss, with the student in
    inference mode; `student_loss` and `distillation_loss` are its parts.

    Args:
        student: The tf_keras model to train (plain, pruned or QAT), with
            trainable variables. Keyword-only, as is `teacher`.
        teacher: A built tf_keras model with the same output shape; it may
            be the model `student` was pruned from.
        temperature: Softening temperature T, > 0. Defaults to `4.0`.
        alpha: Weight of the hard-label loss, in [0, 1]. Defaults to `0.1`.
        distillation_loss: `kl` or `mse` (`vocab.DISTILLATION_LOSSES`).
            Defaults to `kl`.
        features: `(teacher_layer, student_layer, weight)` tuples adding
            `weight * MSE` between those layers' outputs; a learned 1x1
            convolution (or Dense) maps the student's channels to the
            teacher's when they differ. It is not part of the student.
            Defaults to `None`.
        cache_teacher: Remember the teacher's logits per input (by a 64-bit
            fingerprint of the example) and reuse them in later epochs. Valid
            when the inputs are the same every epoch (no random augmentation);
            not with `features`. Defaults to `False`.
        name: The model name. Defaults to `distiller`.

    Raises:
        TypeError, ValueError: For a bad argument, named with its value
            (models given by position, a student without trainable
            variables).

    Example:

    >>> import tfopt
    >>> from tfopt import keras
    >>> train, val, test, info = tfopt.data.load("digits", batch_size=64)
    >>> teacher = tfopt.models.build("teacher_cnn", info.input_shape, 10)
    >>> student = tfopt.models.build("student_cnn", info.input_shape, 10)
    >>> distiller = tfopt.Distiller(student=student, teacher=teacher,
    ...                             temperature=4.0, alpha=0.1)
    >>> distiller.compile(optimizer="adam", metrics=["accuracy"],
    ...     loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    >>> sorted(distiller.fit(train, epochs=1, verbose=0).history)
    ['accuracy', 'distillation_loss', 'loss', 'student_loss']
    """

    distribute_reduction_method = binding.SYNCED_LOGS

    def __init__(
        self,
        *args,
        student=None,
        teacher=None,
        temperature=4.0,
        alpha=0.1,
        distillation_loss="kl",
        features=None,
        cache_teacher=False,
        name="distiller",
    ):
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
        distill.check_output_shapes(
            tuple(student.output_shape), tuple(teacher.output_shape)
        )
        taps = distill.check_settings(
            student,
            teacher,
            temperature,
            alpha,
            distillation_loss,
            features,
            cache_teacher,
        )
        super().__init__(name=name)
        self._distill_set_up(
            keras,
            student,
            teacher,
            temperature,
            alpha,
            distillation_loss,
            features,
            taps,
            cache_teacher,
            teacher.output_shape[-1],
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

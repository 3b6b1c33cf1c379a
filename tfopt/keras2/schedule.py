"""The pruning schedule behind `tfopt.prune` for tf_keras: TFMOT's
polynomial and constant schedules over `tfopt.core.schedule.ScheduleSteps`, whose
`begin`/`end` may be fractions of the run and which always updates at `end`.
"""

import tensorflow as tf

from tfopt.core.schedule import KINDS, ScheduleSteps
from tfopt.keras2.binding import keras
from tfopt.keras2.tfmot import sparsity as tfmot_sparsity

__all__ = ["KINDS", "PruningSchedule"]


@keras.utils.register_keras_serializable(package="tfopt")
class PruningSchedule(ScheduleSteps, tfmot_sparsity.PruningSchedule):
    """Sparsity over training steps; see `tfopt.prune` for the arguments."""

    def __call__(self, step):
        if self.steps is None:
            # Unresolved: only traced outside `fit` (e.g. SavedModel export);
            # training without PruningCallback is stopped before this runs.
            return tf.constant(False), tf.constant(self.initial_sparsity)
        begin, end, frequency = self.steps
        step = tf.cast(step, tf.int64)
        in_range = tf.logical_and(step >= begin, step <= end)
        on_grid = tf.logical_or(
            tf.equal((step - begin) % frequency, 0), tf.equal(step, end)
        )
        if self.kind == "constant":
            sparsity = tf.constant(self.target_sparsity, tf.float32)
        else:
            progress = tf.clip_by_value(
                tf.cast(step - begin, tf.float32) / float(end - begin), 0.0, 1.0
            )
            sparsity = self.target_sparsity + (
                self.initial_sparsity - self.target_sparsity
            ) * tf.pow(1.0 - progress, float(self.power))
        return tf.logical_and(in_range, on_grid), sparsity

    @classmethod
    def from_config(cls, config):
        # Accept get_config()'s wrapped form as well as its inner config.
        return cls(**config.get("config", config))

    def get_config(self):
        # TFMOT's wrapper deserializes schedules from this legacy form.
        return {
            "class_name": "tfopt>PruningSchedule",
            "config": self.settings(),
        }

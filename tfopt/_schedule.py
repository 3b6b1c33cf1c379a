"""The pruning schedule behind `tfopt.prune`: TFMOT's polynomial and
constant schedules, with `begin`/`end` as fractions of the run and a final
mask update exactly at `end`.

TFMOT's schedules prune only on steps where `(step - begin) % frequency == 0`,
so an `end` off that grid stops short of the target, and `frequency=100`
never prunes a short run. This schedule always updates at `end`, and picks
a frequency from the run length when none is given. Fractions become steps
when `PruningCallback` sees the length of the `fit` (`resolve`).
"""

import math

import tensorflow as tf

from tfopt._keras import keras
from tfopt._tfmot import sparsity as tfmot_sparsity

KINDS = ("polynomial", "constant")
# Mask updates aimed for between `begin` and `end` when `frequency` is None.
_TARGET_UPDATES = 20


def _is_fraction(value):
    return isinstance(value, float)


@keras.utils.register_keras_serializable(package="tfopt")
class PruningSchedule(tfmot_sparsity.PruningSchedule):
    """Sparsity over training steps; see `tfopt.prune` for the arguments."""

    def __init__(self, target_sparsity, kind="polynomial", begin=0.0, end=0.75,
                 initial_sparsity=0.0, frequency=None, power=3):
        self.target_sparsity = float(target_sparsity)
        self.kind = kind
        self.begin, self.end = begin, end
        self.initial_sparsity = float(initial_sparsity)
        self.frequency = frequency
        self.power = power
        self.steps = None  # (begin_step, end_step, frequency) once resolved
        if not _is_fraction(begin):
            self.resolve(None)

    @property
    def fractional(self):
        return _is_fraction(self.begin)

    def resolve(self, total_steps):
        """Fixes the steps for a run of `total_steps`; True if they changed.

        The wrapper's step counter reads 1 on the first training step and
        `total_steps` on the last, so a fraction f maps to round(f * total).
        """
        if self.fractional:
            begin = int(math.floor(self.begin * total_steps + 0.5))
            end = max(int(math.floor(self.end * total_steps + 0.5)), begin + 1)
        else:
            begin, end = self.begin, self.end
        frequency = self.frequency or max(1, math.ceil((end - begin) / _TARGET_UPDATES))
        changed = self.steps != (begin, end, frequency)
        self.steps = (begin, end, frequency)
        return changed

    def sparsity_at(self, step):
        """The sparsity the schedule asks for at `step` (a Python float)."""
        begin, end, _ = self.steps
        if self.kind == "constant":
            return self.target_sparsity if step >= begin else 0.0
        progress = min(1.0, max(0.0, (step - begin) / (end - begin)))
        return self.target_sparsity + (
            self.initial_sparsity - self.target_sparsity
        ) * (1 - progress) ** self.power

    def last_update_at_or_before(self, step):
        """The last mask-update step <= `step`, or None before `begin`."""
        begin, end, frequency = self.steps
        if step < begin:
            return None
        if step >= end:
            return end
        return begin + (step - begin) // frequency * frequency

    def __call__(self, step):
        if self.steps is None:
            # Unresolved: only traced outside `fit` (e.g. SavedModel export);
            # training without PruningCallback is stopped before this runs.
            return tf.constant(False), tf.constant(self.initial_sparsity)
        begin, end, frequency = self.steps
        step = tf.cast(step, tf.int64)
        in_range = tf.logical_and(step >= begin, step <= end)
        on_grid = tf.logical_or(tf.equal((step - begin) % frequency, 0),
                                tf.equal(step, end))
        if self.kind == "constant":
            sparsity = tf.constant(self.target_sparsity, tf.float32)
        else:
            progress = tf.clip_by_value(
                tf.cast(step - begin, tf.float32) / float(end - begin), 0.0, 1.0)
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
            "config": {
                "target_sparsity": self.target_sparsity, "kind": self.kind,
                "begin": self.begin, "end": self.end,
                "initial_sparsity": self.initial_sparsity,
                "frequency": self.frequency, "power": self.power,
            },
        }

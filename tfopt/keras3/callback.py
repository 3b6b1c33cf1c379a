"""The Keras 3 half of `tfopt.PruningCallback`: it moves the masks of a
Keras 3 model's `PruningMask` constraints (`tfopt.keras3.pruning`) along their
schedule, side by side with `tfopt.keras2.callback.PruningCallback` (tf_keras, TFMOT).

The step it counts is the training step about to run, 1 for the first,
as TFMOT's wrapper counts it: the mask of step s is in place before step s
computes its forward pass. It is kept in each `PruningMask` (written to a
`.keras` file with the model's config) and read back as the further of that
and the optimizer's count (kept by checkpoints), so neither a new optimizer
(a compile, a Distiller, a student-only file) nor a checkpoint restore sends
the schedule back.
"""

import warnings

import keras
import numpy as np
import tensorflow as tf

from tfopt.core import checks, summary
from tfopt.core import schedule as _steps
from tfopt.keras3 import channel_pruning, pruning
from tfopt.keras3.pruning import MISSING_CALLBACK, masked


class _ParkedStep:
    """A pruned model's traced step between fits: called by a fit that has no
    PruningCallback, it raises MISSING_CALLBACK; `step` is the real one."""

    def __init__(self, step):
        self.step = step

    def __call__(self, *args, **kwargs):
        raise RuntimeError(MISSING_CALLBACK)


def _fresh_optimizer(model):
    # A fit without PruningCallback, of a model whose `train_step` tfopt did
    # not guard (loaded with keras.saving rather than tfopt.load_model),
    # stopped in the constraint while its first step was traced, after Keras
    # had begun building the optimizer inside that trace: its slots are
    # unusable. No update was applied (traced, nothing ran), so a new
    # optimizer loses nothing.
    optimizer = model.optimizer.__class__.from_config(model.optimizer.get_config())
    with model.distribute_strategy.scope():
        optimizer.build(model.trainable_variables)
    model.optimizer = optimizer
    for _, _, constraint in masked(model):
        constraint.failed = False
    # The step function whose first trace failed would count the next call
    # as a later one, which may not create variables: trace a new one.
    model.make_train_function(force=True)


class PruningCallback(keras.callbacks.Callback):
    """The Keras 3 half of `tfopt.PruningCallback` (see `tfopt.keras2.callback`)."""

    def __init__(self, log_dir, update_freq, data):
        super().__init__()  # the arguments are checked by the front
        self.data = data  # Taylor importance scores channels on it
        self.log_dir = log_dir
        self.update_freq = 1 if update_freq == "batch" else update_freq
        self._found = []
        self._channels = None  # a ChannelMasks, for a channel-pruned model
        self._applied = None
        self._start = self._iterations0 = self._epoch_start = 0
        self._writer = None

    def _iterations(self):
        return int(self.model.optimizer.iterations.numpy())

    def _finished(self):
        """Training steps finished so far (one read of the device's count)."""
        return self._start + self._iterations() - self._iterations0

    def on_train_begin(self, logs=None):
        self._found = masked(self.model)
        if not self._found:
            warnings.warn(
                "PruningCallback found no pruned model to drive (no "
                "PruningMask constraints); it does nothing.",
                UserWarning,
                stacklevel=2,
            )
            return
        pruning.guard(self.model)
        if any(c.failed for _, _, c in self._found):
            _fresh_optimizer(self.model)
        if isinstance(self.model.train_function, _ParkedStep):
            # The step traced by the last fit with this callback: no retrace.
            self.model.train_function = self.model.train_function.step
        epochs, steps = self.params.get("epochs"), self.params.get("steps")
        total = epochs * steps if epochs and steps else None
        self._iterations0 = self._iterations()
        self._start = max(self._iterations0, max(c.step for _, _, c in self._found))
        with self.model.distribute_strategy.scope():
            for _, variable, constraint in self._found:
                schedule = constraint.schedule
                if schedule.fractional:
                    if total is None:
                        raise ValueError(_steps.UNKNOWN_LENGTH)
                    schedule.resolve(total)
                if constraint.mask is None:
                    # A resumed model's masks are its zeros; a fresh one has
                    # none. Channel masks start whole: the update below
                    # chooses them for the model (a fresh BatchNorm's offsets
                    # are zeros that must train).
                    values = variable.numpy()
                    keep = np.ones_like(values) if constraint.channels else values != 0
                    constraint.mask = tf.Variable(
                        keep.astype(values.dtype),
                        trainable=False,
                        name=variable.name.replace("/", "_") + "_mask",
                    )
                constraint.ready = True
        schedule = self._found[0][2].schedule
        if not schedule.fractional and total is not None:
            message = schedule.unreachable_warning(
                self._start, self._start + total if self._start >= total else total
            )
            if message:
                warnings.warn(message, UserWarning, stacklevel=2)
        # Step `_start` ran with its update in place: the masks hold it.
        self._applied = schedule.last_update_at_or_before(self._start)
        if any(c.channels for _, _, c in self._found):
            self._channels = channel_pruning.ChannelMasks(
                self.model, self._found, self.data
            )
            if self._applied is not None:  # the channels a resumed fit had
                self._channels.update(schedule.sparsity_at(self._applied))
        if self.log_dir is not None and self._writer is None:
            self._writer = tf.summary.create_file_writer(str(self.log_dir))

    # Masks move in `on_train_batch_begin` (and `on_epoch_end`), before the
    # step they are for, and never in `on_train_batch_end`: on backends with
    # threads Keras 3 runs batch-end hooks off the training loop only when no
    # callback acts there. The step count is kept in Python: the device's
    # counter is read once per epoch, not once per step.
    def _advance(self, step):
        for _, _, constraint in self._found:
            constraint.step = step  # what a save in this epoch records
        # With steps_per_execution > 1 the step can jump past an update: apply
        # the last one reached, so `end` always leaves the target.
        update = self._found[0][2].schedule.last_update_at_or_before(step)
        if update is not None and update != self._applied:
            pruning.update_masks(self.model, self._found, update)
            if self._channels is not None:
                schedule = self._found[0][2].schedule
                self._channels.update(schedule.sparsity_at(update))
            self._applied = update

    def on_epoch_begin(self, epoch, logs=None):
        if self._found:
            self._epoch_start = self._finished()

    def on_train_batch_begin(self, batch, logs=None):
        if not self._found:
            return
        step = self._epoch_start + batch + 1  # the step about to run
        self._advance(step)
        if (
            self._writer is not None
            and checks.is_int(self.update_freq)
            and batch
            and batch % self.update_freq == 0
        ):
            self._write(step - 1)  # after every `update_freq` finished batches

    def _sparsity(self):
        if self._channels is not None:  # of the model's measure
            return self._channels.sparsity()
        return pruning.mask_sparsity(self._found)

    def _write(self, step):
        values = {
            "pruning/sparsity": self._sparsity(),
            "pruning/target_sparsity": self._found[0][2].schedule.sparsity_at(step),
        }
        for _, variable, constraint in self._found:
            values[f"pruning/{variable.path}"] = pruning.mask_sparsity(
                [(None, variable, constraint)]
            )
        summary.write_scalars(self._writer, step, values)

    def on_epoch_end(self, epoch, logs=None):
        if not self._found:
            return
        step = self._finished()
        self._advance(step)
        if logs is not None:
            logs["sparsity"] = self._sparsity()
        if self._writer is not None and self.update_freq == "epoch":
            self._write(step)

    def on_train_end(self, logs=None):
        if not self._found:
            return
        # An optimizer with `use_ema=True` writes its moving averages into
        # the weights at the end of `fit`, after the last constraint: mask
        # them again, so what is saved and exported is pruned.
        pruning.apply_masks(self.model)
        # Only this callback advances the masks: a later fit without it must
        # fail, in Python before its first step. Keras 3 keeps the traced
        # step between fits; it is parked where the next fit finds it, and
        # that fit's `on_train_begin` hands it back.
        for _, _, constraint in self._found:
            constraint.ready = False
        if self.model.train_function is not None:
            self.model.train_function = _ParkedStep(self.model.train_function)

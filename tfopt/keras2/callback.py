"""`tfopt.PruningCallback` for tf_keras models: TFMOT's `UpdatePruningStep`
and `PruningSummaries` in one callback, with fractional schedules resolved
when `fit` starts, `sparsity` in the logs and channel-pruning controllers
driven at every batch."""

import warnings

import tensorflow as tf

from tfopt.core import schedule as schedule_steps
from tfopt.core import summary
from tfopt.keras2 import binding, channel_pruning, pruning
from tfopt.keras2.binding import keras
from tfopt.keras2.pruning import apply_masks, mask_sparsity, wrappers
from tfopt.keras2.schedule import PruningSchedule


class PruningCallback(keras.callbacks.Callback):
    """`tfopt.PruningCallback` for tf_keras models (the front, `tfopt.pruning`,
    documents and checks the arguments): TFMOT's `UpdatePruningStep` and
    `PruningSummaries` in one callback, with fractional schedules resolved when
    `fit` starts, `sparsity` in the logs, and the channel masks of channel
    pruning."""

    def __init__(self, log_dir, update_freq, data):
        super().__init__()  # the arguments are checked by the front
        self.data = data
        self._channels = []
        self.log_dir = log_dir
        self.update_freq = 1 if update_freq == "batch" else update_freq
        self._wrappers = []
        self._writer = None

    def _schedules(self):
        unique = {id(w.pruning_schedule): w.pruning_schedule for w in self._wrappers}
        return [s for s in unique.values() if isinstance(s, PruningSchedule)]

    def on_train_begin(self, logs=None):
        self._wrappers = wrappers(self.model)
        trained = getattr(self.model, "student", self.model)
        if binding.frozen(trained):
            warnings.warn(
                "PruningCallback: "
                + binding.frozen_message(
                    trained, "model", "this fit only moves the pruning masks"
                ),
                UserWarning,
                stacklevel=2,
            )
        epochs, steps = self.params.get("epochs"), self.params.get("steps")
        self._channels = []
        for model in pruning.channel_models(self.model):
            controller = channel_pruning.controller(model)
            controller.begin(self.model, epochs, steps, self.data)
            model._tfopt_ready = True
            self._channels.append(controller)
        if self.log_dir is not None and self._writer is None:
            self._writer = tf.summary.create_file_writer(str(self.log_dir))
        if not self._wrappers:
            if not self._channels:
                warnings.warn(
                    "PruningCallback found no pruned model to drive "
                    "(no pruning wrappers, no channel-pruned model); it "
                    "does nothing.",
                    UserWarning,
                    stacklevel=2,
                )
            return
        for wrapper in self._wrappers:
            if int(wrapper.pruning_step.numpy()) == -1:
                wrapper.pruning_step.assign(0)
        start = int(self._wrappers[0].pruning_step.numpy())
        total = epochs * steps if epochs and steps else None
        changed = False
        for schedule in self._schedules():
            if schedule.fractional:
                if total is None:
                    raise ValueError(schedule_steps.UNKNOWN_LENGTH)
                changed |= schedule.resolve(total)
            elif total is not None:
                self._warn_if_unreachable(
                    schedule, start, start + epochs * steps if start >= total else total
                )
        for wrapper in self._wrappers:
            wrapper._tfopt_ready = True
        if changed and getattr(self.model, "train_function", None) is not None:
            # The schedule's steps are constants of the traced step: retrace.
            self.model.make_train_function(force=True)

    def on_train_end(self, logs=None):
        # Only this callback keeps pruned channels at zero: a later fit
        # without it must fail as a first one does, not let them grow back.
        for controller in self._channels:
            controller.model._tfopt_ready = False
        if self._channels:
            self.model.train_function = None

    def _warn_if_unreachable(self, schedule, start, last):
        message = schedule.unreachable_warning(start, last)
        if message:
            warnings.warn(message, UserWarning, stacklevel=2)

    def _write(self):
        step = int(self._wrappers[0].pruning_step.numpy())
        values = {"pruning/sparsity": mask_sparsity(self.model)}
        for schedule in self._schedules():
            if schedule.steps:
                values["pruning/target_sparsity"] = schedule.sparsity_at(step)
        for wrapper in self._wrappers:
            for weight, mask, _ in wrapper.pruning_vars:
                values[f"pruning/{weight.name.split(':')[0]}"] = 1.0 - tf.reduce_mean(
                    tf.cast(mask, tf.float32)
                )
        summary.write_scalars(self._writer, step, values)

    def on_train_batch_end(self, batch, logs=None):
        for controller in self._channels:
            controller.batch_end(self.model, self.data)
        if (
            self._writer is not None
            and self.update_freq != "epoch"
            and (batch + 1) % self.update_freq == 0
        ):
            self._write()

    def on_epoch_end(self, epoch, logs=None):
        if self._channels:
            sparsity = float(self._channels[0].sparsity())
            if logs is not None:
                logs["sparsity"] = sparsity
            if self._writer is not None:
                step = int(self.model.optimizer.iterations.numpy())
                summary.write_scalars(
                    self._writer, step, {"pruning/channel_sparsity": sparsity}
                )
        if not self._wrappers:
            return
        # The last optimizer step of the epoch may have moved pruned weights
        # off zero; TFMOT's UpdatePruningStep re-masks them here too.
        apply_masks(self.model)
        if logs is not None:
            logs["sparsity"] = float(mask_sparsity(self.model))
        if self._writer is not None and self.update_freq == "epoch":
            self._write()

"""Channel pruning during `fit` (issue 14, first step): whole channel groups
(`_channels.channel_groups`) are zeroed on a fractional schedule, so that
`_channels.shrink` can then remove them for a model that runs faster.

`ChannelPruning` is a callback: at each update step of its schedule it ranks
every group's channels (L2 norm of the producers' output slices, or the
BatchNorm scales) and keeps the best `(1 - fraction)` of each group,
rounded up to a multiple of `round_to` and never fewer than one; after
every training batch it zeroes the other channels' producer kernels and
biases, depthwise slices and BatchNorm scales and offsets, undoing what the
optimizer step moved. A zeroed channel is zero all the way to its
consumers, so the shrunk model computes what the masked one does. The
masks follow from the weights, which are the same on every replica; the
step comes from the optimizer, so a resumed `fit` goes on where it was.
"""

import math

import numpy as np
import tensorflow as tf

from tfopt import _channels, _schedule
from tfopt._keras import keras

IMPORTANCES = ("l2", "bn_gamma")
_L = keras.layers


def kept_count(size, fraction, round_to):
    """Channels a group of `size` keeps when `fraction` is pruned."""
    kept = math.ceil(size * (1.0 - fraction) / round_to) * round_to
    return int(min(size, max(kept, min(size, round_to), 1)))


class ChannelPruning(keras.callbacks.Callback):
    """Prunes `target` of the channels of every group of `model` during fit.

    Args:
        model: The flat functional tf_keras model being trained.
        target: Fraction of each group's channels pruned by `end`, in (0, 1).
        begin, end: When pruning starts and reaches `target`: fractions of
            the run, or optimizer steps (ints).
        frequency: Steps between updates. Defaults to about 20 updates.
        round_to: Kept channels per group are a multiple of this (or the
            whole group). Defaults to 8.
        importance: `l2` (producers' output slices) or `bn_gamma`.
    """

    def __init__(self, model, target, *, begin=0.0, end=0.75, frequency=None,
                 round_to=8, importance="l2"):
        super().__init__()
        if importance not in IMPORTANCES:
            raise ValueError(f"`importance` must be one of {list(IMPORTANCES)}. "
                             f"Received: importance={importance!r}")
        if not 0 < target < 1:
            raise ValueError(f"`target` must be in (0, 1). Received: target={target!r}")
        if not isinstance(round_to, int) or isinstance(round_to, bool) or round_to < 1:
            raise ValueError(
                f"`round_to` must be an int >= 1. Received: round_to={round_to!r}")
        self.groups = _channels.channel_groups(model)
        self.schedule = _schedule.PruningSchedule(target, "polynomial", begin, end,
                                                  0.0, frequency)
        self.round_to, self.importance = round_to, importance
        self.keep = {i: list(range(g.size)) for i, g in enumerate(self.groups)}
        self._pruned = model
        self._masks = []

    def _scores(self, group):
        layers = [self._pruned.get_layer(n) for n in group.channels]
        if self.importance == "bn_gamma":
            norms = [layer for layer in layers
                     if isinstance(layer, _L.BatchNormalization) and layer.scale]
            if norms:  # else (no BatchNorm in the group) the L2 norm
                return sum(np.abs(n.gamma.numpy()[list(group.channels[n.name])])
                           for n in norms)
        total = np.zeros(group.size)
        for name in group.producers:
            layer = self._pruned.get_layer(name)
            index = list(group.channels[name])
            for variable, axis in _channels.output_variables(layer):
                values = np.moveaxis(variable.numpy(), axis, -1)[..., index]
                total += np.square(values).reshape(-1, group.size).sum(0)
        return total

    def update(self, fraction):
        """Chooses the channels each group keeps at `fraction` pruned."""
        self._masks = []
        for i, group in enumerate(self.groups):
            count = kept_count(group.size, fraction, self.round_to)
            order = np.argsort(-self._scores(group), kind="stable")
            self.keep[i] = sorted(int(k) for k in order[:count])
            drop = [k for k in range(group.size) if k not in set(self.keep[i])]
            if not drop:
                continue
            for name, channels in group.channels.items():
                removed = list(_channels._flat(channels[k] for k in drop))
                layer = self._pruned.get_layer(name)
                for variable, axis in _channels.output_variables(layer):
                    mask = np.ones(variable.shape[axis], np.float32)
                    mask[removed] = 0.0
                    shape = [1] * len(variable.shape)
                    shape[axis] = -1
                    self._masks.append((variable, tf.constant(
                        mask.reshape(shape), dtype=variable.dtype)))
        self.apply()

    def apply(self):
        """Zeroes the pruned channels' weights."""
        for variable, mask in self._masks:
            variable.assign(variable * mask)

    def on_train_begin(self, logs=None):
        epochs, steps = self.params.get("epochs"), self.params.get("steps")
        if self.schedule.fractional:
            if not (epochs and steps):
                raise ValueError("ChannelPruning's `begin`/`end` are fractions of "
                                 "the run: pass steps_per_epoch to fit.")
            self.schedule.resolve(epochs * steps)
        step = int(self.model.optimizer.iterations.numpy())
        last = self.schedule.last_update_at_or_before(step)
        if last is not None:  # a resumed fit: the masks of where it was
            self.update(self.schedule.sparsity_at(last))

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if self.schedule.last_update_at_or_before(step) == step:
            self.update(self.schedule.sparsity_at(step))
        else:
            self.apply()

    def shrink(self):
        """The physically smaller model of the channels kept now."""
        return _channels.shrink(self._pruned, self.groups, self.keep)

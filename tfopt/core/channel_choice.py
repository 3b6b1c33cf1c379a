"""Which channels each group keeps as channel pruning goes, for both
Kerases: groups' channels ranked by importance, one channel fewer at a time
on the schedule, and the positions each per-channel variable then loses.
"""

import math

import numpy as np

from tfopt.core.channel_groups import (
    DEPTHWISE,
    PRODUCERS,
    SEPARABLE,
    TRANSPOSED,
    flat_indices,
)


def scores(group, by_name, importance, values_of, gradients=None):
    """Importance of each of `group`'s channels: the L2 norm of its
    producers' output slices, its BatchNorm scales (`bn_gamma`, where the
    group has a scaled BatchNorm) or, with `gradients` ({id(variable):
    dL/dw}), the first-order Taylor score (w * dL/dw)^2 over every variable
    of the group. `values_of(variable)` are a variable's values (masked)."""
    nodes = [by_name[name] for name in group.channels]
    if importance == "bn_gamma":
        norms = [
            n
            for n in nodes
            if n.kind == "BatchNormalization"
            and getattr(n.layer, "gamma", None) is not None
        ]
        if norms:  # else (no BatchNorm in the group) the L2 norm
            # The mean scale of each channel's positions: a BatchNorm after
            # a Flatten has one scale per pixel of the channel.
            return sum(
                _by_position(np.abs(values_of(n.layer.gamma)), group.channels[n.name])
                / _widths(group.channels[n.name])
                for n in norms
            )
    total = np.zeros(group.size)
    names = group.producers if gradients is None else group.channels
    for name in names:
        for variable, axis in output_variables(by_name[name]):
            values = values_of(variable)
            if gradients is not None:
                values = values * gradients[id(variable)]
            squares = np.square(np.moveaxis(values, axis, -1))
            total += _by_position(squares, group.channels[name])
    return total


def _by_position(values, positions):
    """Sums of `values` over all axes but the last, then over each of a
    group's `positions` (an index, or a tuple of them) on the last axis."""
    per_index = values.reshape(-1, values.shape[-1]).sum(0)
    return np.array([per_index[list(flat_indices([p]))].sum() for p in positions])


def _widths(positions):
    return np.array([len(p) if isinstance(p, tuple) else 1 for p in positions])


def keep_at(group, final, progress, group_scores):
    """The positions `group` keeps `progress` (0 to 1) of the way down to
    `final` channels, the best-scoring first."""
    # One channel at a time on the way: only the final count (what shrink
    # keeps) must be a multiple of round_to. Rounding every step would hold
    # a group whole until the last update, then cut it at once, with little
    # training left to recover.
    count = group.size - math.floor(min(progress, 1.0) * (group.size - final) + 1e-9)
    order = np.argsort(-group_scores, kind="stable")
    return sorted(int(k) for k in order[:count])


def removed(groups, prunable, keep, by_name):
    """{id(variable): (variable, axis, [channel indices it loses])} for
    every per-channel variable of the prunable groups."""
    found = {}
    for i in prunable:
        group = groups[i]
        drop = sorted(set(range(group.size)) - set(keep[i]))
        for name, positions in group.channels.items():
            for variable, axis in output_variables(by_name[name]):
                entry = found.setdefault(id(variable), (variable, axis, []))
                entry[2].extend(flat_indices(positions[k] for k in drop))
    return found


def mask(variable, axis, indices):
    """Ones of `variable`'s shape along `axis` (1 elsewhere), 0 at
    `indices`."""
    shape = [1] * len(variable.shape)
    shape[axis] = variable.shape[axis]
    values = np.ones(variable.shape[axis], np.float32)
    values[indices] = 0.0
    return values.reshape(shape)


def output_variables(node):
    """(variable, axis) pairs of `node`'s layer that hold its output
    channels (a BatchNormalization's mean too: with `scale=False` a pruned
    channel is zero only if its offset and mean are)."""
    layer, kind = node.layer, node.kind
    bias = getattr(layer, "bias", None) if getattr(layer, "use_bias", False) else None
    bias = [(bias, -1)] if bias is not None else []
    if kind in SEPARABLE:
        return [(layer.pointwise_kernel, -1)] + bias
    if kind in TRANSPOSED:
        return [(layer.kernel, -2)] + bias
    if kind in DEPTHWISE:
        kernel = getattr(layer, "depthwise_kernel", None)  # tf_keras's name
        return [(layer.kernel if kernel is None else kernel, -2)] + bias
    if kind in PRODUCERS:
        return [(layer.kernel, -1)] + bias
    if kind == "BatchNormalization":
        found = (getattr(layer, n, None) for n in ("gamma", "beta", "moving_mean"))
        return [(v, -1) for v in found if v is not None]
    return []

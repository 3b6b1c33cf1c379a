"""`shrink`'s Keras-free half, for both Kerases (on
`core.channel_groups.Node`s): which channels are zeroed, the weights of a
layer without its removed channels (what the smaller model gets), and the
check that the smaller model computes what the model does."""

import warnings

import numpy as np

from tfopt.core.channel_choice import output_variables
from tfopt.core.channel_groups import (
    DEPTHWISE,
    PRODUCERS,
    SEPARABLE,
    TRANSPOSED,
    analyse,
    describe,
    width,
)

# The config key of a producer's output width.
RESIZED = {kind: "units" if kind == "Dense" else "filters" for kind in PRODUCERS}


def sliced(node, kept_in, kept_out):
    """`node`'s layer's weights without the removed input and output
    channels (`kept_in`: its source's kept channels; `kept_out`: its own)."""
    weights = node.layer.get_weights()
    if node.kind in SEPARABLE:
        depthwise, pointwise, *bias = weights
        multiplier = depthwise.shape[-1]
        rows = [i * multiplier + m for i in kept_in for m in range(multiplier)]
        return [
            depthwise[..., kept_in, :],
            pointwise[..., rows, :][..., kept_out],
            *[b[kept_out] for b in bias],
        ]
    if node.kind in PRODUCERS:
        kernel, *bias = weights
        axis = -2 if node.kind in TRANSPOSED else -1
        kernel = kernel.take(kept_out, axis=axis).take(
            kept_in, axis=-2 if axis == -1 else -1
        )
        return [kernel, *[b[kept_out] for b in bias]]
    if node.kind in DEPTHWISE:
        kernel, *bias = weights
        return [kernel[..., kept_out, :], *[b[kept_out] for b in bias]]
    # BatchNormalization, PReLU, ...: per-channel weights on the last axis.
    return [
        w[..., kept_out] if w.ndim and w.shape[-1] == width(node) else w
        for w in weights
    ]


def _zero_slots(by_name, group):
    """Positions of `group` whose producers' output slices (kernels, biases),
    depthwise slices and BatchNorm scales and offsets are all exactly zero
    (and the BatchNorm mean, where there is no scale to zero the channel)."""
    zero = [True] * group.size
    for name, positions in group.channels.items():
        node = by_name[name]
        scaled = getattr(node.layer, "gamma", None) is not None
        for variable, axis in output_variables(node):
            if scaled and variable is node.layer.moving_mean:
                continue
            values = np.moveaxis(np.asarray(variable.numpy()), axis, -1)
            for k in range(group.size):
                zero[k] = zero[k] and not np.any(values[..., positions[k]])
    return [k for k in range(group.size) if zero[k]]


def zeroed(nodes, groups):
    """{group index: positions kept} for the groups with zeroed channels
    (`shrink` removes the others; each group keeps at least one)."""
    by_name = {node.name: node for node in nodes}
    keep = {}
    for i, group in enumerate(groups):
        zero = set(_zero_slots(by_name, group))
        kept = [k for k in range(group.size) if k not in zero] or [0]
        if len(kept) < group.size:
            keep[i] = kept
    return keep


def stranded(nodes, groups, blocked):
    """A warning naming the producers with zeroed output channels that no
    prunable group holds (so `shrink` keeps them) and the layers that
    hold them back; None if there are none."""
    grouped = {name for group in groups for name in group.producers}
    left = []
    for node in nodes:
        if node.kind not in PRODUCERS or node.name in grouped:
            continue
        variable, axis = output_variables(node)[0]
        values = np.moveaxis(np.asarray(variable.numpy()), axis, -1)
        if not values.reshape(-1, values.shape[-1]).any(axis=0).all():
            left.append(node.name)
    if not left:
        return None
    return (
        f"shrink: zeroed channels of {left} stay: their channels reach a "
        "model input or output or pass through layers that keep them, so "
        f"removing them would change what the model computes: {describe(blocked)}"
    )


def plan(nodes, ends):
    """(the channel groups, {group index: positions kept}) of `shrink` on
    the graph of `nodes`; warns, at the user's `tfopt.shrink` call, naming
    zeroed channels it must keep (`stranded`)."""
    groups, blocked = analyse(nodes, ends)
    message = stranded(nodes, groups, blocked)
    if message:  # the user's call: front, Keras package, here
        warnings.warn(message, UserWarning, stacklevel=4)
    return groups, zeroed(nodes, groups)


def random_batch(input_shape):
    """The two random examples `shrink` checks its copy on."""
    shape = [d or 1 for d in input_shape[1:]]
    return np.random.default_rng(0).uniform(0, 1, (2, *shape)).astype("float32")


def check_same(expected, got, atol):
    """Raises unless the shrunk model's outputs `got` match `expected`."""
    error = np.abs(got - expected).max()
    if error > atol * max(1.0, np.abs(expected).max()):
        raise RuntimeError(
            f"the shrunk model's outputs differ from the model's by {error:.3g}: "
            "a zeroed channel still contributed (a layer that maps 0 to a "
            "non-zero value, e.g. a sigmoid or a bias after it, is in its path)."
        )

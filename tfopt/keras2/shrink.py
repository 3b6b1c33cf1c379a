"""Removing channels: `remove_channels` makes the smaller copy of a flat
functional model that a choice of kept channels describes, and `shrink`
(`tfopt.shrink`) removes the channels channel pruning zeroed, checking the
copy computes what the model does.
"""

import numpy as np

from tfopt.keras2 import channels, graph
from tfopt.keras2.binding import keras

_L = keras.layers


_RESIZED = {
    "Conv1D": "filters",
    "Conv2D": "filters",
    "Conv3D": "filters",
    "Conv2DTranspose": "filters",
    "Conv3DTranspose": "filters",
    "SeparableConv1D": "filters",
    "SeparableConv2D": "filters",
    "Dense": "units",
}


def _sliced(layer, kept_in, kept_out):
    """`layer`'s weights without the removed input and output channels."""
    weights = layer.get_weights()
    if isinstance(layer, (_L.SeparableConv1D, _L.SeparableConv2D)):
        depthwise, pointwise, *bias = weights
        multiplier = depthwise.shape[-1]
        rows = [i * multiplier + m for i in kept_in for m in range(multiplier)]
        return [
            depthwise[..., kept_in, :],
            pointwise[..., rows, :][..., kept_out],
            *[b[kept_out] for b in bias],
        ]
    if isinstance(layer, channels.PRODUCERS):
        kernel, *bias = weights
        axis = (
            -1
            if not isinstance(layer, (_L.Conv2DTranspose, _L.Conv3DTranspose))
            else -2
        )
        kernel = kernel.take(kept_out, axis=axis).take(
            kept_in, axis=-2 if axis == -1 else -1
        )
        return [kernel, *[b[kept_out] for b in bias]]
    if isinstance(layer, _L.DepthwiseConv2D):
        kernel, *bias = weights
        return [kernel[:, :, kept_out, :], *[b[kept_out] for b in bias]]
    # BatchNormalization, PReLU, ...: per-channel weights on the last axis.
    return [
        w[..., kept_out] if w.ndim and w.shape[-1] == channels.width(layer) else w
        for w in weights
    ]


def remove_channels(model, groups, keep):
    """A smaller copy of the flat functional `model` without the channels
    that `keep` (see `kept_channels`) removes; its weights are the kept
    slices of `model`'s."""
    kept = channels.kept_channels(model, groups, keep)
    config = model.get_config()
    sources = graph.inbound(config)
    for entry in config["layers"]:
        name = entry["config"]["name"]
        key = _RESIZED.get(entry["class_name"])
        if key is not None:
            entry["config"][key] = len(kept[name])
        elif entry["class_name"] == "Reshape":
            target = list(entry["config"]["target_shape"])
            target[-1] = len(kept[name])
            entry["config"]["target_shape"] = tuple(target)
    with graph.rebuilding(model):
        small = keras.Model.from_config(config)
    for layer in model.layers:
        if not layer.weights:
            continue
        source = sources[layer.name][0] if sources[layer.name] else None
        kept_in = kept[source] if source is not None else []
        small.get_layer(layer.name).set_weights(
            _sliced(layer, kept_in, kept[layer.name])
        )
    return small


def _zero_slots(model, group):
    """Positions of `group` whose producers' output slices (kernels, biases)
    and BatchNorm scales and offsets are all exactly zero."""
    zero = [True] * group.size
    for name, positions in group.channels.items():
        for variable, axis in channels.output_variables(model.get_layer(name)):
            values = np.moveaxis(variable.numpy(), axis, -1)
            for k in range(group.size):
                zero[k] = zero[k] and not np.any(values[..., positions[k]])
    return [k for k in range(group.size) if zero[k]]


def shrink(model, *, atol=1e-4):
    """A physically smaller copy of `model` without its zeroed channels.

    A channel goes when every weight that makes it is exactly zero (the
    kernel and bias slices of its Conv/Dense producers, its depthwise slices,
    BatchNorm scale and offset), as channel pruning leaves it; each group
    keeps at least one channel. The copy is checked
    against `model` on random inputs.

    Args:
        model: A built functional or Sequential tf_keras model.
        atol: Largest difference allowed between the outputs of the copy and
            of `model`, relative to the largest output. Defaults to `1e-4`.

    Returns:
        The smaller functional model (or a same-size copy when nothing is
        zeroed).

    Raises:
        TypeError: If `model` is not a tf_keras Sequential/functional model.
        RuntimeError: If the copy's outputs differ by more than `atol` (a
            zeroed channel that still mattered, e.g. after a sigmoid).

    Example:

    >>> import tfopt
    >>> model = tfopt.models.build("student_cnn", (8, 8, 1), 10)
    >>> tfopt.shrink(model).count_params() == model.count_params()  # no zeros
    True
    """
    from tfopt.keras2 import binding, selection

    binding.check_model(model)
    selection.check_graph_model(model, "shrinking")
    flat = graph.flat(model)
    groups = channels.channel_groups(flat)
    keep = {}
    for i, group in enumerate(groups):
        zero = set(_zero_slots(flat, group))
        kept = [k for k in range(group.size) if k not in zero] or [0]
        if len(kept) < group.size:
            keep[i] = kept
    small = remove_channels(flat, groups, keep)
    shape = [d or 1 for d in flat.input_shape[1:]]
    x = np.random.default_rng(0).uniform(0, 1, (2, *shape)).astype("float32")
    expected = flat(x, training=False).numpy()
    error = np.abs(small(x, training=False).numpy() - expected).max()
    if error > atol * max(1.0, np.abs(expected).max()):
        raise RuntimeError(
            f"the shrunk model's outputs differ from the model's by {error:.3g}: "
            "a zeroed channel still contributed (a layer that maps 0 to a "
            "non-zero value, e.g. a sigmoid or a bias after it, is in its path)."
        )
    return small

"""Which channels of a functional model must be pruned together.

Removing channel c of a convolution's output also removes channel c of the
BatchNormalization, activation and depthwise convolution after it, and the
input channel c of every layer reading it; an `Add` ties channel c of all
its inputs (the residual stream of a whole stage); a `Concatenate` moves a
producer's channels to an offset; a squeeze-excite gate's channels are the
channels it multiplies; a `Flatten` spreads each channel over every spatial
position. (Torch-Pruning's "DepGraph" calls these dependency groups.)

`channel_groups(model)` puts each channel of each layer's output into a
union-find set with every channel it is tied to, then groups the sets that
run through the same layers: one `ChannelGroup` per producer (or set of
producers tied by an `Add`), with the index of each of its channels in
every layer output it touches. Channels that reach the model's inputs or
outputs, or pass through a layer whose channels cannot be followed (a
Lambda, a layer norm, a custom layer), are left out: they are never pruned.
"""

from typing import NamedTuple

import numpy as np

from tfopt.core.sparsity import NOT_PARAMETERS
from tfopt.keras2 import graph
from tfopt.keras2.binding import keras

_L = keras.layers
# Each output channel is the input channel of the same index.
_SAME = (
    _L.BatchNormalization,
    _L.Activation,
    _L.ReLU,
    _L.LeakyReLU,
    _L.ELU,
    _L.ThresholdedReLU,
    _L.PReLU,
    _L.Dropout,
    _L.SpatialDropout1D,
    _L.SpatialDropout2D,
    _L.SpatialDropout3D,
    _L.GaussianNoise,
    _L.GaussianDropout,
    _L.AlphaDropout,
    _L.MaxPooling1D,
    _L.MaxPooling2D,
    _L.MaxPooling3D,
    _L.AveragePooling1D,
    _L.AveragePooling2D,
    _L.AveragePooling3D,
    _L.GlobalAveragePooling1D,
    _L.GlobalAveragePooling2D,
    _L.GlobalAveragePooling3D,
    _L.GlobalMaxPooling1D,
    _L.GlobalMaxPooling2D,
    _L.GlobalMaxPooling3D,
    _L.ZeroPadding1D,
    _L.ZeroPadding2D,
    _L.ZeroPadding3D,
    _L.Cropping1D,
    _L.Cropping2D,
    _L.Cropping3D,
    _L.UpSampling1D,
    _L.UpSampling2D,
    _L.UpSampling3D,
    _L.Identity,
)
# Element-wise merges: channel c of every input and of the output.
_MERGE = (_L.Add, _L.Subtract, _L.Multiply, _L.Average, _L.Maximum, _L.Minimum)
# New output channels from all input channels.
_PRODUCERS = (
    _L.Conv1D,
    _L.Conv2D,
    _L.Conv3D,
    _L.Conv2DTranspose,
    _L.Conv3DTranspose,
    _L.SeparableConv1D,
    _L.SeparableConv2D,
    _L.Dense,
)


class ChannelGroup(NamedTuple):
    """Channels pruned together: `size` of them, at `channels[layer][k]` in
    the output of each layer they pass through (k = 0..size-1): an index, or
    a tuple of them where one channel fills several (a Flatten's positions,
    a tensor concatenated with itself)."""

    size: int
    channels: dict  # layer name -> tuple of `size` channel indices
    producers: tuple  # the layers that create them (Conv/Dense), by name


class _Sets:
    """Union-find over (layer name, channel)."""

    def __init__(self):
        self.parent = {}

    def find(self, item):
        self.parent.setdefault(item, item)
        root = item
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[item] != root:  # path compression
            self.parent[item], item = root, self.parent[item]
        return root

    def union(self, a, b):
        self.parent[self.find(a)] = self.find(b)


def _width(layer):
    shape = layer.output_shape
    if isinstance(shape, list) and len(shape) == 1:  # an InputLayer's
        shape = shape[0]
    if isinstance(shape, list) or not shape or shape[-1] is None:
        return None
    return int(shape[-1])


def _ties(layer, sources, widths):
    """[(source, source channel, output channel)] of `layer`; None when its
    channels cannot be followed (they are then frozen)."""
    width = widths[layer.name]
    if isinstance(layer, _L.InputLayer) or (
        isinstance(layer, _PRODUCERS)
        and width is not None
        and getattr(layer, "groups", 1) == 1
    ):  # grouped convs tie channels
        return []
    if width is None or any(widths[s] is None for s in sources):
        return None
    if isinstance(layer, _L.DepthwiseConv2D):
        return (
            None
            if layer.depth_multiplier != 1
            else [(sources[0], c, c) for c in range(width)]
        )
    if isinstance(layer, _SAME) or (
        isinstance(layer, (_L.Reshape, _L.Rescaling, _L.Normalization))
        and widths[sources[0]] == width
    ):
        return [(sources[0], c, c) for c in range(width)]
    if isinstance(layer, _MERGE):
        # A 1-channel input broadcasts: it ties nothing.
        return [(s, c, c) for s in sources if widths[s] == width for c in range(width)]
    if isinstance(layer, _L.Concatenate) and layer.axis in (
        -1,
        len(layer.output_shape) - 1,
    ):
        ties, offset = [], 0
        for source in sources:
            ties += [(source, c, offset + c) for c in range(widths[source])]
            offset += widths[source]
        return ties
    if isinstance(layer, _L.Flatten):
        # Output p holds input channel p % C (channels last).
        channels = widths[sources[0]]
        return [(sources[0], p % channels, p) for p in range(width)]
    return None


def channel_groups(model):
    """The `ChannelGroup`s of a flat functional tf_keras model, largest
    first. Layers called more than once are frozen."""
    layers = {layer.name: layer for layer in model.layers}
    config = model.get_config()
    entries, sources = config["layers"], graph.inbound(config)
    widths = {name: _width(layer) for name, layer in layers.items()}
    sets, frozen = _Sets(), set()
    for entry in entries:
        name = entry["config"]["name"]
        ties = (
            None
            if len(entry["inbound_nodes"]) > 1
            else _ties(layers[name], sources[name], widths)
        )
        if ties is None:  # its inputs and outputs stay as they are
            frozen |= {(name, c) for c in range(widths[name] or 0)}
            frozen |= {(s, c) for s in sources[name] for c in range(widths[s] or 0)}
            continue
        for source, channel, out in ties:
            sets.union((source, channel), (name, out))
    ends = [layer.name for layer in model.layers if isinstance(layer, _L.InputLayer)]
    ends += [ref[0] for ref in graph._refs(config["output_layers"])]
    for name in ends:
        frozen |= {(name, c) for c in range(widths[name] or 0)}
    return _group(sets, frozen, widths, layers)


def _group(sets, frozen, widths, layers):
    members = {}
    for name, width in widths.items():
        for channel in range(width or 0):
            members.setdefault(sets.find((name, channel)), []).append((name, channel))
    bad = {sets.find(item) for item in frozen}
    by_path = {}
    for root, items in members.items():
        if root in bad:
            continue
        slot = {}
        for name, channel in sorted(items):
            slot.setdefault(name, []).append(channel)
        names = tuple(sorted(slot))
        if not any(isinstance(layers[n], _PRODUCERS) for n in names):
            continue
        by_path.setdefault(names, []).append(
            {n: c[0] if len(c) == 1 else tuple(c) for n, c in slot.items()}
        )
    groups = []
    for names, slots in by_path.items():
        producer = next(n for n in names if isinstance(layers[n], _PRODUCERS))
        slots.sort(key=lambda slot: slot[producer])
        groups.append(
            ChannelGroup(
                len(slots),
                {n: tuple(slot[n] for slot in slots) for n in names},
                tuple(n for n in names if isinstance(layers[n], _PRODUCERS)),
            )
        )
    return sorted(groups, key=lambda g: (-g.size, g.producers))


def _flat(indices):
    for index in indices:
        yield from (index if isinstance(index, tuple) else (index,))


def kept_channels(model, groups, keep):
    """Layer name -> the output channels that stay, when group i of `groups`
    keeps the group positions `keep[i]` (groups not in `keep` keep all)."""
    removed = {}
    for i, group in enumerate(groups):
        if i not in keep:
            continue
        kept = set(keep[i])
        drop = [k for k in range(group.size) if k not in kept]
        for name, channels in group.channels.items():
            removed.setdefault(name, set()).update(_flat(channels[k] for k in drop))
    return {
        layer.name: [
            c for c in range(_width(layer) or 0) if c not in removed.get(layer.name, ())
        ]
        for layer in model.layers
    }


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
    if isinstance(layer, _PRODUCERS):
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
        w[..., kept_out] if w.ndim and w.shape[-1] == _width(layer) else w
        for w in weights
    ]


def shrink(model, groups, keep):
    """A smaller copy of the flat functional `model` without the channels
    that `keep` (see `kept_channels`) removes; its weights are the kept
    slices of `model`'s."""
    kept = kept_channels(model, groups, keep)
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


def output_variables(layer):
    """(variable, axis) pairs of `layer` that hold its output channels."""
    bias = [(layer.bias, -1)] if getattr(layer, "use_bias", False) else []
    if isinstance(layer, (_L.SeparableConv1D, _L.SeparableConv2D)):
        return [(layer.pointwise_kernel, -1)] + bias
    if isinstance(layer, (_L.Conv2DTranspose, _L.Conv3DTranspose)):
        return [(layer.kernel, -2)] + bias
    if isinstance(layer, _L.DepthwiseConv2D):
        return [(layer.depthwise_kernel, -2)] + bias
    if isinstance(layer, _PRODUCERS):
        return [(layer.kernel, -1)] + bias
    if isinstance(layer, _L.BatchNormalization):
        return [(v, -1) for v in (layer.gamma, layer.beta) if v is not None]
    return []


def _zero_slots(model, group):
    """Positions of `group` whose producers' output slices (kernels, biases)
    and BatchNorm scales and offsets are all exactly zero."""
    zero = [True] * group.size
    for name, channels in group.channels.items():
        for variable, axis in output_variables(model.get_layer(name)):
            values = np.moveaxis(variable.numpy(), axis, -1)
            for k in range(group.size):
                zero[k] = zero[k] and not np.any(values[..., channels[k]])
    return [k for k in range(group.size) if zero[k]]


def _spatial(shape):
    """Positions per example of a layer output: the product of its middle
    dimensions (1 for a Dense on vectors)."""
    if isinstance(shape, list):
        shape = shape[0]
    return int(np.prod([d or 1 for d in shape[1:-1]])) if len(shape) > 2 else 1


def cost_terms(model):
    """What `cost` adds up, once per model: (source, layer, parameters,
    how they scale, positions per example) per weight."""
    sources = graph.inbound(model.get_config())
    terms = []
    for layer in model.layers:
        inner = getattr(layer, "layer", layer)  # a pruning/QAT wrapper's layer
        source = sources[layer.name][0] if sources[layer.name] else None
        positions = _spatial(
            layer.input_shape
            if isinstance(inner, (_L.Conv2DTranspose, _L.Conv3DTranspose))
            else layer.output_shape
        )
        for weight in layer.weights:
            short = weight.name.split(":")[0].split("/")[-1]
            if short.endswith(NOT_PARAMETERS):
                continue
            if isinstance(inner, _L.DepthwiseConv2D) and short == "depthwise_kernel":
                scale = "out"
            elif short == "depthwise_kernel":  # a separable conv's
                scale = "in"
            elif short in ("kernel", "pointwise_kernel"):
                scale = "in*out"
            elif len(weight.shape) and weight.shape[-1] == _width(layer):
                scale = "out:params"  # per-channel: no multiplies
            else:
                scale = "none:params"
            terms.append(
                (source, layer.name, float(np.prod(weight.shape)), scale, positions)
            )
    return terms


def cost(model, kept=None, terms=None):
    """(parameters, multiply-accumulates per example) of the flat functional
    `model`, or of its shrunk copy when `kept` (see `kept_channels`) says
    which output channels each layer keeps. Biases and BatchNorm count as
    parameters, not MACs (they fold or are negligible). `terms` are
    `cost_terms(model)`, when the caller has them."""
    widths = {layer.name: _width(layer) for layer in model.layers}

    def ratio(name):
        if kept is None or name is None or not widths.get(name):
            return 1.0
        return len(kept[name]) / widths[name]

    params = macs = 0.0
    for source, name, size, scale, positions in terms or cost_terms(model):
        share = {
            "in": ratio(source),
            "out": ratio(name),
            "in*out": ratio(source) * ratio(name),
            "none": 1.0,
        }[scale.split(":")[0]]
        params += size * share
        if not scale.endswith(":params"):
            macs += size * share * positions
    return int(round(params)), int(round(macs))


def shrink_zeroed(model, *, atol=1e-4):
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
    groups = channel_groups(flat)
    keep = {}
    for i, group in enumerate(groups):
        zero = set(_zero_slots(flat, group))
        kept = [k for k in range(group.size) if k not in zero] or [0]
        if len(kept) < group.size:
            keep[i] = kept
    small = shrink(flat, groups, keep)
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

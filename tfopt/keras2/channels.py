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
PRODUCERS = (
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


def width(layer):
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
        isinstance(layer, PRODUCERS)
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
    widths = {name: width(layer) for name, layer in layers.items()}
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
        if not any(isinstance(layers[n], PRODUCERS) for n in names):
            continue
        by_path.setdefault(names, []).append(
            {n: c[0] if len(c) == 1 else tuple(c) for n, c in slot.items()}
        )
    groups = []
    for names, slots in by_path.items():
        producer = next(n for n in names if isinstance(layers[n], PRODUCERS))
        slots.sort(key=lambda slot: slot[producer])
        groups.append(
            ChannelGroup(
                len(slots),
                {n: tuple(slot[n] for slot in slots) for n in names},
                tuple(n for n in names if isinstance(layers[n], PRODUCERS)),
            )
        )
    return sorted(groups, key=lambda g: (-g.size, g.producers))


def flat_indices(indices):
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
            removed.setdefault(name, set()).update(
                flat_indices(channels[k] for k in drop)
            )
    return {
        layer.name: [
            c for c in range(width(layer) or 0) if c not in removed.get(layer.name, ())
        ]
        for layer in model.layers
    }


def output_variables(layer):
    """(variable, axis) pairs of `layer` that hold its output channels."""
    bias = [(layer.bias, -1)] if getattr(layer, "use_bias", False) else []
    if isinstance(layer, (_L.SeparableConv1D, _L.SeparableConv2D)):
        return [(layer.pointwise_kernel, -1)] + bias
    if isinstance(layer, (_L.Conv2DTranspose, _L.Conv3DTranspose)):
        return [(layer.kernel, -2)] + bias
    if isinstance(layer, _L.DepthwiseConv2D):
        return [(layer.depthwise_kernel, -2)] + bias
    if isinstance(layer, PRODUCERS):
        return [(layer.kernel, -1)] + bias
    if isinstance(layer, _L.BatchNormalization):
        return [(v, -1) for v in (layer.gamma, layer.beta) if v is not None]
    return []

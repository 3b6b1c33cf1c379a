"""Which channels of a layer graph must be pruned together, for both
Kerases: each Keras's package describes its model as `Node`s (layers and,
on Keras 3, functional-API ops) and this module does the rest, by class
name, so one implementation serves tf_keras and Keras 3.

Removing channel c of a convolution's output also removes channel c of the
BatchNormalization, activation and depthwise convolution after it, and the
input channel c of every layer reading it; an `Add` ties channel c of all
its inputs (the residual stream of a whole stage); a `Concatenate` moves a
producer's channels to an offset; a squeeze-excite gate's channels are the
channels it multiplies; a `Flatten` spreads each channel over every spatial
position. (Torch-Pruning's "DepGraph" calls these dependency groups.)

`analyse(nodes, ends)` puts each channel of each node's output into a
union-find set with every channel it is tied to, then groups the sets that
run through the same nodes: one `ChannelGroup` per producer (or set of
producers tied by an `Add`). Channels are never pruned that reach the
model's inputs or outputs, pass through a layer whose channels cannot be
followed (a Lambda, a layer norm, a custom layer, a nested model), or would
not be zero where a layer reduces over them (a sigmoid or `x + 3` whose
output a convolution reads): removing those would change what the model
computes. Those layers are returned by name with the reason, so that a user
is told what holds channels back.
"""

from typing import NamedTuple

# Each output channel is the input channel of the same index, and a zero
# stays zero (a BatchNormalization's scale, offset and mean are masked too).
_SAME = set(
    "BatchNormalization ReLU LeakyReLU ELU ThresholdedReLU PReLU Dropout "
    "SpatialDropout1D SpatialDropout2D SpatialDropout3D GaussianNoise "
    "GaussianDropout AlphaDropout MaxPooling1D MaxPooling2D MaxPooling3D "
    "AveragePooling1D AveragePooling2D AveragePooling3D "
    "GlobalAveragePooling1D GlobalAveragePooling2D GlobalAveragePooling3D "
    "GlobalMaxPooling1D GlobalMaxPooling2D GlobalMaxPooling3D ZeroPadding1D "
    "ZeroPadding2D ZeroPadding3D Cropping1D Cropping2D Cropping3D "
    "UpSampling1D UpSampling2D UpSampling3D Identity".split()
)
# Element-wise merges: channel c of every input and of the output.
_MERGE = {"Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"}
# New output channels from all input channels.
PRODUCERS = set(
    "Conv1D Conv2D Conv3D Conv1DTranspose Conv2DTranspose Conv3DTranspose "
    "SeparableConv1D SeparableConv2D Dense".split()
)
DEPTHWISE = {"DepthwiseConv1D", "DepthwiseConv2D"}
TRANSPOSED = {"Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose"}
SEPARABLE = {"SeparableConv1D", "SeparableConv2D"}
# Keras 3 functional-API ops (`x + 3.0`, `x * gate`, `ops.relu(x)`).
_OP_MERGE = {"op:Add", "op:Subtract", "op:Multiply", "op:Divide", "op:TrueDivide"}
_OP_MERGE |= {"op:Maximum", "op:Minimum"}
# Element-wise activations, by name: f(0) = 0 for all but the second set.
ELEMENTWISE = set(
    "linear relu relu6 elu selu gelu swish silu hard_swish hard_silu mish "
    "tanh leaky_relu softsign".split()
)
NOT_ZERO_AT_ZERO = {"sigmoid", "hard_sigmoid", "softplus", "exponential"}
_OP_UNARY = {"op:Relu", "op:Relu6", "op:Silu", "op:Swish", "op:HardSilu", "op:Gelu"}
_OP_UNARY |= {"op:Tanh", "op:Elu", "op:Selu", "op:LeakyRelu", "op:Mish"}
_OP_UNARY_NOT_ZERO = {"op:Sigmoid", "op:HardSigmoid", "op:Softplus", "op:Exp"}
KNOWN = _SAME | _MERGE | PRODUCERS | DEPTHWISE
KNOWN |= {
    "InputLayer",
    "Activation",
    "Concatenate",
    "Flatten",
    "Reshape",
    "Rescaling",
    "Normalization",
}


class Node(NamedTuple):
    """One layer (or Keras 3 op) of a functional graph, as a Keras's
    package describes it."""

    name: str
    layer: object  # the layer or op (a pruning wrapper's inner layer)
    kind: str  # its class's name, or the nearest known base class's
    sources: tuple  # the names of the nodes whose outputs it reads
    shape: tuple | None  # its output shape
    repeated: bool  # called more than once
    constants: tuple = ()  # numbers an op also reads (3.0 in `x + 3.0`)
    activation: str | None = None  # its activation's name, if it has one


def kind_of(layer):
    """The name of `layer`'s class, or of its nearest base class this
    module knows (a user's `MyConv(Conv2D)` is a Conv2D)."""
    for klass in type(layer).__mro__:
        if klass.__name__ in KNOWN:
            return klass.__name__
    return type(layer).__name__


def width(node):
    shape = node.shape
    if not shape or shape[-1] is None:
        return None
    return int(shape[-1])


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


def _is_producer(node):
    return node.kind in PRODUCERS and getattr(node.layer, "groups", 1) == 1


def _same_width(node, sources, widths):
    return [(sources[0], c, c) for c in range(widths[node.name])]


def _ties(node, widths):
    """[(source, source channel, output channel)] of `node`; None when its
    channels cannot be followed (they are then frozen)."""
    kind, sources, out = node.kind, node.sources, widths[node.name]
    if kind == "InputLayer" or (_is_producer(node) and out is not None):
        return []  # grouped convolutions tie channels: not followed
    if out is None or any(widths[s] is None for s in sources) or not sources:
        return None
    if kind in DEPTHWISE:
        multiplier = getattr(node.layer, "depth_multiplier", 1)
        return None if multiplier != 1 else _same_width(node, sources, widths)
    if kind == "Activation" and node.activation not in ELEMENTWISE | NOT_ZERO_AT_ZERO:
        return None  # softmax mixes channels; unknown ones are not followed
    if (
        kind in _SAME | {"Activation"} | _OP_UNARY | _OP_UNARY_NOT_ZERO
        or kind in ("Reshape", "Rescaling", "Normalization")
    ) and (len(sources) == 1 and widths[sources[0]] == out):
        return _same_width(node, sources, widths)
    if kind in _MERGE or kind in _OP_MERGE:
        # A 1-channel input broadcasts: it ties nothing.
        return [(s, c, c) for s in sources if widths[s] == out for c in range(out)]
    axis = getattr(node.layer, "axis", None)
    if kind == "Concatenate" and axis in (-1, len(node.shape) - 1):
        ties, offset = [], 0
        for source in sources:
            ties += [(source, c, offset + c) for c in range(widths[source])]
            offset += widths[source]
        return ties
    if kind == "Flatten" and len(sources) == 1:
        # Output p holds input channel p % C (channels last).
        channels = widths[sources[0]]
        return [(sources[0], p % channels, p) for p in range(out)]
    return None


def _stays_zero(node, members, zero):
    """Whether `node`'s output channels of a group are zero once the group's
    weights are (`zero`: that, for the nodes before it); `members` are the
    group's nodes."""
    kind = node.kind
    inside = [zero[s] for s in node.sources if s in members]
    activation = node.activation or "linear"
    if _is_producer(node) or kind in DEPTHWISE:
        return activation not in NOT_ZERO_AT_ZERO  # masked kernel and bias
    if kind in ("Multiply", "op:Multiply", "op:Divide", "op:TrueDivide"):
        return any(inside)
    if kind in ("Add", "Subtract", "Average", "op:Add", "op:Subtract"):
        broadcast = len(inside) < len(node.sources)
        return all(inside) and not broadcast and not any(node.constants)
    if kind in ("Rescaling", "Normalization"):
        offset = getattr(node.layer, "offset", None)
        return all(inside) and kind == "Rescaling" and not offset
    if kind == "ReLU" and getattr(node.layer, "threshold", 0):
        return False
    if kind in _OP_UNARY_NOT_ZERO or activation in NOT_ZERO_AT_ZERO:
        return False
    return bool(inside) and all(inside)


def _blocking(node):
    kind = node.kind
    if node.repeated:
        return f"{kind}: called more than once"
    if kind == "Activation":
        return f"Activation({node.activation!r}): mixes or hides channels"
    if kind in DEPTHWISE:
        return f"{kind}: depth_multiplier > 1"
    if kind in PRODUCERS:
        return f"{kind}: grouped"
    return f"{kind}: its channels cannot be followed"


def analyse(nodes, ends):
    """(the `ChannelGroup`s of the graph of `nodes`, largest first; {layer
    name: why} for the layers that keep channels from being pruned).
    `ends` are the names of the model's inputs and outputs."""
    by_name = {node.name: node for node in nodes}
    widths = {node.name: width(node) for node in nodes}
    sets, frozen, stops = _Sets(), set(), {}
    for node in nodes:
        ties = None if node.repeated else _ties(node, widths)
        if ties is None:  # its inputs and outputs stay as they are
            items = {(node.name, c) for c in range(widths[node.name] or 0)}
            for s in node.sources:
                items |= {(s, c) for c in range(widths[s] or 0)}
            frozen |= items
            if node.kind != "InputLayer" and node.name not in ends:
                stops[node.name] = items
            continue
        for source, channel, out in ties:
            sets.union((source, channel), (node.name, out))
    for name in ends:
        frozen |= {(name, c) for c in range(widths[name] or 0)}
    groups = _group(sets, frozen, widths, by_name)
    # A stop matters where it freezes channels some producer makes (not,
    # say, a Reshape of the model's input).
    made = {
        sets.find((node.name, c))
        for node in nodes
        if _is_producer(node)
        for c in range(widths[node.name] or 0)
    }
    blocked = {
        name: _blocking(by_name[name])
        for name, items in stops.items()
        if any(sets.find(item) in made for item in items)
    }
    readers = {}
    for node in nodes:
        for source in node.sources:
            readers.setdefault(source, set()).add(node.name)
    kept = []
    for group in groups:
        why = _not_zero(group, nodes, readers)
        if why is None:
            kept.append(group)
        else:
            kind = why.kind + (f"({why.activation!r})" if why.activation else "")
            blocked[why.name] = (
                f"{kind}: a pruned channel would not be zero where "
                f"{sorted(readers[why.name] - set(group.channels))[0]} reads it"
            )
    return kept, blocked


def _not_zero(group, nodes, readers):
    """The first node of `group` whose pruned channels would be non-zero
    where a node outside the group (a consumer) reads them, or None."""
    zero = {}
    for node in nodes:  # in graph order: sources first
        if node.name in group.channels:
            zero[node.name] = _stays_zero(node, group.channels, zero)
            if not zero[node.name] and readers.get(node.name, set()) - set(
                group.channels
            ):
                return node
    return None


def _group(sets, frozen, widths, by_name):
    members = {}
    for name, size in widths.items():
        for channel in range(size or 0):
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
        if not any(_is_producer(by_name[n]) for n in names):
            continue
        by_path.setdefault(names, []).append(
            {n: c[0] if len(c) == 1 else tuple(c) for n, c in slot.items()}
        )
    groups = []
    for names, slots in by_path.items():
        producers = tuple(n for n in names if _is_producer(by_name[n]))
        slots.sort(key=lambda slot: slot[producers[0]])
        groups.append(
            ChannelGroup(
                len(slots),
                {n: tuple(slot[n] for slot in slots) for n in names},
                producers,
            )
        )
    return sorted(groups, key=lambda g: (-g.size, g.producers))


def describe(blocked):
    """`analyse`'s blocking layers in words, for a message."""
    return "; ".join(f"{name} ({why})" for name, why in blocked.items())


def prunable(groups, blocked, chosen, layers, exclude):
    """The indices of `groups` whose producers are all `chosen` (layer
    names); raises, naming what holds channels back, if there is none.
    `layers`/`exclude` are the user's arguments that chose them."""
    found = [
        i for i, g in enumerate(groups) if all(name in chosen for name in g.producers)
    ]
    if not found:
        raise ValueError(
            "`model` has no channel group that can be pruned (each group's "
            "channels must run from Conv/Dense producers to consumers, not to "
            "the model's outputs or through layers whose channels cannot be "
            "followed) among the chosen layers. Held back by: "
            f"{describe(blocked) or 'nothing'}. Received: layers={layers!r}, "
            f"exclude={exclude!r}"
        )
    return found


def blocked_message(blocked):
    return f"prune: channels through these layers are not pruned: {describe(blocked)}."


def flat_indices(indices):
    for index in indices:
        yield from (index if isinstance(index, tuple) else (index,))


def kept_channels(nodes, groups, keep):
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
        node.name: [
            c for c in range(width(node) or 0) if c not in removed.get(node.name, ())
        ]
        for node in nodes
    }

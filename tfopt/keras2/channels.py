"""A flat functional tf_keras model as `tfopt.core.channel_groups` reads it:
its layers as `Node`s, from the model's config (the record of who calls
whom), and the channel groups, kept channels and per-channel variables that
follow from them.
"""

from tfopt.core import channel_choice
from tfopt.core import channel_groups as _groups
from tfopt.core.channel_groups import ChannelGroup, flat_indices  # noqa: F401
from tfopt.keras2 import graph
from tfopt.keras2.binding import keras


def width(layer):
    shape = layer.output_shape
    if isinstance(shape, list) and len(shape) == 1:  # an InputLayer's
        shape = shape[0]
    if isinstance(shape, list) or not shape or shape[-1] is None:
        return None
    return int(shape[-1])


def _shape(layer):
    shape = layer.output_shape
    if isinstance(shape, list):
        shape = shape[0] if len(shape) == 1 else None
    return None if shape is None else tuple(shape)


def node(layer, sources=(), repeated=False):
    """The `Node` of tf_keras `layer` (a pruning wrapper's inner layer)."""
    inner = getattr(layer, "layer", layer)
    activation = getattr(inner, "activation", None)
    return _groups.Node(
        name=layer.name,
        layer=inner,
        kind=_groups.kind_of(inner),
        sources=tuple(sources),
        shape=_shape(layer),
        repeated=repeated,
        activation=getattr(activation, "__name__", None),
    )


def nodes(model):
    """The `Node`s of flat functional `model`, in graph order."""
    config = model.get_config()
    sources = graph.inbound(config)
    layers = {layer.name: layer for layer in model.layers}
    return [
        node(
            layers[entry["config"]["name"]],
            sources[entry["config"]["name"]],
            len(entry["inbound_nodes"]) > 1,
        )
        for entry in config["layers"]
    ]


def ends(model):
    config = model.get_config()
    names = [
        layer.name
        for layer in model.layers
        if isinstance(layer, keras.layers.InputLayer)
    ]
    return names + [ref[0] for ref in graph._refs(config["output_layers"])]


def analyse(model):
    """`core.channel_groups.analyse` of a flat functional tf_keras model."""
    return _groups.analyse(nodes(model), ends(model))


def channel_groups(model):
    """The `ChannelGroup`s of a flat functional tf_keras model, largest
    first. Layers called more than once are frozen."""
    return analyse(model)[0]


def kept_channels(model, groups, keep):
    """Layer name -> the output channels that stay (see
    `core.channel_groups.kept_channels`)."""
    return _groups.kept_channels(nodes(model), groups, keep)


def output_variables(layer):
    """(variable, axis) pairs of `layer` that hold its output channels."""
    return channel_choice.output_variables(node(layer))

"""`tfopt.shrink` of a Keras 3 model: the copy without the channels channel
pruning zeroed, built with `keras.models.clone_model` (narrower producers,
`PruningMask` constraints dropped) and given the kept slices of the weights;
checked to compute what the model does (`tfopt.core.channel_shrink`).
"""

import keras

from tfopt.core import channel_groups, channel_shrink
from tfopt.keras3 import channels
from tfopt.keras3.pruning import check_graph_model, unmasked_config


def remove_channels(model, nodes, groups, keep):
    """A smaller copy of functional `model` (of `nodes`) without the
    channels `keep` removes, its weights the kept slices of `model`'s."""
    kept = channel_groups.kept_channels(nodes, groups, keep)
    by_layer = {id(node.layer): node for node in nodes}

    def clone(layer):
        config = unmasked_config(layer.get_config())
        node = by_layer.get(id(layer))
        key = channel_shrink.RESIZED.get(node.kind) if node else None
        if key is not None:
            config[key] = len(kept[node.name])
        elif node is not None and node.kind == "Reshape":
            config["target_shape"] = (
                *config["target_shape"][:-1],
                len(kept[node.name]),
            )
        return layer.__class__.from_config(config)

    small = keras.models.clone_model(model, clone_function=clone)
    for node in nodes:
        if getattr(node.layer, "weights", None):
            kept_in = kept[node.sources[0]] if node.sources else []
            small.get_layer(node.name).set_weights(
                channel_shrink.sliced(node, kept_in, kept[node.name])
            )
    return small


def shrink(model, *, atol=1e-4):
    """`tfopt.shrink` for a Keras 3 model (see `tfopt.channels.shrink`)."""
    check_graph_model(model, "shrinking")
    flat = channels.functional(model)
    nodes = channels.nodes(flat)
    groups, keep = channel_shrink.plan(nodes, channels.ends(flat))
    small = remove_channels(flat, nodes, groups, keep)
    x = channel_shrink.random_batch(flat.inputs[0].shape)
    expected = keras.ops.convert_to_numpy(flat(x, training=False))
    got = keras.ops.convert_to_numpy(small(x, training=False))
    channel_shrink.check_same(expected, got, atol)
    return small
